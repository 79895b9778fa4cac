//! A store wrapper that counts: every failed storage call by operation, and every block lease
//! with its latency. The application wraps whichever backend it runs on in it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{
    ImportPart, ImportQueue, ImportStore, IsLive, LeaseSource, ListedImport, QueuedImport,
    RecordEntry, RecordStore, Removal, ReplyStore, Store, StoreError, Swap,
};
use crate::domain::TrackingNumber;
use crate::metrics::Metrics;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }

    fn count<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(err) = &result {
            self.metrics.storage_error(operation);
            if matches!(err, StoreError::Corrupt(_)) {
                self.metrics.corrupt_records.inc();
            }
        }
        result
    }
}

#[async_trait]
impl LeaseSource for MeteredStore {
    fn paced_in(&self) -> Option<u64> {
        self.inner.paced_in()
    }

    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let started = Instant::now();
        let result = self.inner.lease(size, floor).await;
        let took: Duration = started.elapsed();
        self.metrics.lease_seconds.observe(took.as_secs_f64());
        match &result {
            Ok(_) => self.metrics.leases.inc(),
            // Not a failure: the counter asks for a moment, as it does right after a jump.
            Err(StoreError::WaitForClock(_)) => return result,
            Err(_) => self.metrics.lease_errors.inc(),
        };
        self.count("lease", result)
    }
}

#[async_trait]
impl RecordStore for MeteredStore {
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        let result = self.inner.insert_new(entries).await;
        self.count("insert", result)
    }

    async fn insert_each(
        &self,
        entries: &[RecordEntry],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let result = self.inner.insert_each(entries).await;
        if let Ok(outcomes) = &result
            && outcomes.iter().any(Result::is_err)
        {
            self.metrics.storage_error("insert");
        }
        self.count("insert", result)
    }

    fn wants_group_commit(&self) -> bool {
        self.inner.wants_group_commit()
    }

    async fn get(&self, tracking_number: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.get(tracking_number).await;
        self.count("get", result)
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let result = self.inner.replace(expected, entry).await;
        self.count("replace", result)
    }

    async fn remove(
        &self,
        tracking_number: &TrackingNumber,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        let result = self.inner.remove(tracking_number, expected).await;
        self.count("remove", result)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let result = self.inner.ping().await;
        self.count("ping", result)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let result = self.inner.sync().await;
        self.count("sync", result)
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        let result = self.inner.purge_expired().await;
        self.count("purge", result)
    }

    fn free_disk_bytes(&self) -> Option<u64> {
        self.inner.free_disk_bytes()
    }
}

#[async_trait]
impl ReplyStore for MeteredStore {
    async fn claim(
        &self,
        key: &str,
        claim: &[u8],
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.claim(key, claim, ttl).await;
        self.count("claim", result)
    }

    async fn complete(
        &self,
        key: &str,
        claim: &[u8],
        reply: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let result = self.inner.complete(key, claim, reply, ttl).await;
        self.count("complete", result)
    }

    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
        let result = self.inner.release(key, claim).await;
        self.count("release", result)
    }

    async fn claim_many(
        &self,
        claims: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let result = self.inner.claim_many(claims, ttl).await;
        self.count("claim_many", result)
    }

    async fn complete_many(
        &self,
        done: &[(String, Vec<u8>, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let result = self.inner.complete_many(done, ttl).await;
        self.count("complete_many", result)
    }

    async fn keep_new_many(
        &self,
        replies: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let result = self.inner.keep_new_many(replies, ttl).await;
        self.count("keep_new_many", result)
    }
}

#[async_trait]
impl ImportStore for MeteredStore {
    async fn put_import_part(
        &self,
        id: &str,
        part: ImportPart,
        value: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .inner
            .put_import_part(id, part, value, expires_at)
            .await;
        self.count("put_import_part", result)
    }

    async fn swap_import_part(
        &self,
        id: &str,
        part: ImportPart,
        expected: Option<&[u8]>,
        new: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let result = self
            .inner
            .swap_import_part(id, part, expected, new, expires_at)
            .await;
        self.count("swap_import_part", result)
    }

    async fn import_part(&self, id: &str, part: ImportPart) -> Result<Option<Bytes>, StoreError> {
        let result = self.inner.import_part(id, part).await;
        self.count("import_part", result)
    }

    async fn drop_abandoned_uploads(&self, is_live: &IsLive) -> Result<u64, StoreError> {
        let result = self.inner.drop_abandoned_uploads(is_live).await;
        self.count("drop_abandoned_uploads", result)
    }

    async fn drop_import_parts(&self, id: &str, parts: &[ImportPart]) -> Result<(), StoreError> {
        let result = self.inner.drop_import_parts(id, parts).await;
        self.count("drop_import_parts", result)
    }

    async fn list_import(
        &self,
        owner: &str,
        id: &str,
        created_us: i64,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self
            .inner
            .list_import(owner, id, created_us, expires_at)
            .await;
        self.count("list_import", result)
    }

    async fn listed_imports(
        &self,
        owner: Option<&str>,
        before_us: i64,
        limit: usize,
    ) -> Result<Vec<ListedImport>, StoreError> {
        let result = self.inner.listed_imports(owner, before_us, limit).await;
        self.count("listed_imports", result)
    }
}

#[async_trait]
impl ImportQueue for MeteredStore {
    async fn enqueue_import(&self, id: &str) -> Result<(), StoreError> {
        let result = self.inner.enqueue_import(id).await;
        self.count("enqueue_import", result)
    }

    async fn next_import(
        &self,
        worker: &str,
        stale: Duration,
    ) -> Result<Option<QueuedImport>, StoreError> {
        let result = self.inner.next_import(worker, stale).await;
        self.count("next_import", result)
    }

    async fn touch_import(&self, worker: &str, job: &QueuedImport) -> Result<(), StoreError> {
        let result = self.inner.touch_import(worker, job).await;
        self.count("touch_import", result)
    }

    async fn ack_import(&self, job: &QueuedImport) -> Result<(), StoreError> {
        let result = self.inner.ack_import(job).await;
        self.count("ack_import", result)
    }
}
