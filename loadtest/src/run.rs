//! The run: a plan of when each request is due, and one worker per connection taking the next
//! due request, sending it, checking the reply and keeping score.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::check;
use crate::client::{Client, Connection, Failure};
use crate::ledger::{Ledger, Reply};
use crate::stats::Stats;

/// After a refused or failed connect, a worker waits this long before the next try, so a dead
/// server is not hammered in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// How late the runtime's timer (1 ms ticks) may wake an idle worker before the lateness counts
/// against the server.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Which request comes next and when it is due. Closed loop: now, until the end. Open loop:
/// request i is due at start + i / rate, whether or not earlier ones are answered; requests
/// still waiting for a connection `late_limit` after the end are not sent at all.
pub struct Plan {
    start: Instant,
    next: AtomicU64,
    handed: AtomicU64,
    stopped: AtomicBool,
    limit: Option<u64>,
    run_for: Option<Duration>,
    rate: Option<f64>,
    late_limit: Duration,
}

impl Plan {
    pub fn new(
        start: Instant,
        limit: Option<u64>,
        run_for: Option<Duration>,
        rate: Option<f64>,
        late_limit: Duration,
    ) -> Plan {
        Plan {
            start,
            next: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            limit,
            run_for,
            rate,
            late_limit,
        }
    }

    /// The next request's due time (open loop) or `Some(None)` (closed loop: now); `None` when
    /// the run is over.
    pub fn next(&self, now: Instant) -> Option<Option<Instant>> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.limit.is_some_and(|limit| i >= limit) {
            return None;
        }
        let since_start = now.saturating_duration_since(self.start);
        let next = match self.rate {
            None => self.run_for.is_none_or(|d| since_start < d).then_some(None),
            Some(rate) => {
                let due = Duration::from_secs_f64(i as f64 / rate);
                let on_time = self.run_for.is_none_or(|d| due < d);
                let too_late = self
                    .run_for
                    .is_some_and(|d| since_start >= d + self.late_limit);
                (on_time && !too_late).then_some(Some(self.start + due))
            }
        };
        if next.is_some() {
            self.handed.fetch_add(1, Ordering::Relaxed);
        }
        next
    }

    /// Open loop: requests that were due within the run but never sent, because every
    /// connection was still busy when the run had to end.
    pub fn unsent(&self) -> u64 {
        let (Some(rate), Some(run_for)) = (self.rate, self.run_for) else {
            return 0;
        };
        if self.stopped.load(Ordering::Relaxed) {
            return 0;
        }
        let mut scheduled = (run_for.as_secs_f64() * rate).ceil() as u64;
        if let Some(limit) = self.limit {
            scheduled = scheduled.min(limit);
        }
        scheduled.saturating_sub(self.handed.load(Ordering::Relaxed))
    }

    /// Stops handing out requests (Ctrl-C); those in flight finish.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Fraction of the run done, by time or by requests, whichever is further along.
    pub fn progress(&self, now: Instant, done: u64) -> f64 {
        let by_time = self
            .run_for
            .map(|d| (now - self.start).as_secs_f64() / d.as_secs_f64());
        let by_count = self.limit.map(|limit| done as f64 / limit as f64);
        by_time
            .into_iter()
            .chain(by_count)
            .fold(0.0, f64::max)
            .min(1.0)
    }
}

/// Counters the progress display reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

pub struct Run {
    pub plan: Plan,
    pub client: Client,
    pub ledger: Ledger,
    pub live: Live,
    /// Numbers each successful reply must carry.
    pub per_reply: usize,
}

