//! The record lifecycle after issuing: read, change, remove, register a number issued
//! elsewhere, and inspect a number. Records are stored packed (or as the JSON of the layout
//! before it) and answered as JSON, whose hash is the ETag: a record unpacks field for field,
//! so an unchanged record keeps its ETag. Changes are compare-and-swaps on the stored value, so two
//! racing changes never lose one silently: the loser re-applies its patch to the winner's
//! record, or, when it asked for a version with `If-Match`, is refused. Within one instance,
//! changes to the same record also queue on a lock, so they do not race at all; the swap is
//! what keeps instances from losing each other's changes.
//!
//! Each operation has one deadline, `--storage-timeout` from its start, and the wait for the
//! lock counts against it: a change queued behind others on a silent store is answered in time
//! too. (With a deadline per storage call instead, 12 PATCHes of one number queued behind each
//! other on a silent Redis were answered at 0.5, 1.0, … 6.0 s.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use tokio::time::Instant;

use crate::domain::inspect::{Inspection, could_be_ours, inspect};
use crate::domain::packed::{self, Unreadable};
use crate::domain::record::if_match_allows;
use crate::domain::{
    BadMove, Codec, IssueRequest, Principal, Record, RecordPatch, TrackingNumber, etag,
};
use crate::metrics::Metrics;
use crate::store::{RecordEntry, RecordStore, Removal, StoreError, Swap, deadline};

