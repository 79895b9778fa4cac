//! One conformance suite for every storage backend: the same checks, run against each.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tempfile::TempDir;
use tracknum::config::FsyncPolicy;
use tracknum::store::{EmbeddedStore, LeaseSource, RecordEntry, RecordStore, RedisStore, Store};

use crate::helpers::RedisServer;

fn entry(number: &str, ttl: Duration) -> RecordEntry {
    RecordEntry {
        tracking_number: number.to_owned(),
        serial: None,
        expires_at: Utc::now() + chrono::Duration::from_std(ttl).unwrap(),
        json: Bytes::from(format!(r#"{{"tracking_number":"{number}"}}"#)),
    }
}

async fn conformance(store: &dyn Store) {
    // Leases: the requested size, disjoint, increasing, above the caller's floor.
    let a = store.lease(100, 0).await.unwrap();
    assert_eq!(a.end - a.start, 100);
    let b = store.lease(100, a.end).await.unwrap();
    assert_eq!(b.end - b.start, 100);
    assert!(b.start >= a.end, "{a:?} then {b:?}");
    let floor = b.end + 1_000_000_000;
    let c = store.lease(10, floor).await.unwrap();
    assert!(c.start >= floor, "a lease honours the floor: {c:?}");

    // Records: insert once, read back, never overwrite a live one.
    let long = Duration::from_secs(3600);
    let stored = store
        .insert_new(&[entry("CONF1", long), entry("CONF2", long)])
        .await
        .unwrap();
    assert_eq!(stored, [true, true]);
    let again = store
        .insert_new(&[entry("CONF1", long), entry("CONF3", long)])
        .await
        .unwrap();
    assert_eq!(
        again,
        [false, true],
        "an existing record is never overwritten"
    );
    let json = store.get("CONF2").await.unwrap().expect("stored");
    assert_eq!(json, Bytes::from(r#"{"tracking_number":"CONF2"}"#));
    assert_eq!(store.get("MISSING").await.unwrap(), None);
    assert_eq!(store.insert_new(&[]).await.unwrap(), Vec::<bool>::new());

    // Expiry: gone after its time, its space reclaimed, its key free again.
    let short = Duration::from_millis(300);
    assert_eq!(
        store.insert_new(&[entry("SHORT", short)]).await.unwrap(),
        [true]
    );
    assert!(store.get("SHORT").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get("SHORT").await.unwrap(), None);
    store.purge_expired().await.unwrap();
    assert_eq!(store.get("SHORT").await.unwrap(), None);
    assert!(
        store.get("CONF1").await.unwrap().is_some(),
        "purge keeps live records"
    );
    assert_eq!(
        store.insert_new(&[entry("SHORT", long)]).await.unwrap(),
        [true]
    );

    store.ping().await.unwrap();
    // Whatever a store buffers, a sync moves to where it lasts; reads see no difference.
    store.sync().await.unwrap();
    let json = store
        .get("CONF2")
        .await
        .unwrap()
        .expect("still stored after a sync");
    assert_eq!(json, Bytes::from(r#"{"tracking_number":"CONF2"}"#));
    assert_eq!(
        store.insert_new(&[entry("CONF2", long)]).await.unwrap(),
        [false]
    );
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = TempDir::new().unwrap();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Everysec] {
        let sub = dir.path().join(format!("{fsync:?}"));
        let (store, _secret) = EmbeddedStore::open(&sub, None, fsync).unwrap();
        conformance(&store).await;
    }
}

#[tokio::test]
async fn embedded_purge_reclaims_expired_records() {
    let dir = TempDir::new().unwrap();
    let (store, _) = EmbeddedStore::open(dir.path(), None, FsyncPolicy::Always).unwrap();
    let short = Duration::from_millis(100);
    let entries: Vec<_> = (0..50).map(|i| entry(&format!("P{i}"), short)).collect();
    store.insert_new(&entries).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.purge_expired().await.unwrap(), 50);
    assert_eq!(store.purge_expired().await.unwrap(), 0);
}

#[tokio::test]
async fn embedded_counter_survives_reopening() {
    let dir = TempDir::new().unwrap();
    let (store, secret) = EmbeddedStore::open(dir.path(), None, FsyncPolicy::Everysec).unwrap();
    let first = store.lease(1000, 0).await.unwrap();
    drop(store);
    let (store, again) = EmbeddedStore::open(dir.path(), None, FsyncPolicy::Everysec).unwrap();
    assert_eq!(secret, again, "the generated secret is kept");
    let second = store.lease(1000, 0).await.unwrap();
    assert!(second.start >= first.end);
}

#[tokio::test]
async fn redis_store_conforms() {
    let redis = RedisServer::start();
    let store = RedisStore::new(&redis.url(), "fp".into(), Duration::from_millis(500)).unwrap();
    conformance(&store).await;
}

#[tokio::test]
async fn redis_lease_jumps_past_everything_after_data_loss() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(&redis.url(), "fp".into(), Duration::from_millis(500)).unwrap();
    let before = store.lease(1000, 0).await.unwrap();
    redis.restart_empty();
    // A fresh store, as a new instance would have: no floor of its own.
    let fresh = RedisStore::new(&redis.url(), "fp".into(), Duration::from_millis(500)).unwrap();
    let after = fresh.lease(1000, 0).await.unwrap();
    assert!(after.start >= before.end, "{before:?} then {after:?}");
}
