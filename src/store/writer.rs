//! Group commit for records: concurrent requests hand their record to one writer task, which
//! stores everything that queued up while the previous batch was in flight in one round trip.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{RecordEntry, RecordStore, StoreError};

/// At most this many records travel in one batch.
pub const MAX_BATCH: usize = 1024;

struct Pending {
    entry: RecordEntry,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// Hands records to the store: through the group-commit task when the store wants one,
/// straight to the store otherwise.
#[derive(Clone)]
pub struct RecordWriter(Route);

#[derive(Clone)]
enum Route {
    Batched(mpsc::Sender<Pending>, Arc<dyn RecordStore>),
    Direct(Arc<dyn RecordStore>),
}

impl RecordWriter {
    /// Starts the writer (and its task, when the store wants group commit). The task ends once
    /// every `RecordWriter` clone is dropped and the queue is drained, so awaiting the handle
    /// flushes every accepted write.
    pub fn spawn(store: Arc<dyn RecordStore>) -> (RecordWriter, JoinHandle<()>) {
        if !store.wants_group_commit() {
            return (RecordWriter(Route::Direct(store)), tokio::spawn(async {}));
        }
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        let task = tokio::spawn(run(store.clone(), rx));
        (RecordWriter(Route::Batched(queue, store)), task)
    }

    /// Stores many records in one round trip of their own (they are a group already); per
    /// record, whether it was stored.
    pub async fn insert_many(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        match &self.0 {
            Route::Batched(_, store) | Route::Direct(store) => store.insert_new(entries).await,
        }
    }

    /// Stores the record unless its number already holds a live one; `Ok(false)` in that case.
    pub async fn insert(&self, entry: RecordEntry) -> Result<bool, StoreError> {
        let queue = match &self.0 {
            Route::Direct(store) => {
                let stored = store.insert_new(std::slice::from_ref(&entry)).await?;
                return Ok(stored.first().copied().unwrap_or(false));
            }
            Route::Batched(queue, _) => queue,
        };
        let (done, outcome) = oneshot::channel();
        queue
            .send(Pending { entry, done })
            .await
            .map_err(|_| StoreError::Unavailable("the record writer has stopped".into()))?;
        outcome
            .await
            .map_err(|_| StoreError::Unavailable("the record writer has stopped".into()))?
    }
}

async fn run(store: Arc<dyn RecordStore>, mut rx: mpsc::Receiver<Pending>) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    let mut entries = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut pending, MAX_BATCH).await > 0 {
        // Once more round the runtime's queue before sending: requests already under way add
        // their records to this batch instead of waiting for the next one. When nothing else
        // is ready this costs one poll, no timer and no wait.
        tokio::task::yield_now().await;
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => pending.push(more),
                Err(_) => break,
            }
        }
        entries.clear();
        entries.extend(pending.iter().map(|p| p.entry.clone()));
        match store.insert_each(&entries).await {
            Ok(outcomes) => {
                for (p, outcome) in pending.drain(..).zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, records = pending.len(), "record batch failed");
                for p in pending.drain(..) {
                    let _ = p.done.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TrackingNumber;
    use crate::store::{Removal, Swap};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A slow store that remembers every number and counts its round trips.
    #[derive(Default)]
    struct SlowStore {
        numbers: Mutex<HashSet<TrackingNumber>>,
        round_trips: Mutex<usize>,
    }

    #[async_trait]
    impl RecordStore for SlowStore {
        async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
            *self.round_trips.lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut numbers = self.numbers.lock().unwrap();
            Ok(entries
                .iter()
                .map(|e| numbers.insert(e.tracking_number))
                .collect())
        }
        async fn get(&self, _: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
            Ok(None)
        }
        async fn replace(&self, _: &Bytes, _: &RecordEntry) -> Result<Swap, StoreError> {
            Ok(Swap::Changed)
        }
        async fn remove(
            &self,
            _: &TrackingNumber,
            _: Option<&Bytes>,
        ) -> Result<Removal, StoreError> {
            Ok(Removal::Missing)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn sync(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn purge_expired(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    fn entry(number: &str) -> RecordEntry {
        RecordEntry {
            tracking_number: TrackingNumber::parse(number).unwrap(),
            serial: None,
            expires_at: chrono::Utc::now(),
            value: Bytes::from_static(b"{}"),
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_round_trips_and_keep_their_answers() {
        let store = Arc::new(SlowStore::default());
        let (writer, task) = RecordWriter::spawn(store.clone());
        let writes: Vec<_> = (0..200)
            .map(|i| {
                let writer = writer.clone();
                // Every number twice: exactly one of each pair is stored.
                tokio::spawn(async move { writer.insert(entry(&format!("N{}", i / 2))).await })
            })
            .collect();
        let mut stored = 0;
        for write in writes {
            if write.await.unwrap().unwrap() {
                stored += 1;
            }
        }
        assert_eq!(stored, 100);
        let trips = *store.round_trips.lock().unwrap();
        assert!(trips < 20, "200 writes took {trips} round trips");
        drop(writer);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the writer stops once its handles are gone")
            .unwrap();
    }

    /// Records on several nodes, one of them down: entries whose number ends in an odd digit
    /// fail.
    struct HalfDown;

    #[async_trait]
    impl RecordStore for HalfDown {
        async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
            self.insert_each(entries).await?.into_iter().collect()
        }
        async fn insert_each(
            &self,
            entries: &[RecordEntry],
        ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
            Ok(entries
                .iter()
                .map(|e| match e.tracking_number.as_str().bytes().last() {
                    Some(digit) if digit % 2 == 1 => Err(StoreError::Unavailable("down".into())),
                    _ => Ok(true),
                })
                .collect())
        }
        async fn get(&self, _: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
            Ok(None)
        }
        async fn replace(&self, _: &Bytes, _: &RecordEntry) -> Result<Swap, StoreError> {
            Ok(Swap::Changed)
        }
        async fn remove(
            &self,
            _: &TrackingNumber,
            _: Option<&Bytes>,
        ) -> Result<Removal, StoreError> {
            Ok(Removal::Missing)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn sync(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn purge_expired(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn a_failed_node_fails_only_the_writes_it_holds() {
        let (writer, _task) = RecordWriter::spawn(Arc::new(HalfDown));
        let writes: Vec<_> = (0..20)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move { (i, writer.insert(entry(&format!("N{i}"))).await) })
            })
            .collect();
        for write in writes {
            let (i, outcome) = write.await.unwrap();
            assert_eq!(outcome.is_ok(), i % 2 == 0, "N{i}: {outcome:?}");
        }
        // A batch of its own is all or nothing.
        assert!(
            writer
                .insert_many(&[entry("N2"), entry("N3")])
                .await
                .is_err()
        );
        assert!(
            writer
                .insert_many(&[entry("N2"), entry("N4")])
                .await
                .is_ok()
        );
    }
}
