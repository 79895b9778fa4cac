//! Several embedded instances: node ids split the serial space, so instances with distinct
//! node ids never issue the same number, whatever their secrets and block sizes; a data dir
//! keeps its node id; a data dir from before node ids keeps its numbers.

use std::collections::HashSet;
use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tracknum::domain::codec::{DIGITS, NODE_SERIALS};

use crate::helpers::{TestApp, config, spawn_app, try_spawn_app};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/embedded-before-node-ids"
);

async fn spawn_node(dir: &Path, extra: &[&str]) -> TestApp {
    try_spawn_node(dir, extra).await.expect("the app starts")
}

async fn try_spawn_node(dir: &Path, extra: &[&str]) -> anyhow::Result<TestApp> {
    let data_dir = dir.to_str().unwrap();
    let mut args = vec!["--data-dir", data_dir];
    args.extend_from_slice(extra);
    try_spawn_app(config(&args)).await
}

/// `count` numbers issued in batches of 1000.
async fn issue_batches(app: &TestApp, count: usize) -> Vec<String> {
    let mut numbers = Vec::with_capacity(count);
    while numbers.len() < count {
        let reply = app.batch(&json!({"count": 1000})).await;
        assert_eq!(reply.status(), 201);
        let body: Value = reply.json().await.unwrap();
        for record in body["records"].as_array().unwrap() {
            numbers.push(record["tracking_number"].as_str().unwrap().to_owned());
        }
    }
    numbers
}

/// The node whose partition a number's serial digits lie in (readable without the secret).
fn node_of(number: &str) -> u64 {
    let digits = number.as_bytes()[4..15].iter().fold(0u64, |x, &c| {
        x * 36 + DIGITS.iter().position(|&d| d == c).unwrap() as u64
    });
    digits / NODE_SERIALS
}

/// The issue's case: two instances, each with its own data dir, one secret and big blocks.
/// Without node ids they repeated 151,309 of 200,000 numbers.
#[tokio::test]
async fn two_nodes_with_one_secret_never_repeat_a_number() {
    let (one, two) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let shared = [
        "--secret",
        "one-secret-for-both-instances",
        "--block-size",
        "100000",
    ];
    let a = spawn_node(one.path(), &[&shared[..], &["--node-id", "1"]].concat()).await;
    let b = spawn_node(two.path(), &[&shared[..], &["--node-id", "2"]].concat()).await;
    let (from_a, from_b) = tokio::join!(issue_batches(&a, 100_000), issue_batches(&b, 100_000));
    assert!(from_a.iter().all(|n| node_of(n) == 1));
    assert!(from_b.iter().all(|n| node_of(n) == 2));
    let all: HashSet<&String> = from_a.iter().chain(&from_b).collect();
    assert_eq!(all.len(), from_a.len() + from_b.len(), "a number repeated");
}

/// Different secrets cannot meet either: the node is in the digits, outside the permutation.
#[tokio::test]
async fn two_nodes_with_different_secrets_stay_apart() {
    let (one, two) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = spawn_node(
        one.path(),
        &["--node-id", "0", "--secret", "first-secret-0123456789"],
    );
    let b = spawn_node(
        two.path(),
        &["--node-id", "31", "--secret", "other-secret-0123456789"],
    );
    let (a, b) = tokio::join!(a, b);
    let (from_a, from_b) = tokio::join!(issue_batches(&a, 5_000), issue_batches(&b, 5_000));
    assert!(from_a.iter().all(|n| node_of(n) == 0));
    assert!(from_b.iter().all(|n| node_of(n) == 31));
}

#[tokio::test]
async fn a_data_dir_keeps_the_node_id_it_started_with() {
    let dir = TempDir::new().unwrap();
    let app = spawn_node(dir.path(), &["--node-id", "3"]).await;
    let first = issue_batches(&app, 1000).await;
    app.stop().await;

    let refused = try_spawn_node(dir.path(), &["--node-id", "4"])
        .await
        .err()
        .expect("another node id is refused");
    let text = format!("{refused:#}");
    assert!(
        text.contains("node id 3") && text.contains("--node-id 4"),
        "{text}"
    );

    // Without --node-id, the data dir's own.
    let app = spawn_node(dir.path(), &[]).await;
    let again = issue_batches(&app, 1000).await;
    assert!(first.iter().chain(&again).all(|n| node_of(n) == 3));
    let all: HashSet<&String> = first.iter().chain(&again).collect();
    assert_eq!(all.len(), 2000);
}

