//! The shared rate limiter against a private Redis: two limiters stand for two instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracknum::access::ratelimit::{Quota, RedisLimiter};

use crate::helpers::{RedisLike, TestRedis, wait_until};

on_each_redis!(
    ratelimit_two_instances_share_one_quota,
    ratelimit_redis_refusals_say_when_to_retry,
    ratelimit_redis_is_called_once_per_chunk_not_per_request,
    ratelimit_fails_open_when_redis_is_killed,
    ratelimit_fails_open_when_redis_hangs_and_recovers,
);

/// Long enough that a busy test machine never makes the limiter fail open by accident.
const PATIENT: Duration = Duration::from_secs(2);
/// What the service would run with.
const TIMEOUT: Duration = Duration::from_millis(100);

fn limiter(redis: &TestRedis, per_second: f64, burst: u32, timeout: Duration) -> RedisLimiter {
    RedisLimiter::new(&redis.target(), Quota { per_second, burst }, timeout).unwrap()
}

/// Calls of the take script Redis has run since its stats were reset.
fn script_calls(redis: &TestRedis) -> u64 {
    let infos: Vec<String> = redis.on_every_node(&["INFO", "commandstats"]);
    infos
        .iter()
        .flat_map(|info| info.lines())
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn ratelimit_two_instances_share_one_quota(redis: TestRedis) {
    let instances = [
        Arc::new(limiter(&redis, 1.0, 20, PATIENT)),
        Arc::new(limiter(&redis, 1.0, 20, PATIENT)),
    ];
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let limiter = Arc::clone(&instances[i % 2]);
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..30 {
                    allowed += usize::from(limiter.check("shared-key").await.allowed);
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    // Admissions never outnumber the tokens Redis granted: the burst and what the rate added
    // meanwhile. Chunks held by one instance and expired unspent can only make it fewer.
    let refilled = started.elapsed().as_secs() as usize + 1;
    let slack = 2 * instances[0].max_chunk() as usize;
    assert!(allowed <= 20 + refilled, "{allowed} allowed");
    assert!(allowed >= 20 - slack, "{allowed} allowed");

    // The shared bucket lives in Redis and expires when it would be full again.
    let ttl: i64 = redis.cmd(&["PTTL", "tracknum:ratelimit:shared-key"]);
    assert!(ttl > 0 && ttl <= 20_000, "{ttl}");

    // Another subject has its own bucket.
    assert!(instances[1].check("other-key").await.allowed);
}

async fn ratelimit_redis_refusals_say_when_to_retry(redis: TestRedis) {
    let limiter = limiter(&redis, 5.0, 2, PATIENT);
    assert!(limiter.check("k").await.allowed);
    assert!(limiter.check("k").await.allowed);
    let refused = limiter.check("k").await;
    assert!(!refused.allowed);
    assert_eq!((refused.limit, refused.remaining), (2, 0));
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(200),
        "{refused:?}"
    );
    assert!(refused.reset >= refused.retry_after, "{refused:?}");
    assert_eq!(refused.retry_after_secs(), 1);
    tokio::time::sleep(refused.retry_after + Duration::from_millis(20)).await;
    assert!(limiter.check("k").await.allowed);
}

async fn ratelimit_redis_is_called_once_per_chunk_not_per_request(redis: TestRedis) {
    let limiter = limiter(&redis, 1.0, 800, PATIENT);
    let _: Vec<()> = redis.on_every_node(&["CONFIG", "RESETSTAT"]);
    let mut allowed = 0;
    for _ in 0..1000 {
        allowed += usize::from(limiter.check("busy").await.allowed);
    }
    // Chunks grow 1, 2, 4, … up to 100 while they are spent in time; the 200 refusals are
    // answered from the refusal Redis gave until its next token.
    let calls = script_calls(&redis);
    assert!(calls <= 30, "{calls} script calls for 1000 checks");
    let slack = limiter.max_chunk() as usize;
    assert!((800 - slack..=802).contains(&allowed), "{allowed} allowed");
}

async fn ratelimit_fails_open_when_redis_is_killed(mut redis: TestRedis) {
    let limiter = limiter(&redis, 1.0, 3, TIMEOUT);
    assert!(limiter.check("before").await.allowed);
    redis.kill();

    let started = Instant::now();
    let first = limiter.check("after").await;
    assert!(first.allowed, "{first:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // This instance's own buckets decide meanwhile, with the same quota, and quickly.
    let mut allowed = 1;
    for _ in 0..10 {
        allowed += usize::from(limiter.check("after").await.allowed);
    }
    assert_eq!(allowed, 3);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

async fn ratelimit_fails_open_when_redis_hangs_and_recovers(redis: TestRedis) {
    let limiter = limiter(&redis, 1.0, 3, TIMEOUT);
    assert!(limiter.check("warm").await.allowed);
    redis.signal("STOP");

    let started = Instant::now();
    let decision = limiter.check("while-hung").await;
    let waited = started.elapsed();
    redis.signal("CONT");
    assert!(decision.allowed, "{decision:?}");
    assert!(waited < Duration::from_secs(1), "waited {waited:?}");

    // After a second of deciding alone, the limiter asks Redis again: the bucket of a subject
    // checked from then on is in Redis. (A new subject each time: each is allowed meanwhile.)
    let mut asked = 0;
    wait_until(
        "the limiter asks Redis again",
        Duration::from_secs(5),
        async || {
            asked += 1;
            let subject = format!("after-recovery-{asked}");
            assert!(limiter.check(&subject).await.allowed);
            let exists: i64 = redis.cmd(&["EXISTS", &format!("tracknum:ratelimit:{subject}")]);
            exists == 1
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
