//! Issuing a number: a serial from the pool, encoded with the order's prefix, recorded before it
//! is handed out. The record's JSON is serialized once and serves as both stored value and reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};

use crate::alloc::SerialPool;
use crate::domain::codec::customer_tag;
use crate::domain::{Codec, Order, Record};
use crate::store::{RecordEntry, RecordWriter, StoreError};

/// A number whose record already exists is skipped; after this many in a row, give up.
const MAX_SKIPS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no serials available: {0}")]
    NoSerials(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Issuer {
    pool: Arc<SerialPool>,
    codec: Codec,
    writer: RecordWriter,
    record_ttl: chrono::Duration,
    /// How long a request may wait for a serial when the pool is empty, and for its record to
    /// be stored.
    serial_wait: Duration,
    skipped: AtomicU64,
}

impl Issuer {
    pub fn new(
        pool: Arc<SerialPool>,
        codec: Codec,
        writer: RecordWriter,
        record_ttl: Duration,
        serial_wait: Duration,
    ) -> Self {
        Issuer {
            pool,
            codec,
            writer,
            record_ttl: chrono::Duration::from_std(record_ttl).unwrap_or(chrono::Duration::MAX),
            serial_wait,
            skipped: AtomicU64::new(0),
        }
    }

    /// Issues one number for `order` and returns its record as JSON, once stored.
    pub async fn issue(&self, order: Order) -> Result<Bytes, IssueError> {
        let tag = customer_tag(order.customer_key().as_deref());
        let origin = order.origin_country_id;
        let now = Utc::now();
        let mut record = Record {
            tracking_number: String::with_capacity(16),
            created_at: now,
            expires_at: now,
            order,
        };
        for _ in 0..MAX_SKIPS {
            let serial = self.pool.take(self.serial_wait).await.ok_or_else(|| {
                IssueError::NoSerials("the serial counter cannot be reached".into())
            })?;
            let number = self
                .codec
                .encode(origin, tag, serial)
                .ok_or_else(|| IssueError::NoSerials("the serial space is exhausted".into()))?;
            record.tracking_number.clear();
            record.tracking_number.push_str(number.as_str());
            record.created_at = Utc::now().trunc_subsecs(6);
            record.expires_at = record.created_at + self.record_ttl;
            let mut json = Vec::with_capacity(512);
            serde_json::to_writer(&mut json, &record).map_err(StoreError::unavailable)?;
            let json = Bytes::from(json);
            let entry = RecordEntry {
                tracking_number: record.tracking_number.clone(),
                serial: Some(serial),
                expires_at: record.expires_at,
                json: json.clone(),
            };
            // One deadline for the whole write, queueing included: a hung store yields a 503
            // in time, never a hung request. The number is burned either way.
            let stored = tokio::time::timeout(self.serial_wait, self.writer.insert(entry))
                .await
                .map_err(|_| StoreError::Unavailable("storage did not answer in time".into()))??;
            if stored {
                return Ok(json);
            }
            // The guards make this impossible; should it happen anyway, never hand the number out.
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(number = %record.tracking_number, "a record already holds a freshly issued number; skipped it");
        }
        Err(IssueError::NoSerials(
            "every new number collided with an existing record".into(),
        ))
    }

    /// Numbers skipped because a record already held them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}
