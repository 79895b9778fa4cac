//! This instance's buckets, in memory. `governor` decides each check (its GCRA: the quota from
//! the rate and the burst, the remaining capacity from its snapshot, the wait from `NotUntil`);
//! the buckets live in our striped, bounded map, one `Instant` per subject (the instant its
//! bucket is full again, which is governor's theoretical arrival time).
//!
//! Why not governor's keyed limiter (`DefaultKeyedRateLimiter<String>`), tried first (governor
//! 0.10.4): its stores (a DashMap, or a HashMap under one lock) keep every subject until
//! `retain_recent` drops the full ones, so a flood of new subjects (spoofed client addresses)
//! grows it without bound between sweeps, where ours holds `max_subjects` and under pressure
//! keeps the most limited; `check_key` takes a `&String`, an allocation per request where the
//! gateway has a `&str`; it reads the time from its own clock, where callers give the instant;
//! it has no check that spends nothing (`exhausted`); and its snapshot tells what remains, not
//! when the bucket is full again (`RateLimit-Reset`). So each check builds a governor limiter
//! over one subject's bucket ([`Bucket`], a `StateStore` on our map), its clock standing at the
//! caller's instant: no allocation, and the same one lock as before. What stays ours: the map
//! and its bound, the sweep (governor's `retain_recent` belongs to its keyed limiters), and
//! reading `reset` off the bucket.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};

use super::{DEFAULT_MAX_SUBJECTS, Decision, FORGET_FULL_AFTER, Quota, Subjects, Timing};

/// Token buckets of this instance, in memory.
pub struct LocalLimiter {
    quota: Quota,
    gcra: governor::Quota,
    /// Each subject's bucket, as the instant it is full again. A bucket that is full is the
    /// same as no bucket at all, so forgetting it loses nothing.
    buckets: Subjects<Instant>,
}

/// One check: governor's limiter for one subject's bucket, at one instant.
type OneCheck<'a> = governor::RateLimiter<NotKeyed, Bucket<'a>, At, StateInformationMiddleware>;

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
        let burst = NonZeroU32::new(timing.burst).expect("a valid quota's burst is at least 1");
        let gcra = governor::Quota::with_period(timing.interval)
            .expect("a valid quota's interval is at least 1 ns")
            .allow_burst(burst);
        LocalLimiter {
            quota,
            gcra,
            buckets: Subjects::new(max_subjects),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Spends one of `subject`'s tokens if it has one at `now`. Allocates only for a subject
    /// not tracked yet.
    pub fn check(&self, subject: &str, now: Instant) -> Decision {
        let check = self.one_check(subject, now, true);
        let outcome = check.check();
        let bucket = check.into_state_store();
        let reset = bucket.full_at.get().saturating_duration_since(now);
        let limit = self.quota.burst;
        match outcome {
            Ok(snapshot) => Decision {
                allowed: true,
                limit,
                remaining: snapshot.remaining_burst_capacity(),
                reset,
                retry_after: Duration::ZERO,
            },
            Err(not_until) => Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset,
                retry_after: not_until.wait_time_from(now),
            },
        }
    }

    /// How long until `subject` has a token again, when it has none at `now`; spends nothing.
    pub fn exhausted(&self, subject: &str, now: Instant) -> Option<Duration> {
        let refused = self.one_check(subject, now, false).check().err()?;
        Some(refused.wait_time_from(now))
    }

    fn one_check<'a>(&'a self, subject: &'a str, now: Instant, spend: bool) -> OneCheck<'a> {
        let bucket = Bucket {
            buckets: &self.buckets,
            subject,
            now,
            spend,
            full_at: Cell::new(now),
        };
        governor::RateLimiter::new(self.gcra, bucket, At(now))
    }

    /// Forgets the buckets that have been full for a while, and gives back the room of a stripe
    /// that is mostly empty (after a flood of subjects, say).
    pub fn sweep(&self, now: Instant) {
        self.buckets.each_stripe(|buckets| {
            buckets
                .retain(|_, full_at| now.saturating_duration_since(*full_at) < FORGET_FULL_AFTER);
            if buckets.len() < buckets.capacity() / 4 {
                buckets.shrink_to_fit();
            }
        });
    }

    /// How many subjects have a bucket now.
    pub fn subjects(&self) -> usize {
        self.buckets.len()
    }
}

