//! Token-bucket rate limits per subject (an API key's name or a client address). A bucket holds
//! up to `burst` tokens and earns `per_second` of them; each request spends one. `LocalLimiter`
//! keeps this instance's buckets in memory; `RedisLimiter` shares one bucket per subject among
//! all instances through Redis, taking tokens in chunks so most requests never leave the process.
//!
//! The local buckets are governor's GCRA: a bucket is kept as the instant it is full again, one
//! number per subject, and a bucket that is full is the same as no bucket at all, so forgetting
//! it loses nothing. governor decides; what it has no store for is kept here: a bounded map
//! that, under a flood of new subjects, forgets the buckets nearest to full (governor's keyed
//! stores grow without bound between sweeps), and is also shared by the Redis limiter.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic;

mod redis;

pub use redis::RedisLimiter;

/// How many requests a subject may make: `burst` at once, then `per_second` on average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quota {
    pub per_second: f64,
    pub burst: u32,
}

/// Longest time a bucket may take to fill: keeps all durations far from overflow, and the
/// microseconds of the Redis script exact in Lua's doubles.
const MAX_FILL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Quota {
    /// Checks what the limiters need: `burst` ≥ 1, `per_second` > 0 (at most 10^9), and a
    /// bucket that fills within ten years.
    pub fn validate(&self) -> Result<(), String> {
        Timing::new(*self).map(|_| ())
    }
}

/// A quota as integer durations.
#[derive(Clone, Copy, Debug)]
struct Timing {
    burst: u32,
    /// Time to earn one token.
    interval: Duration,
}

impl Timing {
    fn new(quota: Quota) -> Result<Timing, String> {
        if quota.burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        if !(quota.per_second.is_finite() && quota.per_second > 0.0) {
            return Err("the rate must be a positive number of requests per second".into());
        }
        let interval = Duration::try_from_secs_f64(1.0 / quota.per_second)
            .ok()
            .filter(|interval| *interval <= MAX_FILL)
            .ok_or("the rate is too low: the bucket would take over ten years to fill")?;
        if interval.is_zero() {
            return Err("the rate must be at most 10^9 requests per second".into());
        }
        interval
            .checked_mul(quota.burst)
            .filter(|capacity| *capacity <= MAX_FILL)
            .ok_or(
                "the burst is too large for the rate: the bucket would take over ten years to fill",
            )?;
        Ok(Timing {
            burst: quota.burst,
            interval,
        })
    }
}

/// The outcome of one check, with what the `RateLimit-*` and `Retry-After` headers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The burst.
    pub limit: u32,
    /// Requests that would be allowed right now, after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until the next token; zero when allowed.
    pub retry_after: Duration,
}

impl Decision {
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (whole seconds, rounded up).
    pub fn headers(&self) -> [(&'static str, u64); 3] {
        [
            ("RateLimit-Limit", u64::from(self.limit)),
            ("RateLimit-Remaining", u64::from(self.remaining)),
            ("RateLimit-Reset", ceil_secs(self.reset)),
        ]
    }

    /// `Retry-After` in whole seconds, rounded up and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }
}

fn ceil_secs(time: Duration) -> u64 {
    time.as_secs() + u64::from(time.subsec_nanos() > 0)
}

/// Subjects tracked by default, over all stripes: at most about 20 MB of local buckets.
pub const DEFAULT_MAX_SUBJECTS: usize = 256 * 1024;
const STRIPES: usize = 64;
/// `sweep` forgets a bucket once it has been full this long (sooner only under pressure).
const FORGET_FULL_AFTER: Duration = Duration::from_secs(10);

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// One stripe per cache line pair, so two cores never fight over a line they do not share.
#[repr(align(128))]
struct Stripe<V>(Mutex<Map<V>>);

/// Per-subject state behind striped locks: two requests contend only when their subjects
/// land on the same stripe.
struct Subjects<V> {
    stripes: Box<[Stripe<V>]>,
    /// Seeded per process, so nobody can aim many subjects at one stripe.
    pick: foldhash::fast::RandomState,
    per_stripe: usize,
}

impl<V> Subjects<V> {
    fn new(max_subjects: usize) -> Self {
        Subjects {
            stripes: (0..STRIPES)
                .map(|_| Stripe(Mutex::new(Map::default())))
                .collect(),
            pick: foldhash::fast::RandomState::default(),
            per_stripe: max_subjects.div_ceil(STRIPES).max(1),
        }
    }

