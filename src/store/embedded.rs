//! The embedded backend: one redb file in the data dir holding the serial counter, the secret and
//! the records. A leased block is committed with fsync before any of its serials is used, so a
//! crash at any point never costs uniqueness. Records are written behind (`--fsync everysec`):
//! buffered in memory, readable at once, and moved to disk in one fsynced transaction per sync
//! tick (every 200 ms); or (`--fsync always`) committed with fsync before the reply, in group
//! commits.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::memtable::{InsertError, Lookup, Memtable, Pending};
use super::{LeaseSource, RecordEntry, RecordStore, Removal, ReplyStore, StoreError, Swap};
use crate::config::FsyncPolicy;
use crate::domain::Codec;
use crate::domain::codec::{SERIAL_SPACE, fingerprint};

/// Small named values: the counter and the secret.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Records of numbers this service issued, keyed by serial. Serials grow, so new records append
/// at the right edge of the tree instead of dirtying a random page each (numbers look random).
const ISSUED: TableDefinition<u64, &[u8]> = TableDefinition::new("issued");
/// Records of any other number, keyed by the number itself; also the replies of idempotency
/// keys, under [`REPLY_PREFIX`] (no tracking number holds a `~`).
const OTHERS: TableDefinition<&str, &[u8]> = TableDefinition::new("others");
/// (latest expiry ms, group id) → the numbers written together, each prefixed by its length. One
/// row per write, not per record: the purge walks the due rows instead of scanning every record.
const EXPIRY: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("expiry");

const SERIAL_NEXT: &str = "serial_next";
const SECRET_FINGERPRINT: &str = "secret_fingerprint";
const GENERATED_SECRET: &str = "generated_secret";
/// At most this many expiry groups are purged per transaction.
const PURGE_GROUPS: usize = 64;
/// Records that may wait in memory for the disk before new ones are refused (503).
const MEMTABLE_LIMIT: usize = 2_000_000;
const REPLY_PREFIX: &str = "~idempotency:";

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Maps a number of ours back to its serial, the key of its record.
    codec: Codec,
    /// Present under `--fsync everysec`: the write-behind buffer.
    memtable: Option<Arc<Memtable>>,
    /// Held while the buffer is flushed, and while a record is changed in place: a change
    /// first moves the record's buffered version to disk, then edits it there.
    flush_lock: tokio::sync::Mutex<()>,
    /// Idempotency keys claimed by running requests (one process owns the data dir, so claims
    /// need not outlive it): each key's claim, and when the claim runs out.
    claims: tokio::sync::Mutex<HashMap<String, (Vec<u8>, std::time::Instant)>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and settles the secret: the given one, which must match
    /// the one this data dir was first used with, or else the one generated on first use.
    /// Returns the store and the secret to use.
    pub fn open(
        dir: &Path,
        secret: Option<&str>,
        fsync: FsyncPolicy,
    ) -> Result<(Self, String), anyhow::Error> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        let path = dir.join("tracknum.redb");
        let db = open_when_free(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "{} is in use by another tracknum process; give each instance its own --data-dir, \
                 or share a Redis with --redis-url",
                path.display()
            ),
            e => anyhow::anyhow!("cannot open {}: {e}", path.display()),
        })?;
        let secret = settle_secret(&db, secret)?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            codec: Codec::new(secret.as_bytes()),
            memtable: match fsync {
                FsyncPolicy::Always => None,
                FsyncPolicy::Everysec => Some(Arc::default()),
            },
            flush_lock: tokio::sync::Mutex::new(()),
            claims: tokio::sync::Mutex::default(),
        };
        Ok((store, secret))
    }

    /// Runs blocking redb work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(StoreError::unavailable)?
    }
}