/// Governor's clock for one check: it stands at the caller's instant, so governor reckons the
/// check from there (its start and its now are the same) and the bucket hands it offsets.
struct At(Instant);

impl Clock for At {
    type Instant = Instant;

    fn now(&self) -> Instant {
        self.0
    }
}

/// One subject's bucket in the map, as governor's state for one check. Governor's time is an
/// offset from `now` (see [`At`]); a bucket full at or before `now` is at offset zero, which
/// governor treats as a new one.
struct Bucket<'a> {
    buckets: &'a Subjects<Instant>,
    subject: &'a str,
    now: Instant,
    /// Whether an allowed check spends its token (else the map is only read).
    spend: bool,
    /// When the bucket is full again: as the check left it when allowed, as it was when not.
    full_at: Cell<Instant>,
}

impl StateStore for Bucket<'_> {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _: &NotKeyed, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut buckets = self.buckets.lock(self.subject);
        let known = buckets.get(self.subject).copied();
        if let Some(full_at) = known {
            self.full_at.set(full_at);
        }
        // An earlier `now` than the bucket has seen (threads race to the lock) only makes the
        // bucket look emptier: never more generous.
        let offset = known.map(|full_at| Nanos::from(full_at.saturating_duration_since(self.now)));
        let (outcome, next) = decide(offset)?;
        let full_at = self.now + Duration::from(next);
        self.full_at.set(full_at);
        if !self.spend {
            return Ok(outcome);
        }
        match buckets.get_mut(self.subject) {
            Some(bucket) => *bucket = full_at,
            None => {
                // A full bucket is the same as a new one: those go first.
                let now = self.now;
                self.buckets
                    .make_room(&mut buckets, |at| *at <= now, |at| Some(*at));
                buckets.insert(self.subject.into(), full_at);
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::super::STRIPES;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn quota(per_second: f64, burst: u32) -> Quota {
        Quota { per_second, burst }
    }

    fn allowed(limiter: &LocalLimiter, subject: &str, now: Instant, times: usize) -> usize {
        (0..times)
            .filter(|_| limiter.check(subject, now).allowed)
            .count()
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
    fn a_slow_rate_and_a_large_burst_keep_their_exact_figures() {
        // 4 s a token, 40 s to fill; checks between the whole seconds.
        let limiter = LocalLimiter::new(quota(0.25, 10));
        let t0 = Instant::now();
        assert_eq!(allowed(&limiter, "a", t0, 10), 10);
        let refused = limiter.check("a", t0 + 1200 * MS);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 2800 * MS);
        assert_eq!(refused.reset, 38_800 * MS);
        assert_eq!(refused.retry_after_secs(), 3);
        let again = limiter.check("a", t0 + 4000 * MS);
        assert!(again.allowed);
        assert_eq!((again.remaining, again.reset), (0, 40_000 * MS));
        assert_eq!(limiter.exhausted("a", t0 + 4100 * MS), Some(3900 * MS));
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
    fn asking_keeps_no_bucket() {
        let limiter = LocalLimiter::new(quota(1.0, 1));
        assert_eq!(limiter.exhausted("a", Instant::now()), None);
        assert_eq!(limiter.subjects(), 0);
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
    fn a_sweep_after_a_flood_gives_the_room_back() {
        let limiter = LocalLimiter::with_max_subjects(quota(1.0, 1), 64 * STRIPES);
        let t0 = Instant::now();
        for i in 0..64 * STRIPES {
            limiter.check(&format!("s{i}"), t0);
        }
        let room = |limiter: &LocalLimiter| {
            let mut room = 0;
            limiter.buckets.each_stripe(|map| room += map.capacity());
            room
        };
        assert!(room(&limiter) >= 64 * STRIPES);
        limiter.sweep(t0 + Duration::from_secs(1) + FORGET_FULL_AFTER);
        assert_eq!(limiter.subjects(), 0);
        assert!(room(&limiter) < 64 * STRIPES / 4, "{}", room(&limiter));
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
}
