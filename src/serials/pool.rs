//! The serial pool: the block in use is a pair (next, end) read through an `ArcSwap`, so taking
//! a serial is one `fetch_add`. A lock is taken only to switch blocks, once per block.
//!
//! A paced pool ([`SerialPool::paced`], for serials that count microseconds, as the embedded
//! store's do) hands a serial out only once the clock has passed it, so a crash never leaves a
//! handed-out serial ahead of the clock, where a wiped data file starts again. The check reads
//! the clock only when a serial is past the last reading: serials trail the clock but for a
//! burst faster than a million a second, which waits for it.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::store::clock_serial;

/// A serial further ahead of the clock than this is not waited for: the clock went back, and
/// the lease that gave it said so.
pub const MAX_CLOCK_WAIT: Duration = Duration::from_secs(5);

struct Block {
    next: AtomicU64,
    end: u64,
}

impl Block {
    fn new(range: Range<u64>) -> Self {
        Block {
            next: AtomicU64::new(range.start),
            end: range.end,
        }
    }

    fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next.load(Ordering::Relaxed))
    }
}

pub struct SerialPool {
    current: ArcSwap<Block>,
    /// Leased blocks waiting their turn, oldest first.
    spare: Mutex<VecDeque<Range<u64>>>,
    /// How many spare blocks the refill task keeps ready.
    spare_target: usize,
    /// Wakes the refill task when a spare block was taken into use.
    wants_more: Notify,
    /// Wakes requests waiting for a block.
    arrived: Notify,
    /// For a paced pool, the partition in which a serial's offset counts µs since the floor
    /// epoch.
    paced_in: Option<u64>,
    /// The latest clock reading (µs since the floor epoch) a paced take made.
    clock_seen: AtomicU64,
}

impl SerialPool {
    pub fn new(spare_target: usize) -> Self {
        SerialPool {
            current: ArcSwap::from_pointee(Block::new(0..0)),
            spare: Mutex::new(VecDeque::new()),
            spare_target: spare_target.max(1),
            wants_more: Notify::new(),
            arrived: Notify::new(),
            paced_in: None,
            clock_seen: AtomicU64::new(0),
        }
    }

    /// A pool whose serials' offsets in partitions of `partition` serials count µs since the
    /// floor epoch: each is handed out once the clock has passed it.
    pub fn paced(spare_target: usize, partition: u64) -> Self {
        SerialPool {
            paced_in: Some(partition.max(1)),
            ..SerialPool::new(spare_target)
        }
    }

    /// The next serial, or None when every leased block is used up.
    #[inline]
    pub fn try_take(&self) -> Option<u64> {
        loop {
            let block = self.current.load();
            let serial = block.next.fetch_add(1, Ordering::Relaxed);
            if serial < block.end {
                return Some(serial);
            }
            // This block is spent: move to the next one, unless another thread already did.
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            if !Arc::ptr_eq(&self.current.load(), &block) {
                continue;
            }
            let next = spare.pop_front();
            if let Some(range) = &next {
                // Installed under the lock, so no other thread can install one in between.
                self.current.store(Arc::new(Block::new(range.clone())));
            }
            drop(spare);
            self.wants_more.notify_one();
            next.as_ref()?;
        }
    }

    /// The next serial, waiting up to `wait` for a block to be leased when the pool is empty
    /// (and, in a paced pool, for the clock to pass it).
    pub async fn take(&self, wait: Duration) -> Option<u64> {
        let serial = match self.try_take() {
            Some(serial) => serial,
            None => self.take_arriving(wait).await?,
        };
        self.due(serial).await;
        Some(serial)
    }