/// Opens the database, waiting up to two seconds for a process that was just killed to let go
/// of the file lock (a restart right after `kill -9` would otherwise race the exiting process).
fn open_when_free(path: &Path) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn settle_secret(db: &Database, given: Option<&str>) -> anyhow::Result<String> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let secret = {
        let mut meta = tx.open_table(META)?;
        let stored_fp = meta
            .get(SECRET_FINGERPRINT)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let generated = meta
            .get(GENERATED_SECRET)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let secret = match (given, generated, &stored_fp) {
            (Some(given), _, _) => given.to_owned(),
            (None, Some(generated), _) => generated,
            (None, None, Some(_)) => anyhow::bail!(
                "this data dir was started with --secret (TRACKNUM_SECRET); give the same secret again"
            ),
            (None, None, None) => {
                let fresh = random_secret();
                meta.insert(GENERATED_SECRET, fresh.as_bytes())?;
                fresh
            }
        };
        let ours = fingerprint(secret.as_bytes());
        match stored_fp {
            Some(stored) if stored != ours => {
                return Err(StoreError::SecretMismatch { stored, ours }.into());
            }
            Some(_) => {}
            None => {
                meta.insert(SECRET_FINGERPRINT, ours.as_bytes())?;
            }
        }
        // Make sure every table exists, so readers never see a missing table.
        tx.open_table(ISSUED)?;
        tx.open_table(OTHERS)?;
        tx.open_table(EXPIRY)?;
        secret
    };
    tx.commit()?;
    Ok(secret)
}

fn random_secret() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect()
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

#[async_trait]
impl LeaseSource for EmbeddedStore {
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        self.blocking(move |db| {
            // The block is on disk before any serial of it is handed out.
            let tx = begin_durable(db)?;
            let range = {
                let mut meta = tx.open_table(META).map_err(corrupt)?;
                let next = match meta.get(SERIAL_NEXT).map_err(corrupt)? {
                    Some(v) => u64::from_be_bytes(v.value().try_into().map_err(corrupt)?),
                    None => 0,
                };
                // Past every record of ours on disk too, should the counter ever have gone back.
                let past_records = tx
                    .open_table(ISSUED)
                    .map_err(corrupt)?
                    .last()
                    .map_err(corrupt)?
                    .map_or(0, |(serial, _)| serial.value() + 1);
                let start = next.max(floor).max(past_records);
                let end = start
                    .checked_add(size)
                    .filter(|&end| end <= SERIAL_SPACE)
                    .ok_or_else(|| StoreError::Corrupt("the serial space is exhausted".into()))?;
                meta.insert(SERIAL_NEXT, end.to_be_bytes().as_slice())
                    .map_err(corrupt)?;
                start..end
            };
            tx.commit().map_err(StoreError::unavailable)?;
            Ok(range)
        })
        .await
    }
}

/// A stored value: expiry (ms since the epoch, 8 bytes big-endian), the number's length (1 byte)
/// and the number, then the record JSON.
fn encode_value(out: &mut Vec<u8>, expires_ms: i64, number: &str, json: &[u8]) {
    out.clear();
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.push(number.len() as u8);
    out.extend_from_slice(number.as_bytes());
    out.extend_from_slice(json);
}

struct Stored<'a> {
    expires_ms: i64,
    number: &'a [u8],
    json: &'a [u8],
}

fn decode_value(value: &[u8]) -> Result<Stored<'_>, StoreError> {
    let short = || corrupt("a stored record is truncated");
    let expires_ms = i64::from_be_bytes(
        value
            .get(..8)
            .ok_or_else(short)?
            .try_into()
            .map_err(corrupt)?,
    );
    let len = usize::from(*value.get(8).ok_or_else(short)?);
    let number = value.get(9..9 + len).ok_or_else(short)?;
    Ok(Stored {
        expires_ms,
        number,
        json: &value[9 + len..],
    })
}

/// Where a number's record lives.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Issued(u64),
    Other(&'a str),
}

fn slot<'a>(codec: &Codec, number: &'a str) -> Slot<'a> {
    slot_of(codec, number, None)
}

/// The slot of a number, using its serial when the caller already knows it.
fn slot_of<'a>(codec: &Codec, number: &'a str, serial: Option<u64>) -> Slot<'a> {
    match serial.or_else(|| codec.decode_serial(number)) {
        Some(serial) => Slot::Issued(serial),
        None => Slot::Other(number),
    }
}

/// The two record tables, as opened by one transaction.
struct Tables<T, U> {
    issued: T,
    others: U,
}

