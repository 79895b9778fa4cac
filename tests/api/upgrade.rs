//! Data written before records were packed into buckets (main at 3ff57a3): a data dir and a
//! Redis snapshot made by that version (`tests/fixtures/before-buckets/`), served by this one.
//! Every record reads back with the same reply and ETag, changes and deletes; the deleted one
//! stays gone; the registered number stays registered; new numbers never repeat old ones.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{RedisServer, TestApp, config, spawn_app};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/before-buckets");

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_data_dir_written_before_buckets_is_served_with_nothing_lost() {
    let fixture = fixture("embedded-records.json");
    let dir = TempDir::new().unwrap();
    std::fs::copy(
        Path::new(FIXTURES).join("tracknum.redb"),
        dir.path().join("tracknum.redb"),
    )
    .unwrap();
    let secret = fixture["secret"].as_str().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let app = spawn_app(config(&["--data-dir", data_dir, "--secret", secret])).await;
    served_with_nothing_lost(&app, &fixture).await;
    app.stop().await;
    // And once more after a restart, with the changes made above.
    let app = spawn_app(config(&["--data-dir", data_dir, "--secret", secret])).await;
    let changed = &fixture["records"][0]["tracking_number"];
    let reply: Value = app
        .get(&format!(
            "/v1/tracking-numbers/{}",
            changed.as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "delivered");
}

#[tokio::test]
async fn a_redis_written_before_buckets_is_served_with_nothing_lost() {
    let fixture = fixture("redis-records.json");
    let redis = RedisServer::start_from(&Path::new(FIXTURES).join("dump.rdb"));
    let secret = fixture["secret"].as_str().unwrap();
    let url = redis.url();
    let app = spawn_app(config(&["--redis-url", &url, "--secret", secret])).await;
    served_with_nothing_lost(&app, &fixture).await;
}

async fn served_with_nothing_lost(app: &TestApp, fixture: &Value) {
    let records = fixture["records"].as_array().unwrap();
    assert_eq!(records.len(), 100);
    for record in records {
        let number = record["tracking_number"].as_str().unwrap();
        let reply = app.get_record(number).await;
        assert_eq!(reply.status(), 200, "{number}");
        let etag = reply.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag, fixture["etags"][number], "{number}: the same ETag");
        assert_eq!(&reply.json::<Value>().await.unwrap(), record, "{number}");
    }
    for number in fixture["deleted"].as_array().unwrap() {
        let path = format!("/v1/tracking-numbers/{}", number.as_str().unwrap());
        assert_eq!(app.get(&path).await.status(), 404, "{path}");
    }
    // The registered number stays registered: the same PUT is answered with its record.
    let registered = records
        .iter()
        .find(|r| r["tracking_number"] == "LEGACY00042")
        .unwrap();
    let inputs = json!({"origin_country_id": "SG", "expires_at": "2099-01-01T00:00:00Z"});
    let again = app.put_record("LEGACY00042", Some(&inputs)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(&again.json::<Value>().await.unwrap(), registered);

    // Old records change (with their old ETag as If-Match) and delete.
    let first = records[0]["tracking_number"].as_str().unwrap();
    let changed = app
        .patch_record(
            first,
            &json!({"status": "delivered"}),
            Some(fixture["etags"][first].as_str().unwrap()),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let changed: Value = changed.json().await.unwrap();
    assert_eq!(changed["status"], "delivered");
    assert_eq!(changed["created_at"], records[0]["created_at"]);
    let last = records[records.len() - 2]["tracking_number"]
        .as_str()
        .unwrap();
    let deleted = app.delete_record(last, None).await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(app.get_record(last).await.status(), 404);

    // New numbers never repeat old ones.
    let old: HashSet<&str> = records
        .iter()
        .map(|r| r["tracking_number"].as_str().unwrap())
        .chain(
            fixture["deleted"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap()),
        )
        .collect();
    for _ in 0..5 {
        let batch: Value = app
            .batch(&json!({"count": 1000}))
            .await
            .json()
            .await
            .unwrap();
        for record in batch["records"].as_array().unwrap() {
            assert!(!old.contains(record["tracking_number"].as_str().unwrap()));
        }
    }
}

/// Idempotency replies written when they were stored under digests of their keys (main at
/// 53c8796, `tests/fixtures/embedded-before-reply-names/`): a caller's key and an import's
/// order ids replay their numbers after the upgrade, and keys used after it replay too.
#[tokio::test]
async fn replies_stored_under_digests_replay_after_the_upgrade() {
    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/embedded-before-reply-names"
    );
    let text = std::fs::read_to_string(Path::new(DIR).join("replies.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let dir = TempDir::new().unwrap();
    std::fs::copy(
        Path::new(DIR).join("tracknum.redb"),
        dir.path().join("tracknum.redb"),
    )
    .unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let secret = fixture["secret"].as_str().unwrap();
    let args = [
        "--data-dir",
        data_dir,
        "--secret",
        secret,
        "--fsync",
        "always",
    ];
    let orders = std::fs::read_to_string(Path::new(DIR).join("orders.csv")).unwrap();
    let mut first_new = None;
    for round in ["after the upgrade", "after a restart"] {
        let app = spawn_app(config(&args)).await;
        for kept in ["short_key", "long_key"] {
            let kept = &fixture[kept];
            let query = kept["query"].as_str().unwrap();
            let reply = app
                .with_header("Idempotency-Key", kept["key"].as_str().unwrap())
                .issue_with(query)
                .await;
            assert_eq!(reply.status(), 200, "{round}");
            let body: Value = reply.json().await.unwrap();
            assert_eq!(body, kept["reply"], "{round}");
        }
        // The same orders again, and one new: the old ones keep their numbers.
        let numbers = import_numbers(&app, &format!("{orders}ORD-4,MY,SG,1\n")).await;
        for (order, number) in fixture["orders"].as_object().unwrap() {
            assert_eq!(numbers[order], *number, "{round}: {order}");
        }
        // ORD-4's reply is stored under its name: the restart replays it from there.
        let new = &numbers["ORD-4"];
        assert!(
            !fixture["orders"]
                .as_object()
                .unwrap()
                .values()
                .any(|n| n == new)
        );
        assert_eq!(new, first_new.get_or_insert_with(|| new.clone()), "{round}");
        app.stop().await;
    }
}

/// Imports `csv` and waits for it; returns each row's number by its order id.
async fn import_numbers(app: &TestApp, csv: &str) -> serde_json::Map<String, Value> {
    let reply = app.upload("", csv.to_owned()).await;
    assert_eq!(reply.status(), 202);
    let job: Value = reply.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let job: Value = app.import(&id).await.json().await.unwrap();
        if job["status"] == "done" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let results = app.import_results(&id).await.text().await.unwrap();
    let mut lines = results.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (order, number) = (at("order_id"), at("tracking_number"));
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            (cells[order].to_owned(), Value::from(cells[number]))
        })
        .collect()
}