    async fn take_arriving(&self, wait: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(serial) = self.try_take() {
                return Some(serial);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.try_take();
            }
        }
    }

    /// In a paced pool, waits until the clock has passed `serial` (at most [`MAX_CLOCK_WAIT`]).
    pub async fn due(&self, serial: u64) {
        let Some(partition) = self.paced_in else {
            return;
        };
        let at = serial % partition;
        if at < self.clock_seen.load(Ordering::Relaxed) {
            return;
        }
        let now = clock_serial(std::time::SystemTime::now());
        self.clock_seen.fetch_max(now, Ordering::Relaxed);
        let ahead = Duration::from_micros(at.saturating_sub(now));
        if !ahead.is_zero() && ahead <= MAX_CLOCK_WAIT {
            tokio::time::sleep(ahead).await;
        }
    }

    /// Adds a freshly leased block behind the ones already waiting.
    pub fn add_block(&self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        self.spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(range);
        self.arrived.notify_waiters();
    }

    /// True while fewer spare blocks are ready than the target.
    pub fn needs_more(&self) -> bool {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).len() < self.spare_target()
    }

    /// How many spare blocks are missing from the target stock.
    pub fn blocks_missing(&self) -> usize {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.spare_target().saturating_sub(spare)
    }

    pub fn spare_target(&self) -> usize {
        self.spare_target
    }

    /// Resolves when a spare block was taken into use (or right away if one already was).
    pub async fn wants_more(&self) {
        self.wants_more.notified().await;
    }

    /// Serials that can be handed out without another lease.
    pub fn remaining(&self) -> u64 {
        let spare: u64 = self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        self.current.load().remaining() + spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn an_empty_pool_has_nothing() {
        let pool = SerialPool::new(1);
        assert_eq!(pool.try_take(), None);
        assert_eq!(pool.remaining(), 0);
        assert!(pool.needs_more());
    }

    #[test]
    fn hands_out_blocks_in_order_and_then_runs_dry() {
        let pool = SerialPool::new(2);
        pool.add_block(10..13);
        pool.add_block(100..102);
        assert!(!pool.needs_more());
        assert_eq!(pool.remaining(), 5);
        let taken: Vec<u64> = std::iter::from_fn(|| pool.try_take()).collect();
        assert_eq!(taken, vec![10, 11, 12, 100, 101]);
        assert_eq!(pool.remaining(), 0);
        assert!(pool.needs_more());
    }

    #[test]
    fn concurrent_takers_never_share_a_serial() {
        let pool = Arc::new(SerialPool::new(1));
        for i in 0..200u64 {
            pool.add_block(i * 1000..i * 1000 + 1000);
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    std::iter::from_fn(|| pool.try_take()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        let mut total = 0;
        for t in threads {
            for serial in t.join().unwrap() {
                assert!(seen.insert(serial), "serial {serial} handed out twice");
                total += 1;
            }
        }
        assert_eq!(
            total, 200_000,
            "every leased serial is handed out exactly once"
        );
    }

    #[tokio::test]
    async fn take_waits_for_a_block_and_gives_up_after_the_wait() {
        let pool = Arc::new(SerialPool::new(1));
        let started = tokio::time::Instant::now();
        assert_eq!(pool.take(Duration::from_millis(50)).await, None);
        assert!(started.elapsed() >= Duration::from_millis(50));

        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.take(Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.add_block(7..8);
        assert_eq!(waiter.await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_paced_pool_hands_out_no_serial_before_the_clock_has_passed_it() {
        let partition = 1 << 50;
        let pool = SerialPool::paced(1, partition);
        let now = clock_serial(std::time::SystemTime::now());
        // In the second partition, 30 ms ahead of the clock, and one long behind it.
        let ahead = partition + now + 30_000;
        pool.add_block(ahead..ahead + 2);
        pool.add_block(partition + 5..partition + 6);
        let started = std::time::Instant::now();
        assert_eq!(pool.take(Duration::from_secs(1)).await, Some(ahead));
        assert!(
            started.elapsed() >= Duration::from_millis(29),
            "{:?}",
            started.elapsed()
        );
        assert!(clock_serial(std::time::SystemTime::now()) >= ahead - partition);
        let started = std::time::Instant::now();
        assert_eq!(pool.take(Duration::from_secs(1)).await, Some(ahead + 1));
        assert_eq!(pool.take(Duration::from_secs(1)).await, Some(partition + 5));
        assert!(started.elapsed() < Duration::from_millis(20));
        // An unpaced pool hands the same serial out at once.
        let pool = SerialPool::new(1);
        let ahead = now + 1_000_000;
        pool.add_block(ahead..ahead + 1);
        let started = std::time::Instant::now();
        assert_eq!(pool.take(Duration::from_secs(1)).await, Some(ahead));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn taking_a_spare_block_asks_for_more() {
        let pool = SerialPool::new(1);
        pool.add_block(0..1);
        assert_eq!(pool.try_take(), Some(0));
        tokio::time::timeout(Duration::from_secs(1), pool.wants_more())
            .await
            .expect("the refill task is woken");
    }
}
