//! The record store ([`RecordStore`]): reads, inserts, swaps and removals of records, and the
//! purge of expired ones.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use redb::{ReadableTable, WriteTransaction};

use crate::domain::TrackingNumber;
use crate::store::disk::Access;
use crate::store::memtable::Pending;
use crate::store::{RecordEntry, RecordStore, Removal, StoreError, Swap};

use super::{
    BUCKET_EXPIRY, EXPIRY, EmbeddedStore, PURGE_BUCKETS, PURGE_GROUPS, Slot, begin_durable,
    bucket_row, buckets, db_err, group_numbers, holds_live, imports, remove_in, slot, write_in,
    write_tables,
};

#[async_trait]
impl RecordStore for EmbeddedStore {
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        let rows = entries.iter().map(|e| {
            let pending = Pending {
                serial: e.serial,
                expires_ms: e.expires_at.timestamp_millis(),
                value: e.value.clone(),
            };
            (e.tracking_number.as_str().to_owned(), pending)
        });
        self.insert_rows(rows.collect(), true).await
    }

    fn wants_group_commit(&self) -> bool {
        self.memtable.is_none()
    }

    async fn get(&self, tracking_number: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
        self.get_row(tracking_number.as_str()).await
    }

    /// Ready when the disk takes new records.
    async fn ping(&self) -> Result<(), StoreError> {
        self.admit(Access::Grow)?;
        self.database().map(drop)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let _flushing = self.flush_lock.lock().await;
        self.flush_locked().await
    }

    fn free_disk_bytes(&self) -> Option<u64> {
        Some(self.disk.free())
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let (expected, entry) = (expected.clone(), entry.clone());
        let number = entry.tracking_number;
        self.change_on_disk(number.as_str(), Access::Grow, move |tx, codec, size| {
            if holds_live(tx, codec, size, number.as_str(), Some(&expected))? != Some(true) {
                return Ok((Swap::Changed, false));
            }
            let record = (
                entry.tracking_number.as_str(),
                entry.serial,
                entry.expires_at.timestamp_millis(),
                entry.value.as_ref(),
            );
            write_in(tx, codec, size, std::iter::once(record), false)?;
            Ok((Swap::Replaced, true))
        })
        .await
    }

    async fn remove(
        &self,
        tracking_number: &TrackingNumber,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        let number = *tracking_number;
        let expected = expected.cloned();
        self.change_on_disk(number.as_str(), Access::Change, move |tx, codec, size| {
            let number = number.as_str();
            match holds_live(tx, codec, size, number, expected.as_deref())? {
                None => return Ok((Removal::Missing, false)),
                Some(false) => return Ok((Removal::Changed, false)),
                Some(true) => {}
            }
            remove_in(tx, codec, size, number)?;
            Ok((Removal::Removed, true))
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let codec = self.codec.clone();
        let bucket = self.bucket;
        self.blocking(Access::Change, move |db| {
            let now = Utc::now().timestamp_millis();
            let tx = begin_durable(db)?;
            let mut removed = 0;
            {
                let mut tables = write_tables(&tx, bucket)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(db_err)?;
                let due: Vec<((i64, u64), Vec<u8>)> = expiry
                    .range((i64::MIN, 0)..(now, 0))
                    .map_err(db_err)?
                    .take(PURGE_GROUPS)
                    .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(db_err)?;
                for (key, numbers) in &due {
                    expiry.remove(*key).map_err(db_err)?;
                    for number in group_numbers(numbers) {
                        // A record whose expiry moved later since stays (one that moved to
                        // its bucket is no longer in the table its group names).
                        let slot = slot(&codec, number);
                        let expired = tables
                            .legacy_record(slot, number, |stored| stored.expires_ms <= now)?;
                        if expired == Some(true) {
                            match slot {
                                Slot::Issued(serial) => tables.issued.remove(serial).map(drop),
                                Slot::Other(key) => tables.others.remove(key).map(drop),
                            }
                            .map_err(db_err)?;
                            removed += 1;
                        }
                    }
                }
                removed += purge_buckets(&tx, &mut tables.buckets, now)?;
            }
            imports::purge(&tx, now)?;
            tx.commit().map_err(db_err)?;
            Ok(removed)
        })
        .await
    }
}

/// Removes the buckets whose latest expiry has passed, and the expired records of buckets
/// whose key was stale (a record in them lives longer since); returns how many records went.
/// A bucket whose intact records have all expired goes whole, damaged bytes included.
fn purge_buckets(
    tx: &WriteTransaction,
    rows: &mut redb::Table<'_, u64, &'static [u8]>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut due_table = tx.open_table(BUCKET_EXPIRY).map_err(db_err)?;
    let due: Vec<(i64, u64)> = due_table
        .range((i64::MIN, 0)..(now, 0))
        .map_err(db_err)?
        .take(PURGE_BUCKETS)
        .map(|item| item.map(|(key, _)| key.value()))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    let mut removed = 0;
    let mut row = Vec::new();
    for key in due {
        due_table.remove(key).map_err(db_err)?;
        let id = key.1;
        let old = bucket_row(rows, id)?;
        if old.is_empty() {
            continue;
        }
        let summary = buckets::rewrite(&old, id, &[], now, &mut row);
        removed += summary.expired as u64;
        match summary.latest_ms {
            None => {
                rows.remove(id).map_err(db_err)?;
            }
            Some(latest) => {
                if summary.expired > 0 {
                    rows.insert(id, row.as_slice()).map_err(db_err)?;
                }
                due_table.insert((latest, id), ()).map_err(db_err)?;
            }
        }
    }
    Ok(removed)
}
