//! Storage behind three traits: `LeaseSource` hands out blocks of the global serial counter,
//! `RecordStore` keeps the records of issued numbers, and `ReplyStore` keeps the state of
//! idempotency keys. `redis` and `embedded` implement all three; `writer` batches concurrent
//! record writes into one storage round trip.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::domain::TrackingNumber;

pub mod deadline;
pub mod disk;
pub mod embedded;
mod memtable;
pub mod metered;
pub mod redis;
pub mod writer;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use metered::MeteredStore;
pub use redis::{RedisOptions, RedisStore};
pub use writer::RecordWriter;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time; worth retrying later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Another instance (or an earlier run) used a different secret with this counter; issuing
    /// with ours could repeat its numbers.
    #[error(
        "the counter was started with a different secret (fingerprint {stored}, ours {ours}); \
         every instance sharing a counter must use the same --secret"
    )]
    SecretMismatch { stored: String, ours: String },
    /// The backend answered with something it should never hold (a record whose checksum
    /// does not match, say).
    #[error("storage is inconsistent: {0}")]
    Corrupt(String),
    /// A storage call failed in a way that is a bug, such as a panic inside the backend.
    #[error("storage failed unexpectedly: {0}")]
    Bug(String),
    /// The store refuses writes until its disk is healthy again (full, failing, frozen); the
    /// reason is our own words, fit for a readiness probe.
    #[error("storage is not taking writes: {0}")]
    NotWritable(String),
    /// A lease would run the counter too far ahead of the clock: ask again this much later.
    #[error("the counter waits for the clock ({0:?})")]
    WaitForClock(Duration),
    /// The store is sound but behind: it refuses new records for a moment because they arrive
    /// faster than it writes them (the embedded write-behind buffer is full). Load, not a
    /// fault: the caller retries shortly, and readiness is not affected.
    #[error("storage is busy: {0}")]
    Busy(String),
}

impl StoreError {
    pub fn unavailable(err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(err.to_string())
    }

    /// What should not happen, such as a record that cannot be serialized: a 500, not a 503.
    pub fn bug(err: impl std::fmt::Display) -> Self {
        StoreError::Bug(err.to_string())
    }

    /// Whether waiting can cure it (a 503), as opposed to a fault that needs a person (a 500).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::NotWritable(_)
                | StoreError::WaitForClock(_)
                | StoreError::Busy(_)
        )
    }

    /// What a readiness probe may say about it: never a driver's message, a path or a URL.
    pub fn probe_reason(&self) -> String {
        match self {
            StoreError::Unavailable(detail) => {
                // Name the kind of failure an operator can act on, in our own words.
                let detail = detail.to_ascii_lowercase();
                if detail.contains("certificate") {
                    "storage refused: its TLS certificate is not trusted (see the log)".into()
                } else if ["auth", "wrongpass", "password"]
                    .iter()
                    .any(|word| detail.contains(word))
                {
                    "storage refused our credentials (see the log)".into()
                } else {
                    "storage is unreachable or does not answer in time".into()
                }
            }
            StoreError::NotWritable(reason) => format!("storage is not taking writes: {reason}"),
            StoreError::WaitForClock(_) => "the serial counter waits for the clock".into(),
            StoreError::Busy(_) => "storage is busy with earlier records".into(),
            StoreError::SecretMismatch { .. } => {
                "the counter belongs to a different --secret (see the log)".into()
            }
            StoreError::Corrupt(_) | StoreError::Bug(_) => "storage failed (see the log)".into(),
        }
    }
}

/// The clock floor of serials counts microseconds since 2025-01-01T00:00:00Z: 10^6 serials a
/// second, which outruns any real issuing rate and still lasts over 4000 years in 36^11 serials.
pub const FLOOR_EPOCH_UNIX_SECS: u64 = crate::domain::packed::SERIAL_EPOCH_UNIX_SECS as u64;

