//! The embedded backend: one redb file in the data dir holding the serial counter, the secret and
//! the records. A leased block is committed with fsync before any of its serials is used, so a
//! crash at any point never costs uniqueness. Records are written behind (`--fsync everysec`):
//! buffered in memory, readable at once, and moved to disk in one fsynced transaction per sync
//! tick (every 200 ms); or (`--fsync always`) committed with fsync before the reply, in group
//! commits.
//!
//! Its rooms: `open` settles a data dir (the file, the secret, the node and the bucket size it
//! was made with); `lease` leases serials from the counter; `rows` is the value layout, the
//! tables and the write-behind path to disk; `records` is the record store on top; `buckets`
//! packs records by serial; `replies` keeps idempotency replies, and `imports` imports' parts
//! and queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use chrono::Utc;
use redb::{Database, TableDefinition};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::deadline;
use super::disk::{Access, DiskGuard, file_identity, free_bytes, unwritten_bytes};
use super::memtable::Memtable;
use super::{RecordStore, StoreError};
use crate::config::FsyncPolicy;
use crate::domain::Codec;
use crate::domain::codec::NODE_COUNT;
use crate::periodic::{Ticker, Wake};

mod buckets;
mod imports;
mod lease;
mod open;
mod records;
mod replies;
mod rows;

pub use buckets::BUCKET_SERIALS;
use buckets::{BucketSize, Change, Found};
use open::{keep_generated_secret, open_when_free, settle_buckets, settle_node, settle_secret};
use replies::Claims;
use rows::{
    Slot, VALUE_VERSION, begin_durable, bucket_row, decode_value, encode_value, group_numbers,
    holds_live, remove_in, slot, write_in, write_tables,
};

/// Small named values: the counter and the secret.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Records of numbers this service issued, [`BUCKET_SERIALS`] consecutive serials to a row
/// keyed by bucket id (serial / the size; see [`buckets`]): a flush rewrites one row
/// per bucket, not one B-tree entry per record, and a bucket costs one key for a few hundred
/// records. Serials grow, so new buckets append at the right edge of the tree.
const BUCKETS: TableDefinition<u64, &[u8]> = TableDefinition::new("buckets");
/// (latest expiry ms, bucket id): what the purge walks, so it reads the buckets that are due,
/// never every bucket. Moved when a write moves a bucket's latest expiry.
const BUCKET_EXPIRY: TableDefinition<(i64, u64), ()> = TableDefinition::new("bucket_expiry");
/// Records of our numbers written before buckets, keyed by serial, one row each (see
/// [`encode_value`]). Read, changed and removed as before; a record that changes moves to its
/// bucket. Nothing new is added here.
const ISSUED: TableDefinition<u64, &[u8]> = TableDefinition::new("issued");
/// Records of any other number, keyed by the number itself; also the replies of idempotency
/// keys, under names that begin with `~` (no tracking number holds one; see [`replies`]).
const OTHERS: TableDefinition<&str, &[u8]> = TableDefinition::new("others");
/// (latest expiry ms, group id) → the numbers written together (into OTHERS, or into ISSUED
/// before buckets), each prefixed by its length. One row per write, not per record: the purge
/// walks the due rows instead of scanning every record.
const EXPIRY: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("expiry");

const SERIAL_NEXT: &str = "serial_next";
/// The node id the data dir was first started with (one byte).
const NODE_ID: &str = "node_id";
/// The data dir's [`Layout::Nodes`]: where its serials from before node ids end, and below
/// which whole-space numbers are passed over (see [`encode_layout`]).
const NODE_LAYOUT: &str = "node_layout";
const SECRET_FINGERPRINT: &str = "secret_fingerprint";
const GENERATED_SECRET: &str = "generated_secret";
/// The layout of stored records (see [`encode_value`]); absent in files from before checksums.
const RECORD_FORMAT: &str = "record_format";
/// Serials per bucket in this data dir (8 bytes big-endian), kept from its first start with
/// buckets: every bucket id depends on it.
const BUCKET_SIZE: &str = "bucket_serials";
/// At most this many expiry groups are purged per transaction.
const PURGE_GROUPS: usize = 64;
/// At most this many due buckets are purged per transaction (about 4 MB of rows).
const PURGE_BUCKETS: usize = 256;
/// Records that may wait in memory for the disk before new ones are refused (503): about 60 MB.
const MEMTABLE_LIMIT: usize = 100_000;
/// Past this many waiting records, the buffer is flushed at once rather than at the next tick.
const FLUSH_EARLY_AT: usize = 25_000;
/// How long a writer that finds the buffer full waits for a flush to take it. Flushes that
/// took up to 430 ms (a slow `fsync`) were seen under `scripts/bench-batch.sh`.
const ROOM_WAIT: Duration = Duration::from_millis(500);
/// Records buffered in memory reach the disk within this window, or new ones are refused: what
/// a crash under `--fsync everysec` can lose.
pub const WRITE_BEHIND_WINDOW: Duration = Duration::from_secs(1);
/// How often the free space and the data file are checked.
const UPKEEP_EVERY: Duration = Duration::from_millis(250);
const FILE_NAME: &str = "tracknum.redb";
/// When the store last recovered from a disk failure (its proof that the disk takes writes).
const LAST_RECOVERY: &str = "last_recovery";
/// A failed disk is tried again once it has at least this much room (and --min-free-disk).
const RECOVERY_FREE: u64 = 1 << 20;

