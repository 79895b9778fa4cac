//! The embedded backend: one redb file in the data dir holding the serial counter, the secret and
//! the records. A leased block is committed with fsync before any of its serials is used, so a
//! crash at any point never costs uniqueness. Records are written behind (`--fsync everysec`):
//! buffered in memory, readable at once, and moved to disk in one fsynced transaction per sync
//! tick (every 200 ms); or (`--fsync always`) committed with fsync before the reply, in group
//! commits.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::deadline;
use super::disk::{Access, DiskGuard, file_identity, free_bytes, unwritten_bytes};
use super::memtable::{InsertError, Lookup, Memtable, Pending};
use super::{LeaseSource, RecordEntry, RecordStore, Removal, StoreError, Swap, clock_serial};
use crate::config::FsyncPolicy;
use crate::domain::codec::{Layout, NODE_COUNT, NODE_SERIALS, fingerprint};
use crate::domain::{Codec, TrackingNumber};
use crate::periodic::{Ticker, Wake};
use crate::serials::MAX_CLOCK_WAIT;

mod buckets;
mod imports;
mod replies;

pub use buckets::BUCKET_SERIALS;
use buckets::{BucketSize, Change, Found};
use replies::Claims;

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

/// Opens the database, waiting up to two seconds for a process that was just killed to let go
/// of the file lock (a restart right after `kill -9` would otherwise race the exiting process).
fn open_when_free(path: &Path, cache_size: u64) -> Result<Database, redb::DatabaseError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut builder = redb::Builder::new();
    builder.set_cache_size(usize::try_from(cache_size).unwrap_or(usize::MAX));
    loop {
        match builder.create(path) {
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
        let mut issued = tx.open_table(ISSUED)?;
        let mut others = tx.open_table(OTHERS)?;
        tx.open_table(EXPIRY)?;
        tx.open_table(BUCKETS)?;
        tx.open_table(BUCKET_EXPIRY)?;
        imports::create_tables(&tx)?;
        if meta.get(RECORD_FORMAT)?.is_none() {
            // A file from before records had checksums: give every record one, once.
            let migrated = add_checksums(&mut issued, &mut others)?;
            if migrated > 0 {
                tracing::info!(records = migrated, "records given checksums");
            }
            meta.insert(RECORD_FORMAT, [VALUE_VERSION].as_slice())?;
        }
        secret
    };
    tx.commit()?;
    Ok(secret)
}

/// Settles which node the data dir belongs to, and its layout: the ones it keeps, or (first
/// start with node ids) `known` (a file swapped under the running process keeps the process'),
/// else `given`, else node 0, kept now. A data dir started before node ids existed also keeps
/// where its serials end; and every data dir keeps the clock of its first start with node ids,
/// below which whole-space numbers are passed over ([`Layout::Nodes`]).
fn settle_node(
    db: &Database,
    given: Option<u8>,
    known: Option<(u8, Layout)>,
) -> anyhow::Result<(u8, Layout)> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let settled = {
        let mut meta = tx.open_table(META)?;
        let stored = meta.get(NODE_ID)?.map(|v| v.value().to_vec());
        let layout = meta.get(NODE_LAYOUT)?.map(|v| v.value().to_vec());
        match (stored.as_deref(), layout.as_deref()) {
            (Some(&[stored]), Some(layout)) => {
                let layout = decode_layout(layout)
                    .ok_or_else(|| anyhow::anyhow!("the data dir's node layout is damaged"))?;
                if let Some(given) = given.filter(|&given| given != stored) {
                    anyhow::bail!(
                        "this data dir belongs to node id {stored}; it cannot start with \
                         --node-id {given} (TRACKNUM_NODE_ID). A data dir keeps the node id it was \
                         first started with, since two instances with one node id issue the same \
                         numbers. Start it with --node-id {stored} (or none), or give node {given} \
                         a data dir of its own"
                    );
                }
                if let Some((known, _)) = known.filter(|&(known, _)| known != stored) {
                    anyhow::bail!(
                        "the data file now at the path belongs to node id {stored}, not {known}"
                    );
                }
                (stored, layout)
            }
            (None, None) => {
                let (node, layout) = match known {
                    Some(known) => known,
                    None => {
                        let next = match meta.get(SERIAL_NEXT)? {
                            Some(v) => u64::from_be_bytes(v.value().try_into()?),
                            None => 0,
                        };
                        // Past every record of ours it holds too (0 in a new data dir).
                        let past_records = tx
                            .open_table(ISSUED)?
                            .last()?
                            .map_or(0, |(serial, _)| serial.value() + 1);
                        // (No buckets yet: they came after node ids.)
                        let legacy_below = next.max(past_records);
                        let skip_below = legacy_below.max(clock_serial(SystemTime::now()));
                        let layout = Layout::Nodes {
                            legacy_below,
                            skip_below,
                        };
                        (given.unwrap_or(0), layout)
                    }
                };
                meta.insert(NODE_ID, [node].as_slice())?;
                meta.insert(NODE_LAYOUT, encode_layout(layout).as_slice())?;
                (node, layout)
            }
            _ => anyhow::bail!("the data dir's node id is damaged"),
        }
    };
    tx.commit()?;
    Ok(settled)
}

