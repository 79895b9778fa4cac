//! Records on Redis ([`RecordStore`]): a group commit's pipelines, reads, swaps and removals,
//! in buckets ([`buckets`]) or under a key of their own.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::Value;

use super::buckets::LISTPACK_VALUE_MAX;
use super::spread::{Body, Call, Replies};
use super::{
    Conn, Place, RECORD_PREFIX, REMOVAL_MARK_TTL, RedisStore, SERIAL_KEY, buckets, spread, ttl_ms,
};
use crate::domain::TrackingNumber;
use crate::domain::packed::{self, is_packed};
use crate::store::{RecordEntry, RecordStore, Removal, StoreError, Swap};

impl RedisStore {
    /// Writes a group commit's records with [`RedisStore::record_calls`]: one pipeline on a
    /// single server, one per master on a cluster ([`spread`]). Then `WAIT` for the configured
    /// replicas. Per entry: stored, taken, or failed (on a cluster, a node that fails fails
    /// only its own entries); an error when all failed.
    async fn write_new(
        &self,
        conn: &mut Conn,
        entries: &[RecordEntry],
    ) -> Result<Vec<Result<bool, StoreError>>, redis::RedisError> {
        let (calls, written) = self.record_calls(entries);
        let wait = self.options.wait_replicas;
        let mut wait_cmd = redis::cmd("WAIT");
        wait_cmd.arg(wait).arg(wait_ms(self.options.timeout));
        let mut outcomes: Vec<Result<bool, StoreError>> =
            entries.iter().map(|_| Ok(false)).collect();
        match conn {
            Conn::Cluster(cluster) => {
                let (replies, failure) = spread::on_cluster(cluster, &self.slots, &calls).await;
                if let Some(err) = failure {
                    if replies.iter().all(Result::is_err) {
                        // The caller reports it to the link.
                        return Err(err);
                    }
                    self.link.failed(&err);
                }
                settle(&calls, &written, replies, &mut outcomes);
                self.recognise(&Conn::Cluster(cluster.clone()), entries, &mut outcomes)
                    .await?;
                if wait > 0 {
                    // Routed to every master; the answer is the fewest replicas any reached.
                    let acked: u32 = wait_cmd.query_async(cluster).await?;
                    check_replicas(acked, wait)?;
                }
            }
            _ => {
                let tail = (wait > 0).then_some(&wait_cmd);
                let (replies, acked) = spread::on_one_server(conn, &calls, tail).await?;
                if let Some(acked) = acked {
                    check_replicas(redis::from_redis_value(acked)?, wait)?;
                }
                settle(&calls, &written, replies, &mut outcomes);
                let recognised = self.recognise(conn, entries, &mut outcomes).await?;
                if recognised > 0 && wait > 0 {
                    // The pipeline's WAIT came before the writes that recognised them.
                    let acked: u32 = wait_cmd.query_async(conn).await?;
                    check_replicas(acked, wait)?;
                }
            }
        }
        Ok(outcomes)
    }

    /// The calls that write `entries`, and for each call the entries it writes: one
    /// [`scripts::BUCKET_INSERT`] per bucket for the records of our numbers
    /// ([`buckets`]), and a `SET key value PX ttl NX` for each record that keeps a key of its
    /// own (a number registered with PUT, or a record too long for a bucket).
    fn record_calls(&self, entries: &[RecordEntry]) -> (Vec<Call<'_>>, Vec<Vec<usize>>) {
        let now = Utc::now();
        let mut calls = Vec::new();
        let mut written: Vec<Vec<usize>> = Vec::new();
        let mut bucketed: Vec<(Place, usize)> = Vec::new();
        for (at, entry) in entries.iter().enumerate() {
            match entry.serial {
                Some(serial) if in_bucket(entry) => {
                    bucketed.push((Place::of(&entry.tracking_number, serial), at));
                }
                _ => {
                    let ttl_ms = (entry.expires_at - now).num_milliseconds().max(1);
                    let key = record_key(&entry.tracking_number);
                    let mut set = redis::cmd("SET");
                    set.arg(&key)
                        .arg(entry.value.as_ref())
                        .arg("PX")
                        .arg(ttl_ms)
                        .arg("NX");
                    calls.push(Call {
                        key,
                        body: Body::Command(set),
                    });
                    written.push(vec![at]);
                }
            }
        }
        // Consecutive serials: a batch's records come bucket after bucket.
        bucketed.sort_by(|a, b| a.0.bucket.cmp(&b.0.bucket));
        for group in bucketed.chunk_by(|a, b| a.0.bucket == b.0.bucket) {
            let latest = group
                .iter()
                .map(|(_, at)| entries[*at].expires_at)
                .max()
                .unwrap_or(now);
            let mut args = Vec::with_capacity(2 + 4 * group.len());
            args.push(Bytes::from(expiry_ms(latest).to_string()));
            args.push(Bytes::from(group.len().to_string()));
            args.extend(
                group
                    .iter()
                    .map(|(place, _)| Bytes::from(place.field.clone())),
            );
            let mut pairs = Vec::with_capacity(2 * group.len());
            for (place, at) in group {
                let value = &entries[*at].value;
                pairs.push(Bytes::from(place.field.clone()));
                match buckets::parts(value) {
                    Some((first, Some(tail))) => {
                        args.push(Bytes::from_static(b"2"));
                        pairs.push(value.slice_ref(first));
                        pairs.push(Bytes::from(place.tail()));
                        pairs.push(value.slice_ref(tail));
                    }
                    _ => {
                        args.push(Bytes::from_static(b"1"));
                        pairs.push(value.clone());
                    }
                }
            }
            args.extend(pairs);
            calls.push(Call {
                key: group[0].0.bucket.clone(),
                body: Body::Script {
                    lua: &self.bucket_insert,
                    more_keys: Vec::new(),
                    args,
                },
            });
            written.push(group.iter().map(|(_, at)| *at).collect());
        }
        (calls, written)
    }

