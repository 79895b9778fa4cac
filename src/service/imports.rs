//! Bulk import jobs. An upload is stored as it arrives, a chunk of whole rows at a time, then
//! becomes a queued job; a worker on any instance takes it from the queue and issues its rows a
//! chunk at a time. Everything lives in the store with the import's expiry, never on local disk.
//!
//! A chunk is done when its results are stored (its tally travels with them). Before any of a
//! chunk's numbers is stored, the numbers planned for its rows are stored: a worker that resumes
//! a chunk another worker died in hands out the planned numbers, never second ones. Rows that
//! carry an `order_id` go through the tenant's idempotency keys (`import-order:<id>`), claimed
//! under a token named for the job and row, so rows that share an order id share a number
//! across imports for as long as the key is kept, and a resumed row takes its own claim back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::idempotency::{Begin, Claim, Idempotency, IdempotencyError, Wanted};
use super::issuer::{IssueError, Issuer};
use crate::domain::idempotency::fingerprint;
use crate::domain::import::file::reader;
use crate::domain::import::results::{decode_part, encode_part};
use crate::domain::import::{
    Chunk, ChunkTally, Header, ImportJob, ImportRow, JobStatus, Manifest, ResultsWriter,
    RowOutcome, Shown, Upload,
};
use crate::domain::{FieldError, IssueRequest, Principal, Tenant, TrackingNumber};
use crate::metrics::Metrics;
use crate::store::{ImportPart, QueuedImport, RecordEntry, Store, StoreError};

/// How long a worker waits before it looks at an empty queue again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long a worker waits before it tries a chunk again after storage failed it.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Records stored in one round trip.
const STORE_SLICE: usize = 1000;
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

