//! The serial pool: the block in use is a pair (next, end) read through an `ArcSwap`, so taking
//! a serial is one `fetch_add`. A lock is taken only to switch blocks, once per block.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

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
}

impl SerialPool {
    pub fn new(spare_target: usize) -> Self {
        SerialPool {
            current: ArcSwap::from_pointee(Block::new(0..0)),
            spare: Mutex::new(VecDeque::new()),
            spare_target: spare_target.max(1),
            wants_more: Notify::new(),
            arrived: Notify::new(),
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

    /// The next serial, waiting up to `wait` for a block to be leased when the pool is empty.
    pub async fn take(&self, wait: Duration) -> Option<u64> {
        if let Some(serial) = self.try_take() {
            return Some(serial);
        }
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
    async fn taking_a_spare_block_asks_for_more() {
        let pool = SerialPool::new(1);
        pool.add_block(0..1);
        assert_eq!(pool.try_take(), Some(0));
        tokio::time::timeout(Duration::from_secs(1), pool.wants_more())
            .await
            .expect("the refill task is woken");
    }
}
