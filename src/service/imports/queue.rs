//! The queue loop: this instance's one worker takes the next job the store leases to it (a
//! queued job, or one whose worker has not touched it for `--import-stale-after`), runs it to
//! its end ([`Imports::run_job`]), and looks again. An empty queue is looked at again every
//! [`IDLE_POLL`] (a new upload is found that way); a queue that storage fails, after
//! [`RETRY_PAUSE`]. A job that storage fails mid-way is tried again after the same pause, its
//! lease touched so no other worker takes it; a job that cannot go on is failed and acked.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ImportError, Imports};
use crate::domain::import::JobStatus;
use crate::store::{QueuedImport, StoreError};

/// How long the worker waits before it looks at an empty queue again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long the worker waits before it looks at the queue again, or tries a job again, after
/// storage failed it.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The worker's loop over the queue, for one process.
pub(super) struct Queue {
    imports: Arc<Imports>,
}

/// What the worker does after looking at the queue.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    Run(QueuedImport),
    /// Looks again after this long.
    Wait(Duration),
}

/// How one attempt at a job went.
#[derive(Debug)]
enum Attempt {
    /// The job ended, or is someone else's now.
    Over,
    /// Storage failed it: try again after [`RETRY_PAUSE`].
    Again(ImportError),
    /// Waiting cannot cure it: the job fails.
    Failed(ImportError),
}

impl Look {
    fn after(found: Result<Option<QueuedImport>, StoreError>) -> Look {
        match found {
            Ok(Some(queued)) => Look::Run(queued),
            Ok(None) => Look::Wait(IDLE_POLL),
            Err(err) => {
                tracing::warn!(error = %err, "could not look for import jobs");
                Look::Wait(RETRY_PAUSE)
            }
        }
    }
}

impl Attempt {
    fn of(result: Result<(), ImportError>) -> Attempt {
        match result {
            Ok(()) => Attempt::Over,
            Err(err) if err.is_transient() => Attempt::Again(err),
            Err(err) => Attempt::Failed(err),
        }
    }
}

impl Queue {
    pub(super) fn new(imports: Arc<Imports>) -> Queue {
        Queue { imports }
    }

    /// Runs queued jobs, one at a time, until `stop`; a job it is running when told to stop is
    /// left for another worker (or this one, after a restart) to finish.
    pub(super) async fn work(&self, stop: CancellationToken) {
        let imports = &self.imports;
        while !stop.is_cancelled() {
            let found = tokio::select! {
                () = stop.cancelled() => return,
                next = imports.store.next_import(&imports.worker, imports.stale_after) => next,
            };
            let pause = match Look::after(found) {
                Look::Run(queued) => {
                    // The job's log lines carry its id from this span.
                    let span = tracing::info_span!("import", import = %queued.id);
                    self.run(&queued, stop.clone()).instrument(span).await;
                    continue;
                }
                Look::Wait(pause) => pause,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Runs one job to its end, trying it again while storage is unavailable.
    async fn run(&self, queued: &QueuedImport, stop: CancellationToken) {
        let imports = &self.imports;
        loop {
            match Attempt::of(imports.run_job(queued, &stop).await) {
                Attempt::Over => return,
                Attempt::Again(err) => {
                    tracing::warn!(error = %err, "an import waits for storage");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                    if let Err(err) = imports.store.touch_import(&imports.worker, queued).await {
                        tracing::debug!(error = %err, "could not touch an import job");
                    }
                }
                Attempt::Failed(err) => {
                    tracing::error!(error = %err, "an import failed");
                    if let Err(err) = self.fail(queued).await {
                        tracing::warn!(error = %err, "could not end an import");
                    }
                    return;
                }
            }
        }
    }

    /// Ends a job that cannot go on (a fault that waiting cannot cure), unless it has ended,
    /// and takes it off the queue.
    async fn fail(&self, queued: &QueuedImport) -> Result<(), StoreError> {
        let imports = &self.imports;
        loop {
            let Some(held) = imports.held(&queued.id).await? else {
                return imports.store.ack_import(queued).await;
            };
            let mut job = held.job.clone();
            if job.status.is_finished() {
                return imports.store.ack_import(queued).await;
            }
            job.fail("the import could not be completed", Utc::now());
            if imports.replace_job(&held, job).await?.is_some() {
                imports.count_job(JobStatus::Failed);
                return imports.store.ack_import(queued).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::issuer::IssueError;

    fn queued() -> QueuedImport {
        QueuedImport {
            id: "0123456789abcdef0123456789abcdef".into(),
            handle: "1-0".into(),
        }
    }

    #[test]
    fn a_job_found_is_run_and_an_empty_or_failing_queue_is_looked_at_again_later() {
        assert_eq!(Look::after(Ok(Some(queued()))), Look::Run(queued()));
        assert_eq!(Look::after(Ok(None)), Look::Wait(IDLE_POLL));
        let down = StoreError::Unavailable("the disk did not answer in time".into());
        assert_eq!(Look::after(Err(down)), Look::Wait(RETRY_PAUSE));
    }

    #[test]
    fn storage_faults_are_waited_out_and_other_faults_fail_the_job() {
        assert!(matches!(Attempt::of(Ok(())), Attempt::Over));
        for transient in [
            ImportError::Store(StoreError::Unavailable("down".into())),
            ImportError::Store(StoreError::Busy("busy".into())),
            ImportError::Issue(IssueError::Store(StoreError::NotWritable("full".into()))),
            ImportError::Issue(IssueError::NoSerials("none left in the lease".into())),
            ImportError::PlanChanged,
        ] {
            assert!(
                matches!(Attempt::of(Err(transient)), Attempt::Again(_)),
                "waited out"
            );
        }
        let corrupt = ImportError::Store(StoreError::Corrupt("a bad manifest".into()));
        assert!(matches!(
            Attempt::of(Err(corrupt)),
            Attempt::Failed(ImportError::Store(StoreError::Corrupt(_)))
        ));
    }
}
