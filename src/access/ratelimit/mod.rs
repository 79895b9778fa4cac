//! Token-bucket rate limits per subject (an API key's name or a client address). A bucket holds
//! up to `burst` tokens and earns `per_second` of them; each request spends one. `LocalLimiter`
//! keeps this instance's buckets in memory, deciding with `governor`'s GCRA ([`local`]);
//! `RedisLimiter` shares one bucket per subject among all instances through Redis, taking tokens
//! in chunks so most requests never leave the process (ours: governor has no shared store).
//!
//! A bucket is kept as the instant it is full again (as in GCRA): one `Instant` per subject, and
//! a bucket that is full is the same as no bucket at all, so forgetting it loses nothing.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::periodic;

mod local;
mod redis;

pub use local::LocalLimiter;
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
    fn make_room(
        &self,
        map: &mut Map<V>,
        forget: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> Option<Instant>,
    ) {
        if map.len() < self.per_stripe {
            return;
        }
        map.retain(|_, state| !forget(state));
        if map.len() < self.per_stripe {
            return;
        }
        let mut ranks: Vec<Instant> = map.values().filter_map(&rank).collect();
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
