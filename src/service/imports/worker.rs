//! Running one job: its rows are issued a chunk at a time. (The loop that takes jobs from the
//! queue and runs them is [`super::queue`].)
//!
//! A chunk is done when its results are stored (its tally travels with them). Before any of a
//! chunk's numbers is stored, the numbers planned for its rows are stored: a worker that resumes
//! a chunk another worker died in hands out the planned numbers, never second ones. Rows that
//! carry an `order_id` go through the tenant's idempotency keys (a space of their own, apart
//! from callers' `Idempotency-Key`s: [`Principal::order_key`]): once its number is planned and
//! kept, each order id is bound to it in one step (`Idempotency::bind_many`), before its
//! record is stored. Rows that share an order id share a number across imports for as long as
//! the key is kept; a resumed row finds its own number bound, and stores its record again.
//!
//! The job is written only over the state the worker last read or wrote (see the parent
//! module): when that fails, someone else changed it, and the worker reloads it and lets it be.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Held, ImportError, Imports, corrupt};
use crate::domain::idempotency::fingerprint;
use crate::domain::import::file::reader;
use crate::domain::import::results::{decode_part, encode_part};
use crate::domain::import::{
    ChunkTally, Header, ImportJob, ImportRow, JobStatus, Manifest, ResultsWriter, RowOutcome, Shown,
};
use crate::domain::{FieldError, IssueRequest, Principal, TrackingNumber};
use crate::service::idempotency::{Binding, Bound, IdempotencyError};
use crate::store::{ImportPart, QueuedImport, RecordEntry, StoreError};

/// Records stored in one round trip.
const STORE_SLICE: usize = 1000;

/// One planned number, kept before it is stored so that a resumed chunk hands out the same
/// one: the row's index in its chunk, the serial, and when its record was made (µs since the
/// Unix epoch). The row's inputs make the rest of the record again.
type Planned = (usize, u64, i64);

/// A chunk's plan as stored: its bytes (what a compare-and-swap that extends it expects), and
/// its numbers.
#[derive(Default)]
struct Kept {
    bytes: Option<Bytes>,
    planned: Vec<Planned>,
}

impl Kept {
    /// When its first numbers were planned.
    fn planned_at(&self) -> Option<DateTime<Utc>> {
        let first = self.planned.iter().map(|&(_, _, made_us)| made_us).min()?;
        DateTime::from_timestamp_micros(first)
    }
}

impl Imports {
    /// Runs the job's chunks in order. While one chunk is bound and stored (mostly the store's
    /// work), the next is read and planned (mostly this process's), so the two overlap; the job
    /// advances one chunk at a time, in order, as before.
    pub(super) async fn run_job(
        self: &Arc<Self>,
        queued: &QueuedImport,
        stop: &CancellationToken,
    ) -> Result<(), ImportError> {
        let Some(mut held) = self.take(queued).await? else {
            return Ok(());
        };
        let Some(manifest) = self.manifest(&queued.id).await? else {
            return self.forget(queued, 0).await;
        };
        let chunks = manifest.chunk_rows.len();
        let header = manifest
            .header()
            .map_err(|_| corrupt(&queued.id, "header"))?;
        let (manifest, header) = (Arc::new(manifest), Arc::new(header));
        let mut job = held.job.clone();
        job.recount();
        let mut ahead = self.look_ahead(&job, &manifest, &header, 0).await;
        loop {
            let Ahead { done, next } = ahead?;
            for tally in &done {
                job.add(tally);
            }
            let prepared = match next {
                Next::Chunk(prepared) => prepared,
                Next::End => break,
                Next::Cancelled => {
                    // The counts say what the done chunks issued, and nothing runs after this.
                    if job.cancel(Utc::now()).is_ok() {
                        self.end(queued, &held, job, chunks).await?;
                    }
                    return Ok(());
                }
                Next::Lost => return self.forget(queued, chunks).await,
            };
            if stop.is_cancelled() {
                return Ok(());
            }
            let following = prepared.chunk as usize + 1;
            // The next chunk is read and planned on its own task, beside this one's commit.
            let looking = AbortOnDropHandle::new(tokio::spawn({
                let (this, job) = (Arc::clone(self), job.clone());
                let (manifest, header) = (Arc::clone(&manifest), Arc::clone(&header));
                async move { this.look_ahead(&job, &manifest, &header, following).await }
            }));
            // A commit that fails drops the look-ahead (which stops it): the job runs again
            // from its stored state, as after a crash.
            let tally = self.commit(&job, prepared).await?;
            ahead = looking.await.unwrap_or_else(|err| {
                Err(StoreError::bug(format!("looking ahead in an import failed: {err}")).into())
            });
            self.count_rows(&tally);
            job.add(&tally);
            let Some(saved) = self.advance(queued, &held, job.clone(), chunks).await? else {
                return Ok(());
            };
            held = saved;
            self.store.touch_import(&self.worker, queued).await?;
        }
        job.finish(Utc::now());
        self.end(queued, &held, job, chunks).await
    }