    fn lock(&self, subject: &str) -> MutexGuard<'_, Map<V>> {
        let stripe = (self.pick.hash_one(subject) as usize) % STRIPES;
        lock(&self.stripes[stripe].0)
    }

    fn each_stripe(&self, mut work: impl FnMut(&mut Map<V>)) {
        for stripe in &self.stripes[..] {
            work(&mut lock(&stripe.0));
        }
    }

    fn len(&self) -> usize {
        let mut count = 0;
        self.each_stripe(|map| count += map.len());
        count
    }

    /// Makes room for one more subject in a full stripe: drops what `forget` says is safe to,
    /// then, if that was not enough, the eighth of the stripe that `rank` puts first (`None`:
    /// in use, keep). Evicting an eighth at a time keeps a flood of new subjects at O(1) each.
    fn make_room<R: Ord + Copy>(
        &self,
        map: &mut Map<V>,
        forget: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> Option<R>,
    ) {
        if map.len() < self.per_stripe {
            return;
        }
        map.retain(|_, state| !forget(state));
        if map.len() < self.per_stripe {
            return;
        }
        let mut ranks: Vec<R> = map.values().filter_map(&rank).collect();
        if ranks.is_empty() {
            return;
        }
        let evict = (self.per_stripe / 8).clamp(1, ranks.len());
        let (first, cut, _) = ranks.select_nth_unstable(evict - 1);
        let cut = *cut;
        // Exactly `evict` go: all ranked before the cut, then as many as needed tied with it.
        let mut ties = evict - first.iter().filter(|at| **at < cut).count();
        map.retain(|_, state| match rank(state) {
            Some(at) if at < cut => false,
            Some(at) if at == cut && ties > 0 => {
                ties -= 1;
                false
            }
            _ => true,
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one call into governor needs from outside it, and what its store tells back. governor
/// reads the time from its clock and wants its key type by reference, where our callers pass
/// the instant they decide at (one reading per request in the gateway, exact instants in
/// tests) and a `&str`; its outcomes say whether a cell conforms and when the next one will,
/// not when the bucket is full again. `LocalLimiter::call` fills this in for each call, which
/// runs on the calling thread from start to end.
struct Call {
    /// The instant of the call on `CallTime`'s clock: nanoseconds since the limiter's epoch.
    time: Cell<u64>,
    /// The subject, in one buffer per thread, which spares a request an allocation.
    key: RefCell<String>,
    /// When the subject's bucket is full again after the call, on the same clock: written by
    /// the spending store.
    full_at: Cell<u64>,
}

thread_local! {
    static CALL: Call = const {
        Call {
            time: Cell::new(0),
            key: RefCell::new(String::new()),
            full_at: Cell::new(0),
        }
    };
}

/// governor's clock for the local buckets: the instant of the call running on this thread.
#[derive(Clone, Copy, Debug)]
struct CallTime;

impl Clock for CallTime {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(CALL.with(|call| call.time.get()))
    }
}

/// governor's state store over the local buckets: each subject's GCRA state (the instant its
/// bucket is full again, on `CallTime`'s clock) behind striped locks, about `max_subjects` at
/// most. With `SPEND` false it only reads: governor decides as if the cell were spent, and
/// nothing is kept, which is how `LocalLimiter` asks without spending.
struct Buckets<const SPEND: bool>(Arc<Subjects<Nanos>>);

impl<const SPEND: bool> StateStore for Buckets<SPEND> {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, subject: &String, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut buckets = self.0.lock(subject);
        let held = buckets.get_mut(subject.as_str());
        let before = held.as_deref().copied();
        let decided = decide(before);
        if !SPEND {
            return decided.map(|(outcome, _)| outcome);
        }
        let after = match &decided {
            Ok((_, next)) => *next,
            // Refused: only a subject with a bucket can be, which stays as it is.
            Err(_) => before.unwrap_or_default(),
        };
        CALL.with(|call| call.full_at.set(after.as_u64()));
        match (held, &decided) {
            (Some(full_at), _) => *full_at = after,
            (None, Ok(_)) => {
                // A full bucket is the same as a new one: those go first.
                let now = CallTime.now();
                self.0.make_room(
                    &mut buckets,
                    |full_at| *full_at <= now,
                    |full_at| Some(*full_at),
                );
                buckets.insert(subject.as_str().into(), after);
            }
            (None, Err(_)) => {}
        }
        decided.map(|(outcome, _)| outcome)
    }
}

impl ShrinkableKeyedStateStore<String> for Buckets<true> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0
            .each_stripe(|buckets| buckets.retain(|_, full_at| *full_at > drop_below));
    }