    /// Of the entries with a key of their own whose `SET … NX` found it taken, those whose key
    /// holds exactly their own record ([`scripts::OWN`]): written by this very batch, whose
    /// pipeline was sent again after its connection broke. They become stored, not collisions.
    /// Run only when a key was taken, which otherwise never happens; returns how many were
    /// recognised. (A bucket's script recognises its own records itself.)
    pub(super) async fn recognise(
        &self,
        conn: &Conn,
        entries: &[RecordEntry],
        outcomes: &mut [Result<bool, StoreError>],
    ) -> Result<usize, redis::RedisError> {
        let taken: Vec<usize> = (0..entries.len())
            .filter(|&at| matches!(outcomes[at], Ok(false)) && !in_bucket(&entries[at]))
            .collect();
        if taken.is_empty() {
            return Ok(0);
        }
        // Collected first: a stream over a borrowing closure is not `Send` enough.
        let checks: Vec<_> = taken
            .iter()
            .map(|&at| {
                let mut invocation = self.own_script.prepare_invoke();
                invocation
                    .key(record_key(&entries[at].tracking_number))
                    .arg(entries[at].value.as_ref())
                    .arg(entries[at].expires_at.timestamp_millis().max(1));
                let mut conn = conn.another();
                async move { invocation.invoke_async::<i64>(&mut conn).await }
            })
            .collect();
        let owned: Vec<i64> = stream::iter(checks)
            .buffered(SCRIPTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut recognised = 0;
        for (&at, owned) in taken.iter().zip(owned) {
            if owned == 1 {
                outcomes[at] = Ok(true);
                recognised += 1;
            }
        }
        Ok(recognised)
    }

    /// The serial of `number`, if it is one of ours: where its record is in a bucket.
    fn serial_of(&self, number: &TrackingNumber) -> Option<u64> {
        self.options.codec.decode_serial(number.as_str())
    }

    /// Swaps a record that keeps a key of its own ([`scripts::REPLACE`]).
    async fn replace_own(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let mut invocation = self.replace_script.prepare_invoke();
        invocation
            .key(record_key(&entry.tracking_number))
            .arg(expected.as_ref())
            .arg(entry.value.as_ref())
            .arg(entry.expires_at.timestamp_millis().max(1));
        let replaced: i64 = self.run(invocation).await?;
        Ok(if replaced == 1 {
            Swap::Replaced
        } else {
            Swap::Changed
        })
    }

    /// Removes the live record of `number` while it is still exactly `expected`: from its
    /// bucket ([`scripts::BUCKET_REMOVE`]), else from a key of its own ([`scripts::REMOVE`]).
    async fn remove_expected(
        &self,
        number: &TrackingNumber,
        expected: &Bytes,
    ) -> Result<Removal, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        if let Some(serial) = self.serial_of(number).filter(|_| is_packed(expected)) {
            if expired(expected, serial) {
                return Ok(Removal::Missing);
            }
            let place = Place::of(number, serial);
            let mut invocation = self.bucket_remove.prepare_invoke();
            invocation
                .key(&place.bucket)
                .key(place.removal_key())
                .arg(&place.field)
                .arg(expected.as_ref())
                .arg(&token)
                .arg(ttl_ms(REMOVAL_MARK_TTL));
            match self.run::<i64>(invocation).await? {
                1 => return Ok(Removal::Removed),
                2 => return Ok(Removal::Changed),
                _ => {} // Not in its bucket: a key of its own, if any.
            }
        }
        let mut invocation = self.remove_script.prepare_invoke();
        invocation
            .key(record_key(number))
            .key(removal_key(number))
            .arg("1")
            .arg(expected.as_ref())
            .arg(token)
            .arg(ttl_ms(REMOVAL_MARK_TTL));
        let outcome: i64 = self.run(invocation).await?;
        Ok(match outcome {
            1 => Removal::Removed,
            2 => Removal::Changed,
            _ => Removal::Missing,
        })
    }
}

