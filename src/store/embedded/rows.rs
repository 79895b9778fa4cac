//! Rows as the data file keeps them: the value layout (version, checksum, expiry), the tables a
//! transaction writes, and the write-behind path from the memtable to disk.

use bytes::Bytes;
use chrono::Utc;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::domain::Codec;
use crate::store::StoreError;
use crate::store::deadline;
use crate::store::disk::Access;
use crate::store::memtable::{InsertError, Lookup, Memtable, Pending};

use super::{
    BUCKET_EXPIRY, BUCKETS, BucketSize, Change, EXPIRY, EmbeddedStore, FLUSH_EARLY_AT, Found,
    ISSUED, MEMTABLE_LIMIT, OTHERS, ROOM_WAIT, buckets, db_err,
};

/// The layout of a stored value, first byte of every value.
pub(super) const VALUE_VERSION: u8 = 2;
/// Version, checksum, expiry and the number's length.
const VALUE_HEADER: usize = 1 + 4 + 8 + 1;

/// A stored value: the layout version (1 byte), a CRC-32 of all that follows (4 bytes), the
/// expiry (ms since the epoch, 8 bytes big-endian), the number's length (1 byte) and the
/// number, then the record JSON. Every read checks the checksum, so a flipped byte anywhere in
/// a value is refused as corrupt instead of served.
pub(super) fn encode_value(out: &mut Vec<u8>, expires_ms: i64, number: &str, json: &[u8]) {
    out.clear();
    out.reserve(VALUE_HEADER + number.len() + json.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.push(number.len() as u8);
    out.extend_from_slice(number.as_bytes());
    out.extend_from_slice(json);
    let checksum = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&checksum.to_be_bytes());
}

pub(super) struct Stored<'a> {
    pub(super) expires_ms: i64,
    number: &'a [u8],
    json: &'a [u8],
}

pub(super) fn decode_value(value: &[u8]) -> Result<Stored<'_>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("a stored record {what}"));
    let header = value
        .get(..VALUE_HEADER)
        .ok_or_else(|| corrupt("is truncated"))?;
    if header[0] != VALUE_VERSION {
        return Err(corrupt("has an unknown layout"));
    }
    let checksum = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if crc32fast::hash(&value[5..]) != checksum {
        return Err(corrupt("fails its checksum"));
    }
    let mut expiry = [0; 8];
    expiry.copy_from_slice(&header[5..13]);
    let len = usize::from(header[13]);
    let number = value
        .get(VALUE_HEADER..VALUE_HEADER + len)
        .ok_or_else(|| corrupt("is truncated"))?;
    Ok(Stored {
        expires_ms: i64::from_be_bytes(expiry),
        number,
        json: &value[VALUE_HEADER + len..],
    })
}

/// Where a number's record lives.
#[derive(Clone, Copy)]
pub(super) enum Slot<'a> {
    /// One of our numbers: in its serial's bucket (or, written before buckets, in ISSUED).
    Issued(u64),
    Other(&'a str),
}

pub(super) fn slot<'a>(codec: &Codec, number: &'a str) -> Slot<'a> {
    slot_of(codec, number, None)
}

/// The slot of a number, using its serial when the caller already knows it.
fn slot_of<'a>(codec: &Codec, number: &'a str, serial: Option<u64>) -> Slot<'a> {
    match serial.or_else(|| codec.decode_serial(number)) {
        Some(serial) => Slot::Issued(serial),
        None => Slot::Other(number),
    }
}

/// What a bucket entry keeps of its number: the characters its serial does not say.
fn prefix_of(number: &str) -> [u8; 4] {
    let mut prefix = [0; 4];
    if let Some(head) = number.as_bytes().get(..4) {
        prefix.copy_from_slice(head);
    }
    prefix
}

/// The record tables, as opened by one transaction.
pub(super) struct Tables<T, U, V> {
    /// Records of ours written before buckets: read, changed and removed, never added to.
    pub(super) issued: T,
    pub(super) others: U,
    pub(super) buckets: V,
    size: BucketSize,
}