/// Settles the data dir's bucket size: the one it keeps, else `wanted`, kept now.
fn settle_buckets(db: &Database, wanted: u64) -> anyhow::Result<BucketSize> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    let size = {
        let mut meta = tx.open_table(META)?;
        let kept = meta.get(BUCKET_SIZE)?.map(|v| v.value().to_vec());
        match kept {
            Some(kept) => <[u8; 8]>::try_from(kept.as_slice())
                .ok()
                .map(u64::from_be_bytes)
                .and_then(BucketSize::new)
                .ok_or_else(|| anyhow::anyhow!("the data dir's bucket size is damaged"))?,
            None => {
                let size = BucketSize::new(wanted).ok_or_else(|| {
                    anyhow::anyhow!("{wanted} serials per bucket: not a size a bucket can have")
                })?;
                meta.insert(BUCKET_SIZE, wanted.to_be_bytes().as_slice())?;
                size
            }
        }
    };
    tx.commit()?;
    Ok(size)
}

/// A node layout as kept in the data dir: `legacy_below` and `skip_below`, big-endian.
fn encode_layout(layout: Layout) -> [u8; 16] {
    let (legacy_below, skip_below) = match layout {
        Layout::Nodes {
            legacy_below,
            skip_below,
        } => (legacy_below, skip_below),
        Layout::Shared => (0, 0),
    };
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&legacy_below.to_be_bytes());
    bytes[8..].copy_from_slice(&skip_below.to_be_bytes());
    bytes
}

fn decode_layout(bytes: &[u8]) -> Option<Layout> {
    let (legacy_below, skip_below) = bytes.split_at_checked(8)?;
    let legacy_below = u64::from_be_bytes(legacy_below.try_into().ok()?);
    let skip_below = u64::from_be_bytes(skip_below.try_into().ok()?);
    (skip_below >= legacy_below).then_some(Layout::Nodes {
        legacy_below,
        skip_below,
    })
}

/// Gives every record of a file from before checksums the current layout; returns how many.
fn add_checksums(
    issued: &mut redb::Table<'_, u64, &'static [u8]>,
    others: &mut redb::Table<'_, &'static str, &'static [u8]>,
) -> anyhow::Result<u64> {
    let mut serials = Vec::new();
    for row in issued.iter()? {
        let (key, value) = row?;
        if let Some(value) = with_checksum(value.value()) {
            serials.push((key.value(), value));
        }
    }
    let mut names = Vec::new();
    for row in others.iter()? {
        let (key, value) = row?;
        if let Some(value) = with_checksum(value.value()) {
            names.push((key.value().to_owned(), value));
        }
    }
    let count = (serials.len() + names.len()) as u64;
    for (serial, value) in serials {
        issued.insert(serial, value.as_slice())?;
    }
    for (name, value) in names {
        others.insert(name.as_str(), value.as_slice())?;
    }
    Ok(count)
}

/// A record of the layout without a checksum (expiry, number length, number, JSON), in the
/// current layout; None if it is not one.
fn with_checksum(old: &[u8]) -> Option<Vec<u8>> {
    let expires_ms = i64::from_be_bytes(old.get(..8)?.try_into().ok()?);
    let len = usize::from(*old.get(8)?);
    let number = std::str::from_utf8(old.get(9..9 + len)?).ok()?;
    let mut value = Vec::new();
    encode_value(&mut value, expires_ms, number, &old[9 + len..]);
    Some(value)
}

/// Stores a generated secret in a data file that holds none yet.
fn keep_generated_secret(db: &Database, secret: &str) -> anyhow::Result<()> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    {
        let mut meta = tx.open_table(META)?;
        if meta.get(GENERATED_SECRET)?.is_none() && meta.get(SECRET_FINGERPRINT)?.is_none() {
            meta.insert(GENERATED_SECRET, secret.as_bytes())?;
        }
    }
    tx.commit()?;
    Ok(())
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

#[async_trait]
impl LeaseSource for EmbeddedStore {
    /// Serials count microseconds since 2025 in a node's partition, and none is handed out
    /// before the clock has passed it.
    fn paced_in(&self) -> Option<u64> {
        Some(NODE_SERIALS)
    }

