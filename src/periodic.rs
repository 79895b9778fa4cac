//! Background chores on a fixed period that end when told to: one tick source for every such
//! loop, so they all start, pace and stop the same way.
//!
//! The first tick comes one period after the start (whoever starts a chore has just done its
//! work once, or has nothing to do yet); a tick missed while a job ran late is not made up
//! (`MissedTickBehavior::Delay`: the next comes a full period after the late one). Cancelling
//! `stop` ends the loop at its next wait, at once if it is waiting; a job that is running is
//! never interrupted, so a store call or a file read always finishes.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What woke a [`Ticker`].
#[derive(Debug, PartialEq, Eq)]
pub enum Wake<T> {
    /// The period went by.
    Tick,
    /// The other event the caller waited for came first.
    Event(T),
}

/// Ticks every `period` until `stop` is cancelled.
pub struct Ticker {
    ticks: Interval,
    stop: CancellationToken,
}

impl Ticker {
    pub fn new(period: Duration, stop: CancellationToken) -> Ticker {
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { ticks, stop }
    }

    /// Waits for the next tick; `None` once `stop` is cancelled.
    pub async fn tick(&mut self) -> Option<()> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            _ = self.ticks.tick() => Some(()),
        }
    }

    /// Waits for the next tick or for `event`, whichever comes first; `None` once `stop` is
    /// cancelled. `event` is dropped when the tick wins, so it must be cancel-safe.
    pub async fn tick_or<T>(&mut self, event: impl Future<Output = T>) -> Option<Wake<T>> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => None,
            _ = self.ticks.tick() => Some(Wake::Tick),
            value = event => Some(Wake::Event(value)),
        }
    }
}

/// Runs `job` every `period` (see the module documentation) on a task of its own, until `stop`
/// is cancelled.
pub fn spawn_every<F, Fut>(period: Duration, stop: CancellationToken, mut job: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = Ticker::new(period, stop);
        while ticker.tick().await.is_some() {
            job().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::{Instant, sleep};

    use super::*;

    const PERIOD: Duration = Duration::from_secs(10);

    fn counting(period: Duration, stop: &CancellationToken) -> (Arc<AtomicU32>, JoinHandle<()>) {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        let task = spawn_every(period, stop.clone(), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(())
        });
        (runs, task)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_run_comes_one_period_after_the_start_then_one_each_period() {
        let stop = CancellationToken::new();
        let (runs, _task) = counting(PERIOD, &stop);
        sleep(PERIOD - Duration::from_millis(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        sleep(Duration::from_millis(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        sleep(PERIOD * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_stops_a_waiting_loop_at_once() {
        let stop = CancellationToken::new();
        let (runs, task) = counting(PERIOD, &stop);
        sleep(PERIOD + Duration::from_millis(1)).await;
        let cancelled_at = Instant::now();
        stop.cancel();
        task.await.unwrap();
        assert_eq!(Instant::now(), cancelled_at, "no time went by");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    /// A job that counts its starts and ends, and takes `length(run)` (runs count from 1).
    fn timed(
        stop: &CancellationToken,
        length: fn(u32) -> Duration,
    ) -> (Arc<AtomicU32>, Arc<AtomicU32>, JoinHandle<()>) {
        let started = Arc::new(AtomicU32::new(0));
        let finished = Arc::new(AtomicU32::new(0));
        let (s, f) = (Arc::clone(&started), Arc::clone(&finished));
        let task = spawn_every(PERIOD, stop.clone(), move || {
            let (s, f) = (Arc::clone(&s), Arc::clone(&f));
            async move {
                let run = s.fetch_add(1, Ordering::SeqCst) + 1;
                sleep(length(run)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        (started, finished, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_run_is_followed_by_one_run_not_a_burst() {
        let stop = CancellationToken::new();
        let slow_first = |run| match run {
            1 => Duration::from_secs(25),
            _ => Duration::ZERO,
        };
        let (started, _, _task) = timed(&stop, slow_first);
        // The first run goes from 10 s to 35 s; the ticks due at 20 s and 30 s make one run at
        // 35 s, and the next comes a period later.
        sleep(Duration::from_secs(34)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        sleep(Duration::from_secs(2)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        sleep(Duration::from_secs(8)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        sleep(Duration::from_secs(2)).await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_lets_the_running_job_finish() {
        let begin = Instant::now();
        let stop = CancellationToken::new();
        let (started, finished, task) = timed(&stop, |_| Duration::from_secs(25));
        sleep(Duration::from_secs(11)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(
            begin.elapsed(),
            Duration::from_secs(35),
            "the job ran to its end"
        );
        assert_eq!(
            (
                started.load(Ordering::SeqCst),
                finished.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tick_or_tells_a_tick_from_the_other_event() {
        let stop = CancellationToken::new();
        let mut ticker = Ticker::new(PERIOD, stop.clone());
        let start = Instant::now();
        let soon = sleep(Duration::from_secs(3));
        assert_eq!(ticker.tick_or(soon).await, Some(Wake::Event(())));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // The other event does not shift the ticks.
        let never = std::future::pending::<()>();
        assert_eq!(ticker.tick_or(never).await, Some(Wake::Tick));
        assert_eq!(start.elapsed(), PERIOD);
        stop.cancel();
        assert_eq!(ticker.tick_or(std::future::ready(1)).await, None);
        assert_eq!(ticker.tick().await, None);
    }
}
