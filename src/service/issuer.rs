//! Issuing a number: a serial from the pool, encoded with the order's prefix, recorded before it
//! is handed out. The record is stored packed (about 55 bytes) and answered as JSON.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};

use crate::domain::{Codec, IssueRequest, Record, Tenant, TrackingNumber, packed};
use crate::metrics::Metrics;
use crate::serials::SerialPool;
use crate::store::{RecordEntry, RecordWriter, StoreError};

/// A number whose record already exists is skipped; after this many in a row, give up.
const MAX_SKIPS: usize = 8;

/// Why a request got no serial within its wait (the pool cannot tell which).
const NO_SERIAL_IN_TIME: &str =
    "no serial came in time: the counter could not be reached, or waits for the clock";

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
    metrics: Arc<Metrics>,
}

impl Issuer {
    pub fn new(
        pool: Arc<SerialPool>,
        codec: Codec,
        writer: RecordWriter,
        record_ttl: Duration,
        serial_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Issuer {
            pool,
            codec,
            writer,
            record_ttl: chrono::Duration::from_std(record_ttl).unwrap_or(chrono::Duration::MAX),
            serial_wait,
            metrics,
        }
    }

    /// Issues one number for `request`, owned by `owner`, and returns its record as JSON, once
    /// stored.
    pub async fn issue(
        &self,
        request: &IssueRequest,
        owner: Option<&Tenant>,
    ) -> Result<Bytes, IssueError> {
        for _ in 0..MAX_SKIPS {
            let (entry, record) = self.next_record(request, owner).await?;
            let number = entry.tracking_number;
            // One deadline for the whole write, queueing included: a hung store yields a 503
            // in time, never a hung request. The number is burned either way.
            let stored = self.bounded(self.writer.insert(entry)).await?;
            if stored {
                self.metrics.numbers_issued.inc();
                return Ok(reply(&record)?);
            }
            self.skip(&number);
        }
        Err(all_skipped())
    }

    /// Issues one number per request, all owned by `owner` and recorded in one storage round
    /// trip, and returns the records' JSON in request order.
    pub async fn issue_batch(
        &self,
        requests: &[IssueRequest],
        owner: Option<&Tenant>,
    ) -> Result<Vec<Bytes>, IssueError> {
        let mut issued: Vec<Option<Bytes>> = vec![None; requests.len()];
        let mut todo: Vec<usize> = (0..requests.len()).collect();
        for _ in 0..MAX_SKIPS {
            let mut entries = Vec::with_capacity(todo.len());
            let mut records = Vec::with_capacity(todo.len());
            for &index in &todo {
                let (entry, record) = self.next_record(&requests[index], owner).await?;
                entries.push(entry);
                records.push(record);
            }
            let stored = self.bounded(self.writer.insert_many(&entries)).await?;
            let mut again = Vec::new();
            for (((index, entry), record), stored) in
                todo.into_iter().zip(entries).zip(records).zip(stored)
            {
                if stored {
                    issued[index] = Some(reply(&record)?);
                } else {
                    self.skip(&entry.tracking_number);
                    again.push(index);
                }
            }
            if again.is_empty() {
                self.metrics.numbers_issued.inc_by(requests.len() as u64);
                return Ok(issued.into_iter().flatten().collect());
            }
            todo = again;
        }
        Err(all_skipped())
    }