/// One planned number, kept before it is stored so that a resumed chunk hands out the same
/// one: the row's index in its chunk, the serial, and when its record was made (µs since the
/// Unix epoch). The row's inputs make the rest of the record again.
type Planned = (usize, u64, i64);

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
        let Draft {
            id,
            created_at,
            expires_at,
            chunk_rows,
        } = draft;
        let manifest = Manifest::new(&upload, chunk_rows);
        let manifest = serde_json::to_vec(&manifest).map_err(StoreError::bug)?;
        self.store
            .put_import_part(&id, ImportPart::Manifest, &manifest, expires_at)
            .await?;
        let job = ImportJob::new(
            id,
            tenant,
            upload.rows,
            dry_run,
            upload.delimiter,
            created_at,
        );
        self.save(&job).await?;
        let owner = job.tenant.as_ref().map_or("", Tenant::as_str);
        let created_us = created_at.timestamp_micros();
        self.store
            .list_import(owner, &job.id, created_us, expires_at)
            .await?;
        if job.status == JobStatus::Queued {
            self.store.enqueue_import(&job.id).await?;
        }
        self.count_job(job.status);
        Ok(job)
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

    /// Runs queued jobs, one at a time, until `stop`; a job it is running when told to stop is
    /// left for another worker (or this one, after a restart) to finish.
    pub async fn work(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = self.store.next_import(&self.worker, self.stale_after) => next,
            };
            let pause = match next {
                Ok(Some(queued)) => {
                    self.run(&queued, stop.clone()).await;
                    continue;
                }
                Ok(None) => IDLE_POLL,
                Err(err) => {
                    tracing::warn!(error = %err, "could not look for import jobs");
                    RETRY_PAUSE
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Runs one job to its end, trying a chunk again while storage is unavailable.
    async fn run(&self, queued: &QueuedImport, stop: CancellationToken) {
        loop {
            match self.run_job(queued, &stop).await {
                Ok(()) => return,
                Err(err) if err.is_transient() => {
                    tracing::warn!(import = queued.id, error = %err, "an import waits for storage");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                    if let Err(err) = self.store.touch_import(&self.worker, queued).await {
                        tracing::debug!(error = %err, "could not touch an import job");
                    }
                }
                Err(err) => {
                    tracing::error!(import = queued.id, error = %err, "an import failed");
                    if let Ok(Some(mut job)) = self.load(&queued.id).await {
                        job.fail("the import could not be completed", Utc::now());
                        self.finish(queued, &job).await;
                    }
                    return;
                }
            }
        }
    }

    async fn run_job(
        &self,
        queued: &QueuedImport,
        stop: &CancellationToken,
    ) -> Result<(), ImportError> {
        let Some(mut job) = self.load(&queued.id).await? else {
            // Expired with its parts: nothing is left to run.
            self.store.ack_import(queued).await?;
            return Ok(());
        };
        let now = Utc::now();
        let was_queued = job.status == JobStatus::Queued;
        if !job.start(now) {
            self.store.ack_import(queued).await?;
            return Ok(());
        }
        if was_queued {
            self.count_job(job.status);
        }
        let Some(manifest) = self.manifest(&job.id).await? else {
            job.fail("the uploaded file has expired", now);
            self.finish(queued, &job).await;
            return Ok(());
        };
        let header = manifest
            .header()
            .map_err(|_| StoreError::Corrupt(format!("import {} holds a bad header", job.id)))?;
        job.recount();
        for index in 0..manifest.chunk_rows.len() {
            let chunk = index as u32;
            if stop.is_cancelled() {
                return Ok(());
            }
            if self
                .store
                .import_part(&job.id, ImportPart::Cancel)
                .await?
                .is_some()
            {
                if job.cancel(Utc::now()).is_ok() {
                    self.finish(queued, &job).await;
                }
                return Ok(());
            }
            if let Some(done) = self
                .store
                .import_part(&job.id, ImportPart::Results(chunk))
                .await?
            {
                let (tally, _) = decode_part(&done).ok_or_else(|| corrupt(&job.id, "results"))?;
                job.add(&tally);
                continue;
            }
            let Some(file) = self
                .store
                .import_part(&job.id, ImportPart::File(chunk))
                .await?
            else {
                job.fail("the uploaded file has expired", Utc::now());
                self.finish(queued, &job).await;
                return Ok(());
            };
            let first_row = manifest.first_row(index);
            let (tally, rows) = self
                .run_chunk(&job, &header, chunk, first_row, &file)
                .await?;
            // The chunk's records are durable before its results say they exist.
            self.store.sync().await?;
            let part = encode_part(&tally, &rows);
            self.store
                .put_import_part(
                    &job.id,
                    ImportPart::Results(chunk),
                    &part,
                    self.expiry_of(&job),
                )
                .await?;
            self.count_rows(&tally);
            job.add(&tally);
            self.save(&job).await?;
            self.store.touch_import(&self.worker, queued).await?;
        }
        job.finish(Utc::now());
        self.finish(queued, &job).await;
        Ok(())
    }

    /// Issues one chunk's rows; returns its tally and its rows of results.
    async fn run_chunk(
        &self,
        job: &ImportJob,
        header: &Header,
        chunk: u32,
        first_row: u64,
        file: &[u8],
    ) -> Result<(ChunkTally, Vec<u8>), ImportError> {
        let now = Utc::now();
        let records: Vec<csv::ByteRecord> = reader(job.delimiter, file)
            .byte_records()
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt(&job.id, "file"))?;
        let rows: Vec<Result<ImportRow, Vec<FieldError>>> = records
            .iter()
            .map(|record| header.read(record, now))
            .collect();
        let outcomes = if job.dry_run {
            rows.into_iter()
                .map(|row| match row {
                    Ok(_) => Outcome::Valid,
                    Err(errors) => Outcome::Rejected(errors),
                })
                .collect()
        } else {
            self.issue_rows(job, chunk, first_row, rows).await?
        };
        let mut tally = ChunkTally::default();
        let mut results = ResultsWriter::new(job.delimiter);
        for ((at, record), outcome) in records.iter().enumerate().zip(outcomes) {
            let row = first_row + at as u64;
            let (shown, counted) = match &outcome {
                Outcome::Issued(number) => (Shown::Issued(*number), RowOutcome::Issued),
                Outcome::Valid => (Shown::Valid, RowOutcome::Valid),
                Outcome::Rejected(errors) => (
                    Shown::Rejected(errors),
                    RowOutcome::Rejected(errors.clone()),
                ),
            };
            results.row(record, shown);
            tally.record(row, counted);
        }
        Ok((tally, results.finish()))
    }

    /// Gives every valid row a number: the one its order id already has, else one planned
    /// (and kept) before it is stored.
    async fn issue_rows(
        &self,
        job: &ImportJob,
        chunk: u32,
        first_row: u64,
        rows: Vec<Result<ImportRow, Vec<FieldError>>>,
    ) -> Result<Vec<Outcome>, ImportError> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(rows.len());
        // Rows that share an order id within the chunk follow the first of them.
        let mut leaders: HashMap<&str, usize> = HashMap::new();
        let mut follows: Vec<(usize, usize)> = Vec::new();
        let mut claims_wanted: Vec<usize> = Vec::new();
        for (at, row) in rows.iter().enumerate() {
            outcomes.push(match row {
                Err(errors) => Outcome::Rejected(errors.clone()),
                Ok(ImportRow {
                    order_id: Some(order_id),
                    request,
                }) => match leaders.get(order_id.as_str()) {
                    Some(&leader) => match &rows[leader] {
                        Ok(first) if first.request == *request => {
                            follows.push((at, leader));
                            Outcome::Valid
                        }
                        _ => Outcome::Rejected(vec![FieldError::new(
                            "order_id",
                            "was given earlier in the file with other inputs",
                        )]),
                    },
                    None => {
                        leaders.insert(order_id, at);
                        claims_wanted.push(at);
                        Outcome::Valid
                    }
                },
                Ok(_) => Outcome::Valid,
            });
        }

        // Claim each order id; a claim's number is planned below, a replay's is reused.
        let owner = Principal {
            tenant: job.tenant.clone(),
            admin: false,
        };
        let mut claimed_rows = Vec::with_capacity(claims_wanted.len());
        let mut wanted_keys = Vec::with_capacity(claims_wanted.len());
        for &at in &claims_wanted {
            let Ok(row) = &rows[at] else { continue };
            let Some(order_id) = row.order_id.as_deref() else {
                continue;
            };
            let inputs = serde_json::to_vec(&row.request).unwrap_or_default();
            claimed_rows.push(at);
            wanted_keys.push(Wanted {
                key: owner.scope_key(&format!("import-order:{order_id}")),
                fingerprint: fingerprint("import-order", &inputs),
                token: format!("{}:{}", job.id, first_row + at as u64),
            });
        }
        let begun = self.idempotency.begin_many(wanted_keys).await?;
        let mut claims: HashMap<usize, Claim> = HashMap::new();
        for (at, begun) in claimed_rows.into_iter().zip(begun) {
            match begun {
                Ok(Begin::Run(claim)) => {
                    claims.insert(at, claim);
                }
                Ok(Begin::Replay(saved)) => {
                    outcomes[at] = match replayed_number(&saved.body) {
                        Some(number) => Outcome::Issued(number),
                        None => return Err(corrupt(&job.id, "order reply").into()),
                    };
                }
                Err(IdempotencyError::Mismatch) => {
                    outcomes[at] = Outcome::Rejected(vec![FieldError::new(
                        "order_id",
                        "was imported before with other inputs",
                    )]);
                }
                Err(IdempotencyError::InFlight) => {
                    outcomes[at] = Outcome::Rejected(vec![FieldError::new(
                        "order_id",
                        "is being imported by another job right now; import the row again later",
                    )]);
                }
                Err(IdempotencyError::Store(err)) => return Err(err.into()),
            }
        }

        // Every row still waiting for a number gets one: planned earlier (a resumed chunk) or
        // now, and kept before any is stored.
        let wanted: Vec<usize> = (0..rows.len())
            .filter(|&at| {
                matches!(outcomes[at], Outcome::Valid)
                    && (claims.contains_key(&at)
                        || matches!(&rows[at], Ok(r) if r.order_id.is_none()))
            })
            .collect();
        let mut planned = self.plan_of(job, chunk, &rows).await?;
        let fresh: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|at| !planned.contains_key(at))
            .collect();
        if !fresh.is_empty() {
            let requests: Vec<&IssueRequest> = fresh
                .iter()
                .filter_map(|&at| rows[at].as_ref().ok().map(|row| &row.request))
                .collect();
            let now = Utc::now().trunc_subsecs(6);
            let entries = self.issuer.plan(requests, job.tenant.as_ref(), now).await?;
            planned.extend(fresh.into_iter().zip(entries).map(|(at, entry)| {
                let serial = entry.serial.unwrap_or_default();
                (at, ((at, serial, now.timestamp_micros()), entry))
            }));
            self.keep_plan(job, chunk, &planned).await?;
        }
        let entries: Vec<RecordEntry> = wanted.iter().map(|at| planned[at].1.clone()).collect();
        for slice in entries.chunks(STORE_SLICE) {
            // A record that already holds a planned number is this chunk's own, stored by the
            // worker that planned it before it died.
            self.issuer.store(slice).await?;
        }
        for (&at, entry) in wanted.iter().zip(&entries) {
            outcomes[at] = Outcome::Issued(entry.tracking_number);
        }
        let mut finished = Vec::with_capacity(claims.len());
        for (at, claim) in claims {
            match planned.get(&at) {
                // An order id keeps only its number: a replay needs no more.
                Some((_, entry)) => finished.push((claim, order_reply(entry.tracking_number))),
                None => claim.release().await,
            }
        }
        self.idempotency.finish_many(finished).await;
        for (at, leader) in follows {
            outcomes[at] = outcomes[leader].clone();
        }
        Ok(outcomes)
    }

    /// The numbers planned for a chunk by an earlier attempt, by row, with their records made
    /// again from the rows.
    async fn plan_of(
        &self,
        job: &ImportJob,
        chunk: u32,
        rows: &[Result<ImportRow, Vec<FieldError>>],
    ) -> Result<HashMap<usize, (Planned, RecordEntry)>, ImportError> {
        let Some(bytes) = self
            .store
            .import_part(&job.id, ImportPart::Plan(chunk))
            .await?
        else {
            return Ok(HashMap::new());
        };
        let planned: Vec<Planned> =
            serde_json::from_slice(&bytes).map_err(|_| corrupt(&job.id, "plan"))?;
        let mut again = HashMap::with_capacity(planned.len());
        for plan in planned {
            let (at, serial, made_us) = plan;
            // A row that is no longer valid (its expiry has passed since) is not issued.
            let Some(Ok(row)) = rows.get(at) else {
                continue;
            };
            let made =
                DateTime::from_timestamp_micros(made_us).ok_or_else(|| corrupt(&job.id, "plan"))?;
            let entry = self
                .issuer
                .record_for(&row.request, job.tenant.as_ref(), serial, made)?;
            again.insert(at, (plan, entry));
        }
        Ok(again)
    }

    async fn keep_plan(
        &self,
        job: &ImportJob,
        chunk: u32,
        planned: &HashMap<usize, (Planned, RecordEntry)>,
    ) -> Result<(), StoreError> {
        let planned: Vec<Planned> = planned.values().map(|(plan, _)| *plan).collect();
        let bytes = serde_json::to_vec(&planned).map_err(StoreError::bug)?;
        self.store
            .put_import_part(
                &job.id,
                ImportPart::Plan(chunk),
                &bytes,
                self.expiry_of(job),
            )
            .await
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

    /// Saves a job that has ended and takes it off the queue. Failures are logged: the job
    /// stays queued, and the next worker to take it finds its chunks done.
    async fn finish(&self, queued: &QueuedImport, job: &ImportJob) {
        let saved = async {
            self.save(job).await?;
            self.store.ack_import(queued).await
        };
        match saved.await {
            Ok(()) => self.count_job(job.status),
            Err(err) => tracing::warn!(import = job.id, error = %err, "could not end an import"),
        }
    }

    fn expiry_of(&self, job: &ImportJob) -> DateTime<Utc> {
        job.created_at
            .checked_add_signed(self.ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn count_job(&self, status: JobStatus) {
        self.metrics.import_job(status.name());
    }

    fn count_rows(&self, tally: &ChunkTally) {
        self.metrics
            .import_rows(tally.issued, tally.valid - tally.issued, tally.rejected);
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

/// What became of a row.
#[derive(Debug, Clone)]
enum Outcome {
    Issued(TrackingNumber),
    Valid,
    Rejected(Vec<FieldError>),
}

/// Whether `id` has the form of the ids [`Imports::draft`] makes: 32 lowercase hex digits.
fn is_import_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What an order id's key keeps: its number.
fn order_reply(number: TrackingNumber) -> Bytes {
    Bytes::from(format!("{{\"tracking_number\":\"{}\"}}", number.as_str()))
}

/// The number an order id's key kept.
fn replayed_number(body: &[u8]) -> Option<TrackingNumber> {
    #[derive(Deserialize)]
    struct Numbered<'a> {
        #[serde(borrow)]
        tracking_number: &'a str,
    }
    let numbered: Numbered = serde_json::from_slice(body).ok()?;
    TrackingNumber::parse(numbered.tracking_number)
}

fn corrupt(id: &str, part: &str) -> StoreError {
    StoreError::Corrupt(format!("import {id} holds a bad {part}"))
}

/// An ended job's results: the header row, then each chunk's rows. A chunk that was never
/// processed (the job was cancelled or failed first) shows its rows as they came, with why.
pub struct ResultsStream {
    imports: Arc<Imports>,
    job: ImportJob,
    manifest: Manifest,
    next: usize,
    started: bool,
}

impl ResultsStream {
    fn new(imports: Arc<Imports>, job: ImportJob, manifest: Manifest) -> ResultsStream {
        ResultsStream {
            imports,
            job,
            manifest,
            next: 0,
            started: false,
        }
    }

    /// The results' next piece; None at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        let manifest = &self.manifest;
        if !self.started {
            self.started = true;
            let mut header = ResultsWriter::new(self.job.delimiter);
            header.header(&manifest.names());
            return Some(Ok(Bytes::from(header.finish())));
        }
        let index = self.next;
        if index >= manifest.chunk_rows.len() {
            return None;
        }
        self.next += 1;
        Some(self.chunk(index as u32).await)
    }

    async fn chunk(&self, chunk: u32) -> Result<Bytes, StoreError> {
        let (store, id) = (&self.imports.store, &self.job.id);
        if let Some(part) = store.import_part(id, ImportPart::Results(chunk)).await? {
            let (_, rows) = decode_part(&part).ok_or_else(|| corrupt(id, "results"))?;
            return Ok(Bytes::copy_from_slice(rows));
        }
        let file = store
            .import_part(id, ImportPart::File(chunk))
            .await?
            .ok_or_else(|| StoreError::Unavailable(format!("import {id} has expired")))?;
        let why = [FieldError::new(
            "row",
            match self.job.status {
                JobStatus::Cancelled => "not processed: the import was cancelled",
                _ => "not processed: the import failed",
            },
        )];
        let mut results = ResultsWriter::new(self.job.delimiter);
        for record in reader(self.job.delimiter, &file[..]).byte_records() {
            let record = record.map_err(|_| corrupt(id, "file"))?;
            results.row(&record, Shown::Rejected(&why));
        }
        Ok(Bytes::from(results.finish()))
    }
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

    #[test]
    fn an_order_reply_gives_back_its_number() {
        let number = TrackingNumber::parse("MY004RJ37VY0JTIN").unwrap();
        assert_eq!(replayed_number(&order_reply(number)), Some(number));
    }

    #[test]
    fn a_replayed_record_gives_back_its_number() {
        let body = br#"{"tracking_number":"MY004RJ37VY0JTIN","status":"issued"}"#;
        assert_eq!(
            replayed_number(body).map(|n| n.as_str().to_owned()),
            Some("MY004RJ37VY0JTIN".to_owned())
        );
        assert!(replayed_number(b"{}").is_none());
        assert!(replayed_number(br#"{"tracking_number":"not one!"}"#).is_none());
    }
}