/// A change that keeps losing races this many times in a row is refused with a conflict.
const MAX_ATTEMPTS: u32 = 8;
/// Changes to records queue on one of this many locks, picked by number.
const LOCK_STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no record for tracking number {0}")]
    NotFound(TrackingNumber),
    #[error("the record has changed since the version in If-Match")]
    Stale,
    #[error("the record kept changing while this change was applied; try again")]
    Busy,
    #[error(transparent)]
    BadMove(#[from] BadMove),
    #[error("a record for tracking number {0} exists already")]
    Exists(TrackingNumber),
    #[error(
        "{0} has the layout and check character of a number this service issues, so it could \
         collide with one issued later; it cannot be registered"
    )]
    Reserved(TrackingNumber),
    /// A change or removal was sent to storage, which did not confirm it: it may or may not
    /// have been applied.
    #[error("storage did not confirm the change, which may or may not have been applied: {0}")]
    Unconfirmed(StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Records {
    store: Arc<dyn RecordStore>,
    /// Reads a number's serial, from which its packed record keeps `created_at`.
    codec: Codec,
    metrics: Arc<Metrics>,
    record_ttl: chrono::Duration,
    /// How long one operation may take, lock wait included (a keyed request's task may allow
    /// longer: [`deadline::limit`]).
    storage_timeout: Duration,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Records {
    pub fn new(
        store: Arc<dyn RecordStore>,
        codec: Codec,
        metrics: Arc<Metrics>,
        record_ttl: Duration,
        storage_timeout: Duration,
    ) -> Self {
        Records {
            store,
            codec,
            metrics,
            record_ttl: chrono::Duration::from_std(record_ttl).unwrap_or(chrono::Duration::MAX),
            storage_timeout,
            locks: (0..LOCK_STRIPES).map(|_| Default::default()).collect(),
        }
    }

    /// Waits for this instance's earlier changes of `number` to finish.
    async fn queue(
        &self,
        number: &TrackingNumber,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, RecordError> {
        Ok(self.lock_for(number).lock().await)
    }

    /// When an operation starting now must be answered.
    fn deadline(&self) -> Instant {
        Instant::now() + deadline::limit(self.storage_timeout)
    }

    /// The lock that changes to `number` queue on in this instance.
    fn lock_for(&self, number: &TrackingNumber) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash =
            BuildHasherDefault::<siphasher::sip::SipHasher13>::default().hash_one(number.as_str());
        &self.locks[hash as usize % LOCK_STRIPES]
    }

    /// The live record's JSON, if `who` may see it; a record of another tenant is not found,
    /// exactly like one that does not exist.
    pub async fn get(
        &self,
        number: &TrackingNumber,
        who: &Principal,
    ) -> Result<Bytes, RecordError> {
        Ok(self.read(number, who).await?.json)
    }

    /// The live record as stored, as it is, and as JSON, if `who` may see it.
    async fn read(&self, number: &TrackingNumber, who: &Principal) -> Result<Read, RecordError> {
        let Some(value) = self.store.get(number).await? else {
            return Err(RecordError::NotFound(*number));
        };
        let record = self.unpack(number, &value)?;
        if !who.can_see(record.tenant.as_ref()) {
            return Err(RecordError::NotFound(*number));
        }
        // The JSON of the layout before packing is answered as it was stored: its ETag stays.
        let json = if packed::is_packed(&value) {
            to_json(&record)?
        } else {
            value.clone()
        };
        Ok(Read {
            value,
            record,
            json,
        })
    }

    /// The record `number` stored as `value`. One that cannot be read is a 500, logged and
    /// counted, never served.
    fn unpack(&self, number: &TrackingNumber, value: &[u8]) -> Result<Record, StoreError> {
        packed::unpack_stored(value, *number, self.serial(number)).map_err(|err: Unreadable| {
            self.metrics.corrupt_records.inc();
            tracing::error!(number = number.as_str(), error = %err, "a stored record is unreadable");
            StoreError::Corrupt(format!("record {number}: {err}"))
        })
    }

    /// `number`'s serial, from which its packed record keeps `created_at`; None for a number
    /// that is not ours.
    fn serial(&self, number: &TrackingNumber) -> Option<u64> {
        self.codec.decode_serial(number.as_str())
    }

    /// `record` packed for storage.
    fn entry(&self, record: &Record) -> RecordEntry {
        let mut value = Vec::with_capacity(64);
        packed::pack(record, self.serial(&record.tracking_number), &mut value);
        RecordEntry {
            tracking_number: record.tracking_number,
            serial: None,
            expires_at: record.expires_at,
            value: Bytes::from(value),
        }
    }

    /// Applies `patch` and returns the new record's JSON. With `if_match`, only to that version.
    pub async fn update(
        &self,
        number: &TrackingNumber,
        patch: &RecordPatch,
        if_match: Option<&str>,
        who: &Principal,
    ) -> Result<Bytes, RecordError> {
        let deadline = self.deadline();
        let _queued = by(deadline, self.queue(number)).await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                back_off(attempt).await;
            }
            let current = by(deadline, self.read(number, who)).await?;
            check_precondition(if_match, &current.json)?;
            let now = Utc::now().trunc_subsecs(6);
            let next = patch.apply(&current.record, now)?;
            let json = to_json(&next)?;
            let entry = self.entry(&next);
            match sent(by(deadline, self.store.replace(&current.value, &entry)).await)? {
                Swap::Replaced => return Ok(json),
                // Someone else changed it first: their version is not the one asked for...
                Swap::Changed if if_match.is_some() => return Err(RecordError::Stale),
                // ...or, with no version asked for, apply the patch to theirs.
                Swap::Changed => continue,
            }
        }
        Err(RecordError::Busy)
    }

    /// Removes the record. Its number is never issued again all the same: serials only grow.
    /// The version removed is the one whose owner was checked: a compare-and-delete.
    pub async fn delete(
        &self,
        number: &TrackingNumber,
        if_match: Option<&str>,
        who: &Principal,
    ) -> Result<(), RecordError> {
        let deadline = self.deadline();
        let _queued = by(deadline, self.queue(number)).await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                back_off(attempt).await;
            }
            let current = by(deadline, self.read(number, who)).await?;
            check_precondition(if_match, &current.json)?;
            match sent(by(deadline, self.store.remove(number, Some(&current.value))).await)? {
                Removal::Removed => return Ok(()),
                Removal::Missing => return Err(RecordError::NotFound(*number)),
                Removal::Changed if if_match.is_some() => return Err(RecordError::Stale),
                Removal::Changed => continue,
            }
        }
        Err(RecordError::Busy)
    }

    /// Registers a number issued elsewhere, with the given inputs, for `who`'s tenant; returns
    /// its record's JSON and whether it was created now. A PUT is idempotent (RFC 9110): when
    /// the live record is exactly the one this PUT would create, it is the answer.
    pub async fn register(
        &self,
        number: &TrackingNumber,
        request: IssueRequest,
        who: &Principal,
    ) -> Result<(Bytes, Registered), RecordError> {
        if could_be_ours(number) {
            return Err(RecordError::Reserved(*number));
        }
        let deadline = self.deadline();
        let now = Utc::now().trunc_subsecs(6);
        let expires_at = request.expires_at.unwrap_or(now + self.record_ttl);
        let record = Record::new(
            *number,
            now,
            expires_at,
            request.order.clone(),
            who.tenant.clone(),
        );
        let json = to_json(&record)?;
        let entry = self.entry(&record);
        let inserted = by(
            deadline,
            self.store.insert_new(std::slice::from_ref(&entry)),
        )
        .await?;
        if let [true] = inserted[..] {
            return Ok((json, Registered::Created));
        }
        // Taken: by this very PUT, if an earlier try of it landed without an answer?
        let existing = match by(deadline, self.store.get(number)).await? {
            Some(existing) => existing,
            None => return Err(RecordError::Exists(*number)),
        };
        let live = self.unpack(number, &existing)?;
        let same = Record::new(
            *number,
            live.created_at,
            request.expires_at.unwrap_or(live.expires_at),
            request.order,
            who.tenant.clone(),
        );
        if live == same && who.can_see(live.tenant.as_ref()) {
            let json = if packed::is_packed(&existing) {
                to_json(&live)?
            } else {
                existing
            };
            Ok((json, Registered::Existed))
        } else {
            Err(RecordError::Exists(*number))
        }
    }

    /// What the number says about itself, and whether it has a record `who` may see (None
    /// when storage cannot say right now: the answer is still useful without it).
    pub async fn check(&self, number: &TrackingNumber, who: &Principal) -> Inspection {
        let mut inspection = inspect(number);
        inspection.record_exists = match self.get(number, who).await {
            Ok(_) => Some(true),
            Err(RecordError::NotFound(_)) => Some(false),
            Err(err) => {
                tracing::warn!(error = %err, "check could not look up the record");
                None
            }
        };
        inspection
    }
}