impl<T, U, V> Tables<T, U, V>
where
    T: ReadableTable<u64, &'static [u8]>,
    U: ReadableTable<&'static str, &'static [u8]>,
    V: ReadableTable<u64, &'static [u8]>,
{
    /// Applies `read` to the stored record of `number` (found at `slot`), if it holds one (live
    /// or not). A number of ours whose bucket holds damaged bytes where its entry would be is
    /// corrupt (a 500): it may be the damaged one.
    fn with_record<R>(
        &self,
        slot: Slot<'_>,
        number: &str,
        read: impl FnOnce(Stored<'_>) -> R,
    ) -> Result<Option<R>, StoreError> {
        let Slot::Issued(serial) = slot else {
            return self.legacy_record(slot, number, read);
        };
        let (id, at) = self.size.locate(serial);
        let mut damaged = false;
        if let Some(row) = self.buckets.get(id).map_err(db_err)? {
            match buckets::find(row.value(), id, at) {
                // Another prefix on the same serial is another number, which has no record.
                Found::Entry(entry) => {
                    return Ok((entry.prefix == prefix_of(number)).then(|| {
                        read(Stored {
                            expires_ms: entry.expires_ms,
                            number: number.as_bytes(),
                            json: entry.value,
                        })
                    }));
                }
                Found::Missing => {}
                Found::Damaged => damaged = true,
            }
        }
        let legacy = self.legacy_record(slot, number, read)?;
        if legacy.is_none() && damaged {
            return Err(StoreError::Corrupt(format!(
                "record {number}: its bucket ({id}) holds damaged bytes where the record would be"
            )));
        }
        Ok(legacy)
    }

    /// [`Tables::with_record`] in the tables of one row per record (ISSUED, OTHERS) only.
    pub(super) fn legacy_record<R>(
        &self,
        slot: Slot<'_>,
        number: &str,
        read: impl FnOnce(Stored<'_>) -> R,
    ) -> Result<Option<R>, StoreError> {
        let value = match slot {
            Slot::Issued(serial) => self.issued.get(serial),
            Slot::Other(key) => self.others.get(key),
        }
        .map_err(db_err)?;
        let Some(value) = value else { return Ok(None) };
        let stored = decode_value(value.value())?;
        // The same serial under another prefix is another number.
        Ok((stored.number == number.as_bytes()).then(|| read(stored)))
    }
}

type Row = &'static [u8];
type WriteTables<'tx> = Tables<
    redb::Table<'tx, u64, Row>,
    redb::Table<'tx, &'static str, Row>,
    redb::Table<'tx, u64, Row>,
>;
type ReadTables = Tables<
    redb::ReadOnlyTable<u64, Row>,
    redb::ReadOnlyTable<&'static str, Row>,
    redb::ReadOnlyTable<u64, Row>,
>;

pub(super) fn write_tables(
    tx: &WriteTransaction,
    size: BucketSize,
) -> Result<WriteTables<'_>, StoreError> {
    Ok(Tables {
        issued: tx.open_table(ISSUED).map_err(db_err)?,
        others: tx.open_table(OTHERS).map_err(db_err)?,
        buckets: tx.open_table(BUCKETS).map_err(db_err)?,
        size,
    })
}

fn read_tables(tx: &redb::ReadTransaction, size: BucketSize) -> Result<ReadTables, StoreError> {
    Ok(Tables {
        issued: tx.open_table(ISSUED).map_err(db_err)?,
        others: tx.open_table(OTHERS).map_err(db_err)?,
        buckets: tx.open_table(BUCKETS).map_err(db_err)?,
        size,
    })
}

/// Whether `number` holds a live record on disk.
fn live_on_disk(
    db: &Database,
    codec: &Codec,
    size: BucketSize,
    number: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let tx = db.begin_read().map_err(db_err)?;
    let tables = read_tables(&tx, size)?;
    Ok(tables
        .with_record(slot(codec, number), number, |stored| {
            stored.expires_ms > now_ms
        })?
        .unwrap_or(false))
}

/// Group ids only tell apart groups with the same latest expiry; nanoseconds at start keep them
/// apart across restarts too.
static GROUP_IDS: std::sync::LazyLock<std::sync::atomic::AtomicU64> =
    std::sync::LazyLock::new(|| {
        std::sync::atomic::AtomicU64::new(Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64)
    });

/// Splits an expiry group's value into its numbers.
pub(super) fn group_numbers(mut value: &[u8]) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        let (&len, rest) = value.split_first()?;
        let number = rest.get(..usize::from(len))?;
        value = &rest[usize::from(len)..];
        std::str::from_utf8(number).ok()
    })
}