    /// The job's next chunk to run, from chunk `from` on, read and planned; and the tallies of
    /// the done chunks before it.
    async fn look_ahead(
        &self,
        job: &ImportJob,
        manifest: &Manifest,
        header: &Header,
        from: usize,
    ) -> Result<Ahead, ImportError> {
        let mut done = Vec::new();
        for index in from..manifest.chunk_rows.len() {
            let chunk = index as u32;
            if let Some(part) = self
                .store
                .import_part(job.id.as_str(), ImportPart::Results(chunk))
                .await?
            {
                let (tally, _) =
                    decode_part(&part).ok_or_else(|| corrupt(job.id.as_str(), "results"))?;
                done.push(tally);
                continue;
            }
            if self.cancel_before(job.id.as_str(), chunk).await? {
                return Ok(Ahead {
                    done,
                    next: Next::Cancelled,
                });
            }
            let Some(file) = self
                .store
                .import_part(job.id.as_str(), ImportPart::File(chunk))
                .await?
            else {
                return Ok(Ahead {
                    done,
                    next: Next::Lost,
                });
            };
            let first_row = manifest.first_row(index);
            let prepared = self.prepare(job, header, chunk, first_row, &file).await?;
            return Ok(Ahead {
                done,
                next: Next::Chunk(prepared),
            });
        }
        Ok(Ahead {
            done,
            next: Next::End,
        })
    }

