//! An import job's state: where it is in its life, how far it got, and its first row errors.
//! A job is queued, then running, then done, failed or cancelled; a file of no rows is done at
//! once. A job belongs to the tenant that uploaded it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::file::{Delimiter, RowError};
use super::id::ImportId;
use crate::domain::order::FieldError;
use crate::domain::{Principal, Tenant};

/// A job reports at most this many row errors; the counts cover every row.
pub const MAX_REPORTED_ERRORS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// The status as the API and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended, and its results are final.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// How many rows the file holds, and what became of those processed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowCounts {
    pub total: u64,
    pub processed: u64,
    /// Rows that got a number (always 0 in a dry run).
    pub issued: u64,
    /// Rows that passed every check (in a real run, also those that got a number).
    pub valid: u64,
    pub rejected: u64,
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// It got a number.
    Issued,
    /// It passed every check, and a dry run issues nothing.
    Valid,
    /// It was skipped, for these reasons.
    Rejected(Vec<FieldError>),
}

/// What became of one chunk's rows. Kept with the chunk's results, so that a job's counts can
/// always be rebuilt from the chunks that are done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkTally {
    pub issued: u64,
    /// Rows that passed every check, issued or not (a dry run).
    pub valid: u64,
    pub rejected: u64,
    /// The chunk's first [`MAX_REPORTED_ERRORS`] row errors.
    pub errors: Vec<RowError>,
}