#[tokio::test]
async fn node_ids_are_checked_at_start() {
    for bad in [
        vec!["--node-id", "32"],
        vec!["--node-id", "1", "--redis-url", "redis://127.0.0.1:1"],
        vec!["--require-redis"],
    ] {
        let args: Vec<&str> = ["tracknum"].iter().chain(&bad).copied().collect();
        let err = tracknum::Config::load_from(args).expect_err(&format!("{bad:?}"));
        assert!(
            err.contains("node-id") || err.contains("REDIS_URL"),
            "{bad:?}: {err}"
        );
    }
    let err = tracknum::Config::load_from(["tracknum", "--require-redis"]).unwrap_err();
    assert!(err.contains("issue the same numbers"), "{err}");
}

fn copy_fixture() -> TempDir {
    let dir = TempDir::new().unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("tracknum.redb"),
        dir.path().join("tracknum.redb"),
    )
    .unwrap();
    dir
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURE).join("records.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A data dir made before node ids: every record reads back as the old version answered it,
/// changes and deletes; new numbers, whichever node id the data dir takes now, never repeat an
/// old one.
#[tokio::test]
async fn a_data_dir_from_before_node_ids_keeps_its_numbers() {
    let fixture = fixture();
    let secret = fixture["secret"].as_str().unwrap();
    let records = fixture["records"].as_array().unwrap();
    let old: HashSet<&str> = records
        .iter()
        .map(|r| r["tracking_number"].as_str().unwrap())
        .collect();
    for node in [None, Some("5")] {
        let dir = copy_fixture();
        let mut args = vec!["--secret", secret];
        if let Some(node) = node {
            args.extend(["--node-id", node]);
        }
        let app = spawn_node(dir.path(), &args).await;
        for record in records {
            let number = record["tracking_number"].as_str().unwrap();
            let reply = app.get_record(number).await;
            assert_eq!(reply.status(), 200, "{number}");
            assert_eq!(&reply.json::<Value>().await.unwrap(), record);
        }
        for number in fixture["deleted"].as_array().unwrap() {
            let path = format!("/v1/tracking-numbers/{}", number.as_str().unwrap());
            assert_eq!(app.get(&path).await.status(), 404);
        }
        let new = issue_batches(&app, 20_000).await;
        let expected_node = node.map_or(0, |n| n.parse().unwrap());
        assert!(new.iter().all(|n| node_of(n) == expected_node));
        assert!(new.iter().all(|n| !old.contains(n.as_str())));
        assert_eq!(new.iter().collect::<HashSet<_>>().len(), new.len());

        let first = records[0]["tracking_number"].as_str().unwrap();
        // Sent without a content type: the API reads a JSON body whatever it is labelled.
        let patched = app
            .request(Method::PATCH, &format!("/v1/tracking-numbers/{first}"))
            .body(r#"{"status":"delivered"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        let last = records.last().unwrap()["tracking_number"].as_str().unwrap();
        let deleted = app.delete_record(last, None).await;
        assert_eq!(deleted.status(), 204);
        app.stop().await;

        // And after a restart, the data dir still knows what it is.
        let app = spawn_node(dir.path(), &["--secret", secret]).await;
        let reply = app.get_record(first).await;
        assert_eq!(reply.json::<Value>().await.unwrap()["status"], "delivered");
        let later = issue_batches(&app, 1000).await;
        assert!(
            later
                .iter()
                .all(|n| node_of(n) == expected_node && !old.contains(n.as_str()))
        );
        app.stop().await;
    }
}

/// One data dir per node, as the lock message says: a second process on the same dir is told
/// what to do.
#[tokio::test]
async fn the_lock_message_names_node_ids_and_redis() {
    let dir = TempDir::new().unwrap();
    let _app = spawn_app(config(&["--data-dir", dir.path().to_str().unwrap()])).await;
    let refused = try_spawn_node(dir.path(), &[]).await.err().expect("locked");
    let text = format!("{refused:#}");
    assert!(
        text.contains("--node-id") && text.contains("Redis"),
        "{text}"
    );
}
