//! Import jobs in the embedded store: each part (the job's state, a cancel request, a chunk of
//! the file or of the results) is one value with its expiry and a checksum, written in a
//! durable transaction of its own (a compare-and-swap reads and writes in one); listings are
//! keyed by owner and creation time. Uploads that never became a job are found through the
//! expiry index, which names every part without reading its value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{EmbeddedStore, begin_durable, db_err};
use crate::store::disk::Access;
use crate::store::{
    ALL_IMPORTS, ImportPart, ImportQueue, ImportStore, IsLive, ListedImport, QueuedImport,
    StoreError,
};

/// `{id}/{part}` → expiry (ms, 8 bytes big-endian), CRC-32 of what follows (4 bytes), value.
const PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("import_parts");
/// (expiry ms, part key): what the purge walks. A part written again with a later expiry
/// leaves its old row here; the purge checks the part's own expiry before removing it.
const PART_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("import_expiry");
/// (owner, created µs, id) → expiry ms. [`ALL_IMPORTS`] lists every owner's imports.
const LISTED: TableDefinition<(&str, i64, &str), i64> = TableDefinition::new("import_list");
/// Queued imports in the order they came: sequence number → import id.
const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("import_queue");
const HEADER: usize = 8 + 4;

fn part_key(id: &str, part: ImportPart) -> String {
    format!("{id}/{}", part.name())
}

