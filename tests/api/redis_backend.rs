//! Redis: many instances, one counter; uniqueness through data loss; 503 and recovery.

use std::time::{Duration, Instant};

use crate::helpers::{
    RedisLike, SECRET, TestRedis, assert_unique, config, issue_many, spawn_on_redis, try_spawn_app,
};

on_each_redis!(
    two_instances_issue_100k_numbers_without_a_duplicate,
    flushall_in_the_middle_of_a_run_repeats_nothing,
    redis_restarted_empty_repeats_nothing,
    redis_down_gives_a_quick_503_and_recovery_follows,
    a_hung_redis_gives_a_503_in_time_not_a_hung_request,
    an_instance_with_another_secret_is_refused,
);

async fn two_instances_issue_100k_numbers_without_a_duplicate(redis: TestRedis) {
    let a = spawn_on_redis(&redis, &[]).await;
    let b = spawn_on_redis(&redis, &[]).await;
    let urls = [
        a.url("/next-tracking-number"),
        b.url("/next-tracking-number"),
    ];
    let (numbers, failed) = issue_many(&urls, 100_000, 64).await;
    assert_eq!(failed, 0);
    assert_eq!(numbers.len(), 100_000);
    assert_unique(&numbers);
}

async fn flushall_in_the_middle_of_a_run_repeats_nothing(redis: TestRedis) {
    let a = spawn_on_redis(&redis, &["--block-size", "50"]).await;
    let b = spawn_on_redis(&redis, &["--block-size", "50"]).await;
    let urls = [
        a.url("/next-tracking-number"),
        b.url("/next-tracking-number"),
    ];
    let (mut all, failed) = issue_many(&urls, 5000, 16).await;
    assert_eq!(failed, 0);
    redis.flushall();
    let (after, failed) = issue_many(&urls, 5000, 16).await;
    assert_eq!(failed, 0);
    all.extend(after);
    assert_unique(&all);
}

async fn redis_restarted_empty_repeats_nothing(mut redis: TestRedis) {
    let a = spawn_on_redis(&redis, &["--block-size", "50"]).await;
    let b = spawn_on_redis(&redis, &["--block-size", "50"]).await;
    let urls = [
        a.url("/next-tracking-number"),
        b.url("/next-tracking-number"),
    ];
    let (mut all, _) = issue_many(&urls, 3000, 16).await;
    redis.restart_empty();
    // Requests during the restart may fail; the ones that succeed must be new.
    let (after, _) = issue_many(&urls, 3000, 16).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (more, failed) = issue_many(&urls, 500, 8).await;
        all.extend(more);
        if failed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover after Redis restarted"
        );
    }
    all.extend(after);
    assert!(all.len() > 3500);
    assert_unique(&all);
}

async fn redis_down_gives_a_quick_503_and_recovery_follows(mut redis: TestRedis) {
    let app = spawn_on_redis(&redis, &[]).await;
    app.issue("").await;
    redis.kill();
    let started = Instant::now();
    let response = app.get("/next-tracking-number").await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(waited < Duration::from_secs(1), "took {waited:?}");
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 503);
    // Reads fail just as fast.
    let started = Instant::now();
    assert_eq!(
        app.get("/v1/tracking-numbers/ZZ00000000000000")
            .await
            .status(),
        503
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    redis.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app.get("/next-tracking-number").await.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_hung_redis_gives_a_503_in_time_not_a_hung_request(redis: TestRedis) {
    let app = spawn_on_redis(&redis, &[]).await;
    app.issue("").await;
    redis.signal("STOP");
    let started = Instant::now();
    let response = app.get("/next-tracking-number").await;
    let waited = started.elapsed();
    redis.signal("CONT");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(waited < Duration::from_millis(1500), "took {waited:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/next-tracking-number").await.status() != 200 {
        assert!(Instant::now() < deadline, "no recovery after Redis resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn an_instance_with_another_secret_is_refused(redis: TestRedis) {
    let _first = spawn_on_redis(&redis, &[]).await;
    let [flag, value] = redis.flag();
    let other = config(&[&flag, &value, "--secret", "not-the-same-secret"]);
    let err = try_spawn_app(other).await.err().expect("refused");
    assert!(format!("{err:#}").contains("different secret"), "{err:#}");
    assert_ne!(SECRET, "not-the-same-secret");
}
