//! How failures reach clients: every storage and service error maps to one problem in one
//! place. Storage that cannot be reached is a 503 with `Retry-After`; corrupt stored data is a
//! 500 whose body says nothing internal (no key, address, driver message or stored bytes),
//! only the request id the log files the details under.

use serde_json::Value;

use crate::helpers::{TestRedis, bucket_of, spawn_on_redis};

on_each_redis!(
    a_corrupt_record_is_a_500_that_tells_nothing_internal,
    unreachable_storage_is_a_503_that_tells_nothing_internal,
);

/// Words that would give away internals: the store, its keys and addresses, driver errors.
const INTERNAL: [&str; 9] = [
    "redis",
    "tracknum:record",
    "127.0.0.1",
    "refused",
    "garbage",
    "serde",
    "expected",
    "EOF",
    "line",
];

fn assert_says_nothing_internal(body: &str) {
    for word in INTERNAL {
        assert!(
            !body.to_lowercase().contains(&word.to_lowercase()),
            "{word:?} in {body}"
        );
    }
}

async fn a_corrupt_record_is_a_500_that_tells_nothing_internal(redis: TestRedis) {
    let app = spawn_on_redis(&redis, &[]).await;
    let mut issued = Vec::new();
    for _ in 0..6 {
        let record = app.issue("").await;
        issued.push(record["tracking_number"].as_str().unwrap().to_owned());
    }
    let number = issued[2].clone();
    let place = bucket_of(&number);
    // Its neighbours: the numbers issued beside it that share its bucket.
    let neighbours: Vec<&String> = issued
        .iter()
        .filter(|n| **n != number && bucket_of(n).bucket == place.bucket)
        .collect();
    assert!(neighbours.len() >= 2, "{issued:?} share few buckets");
    let _: () = redis.cmd(&["HSET", &place.bucket, &place.field, "garbage{not json"]);

    let response = app.get_record(&number).await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:tracknum:problem:internal", "{body}");
    assert_eq!(problem["request_id"], id.as_str(), "{body}");
    assert_says_nothing_internal(&body);

    // Its bucket's other records are served, changed and deleted as usual, and the damaged
    // one stays a 500 through their changes.
    let client = reqwest::Client::new();
    for n in &neighbours {
        let read = app.get_record(n).await;
        assert_eq!(read.status(), 200, "neighbour {n}");
    }
    let patched = client
        .patch(app.url(&format!("/v1/tracking-numbers/{}", neighbours[0])))
        .json(&serde_json::json!({"status": "in_transit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let deleted = client
        .delete(app.url(&format!("/v1/tracking-numbers/{}", neighbours[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = app.get_record(neighbours[1]).await;
    assert_eq!(gone.status(), 404);
    let again = app.get_record(&number).await;
    assert_eq!(again.status(), 500);

    // The service goes on: other numbers are issued and read as usual.
    let fresh = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = app.get_record(&fresh).await;
    assert_eq!(read.status(), 200);
}

async fn unreachable_storage_is_a_503_that_tells_nothing_internal(mut redis: TestRedis) {
    let app = spawn_on_redis(&redis, &[]).await;
    let number = app.issue("").await["tracking_number"]
        .as_str()
        .unwrap()
        .to_owned();
    redis.kill();
    for path in [
        "/next-tracking-number?weight=1.5".to_owned(),
        format!("/v1/tracking-numbers/{number}"),
    ] {
        let response = app.get(&path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body = response.text().await.unwrap();
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], 503, "{body}");
        assert!(problem["request_id"].is_string(), "{body}");
        assert_says_nothing_internal(&body);
    }
}
