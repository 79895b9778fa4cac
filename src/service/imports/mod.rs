//! Bulk import jobs. An upload is stored as it arrives, a chunk of whole rows at a time, then
//! becomes a queued job; a worker on any instance takes it from the queue ([`queue`]) and issues
//! its rows a chunk at a time ([`worker`]); the results of an ended job are read back a chunk at a time
//! ([`results`]). Everything lives in the store with the import's expiry, never on local disk.
//!
//! A job's state is only ever written by a compare-and-swap on what the writer read
//! ([`Held`]): a job that has ended, or that someone else changed meanwhile (a cancel, another
//! worker, a store that lost its data), is never written over. Only two writers change a job:
//! a cancel turns a queued job into a cancelled one; everything else is its worker's, which
//! marks the job running before its first chunk and ends it, cancelled too, with what it issued.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use tokio_util::sync::CancellationToken;

use super::idempotency::Idempotency;
use super::issuer::{IssueError, Issuer};
use crate::domain::import::{Chunk, ImportId, ImportJob, JobStatus, Manifest, Upload};
use crate::domain::{Principal, Tenant};
use crate::metrics::Metrics;
use crate::store::{ImportPart, Store, StoreError};

mod queue;
mod results;
pub mod upload;
mod worker;

pub use results::ResultsStream;

/// A listing shows at most this many jobs a page.
pub const MAX_PAGE: usize = 100;
/// How long a cancel of a running job waits for its worker to end the chunk in flight (256 KiB:
/// 11,000 to 17,000 rows of a plain file, which a debug build here issues in up to 1.3 s on
/// the embedded store) and write the job `cancelled` with what it issued. Past it, the reply
/// says `running`, and the job ends cancelled once that chunk is done.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting cancel looks at the job.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// The first wait before a failed removal of an abandoned upload is tried again; it doubles
/// after each failure, up to [`REMOVAL_WAIT_MAX`].
const REMOVAL_WAIT: Duration = Duration::from_secs(1);
const REMOVAL_WAIT_MAX: Duration = Duration::from_secs(60);
/// How often the store is swept for uploads that never became a job, and how soon a sweep that
/// failed (storage unavailable at the start, say) is tried again.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
const SWEEP_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// Another worker planned the same chunk at the same time: the chunk is run again with its
    /// plan.
    #[error("another worker planned the chunk at the same time")]
    PlanChanged,
}

impl ImportError {
    /// Whether trying again later can cure it.
    fn is_transient(&self) -> bool {
        match self {
            ImportError::Store(err) | ImportError::Issue(IssueError::Store(err)) => {
                err.is_transient()
            }
            ImportError::Issue(IssueError::NoSerials(_)) | ImportError::PlanChanged => true,
        }
    }
}

/// A job that ended before it could be cancelled, or before its results were final.
#[derive(Debug)]
pub struct Finished(pub JobStatus);

pub struct Imports {
    store: Arc<dyn Store>,
    issuer: Arc<Issuer>,
    idempotency: Arc<Idempotency>,
    metrics: Arc<Metrics>,
    /// How long an import's parts are kept.
    ttl: chrono::Duration,
    /// How long a worker may go without touching its job before another takes it over.
    stale_after: Duration,
    /// This instance's name in the queue.
    worker: String,
    /// The uploads this process is receiving: the sweep leaves their parts alone.
    live: Arc<Mutex<HashSet<String>>>,
}

/// An upload on its way in: its id, and the rows of each chunk stored so far.
pub struct Draft {
    pub id: ImportId,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    chunk_rows: Vec<u64>,
    _live: LiveUpload,
}

impl Draft {
    /// Every part the upload may have stored: its chunks, and its manifest and job if a submit
    /// got that far.
    fn parts(&self) -> Vec<ImportPart> {
        let mut parts: Vec<ImportPart> = (0..self.chunk_rows.len() as u32)
            .map(ImportPart::File)
            .collect();
        parts.extend([ImportPart::Manifest, ImportPart::Job]);
        parts
    }
}

/// An upload's place among the live ones, given up when its draft is dropped: submitted (its
/// job is stored by then), abandoned, or cut off with its request.
struct LiveUpload {
    id: String,
    live: Arc<Mutex<HashSet<String>>>,
}

impl Drop for LiveUpload {
    fn drop(&mut self) {
        lock(&self.live).remove(&self.id);
    }
}

