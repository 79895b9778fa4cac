//! One quota per subject shared by every instance, without a Redis round trip per request.
//!
//! Redis keeps each subject's bucket (`tracknum:ratelimit:<subject>`, the instant it is full
//! again on Redis' own clock; the key expires when the bucket is full). An instance takes tokens
//! from it in chunks with one Lua script call, keeps them for the subject, and spends them
//! locally; it calls Redis again when its stock is empty. A refusal is remembered until Redis
//! said the next token comes, so a client over its limit costs a Redis call per token at most.
//!
//! The price of the chunks, which is what "approximately" means here:
//! - admitted requests never outnumber the tokens Redis granted, but an instance spends a chunk
//!   up to `HOLD` (1 s) after taking it: over a window, the limit can be exceeded by the tokens
//!   instances held when it began (at most instances × `max_chunk()`);
//! - tokens not spent within `HOLD` are dropped, and a chunk held by one instance is not
//!   available to another: the limit can also be undershot by as much;
//! - chunks start at 1 and double while an instance spends them within `HOLD` (up to
//!   `max_chunk()`, an eighth of the burst), and halve when they expire unspent;
//! - `remaining` and `reset` are as of this instance's last call to Redis.
//!
//! Every instance must use the same quota. When Redis is unreachable or slower than the timeout,
//! the limiter fails open to a `LocalLimiter` with the same quota (per instance then) for a
//! second before trying Redis again, and warns at most once a second: it never fails a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::redis::{Link, RedisTarget};

use super::{
    DEFAULT_MAX_SUBJECTS, Decision, FORGET_FULL_AFTER, LocalLimiter, Quota, Subjects, Timing,
};

const KEY_PREFIX: &str = "tracknum:ratelimit:";
/// Tokens taken from Redis and not spent within this long are dropped.
const HOLD: Duration = Duration::from_secs(1);
/// After Redis failed, the local limiter decides alone for this long.
const FALLBACK_FOR: Duration = Duration::from_secs(1);
/// At most one warning about Redis this often.
const WARN_EVERY: Duration = Duration::from_secs(1);
const POOL_SIZE: usize = 8;

/// The bucket as the instant it is full again, in microseconds of Redis' clock; a missing key
/// is a full bucket. KEYS[1] = the bucket; ARGV = microseconds per token, burst, tokens wanted.
/// Returns {tokens granted, whole tokens left, µs until the next token, µs until full}.
const TAKE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local full_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if full_at < now then full_at = now end
local free = math.floor((capacity - (full_at - now)) / interval)
if free < 0 then free = 0 end
local granted = math.min(wanted, free)
if granted > 0 then
  full_at = full_at + granted * interval
  redis.call('SET', KEYS[1], string.format('%.0f', full_at),
    'PX', string.format('%.0f', math.ceil((full_at - now) / 1000)))
end
local next_in = full_at - now + interval - capacity
if next_in < 0 then next_in = 0 end
return {granted, free - granted, next_in, full_at - now}
"#;

/// What this instance holds for one subject.
struct Held {
    /// Granted by Redis, not spent yet.
    tokens: u32,
    /// When unspent tokens are dropped.
    expires: Instant,
    /// Redis has no token for us before this.
    refused_until: Instant,
    /// Whole tokens left in the shared bucket at the last call.
    shared_left: u32,
    /// When the shared bucket is full again, as of the last call.
    full_at: Instant,
    /// Tokens to ask for next time.
    chunk: u32,
    /// Held while calling Redis for this subject: one call at a time, the others wait for it.
    fetch: Arc<tokio::sync::Mutex<()>>,
}

impl Held {
    fn new(now: Instant) -> Held {
        Held {
            tokens: 0,
            expires: now,
            refused_until: now,
            shared_left: 0,
            full_at: now,
            chunk: 1,
            fetch: Arc::default(),
        }
    }

    fn in_use(&self) -> bool {
        Arc::strong_count(&self.fetch) > 1
    }

    /// Nothing worth keeping: no stock, no refusal, no call in flight, bucket long full.
    fn idle(&self, now: Instant) -> bool {
        !self.in_use()
            && (self.tokens == 0 || self.expires <= now)
            && self.refused_until <= now
            && now.saturating_duration_since(self.full_at) >= FORGET_FULL_AFTER
    }
}