/// How the embedded store runs.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub fsync: FsyncPolicy,
    /// redb's page cache, in bytes.
    pub cache_size: u64,
    /// New records are refused below this much free disk space.
    pub min_free_disk: u64,
    /// Longest wait for the disk before a call fails (a 503).
    pub timeout: Duration,
    /// `--node-id`: the partition of the serial space this instance issues from. None: the one
    /// the data dir keeps, or 0 for a new one.
    pub node_id: Option<u8>,
    /// Serials per bucket in a new data dir (one that has its size keeps it); it must divide
    /// a node's partition and be at most 32,768. For measuring other sizes.
    pub bucket_serials: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            fsync: FsyncPolicy::Everysec,
            cache_size: 64 << 20,
            min_free_disk: 0,
            timeout: Duration::from_secs(2),
            node_id: None,
            bucket_serials: BUCKET_SERIALS,
        }
    }
}

pub struct EmbeddedStore {
    path: PathBuf,
    /// Kept to re-open the database after a disk failure, with whether it was given (else it
    /// was generated and lives in the data file).
    secret: String,
    secret_given: bool,
    options: EmbeddedOptions,
    /// The open database; None while it is being re-opened.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    /// Which file the database has open (device, inode), to notice it being swapped.
    identity: std::sync::Mutex<Option<(u64, u64)>>,
    /// Maps a number of ours back to its serial, the key of its record; in this node's layout.
    codec: Codec,
    /// The node whose partition of the serial space this data dir issues from.
    node: u8,
    /// Serials per bucket, as the data dir keeps it.
    bucket: BucketSize,
    /// Present under `--fsync everysec`: the write-behind buffer.
    memtable: Option<Arc<Memtable>>,
    /// Held while the buffer is flushed, and while a record is changed in place: a change
    /// first moves the record's buffered version to disk, then edits it there.
    flush_lock: tokio::sync::Mutex<()>,
    /// Wakes the upkeep task to flush before its tick (the buffer is filling fast).
    flush_soon: tokio::sync::Notify,
    /// Wakes writers waiting for room in the buffer: a flush has taken its records.
    room: tokio::sync::Notify,
    disk: Arc<DiskGuard>,
    /// Idempotency keys claimed by running requests (one process owns the data dir, so claims
    /// need not outlive it): each key's claim, and when the claim runs out.
    claims: tokio::sync::Mutex<Claims>,
    /// Until when replies stored under digests of keys that now have names may live (ms since
    /// the epoch; see [`replies`]). Settled again when the data file is re-opened.
    legacy_replies_until: AtomicI64,
    /// Queued imports taken by workers of this process: the queue's sequence number → the
    /// worker and when it last touched the job. Not kept on disk: after a restart, every
    /// queued job is free again, and the job resumes.
    import_claims: std::sync::Mutex<HashMap<u64, (String, std::time::Instant)>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and settles the secret (the given one, which must
    /// match the one this data dir was first used with, or else the one generated on first use)
    /// and the node id (the one the data dir keeps; a new data dir keeps the given one, or 0).
    /// Returns the store and the secret to use; [`EmbeddedStore::codec`] numbers its serials.
    pub fn open(
        dir: &Path,
        secret: Option<&str>,
        options: EmbeddedOptions,
    ) -> Result<(Self, String), anyhow::Error> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        let path = dir.join(FILE_NAME);
        let db = open_when_free(&path, options.cache_size).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => anyhow::anyhow!(
                "{} is in use by another tracknum process. Several embedded instances each need \
                 their own --data-dir and a distinct --node-id (0 to {}), or they issue the same \
                 numbers; for one counter shared by every instance, use Redis (--redis-url)",
                path.display(),
                NODE_COUNT - 1
            ),
            e => anyhow::anyhow!("cannot open {}: {e}", path.display()),
        })?;
        let given_secret = secret.is_some();
        let secret = settle_secret(&db, secret)?;
        let (node, layout) = settle_node(&db, options.node_id, None)?;
        let bucket = settle_buckets(&db, options.bucket_serials)?;
        let legacy_replies_until = AtomicI64::new(replies::settle_legacy_replies(&db)?);
        let now = Utc::now().timestamp_millis();
        let window = match options.fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Everysec => Some(WRITE_BEHIND_WINDOW),
        };
        let disk = Arc::new(DiskGuard::new(options.min_free_disk, window, now));
        if let Ok(free) = free_bytes(dir) {
            disk.measured(free.saturating_sub(unwritten_bytes(&path)));
        }
        let store = EmbeddedStore {
            identity: std::sync::Mutex::new(file_identity(&path)),
            path,
            codec: Codec::with_layout(secret.as_bytes(), layout),
            node,
            bucket,
            secret: secret.clone(),
            secret_given: given_secret,
            memtable: window.map(|_| Arc::default()),
            options,
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            flush_lock: tokio::sync::Mutex::new(()),
            flush_soon: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
            disk,
            claims: tokio::sync::Mutex::default(),
            legacy_replies_until,
            import_claims: std::sync::Mutex::default(),
        };
        Ok((store, secret))
    }

    /// The codec of this data dir's node: what the issuer must number its serials with.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    pub fn node_id(&self) -> u8 {
        self.node
    }

    /// The open database, or why there is none right now.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::NotWritable("the data file is being re-opened".into()))
    }

    /// Refuses a call the disk cannot take now (full, failed, frozen, swapped).
    fn admit(&self, access: Access) -> Result<(), StoreError> {
        self.admit_at(access, Utc::now().timestamp_millis())
    }

    fn admit_at(&self, access: Access, now_ms: i64) -> Result<(), StoreError> {
        match self.disk.refusal(access, now_ms) {
            Some(reason) => Err(StoreError::NotWritable(reason)),
            None => Ok(()),
        }
    }

    /// Runs blocking redb work off the async workers, within the storage timeout. A call that
    /// outlives it keeps its thread (a frozen disk cannot be interrupted); until it returns,
    /// the calls it holds up are refused at once, so they do not pile up: a stalled write
    /// refuses writes (reads read the last commit and go on), a stalled read refuses all.
    /// An I/O failure marks the disk failed; a panic inside redb is caught and becomes a 500.
    async fn blocking<T: Send + 'static>(
        &self,
        access: Access,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.admit(access)?;
        let db = self.database()?;
        let mut task = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&db))).unwrap_or_else(
                |panic| {
                    let text = crate::telemetry::panic_text(&*panic).to_owned();
                    Err(StoreError::Bug(format!("redb panicked: {text}")))
                },
            )
        });
        let limit = deadline::limit(self.options.timeout);
        let result = match tokio::time::timeout(limit, &mut task).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(StoreError::Bug(e.to_string()))),
            Err(_) => {
                let disk = self.disk.clone();
                disk.stall_began(access);
                tokio::spawn(async move {
                    let _ = task.await;
                    disk.stall_ended(access);
                });
                return Err(StoreError::Unavailable(
                    "the disk did not answer in time".into(),
                ));
            }
        };
        if let Err(StoreError::NotWritable(reason)) = &result {
            self.disk.failed(reason);
        }
        result
    }

    /// Starts what keeps the store healthy: every quarter second it measures the free space,
    /// checks that the data file is still the one open, and re-opens the database after a disk
    /// failure once there is room again; it also flushes the write-behind buffer early when
    /// told to. Ends when `stop` is cancelled.
    pub fn spawn_upkeep(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = Ticker::new(UPKEEP_EVERY, stop);
            while let Some(wake) = ticker.tick_or(store.flush_soon.notified()).await {
                match wake {
                    Wake::Tick => store.check_disk().await,
                    Wake::Event(()) => {
                        if let Err(err) = store.sync().await {
                            tracing::warn!(error = %err, "early flush failed");
                        }
                    }
                }
            }
        })
    }

    async fn check_disk(&self) {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match free_bytes(dir) {
            Ok(free) => {
                // The data file's holes count as used: redb fills them before it grows again.
                self.disk
                    .measured(free.saturating_sub(unwritten_bytes(&self.path)));
            }
            Err(err) => tracing::warn!(error = %err, "cannot measure the free disk space"),
        }
        let open = *self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if file_identity(&self.path) != open {
            self.disk.mark_replaced();
        }
        let room = self.disk.min_free().max(RECOVERY_FREE);
        if self.disk.has_failed() && self.disk.free() >= room {
            match self.reopen().await {
                Ok(()) => tracing::info!("the data file is open again; writes go on"),
                Err(err) => {
                    tracing::warn!(error = %err, "re-opening the data file failed; retrying")
                }
            }
        }
    }

    /// Closes the database and opens the file at the path again (a new one if it is gone), then
    /// proves the disk takes a durable write and writes out the buffered records; only then do
    /// writes go on. redb refuses all work after an I/O error until it is re-opened.
    async fn reopen(&self) -> Result<(), StoreError> {
        let _flushing = self.flush_lock.lock().await;
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        let (path, cache, secret) = (
            self.path.clone(),
            self.options.cache_size,
            self.secret.clone(),
        );
        let given = self.secret_given;
        let node = (self.node, self.codec.layout());
        let bucket = self.bucket;
        let reopened = tokio::task::spawn_blocking(move || {
            // redb locks its file: the old handle must be gone before the new one opens. Calls
            // still using it end within the storage timeout.
            let mut old = old;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while let Some(db) = old.take() {
                match Arc::try_unwrap(db) {
                    Ok(db) => drop(db),
                    Err(_) if std::time::Instant::now() > deadline => {
                        return Err(StoreError::Unavailable(
                            "the data file is still in use".into(),
                        ));
                    }
                    Err(db) => {
                        old = Some(db);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            let db = open_when_free(&path, cache).map_err(db_err)?;
            let settled = if given {
                settle_secret(&db, Some(&secret))
            } else {
                // A new file at the path must keep the secret this process generated.
                keep_generated_secret(&db, &secret).and_then(|()| settle_secret(&db, None))
            };
            // A new file at the path keeps this process' node and bucket size too.
            let settled = settled.and_then(|secret| {
                settle_node(&db, None, Some(node))?;
                if settle_buckets(&db, bucket.serials())? != bucket {
                    anyhow::bail!("the data file now at the path has another bucket size");
                }
                Ok((secret, replies::settle_legacy_replies(&db)?))
            });
            match settled {
                Ok((same, legacy_until)) if same == secret => Ok((db, legacy_until)),
                Ok(_) => Err(StoreError::Bug(
                    "the data file now at the path was made with another secret".into(),
                )),
                Err(e) => Err(StoreError::Unavailable(format!("{e:#}"))),
            }
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Bug(e.to_string())))?;
        let (reopened, legacy_until) = reopened;
        self.legacy_replies_until
            .store(legacy_until, std::sync::atomic::Ordering::Relaxed);
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(reopened));
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = file_identity(&self.path);
        self.blocking(Access::Repair, |db| {
            let tx = begin_durable(db)?;
            let stamp = Utc::now().timestamp_millis().to_be_bytes();
            tx.open_table(META)
                .map_err(db_err)?
                .insert(LAST_RECOVERY, stamp.as_slice())
                .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await?;
        self.flush_as(Access::Repair).await?;
        self.disk.recovered();
        Ok(())
    }
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// What a redb error means here: a failing disk (writes stop until the database is re-opened),
/// a corrupt file (a 500), or a bug.
fn db_err(err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            StoreError::NotWritable("the disk is full".into())
        }
        redb::Error::Io(io) => StoreError::NotWritable(format!("an I/O error ({:?})", io.kind())),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed | redb::Error::LockPoisoned(_) => {
            StoreError::NotWritable("an earlier disk failure".into())
        }
        redb::Error::Corrupted(what) => StoreError::Corrupt(what),
        other => StoreError::Bug(other.to_string()),
    }
}
