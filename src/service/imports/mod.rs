//! Bulk import jobs. An upload is stored as it arrives, a chunk of whole rows at a time, then
//! becomes a queued job; a worker on any instance takes it from the queue and issues its rows a
//! chunk at a time ([`worker`]); the results of an ended job are read back a chunk at a time
//! ([`results`]). Everything lives in the store with the import's expiry, never on local disk.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use super::idempotency::Idempotency;
use super::issuer::{IssueError, Issuer};
use crate::domain::import::{Chunk, ImportJob, JobStatus, Manifest, Upload};
use crate::domain::{Principal, Tenant};
use crate::metrics::Metrics;
use crate::store::{ImportPart, Store, StoreError};

mod results;
mod worker;

pub use results::ResultsStream;

/// A listing shows at most this many jobs a page.
pub const MAX_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Issue(#[from] IssueError),
}

impl ImportError {
    /// Whether trying again later can cure it.
    fn is_transient(&self) -> bool {
        match self {
            ImportError::Store(err) | ImportError::Issue(IssueError::Store(err)) => {
                err.is_transient()
            }
            ImportError::Issue(IssueError::NoSerials(_)) => true,
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
}

/// An upload on its way in: its id, and the rows of each chunk stored so far.
pub struct Draft {
    pub id: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    chunk_rows: Vec<u64>,
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
        }
    }

    /// A new upload.
    pub fn draft(&self) -> Draft {
        let now = Utc::now().trunc_subsecs(6);
        Draft {
            id: uuid::Uuid::new_v4().simple().to_string(),
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
                &draft.id,
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
                .put_import_part(&job.id, ImportPart::Manifest, &manifest, draft.expires_at)
                .await?;
            self.save(&job).await?;
            let owner = job.tenant.as_ref().map_or("", Tenant::as_str);
            let created_us = draft.created_at.timestamp_micros();
            self.store
                .list_import(owner, &job.id, created_us, draft.expires_at)
                .await?;
            if job.status == JobStatus::Queued {
                self.store.enqueue_import(&job.id).await?;
            }
            Ok(())
        };
        match submitted.await {
            Ok(()) => {
                self.count_job(job.status);
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
    /// manifest, if a submit got that far). Failures are logged; the parts expire anyway.
    pub async fn abandon(&self, draft: Draft) {
        let mut parts: Vec<ImportPart> = (0..draft.chunk_rows.len() as u32)
            .map(ImportPart::File)
            .collect();
        parts.extend([ImportPart::Manifest, ImportPart::Job]);
        if let Err(err) = self.store.drop_import_parts(&draft.id, &parts).await {
            tracing::warn!(import = draft.id, error = %err, "could not remove an abandoned upload");
        }
    }

    /// Job `id`, if `who` may see it. An id this service never makes is not looked up.
    pub async fn job(&self, id: &str, who: &Principal) -> Result<Option<ImportJob>, StoreError> {
        if !is_import_id(id) {
            return Ok(None);
        }
        Ok(self.load(id).await?.filter(|job| job.visible_to(who)))
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
                if let Some(job) = self.job(&entry.id, who).await? {
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

    /// Cancels job `id`: a queued job at once, a running one by its worker before its next
    /// chunk. None when `who` cannot see it; `Finished` when it has already ended.
    pub async fn cancel(
        &self,
        id: &str,
        who: &Principal,
    ) -> Result<Option<Result<ImportJob, Finished>>, StoreError> {
        let Some(mut job) = self.job(id, who).await? else {
            return Ok(None);
        };
        if job.status.is_finished() {
            return Ok(Some(Err(Finished(job.status))));
        }
        let expires_at = self.expiry_of(&job);
        self.store
            .put_import_part(id, ImportPart::Cancel, b"1", expires_at)
            .await?;
        if job.status == JobStatus::Queued && job.cancel(Utc::now()).is_ok() {
            self.save(&job).await?;
            self.count_job(job.status);
        }
        Ok(Some(Ok(job)))
    }

    /// Job `id`'s results, a chunk of CSV at a time, once it has ended. None when `who`
    /// cannot see it; `Finished` (with its status) while it has not ended.
    pub async fn results(
        self: &Arc<Self>,
        id: &str,
        who: &Principal,
    ) -> Result<Option<Result<ResultsStream, Finished>>, StoreError> {
        let Some(job) = self.job(id, who).await? else {
            return Ok(None);
        };
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
        let Some(bytes) = self.store.import_part(id, ImportPart::Job).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| corrupt(id, "job"))
    }

    async fn manifest(&self, id: &str) -> Result<Option<Manifest>, StoreError> {
        let Some(bytes) = self.store.import_part(id, ImportPart::Manifest).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| corrupt(id, "manifest"))
    }

    async fn save(&self, job: &ImportJob) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).map_err(StoreError::bug)?;
        self.store
            .put_import_part(&job.id, ImportPart::Job, &bytes, self.expiry_of(job))
            .await
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

/// Whether `id` has the form of the ids [`Imports::draft`] makes: 32 lowercase hex digits.
fn is_import_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn corrupt(id: &str, part: &str) -> StoreError {
    StoreError::Corrupt(format!("import {id} holds a bad {part}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_of_the_form_we_make_are_looked_up() {
        let made = uuid::Uuid::new_v4().simple().to_string();
        assert!(is_import_id(&made));
        for bad in [
            "",
            "abc",
            &made.to_uppercase(),
            &format!("{made}0"),
            "{x}:job",
        ] {
            assert!(!is_import_id(bad), "{bad}");
        }
    }
}