    /// A block starts past the counter, the caller's floor, every record on disk, and the
    /// clock: serials count microseconds since 2025, and none is handed out before the clock
    /// has passed it (the pool paces them, [`LeaseSource::paced_in`]). So no state of the file
    /// (truncated, deleted, restored from a backup) can bring back a serial that was issued: a
    /// restart always starts at the clock, past them. A block is handed over at once and its
    /// serials come due one by one as the clock passes them: a block that waited for the clock
    /// to pass its end held every serial of it back (the pool of a busy instance ran dry for
    /// up to 500 ms as its blocks grew, and four batches got a 503).
    ///
    /// Each node counts in its own partition of the serial space ([`NODE_SERIALS`] from
    /// `node * NODE_SERIALS`), so instances with distinct node ids never meet.
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let base = u64::from(self.node) * NODE_SERIALS;
        let top = base + NODE_SERIALS;
        let clock = base + clock_serial(SystemTime::now());
        let bucket = self.bucket;
        let range = self
            .blocking(Access::Change, move |db| {
                // The block is on disk before any serial of it is handed out.
                let tx = begin_durable(db)?;
                let range = {
                    let mut meta = tx.open_table(META).map_err(db_err)?;
                    let next = match meta.get(SERIAL_NEXT).map_err(db_err)? {
                        Some(v) => u64::from_be_bytes(v.value().try_into().map_err(corrupt)?),
                        None => 0,
                    };
                    // Past every record of this node on disk too, should the counter ever have
                    // gone back.
                    let past_records = tx
                        .open_table(ISSUED)
                        .map_err(db_err)?
                        .range(base..top)
                        .map_err(db_err)?
                        .next_back()
                        .transpose()
                        .map_err(db_err)?
                        .map_or(0, |(serial, _)| serial.value() + 1);
                    // A bucket is passed whole: its last entries may be damaged, and unreadable.
                    let past_buckets = tx
                        .open_table(BUCKETS)
                        .map_err(db_err)?
                        .range(bucket.ids_of(base..top))
                        .map_err(db_err)?
                        .next_back()
                        .transpose()
                        .map_err(db_err)?
                        .map_or(0, |(id, _)| bucket.end_of(id.value()));
                    let start = next
                        .max(floor)
                        .max(past_records)
                        .max(past_buckets)
                        .max(clock);
                    let end = start
                        .checked_add(size)
                        .filter(|&end| end <= top)
                        .ok_or_else(|| {
                            StoreError::Bug("this node's serial space is exhausted".into())
                        })?;
                    meta.insert(SERIAL_NEXT, end.to_be_bytes().as_slice())
                        .map_err(db_err)?;
                    start..end
                };
                tx.commit().map_err(db_err)?;
                Ok(range)
            })
            .await?;
        warn_if_far_ahead(range.start - base);
        Ok(range)
    }
}

/// Says so when `serial` is further ahead of the clock than the pool waits for
/// ([`MAX_CLOCK_WAIT`]): the clock went back.
fn warn_if_far_ahead(serial: u64) {
    let ahead = Duration::from_micros(serial.saturating_sub(clock_serial(SystemTime::now())));
    if ahead > MAX_CLOCK_WAIT {
        tracing::warn!(
            ?ahead,
            "the serial counter is ahead of the clock (did the clock go back?); until it \
             catches up, a wiped data file could repeat numbers"
        );
    }
}

/// The layout of a stored value, first byte of every value.
const VALUE_VERSION: u8 = 2;
/// Version, checksum, expiry and the number's length.
const VALUE_HEADER: usize = 1 + 4 + 8 + 1;

/// A stored value: the layout version (1 byte), a CRC-32 of all that follows (4 bytes), the
/// expiry (ms since the epoch, 8 bytes big-endian), the number's length (1 byte) and the
/// number, then the record JSON. Every read checks the checksum, so a flipped byte anywhere in
/// a value is refused as corrupt instead of served.
fn encode_value(out: &mut Vec<u8>, expires_ms: i64, number: &str, json: &[u8]) {
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

struct Stored<'a> {
    expires_ms: i64,
    number: &'a [u8],
    json: &'a [u8],
}

fn decode_value(value: &[u8]) -> Result<Stored<'_>, StoreError> {
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
enum Slot<'a> {
    /// One of our numbers: in its serial's bucket (or, written before buckets, in ISSUED).
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

/// What a bucket entry keeps of its number: the characters its serial does not say.
fn prefix_of(number: &str) -> [u8; 4] {
    let mut prefix = [0; 4];
    if let Some(head) = number.as_bytes().get(..4) {
        prefix.copy_from_slice(head);
    }
    prefix
}

/// The record tables, as opened by one transaction.
struct Tables<T, U, V> {
    /// Records of ours written before buckets: read, changed and removed, never added to.
    issued: T,
    others: U,
    buckets: V,
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
    fn legacy_record<R>(
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

fn write_tables(tx: &WriteTransaction, size: BucketSize) -> Result<WriteTables<'_>, StoreError> {
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
    size: BucketSize,
    records: impl Iterator<Item = (&'a str, Option<u64>, i64, &'a [u8])>,
    only_new: bool,
) -> Result<Vec<bool>, StoreError> {
    let tx = begin_durable(db)?;
    let written = write_in(&tx, codec, size, records, only_new)?;
    tx.commit().map_err(db_err)?;
    Ok(written)
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
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
fn write_in<'a>(
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
fn bucket_row(
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
fn remove_in(
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
fn holds_live(
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
    async fn flush_locked(&self) -> Result<(), StoreError> {
        self.flush_as(Access::Change).await
    }

    /// [`EmbeddedStore::flush_locked`], held to the guards of `access` (a recovery flushes
    /// while the disk still counts as failed).
    async fn flush_as(&self, access: Access) -> Result<(), StoreError> {
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
    async fn change_on_disk<T: Send + 'static>(
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
    async fn insert_rows(
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
    async fn get_rows(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>, StoreError> {
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

    async fn get_row(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
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
