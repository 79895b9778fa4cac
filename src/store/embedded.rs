//! The embedded backend: one redb file in the data dir holding the serial counter, the secret and
//! the records. A leased block is committed with fsync before any of its serials is used, so a
//! crash at any point can lose records written under `--fsync everysec`, never uniqueness.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{LeaseSource, RecordEntry, RecordStore, StoreError};
use crate::config::FsyncPolicy;
use crate::domain::codec::{SERIAL_SPACE, fingerprint};

/// Small named values: the counter and the secret.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Tracking number → expiry (ms since the epoch, 8 bytes big-endian) followed by the record JSON.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// (expiry ms, tracking number): the purge walks this in order instead of scanning every record.
const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");

const SERIAL_NEXT: &str = "serial_next";
const SECRET_FINGERPRINT: &str = "secret_fingerprint";
const GENERATED_SECRET: &str = "generated_secret";
/// At most this many expired records are removed per purge transaction.
const PURGE_BATCH: usize = 10_000;

pub struct EmbeddedStore {
    db: Arc<Database>,
    durability: Durability,
    /// Set when a commit was made without fsync, cleared by `sync`.
    unsynced: Arc<AtomicBool>,
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
        let db = Database::create(&path).map_err(|e| match e {
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
            durability: match fsync {
                FsyncPolicy::Always => Durability::Immediate,
                FsyncPolicy::Everysec => Durability::None,
            },
            unsynced: Arc::new(AtomicBool::new(false)),
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
        tx.open_table(RECORDS)?;
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
            let mut tx = db.begin_write().map_err(corrupt)?;
            // The block is on disk before any serial of it is handed out.
            tx.set_durability(Durability::Immediate).map_err(corrupt)?;
            let range = {
                let mut meta = tx.open_table(META).map_err(corrupt)?;
                let next = match meta.get(SERIAL_NEXT).map_err(corrupt)? {
                    Some(v) => u64::from_be_bytes(v.value().try_into().map_err(corrupt)?),
                    None => 0,
                };
                let start = next.max(floor);
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

fn expiry_of(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[async_trait]
impl RecordStore for EmbeddedStore {
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        let entries = entries.to_vec();
        let durability = self.durability;
        let unsynced = self.unsynced.clone();
        self.blocking(move |db| {
            let now = Utc::now().timestamp_millis();
            let mut tx = db.begin_write().map_err(corrupt)?;
            tx.set_durability(durability).map_err(corrupt)?;
            let mut stored = Vec::with_capacity(entries.len());
            {
                let mut records = tx.open_table(RECORDS).map_err(corrupt)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(corrupt)?;
                let mut value = Vec::new();
                for entry in &entries {
                    let live = records
                        .get(entry.tracking_number.as_str())
                        .map_err(corrupt)?
                        .and_then(|v| expiry_of(v.value()))
                        .is_some_and(|expires| expires > now);
                    if live {
                        stored.push(false);
                        continue;
                    }
                    let expires = entry.expires_at.timestamp_millis();
                    value.clear();
                    value.extend_from_slice(&expires.to_be_bytes());
                    value.extend_from_slice(&entry.json);
                    records
                        .insert(entry.tracking_number.as_str(), value.as_slice())
                        .map_err(corrupt)?;
                    expiry
                        .insert((expires, entry.tracking_number.as_str()), ())
                        .map_err(corrupt)?;
                    stored.push(true);
                }
            }
            tx.commit().map_err(StoreError::unavailable)?;
            if !matches!(durability, Durability::Immediate) {
                unsynced.store(true, Ordering::Release);
            }
            Ok(stored)
        })
        .await
    }

    async fn get(&self, tracking_number: &str) -> Result<Option<Bytes>, StoreError> {
        let key = tracking_number.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(corrupt)?;
            let records = tx.open_table(RECORDS).map_err(corrupt)?;
            let Some(value) = records.get(key.as_str()).map_err(corrupt)? else {
                return Ok(None);
            };
            let value = value.value();
            let expires = expiry_of(value).ok_or_else(|| corrupt("short record"))?;
            if expires <= Utc::now().timestamp_millis() {
                return Ok(None);
            }
            Ok(Some(Bytes::copy_from_slice(&value[8..])))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        if !self.unsynced.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let unsynced = self.unsynced.clone();
        self.blocking(move |db| {
            // An empty durable commit makes every earlier non-durable commit durable too.
            let result = (|| {
                let mut tx = db.begin_write().map_err(StoreError::unavailable)?;
                tx.set_durability(Durability::Immediate).map_err(corrupt)?;
                tx.commit().map_err(StoreError::unavailable)
            })();
            if result.is_err() {
                unsynced.store(true, Ordering::Release);
            }
            result
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let now = Utc::now().timestamp_millis();
            let mut tx = db.begin_write().map_err(corrupt)?;
            tx.set_durability(Durability::Immediate).map_err(corrupt)?;
            let mut removed = 0;
            {
                let mut records = tx.open_table(RECORDS).map_err(corrupt)?;
                let mut expiry = tx.open_table(EXPIRY).map_err(corrupt)?;
                let due: Vec<(i64, String)> = expiry
                    .range((i64::MIN, "")..(now, ""))
                    .map_err(corrupt)?
                    .take(PURGE_BATCH)
                    .map(|item| item.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                    .collect::<Result<_, _>>()
                    .map_err(corrupt)?;
                for (expires, number) in &due {
                    expiry
                        .remove((*expires, number.as_str()))
                        .map_err(corrupt)?;
                    // The number may since hold a newer record with a later expiry: keep that one.
                    let same = records
                        .get(number.as_str())
                        .map_err(corrupt)?
                        .and_then(|v| expiry_of(v.value()))
                        == Some(*expires);
                    if same {
                        records.remove(number.as_str()).map_err(corrupt)?;
                        removed += 1;
                    }
                }
            }
            tx.commit().map_err(StoreError::unavailable)?;
            Ok(removed)
        })
        .await
    }
}
