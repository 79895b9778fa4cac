//! How long a storage call may take. Every call is bounded by `--storage-timeout`, so a hung
//! Redis or a frozen disk becomes a 503 in time instead of a hung request. A request with an
//! `Idempotency-Key` runs on in the background after its caller got that 503, so that its key
//! ends up holding what really happened: its storage calls get a longer bound, set here for
//! the task that runs it.

use std::future::Future;
use std::time::Duration;

use tokio::task::futures::TaskLocalFuture;

use super::StoreError;

tokio::task_local! {
    static PATIENCE: Duration;
}

/// Runs `work` with its storage calls bounded by `limit` instead of the store's own timeout.
pub fn with_patience<F: Future>(limit: Duration, work: F) -> TaskLocalFuture<Duration, F> {
    PATIENCE.scope(limit, work)
}

/// The bound for a storage call made now: the task's own, or `default`.
pub fn limit(default: Duration) -> Duration {
    PATIENCE.try_with(|limit| *limit).unwrap_or(default)
}

/// `work`, or `StoreError::Unavailable` once it has taken longer than [`limit`]`(default)`.
pub async fn bounded<T>(
    default: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit(default), work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "storage did not answer in time".into(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_bounded_by_the_default_unless_the_task_says_otherwise() {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, StoreError>(7)
        };
        let second = Duration::from_secs(1);
        assert!(matches!(
            bounded(second, slow()).await,
            Err(StoreError::Unavailable(_))
        ));
        let patient = with_patience(Duration::from_secs(3), bounded(second, slow()));
        assert_eq!(patient.await.unwrap(), 7);
    }
}