/// The clock's serial at `now`: microseconds since [`FLOOR_EPOCH_UNIX_SECS`].
pub fn clock_serial(now: std::time::SystemTime) -> u64 {
    let since_unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let since_floor =
        since_unix.saturating_sub(std::time::Duration::from_secs(FLOOR_EPOCH_UNIX_SECS));
    u64::try_from(since_floor.as_micros()).unwrap_or(u64::MAX)
}

/// A source of globally unique serials, leased a block at a time.
#[async_trait]
pub trait LeaseSource: Send + Sync + 'static {
    /// Leases `size` serials, every one of them at or above `floor` and never handed out before
    /// (by any instance), and returns them as a half-open range. A counter that may not run
    /// further ahead of the clock can lease fewer (never none): the caller takes the range as
    /// it comes.
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError>;

    /// Some(partition) when a serial's offset in its partition of that many serials counts µs
    /// since the floor epoch and may not be handed out before the clock has passed it (the
    /// pool paces it: [`crate::serials::SerialPool::paced`]); None when the source guards
    /// against a counter that moved back itself.
    fn paced_in(&self) -> Option<u64>;
}

/// A record ready to store: its key, when it expires, and its stored value: the packed record
/// ([`crate::domain::packed`]), or the JSON of the layout before it. Stores keep values as they
/// are given; the service alone knows what they mean.
#[derive(Debug, Clone)]
pub struct RecordEntry {
    pub tracking_number: TrackingNumber,
    /// The serial the number encodes, when the caller knows it is one of ours (it spares the
    /// store from decoding it again).
    pub serial: Option<u64>,
    pub expires_at: DateTime<Utc>,
    pub value: Bytes,
}

/// Where the records of issued numbers live until they expire.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Stores each entry unless a live record already holds its number; returns, per entry,
    /// whether it was stored. All in one round trip. A store that may run a write twice (Redis,
    /// after a lost reply) counts an entry that finds exactly itself stored as stored: every
    /// entry carries its own creation time, to the µs.
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError>;
    /// [`RecordStore::insert_new`] for a store whose records live on several nodes, where one
    /// node failing fails only its own entries: per entry, stored or not, or why it failed. An
    /// error for all entries at once stays the outer error.
    async fn insert_each(
        &self,
        entries: &[RecordEntry],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        Ok(self
            .insert_new(entries)
            .await?
            .into_iter()
            .map(Ok)
            .collect())
    }
    /// Whether concurrent inserts should be funnelled through one group-commit writer. A store
    /// whose inserts cost a round trip each says yes; one that buffers in memory says no.
    fn wants_group_commit(&self) -> bool {
        true
    }
    /// The JSON of a live (unexpired) record.
    async fn get(&self, tracking_number: &TrackingNumber) -> Result<Option<Bytes>, StoreError>;
    /// Replaces the live record of `entry.tracking_number` with `entry` (new JSON, new expiry),
    /// but only while its JSON is still exactly `expected`: a compare-and-swap. A store that may
    /// run a write twice (Redis, after a lost reply) answers `Replaced` when the record already
    /// holds exactly `entry`'s JSON: every new version carries its own `updated_at`, to the µs.
    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError>;
    /// Removes the live record of `tracking_number`; with `expected`, only while its JSON is
    /// still exactly that.
    async fn remove(
        &self,
        tracking_number: &TrackingNumber,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError>;
    /// Succeeds when the store can serve requests now.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Makes every write so far durable (the embedded store batches its fsyncs).
    async fn sync(&self) -> Result<(), StoreError>;
    /// Reclaims the space of expired records; returns how many were removed.
    async fn purge_expired(&self) -> Result<u64, StoreError>;
    /// Free bytes on the disk the store writes to, for a store that writes to a local disk.
    fn free_disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// The outcome of [`RecordStore::replace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    Replaced,
    /// The record changed, expired or went away since it was read.
    Changed,
}