fn encode(expires_ms: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    out.extend_from_slice(&expires_ms.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The part's expiry and value; an error when its checksum does not match.
fn decode(stored: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt("a stored import part fails its checksum".into());
    let (header, value) = stored.split_at_checked(HEADER).ok_or_else(corrupt)?;
    let (expiry, checksum) = header.split_at(8);
    let expiry = i64::from_be_bytes(expiry.try_into().map_err(|_| corrupt())?);
    let checksum = u32::from_be_bytes(checksum.try_into().map_err(|_| corrupt())?);
    if crc32fast::hash(value) != checksum {
        return Err(corrupt());
    }
    Ok((expiry, value))
}

/// Makes the import tables (at open, with the others), so readers never see a missing one.
pub(super) fn create_tables(tx: &WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(PARTS)?;
    tx.open_table(PART_EXPIRY)?;
    tx.open_table(LISTED)?;
    tx.open_table(QUEUE)?;
    Ok(())
}

/// Removes the import parts and listings that expired by `now_ms`, in `tx`.
pub(super) fn purge(tx: &WriteTransaction, now_ms: i64) -> Result<(), StoreError> {
    let mut parts = tx.open_table(PARTS).map_err(db_err)?;
    let mut expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
    let due: Vec<(i64, String)> = expiry
        .range((i64::MIN, "")..(now_ms, ""))
        .map_err(db_err)?
        .map(|item| item.map(|(key, _)| (key.value().0, key.value().1.to_owned())))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for (at, key) in &due {
        expiry.remove((*at, key.as_str())).map_err(db_err)?;
        let expired = match parts.get(key.as_str()).map_err(db_err)? {
            // A part that no longer reads is of no use either.
            Some(stored) => decode(stored.value()).map_or(true, |(exp, _)| exp <= now_ms),
            None => false,
        };
        if expired {
            parts.remove(key.as_str()).map_err(db_err)?;
        }
    }
    let mut listed = tx.open_table(LISTED).map_err(db_err)?;
    listed
        .retain(|_, expires_ms| expires_ms > now_ms)
        .map_err(db_err)?;
    Ok(())
}

/// The expiry index's rows (expiry, part key), grouped by import, of the imports that have no
/// job part and are not live.
fn jobless(rows: Vec<(i64, String)>, is_live: &IsLive) -> HashMap<String, Vec<(i64, String)>> {
    let mut by_import: HashMap<String, (bool, Vec<(i64, String)>)> = HashMap::new();
    let job = ImportPart::Job.name();
    for (at, key) in rows {
        let Some((id, part)) = key.split_once('/') else {
            continue;
        };
        let entry = by_import.entry(id.to_owned()).or_default();
        entry.0 |= part == job;
        entry.1.push((at, key));
    }
    by_import
        .into_iter()
        .filter(|(id, (has_job, _))| !has_job && !is_live(id))
        .map(|(id, (_, rows))| (id, rows))
        .collect()
}

#[async_trait]
impl ImportStore for EmbeddedStore {
    async fn put_import_part(
        &self,
        id: &str,
        part: ImportPart,
        value: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = part_key(id, part);
        let expires_ms = expires_at.timestamp_millis();
        let stored = encode(expires_ms, value);
        self.blocking(Access::Grow, move |db| {
            let tx = begin_durable(db)?;
            {
                let mut parts = tx.open_table(PARTS).map_err(db_err)?;
                parts
                    .insert(key.as_str(), stored.as_slice())
                    .map_err(db_err)?;
                let mut expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
                expiry
                    .insert((expires_ms, key.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn swap_import_part(
        &self,
        id: &str,
        part: ImportPart,
        expected: Option<&[u8]>,
        new: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let key = part_key(id, part);
        let expected = expected.map(<[u8]>::to_vec);
        let new = new.to_vec();
        let expires_ms = expires_at.timestamp_millis();
        let now = Utc::now().timestamp_millis();
        self.blocking(Access::Grow, move |db| {
            let tx = begin_durable(db)?;
            {
                let mut parts = tx.open_table(PARTS).map_err(db_err)?;
                let current = match parts.get(key.as_str()).map_err(db_err)? {
                    Some(stored) => {
                        let (at, value) = decode(stored.value())?;
                        (at > now).then(|| value.to_vec())
                    }
                    None => None,
                };
                if current.as_deref() == Some(new.as_slice()) {
                    return Ok(true);
                }
                if current != expected {
                    return Ok(false);
                }
                parts
                    .insert(key.as_str(), encode(expires_ms, &new).as_slice())
                    .map_err(db_err)?;
                let mut expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
                expiry
                    .insert((expires_ms, key.as_str()), ())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn drop_abandoned_uploads(&self, is_live: &IsLive) -> Result<u64, StoreError> {
        // Every part has a row in the expiry index (a part written again may have old rows
        // too): read there, the parts' values (chunks of up to 256 KiB) stay on the disk.
        let rows: Vec<(i64, String)> = self
            .blocking(Access::Read, |db| {
                let tx = db.begin_read().map_err(db_err)?;
                let expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
                expiry
                    .iter()
                    .map_err(db_err)?
                    .map(|item| {
                        item.map(|(key, _)| (key.value().0, key.value().1.to_owned()))
                            .map_err(db_err)
                    })
                    .collect()
            })
            .await?;
        let abandoned = jobless(rows, is_live);
        if abandoned.is_empty() {
            return Ok(0);
        }
        self.blocking(Access::Change, move |db| {
            let tx = begin_durable(db)?;
            let mut removed = 0;
            {
                let mut parts = tx.open_table(PARTS).map_err(db_err)?;
                let mut expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
                for (id, rows) in &abandoned {
                    // Submitted since it was read: a job now, and not ours to remove.
                    let job = part_key(id, ImportPart::Job);
                    if parts.get(job.as_str()).map_err(db_err)?.is_some() {
                        continue;
                    }
                    let mut any = false;
                    for (at, key) in rows {
                        expiry.remove((*at, key.as_str())).map_err(db_err)?;
                        any |= parts.remove(key.as_str()).map_err(db_err)?.is_some();
                    }
                    removed += u64::from(any);
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(removed)
        })
        .await
    }

    async fn drop_import_parts(&self, id: &str, parts: &[ImportPart]) -> Result<(), StoreError> {
        let keys: Vec<String> = parts.iter().map(|&part| part_key(id, part)).collect();
        self.blocking(Access::Change, move |db| {
            let tx = begin_durable(db)?;
            {
                let mut parts = tx.open_table(PARTS).map_err(db_err)?;
                let mut expiry = tx.open_table(PART_EXPIRY).map_err(db_err)?;
                for key in &keys {
                    let expires_ms = match parts.remove(key.as_str()).map_err(db_err)? {
                        Some(stored) => decode(stored.value()).map(|(at, _)| at).ok(),
                        None => continue,
                    };
                    if let Some(at) = expires_ms {
                        expiry.remove((at, key.as_str())).map_err(db_err)?;
                    }
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn import_part(&self, id: &str, part: ImportPart) -> Result<Option<Bytes>, StoreError> {
        let key = part_key(id, part);
        let now = Utc::now().timestamp_millis();
        self.blocking(Access::Read, move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let parts = tx.open_table(PARTS).map_err(db_err)?;
            let Some(stored) = parts.get(key.as_str()).map_err(db_err)? else {
                return Ok(None);
            };
            let (expires_ms, value) = decode(stored.value())?;
            Ok((expires_ms > now).then(|| Bytes::copy_from_slice(value)))
        })
        .await
    }

    async fn list_import(
        &self,
        owner: &str,
        id: &str,
        created_us: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        let expires_ms = expires_at.timestamp_millis();
        self.blocking(Access::Grow, move |db| {
            let tx = begin_durable(db)?;
            {
                let mut listed = tx.open_table(LISTED).map_err(db_err)?;
                for bucket in [owner.as_str(), ALL_IMPORTS] {
                    listed
                        .insert((bucket, created_us, id.as_str()), expires_ms)
                        .map_err(db_err)?;
                }
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn listed_imports(
        &self,
        owner: Option<&str>,
        before_us: i64,
        limit: usize,
    ) -> Result<Vec<ListedImport>, StoreError> {
        let bucket = owner.unwrap_or(ALL_IMPORTS).to_owned();
        let now = Utc::now().timestamp_millis();
        self.blocking(Access::Read, move |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let listed = tx.open_table(LISTED).map_err(db_err)?;
            let range = (bucket.as_str(), i64::MIN, "")..(bucket.as_str(), before_us, "");
            let mut found = Vec::new();
            for item in listed.range(range).map_err(db_err)?.rev() {
                let (key, expires_ms) = item.map_err(db_err)?;
                if expires_ms.value() <= now {
                    continue;
                }
                let (_, created_us, id) = key.value();
                found.push(ListedImport {
                    created_us,
                    id: id.to_owned(),
                });
                if found.len() == limit {
                    break;
                }
            }
            Ok(found)
        })
        .await
    }
}

#[async_trait]
impl ImportQueue for EmbeddedStore {
    async fn enqueue_import(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.blocking(Access::Grow, move |db| {
            let tx = begin_durable(db)?;
            {
                let mut queue = tx.open_table(QUEUE).map_err(db_err)?;
                let last = queue.last().map_err(db_err)?.map(|(seq, _)| seq.value());
                let next = last.map_or(0, |seq| seq + 1);
                queue.insert(next, id.as_str()).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn next_import(
        &self,
        worker: &str,
        stale: Duration,
    ) -> Result<Option<QueuedImport>, StoreError> {
        let queued: Vec<(u64, String)> = self
            .blocking(Access::Read, |db| {
                let tx = db.begin_read().map_err(db_err)?;
                let queue = tx.open_table(QUEUE).map_err(db_err)?;
                queue
                    .iter()
                    .map_err(db_err)?
                    .map(|item| {
                        item.map(|(seq, id)| (seq.value(), id.value().to_owned()))
                            .map_err(db_err)
                    })
                    .collect()
            })
            .await?;
        let now = Instant::now();
        let mut claims = self.import_claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.retain(|seq, _| queued.iter().any(|(queued, _)| queued == seq));
        let free = |seq: &u64| {
            claims
                .get(seq)
                .is_none_or(|(_, touched)| now.duration_since(*touched) >= stale)
        };
        // A job whose worker went quiet first, then a new one: both in queue order.
        let taken = queued
            .iter()
            .find(|(seq, _)| claims.contains_key(seq) && free(seq))
            .or_else(|| queued.iter().find(|(seq, _)| free(seq)));
        Ok(taken.map(|(seq, id)| {
            claims.insert(*seq, (worker.to_owned(), now));
            QueuedImport {
                id: id.clone(),
                handle: seq.to_string(),
            }
        }))
    }

    async fn touch_import(&self, worker: &str, job: &QueuedImport) -> Result<(), StoreError> {
        let seq = sequence(job)?;
        self.import_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, (worker.to_owned(), Instant::now()));
        Ok(())
    }

    async fn ack_import(&self, job: &QueuedImport) -> Result<(), StoreError> {
        let seq = sequence(job)?;
        self.blocking(Access::Change, move |db| {
            let tx = begin_durable(db)?;
            tx.open_table(QUEUE)
                .map_err(db_err)?
                .remove(seq)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await?;
        self.import_claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        Ok(())
    }
}

fn sequence(job: &QueuedImport) -> Result<u64, StoreError> {
    job.handle
        .parse()
        .map_err(|_| StoreError::bug("not a handle of the embedded import queue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_without_a_job_are_found_unless_live() {
        let row = |at: i64, key: &str| (at, key.to_owned());
        let rows = vec![
            row(5, "a/file:0"),
            row(5, "a/job"),
            row(5, "a/results:0"),
            row(7, "b/file:0"),
            row(9, "b/file:1"),
            row(5, "b/file:0"),
            row(5, "c/file:0"),
            row(5, "no-slash"),
        ];
        let found = jobless(rows, &|id: &str| id == "c");
        assert_eq!(found.len(), 1, "{found:?}");
        let mut b = found["b"].clone();
        b.sort();
        assert_eq!(
            b,
            [row(5, "b/file:0"), row(7, "b/file:0"), row(9, "b/file:1")],
            "every row of the import, old ones too"
        );
    }

    #[test]
    fn a_part_reads_back_and_a_flipped_byte_is_refused() {
        let stored = encode(42, b"chunk");
        assert_eq!(decode(&stored).unwrap(), (42, &b"chunk"[..]));
        let mut flipped = stored.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&flipped), Err(StoreError::Corrupt(_))));
        assert!(decode(&stored[..5]).is_err());
    }
}