/// Sets each entry's outcome from the reply of the call that wrote it: a bucket's script
/// answers per record, a `SET … NX` with `OK` or nothing (taken).
fn settle(
    calls: &[Call<'_>],
    written: &[Vec<usize>],
    replies: Replies,
    outcomes: &mut [Result<bool, StoreError>],
) {
    for ((call, entries), reply) in calls.iter().zip(written).zip(replies) {
        let stored: Result<Vec<bool>, StoreError> =
            reply.and_then(|reply| match (&call.body, reply) {
                (Body::Command(_), Value::Nil) => Ok(vec![false]),
                (Body::Command(_), Value::Okay | Value::SimpleString(_)) => Ok(vec![true]),
                // Every record stored: the count of them.
                (Body::Script { .. }, Value::Int(n)) if n as usize == entries.len() => {
                    Ok(vec![true; entries.len()])
                }
                (Body::Script { .. }, Value::Array(each)) if each.len() == entries.len() => {
                    Ok(each
                        .iter()
                        .map(|stored| matches!(stored, Value::Int(1)))
                        .collect())
                }
                (_, other) => Err(StoreError::Corrupt(format!(
                    "Redis answered a record write with {other:?}"
                ))),
            });
        match stored {
            Ok(stored) => {
                for (&at, stored) in entries.iter().zip(stored) {
                    outcomes[at] = Ok(stored);
                }
            }
            Err(err) => {
                for &at in entries {
                    outcomes[at] = Err(err.clone());
                }
            }
        }
    }
}

/// Whether `entry` goes to a bucket ([`RedisStore::record_calls`]): a record of one of our
/// numbers that is not too long for one.
fn in_bucket(entry: &RecordEntry) -> bool {
    entry.serial.is_some() && buckets::parts(&entry.value).is_some()
}

/// Whether the packed record `value` of `serial` has expired: a bucket keeps it until the
/// bucket's longest-lived record expires, and it is never served after its own expiry. A value
/// that does not say is not expired (reading it will say what is wrong with it).
pub(super) fn expired(value: &[u8], serial: u64) -> bool {
    packed::expires_at_us(value, Some(serial)).is_ok_and(|at| at <= Utc::now().timestamp_micros())
}

/// An expiry in Unix ms, rounded up: a bucket is never gone before its records have expired.
fn expiry_ms(at: DateTime<Utc>) -> i64 {
    let us = at.timestamp_micros();
    (us.div_euclid(1000) + i64::from(us.rem_euclid(1000) > 0)).max(1)
}

/// A `WAIT` may take half the storage timeout, leaving the rest for the writes before it.
fn wait_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Records that fewer replicas hold than asked for are not answered: the caller gets a 503,
/// and its retry a new number (the records written stay, unanswered, until they expire).
fn check_replicas(acked: u32, wanted: u32) -> Result<(), redis::RedisError> {
    if acked >= wanted {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "records not replicated in time",
            format!("{acked} of {wanted} replicas acknowledged"),
        )))
    }
}

fn record_key(tracking_number: &TrackingNumber) -> String {
    let number = tracking_number.as_str();
    let mut key = String::with_capacity(RECORD_PREFIX.len() + number.len());
    key.push_str(RECORD_PREFIX);
    key.push_str(number);
    key
}

/// The mark a removal leaves for [`REMOVAL_MARK_TTL`]: `{tracknum:record:<number>}:removed`.
/// Its hash tag is the record's whole key, so both live in one slot.
pub(super) fn removal_key(tracking_number: &TrackingNumber) -> String {
    format!("{{{}}}:removed", record_key(tracking_number))
}

#[async_trait]
impl RecordStore for RedisStore {
    async fn insert_new(&self, entries: &[RecordEntry]) -> Result<Vec<bool>, StoreError> {
        // All or nothing: the first entry that failed fails them all.
        self.insert_each(entries).await?.into_iter().collect()
    }

