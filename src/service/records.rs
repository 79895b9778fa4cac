//! The record lifecycle after issuing: read, change, remove, register a number issued
//! elsewhere, and inspect a number. Changes are compare-and-swaps on the stored JSON, so two
//! racing changes never lose one silently: the loser re-applies its patch to the winner's
//! record, or, when it asked for a version with `If-Match`, is refused. Within one instance,
//! changes to the same record also queue on a lock, so they do not race at all; the swap is
//! what keeps instances from losing each other's changes.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{SubsecRound, Utc};

use crate::domain::inspect::{Inspection, could_be_ours, inspect};
use crate::domain::record::{if_match_allows, owner_of};
use crate::domain::{
    BadMove, IssueRequest, Principal, Record, RecordPatch, Tenant, TrackingNumber, etag,
};
use crate::store::{RecordEntry, Removal, Store, StoreError, Swap};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Records {
    store: Arc<dyn Store>,
    record_ttl: chrono::Duration,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Records {
    pub fn new(store: Arc<dyn Store>, record_ttl: std::time::Duration) -> Self {
        Records {
            store,
            record_ttl: chrono::Duration::from_std(record_ttl).unwrap_or(chrono::Duration::MAX),
            locks: (0..LOCK_STRIPES).map(|_| Default::default()).collect(),
        }
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
        let json = self.store.get(number).await?;
        match json {
            Some(json) if who.can_see(owner(number, &json)?.as_ref()) => Ok(json),
            _ => Err(RecordError::NotFound(*number)),
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
        let _queued = self.lock_for(number).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                back_off(attempt).await;
            }
            let current = self.get(number, who).await?;
            check_precondition(if_match, &current)?;
            let record = parse_record(number, &current)?;
            let now = Utc::now().trunc_subsecs(6);
            let next = patch.apply(&record, now)?;
            let json = Bytes::from(serde_json::to_vec(&next).map_err(StoreError::bug)?);
            let entry = RecordEntry {
                tracking_number: *number,
                serial: None,
                expires_at: next.expires_at,
                json: json.clone(),
            };
            match self.store.replace(&current, &entry).await? {
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
        let _queued = self.lock_for(number).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                back_off(attempt).await;
            }
            let current = self.get(number, who).await?;
            check_precondition(if_match, &current)?;
            match self.store.remove(number, Some(&current)).await? {
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
        let now = Utc::now().trunc_subsecs(6);
        let expires_at = request.expires_at.unwrap_or(now + self.record_ttl);
        let record = Record::new(
            *number,
            now,
            expires_at,
            request.order.clone(),
            who.tenant.clone(),
        );
        let json = Bytes::from(serde_json::to_vec(&record).map_err(StoreError::bug)?);
        let entry = RecordEntry {
            tracking_number: *number,
            serial: None,
            expires_at,
            json: json.clone(),
        };
        if let [true] = self.store.insert_new(std::slice::from_ref(&entry)).await?[..] {
            return Ok((json, Registered::Created));
        }
        // Taken: by this very PUT, if an earlier try of it landed without an answer?
        let existing = match self.store.get(number).await? {
            Some(existing) => existing,
            None => return Err(RecordError::Exists(*number)),
        };
        let live = parse_record(number, &existing)?;
        let same = Record::new(
            *number,
            live.created_at,
            request.expires_at.unwrap_or(live.expires_at),
            request.order,
            who.tenant.clone(),
        );
        if live == same && who.can_see(live.tenant.as_ref()) {
            Ok((existing, Registered::Existed))
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

fn parse_record(number: &TrackingNumber, json: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(format!("record {number}: {e}")))
}

fn owner(number: &TrackingNumber, json: &[u8]) -> Result<Option<Tenant>, StoreError> {
    owner_of(json).map_err(|e| StoreError::Corrupt(format!("record {number}: {e}")))
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
