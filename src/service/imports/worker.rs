//! The worker: takes queued jobs and issues their rows a chunk at a time.
//!
//! A chunk is done when its results are stored (its tally travels with them). Before any of a
//! chunk's numbers is stored, the numbers planned for its rows are stored: a worker that resumes
//! a chunk another worker died in hands out the planned numbers, never second ones. Rows that
//! carry an `order_id` go through the tenant's idempotency keys (a space of their own, apart
//! from callers' `Idempotency-Key`s: [`Principal::order_key`]), claimed under a token named for
//! the job and row, so rows that share an order id share a number across imports for as long
//! as the key is kept, and a resumed row takes its own claim back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{ImportError, Imports, corrupt};
use crate::domain::idempotency::fingerprint;
use crate::domain::import::file::reader;
use crate::domain::import::results::{decode_part, encode_part};
use crate::domain::import::{
    ChunkTally, Header, ImportJob, ImportRow, JobStatus, ResultsWriter, RowOutcome, Shown,
};
use crate::domain::{FieldError, IssueRequest, Principal, TrackingNumber};
use crate::service::idempotency::{Begin, Claim, IdempotencyError, Wanted};
use crate::store::{ImportPart, QueuedImport, RecordEntry, StoreError};

/// How long a worker waits before it looks at an empty queue again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long a worker waits before it tries a chunk again after storage failed it.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Records stored in one round trip.
const STORE_SLICE: usize = 1000;

/// One planned number, kept before it is stored so that a resumed chunk hands out the same
/// one: the row's index in its chunk, the serial, and when its record was made (µs since the
/// Unix epoch). The row's inputs make the rest of the record again.
type Planned = (usize, u64, i64);

impl Imports {
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
                key: owner.order_key(order_id),
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

    fn count_rows(&self, tally: &ChunkTally) {
        self.metrics
            .import_rows(tally.issued, tally.valid - tally.issued, tally.rejected);
    }
}

/// What became of a row.
#[derive(Debug, Clone)]
enum Outcome {
    Issued(TrackingNumber),
    Valid,
    Rejected(Vec<FieldError>),
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

#[cfg(test)]
mod tests {
    use super::*;

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