    async fn insert_each(
        &self,
        entries: &[RecordEntry],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut cached = self.writer_conn.lock().await;
        let outcome = self
            .bounded(async {
                for tries in 0.. {
                    let conn = match cached.as_mut() {
                        Some(conn) => conn,
                        None => cached.insert(self.link.get().await?),
                    };
                    match self.write_new(conn, entries).await {
                        Ok(outcomes) => return Ok(outcomes),
                        Err(e) => {
                            // The connection may be dead: take a fresh one.
                            *cached = None;
                            if !self.link.sends_again(&e, tries) {
                                return Err(self.failed(e));
                            }
                        }
                    }
                }
                unreachable!("sent at most twice")
            })
            .await;
        if outcome.is_err() {
            *cached = None;
        }
        outcome
    }

    async fn get(&self, tracking_number: &TrackingNumber) -> Result<Option<Bytes>, StoreError> {
        if let Some(serial) = self.serial_of(tracking_number) {
            let place = Place::of(tracking_number, serial);
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(&place.bucket).arg(&place.field).arg(place.tail());
            let (first, tail): (Option<Vec<u8>>, Option<Vec<u8>>) =
                self.query_again(&hmget).await?;
            if let Some(mut value) = first {
                value.extend(tail.unwrap_or_default());
                return Ok((!expired(&value, serial)).then(|| Bytes::from(value)));
            }
            // Not in its bucket: a key of its own (too long for a bucket, or written before
            // buckets), if any.
        }
        let mut get = redis::cmd("GET");
        get.arg(record_key(tracking_number));
        let value: Option<Vec<u8>> = self.query_again(&get).await?;
        Ok(value.map(Bytes::from))
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let number = &entry.tracking_number;
        // A bucket holds packed records only: JSON is a record written before buckets.
        let serial = entry.serial.or_else(|| self.serial_of(number));
        if let Some(serial) = serial.filter(|_| is_packed(expected)) {
            if expired(expected, serial) {
                return Ok(Swap::Changed);
            }
            let place = Place::of(number, serial);
            let mut invocation = self.bucket_replace.prepare_invoke();
            invocation
                .key(&place.bucket)
                .arg(&place.field)
                .arg(expected.as_ref())
                .arg(entry.value.as_ref())
                .arg(expiry_ms(entry.expires_at))
                .arg(LISTPACK_VALUE_MAX);
            match self.run::<i64>(invocation).await? {
                1 => return Ok(Swap::Replaced),
                0 => return Ok(Swap::Changed),
                _ => {} // Not in its bucket: a key of its own, if any.
            }
        }
        self.replace_own(expected, entry).await
    }

    async fn remove(
        &self,
        tracking_number: &TrackingNumber,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        if let Some(expected) = expected {
            return self.remove_expected(tracking_number, expected).await;
        }
        // Whatever it holds: what it holds now, unless that changes meanwhile.
        for _ in 0..8 {
            let Some(current) = self.get(tracking_number).await? else {
                return Ok(Removal::Missing);
            };
            match self.remove_expected(tracking_number, &current).await? {
                Removal::Changed => continue,
                outcome => return Ok(outcome),
            }
        }
        Ok(Removal::Changed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A read of the counter's key: on a cluster it reaches the node that leases serials,
        // where a plain PING would go to every node, replicas included.
        let mut exists = redis::cmd("EXISTS");
        exists.arg(SERIAL_KEY);
        self.query::<i64>(&exists).await.map(drop)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Durability is Redis' own (appendfsync, and WAIT with --redis-wait-replicas).
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64, StoreError> {
        // Redis expires records itself (SET ... PX).
        Ok(0)
    }
}

/// Record keys checked at once ([`RedisStore::recognise`]).
const SCRIPTS_IN_FLIGHT: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::slots;

    #[test]
    fn a_bucket_expires_at_its_records_expiry_rounded_up_to_the_ms() {
        let at = |us| DateTime::from_timestamp_micros(us).unwrap();
        assert_eq!(expiry_ms(at(1_767_225_600_000_000)), 1_767_225_600_000);
        assert_eq!(expiry_ms(at(1_767_225_600_000_001)), 1_767_225_600_001);
        assert_eq!(expiry_ms(at(1_767_225_600_000_999)), 1_767_225_600_001);
        assert_eq!(
            expiry_ms(at(-1)),
            1,
            "never 0 or below: Redis would refuse it"
        );
    }

    #[test]
    fn a_removal_mark_lives_in_its_records_slot() {
        // A script may only touch keys of one slot on a cluster.
        for number in ["MY004RJ37VY0JTIN", "LEGACY00042", "A"] {
            let number = TrackingNumber::parse(number).unwrap();
            assert_eq!(
                slots::slot_of(removal_key(&number).as_bytes()),
                slots::slot_of(record_key(&number).as_bytes())
            );
        }
    }
}
