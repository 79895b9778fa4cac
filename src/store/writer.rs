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
    Batched(mpsc::Sender<Pending>),
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
        let task = tokio::spawn(run(store, rx));
        (RecordWriter(Route::Batched(queue)), task)
    }

    /// Stores the record unless its number already holds a live one; `Ok(false)` in that case.
    pub async fn insert(&self, entry: RecordEntry) -> Result<bool, StoreError> {
        let queue = match &self.0 {
            Route::Direct(store) => {
                let stored = store.insert_new(std::slice::from_ref(&entry)).await?;
                return Ok(stored.first().copied().unwrap_or(false));
            }
            Route::Batched(queue) => queue,
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
        entries.clear();
        entries.extend(pending.iter().map(|p| p.entry.clone()));
        match store.insert_new(&entries).await {
            Ok(stored) => {
                for (p, stored) in pending.drain(..).zip(stored) {
                    let _ = p.done.send(Ok(stored));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, records = pending.len(), "record batch failed");
                let message = err.to_string();
                for p in pending.drain(..) {
                    let _ = p.done.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
}