impl<T, U> Tables<T, U>
where
    T: ReadableTable<u64, &'static [u8]>,
    U: ReadableTable<&'static str, &'static [u8]>,
{
    /// Applies `read` to the stored record of `number` (found at `slot`), if it holds one (live
    /// or not).
    fn with_record<R>(
        &self,
        slot: Slot<'_>,
        number: &str,
        read: impl FnOnce(Stored<'_>) -> R,
    ) -> Result<Option<R>, StoreError> {
        let value = match slot {
            Slot::Issued(serial) => self.issued.get(serial),
            Slot::Other(key) => self.others.get(key),
        }
        .map_err(corrupt)?;
        let Some(value) = value else { return Ok(None) };
        let stored = decode_value(value.value())?;
        // The same serial under another prefix is another number.
        Ok((stored.number == number.as_bytes()).then(|| read(stored)))
    }
}

type WriteTables<'tx> =
    Tables<redb::Table<'tx, u64, &'static [u8]>, redb::Table<'tx, &'static str, &'static [u8]>>;
type ReadTables = Tables<
    redb::ReadOnlyTable<u64, &'static [u8]>,
    redb::ReadOnlyTable<&'static str, &'static [u8]>,
>;

fn write_tables(tx: &WriteTransaction) -> Result<WriteTables<'_>, StoreError> {
    Ok(Tables {
        issued: tx.open_table(ISSUED).map_err(corrupt)?,
        others: tx.open_table(OTHERS).map_err(corrupt)?,
    })
}

fn read_tables(tx: &redb::ReadTransaction) -> Result<ReadTables, StoreError> {
    Ok(Tables {
        issued: tx.open_table(ISSUED).map_err(corrupt)?,
        others: tx.open_table(OTHERS).map_err(corrupt)?,
    })
}

/// Whether `number` holds a live record on disk.
fn live_on_disk(
    db: &Database,
    codec: &Codec,
    number: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let tx = db.begin_read().map_err(corrupt)?;
    let tables = read_tables(&tx)?;
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
fn group_numbers(mut value: &[u8]) -> impl Iterator<Item = &str> {
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
    records: impl Iterator<Item = (&'a str, Option<u64>, i64, &'a [u8])>,
    only_new: bool,
) -> Result<Vec<bool>, StoreError> {
    let tx = begin_durable(db)?;
    let written = write_in(&tx, codec, records, only_new)?;
    tx.commit().map_err(StoreError::unavailable)?;
    Ok(written)
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut tx = db.begin_write().map_err(corrupt)?;
    tx.set_durability(Durability::Immediate).map_err(corrupt)?;
    Ok(tx)
}

/// Writes records (and their expiry group) in `tx`, without committing.
fn write_in<'a>(
    tx: &WriteTransaction,
    codec: &Codec,
    records: impl Iterator<Item = (&'a str, Option<u64>, i64, &'a [u8])>,
    only_new: bool,
) -> Result<Vec<bool>, StoreError> {
    let now = Utc::now().timestamp_millis();
    let mut written = Vec::new();
    let mut tables = write_tables(tx)?;
    let mut value = Vec::new();
    let mut group = Vec::new();
    let mut latest = i64::MIN;
    for (number, serial, expires_ms, json) in records {
        let slot = slot_of(codec, number, serial);
        if only_new
            && tables
                .with_record(slot, number, |stored| stored.expires_ms > now)?
                .unwrap_or(false)
        {
            written.push(false);
            continue;
        }
        encode_value(&mut value, expires_ms, number, json);
        match slot {
            Slot::Issued(serial) => tables.issued.insert(serial, value.as_slice()),
            Slot::Other(key) => tables.others.insert(key, value.as_slice()),
        }
        .map_err(corrupt)?;
        group.push(number.len() as u8);
        group.extend_from_slice(number.as_bytes());
        latest = latest.max(expires_ms);
        written.push(true);
    }
    if !group.is_empty() {
        let id = GROUP_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut expiry = tx.open_table(EXPIRY).map_err(corrupt)?;
        expiry
            .insert((latest, id), group.as_slice())
            .map_err(corrupt)?;
    }
    Ok(written)
}

/// Whether the live record of `number`, read in `tx`, is `expected` (any live one when None).
fn holds_live(
    tx: &WriteTransaction,
    codec: &Codec,
    number: &str,
    expected: Option<&[u8]>,
) -> Result<Option<bool>, StoreError> {
    let now = Utc::now().timestamp_millis();
    let tables = write_tables(tx)?;
    let found = tables.with_record(slot(codec, number), number, |stored| {
        (stored.expires_ms > now).then(|| expected.is_none_or(|e| e == stored.json))
    })?;
    Ok(found.flatten())
}