/// A job as the store holds it, with the bytes it was read from: a change is written only while
/// the store still holds those ([`Imports::replace_job`]).
#[derive(Debug, Clone)]
struct Held {
    job: ImportJob,
    bytes: Bytes,
}

/// A page of jobs, newest first, and where the next page starts.
pub struct Page {
    pub jobs: Vec<ImportJob>,
    pub next: Option<i64>,
}

impl Imports {
    pub fn new(
        store: Arc<dyn Store>,
        issuer: Arc<Issuer>,
        idempotency: Arc<Idempotency>,
        metrics: Arc<Metrics>,
        ttl: Duration,
        stale_after: Duration,
    ) -> Imports {
        Imports {
            store,
            issuer,
            idempotency,
            metrics,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            stale_after,
            worker: uuid::Uuid::new_v4().simple().to_string(),
            live: Arc::default(),
        }
    }

    /// Runs queued jobs, one at a time, until `stop` ([`queue`]); a job it is running when told
    /// to stop is left for another worker (or this one, after a restart) to finish.
    pub async fn work(self: Arc<Self>, stop: CancellationToken) {
        queue::Queue::new(self).work(stop).await;
    }

    /// A new upload.
    pub fn draft(&self) -> Draft {
        let now = Utc::now().trunc_subsecs(6);
        let id = ImportId::new();
        lock(&self.live).insert(id.to_string());
        Draft {
            _live: LiveUpload {
                id: id.to_string(),
                live: self.live.clone(),
            },
            id,
            created_at: now,
            expires_at: now
                .checked_add_signed(self.ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            chunk_rows: Vec::new(),
        }
    }

    /// Stores the upload's next chunk.
    pub async fn put_chunk(&self, draft: &mut Draft, chunk: Chunk) -> Result<(), StoreError> {
        let index = draft.chunk_rows.len() as u32;
        self.store
            .put_import_part(
                draft.id.as_str(),
                ImportPart::File(index),
                &chunk.bytes,
                draft.expires_at,
            )
            .await?;
        draft.chunk_rows.push(chunk.rows);
        Ok(())
    }

    /// The upload has ended: its job is stored, listed and queued (a file of no rows is done
    /// at once).
    pub async fn submit(
        &self,
        draft: Draft,
        upload: Upload,
        tenant: Option<Tenant>,
        dry_run: bool,
    ) -> Result<ImportJob, StoreError> {
        let manifest = Manifest::new(&upload, draft.chunk_rows.clone());
        let job = ImportJob::new(
            draft.id.clone(),
            tenant,
            upload.rows,
            dry_run,
            upload.delimiter,
            draft.created_at,
        );
        let submitted = async {
            let manifest = serde_json::to_vec(&manifest).map_err(StoreError::bug)?;
            self.store
                .put_import_part(
                    job.id.as_str(),
                    ImportPart::Manifest,
                    &manifest,
                    draft.expires_at,
                )
                .await?;
            let bytes = serde_json::to_vec(&job).map_err(StoreError::bug)?;
            let new = self
                .store
                .swap_import_part(
                    job.id.as_str(),
                    ImportPart::Job,
                    None,
                    &bytes,
                    draft.expires_at,
                )
                .await?;
            if !new {
                return Err(StoreError::bug("an import id was made twice"));
            }
            let owner = job.tenant.as_ref().map_or("", Tenant::as_str);
            let created_us = draft.created_at.timestamp_micros();
            self.store
                .list_import(owner, job.id.as_str(), created_us, draft.expires_at)
                .await?;
            if job.status == JobStatus::Queued {
                self.store.enqueue_import(job.id.as_str()).await?;
            }
            Ok(())
        };
        match submitted.await {
            Ok(()) => {
                self.count_job(job.status);
                // Only now does the draft stop being live: its job is stored.
                drop(draft);
                Ok(job)
            }
            Err(err) => {
                // Never queued: what was stored of it would only take space until it expired.
                self.abandon(draft).await;
                Err(err)
            }
        }
    }

    /// Removes what an upload that will never be a job has stored: its chunks (and its job and
    /// manifest, if a submit got that far). A removal that fails (a disk that did not answer
    /// in time) is tried again in the background, less and less often, until it succeeds or
    /// the parts have expired; should the process stop first, [`Imports::sweep`] finds them.
    pub async fn abandon(&self, draft: Draft) {
        let parts = draft.parts();
        let Err(err) = self
            .store
            .drop_import_parts(draft.id.as_str(), &parts)
            .await
        else {
            return;
        };
        tracing::warn!(
            import = draft.id.as_str(),
            error = %err,
            "could not remove an abandoned upload; trying again in the background"
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            let (id, until) = (draft.id.as_str(), draft.expires_at);
            if retry(|| store.drop_import_parts(id, &parts), until).await {
                tracing::info!(import = id, "removed an abandoned upload");
            }
            drop(draft);
        });
    }