    /// The job to run, marked running (queued → running, a compare-and-swap) before any of its
    /// chunks, so that a cancel from then on leaves the job to its worker. None when there is
    /// nothing to run: it has ended (a cancel came first) or is gone; the queue lets it go.
    async fn take(&self, queued: &QueuedImport) -> Result<Option<Held>, ImportError> {
        loop {
            let Some(held) = self.held(&queued.id).await? else {
                self.store.ack_import(queued).await?;
                return Ok(None);
            };
            let mut job = held.job.clone();
            match job.status {
                JobStatus::Running => return Ok(Some(held)),
                JobStatus::Queued => {
                    job.start(Utc::now());
                    if let Some(running) = self.replace_job(&held, job).await? {
                        self.count_job(JobStatus::Running);
                        return Ok(Some(running));
                    }
                    // Cancelled meanwhile: look again.
                }
                _ => {
                    self.store.ack_import(queued).await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Whether the job is to stop before `chunk`: a cancel was asked for, and the chunk has no
    /// plan. A chunk with a plan may have stored records already (its worker died, or storage
    /// failed it, mid-way): it is finished first, so that every record issued is in the
    /// results.
    async fn cancel_before(&self, id: &str, chunk: u32) -> Result<bool, StoreError> {
        if self
            .store
            .import_part(id, ImportPart::Cancel)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        Ok(self
            .store
            .import_part(id, ImportPart::Plan(chunk))
            .await?
            .is_none())
    }

    /// Writes the job's progress over `held`. None when the stored job is no longer `held`:
    /// the worker then lets it be ([`Imports::let_go`]).
    async fn advance(
        &self,
        queued: &QueuedImport,
        held: &Held,
        job: ImportJob,
        chunks: usize,
    ) -> Result<Option<Held>, ImportError> {
        let saved = self.replace_job(held, job).await?;
        if saved.is_none() {
            self.let_go(queued, chunks).await?;
        }
        Ok(saved)
    }

    /// Writes the job's end (done or cancelled) over `held`, and takes it off the queue.
    async fn end(
        &self,
        queued: &QueuedImport,
        held: &Held,
        job: ImportJob,
        chunks: usize,
    ) -> Result<(), ImportError> {
        let status = job.status;
        if self.advance(queued, held, job, chunks).await?.is_some() {
            self.count_job(status);
            self.store.ack_import(queued).await?;
        }
        Ok(())
    }

    /// The stored job changed under the worker. Ended (cancelled while it was queued, or by
    /// another worker), it is left as it is and taken off the queue; gone, what is left of it is
    /// removed ([`Imports::forget`]); still running, another worker took it over (this one went
    /// quiet for `--import-stale-after`) and goes on with it.
    async fn let_go(&self, queued: &QueuedImport, chunks: usize) -> Result<(), ImportError> {
        match self.held(&queued.id).await? {
            None => self.forget(queued, chunks).await,
            Some(held) if held.job.status.is_finished() => {
                self.store.ack_import(queued).await?;
                Ok(())
            }
            Some(_) => {
                tracing::info!("another worker has taken the import over");
                Ok(())
            }
        }
    }

    /// The store lost the import: its job, its manifest or a chunk of its file is gone (Redis
    /// lost its data, say), while its parts expire together. Whatever is left could never have
    /// results, so it is removed, and the queue lets it go: the job answers 404 everywhere, as
    /// its listing and its results do, rather than `failed` without either.
    async fn forget(&self, queued: &QueuedImport, chunks: usize) -> Result<(), ImportError> {
        tracing::warn!(
            "an import's stored parts are gone (the store lost data); removing what is left"
        );
        let mut parts = vec![ImportPart::Job, ImportPart::Cancel, ImportPart::Manifest];
        for chunk in 0..chunks as u32 {
            parts.extend([
                ImportPart::File(chunk),
                ImportPart::Plan(chunk),
                ImportPart::Results(chunk),
            ]);
        }
        self.store.drop_import_parts(&queued.id, &parts).await?;
        self.store.ack_import(queued).await?;
        Ok(())
    }

    /// Reads a chunk's rows, sorts them out ([`sort_rows`]) and gives every row that wants a
    /// number one, planned (and kept) before any is bound or stored.
    async fn prepare(
        &self,
        job: &ImportJob,
        header: &Header,
        chunk: u32,
        first_row: u64,
        file: &[u8],
    ) -> Result<Prepared, ImportError> {
        let kept = self.kept_plan(job, chunk).await?;
        // A resumed chunk judges its rows as when their numbers were planned: a row whose
        // `expires_at` has passed since still gets the number (and record) it was planned.
        let now = kept.planned_at().unwrap_or_else(Utc::now);
        let records: Vec<csv::ByteRecord> = reader(job.delimiter, file)
            .byte_records()
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt(job.id.as_str(), "file"))?;
        let rows: Vec<Result<ImportRow, Vec<FieldError>>> = records
            .iter()
            .map(|record| header.read(record, now))
            .collect();
        if job.dry_run {
            let outcomes = rows
                .into_iter()
                .map(|row| match row {
                    Ok(_) => Outcome::Valid,
                    Err(errors) => Outcome::Rejected(errors),
                })
                .collect();
            return Ok(Prepared {
                chunk,
                first_row,
                records,
                outcomes,
                follows: Vec::new(),
                bindings: Vec::new(),
                planned: Vec::new(),
            });
        }
        let Sorted {
            outcomes,
            follows,
            wanted,
        } = sort_rows(&rows);
        let planned = self.plan_rows(job, chunk, &rows, &wanted, kept).await?;
        let bindings = bindings(job, first_row, &rows, &planned);
        Ok(Prepared {
            chunk,
            first_row,
            records,
            outcomes,
            follows,
            bindings,
            planned,
        })
    }

    /// Every wanted row's planned record, in row order: the number an earlier attempt planned,
    /// else one planned now and kept before it is returned. A leader whose order id turns out to
    /// hold an earlier number leaves its planned one unused.
    async fn plan_rows(
        &self,
        job: &ImportJob,
        chunk: u32,
        rows: &[Result<ImportRow, Vec<FieldError>>],
        wanted: &[usize],
        kept: Kept,
    ) -> Result<Vec<(usize, RecordEntry)>, ImportError> {
        let mut planned = self.plan_again(job, &kept, rows)?;
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
            let fresh: Vec<(Planned, RecordEntry)> = fresh
                .into_iter()
                .zip(entries)
                .map(|(at, entry)| {
                    let serial = entry.serial.unwrap_or_default();
                    ((at, serial, now.timestamp_micros()), entry)
                })
                .collect();
            self.keep_plan(job, chunk, &kept, &fresh).await?;
            planned.extend(fresh.into_iter().map(|((at, _, _), entry)| (at, entry)));
        }
        Ok(wanted
            .iter()
            .filter_map(|&at| planned.remove(&at).map(|entry| (at, entry)))
            .collect())
    }

    /// Binds and stores a prepared chunk, makes sure its records are durable, and stores its
    /// results (its tally travels with them). Returns the tally.
    async fn commit(&self, job: &ImportJob, prepared: Prepared) -> Result<ChunkTally, ImportError> {
        let Prepared {
            chunk,
            first_row,
            records,
            mut outcomes,
            follows,
            bindings,
            planned,
        } = prepared;
        self.bind(job, &mut outcomes, bindings).await?;
        // The rows still waiting store their planned records. A record that already holds a
        // planned number is this chunk's own, stored by a worker that planned it and died.
        let mut storing = Vec::with_capacity(planned.len());
        for (at, entry) in planned {
            if matches!(outcomes[at], Outcome::Valid) {
                outcomes[at] = Outcome::Issued(entry.tracking_number);
                storing.push(entry);
            }
        }
        for slice in storing.chunks(STORE_SLICE) {
            self.issuer.store(slice).await?;
        }
        for (at, leader) in follows {
            outcomes[at] = outcomes[leader].clone();
        }
        // The chunk's records are durable before its results say they exist.
        self.store.sync().await?;
        let mut tally = ChunkTally::default();
        let mut results = ResultsWriter::new(job.delimiter);
        for ((at, record), outcome) in records.iter().enumerate().zip(&outcomes) {
            let row = first_row + at as u64;
            let (shown, counted) = match outcome {
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
        let part = encode_part(&tally, &results.finish());
        self.store
            .put_import_part(
                job.id.as_str(),
                ImportPart::Results(chunk),
                &part,
                self.expiry_of(job),
            )
            .await?;
        Ok(tally)
    }

    /// Binds each order id to its leader's planned number, or finds the number it has: sets the
    /// leaders' outcomes, except those bound to their own number (still valid, to be stored).
    async fn bind(
        &self,
        job: &ImportJob,
        outcomes: &mut [Outcome],
        bindings: Vec<(usize, Binding)>,
    ) -> Result<(), ImportError> {
        if bindings.is_empty() {
            return Ok(());
        }
        let (bound_rows, bindings): (Vec<usize>, Vec<Binding>) = bindings.into_iter().unzip();
        let bound = self.idempotency.bind_many(bindings).await?;
        for (at, bound) in bound_rows.into_iter().zip(bound) {
            outcomes[at] = match bound {
                Ok(Bound::Ours) => continue,
                Ok(Bound::Replay(saved)) => match replayed_number(&saved.body) {
                    Some(number) => Outcome::Issued(number),
                    None => return Err(corrupt(job.id.as_str(), "order reply").into()),
                },
                Err(IdempotencyError::Mismatch) => Outcome::Rejected(vec![FieldError::new(
                    "order_id",
                    "was imported before with other inputs",
                )]),
                Err(IdempotencyError::InFlight) => Outcome::Rejected(vec![FieldError::new(
                    "order_id",
                    "is being imported by another job right now; import the row again later",
                )]),
                Err(IdempotencyError::Store(err)) => return Err(err.into()),
            };
        }
        Ok(())
    }

    /// The numbers an earlier attempt planned for a chunk.
    async fn kept_plan(&self, job: &ImportJob, chunk: u32) -> Result<Kept, ImportError> {
        let Some(bytes) = self
            .store
            .import_part(job.id.as_str(), ImportPart::Plan(chunk))
            .await?
        else {
            return Ok(Kept::default());
        };
        let planned =
            serde_json::from_slice(&bytes).map_err(|_| corrupt(job.id.as_str(), "plan"))?;
        Ok(Kept {
            bytes: Some(bytes),
            planned,
        })
    }

    /// The numbers planned for a chunk by an earlier attempt, by row, with their records made
    /// again from the rows.
    fn plan_again(
        &self,
        job: &ImportJob,
        kept: &Kept,
        rows: &[Result<ImportRow, Vec<FieldError>>],
    ) -> Result<HashMap<usize, RecordEntry>, ImportError> {
        let mut again = HashMap::with_capacity(kept.planned.len());
        for &(at, serial, made_us) in &kept.planned {
            let Some(Ok(row)) = rows.get(at) else {
                continue;
            };
            let made = DateTime::from_timestamp_micros(made_us)
                .ok_or_else(|| corrupt(job.id.as_str(), "plan"))?;
            let entry = self
                .issuer
                .record_for(&row.request, job.tenant.as_ref(), serial, made)?;
            again.insert(at, entry);
        }
        Ok(again)
    }

    /// Keeps the chunk's plan with `fresh` numbers added, unless another worker changed the plan
    /// since it was read: then none of these is stored, and the chunk runs again with that plan.
    async fn keep_plan(
        &self,
        job: &ImportJob,
        chunk: u32,
        kept: &Kept,
        fresh: &[(Planned, RecordEntry)],
    ) -> Result<(), ImportError> {
        let planned: Vec<Planned> = kept
            .planned
            .iter()
            .copied()
            .chain(fresh.iter().map(|(plan, _)| *plan))
            .collect();
        let bytes = serde_json::to_vec(&planned).map_err(StoreError::bug)?;
        let kept_now = self
            .store
            .swap_import_part(
                job.id.as_str(),
                ImportPart::Plan(chunk),
                kept.bytes.as_deref(),
                &bytes,
                self.expiry_of(job),
            )
            .await?;
        if kept_now {
            Ok(())
        } else {
            Err(ImportError::PlanChanged)
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

/// What [`Imports::look_ahead`] found.
struct Ahead {
    /// The tallies of the done chunks it passed, in order.
    done: Vec<ChunkTally>,
    next: Next,
}

enum Next {
    /// The next chunk to run, read and planned.
    Chunk(Prepared),
    /// A cancel came before the next chunk had a plan.
    Cancelled,
    /// Every chunk is done.
    End,
    /// The next chunk's file is gone (the store lost data).
    Lost,
}

/// A chunk read and planned, to be bound and stored ([`Imports::commit`]).
struct Prepared {
    chunk: u32,
    first_row: u64,
    records: Vec<csv::ByteRecord>,
    /// Each row's outcome so far: rejected, or valid (waiting for its number).
    outcomes: Vec<Outcome>,
    /// Rows that repeat an earlier row of the chunk: (row, that row).
    follows: Vec<(usize, usize)>,
    /// Order ids to bind to their rows' planned numbers: (row, binding).
    bindings: Vec<(usize, Binding)>,
    /// The planned record of each row that wants a number of its own: (row, record).
    planned: Vec<(usize, RecordEntry)>,
}

/// A chunk's rows sorted out before any number is planned.
#[derive(Debug)]
struct Sorted {
    outcomes: Vec<Outcome>,
    /// Rows that give an earlier row's order id with the same inputs, and follow it: (row, the
    /// row it follows).
    follows: Vec<(usize, usize)>,
    /// The valid rows that want a number of their own (all but the followers), in order.
    wanted: Vec<usize>,
}

/// Sorts out a chunk's rows: invalid rows are rejected; a row that gives an earlier row's order
/// id follows that row when its inputs are the same, and is rejected when they are not; every
/// other valid row wants a number of its own.
fn sort_rows(rows: &[Result<ImportRow, Vec<FieldError>>]) -> Sorted {
    let mut leaders: HashMap<&str, usize> = HashMap::new();
    let mut sorted = Sorted {
        outcomes: Vec::with_capacity(rows.len()),
        follows: Vec::new(),
        wanted: Vec::with_capacity(rows.len()),
    };
    for (at, row) in rows.iter().enumerate() {
        let outcome = match row {
            Err(errors) => Outcome::Rejected(errors.clone()),
            Ok(ImportRow {
                order_id: Some(order_id),
                request,
            }) => match leaders.get(order_id.as_str()) {
                Some(&leader) => match &rows[leader] {
                    Ok(first) if first.request == *request => {
                        sorted.follows.push((at, leader));
                        Outcome::Valid
                    }
                    _ => Outcome::Rejected(vec![FieldError::new(
                        "order_id",
                        "was given earlier in the file with other inputs",
                    )]),
                },
                None => {
                    leaders.insert(order_id, at);
                    sorted.wanted.push(at);
                    Outcome::Valid
                }
            },
            Ok(_) => {
                sorted.wanted.push(at);
                Outcome::Valid
            }
        };
        sorted.outcomes.push(outcome);
    }
    sorted
}

/// The binding of each planned row's order id (rows without one have none) to its number.
fn bindings(
    job: &ImportJob,
    first_row: u64,
    rows: &[Result<ImportRow, Vec<FieldError>>],
    planned: &[(usize, RecordEntry)],
) -> Vec<(usize, Binding)> {
    let owner = Principal {
        tenant: job.tenant.clone(),
        admin: false,
    };
    planned
        .iter()
        .filter_map(|(at, entry)| {
            let row = rows[*at].as_ref().ok()?;
            let order_id = row.order_id.as_deref()?;
            let inputs = serde_json::to_vec(&row.request).unwrap_or_default();
            let binding = Binding {
                key: owner.order_key(order_id),
                fingerprint: fingerprint("import-order", &inputs),
                token: format!("{}:{}", job.id, first_row + *at as u64),
                body: order_reply(entry.tracking_number),
            };
            Some((*at, binding))
        })
        .collect()
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

    fn row(order_id: Option<&str>, expires_in_days: i64) -> Result<ImportRow, Vec<FieldError>> {
        let expires = DateTime::from_timestamp(1_800_000_000 + expires_in_days * 86_400, 0);
        Ok(ImportRow {
            request: IssueRequest {
                order: Default::default(),
                expires_at: expires,
            },
            order_id: order_id.map(str::to_owned),
        })
    }

    fn rejected(outcome: &Outcome) -> Option<&str> {
        match outcome {
            Outcome::Rejected(errors) => Some(errors[0].field.as_str()),
            _ => None,
        }
    }

    #[test]
    fn a_row_that_repeats_an_order_id_with_its_inputs_follows_the_first() {
        let rows = vec![
            row(Some("A"), 1),
            row(None, 1),
            row(Some("A"), 1),
            row(Some("B"), 2),
            row(Some("A"), 1),
        ];
        let sorted = sort_rows(&rows);
        assert_eq!(sorted.wanted, vec![0, 1, 3]);
        assert_eq!(sorted.follows, vec![(2, 0), (4, 0)]);
        assert!(sorted.outcomes.iter().all(|o| matches!(o, Outcome::Valid)));
    }

    #[test]
    fn a_row_that_repeats_an_order_id_with_other_inputs_is_rejected() {
        let rows = vec![row(Some("A"), 1), row(Some("A"), 2), row(Some("A"), 1)];
        let sorted = sort_rows(&rows);
        assert_eq!(sorted.wanted, vec![0]);
        assert_eq!(sorted.follows, vec![(2, 0)]);
        assert_eq!(rejected(&sorted.outcomes[1]), Some("order_id"));
        assert_eq!(rejected(&sorted.outcomes[0]), None);
    }

    #[test]
    fn invalid_rows_are_rejected_and_lead_no_order_id() {
        let invalid = Err(vec![FieldError::new("weight", "is not a number")]);
        let rows = vec![invalid.clone(), row(Some("A"), 1), invalid, row(None, 1)];
        let sorted = sort_rows(&rows);
        assert_eq!(sorted.wanted, vec![1, 3]);
        assert!(sorted.follows.is_empty());
        assert_eq!(rejected(&sorted.outcomes[0]), Some("weight"));
        assert_eq!(rejected(&sorted.outcomes[2]), Some("weight"));
        assert_eq!(rejected(&sorted.outcomes[1]), None);
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