impl EmbeddedStore {
    /// Moves the write-behind buffer to disk; the caller holds `flush_lock`.
    async fn flush_locked(&self) -> Result<(), StoreError> {
        let Some(memtable) = self.memtable.clone() else {
            return Ok(()); // every commit was durable already
        };
        let batch = memtable.start_flush();
        if batch.is_empty() {
            return Ok(());
        }
        let codec = self.codec.clone();
        self.blocking(move |db| {
            // In serial order, so the inserts append to the tree rather than split pages in the
            // middle of it (the buffer is a hash map: its own order is random).
            let mut records: Vec<_> = batch
                .iter()
                .map(|(number, p)| (number.as_str(), p.serial, p.expires_ms, p.json.as_ref()))
                .collect();
            records
                .sort_unstable_by_key(|&(number, serial, ..)| (serial.is_none(), serial, number));
            // Every record was checked when it was buffered.
            write_records(db, &codec, records.into_iter(), false)?;
            memtable.finish_flush();
            Ok(())
        })
        .await
    }

    /// Runs `change` in a durable transaction on the disk copy of `number`'s record, after moving
    /// any buffered version of it to disk. Changes are serialized with flushes and each other.
    /// `change` returns its outcome and whether to commit.
    async fn change_on_disk<T: Send + 'static>(
        &self,
        number: &str,
        change: impl FnOnce(&WriteTransaction, &Codec) -> Result<(T, bool), StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _flushing = self.flush_lock.lock().await;
        if self.memtable.as_ref().is_some_and(|m| m.holds(number)) {
            self.flush_locked().await?;
        }
        let codec = self.codec.clone();
        self.blocking(move |db| {
            let tx = begin_durable(db)?;
            let (outcome, commit) = change(&tx, &codec)?;
            if commit {
                tx.commit().map_err(StoreError::unavailable)?;
            } // else dropping the transaction aborts it
            Ok(outcome)
        })
        .await
    }
}