/// Whether [`Records::register`] made the record or found it made by the same PUT before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Existed,
}

/// `work`, or a storage timeout once `deadline` has passed.
async fn by<T, E: Into<RecordError>>(
    deadline: Instant,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, RecordError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(outcome) => outcome.map_err(Into::into),
        Err(_) => Err(StoreError::Unavailable("storage did not answer in time".into()).into()),
    }
}

/// The outcome of a change sent to storage: one that storage did not answer is unconfirmed
/// (Redis may have applied it and lost the reply), unlike a refusal or a failed read.
fn sent<T>(outcome: Result<T, RecordError>) -> Result<T, RecordError> {
    outcome.map_err(|err| match err {
        RecordError::Store(err @ StoreError::Unavailable(_)) => RecordError::Unconfirmed(err),
        err => err,
    })
}

/// A record as read: the stored value (what a compare-and-swap compares), the record, and its
/// JSON (the reply, and what its ETag hashes).
struct Read {
    value: Bytes,
    record: Record,
    json: Bytes,
}

fn to_json(record: &Record) -> Result<Bytes, StoreError> {
    let mut json = Vec::with_capacity(512);
    serde_json::to_writer(&mut json, record).map_err(StoreError::bug)?;
    Ok(Bytes::from(json))
}

/// A short random pause before retrying a lost swap (another instance changed the record), so
/// racing instances do not retry in lockstep: up to 1, 2, 4, … 64 ms.
async fn back_off(attempt: u32) {
    let cap_ms = 1u64 << attempt.min(6);
    let pause = rand::random_range(0..=cap_ms * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
}

fn check_precondition(if_match: Option<&str>, current: &[u8]) -> Result<(), RecordError> {
    match if_match {
        Some(header) if !if_match_allows(header, &etag(current)) => Err(RecordError::Stale),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    const TIMEOUT: Duration = Duration::from_millis(500);

    /// A store that never answers, and bounds each call by [`TIMEOUT`] as the real ones do.
    struct Silent;

    async fn silent<T>() -> Result<T, StoreError> {
        deadline::bounded(TIMEOUT, std::future::pending()).await
    }

    #[async_trait]
    impl RecordStore for Silent {
        async fn insert_new(&self, _: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
            silent().await
        }
        async fn get(&self, _: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
            silent().await
        }
        async fn replace(&self, _: &Bytes, _: &RecordEntry) -> Result<Swap, StoreError> {
            silent().await
        }
        async fn remove(
            &self,
            _: &TrackingNumber,
            _: Option<&Bytes>,
        ) -> Result<Removal, StoreError> {
            silent().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            silent().await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn purge_expired(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn changes_queued_on_a_silent_store_all_end_within_the_timeout() {
        let records = Arc::new(Records::new(
            Arc::new(Silent),
            Codec::new(b"test secret"),
            Metrics::new(),
            Duration::from_secs(3600),
            TIMEOUT,
        ));
        let number = TrackingNumber::parse("MY004RJ37VY0JTIN").unwrap();
        let start = Instant::now();
        let calls: Vec<_> = (0..12)
            .map(|i| {
                let records = records.clone();
                tokio::spawn(async move {
                    let patch = RecordPatch::default();
                    let outcome = if i % 3 == 0 {
                        records.delete(&number, None, &Principal::OPEN).await.err()
                    } else {
                        records
                            .update(&number, &patch, Some("*"), &Principal::OPEN)
                            .await
                            .err()
                    };
                    (outcome, start.elapsed())
                })
            })
            .collect();
        for call in calls {
            let (outcome, took) = call.await.unwrap();
            assert!(
                matches!(
                    outcome,
                    Some(RecordError::Store(StoreError::Unavailable(_)))
                ),
                "{outcome:?}"
            );
            // Queued behind the others on one lock, it still ends at the first one's deadline.
            assert!(took <= TIMEOUT, "answered after {took:?}");
        }
    }

    /// A store whose record is there, and whose changes are sent but never confirmed.
    struct Unanswered(Bytes);

    #[async_trait]
    impl RecordStore for Unanswered {
        async fn insert_new(&self, _: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
            silent().await
        }
        async fn get(&self, _: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
            Ok(Some(self.0.clone()))
        }
        async fn replace(&self, _: &Bytes, _: &RecordEntry) -> Result<Swap, StoreError> {
            Err(StoreError::Unavailable("connection reset".into()))
        }
        async fn remove(
            &self,
            _: &TrackingNumber,
            _: Option<&Bytes>,
        ) -> Result<Removal, StoreError> {
            silent().await
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

    #[tokio::test(start_paused = true)]
    async fn a_change_storage_did_not_answer_is_unconfirmed() {
        let number = TrackingNumber::parse("MY004RJ37VY0JTIN").unwrap();
        let now = Utc::now().trunc_subsecs(6);
        let record = Record::new(
            number,
            now,
            now + chrono::Duration::days(1),
            Default::default(),
            None,
        );
        let json = Bytes::from(serde_json::to_vec(&record).unwrap());
        let records = Records::new(
            Arc::new(Unanswered(json)),
            Codec::new(b"test secret"),
            Metrics::new(),
            Duration::from_secs(3600),
            TIMEOUT,
        );
        let patch = RecordPatch::default();
        let changed = records
            .update(&number, &patch, None, &Principal::OPEN)
            .await;
        assert!(
            matches!(changed, Err(RecordError::Unconfirmed(_))),
            "{changed:?}"
        );
        let removed = records.delete(&number, None, &Principal::OPEN).await;
        assert!(
            matches!(removed, Err(RecordError::Unconfirmed(_))),
            "{removed:?}"
        );
    }
}