    fn shrink_to_fit(&self) {
        self.0.each_stripe(|buckets| buckets.shrink_to_fit());
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

type Gcra<const SPEND: bool> =
    governor::RateLimiter<String, Buckets<SPEND>, CallTime, StateInformationMiddleware>;

/// Token buckets of this instance, in memory, decided by governor.
pub struct LocalLimiter {
    quota: Quota,
    /// Time zero of `CallTime`'s clock.
    epoch: Instant,
    /// Spends a cell when it conforms.
    spend: Gcra<true>,
    /// The same buckets, asked without spending.
    peek: Gcra<false>,
    /// The same buckets again, for sweeping.
    buckets: Buckets<true>,
}

impl LocalLimiter {
    /// # Panics
    /// When the quota is not valid: check it with `Quota::validate` first.
    pub fn new(quota: Quota) -> LocalLimiter {
        LocalLimiter::with_max_subjects(quota, DEFAULT_MAX_SUBJECTS)
    }

    /// Tracks about `max_subjects` subjects at most; past that, the buckets nearest to full are
    /// forgotten, which gives their subjects a full bucket again.
    ///
    /// # Panics
    /// When the quota is not valid: check it with `Quota::validate` first.
    pub fn with_max_subjects(quota: Quota, max_subjects: usize) -> LocalLimiter {
        let timing = Timing::new(quota).unwrap_or_else(|e| panic!("invalid quota {quota:?}: {e}"));
        let cells = governor::Quota::with_period(timing.interval)
            .expect("a valid interval is not zero")
            .allow_burst(NonZeroU32::new(timing.burst).expect("a valid burst is at least 1"));
        let buckets = Arc::new(Subjects::new(max_subjects));
        let epoch = Instant::now();
        // governor counts from its clock's reading when built: make that the epoch.
        CALL.with(|call| call.time.set(0));
        LocalLimiter {
            quota,
            epoch,
            spend: Gcra::new(cells, Buckets(Arc::clone(&buckets)), CallTime),
            peek: Gcra::new(cells, Buckets(Arc::clone(&buckets)), CallTime),
            buckets: Buckets(buckets),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// `now` on `CallTime`'s clock.
    fn since_epoch(&self, now: Instant) -> Nanos {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        Nanos::from(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Runs `work` (calls into governor) for `subject` at `now`, with `subject` as the key.
    fn call<R>(&self, subject: &str, now: Instant, work: impl FnOnce(&Call, &String) -> R) -> R {
        CALL.with(|call| {
            call.time.set(self.since_epoch(now).as_u64());
            let mut key = call.key.borrow_mut();
            key.clear();
            key.push_str(subject);
            work(call, &key)
        })
    }

    /// Spends one of `subject`'s tokens if it has one at `now`. Allocates only for a subject
    /// not tracked yet.
    pub fn check(&self, subject: &str, now: Instant) -> Decision {
        self.call(subject, now, |call, key| {
            let outcome = self.spend.check_key(key);
            let now = call.time.get();
            let reset = Duration::from_nanos(call.full_at.get().saturating_sub(now));
            match outcome {
                Ok(state) => Decision {
                    allowed: true,
                    limit: self.quota.burst,
                    remaining: state.remaining_burst_capacity(),
                    reset,
                    retry_after: Duration::ZERO,
                },
                Err(refusal) => Decision {
                    allowed: false,
                    limit: self.quota.burst,
                    remaining: 0,
                    reset,
                    retry_after: refusal.wait_time_from(Nanos::from(now)),
                },
            }
        })
    }

    /// How long until `subject` has a token again, when it has none at `now`; spends nothing.
    pub fn exhausted(&self, subject: &str, now: Instant) -> Option<Duration> {
        self.call(subject, now, |call, key| {
            let refusal = self.peek.check_key(key).err()?;
            Some(refusal.wait_time_from(Nanos::from(call.time.get())))
        })
    }

    /// Forgets the buckets that have been full for a while (not at once: a caller may still
    /// pass an instant a little older than the newest one seen).
    pub fn sweep(&self, now: Instant) {
        let forget_below = self
            .since_epoch(now)
            .saturating_sub(Nanos::from(FORGET_FULL_AFTER));
        self.buckets.retain_recent(forget_below);
        self.buckets.shrink_to_fit();
    }

    /// How many subjects have a bucket now.
    pub fn subjects(&self) -> usize {
        self.buckets.len()
    }
}

/// The rate limiter the service runs with.
pub enum RateLimiter {
    Off,
    /// Each instance limits on its own.
    Local(LocalLimiter),
    /// One limit shared by every instance on a Redis.
    Global(RedisLimiter),
}

/// How often `spawn_sweeper` forgets idle subjects.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl RateLimiter {
    /// Spends one of `subject`'s tokens; `None` when rate limiting is off.
    pub async fn check(&self, subject: &str) -> Option<Decision> {
        match self {
            RateLimiter::Off => None,
            RateLimiter::Local(limiter) => Some(limiter.check(subject, Instant::now())),
            RateLimiter::Global(limiter) => Some(limiter.check(subject).await),
        }
    }

    pub fn sweep(&self, now: Instant) {
        match self {
            RateLimiter::Off => {}
            RateLimiter::Local(limiter) => limiter.sweep(now),
            RateLimiter::Global(limiter) => limiter.sweep(now),
        }
    }

    /// Sweeps every 10 s, so memory follows the subjects seen lately; ends when `stop` is
    /// cancelled.
    pub fn spawn_sweeper(self: &Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        let limiter = Arc::clone(self);
        periodic::spawn_every(SWEEP_EVERY, stop, move || {
            limiter.sweep(Instant::now());
            std::future::ready(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn quota(per_second: f64, burst: u32) -> Quota {
        Quota { per_second, burst }
    }

    #[test]
    fn exhausted_tells_without_spending() {
        let limiter = LocalLimiter::new(quota(1.0, 2));
        let now = Instant::now();
        assert_eq!(
            limiter.exhausted("a", now),
            None,
            "an unknown subject has tokens"
        );
        assert!(limiter.check("a", now).allowed);
        assert_eq!(limiter.exhausted("a", now), None);
        assert_eq!(limiter.exhausted("a", now), None, "asking spends nothing");
        assert!(limiter.check("a", now).allowed);
        let wait = limiter.exhausted("a", now).expect("both tokens spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limiter.exhausted("a", now + Duration::from_secs(1)), None);
    }

    fn allowed(limiter: &LocalLimiter, subject: &str, now: Instant, times: usize) -> usize {
        (0..times)
            .filter(|_| limiter.check(subject, now).allowed)
            .count()
    }

    #[test]
    fn validate_refuses_unusable_quotas() {
        assert_eq!(quota(10.0, 5).validate(), Ok(()));
        assert_eq!(quota(0.001, 1000).validate(), Ok(()));
        assert_eq!(quota(1e9, u32::MAX).validate(), Ok(()));
        for bad in [
            quota(10.0, 0),
            quota(0.0, 5),
            quota(-1.0, 5),
            quota(f64::NAN, 5),
            quota(f64::INFINITY, 5),
            quota(1e10, 5),
            quota(1e-12, 1),
            quota(1e-6, 1000),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_burst_then_refusal() {
        let limiter = LocalLimiter::new(quota(1.0, 5));
        let t0 = Instant::now();
        let remaining: Vec<u32> = (0..5)
            .map(|_| {
                let d = limiter.check("a", t0);
                assert!(d.allowed && d.limit == 5 && d.retry_after.is_zero());
                d.remaining
            })
            .collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let refused = limiter.check("a", t0);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.reset, Duration::from_secs(5));
        // Refusals spend nothing.
        assert_eq!(limiter.check("a", t0), refused);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let limiter = LocalLimiter::new(quota(10.0, 3));
        let t0 = Instant::now();
        assert_eq!(allowed(&limiter, "a", t0, 10), 3);
        // 100 ms per token.
        let refused = limiter.check("a", t0 + 40 * MS);
        assert_eq!(refused.retry_after, 60 * MS);
        assert_eq!(refused.reset, 260 * MS);
        assert_eq!(allowed(&limiter, "a", t0 + 99 * MS, 5), 0);
        assert_eq!(allowed(&limiter, "a", t0 + 100 * MS, 5), 1);
        assert_eq!(allowed(&limiter, "a", t0 + 250 * MS, 5), 1);
        assert_eq!(allowed(&limiter, "a", t0 + 300 * MS, 5), 1);
        // Long idle fills the bucket, never past the burst.
        assert_eq!(allowed(&limiter, "a", t0 + Duration::from_secs(60), 10), 3);
        // Over 10 s at a steady pace: the burst, then one per 100 ms.
        let t1 = t0 + Duration::from_secs(120);
        let total: usize = (0..1000)
            .map(|i| allowed(&limiter, "a", t1 + i * 10 * MS, 1))
            .sum();
        assert_eq!(total, 3 + 99);
    }

    #[test]
    fn remaining_reset_and_retry_after_follow_the_bucket() {
        let limiter = LocalLimiter::new(quota(2.0, 4));
        let t0 = Instant::now();
        let first = limiter.check("a", t0);
        assert_eq!((first.remaining, first.reset), (3, 500 * MS));
        let second = limiter.check("a", t0 + 100 * MS);
        // 0.2 token back: still 2 whole tokens left, 900 ms to full.
        assert_eq!((second.remaining, second.reset), (2, 900 * MS));
        assert_eq!(
            second.headers(),
            [
                ("RateLimit-Limit", 4),
                ("RateLimit-Remaining", 2),
                ("RateLimit-Reset", 1)
            ]
        );
        // 3.4 tokens before this one.
        let later = limiter.check("a", t0 + 700 * MS);
        assert_eq!((later.remaining, later.reset), (2, 800 * MS));
    }

    #[test]
    fn header_seconds_round_up() {
        let decision = |reset, retry_after| Decision {
            allowed: false,
            limit: 1,
            remaining: 0,
            reset,
            retry_after,
        };
        assert_eq!(decision(Duration::ZERO, Duration::ZERO).headers()[2].1, 0);
        assert_eq!(
            decision(Duration::ZERO, Duration::ZERO).retry_after_secs(),
            1
        );
        assert_eq!(decision(MS, MS).headers()[2].1, 1);
        assert_eq!(decision(MS, MS).retry_after_secs(), 1);
        let two = Duration::from_secs(2);
        assert_eq!(decision(two, two).headers()[2].1, 2);
        assert_eq!(decision(two, two).retry_after_secs(), 2);
        assert_eq!(decision(two + MS, two + MS).headers()[2].1, 3);
        assert_eq!(decision(two + MS, two + MS).retry_after_secs(), 3);
    }

    #[test]
    fn subjects_are_independent() {
        let limiter = LocalLimiter::new(quota(1.0, 2));
        let t0 = Instant::now();
        assert_eq!(allowed(&limiter, "key-a", t0, 5), 2);
        assert_eq!(allowed(&limiter, "key-b", t0, 5), 2);
        assert_eq!(allowed(&limiter, "192.0.2.1", t0, 5), 2);
        assert_eq!(limiter.subjects(), 3);
    }

    #[test]
    fn an_earlier_instant_never_gives_more() {
        let limiter = LocalLimiter::new(quota(1.0, 2));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(allowed(&limiter, "a", t1, 2), 2);
        assert_eq!(allowed(&limiter, "a", t0, 5), 0);
        assert_eq!(allowed(&limiter, "a", t1 + Duration::from_secs(1), 5), 1);
    }

    #[test]
    fn sweep_forgets_buckets_full_for_a_while() {
        let limiter = LocalLimiter::new(quota(1.0, 3));
        let t0 = Instant::now();
        assert_eq!(allowed(&limiter, "busy", t0, 3), 3);
        assert_eq!(allowed(&limiter, "light", t0, 1), 1);
        limiter.sweep(t0);
        assert_eq!(limiter.subjects(), 2);
        // "light" is full at t0+1s, "busy" at t0+3s.
        limiter.sweep(t0 + Duration::from_secs(1) + FORGET_FULL_AFTER);
        assert_eq!(limiter.subjects(), 1);
        // Forgetting a full bucket loses nothing: it is as full as a new one.
        assert_eq!(
            allowed(&limiter, "light", t0 + Duration::from_secs(12), 5),
            3
        );
        // "busy" was kept, still empty.
        assert_eq!(allowed(&limiter, "busy", t0 + 500 * MS, 5), 0);
        limiter.sweep(t0 + Duration::from_secs(3) + FORGET_FULL_AFTER);
        assert_eq!(limiter.subjects(), 1); // only "light" (used at t0+12s) is left
    }

    #[test]
    fn many_subjects_stay_under_the_cap() {
        let limiter = LocalLimiter::with_max_subjects(quota(1.0, 2), 640);
        let t0 = Instant::now();
        // A flood of one-off addresses, all within one instant: nothing is full yet.
        for i in 0..20_000 {
            assert!(
                limiter
                    .check(&format!("10.0.{}.{}", i / 256, i % 256), t0)
                    .allowed
            );
        }
        assert!(limiter.subjects() <= 640, "{}", limiter.subjects());
        assert!(limiter.subjects() >= 320, "{}", limiter.subjects());
    }

    #[test]
    fn under_pressure_the_most_limited_subjects_are_kept() {
        // Room for two subjects a stripe.
        let limiter = LocalLimiter::with_max_subjects(quota(1.0, 3), 2 * STRIPES);
        let t0 = Instant::now();
        assert_eq!(allowed(&limiter, "abuser", t0, 10), 3);
        for i in 0..10_000 {
            limiter.check(&format!("spoofed-{i}"), t0);
        }
        assert!(limiter.subjects() <= 2 * STRIPES, "{}", limiter.subjects());
        // The flood's buckets each still hold 2 of 3 tokens, so they go before the abuser's
        // empty one: flooding does not buy the abuser a new burst.
        assert_eq!(allowed(&limiter, "abuser", t0, 1), 0);
    }

    #[test]
    fn full_buckets_make_room_before_anything_is_evicted() {
        let limiter = LocalLimiter::with_max_subjects(quota(1000.0, 1), STRIPES);
        let t0 = Instant::now();
        for i in 0..1000 {
            // Each bucket is full again 1 ms after its request.
            let now = t0 + Duration::from_millis(2 * i);
            assert!(limiter.check(&format!("s{i}"), now).allowed);
        }
        assert!(limiter.subjects() <= STRIPES);
    }

    #[test]
    fn asking_keeps_no_bucket() {
        let limiter = LocalLimiter::new(quota(1.0, 1));
        assert_eq!(limiter.exhausted("a", Instant::now()), None);
        assert_eq!(limiter.subjects(), 0);
    }

    #[test]
    fn each_limiter_counts_time_from_its_own_start() {
        // Calls into governor take their instant from this thread: a limiter built after
        // another one was asked about a far instant must not start from that one.
        let first = LocalLimiter::new(quota(1.0, 1));
        assert!(
            first
                .check("s", Instant::now() + Duration::from_secs(3600))
                .allowed
        );
        let second = LocalLimiter::new(quota(1.0, 1));
        let now = Instant::now();
        let decision = second.check("s", now);
        assert!(decision.allowed);
        assert_eq!(decision.reset, Duration::from_secs(1));
        assert!(!second.check("s", now).allowed);
    }

    #[tokio::test]
    async fn the_limiter_enum() {
        assert_eq!(RateLimiter::Off.check("a").await, None);
        let limiter = Arc::new(RateLimiter::Local(LocalLimiter::new(quota(1.0, 1))));
        assert!(limiter.check("a").await.unwrap().allowed);
        assert!(!limiter.check("a").await.unwrap().allowed);
        let stop = CancellationToken::new();
        let sweeper = limiter.spawn_sweeper(stop.clone());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), sweeper)
            .await
            .expect("the sweeper stops")
            .unwrap();
    }
}