#[async_trait]
impl RecordStore for EmbeddedStore {
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        let now = Utc::now().timestamp_millis();
        if let Some(memtable) = &self.memtable {
            // Write-behind: no await, no thread hop. The disk check reads pages redb caches.
            let records = entries.iter().map(|e| {
                let pending = Pending {
                    serial: e.serial,
                    expires_ms: e.expires_at.timestamp_millis(),
                    json: e.json.clone(),
                };
                (e.tracking_number.clone(), pending)
            });
            return memtable
                .insert_new(records, now, MEMTABLE_LIMIT, |number, pending| {
                    match slot_of(&self.codec, number, pending.serial) {
                        // Keyed by serial, and leases start past the highest serial on disk: a
                        // new number of ours has no record there. No disk read per request.
                        Slot::Issued(_) => Ok(false),
                        Slot::Other(_) => live_on_disk(&self.db, &self.codec, number, now),
                    }
                })
                .map_err(|err| match err {
                    InsertError::Full => {
                        StoreError::Unavailable("records are waiting for a failing disk".into())
                    }
                    InsertError::Disk(err) => err,
                });
        }
        let entries = entries.to_vec();
        let codec = self.codec.clone();
        self.blocking(move |db| {
            let records = entries.iter().map(|e| {
                (
                    e.tracking_number.as_str(),
                    e.serial,
                    e.expires_at.timestamp_millis(),
                    e.json.as_ref(),
                )
            });
            write_records(db, &codec, records, true)
        })
        .await
    }

    fn wants_group_commit(&self) -> bool {
        self.memtable.is_none()
    }

    async fn get(&self, tracking_number: &str) -> Result<Option<Bytes>, StoreError> {
        let now = Utc::now().timestamp_millis();
        if let Some(memtable) = &self.memtable {
            match memtable.get(tracking_number, now) {
                Lookup::Live(json) => return Ok(Some(json)),
                Lookup::Expired => return Ok(None),
                Lookup::Unknown => {}
            }
        }
        let number = tracking_number.to_owned();
        let codec = self.codec.clone();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(corrupt)?;
            let tables = read_tables(&tx)?;
            let json = tables.with_record(slot(&codec, &number), &number, |stored| {
                (stored.expires_ms > now).then(|| Bytes::copy_from_slice(stored.json))
            })?;
            Ok(json.flatten())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let _flushing = self.flush_lock.lock().await;
        self.flush_locked().await
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let (expected, entry) = (expected.clone(), entry.clone());
        let number = entry.tracking_number.clone();
        self.change_on_disk(&number, move |tx, codec| {
            if holds_live(tx, codec, &entry.tracking_number, Some(&expected))? != Some(true) {
                return Ok((Swap::Changed, false));
            }
            let record = (
                entry.tracking_number.as_str(),
                entry.serial,
                entry.expires_at.timestamp_millis(),
                entry.json.as_ref(),
            );
            write_in(tx, codec, std::iter::once(record), false)?;
            Ok((Swap::Replaced, true))
        })
        .await
    }

    async fn remove(
        &self,
        tracking_number: &str,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        let number = tracking_number.to_owned();
        let expected = expected.cloned();
        self.change_on_disk(tracking_number, move |tx, codec| {
            match holds_live(tx, codec, &number, expected.as_deref())? {
                None => return Ok((Removal::Missing, false)),
                Some(false) => return Ok((Removal::Changed, false)),
                Some(true) => {}
            }
            let mut tables = write_tables(tx)?;
            match slot(codec, &number) {
                Slot::Issued(serial) => tables.issued.remove(serial).map(drop),
                Slot::Other(key) => tables.others.remove(key).map(drop),
            }
            .map_err(corrupt)?;
            Ok((Removal::Removed, true))
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let codec = self.codec.clone();
        self.blocking(move |db| {
            let now = Utc::now().timestamp_millis();
            let tx = begin_durable(db)?;
            let mut removed = 0;
            {
                let mut tables = write_tables(&tx)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(corrupt)?;
                let due: Vec<((i64, u64), Vec<u8>)> = expiry
                    .range((i64::MIN, 0)..(now, 0))
                    .map_err(corrupt)?
                    .take(PURGE_GROUPS)
                    .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(corrupt)?;
                for (key, numbers) in &due {
                    expiry.remove(*key).map_err(corrupt)?;
                    for number in group_numbers(numbers) {
                        // A record whose expiry moved later since stays.
                        let slot = slot(&codec, number);
                        let expired =
                            tables.with_record(slot, number, |stored| stored.expires_ms <= now)?;
                        if expired == Some(true) {
                            match slot {
                                Slot::Issued(serial) => tables.issued.remove(serial).map(drop),
                                Slot::Other(key) => tables.others.remove(key).map(drop),
                            }
                            .map_err(corrupt)?;
                            removed += 1;
                        }
                    }
                }
            }
            tx.commit().map_err(StoreError::unavailable)?;
            Ok(removed)
        })
        .await
    }
}

/// Past this many claims held at once, claims that ran out are dropped.
const MAX_LIVE_CLAIMS: usize = 10_000;

fn holds_claim(
    claims: &HashMap<String, (Vec<u8>, std::time::Instant)>,
    key: &str,
    claim: &[u8],
) -> bool {
    claims.get(key).is_some_and(|(held, _)| held == claim)
}

fn reply_key(key: &str) -> String {
    // Keys may be 255 characters, more than a stored name holds: store a digest of them.
    let digest = crate::domain::idempotency::fingerprint("key", key.as_bytes());
    format!("{REPLY_PREFIX}{digest}")
}

#[async_trait]
impl ReplyStore for EmbeddedStore {
    async fn claim(
        &self,
        key: &str,
        claim: &[u8],
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        // Checked in this order under the lock, and `complete` stores the reply before it drops
        // the claim: a key is never seen as neither claimed nor done while its reply is written.
        let now = std::time::Instant::now();
        let mut claims = self.claims.lock().await;
        if claims.len() > MAX_LIVE_CLAIMS {
            claims.retain(|_, (_, until)| *until > now);
        }
        if let Some((held, until)) = claims.get(key)
            && *until > now
        {
            return Ok(Some(Bytes::copy_from_slice(held)));
        }
        if let Some(done) = self.get(&reply_key(key)).await? {
            return Ok(Some(done));
        }
        claims.insert(key.to_owned(), (claim.to_vec(), now + ttl));
        Ok(None)
    }

    async fn complete(
        &self,
        key: &str,
        claim: &[u8],
        reply: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        if !holds_claim(&*self.claims.lock().await, key, claim) {
            return Ok(false);
        }
        let entry = RecordEntry {
            tracking_number: reply_key(key),
            serial: None,
            expires_at: Utc::now()
                + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            json: Bytes::copy_from_slice(reply),
        };
        self.insert_new(std::slice::from_ref(&entry)).await?;
        self.claims.lock().await.remove(key);
        Ok(true)
    }

    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
        let mut claims = self.claims.lock().await;
        if holds_claim(&claims, key, claim) {
            claims.remove(key);
        }
        Ok(())
    }
}