/// What the local stock says.
enum Stock {
    Decided(Decision),
    /// Ask Redis for `chunk` tokens, holding `gate` while doing so.
    Empty {
        gate: Arc<tokio::sync::Mutex<()>>,
        chunk: u32,
    },
}

/// A grant from the script.
struct Grant {
    granted: u32,
    left: u32,
    next_in: Duration,
    full_in: Duration,
}

/// A rate limiter whose quota is shared by all instances on one Redis (see the module docs).
pub struct RedisLimiter {
    timing: Timing,
    max_chunk: u32,
    interval_us: u64,
    link: Link,
    script: redis::Script,
    timeout: Duration,
    held: Subjects<Held>,
    fallback: LocalLimiter,
    /// Origin of the two clocks below, which count milliseconds from 1 (0: never).
    epoch: Instant,
    fallback_until_ms: AtomicU64,
    warned_at_ms: AtomicU64,
}

impl RedisLimiter {
    /// Builds the limiter and its own small connection pool; connects lazily, so a Redis that
    /// is down now only means failing open until it is back. Every Redis call is bounded by
    /// `timeout` (100 ms is a good value).
    pub fn new(
        target: &RedisTarget,
        quota: Quota,
        timeout: Duration,
    ) -> Result<RedisLimiter, String> {
        let timing = Timing::new(quota)?;
        let link = Link::new(target, POOL_SIZE, timeout).map_err(|e| e.to_string())?;
        let interval_us = u64::try_from(timing.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(RedisLimiter {
            timing,
            max_chunk: (quota.burst / 8).max(1),
            interval_us,
            link,
            script: redis::Script::new(TAKE_SCRIPT),
            timeout,
            held: Subjects::new(DEFAULT_MAX_SUBJECTS),
            fallback: LocalLimiter::new(quota),
            epoch: Instant::now(),
            fallback_until_ms: AtomicU64::new(0),
            warned_at_ms: AtomicU64::new(0),
        })
    }

    pub fn quota(&self) -> Quota {
        self.fallback.quota()
    }

    /// The most tokens one instance takes from Redis at once for one subject.
    pub fn max_chunk(&self) -> u32 {
        self.max_chunk
    }

    /// Spends one of `subject`'s tokens: from this instance's stock when it has some, else from
    /// a new chunk out of Redis. Never fails and never waits much longer than the timeout.
    pub async fn check(&self, subject: &str) -> Decision {
        let gate = match self.look_up_stock(subject, Instant::now()) {
            Stock::Decided(decision) => return decision,
            Stock::Empty { gate, .. } => gate,
        };
        if self.falling_back(Instant::now()) {
            return self.fallback.check(subject, Instant::now());
        }
        let _turn = gate.lock().await;
        // Whoever held the gate before may have brought tokens, or found Redis down.
        let now = Instant::now();
        let wanted = match self.look_up_stock(subject, now) {
            Stock::Decided(decision) => return decision,
            Stock::Empty { chunk, .. } => chunk,
        };
        if self.falling_back(now) {
            return self.fallback.check(subject, now);
        }
        match self.take_from_redis(subject, wanted).await {
            Ok(grant) => self.store(subject, wanted, grant, Instant::now()),
            Err(error) => self.fail_open(subject, &error, Instant::now()),
        }
    }

    /// Spends from the stock, or repeats a refusal Redis gave, or says Redis must be asked.
    fn look_up_stock(&self, subject: &str, now: Instant) -> Stock {
        let mut held = self.held.lock(subject);
        if let Some(state) = held.get_mut(subject) {
            return self.spend(state, now);
        }
        self.held
            .make_room(&mut held, |state| state.idle(now), rank_for_eviction);
        let state = Held::new(now);
        let gate = Arc::clone(&state.fetch);
        let chunk = state.chunk;
        held.insert(subject.into(), state);
        Stock::Empty { gate, chunk }
    }

    fn spend(&self, state: &mut Held, now: Instant) -> Stock {
        if state.tokens > 0 {
            if now < state.expires {
                state.tokens -= 1;
                return Stock::Decided(Decision {
                    allowed: true,
                    limit: self.timing.burst,
                    remaining: state
                        .tokens
                        .saturating_add(state.shared_left)
                        .min(self.timing.burst),
                    reset: state.full_at.saturating_duration_since(now),
                    retry_after: Duration::ZERO,
                });
            }
            // More than this instance could spend in time: ask for less.
            state.tokens = 0;
            state.chunk = (state.chunk / 2).max(1);
        }
        if now < state.refused_until {
            return Stock::Decided(self.refusal(state, now));
        }
        Stock::Empty {
            gate: Arc::clone(&state.fetch),
            chunk: state.chunk,
        }
    }

    fn refusal(&self, state: &Held, now: Instant) -> Decision {
        Decision {
            allowed: false,
            limit: self.timing.burst,
            remaining: 0,
            reset: state.full_at.saturating_duration_since(now),
            retry_after: state.refused_until.saturating_duration_since(now),
        }
    }

    /// Keeps what Redis granted, spending one token of it for this request.
    fn store(&self, subject: &str, wanted: u32, grant: Grant, now: Instant) -> Decision {
        let mut held = self.held.lock(subject);
        if !held.contains_key(subject) {
            // Only when it was evicted during the call, which `in_use` prevents.
            held.insert(subject.into(), Held::new(now));
        }
        let state = held.get_mut(subject).expect("inserted above");
        state.shared_left = grant.left;
        state.full_at = now + grant.full_in;
        if grant.granted == 0 {
            state.refused_until = now + grant.next_in;
            return self.refusal(state, now);
        }
        // The last chunk was spent before it expired: ask for more next time.
        if grant.granted == wanted && now < state.expires {
            state.chunk = state.chunk.saturating_mul(2).min(self.max_chunk);
        }
        state.tokens = grant.granted;
        state.expires = now + HOLD;
        state.refused_until = now;
        match self.spend(state, now) {
            Stock::Decided(decision) => decision,
            Stock::Empty { .. } => unreachable!("a token was just granted"),
        }
    }

    async fn take_from_redis(&self, subject: &str, wanted: u32) -> Result<Grant, String> {
        let call = async {
            let mut conn = self.link.get().await.map_err(|e| e.to_string())?;
            let mut key = String::with_capacity(KEY_PREFIX.len() + subject.len());
            key.push_str(KEY_PREFIX);
            key.push_str(subject);
            let (granted, left, next_in_us, full_in_us): (u32, u32, u64, u64) = self
                .script
                .key(key)
                .arg(self.interval_us)
                .arg(self.timing.burst)
                .arg(wanted)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    self.link.failed(&e);
                    e.to_string()
                })?;
            Ok(Grant {
                granted: granted.min(wanted),
                left,
                next_in: Duration::from_micros(next_in_us),
                full_in: Duration::from_micros(full_in_us),
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    fn clock_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }

    fn falling_back(&self, now: Instant) -> bool {
        self.clock_ms(now) < self.fallback_until_ms.load(Ordering::Relaxed)
    }

    fn fail_open(&self, subject: &str, error: &str, now: Instant) -> Decision {
        let at = self.clock_ms(now);
        self.fallback_until_ms
            .fetch_max(at + FALLBACK_FOR.as_millis() as u64, Ordering::Relaxed);
        let warned = self.warned_at_ms.load(Ordering::Relaxed);
        if (warned == 0 || at >= warned + WARN_EVERY.as_millis() as u64)
            && self
                .warned_at_ms
                .compare_exchange(warned, at, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %error,
                "rate limit Redis unavailable; limiting per instance until it answers again"
            );
        }
        self.fallback.check(subject, now)
    }

    /// Forgets idle subjects, here and in the fallback limiter.
    pub fn sweep(&self, now: Instant) {
        self.held
            .each_stripe(|held| held.retain(|_, state| !state.idle(now)));
        self.fallback.sweep(now);
    }

    /// How many subjects this instance holds state for (the fallback's aside).
    pub fn subjects(&self) -> usize {
        self.held.len()
    }
}

/// Under pressure, subjects with no call in flight go first, the soonest full first.
fn rank_for_eviction(state: &Held) -> Option<Instant> {
    (!state.in_use()).then_some(state.full_at)
}