/// Writes records in one durable transaction. With `only_new`, a number that holds a live
/// record keeps it; returns, per record, whether it was written.
fn write_records<'a>(
    db: &Database,
    codec: &Codec,
    size: BucketSize,
    records: impl Iterator<Item = (&'a str, Option<u64>, i64, &'a [u8])>,
    only_new: bool,
) -> Result<Vec<bool>, StoreError> {
    let tx = begin_durable(db)?;
    let written = write_in(&tx, codec, size, records, only_new)?;
    tx.commit().map_err(db_err)?;
    Ok(written)
}

pub(super) fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write().map_err(db_err)?;
    tx.set_durability(Durability::Immediate).map_err(db_err)?;
    Ok(tx)
}

/// A record of ours on its way into its bucket.
struct Ours<'a> {
    /// Its place among the records written together.
    index: usize,
    number: &'a str,
    serial: u64,
    expires_ms: i64,
    value: &'a [u8],
}

/// Writes records in `tx`, without committing: those of our numbers into their buckets, one
/// rewrite per bucket; the others one row each, with their expiry group.
pub(super) fn write_in<'a>(
    tx: &WriteTransaction,
    codec: &Codec,
    size: BucketSize,
    records: impl Iterator<Item = (&'a str, Option<u64>, i64, &'a [u8])>,
    only_new: bool,
) -> Result<Vec<bool>, StoreError> {
    let now = Utc::now().timestamp_millis();
    let mut written = Vec::new();
    let mut tables = write_tables(tx, size)?;
    let mut value = Vec::new();
    let mut group = Vec::new();
    let mut latest = i64::MIN;
    let mut ours = Vec::new();
    for (number, serial, expires_ms, json) in records {
        let key = match slot_of(codec, number, serial) {
            Slot::Issued(serial) => {
                ours.push(Ours {
                    index: written.len(),
                    number,
                    serial,
                    expires_ms,
                    value: json,
                });
                written.push(false);
                continue;
            }
            Slot::Other(key) => key,
        };
        if only_new
            && tables
                .legacy_record(Slot::Other(key), number, |stored| stored.expires_ms > now)?
                .unwrap_or(false)
        {
            written.push(false);
            continue;
        }
        encode_value(&mut value, expires_ms, number, json);
        tables
            .others
            .insert(key, value.as_slice())
            .map_err(db_err)?;
        group.push(number.len() as u8);
        group.extend_from_slice(number.as_bytes());
        latest = latest.max(expires_ms);
        written.push(true);
    }
    if !group.is_empty() {
        let id = GROUP_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut expiry = tx.open_table(EXPIRY).map_err(db_err)?;
        expiry
            .insert((latest, id), group.as_slice())
            .map_err(db_err)?;
    }
    if !ours.is_empty() {
        write_ours(tx, &mut tables, ours, only_new, now, &mut written)?;
    }
    Ok(written)
}