    /// Fresh numbers for `requests` and their records as made at `now`, not stored yet: for a
    /// caller that must keep the numbers it is about to hand out before they are stored (an
    /// import, which another worker may resume: [`Issuer::record_for`] makes the same records
    /// again from the serials and `now`), then stores them with [`Issuer::store`].
    pub async fn plan<'r>(
        &self,
        requests: impl IntoIterator<Item = &'r IssueRequest>,
        owner: Option<&Tenant>,
        now: DateTime<Utc>,
    ) -> Result<Vec<RecordEntry>, IssueError> {
        let mut entries = Vec::new();
        for request in requests {
            entries.push(self.fresh_record(request, owner, now).await?.0);
        }
        Ok(entries)
    }

    /// Stores planned records in one round trip; per entry, whether it is new (false: a record
    /// already holds its number).
    pub async fn store(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, IssueError> {
        let stored = self.bounded(self.writer.insert_many(entries)).await?;
        let new = stored.iter().filter(|&&new| new).count();
        self.metrics.numbers_issued.inc_by(new as u64);
        Ok(stored)
    }

    /// A fresh number for `request` and its record, ready to store.
    async fn next_record(
        &self,
        request: &IssueRequest,
        owner: Option<&Tenant>,
    ) -> Result<(RecordEntry, Record), IssueError> {
        self.fresh_record(request, owner, Utc::now().trunc_subsecs(6))
            .await
    }

    async fn take_serial(&self) -> Result<u64, IssueError> {
        self.pool
            .take(self.serial_wait)
            .await
            .ok_or_else(|| IssueError::NoSerials(NO_SERIAL_IN_TIME.into()))
    }

    /// A record for `request` under a fresh serial. A serial the codec will not number is
    /// passed over: in a data dir from before node ids, about one in 2,000 would write the
    /// digits of an older number.
    async fn fresh_record(
        &self,
        request: &IssueRequest,
        owner: Option<&Tenant>,
        now: DateTime<Utc>,
    ) -> Result<(RecordEntry, Record), IssueError> {
        loop {
            let serial = self.take_serial().await?;
            if let Some(entry) = self.try_record_for(request, owner, serial, now)? {
                return Ok(entry);
            }
        }
    }

    /// The number `serial` encodes for `request`, and its record as made at `now`: the same
    /// entry every time for the same inputs, so a plan of serials and times is enough to make
    /// a planned record again.
    pub fn record_for(
        &self,
        request: &IssueRequest,
        owner: Option<&Tenant>,
        serial: u64,
        now: DateTime<Utc>,
    ) -> Result<RecordEntry, IssueError> {
        let (entry, _) = self
            .try_record_for(request, owner, serial, now)?
            .ok_or_else(|| IssueError::NoSerials("the serial space is exhausted".into()))?;
        Ok(entry)
    }

    /// [`Issuer::record_for`], with the record itself; None for a serial the codec does not
    /// number.
    fn try_record_for(
        &self,
        request: &IssueRequest,
        owner: Option<&Tenant>,
        serial: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<(RecordEntry, Record)>, IssueError> {
        let order = &request.order;
        let tag = self.codec.customer_tag(order.customer_key().as_deref());
        let Some(number) = self.codec.encode(order.origin_country_id, tag, serial) else {
            return Ok(None);
        };
        let expires_at = request.expires_at.unwrap_or(now + self.record_ttl);
        let record = Record::new(number, now, expires_at, order.clone(), owner.cloned());
        let mut value = Vec::with_capacity(64);
        packed::pack(&record, Some(serial), &mut value);
        let entry = RecordEntry {
            tracking_number: record.tracking_number,
            serial: Some(serial),
            expires_at,
            value: Bytes::from(value),
        };
        Ok(Some((entry, record)))
    }

    async fn bounded<T>(
        &self,
        write: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, IssueError> {
        Ok(tokio::time::timeout(self.serial_wait, write)
            .await
            .map_err(|_| StoreError::Unavailable("storage did not answer in time".into()))??)
    }

    /// The guards make a taken number impossible; should one occur anyway, it is never handed
    /// out, and it is counted.
    fn skip(&self, number: &TrackingNumber) {
        self.metrics.skipped_collisions.inc();
        tracing::error!(
            number = number.as_str(),
            "a record already holds a freshly issued number; skipped it"
        );
    }
}

/// A record's JSON: the reply, and what its ETag hashes.
fn reply(record: &Record) -> Result<Bytes, StoreError> {
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, record).map_err(StoreError::bug)?;
    Ok(Bytes::from(json))
}

fn all_skipped() -> IssueError {
    IssueError::NoSerials("every new number collided with an existing record".into())
}