    /// Removes the parts of uploads that never became a job and that no request of this
    /// process still receives (their process died mid-upload, or their removal never
    /// succeeded): once at the start, then every [`SWEEP_EVERY`], until `stop`.
    pub async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let live = self.live.clone();
            let is_live = move |id: &str| lock(&live).contains(id);
            let wait = match self.store.drop_abandoned_uploads(&is_live).await {
                Ok(0) => SWEEP_EVERY,
                Ok(removed) => {
                    tracing::info!(removed, "removed uploads that never became a job");
                    SWEEP_EVERY
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not look for abandoned uploads");
                    SWEEP_RETRY
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Job `id`, if `who` may see it.
    pub async fn job(
        &self,
        id: &ImportId,
        who: &Principal,
    ) -> Result<Option<ImportJob>, StoreError> {
        Ok(self
            .load(id.as_str())
            .await?
            .filter(|job| job.visible_to(who)))
    }

    /// The jobs `who` may see, newest first: at most `limit` created before `before_us`.
    pub async fn list(
        &self,
        who: &Principal,
        before_us: i64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let owner = match (&who.tenant, who.admin) {
            (_, true) => None,
            (Some(tenant), false) => Some(tenant.as_str()),
            (None, false) => return Ok(Page::empty()),
        };
        let mut jobs = Vec::new();
        let mut before = before_us;
        // Entries may name imports that have expired: read on until the page is full.
        loop {
            let listed = self.store.listed_imports(owner, before, limit).await?;
            let exhausted = listed.len() < limit;
            for entry in listed {
                before = entry.created_us;
                let Some(id) = ImportId::parse(&entry.id) else {
                    continue;
                };
                if let Some(job) = self.job(&id, who).await? {
                    jobs.push(job);
                    if jobs.len() == limit {
                        return Ok(Page {
                            jobs,
                            next: Some(before),
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page { jobs, next: None });
            }
        }
    }

    /// Cancels job `id`: a queued job at once; a running one by its worker, once the chunk in
    /// flight is done, with what it issued: the cancel waits for that, up to [`CANCEL_WAIT`],
    /// and answers with the job as it then is. None when `who` cannot see it; `Finished` when
    /// it had already ended.
    pub async fn cancel(
        &self,
        id: &ImportId,
        who: &Principal,
    ) -> Result<Option<Result<ImportJob, Finished>>, StoreError> {
        let id = id.as_str();
        let Some(mut held) = self.held(id).await?.filter(|h| h.job.visible_to(who)) else {
            return Ok(None);
        };
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut asked = false;
        loop {
            match held.job.status {
                status if status.is_finished() && !asked => {
                    return Ok(Some(Err(Finished(status))));
                }
                JobStatus::Queued => {
                    let mut job = held.job.clone();
                    if job.cancel(Utc::now()).is_ok()
                        && let Some(cancelled) = self.replace_job(&held, job).await?
                    {
                        self.count_job(JobStatus::Cancelled);
                        return Ok(Some(Ok(cancelled.job)));
                    }
                    // A worker took it meanwhile: look again.
                }
                JobStatus::Running if !asked => {
                    let expires_at = self.expiry_of(&held.job);
                    self.store
                        .put_import_part(id, ImportPart::Cancel, b"1", expires_at)
                        .await?;
                    asked = true;
                }
                _ if !held.job.status.is_finished() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(CANCEL_POLL).await;
                }
                _ => return Ok(Some(Ok(held.job))),
            }
            held = match self.held(id).await? {
                Some(held) => held,
                // The store lost it meanwhile: it is gone everywhere.
                None => return Ok(None),
            };
        }
    }

    /// Job `id`'s results, a chunk of CSV at a time, once it has ended. None when `who`
    /// cannot see it; `Finished` (with its status) while it has not ended.
    pub async fn results(
        self: &Arc<Self>,
        id: &ImportId,
        who: &Principal,
    ) -> Result<Option<Result<ResultsStream, Finished>>, StoreError> {
        let Some(job) = self.job(id, who).await? else {
            return Ok(None);
        };
        let id = id.as_str();
        if !job.status.is_finished() {
            return Ok(Some(Err(Finished(job.status))));
        }
        // Parts expire together; one gone (Redis lost its data, say) is an import gone.
        let Some(manifest) = self.manifest(id).await? else {
            return Ok(None);
        };
        Ok(Some(Ok(ResultsStream::new(self.clone(), job, manifest))))
    }

    async fn load(&self, id: &str) -> Result<Option<ImportJob>, StoreError> {
        Ok(self.held(id).await?.map(|held| held.job))
    }

    async fn held(&self, id: &str) -> Result<Option<Held>, StoreError> {
        let Some(bytes) = self.store.import_part(id, ImportPart::Job).await? else {
            return Ok(None);
        };
        let job = serde_json::from_slice(&bytes).map_err(|_| corrupt(id, "job"))?;
        Ok(Some(Held { job, bytes }))
    }

    /// Writes `job` in place of `held`, only while the store still holds `held`: the job as
    /// stored now, or None when the store holds another state of it (or none).
    async fn replace_job(&self, held: &Held, job: ImportJob) -> Result<Option<Held>, StoreError> {
        let bytes = Bytes::from(serde_json::to_vec(&job).map_err(StoreError::bug)?);
        let swapped = self
            .store
            .swap_import_part(
                job.id.as_str(),
                ImportPart::Job,
                Some(&held.bytes),
                &bytes,
                self.expiry_of(&job),
            )
            .await?;
        Ok(swapped.then_some(Held { job, bytes }))
    }

    async fn manifest(&self, id: &str) -> Result<Option<Manifest>, StoreError> {
        let Some(bytes) = self.store.import_part(id, ImportPart::Manifest).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| corrupt(id, "manifest"))
    }

    fn expiry_of(&self, job: &ImportJob) -> DateTime<Utc> {
        job.created_at
            .checked_add_signed(self.ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn count_job(&self, status: JobStatus) {
        self.metrics.import_job(status.name());
    }
}

impl Page {
    fn empty() -> Page {
        Page {
            jobs: Vec::new(),
            next: None,
        }
    }
}

/// Tries `remove` again until it succeeds or `until` has passed, waiting [`REMOVAL_WAIT`] first
/// and twice as long after each failure, up to [`REMOVAL_WAIT_MAX`]. Whether it succeeded.
async fn retry<F, Fut>(mut remove: F, until: DateTime<Utc>) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut wait = REMOVAL_WAIT;
    loop {
        tokio::time::sleep(wait).await;
        if Utc::now() >= until {
            // Expired: the purge (or Redis) takes the parts now.
            return false;
        }
        match remove().await {
            Ok(()) => return true,
            Err(err) => tracing::debug!(error = %err, "a removal failed again"),
        }
        wait = (wait * 2).min(REMOVAL_WAIT_MAX);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(id: &str, part: &str) -> StoreError {
    StoreError::Corrupt(format!("import {id} holds a bad {part}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failed_removal_is_tried_again_ever_less_often_until_it_succeeds() {
        let tries = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let removed = retry(
            || {
                at.push(start.elapsed().as_secs());
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 8 {
                        Err(StoreError::Unavailable(
                            "the disk did not answer in time".into(),
                        ))
                    } else {
                        Ok(())
                    }
                }
            },
            Utc::now() + chrono::Duration::days(1),
        )
        .await;
        assert!(removed);
        assert_eq!(
            at,
            [1, 3, 7, 15, 31, 63, 123, 183, 243],
            "1 s, doubling, at most 60 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_is_given_up_once_the_parts_have_expired() {
        let tries = AtomicU32::new(0);
        let removed = retry(
            || {
                tries.fetch_add(1, Ordering::SeqCst);
                async { Err(StoreError::Unavailable("down".into())) }
            },
            Utc::now(),
        )
        .await;
        assert!(!removed);
        assert_eq!(tries.load(Ordering::SeqCst), 0);
    }
}