/// The outcome of [`RecordStore::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// No live record.
    Missing,
    /// The record is not the one expected any more.
    Changed,
}

/// Where idempotency keys live: claimed while their first request runs, then holding its reply.
/// States travel encoded by [`crate::domain::idempotency::KeyState::encode`].
#[async_trait]
pub trait ReplyStore: Send + Sync + 'static {
    /// Claims `key` with `claim` (an in-flight state) for `ttl`, unless the key holds a state
    /// already: then nothing changes and that state is returned.
    async fn claim(
        &self,
        key: &str,
        claim: &[u8],
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let claims = [(key.to_owned(), claim.to_vec())];
        Ok(self.claim_many(&claims, ttl).await?.pop().flatten())
    }
    /// Replaces our `claim` with the finished `reply`, kept for `ttl`. False when the claim was
    /// no longer ours (it expired and someone else claimed the key).
    async fn complete(
        &self,
        key: &str,
        claim: &[u8],
        reply: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let done = [(key.to_owned(), claim.to_vec(), reply.to_vec())];
        Ok(self.complete_many(&done, ttl).await?.pop().unwrap_or(false))
    }
    /// Drops our `claim` (the request failed), so a retry may run.
    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError>;
    /// [`ReplyStore::claim`] for many `(key, claim)`s at once (an import's order ids), each
    /// with what it held instead. A single key goes the way many do.
    async fn claim_many(
        &self,
        claims: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError>;
    /// [`ReplyStore::complete`] for many `(key, claim, reply)`s at once.
    async fn complete_many(
        &self,
        done: &[(String, Vec<u8>, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError>;
    /// Keeps each `(key, reply)` for `ttl` unless the key holds a state already, with no claim
    /// before it (an import's order id bound to its number in one step); returns per key what
    /// it held instead (None: kept now). As lasting as [`ReplyStore::complete`]'s replies. This
    /// one claims each key, then completes it with the same bytes: a backend whose claims last
    /// as its replies do keeps them with its claim alone. A key that holds the reply itself
    /// is completed too: it may be the claim of a try whose completion failed.
    async fn keep_new_many(
        &self,
        replies: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let held = self.claim_many(replies, ttl).await?;
        let done: Vec<(String, Vec<u8>, Vec<u8>)> = replies
            .iter()
            .zip(&held)
            .filter(|((_, reply), held)| {
                held.as_deref().is_none_or(|held| held == reply.as_slice())
            })
            .map(|((key, reply), _)| (key.clone(), reply.clone(), reply.clone()))
            .collect();
        if !done.is_empty() {
            self.complete_many(&done, ttl).await?;
        }
        Ok(held)
    }
}

/// One part of an import job as stored: its state, a request to cancel it, what the upload
/// held (its header and rows per chunk), a chunk of its file, the numbers planned for a chunk
/// before they are issued, or a chunk of its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPart {
    Job,
    Cancel,
    Manifest,
    File(u32),
    Plan(u32),
    Results(u32),
}

impl ImportPart {
    /// The part's name inside its import's keys.
    pub fn name(self) -> String {
        match self {
            ImportPart::Job => "job".into(),
            ImportPart::Cancel => "cancel".into(),
            ImportPart::Manifest => "manifest".into(),
            ImportPart::Plan(chunk) => format!("plan:{chunk}"),
            ImportPart::File(chunk) => format!("file:{chunk}"),
            ImportPart::Results(chunk) => format!("results:{chunk}"),
        }
    }
}

/// The owner under which every import is listed too, for admins (no tenant name holds a `*`).
pub const ALL_IMPORTS: &str = "*";

/// An import in a listing: when it was created (µs since the Unix epoch) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImport {
    pub created_us: i64,
    pub id: String,
}

/// Where import jobs keep their state and their files, in the store rather than on a local
/// disk so that any instance can run any job, until they expire (`--import-ttl`). Imports are
/// listed per owner: a tenant's name, or `""` without API keys.
#[async_trait]
pub trait ImportStore: Send + Sync + 'static {
    /// Stores `value` as `part` of import `id`, replacing what the part held, until
    /// `expires_at`. Durable once it returns.
    async fn put_import_part(
        &self,
        id: &str,
        part: ImportPart,
        value: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Stores `new` as `part` of import `id` until `expires_at`, but only while the part still
    /// holds exactly `expected` (with `None`: while it holds nothing, or has expired): a
    /// compare-and-swap, so that a job's state is never written over by a writer that has not
    /// seen the latest one. True when the part holds `new` afterwards, also when it already
    /// did (a call sent again after its first try landed). Durable once it returns.
    async fn swap_import_part(
        &self,
        id: &str,
        part: ImportPart,
        expected: Option<&[u8]>,
        new: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// What `part` of import `id` holds, unless it expired.
    async fn import_part(&self, id: &str, part: ImportPart) -> Result<Option<Bytes>, StoreError>;
    /// Removes these parts of import `id` (those it holds), freeing their space at once: an
    /// upload that failed half-way. Allowed on a disk that is low on space.
    async fn drop_import_parts(&self, id: &str, parts: &[ImportPart]) -> Result<(), StoreError>;
    /// Removes every part of each import that holds parts but no job, except the uploads that
    /// `is_live` names (still being received; asked once the parts are found, so an upload
    /// begun meanwhile is spared): uploads whose removal failed, or whose process died before
    /// it could remove them. Returns how many imports it removed. Allowed on a disk that is low
    /// on space. Redis looks for none: there an import's parts can be on any node, and they
    /// expire by themselves at `--import-ttl`.
    async fn drop_abandoned_uploads(&self, is_live: &IsLive) -> Result<u64, StoreError>;
    /// Lists import `id`, created at `created_us`, under `owner` and among all imports, until
    /// `expires_at`.
    async fn list_import(
        &self,
        owner: &str,
        id: &str,
        created_us: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// `owner`'s imports (every owner's with None), newest first: at most `limit` of those
    /// created before `before_us`. It may still name an import that has expired, whose parts
    /// are gone.
    async fn listed_imports(
        &self,
        owner: Option<&str>,
        before_us: i64,
        limit: usize,
    ) -> Result<Vec<ListedImport>, StoreError>;
}

/// Whether an import id names an upload still being received.
pub type IsLive = dyn Fn(&str) -> bool + Send + Sync;

/// A queued import as a worker holds it: the job's id and the queue's own handle on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedImport {
    pub id: String,
    /// What the queue needs to know the entry again (a stream entry's id on Redis).
    pub handle: String,
}

/// Where import jobs wait for a worker. Any instance may take any job; a job whose worker
/// stopped touching it (the instance died) goes to the next worker that asks.
#[async_trait]
pub trait ImportQueue: Send + Sync + 'static {
    /// Queues import `id`.
    async fn enqueue_import(&self, id: &str) -> Result<(), StoreError>;
    /// The next job for `worker`: one whose worker has not touched it for `stale`, else a
    /// new one. None when no job waits.
    async fn next_import(
        &self,
        worker: &str,
        stale: Duration,
    ) -> Result<Option<QueuedImport>, StoreError>;
    /// `worker` still runs the job: it is not stale for another `stale`.
    async fn touch_import(&self, worker: &str, job: &QueuedImport) -> Result<(), StoreError>;
    /// The job has ended: no worker gets it again.
    async fn ack_import(&self, job: &QueuedImport) -> Result<(), StoreError>;
}

/// Every part of a backend, as the application uses it.
pub trait Store: LeaseSource + RecordStore + ReplyStore + ImportStore + ImportQueue {}
impl<T: LeaseSource + RecordStore + ReplyStore + ImportStore + ImportQueue> Store for T {}