/// One connection's worth of work, until the plan runs out.
pub async fn worker(run: Arc<Run>, id: u32) -> Stats {
    let mut stats = Stats::default();
    let mut connection: Option<Connection> = None;
    let start = run.plan.start();
    while let Some(due) = run.plan.next(Instant::now()) {
        let began = match due {
            None => Instant::now(),
            Some(due) => {
                tokio::time::sleep_until(due.into()).await;
                send_time(due, Instant::now())
            }
        };
        let result = run.client.exchange(&mut connection).await;
        let ended = Instant::now();
        let at = ended - start;
        run.live.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(reply) => {
                let status = reply.status.as_u16();
                stats.reply(status, ended - began, at);
                if reply.status.is_success() {
                    score(&run, &mut stats, id, at, status, &reply.body);
                } else {
                    run.live.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(failure) => {
                stats.failure(failure, at);
                run.live.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(failure, Failure::Connect | Failure::Tls) {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
    }
    stats
}

/// Where an open-loop request's latency is measured from. A request sent on time, give or take
/// the timer's tick, is timed from its send. One sent later, because every connection was busy
/// with slower replies, is timed from when it was due, so the stall shows in its latency.
fn send_time(due: Instant, now: Instant) -> Instant {
    if now.saturating_duration_since(due) <= TIMER_SLACK {
        now
    } else {
        due
    }
}

/// Checks a 2xx reply's numbers and enters them in the ledger.
fn score(run: &Run, stats: &mut Stats, connection: u32, at: Duration, status: u16, body: &[u8]) {
    match check::numbers(body, run.per_reply) {
        Ok(keys) => {
            stats.numbers += keys.len() as u64;
            let reply = Reply {
                at,
                connection,
                status,
                body,
            };
            run.ledger.record(&keys, &reply);
        }
        Err(invalid) => stats.invalid(invalid.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: Duration = Duration::from_secs(10);

    #[test]
    fn a_closed_loop_plan_ends_at_its_limit() {
        let start = Instant::now();
        let plan = Plan::new(start, Some(3), None, None, LATE);
        let handed: Vec<_> = std::iter::from_fn(|| plan.next(start)).collect();
        assert_eq!(handed, [None, None, None]);
    }

    #[test]
    fn a_closed_loop_plan_ends_at_its_deadline() {
        let start = Instant::now();
        let plan = Plan::new(start, None, Some(Duration::from_secs(5)), None, LATE);
        assert_eq!(plan.next(start + Duration::from_secs(4)), Some(None));
        assert_eq!(plan.next(start + Duration::from_secs(5)), None);
    }

    #[test]
    fn an_open_loop_plan_spaces_requests_by_the_rate_until_the_end() {
        let start = Instant::now();
        let plan = Plan::new(start, None, Some(Duration::from_secs(1)), Some(4.0), LATE);
        // Due times do not depend on when they are asked for (within the late limit).
        let late = start + Duration::from_secs(5);
        let due: Vec<_> = std::iter::from_fn(|| plan.next(late))
            .map(|d| d.unwrap() - start)
            .collect();
        let ms: Vec<_> = due.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 250, 500, 750]);
        assert_eq!(plan.unsent(), 0);
    }

    #[test]
    fn requests_still_waiting_long_after_the_end_are_counted_not_sent() {
        let start = Instant::now();
        let plan = Plan::new(start, None, Some(Duration::from_secs(1)), Some(10.0), LATE);
        let after_end = start + Duration::from_secs(1) + LATE / 2;
        assert!(plan.next(after_end).is_some());
        assert!(plan.next(after_end).is_some());
        let too_late = start + Duration::from_secs(1) + LATE;
        assert_eq!(plan.next(too_late), None);
        assert_eq!(plan.unsent(), 8);
    }

    #[test]
    fn late_requests_are_timed_from_when_they_were_due() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(send_time(due, due + ms(1)), due + ms(1));
        assert_eq!(send_time(due, due + ms(50)), due);
    }

    #[test]
    fn a_stopped_plan_hands_out_nothing() {
        let start = Instant::now();
        let plan = Plan::new(start, Some(10), None, None, LATE);
        plan.stop();
        assert_eq!(plan.next(start), None);
    }

    #[test]
    fn progress_follows_time_or_count_whichever_is_further() {
        let start = Instant::now();
        let plan = Plan::new(start, Some(100), Some(Duration::from_secs(10)), None, LATE);
        let at = |s| start + Duration::from_secs(s);
        assert!((plan.progress(at(5), 10) - 0.5).abs() < 1e-9);
        assert!((plan.progress(at(1), 80) - 0.8).abs() < 1e-9);
        assert_eq!(plan.progress(at(20), 0), 1.0);
    }
}