impl ChunkTally {
    pub fn record(&mut self, row: u64, outcome: RowOutcome) {
        match outcome {
            RowOutcome::Issued => {
                self.issued += 1;
                self.valid += 1;
            }
            RowOutcome::Valid => self.valid += 1,
            RowOutcome::Rejected(errors) => {
                self.rejected += 1;
                let room = MAX_REPORTED_ERRORS.saturating_sub(self.errors.len());
                self.errors.extend(RowError::all(row, errors).take(room));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportJob {
    #[schema(value_type = String, examples("5f0c6b8a9d2e4f1b8c3a7e6d5b4a3c2f"))]
    pub id: ImportId,
    pub status: JobStatus,
    pub dry_run: bool,
    pub delimiter: Delimiter,
    /// The tenant whose key uploaded the file; absent without API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, examples("acme"))]
    pub tenant: Option<Tenant>,
    pub rows: RowCounts,
    /// The first [`MAX_REPORTED_ERRORS`] row errors, in row order.
    pub errors: Vec<RowError>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why a failed job failed, in words fit for the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub failure: Option<String>,
}

impl ImportJob {
    /// A new job for a file of `total` rows: queued, or done at once when there are none.
    pub fn new(
        id: ImportId,
        tenant: Option<Tenant>,
        total: u64,
        dry_run: bool,
        delimiter: Delimiter,
        now: DateTime<Utc>,
    ) -> ImportJob {
        let empty = total == 0;
        ImportJob {
            id,
            status: if empty {
                JobStatus::Done
            } else {
                JobStatus::Queued
            },
            dry_run,
            delimiter,
            tenant,
            rows: RowCounts {
                total,
                ..RowCounts::default()
            },
            errors: Vec::new(),
            created_at: now,
            started_at: empty.then_some(now),
            finished_at: empty.then_some(now),
            failure: None,
        }
    }

    /// Whether `principal` may see (and cancel) this job.
    pub fn visible_to(&self, principal: &Principal) -> bool {
        principal.can_see(self.tenant.as_ref())
    }

    /// A worker takes the job: a queued job starts, and a running one (its worker died) goes
    /// on where it was. False when the job has ended.
    pub fn start(&mut self, now: DateTime<Utc>) -> bool {
        match self.status {
            JobStatus::Queued => {
                self.status = JobStatus::Running;
                self.started_at = Some(now);
                true
            }
            JobStatus::Running => true,
            _ => false,
        }
    }

    /// Counts the next row (`row` counts from 1) and keeps its errors while there is room.
    pub fn record(&mut self, row: u64, outcome: RowOutcome) {
        let mut tally = ChunkTally::default();
        tally.record(row, outcome);
        self.add(&tally);
    }

    /// Counts a chunk's rows (chunks in file order) and keeps their errors while there is room.
    pub fn add(&mut self, tally: &ChunkTally) {
        self.rows.processed += tally.valid + tally.rejected;
        self.rows.issued += tally.issued;
        self.rows.valid += tally.valid;
        self.rows.rejected += tally.rejected;
        let room = MAX_REPORTED_ERRORS.saturating_sub(self.errors.len());
        self.errors.extend(tally.errors.iter().take(room).cloned());
    }

    /// Forgets what was counted, to count the chunks that are done again (a job resumed by
    /// another worker).
    pub fn recount(&mut self) {
        self.rows = RowCounts {
            total: self.rows.total,
            ..RowCounts::default()
        };
        self.errors.clear();
    }

    /// Every row was processed.
    pub fn finish(&mut self, now: DateTime<Utc>) {
        if self.status == JobStatus::Running {
            self.status = JobStatus::Done;
            self.finished_at = Some(now);
        }
    }

    /// The job cannot go on (its file is gone, say); `reason` is shown to the caller.
    pub fn fail(&mut self, reason: impl Into<String>, now: DateTime<Utc>) {
        if !self.status.is_finished() {
            self.status = JobStatus::Failed;
            self.failure = Some(reason.into());
            self.finished_at = Some(now);
        }
    }

    /// Stops a queued or running job; the rows that already got numbers keep them. A job that
    /// has ended cannot be cancelled: its status is the error.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<(), JobStatus> {
        if self.status.is_finished() {
            return Err(self.status);
        }
        self.status = JobStatus::Cancelled;
        self.finished_at = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
    }

    fn job(total: u64) -> ImportJob {
        ImportJob::new(ImportId::new(), None, total, false, Delimiter::Comma, now())
    }

    fn bad(field: &str) -> RowOutcome {
        RowOutcome::Rejected(vec![FieldError::new(field, "is wrong")])
    }

    #[test]
    fn a_job_runs_from_queued_to_done() {
        let mut job = job(3);
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.started_at, None);
        let later = now() + Duration::seconds(1);
        assert!(job.start(later));
        assert_eq!(
            (job.status, job.started_at),
            (JobStatus::Running, Some(later))
        );
        job.record(1, RowOutcome::Issued);
        job.record(2, bad("weight"));
        job.record(3, RowOutcome::Issued);
        job.finish(later);
        assert_eq!(job.status, JobStatus::Done);
        assert_eq!(
            job.rows,
            RowCounts {
                total: 3,
                processed: 3,
                issued: 2,
                valid: 2,
                rejected: 1
            }
        );
        assert_eq!(job.errors.len(), 1);
        assert_eq!(
            (job.errors[0].row, job.errors[0].field.as_str()),
            (2, "weight")
        );
    }

    #[test]
    fn a_file_of_no_rows_is_done_at_once() {
        let job = job(0);
        assert_eq!(job.status, JobStatus::Done);
        assert_eq!(job.finished_at, Some(now()));
        assert_eq!(job.started_at, Some(now()));
    }

    #[test]
    fn a_dry_run_counts_valid_rows_and_issues_none() {
        let mut job = ImportJob::new(ImportId::new(), None, 2, true, Delimiter::Tab, now());
        job.start(now());
        job.record(1, RowOutcome::Valid);
        job.record(2, bad("origin_country_id"));
        assert_eq!(
            (job.rows.valid, job.rows.issued, job.rows.rejected),
            (1, 0, 1)
        );
    }

    #[test]
    fn only_the_first_hundred_errors_are_kept_but_every_row_is_counted() {
        let mut job = job(300);
        job.start(now());
        for row in 1..=300 {
            job.record(
                row,
                RowOutcome::Rejected(vec![
                    FieldError::new("weight", "is wrong"),
                    FieldError::new("created_at", "is wrong"),
                ]),
            );
        }
        assert_eq!(job.rows.rejected, 300);
        assert_eq!(job.errors.len(), MAX_REPORTED_ERRORS);
        assert_eq!(job.errors.last().unwrap().row, 50);
    }

    #[test]
    fn a_running_job_resumes_and_an_ended_one_does_not_start() {
        let mut job = job(2);
        let first = now();
        job.start(first);
        job.record(1, RowOutcome::Issued);
        assert!(
            job.start(first + Duration::minutes(5)),
            "another worker resumes it"
        );
        assert_eq!(job.started_at, Some(first));
        assert_eq!(job.rows.processed, 1);
        job.cancel(first).unwrap();
        assert!(!job.start(first));
        assert_eq!(job.status, JobStatus::Cancelled);
    }

    #[test]
    fn only_an_unfinished_job_can_be_cancelled_or_failed() {
        let mut queued = job(5);
        assert_eq!(queued.cancel(now()), Ok(()));
        assert_eq!(queued.cancel(now()), Err(JobStatus::Cancelled));
        let mut done = job(0);
        assert_eq!(done.cancel(now()), Err(JobStatus::Done));
        done.fail("gone", now());
        assert_eq!(
            (done.status, done.failure.as_deref()),
            (JobStatus::Done, None)
        );
        let mut running = job(5);
        running.start(now());
        running.fail("the uploaded file has expired", now());
        assert_eq!(running.status, JobStatus::Failed);
        running.finish(now());
        assert_eq!(
            running.status,
            JobStatus::Failed,
            "a failed job stays failed"
        );
    }

    #[test]
    fn a_job_is_seen_by_its_tenant_and_admins_only() {
        let acme = Tenant::parse("acme").unwrap();
        let other = Tenant::parse("other").unwrap();
        let job = ImportJob::new(
            ImportId::new(),
            Some(acme.clone()),
            1,
            false,
            Delimiter::Comma,
            now(),
        );
        assert!(job.visible_to(&Principal::member(acme)));
        assert!(!job.visible_to(&Principal::member(other.clone())));
        assert!(job.visible_to(&Principal::admin(other)));
    }

    #[test]
    fn a_job_reads_back_as_it_was_stored() {
        let mut job = job(2);
        job.start(now());
        job.record(1, bad("weight"));
        let json = serde_json::to_string(&job).unwrap();
        assert!(json.contains("\"status\":\"running\""), "{json}");
        assert!(json.contains("\"delimiter\":\"comma\""), "{json}");
        let back: ImportJob = serde_json::from_str(&json).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn counts_rebuilt_from_chunk_tallies_match_counting_row_by_row() {
        let outcomes = [
            RowOutcome::Issued,
            bad("weight"),
            RowOutcome::Issued,
            bad("row"),
        ];
        let mut by_row = job(4);
        let mut tallies = [ChunkTally::default(), ChunkTally::default()];
        for (at, outcome) in outcomes.into_iter().enumerate() {
            let row = at as u64 + 1;
            by_row.record(row, outcome.clone());
            tallies[at / 2].record(row, outcome);
        }
        let mut by_chunk = job(4);
        by_chunk.add(&tallies[0]);
        by_chunk.recount();
        assert_eq!(by_chunk.rows, job(4).rows, "a recount starts from nothing");
        for tally in &tallies {
            by_chunk.add(tally);
        }
        assert_eq!(by_chunk.rows, by_row.rows);
        assert_eq!(by_chunk.errors, by_row.errors);
        assert_eq!(by_row.rows.processed, 4);
        assert_eq!((by_row.rows.issued, by_row.rows.rejected), (2, 2));
    }

    #[test]
    fn status_names_are_the_api_names() {
        use JobStatus::*;
        for status in [Queued, Running, Done, Failed, Cancelled] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.name()));
        }
    }
}
