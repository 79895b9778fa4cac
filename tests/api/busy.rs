//! A refusal under load says what it is. When new records arrive faster than the embedded store
//! writes them, its write-behind buffer fills; a writer then waits (for at most half a second)
//! for the next flush to take the buffer, and only then refuses: `StoreError::Busy`,
//! which the API answers with a 503 "busy, retry shortly" (see the mapping's unit tests in
//! `src/http/problem.rs`), not "storage is unavailable". Readiness does not change: the store
//! is sound, only behind.
//!
//! Over HTTP the buffer fills only above about 100k records a second, which a release build
//! reaches under `scripts/bench-batch.sh` and a debug build does not (about 80k/s on 2 cores),
//! so this test drives the store itself, with no flush running, as a flood outrunning the disk.

use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use tempfile::TempDir;
use tracknum::config::FsyncPolicy;
use tracknum::domain::TrackingNumber;
use tracknum::store::{EmbeddedOptions, EmbeddedStore, RecordEntry, RecordStore, StoreError};

/// A batch of `size` records of serials from `first` on, as the issuer makes them.
fn batch(first: u64, size: u64) -> Vec<RecordEntry> {
    let expires_at = Utc::now() + chrono::Duration::days(1);
    (first..first + size)
        .map(|serial| RecordEntry {
            tracking_number: TrackingNumber::parse(&format!("BUSY{serial}")).unwrap(),
            serial: Some(serial),
            expires_at,
            value: Bytes::from_static(br#"{"status":"issued"}"#),
        })
        .collect()
}

/// An embedded store with its write-behind buffer (`--fsync everysec`), in `dir`.
fn buffered_store(dir: &TempDir) -> EmbeddedStore {
    let options = EmbeddedOptions {
        fsync: FsyncPolicy::Everysec,
        ..EmbeddedOptions::default()
    };
    EmbeddedStore::open(dir.path(), None, options).unwrap().0
}

#[tokio::test]
async fn a_full_write_behind_buffer_refuses_as_busy_and_stays_ready() {
    let dir = TempDir::new().unwrap();
    // Twice what the buffer holds (100k records), made before the store opens so that the
    // flood is all that is timed.
    let batches: Vec<_> = (0..200).map(|i| batch(i * 1000, 1000)).collect();
    let store = buffered_store(&dir);
    // Nothing flushes the buffer here (the app's flush task is not running): batches pile up
    // until it is full.
    let started = Instant::now();
    let mut accepted = 0;
    let mut refusal = None;
    for batch in &batches {
        match store.insert_new(batch).await {
            Ok(stored) => {
                assert!(stored.iter().all(|&new| new));
                accepted += 1000;
            }
            Err(err) => {
                refusal = Some(err);
                break;
            }
        }
    }
    let refusal = refusal.unwrap_or_else(|| panic!("the buffer took all {accepted} records"));
    // The last writer waited half a second for room first, and was refused before the disk
    // guard's second without a flush (it would say "not writable").
    let took = started.elapsed();
    assert!(accepted >= 1000, "the first batch was refused: {refusal}");
    assert!(
        matches!(refusal, StoreError::Busy(_)),
        "refused after {accepted} records in {took:?}: {refusal:?}"
    );
    assert!(refusal.is_transient());
    // /readyz asks the store's ping: still ready while merely busy.
    store.ping().await.unwrap();
    // Once the buffer reaches the disk, new records go in again.
    store.sync().await.unwrap();
    let stored = store.insert_new(&batch(accepted, 1000)).await.unwrap();
    assert!(stored.iter().all(|&new| new));
}

#[tokio::test]
async fn a_writer_that_finds_the_buffer_full_goes_in_once_a_flush_takes_it() {
    let dir = TempDir::new().unwrap();
    let store = std::sync::Arc::new(buffered_store(&dir));
    // Fill the buffer (100k records) with nothing flushing it.
    for i in 0..100 {
        store.insert_new(&batch(i * 1000, 1000)).await.unwrap();
    }
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.insert_new(&batch(100_000, 1000)).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the writer was answered before any flush"
    );
    store.sync().await.unwrap();
    let stored = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
        .await
        .expect("the writer still waits after the flush")
        .unwrap()
        .unwrap();
    assert!(stored.iter().all(|&new| new));
}