/// Writes records of our numbers into their buckets: each bucket read, changed and written
/// once. A record written before buckets moves into its bucket (its ISSUED row goes). Of two
/// records for one serial, the first wins.
fn write_ours(
    tx: &WriteTransaction,
    tables: &mut WriteTables<'_>,
    mut ours: Vec<Ours<'_>>,
    only_new: bool,
    now: i64,
    written: &mut [bool],
) -> Result<(), StoreError> {
    ours.sort_by_key(|record| record.serial); // stable: the first of a pair stays first
    // Serials above every ISSUED row (all new ones) need no look there.
    let legacy_top = tables
        .issued
        .last()
        .map_err(db_err)?
        .map(|(serial, _)| serial.value());
    let mut due = tx.open_table(BUCKET_EXPIRY).map_err(db_err)?;
    let mut changes = Vec::new();
    let mut row = Vec::new();
    let size = tables.size;
    for group in ours.chunk_by(|a, b| size.locate(a.serial).0 == size.locate(b.serial).0) {
        let id = size.locate(group[0].serial).0;
        let old = bucket_row(&tables.buckets, id)?;
        let live = if only_new {
            buckets::live_slots(&old, id, now)
        } else {
            Vec::new()
        };
        changes.clear();
        for record in group {
            let slot = size.locate(record.serial).1;
            if changes
                .last()
                .is_some_and(|c: &Change<'_>| c.slot() == slot)
            {
                continue;
            }
            let legacy = legacy_top.is_some_and(|top| record.serial <= top);
            if only_new {
                let live_legacy = legacy
                    && tables
                        .legacy_record(Slot::Issued(record.serial), record.number, |stored| {
                            stored.expires_ms > now
                        })?
                        .unwrap_or(false);
                if live_legacy || live.binary_search(&slot).is_ok() {
                    continue;
                }
            }
            if legacy {
                drop_legacy(tables, record.serial, record.number)?;
            }
            changes.push(Change::Put(buckets::Entry {
                slot,
                prefix: prefix_of(record.number),
                expires_ms: record.expires_ms,
                value: record.value,
            }));
            written[record.index] = true;
        }
        if !changes.is_empty() {
            let summary = buckets::rewrite(&old, id, &changes, now, &mut row);
            store_bucket(&mut tables.buckets, &mut due, id, &row, summary)?;
        }
    }
    Ok(())
}

/// Bucket `id`'s row as it is (empty when there is none), copied out so the table can change.
pub(super) fn bucket_row(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Vec<u8>, StoreError> {
    Ok(table
        .get(id)
        .map_err(db_err)?
        .map(|row| row.value().to_vec())
        .unwrap_or_default())
}

/// Writes bucket `id` as `new` (rewritten with `summary`), or removes it when
/// nothing is left, and keeps its purge key at its latest expiry. With damage in the row, the
/// damaged record's expiry may be the one a key was made for: old keys stay (the purge drops
/// them when they come due), so the damage goes only once a key finds every intact record
/// expired.
fn store_bucket(
    rows: &mut redb::Table<'_, u64, &'static [u8]>,
    due: &mut redb::Table<'_, (i64, u64), ()>,
    id: u64,
    new: &[u8],
    summary: buckets::Summary,
) -> Result<(), StoreError> {
    if summary.is_empty() {
        rows.remove(id).map_err(db_err)?;
    } else {
        rows.insert(id, new).map_err(db_err)?;
    }
    let old_latest = summary.was_latest_ms;
    if old_latest == summary.latest_ms {
        return Ok(());
    }
    if let Some(old_latest) = old_latest.filter(|_| !summary.damaged) {
        due.remove((old_latest, id)).map_err(db_err)?;
    }
    if let Some(latest) = summary.latest_ms {
        due.insert((latest, id), ()).map_err(db_err)?;
    }
    Ok(())
}

/// Removes the ISSUED row of `serial` if it holds `number`'s record.
fn drop_legacy(tables: &mut WriteTables<'_>, serial: u64, number: &str) -> Result<(), StoreError> {
    let holds = tables
        .legacy_record(Slot::Issued(serial), number, |_| ())
        .unwrap_or(Some(())) // a damaged row of this serial goes too: its record moves
        .is_some();
    if holds {
        tables.issued.remove(serial).map_err(db_err)?;
    }
    Ok(())
}

/// Removes the record of `number` in `tx`, wherever it is.
pub(super) fn remove_in(
    tx: &WriteTransaction,
    codec: &Codec,
    size: BucketSize,
    number: &str,
) -> Result<(), StoreError> {
    let mut tables = write_tables(tx, size)?;
    let serial = match slot(codec, number) {
        Slot::Other(key) => {
            tables.others.remove(key).map_err(db_err)?;
            return Ok(());
        }
        Slot::Issued(serial) => serial,
    };
    let (id, at) = size.locate(serial);
    let old = bucket_row(&tables.buckets, id)?;
    if matches!(buckets::find(&old, id, at), Found::Entry(entry) if entry.prefix == prefix_of(number))
    {
        let mut row = Vec::new();
        let now = Utc::now().timestamp_millis();
        let summary = buckets::rewrite(&old, id, &[Change::Remove(at)], now, &mut row);
        let mut due = tx.open_table(BUCKET_EXPIRY).map_err(db_err)?;
        store_bucket(&mut tables.buckets, &mut due, id, &row, summary)?;
    }
    drop_legacy(&mut tables, serial, number)
}

/// Whether the live record of `number`, read in `tx`, is `expected` (any live one when None).
pub(super) fn holds_live(
    tx: &WriteTransaction,
    codec: &Codec,
    size: BucketSize,
    number: &str,
    expected: Option<&[u8]>,
) -> Result<Option<bool>, StoreError> {
    let now = Utc::now().timestamp_millis();
    let tables = write_tables(tx, size)?;
    let found = tables.with_record(slot(codec, number), number, |stored| {
        (stored.expires_ms > now).then(|| expected.is_none_or(|e| e == stored.json))
    })?;
    Ok(found.flatten())
}

impl EmbeddedStore {
    /// Moves the write-behind buffer to disk; the caller holds `flush_lock`. Allowed when the
    /// disk is low (the records were answered: they must reach it), not when it has failed.
    pub(super) async fn flush_locked(&self) -> Result<(), StoreError> {
        self.flush_as(Access::Change).await
    }

    /// [`EmbeddedStore::flush_locked`], held to the guards of `access` (a recovery flushes
    /// while the disk still counts as failed).
    pub(super) async fn flush_as(&self, access: Access) -> Result<(), StoreError> {
        let Some(memtable) = self.memtable.clone() else {
            return Ok(()); // every commit was durable already
        };
        let started = Utc::now().timestamp_millis();
        self.admit(access)?;
        let batch = memtable.start_flush();
        self.room.notify_waiters();
        if batch.is_empty() {
            self.disk.flushed(started);
            return Ok(());
        }
        let codec = self.codec.clone();
        let bucket = self.bucket;
        let written = batch.clone();
        self.blocking(access, move |db| {
            // In serial order, so the inserts append to the tree rather than split pages in the
            // middle of it (the buffer is a hash map: its own order is random).
            let mut records: Vec<_> = batch
                .iter()
                .map(|(number, p)| (number.as_str(), p.serial, p.expires_ms, p.value.as_ref()))
                .collect();
            records
                .sort_unstable_by_key(|&(number, serial, ..)| (serial.is_none(), serial, number));
            // Every record was checked when it was buffered.
            write_records(db, &codec, bucket, records.into_iter(), false)
        })
        .await?;
        memtable.finish_flush(written);
        // Everything buffered before `started` is on disk now.
        self.disk.flushed(started);
        Ok(())
    }

    /// Runs `change` in a durable transaction on the disk copy of `number`'s record, after moving
    /// any buffered version of it to disk. Changes are serialized with flushes and each other.
    /// `change` returns its outcome and whether to commit.
    pub(super) async fn change_on_disk<T: Send + 'static>(
        &self,
        number: &str,
        access: Access,
        change: impl FnOnce(&WriteTransaction, &Codec, BucketSize) -> Result<(T, bool), StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        self.admit(access)?;
        let _flushing = self.flush_lock.lock().await;
        if self.memtable.as_ref().is_some_and(|m| m.holds(number)) {
            self.flush_locked().await?;
        }
        let codec = self.codec.clone();
        let bucket = self.bucket;
        self.blocking(access, move |db| {
            let tx = begin_durable(db)?;
            let (outcome, commit) = change(&tx, &codec, bucket)?;
            if commit {
                tx.commit().map_err(db_err)?;
            } // else dropping the transaction aborts it
            Ok(outcome)
        })
        .await
    }
}

impl EmbeddedStore {
    /// Stores each row (a record's number, or an idempotency key's name, with its value) unless
    /// a live one already holds its key; returns, per row, whether it was stored.
    /// Writes rows whose key holds no live value (`only_new`), or (a claimed idempotency key's
    /// reply: the claim says no reply is stored) every row, without a look at the disk.
    pub(super) async fn insert_rows(
        &self,
        rows: Vec<(String, Pending)>,
        only_new: bool,
    ) -> Result<Vec<bool>, StoreError> {
        let now = Utc::now().timestamp_millis();
        self.admit_at(Access::Grow, now)?;
        if let Some(memtable) = &self.memtable {
            if !memtable.has_room(rows.len(), MEMTABLE_LIMIT) {
                self.wait_for_room(memtable, rows.len()).await;
            }
            // Write-behind: no await, no thread hop. The disk check reads pages redb caches.
            let outcome = memtable
                .insert_new(rows, now, MEMTABLE_LIMIT, |key, pending| {
                    match slot_of(&self.codec, key, pending.serial) {
                        // Keyed by serial, and leases start past the highest serial on disk: a
                        // new number of ours has no record there. No disk read per request.
                        Slot::Issued(_) => Ok(false),
                        Slot::Other(_) if !only_new => Ok(false),
                        Slot::Other(_) => {
                            live_on_disk(&*self.database()?, &self.codec, self.bucket, key, now)
                        }
                    }
                })
                .map_err(|err| match err {
                    InsertError::Full => StoreError::Busy(
                        "records are arriving faster than the disk takes them".into(),
                    ),
                    InsertError::Disk(err) => err,
                });
            if memtable.waiting() >= FLUSH_EARLY_AT {
                self.flush_soon.notify_one();
            }
            return outcome;
        }
        let codec = self.codec.clone();
        let bucket = self.bucket;
        self.blocking(Access::Grow, move |db| {
            let records = rows
                .iter()
                .map(|(key, p)| (key.as_str(), p.serial, p.expires_ms, p.value.as_ref()));
            write_records(db, &codec, bucket, records, only_new)
        })
        .await
    }

    /// Waits, for at most [`ROOM_WAIT`] (and half the storage timeout), until the buffer has
    /// room for `rows` more records: the next flush takes what it holds. A flush stalled on a
    /// slow `fsync` then costs the writers some latency, not a refusal; a disk that stays stuck
    /// still gets them a "busy" soon, well before the disk guard's one second.
    async fn wait_for_room(&self, memtable: &Memtable, rows: usize) {
        let patience = ROOM_WAIT.min(deadline::limit(self.options.timeout) / 2);
        let deadline = tokio::time::Instant::now() + patience;
        while !memtable.has_room(rows, MEMTABLE_LIMIT) {
            let room = self.room.notified();
            self.flush_soon.notify_one();
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return;
            }
        }
    }

    /// The live value under `key` (a record's number, or an idempotency key's name).
    /// [`EmbeddedStore::get_row`] for many keys: those the buffer does not know, in one read.
    pub(super) async fn get_rows(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let now = Utc::now().timestamp_millis();
        let mut found: Vec<Option<Bytes>> = vec![None; keys.len()];
        let mut unknown: Vec<(usize, String)> = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            match self
                .memtable
                .as_ref()
                .map(|memtable| memtable.get(&key, now))
            {
                Some(Lookup::Live(json)) => found[i] = Some(json),
                Some(Lookup::Expired) => {}
                Some(Lookup::Unknown) | None => unknown.push((i, key)),
            }
        }
        if unknown.is_empty() {
            return Ok(found);
        }
        let codec = self.codec.clone();
        let bucket = self.bucket;
        let read = self
            .blocking(Access::Read, move |db| {
                let tx = db.begin_read().map_err(db_err)?;
                let tables = read_tables(&tx, bucket)?;
                let mut read = Vec::with_capacity(unknown.len());
                for (i, key) in unknown {
                    let json = tables.with_record(slot(&codec, &key), &key, |stored| {
                        (stored.expires_ms > now).then(|| Bytes::copy_from_slice(stored.json))
                    })?;
                    read.push((i, json.flatten()));
                }
                Ok(read)
            })
            .await?;
        for (i, json) in read {
            found[i] = json;
        }
        Ok(found)
    }

    pub(super) async fn get_row(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let now = Utc::now().timestamp_millis();
        if let Some(memtable) = &self.memtable {
            match memtable.get(key, now) {
                Lookup::Live(json) => return Ok(Some(json)),
                Lookup::Expired => return Ok(None),
                Lookup::Unknown => {}
            }
        }
        let key = key.to_owned();
        let codec = self.codec.clone();
        let bucket = self.bucket;
        self.blocking(Access::Read, move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let tables = read_tables(&tx, bucket)?;
            let json = tables.with_record(slot(&codec, &key), &key, |stored| {
                (stored.expires_ms > now).then(|| Bytes::copy_from_slice(stored.json))
            })?;
            Ok(json.flatten())
        })
        .await
    }
}
