//! Keeps the pool topped up: leases the next block in the background as soon as a spare block
//! is taken into use, retrying with backoff while the counter store is unreachable. Blocks grow
//! with the rate serials are taken at, and shrink again when it falls ([`BlockSizer`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BlockSizer, SerialPool};
use crate::store::{LeaseSource, StoreError};

const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The shortest wait before asking a counter that waits for its clock again.
const MIN_CLOCK_WAIT: Duration = Duration::from_millis(1);
/// At most this many blocks are leased at once.
const MAX_BLOCKS_PER_LEASE: u64 = 2;

/// What the refill task last saw, for health reporting.
#[derive(Default)]
pub struct RefillStatus {
    last_error: Mutex<Option<String>>,
}

impl RefillStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// Leases the first block at start-up. `Ok(None)` when the store is unreachable for now (the
/// refill task keeps trying); an error only for what retrying cannot fix, like a secret mismatch.
pub async fn first_lease(
    pool: &SerialPool,
    source: &dyn LeaseSource,
    block_size: u64,
) -> Result<Option<u64>, StoreError> {
    match source.lease(block_size, 0).await {
        Ok(range) => {
            let floor = range.end;
            // Ready once the first block can be handed out whole, as it could before a restart.
            pool.due(floor - 1).await;
            pool.add_block(range);
            Ok(Some(floor))
        }
        Err(err) if err.is_transient() => {
            tracing::warn!(error = %err, "cannot lease serials yet; retrying in the background");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Starts the refill task. `floor` is the end of the last block this process leased: no later
/// lease may start below it. On `stop`, the task ends between leases, never during one.
pub fn spawn_refill(
    pool: Arc<SerialPool>,
    source: Arc<dyn LeaseSource>,
    mut sizer: BlockSizer,
    mut floor: u64,
    status: Arc<RefillStatus>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        // Serials leased so far, less those still in the pool, is what was taken.
        let mut leased = pool.remaining();
        let mut taken_before = 0;
        let mut measured_at = tokio::time::Instant::now();
        while !stop.is_cancelled() {
            while pool.needs_more() && !stop.is_cancelled() {
                // Missing blocks come in one lease: one storage trip, not one each.
                let size = sizer.current();
                let blocks = (pool.blocks_missing() as u64).clamp(1, MAX_BLOCKS_PER_LEASE);
                match source.lease(size * blocks, floor).await {
                    Ok(range) => {
                        floor = range.end;
                        leased += range.end - range.start;
                        for start in range.clone().step_by(size as usize) {
                            pool.add_block(start..(start + size).min(range.end));
                        }
                        status.set(None);
                        backoff = Duration::from_millis(50);
                    }
                    Err(StoreError::WaitForClock(wait)) => {
                        // Not a failure: the counter is as far ahead of the clock as it may go.
                        tokio::select! {
                            () = tokio::time::sleep(wait.clamp(MIN_CLOCK_WAIT, MAX_BACKOFF)) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?backoff, "lease failed");
                        status.set(Some(err.probe_reason()));
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = stop.cancelled() => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            tokio::select! {
                () = pool.wants_more() => {}
                () = stop.cancelled() => {}
            }
            let taken = leased.saturating_sub(pool.remaining());
            let before = sizer.current();
            let after = sizer.observe(taken.saturating_sub(taken_before), measured_at.elapsed());
            if after != before {
                tracing::debug!(block_size = after, "block size follows the issuing rate");
            }
            taken_before = taken;
            measured_at = tokio::time::Instant::now();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::ops::Range;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A counter that can be switched off, like a Redis going away.
    struct FlakyCounter {
        next: AtomicU64,
        down: AtomicBool,
        largest_lease: AtomicU64,
    }

    #[async_trait]
    impl LeaseSource for FlakyCounter {
        fn paced_in(&self) -> Option<u64> {
            None
        }
        async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.largest_lease.fetch_max(size, Ordering::SeqCst);
            let start = self.next.fetch_add(size, Ordering::SeqCst).max(floor);
            Ok(start..start + size)
        }
    }

    #[tokio::test]
    async fn keeps_the_pool_stocked_and_recovers_after_an_outage() {
        let counter = Arc::new(FlakyCounter {
            next: AtomicU64::new(0),
            down: AtomicBool::new(true),
            largest_lease: AtomicU64::new(0),
        });
        let pool = Arc::new(SerialPool::new(1));
        let status = Arc::new(RefillStatus::default());
        assert_eq!(
            first_lease(&pool, counter.as_ref(), 10).await.unwrap(),
            None
        );
        let stop = CancellationToken::new();
        let task = spawn_refill(
            pool.clone(),
            counter.clone(),
            BlockSizer::new(10, 1000),
            0,
            status.clone(),
            stop.clone(),
        );

        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(pool.try_take(), None);
        assert!(status.last_error().is_some());

        counter.down.store(false, Ordering::SeqCst);
        let first = pool.take(Duration::from_secs(3)).await;
        assert_eq!(first, Some(0));
        // 25 more serials need two further leases, made in the background.
        for expected in 1..26 {
            assert_eq!(pool.take(Duration::from_secs(1)).await, Some(expected));
        }
        assert!(status.last_error().is_none());
        // Blocks of 10 went fast: bigger ones were leased, within the ceiling.
        let largest = counter.largest_lease.load(Ordering::SeqCst);
        assert!(
            largest > 10 * MAX_BLOCKS_PER_LEASE && largest <= 1000 * MAX_BLOCKS_PER_LEASE,
            "{largest}"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the task stops when told")
            .unwrap();
    }
}
