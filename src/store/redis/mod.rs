//! The Redis backend, on one server or a Redis Cluster ([`link`]).
//!
//! Serials are leased with one Lua script ([`scripts::LEASE`]) on the counter's node. Its guard
//! against a counter that moved back (a failover that dropped acknowledged writes, a restart
//! without persistence, a flush), so that no serial is ever handed out twice:
//! - serials count µs of Redis' own clock since [`FLOOR_EPOCH_UNIX_SECS`]; a lease never starts
//!   below that clock, nor below the end of the caller's last lease;
//! - a lease never ends past the clock plus [`LEAD`] (a fleet leasing over 10^6 serials a
//!   second waits for the clock once the lead is used up, and a lease the lead has no room for
//!   is cut to the room there is): whatever any master ever leased lies below its clock plus
//!   `LEAD`;
//! - the script remembers the replication history of the node it ran on (`master_replid`,
//!   which changes on every promotion and restart, and is gone after a flush). On a node with
//!   another history, or whose counter is below the caller's last lease, writes may have been
//!   lost: the counter first jumps to the clock plus `LEAD` plus [`SKEW_MARGIN`], past anything
//!   the old master can have leased while its clock was not ahead of this one's by more than
//!   the margin plus the time the failover took.
//!
//! Keys (see the README's table): the counter, the secret fingerprint and the history share the
//! hash tag `{tracknum}`, so the script's keys live on one node. Records of our numbers live in
//! buckets of consecutive serials ([`buckets`]); records of numbers registered with PUT, and of
//! the layout before buckets, under a key each. Buckets and idempotency keys spread over every
//! node, and a batch of records, or of an import's claims, is sent in one pipeline per master
//! ([`spread`]).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::Value;
use tokio::sync::Mutex;

use super::{
    FLOOR_EPOCH_UNIX_SECS, LeaseSource, RecordEntry, RecordStore, Removal, ReplyStore, StoreError,
    Swap,
};
use crate::domain::codec::SERIAL_SPACE;
use crate::domain::packed::{self, is_packed};
use crate::domain::{Codec, TrackingNumber};
use buckets::LISTPACK_VALUE_MAX;
use spread::{Body, Call, Lua, Replies};

mod buckets;
mod imports;
pub mod link;
mod scripts;
mod slots;
mod spread;

pub use buckets::{BUCKET_SERIALS, Place};
pub use link::{Conn, Link, RedisTarget};

/// Where the record of `number` is kept in a bucket, if `number` is one of `codec`'s: for
/// tools and tests that look at Redis itself.
pub fn bucket_place(codec: &Codec, number: &TrackingNumber) -> Option<Place> {
    let serial = codec.decode_serial(number.as_str())?;
    Some(Place::of(number, serial))
}

/// The counter, the secret fingerprint and the replication history, in one hash slot.
pub const SERIAL_KEY: &str = "{tracknum}:serial";
const FINGERPRINT_KEY: &str = "{tracknum}:secret-fingerprint";
pub const HISTORY_KEY: &str = "{tracknum}:history";
/// Records that keep a key of their own (see [`buckets`]).
const RECORD_PREFIX: &str = "tracknum:record:";
/// Idempotency keys, one Redis key each.
const REPLY_PREFIX: &str = "tracknum:idempotency:";

/// How far a lease may run ahead of Redis' clock: 60 s of serials. A fleet leasing faster than
/// the clock (over 10^6 serials a second) waits for it once this lead is used up.
pub const LEAD: u64 = 60_000_000;
/// How much further a jump goes, for clocks of Redis nodes that disagree: 100 ms. Leases wait
/// this long for the clock after a jump.
pub const SKEW_MARGIN: u64 = 100_000;
/// The least a lease is cut to when the lead has no room for all of it: 10 ms of serials. A
/// fleet at the clock's pace then leases about a hundred times a second, not once per µs.
pub const LEASE_LEAST: u64 = 10_000;

/// How long a removal's mark lives ([`scripts::REMOVE`]): longer than any call may go on
/// (`--storage-timeout`, or 25 s for a keyed request), so a removal sent again finds it.
const REMOVAL_MARK_TTL: Duration = Duration::from_secs(60);

/// Connections in the pool to a single Redis.
const POOL_SIZE: usize = 16;

/// How the store talks to Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The fingerprint of `--secret`, kept beside the counter so that instances with another
    /// secret are refused.
    pub fingerprint: String,
    /// The longest any call may take.
    pub timeout: Duration,
    /// Replicas that must hold a batch of new records before they are answered (`WAIT`); 0
    /// answers once the master has them.
    pub wait_replicas: u32,
    /// Reads a number's serial, which says where its record is ([`buckets`]): the codec of
    /// `--secret`.
    pub codec: Codec,
}

pub struct RedisStore {
    link: Link,
    lease_script: redis::Script,
    bucket_insert: Lua,
    bucket_replace: redis::Script,
    bucket_remove: redis::Script,
    replace_script: redis::Script,
    remove_script: redis::Script,
    own_script: redis::Script,
    release_script: redis::Script,
    /// [`scripts::CLAIM_MANY`] and [`scripts::COMPLETE_MANY`], for pipelines ([`spread`]).
    claim_many: Lua,
    /// Whether claims go by [`scripts::CLAIM_MANY`]: the server refused `SET … NX … GET`
    /// (older than Redis 7.0). Until then, a claim is that one command ([`RedisStore::claim_each`]).
    claims_by_script: AtomicBool,
    complete_many: Lua,
    options: RedisOptions,
    /// The record writer's own connection, kept across batches so no batch pays for a pool
    /// check (and so `WAIT` covers the writes it made on it).
    writer_conn: Mutex<Option<Conn>>,
    /// On a cluster: which master serves which slot, to write one pipeline per master.
    slots: slots::SlotCache,
}

impl RedisStore {
    /// Builds the store; connects lazily, so a Redis that is down now is retried later.
    pub fn new(target: &RedisTarget, options: RedisOptions) -> anyhow::Result<Self> {
        Ok(RedisStore {
            link: Link::new(target, POOL_SIZE, options.timeout)?,
            lease_script: redis::Script::new(scripts::LEASE),
            bucket_insert: Lua::new(scripts::BUCKET_INSERT),
            bucket_replace: redis::Script::new(scripts::BUCKET_REPLACE),
            bucket_remove: redis::Script::new(scripts::BUCKET_REMOVE),
            replace_script: redis::Script::new(scripts::REPLACE),
            remove_script: redis::Script::new(scripts::REMOVE),
            own_script: redis::Script::new(scripts::OWN),
            release_script: redis::Script::new(scripts::RELEASE),
            claim_many: Lua::new(scripts::CLAIM_MANY),
            claims_by_script: AtomicBool::new(false),
            complete_many: Lua::new(scripts::COMPLETE_MANY),
            options,
            writer_conn: Mutex::new(None),
            slots: slots::SlotCache::default(),
        })
    }

    /// Bounds every call, so a hung Redis becomes an error instead of a hung request.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::deadline::bounded(self.options.timeout, work).await
    }

    /// Maps a driver error, and lets the link replace a connection it broke.
    fn failed(&self, err: redis::RedisError) -> StoreError {
        self.link.failed(&err);
        StoreError::unavailable(err)
    }

    /// Runs one command on a connection, bounded.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        self.bounded(async {
            let mut conn = self.link.get().await?;
            cmd.query_async(&mut conn).await.map_err(|e| self.failed(e))
        })
        .await
    }

    /// [`RedisStore::query`] for a command that may run twice (a read): sent again on a fresh
    /// connection when the first broke ([`Link::sends_again`]).
    async fn query_again<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            for tries in 0.. {
                let mut conn = self.link.get().await?;
                match cmd.query_async(&mut conn).await {
                    Err(e) if self.link.sends_again(&e, tries) => continue,
                    outcome => return outcome.map_err(|e| self.failed(e)),
                }
            }
            unreachable!("sent at most twice")
        })
        .await
    }

    /// Runs a pipeline on a connection, bounded.
    async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            let mut conn = self.link.get().await?;
            pipe.query_async(&mut conn)
                .await
                .map_err(|e| self.failed(e))
        })
        .await
    }

    /// Runs a prepared script invocation on a connection, bounded, as
    /// [`RedisStore::query_again`]: each script recognises a run of its own before
    /// (`scripts.rs`).
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            for tries in 0.. {
                let mut conn = self.link.get().await?;
                match invocation.invoke_async(&mut conn).await {
                    Err(e) if self.link.sends_again(&e, tries) => continue,
                    outcome => return outcome.map_err(|e| self.failed(e)),
                }
            }
            unreachable!("sent at most twice")
        })
        .await
    }

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
    async fn recognise(
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

    /// Sends `calls` ([`spread`]) on a connection from the pool, bounded: on one server sent
    /// again on a fresh connection when the first broke (every call sent this way may run
    /// twice). Each call's reply; an error when all failed.
    async fn spread(&self, calls: &[Call<'_>]) -> Result<Replies, StoreError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async {
            for tries in 0.. {
                let mut conn = self.link.get().await?;
                let sent = match &mut conn {
                    Conn::Cluster(cluster) => {
                        let (replies, failure) =
                            spread::on_cluster(cluster, &self.slots, calls).await;
                        match failure {
                            Some(err) if replies.iter().all(Result::is_err) => Err(err),
                            Some(err) => {
                                self.link.failed(&err);
                                Ok(replies)
                            }
                            None => Ok(replies),
                        }
                    }
                    conn => spread::on_one_server(conn, calls, None)
                        .await
                        .map(|(replies, _)| replies),
                };
                match sent {
                    Err(e) if self.link.sends_again(&e, tries) => continue,
                    outcome => return outcome.map_err(|e| self.failed(e)),
                }
            }
            unreachable!("sent at most twice")
        })
        .await
    }

    /// Makes claims go by script from now on, as on a server older than Redis 7.0 (which is
    /// how tests reach that path on a newer one).
    pub fn claim_by_script(&self) {
        self.claims_by_script.store(true, Ordering::Relaxed);
    }

    /// Claims each key unless it holds a state: per key what it held (nil: claimed now), or why
    /// its call failed. A `SET … NX PX … GET` per key, one pipeline per master: a plain
    /// command costs Redis a third of what a script's `GET` and `SET` cost. A server older than
    /// Redis 7.0 refuses that form, and from then on claims go by script, a call per group of
    /// keys ([`spread::key_groups`]). Keys the refused try set anyway (on a cluster's newer
    /// masters) hold the caller's own claim, which the script gives back as held, and the caller
    /// takes as its own.
    async fn claim_each(
        &self,
        claims: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Replies, StoreError> {
        let ttl = ttl_ms(ttl);
        if !self.claims_by_script.load(Ordering::Relaxed) {
            let calls: Vec<Call<'_>> = claims
                .iter()
                .map(|(key, claim)| {
                    let key = reply_key(key);
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key)
                        .arg(claim.as_slice())
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .arg("GET");
                    Call {
                        key,
                        body: Body::Command(cmd),
                    }
                })
                .collect();
            let held = self.spread(&calls).await?;
            if !held
                .iter()
                .any(|reply| matches!(reply, Err(err) if spread::is_syntax_refusal(err)))
            {
                return Ok(held);
            }
            tracing::info!(
                "Redis refused SET … NX … GET (it is older than 7.0): claims go by script"
            );
            self.claim_by_script();
        }
        let keyed = claims
            .iter()
            .map(|(key, claim)| (reply_key(key), vec![Bytes::copy_from_slice(claim)]));
        let ttl = Bytes::from(ttl.to_string());
        self.per_key(&self.claim_many, ttl, keyed.collect()).await
    }

    /// Runs `lua`, a script over many keys (`KEYS`; `ARGV` = `first`, then each key's own
    /// arguments in turn) that answers an array with an element per key, on every key of
    /// `keyed`: a call per group of keys one call may take ([`spread::key_groups`]), all in one
    /// pipeline per master. Returns each key's element, or why its call failed.
    async fn per_key(
        &self,
        lua: &Lua,
        first: Bytes,
        keyed: Vec<(String, Vec<Bytes>)>,
    ) -> Result<Replies, StoreError> {
        let keys: Vec<String> = keyed.iter().map(|(key, _)| key.clone()).collect();
        let groups = spread::key_groups(&keys, self.link.is_cluster());
        let calls: Vec<Call<'_>> = groups
            .iter()
            .map(|group| {
                let mut args = vec![first.clone()];
                for &at in group {
                    args.extend(keyed[at].1.iter().cloned());
                }
                Call {
                    key: keys[group[0]].clone(),
                    body: Body::Script {
                        lua,
                        more_keys: group[1..].iter().map(|&at| keys[at].clone()).collect(),
                        args,
                    },
                }
            })
            .collect();
        let mut replies: Replies = keys.iter().map(|_| Ok(Value::Nil)).collect();
        for (group, reply) in groups.iter().zip(self.spread(&calls).await?) {
            let elements = match reply {
                Ok(Value::Array(elements)) if elements.len() == group.len() => elements,
                Ok(other) => {
                    let err = StoreError::Corrupt(format!(
                        "Redis answered a call on {} keys with {other:?}",
                        group.len()
                    ));
                    for &at in group {
                        replies[at] = Err(err.clone());
                    }
                    continue;
                }
                Err(err) => {
                    for &at in group {
                        replies[at] = Err(err.clone());
                    }
                    continue;
                }
            };
            for (&at, element) in group.iter().zip(elements) {
                replies[at] = Ok(element);
            }
        }
        Ok(replies)
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
fn expired(value: &[u8], serial: u64) -> bool {
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

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The lease script refuses with `TRACKNUM_SECRET_MISMATCH <stored fingerprint>` or with
/// `TRACKNUM_AHEAD <µs>` (the lease would run too far ahead of the clock: retry that much later).
fn lease_error(err: redis::RedisError, ours: &str) -> StoreError {
    let text = err.to_string();
    if let Some(at) = text.find("TRACKNUM_AHEAD") {
        let micros = text[at + "TRACKNUM_AHEAD".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|token| !token.is_empty())
            .and_then(|token| token.parse().ok())
            .unwrap_or(1000);
        return StoreError::WaitForClock(Duration::from_micros(micros));
    }
    match text.find("TRACKNUM_SECRET_MISMATCH") {
        Some(at) => {
            let rest = &text[at + "TRACKNUM_SECRET_MISMATCH".len()..];
            let stored = rest
                .split(|c: char| !c.is_ascii_alphanumeric())
                .find(|token| !token.is_empty())
                .unwrap_or("");
            StoreError::SecretMismatch {
                stored: stored.to_owned(),
                ours: ours.to_owned(),
            }
        }
        None => StoreError::Unavailable(text),
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
fn removal_key(tracking_number: &TrackingNumber) -> String {
    format!("{{{}}}:removed", record_key(tracking_number))
}

fn reply_key(key: &str) -> String {
    format!("{REPLY_PREFIX}{key}")
}

#[async_trait]
impl LeaseSource for RedisStore {
    /// The lease script's lead and jump guard a counter that moved back.
    fn paced_in(&self) -> Option<u64> {
        None
    }

    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let fingerprint = &self.options.fingerprint;
        let (start, end): (u64, u64) = self
            .bounded(async {
                let mut conn = self.link.get().await?;
                let reply = self
                    .lease_script
                    .key(SERIAL_KEY)
                    .key(FINGERPRINT_KEY)
                    .key(HISTORY_KEY)
                    .arg(size)
                    .arg(floor)
                    .arg(FLOOR_EPOCH_UNIX_SECS)
                    .arg(fingerprint)
                    .arg(LEAD)
                    .arg(SKEW_MARGIN)
                    .arg(LEASE_LEAST)
                    .invoke_async(&mut conn)
                    .await;
                reply.map_err(|e| {
                    self.link.failed(&e);
                    lease_error(e, fingerprint)
                })
            })
            .await?;
        // Defence in depth: never accept a block below one this instance already used.
        if start < floor || end > SERIAL_SPACE || start >= end || end - start > size {
            return Err(StoreError::Corrupt(format!(
                "Redis leased {start}..{end} for {size} serials: below this instance's floor {floor}, past the serial space or longer than asked"
            )));
        }
        Ok(start..end)
    }
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

#[async_trait]
impl ReplyStore for RedisStore {
    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
        let mut invocation = self.release_script.prepare_invoke();
        invocation.key(reply_key(key)).arg(claim);
        let _: i64 = self.run(invocation).await?;
        Ok(())
    }

    // A command per key, one pipeline per master ([`RedisStore::claim_each`]).
    async fn claim_many(
        &self,
        claims: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let held = self.claim_each(claims, ttl).await?;
        held.into_iter()
            .map(|reply| match reply? {
                Value::Nil => Ok(None),
                Value::BulkString(held) => Ok(Some(Bytes::from(held))),
                other => Err(StoreError::Corrupt(format!(
                    "Redis answered a claim with {other:?}"
                ))),
            })
            .collect()
    }

    /// A claim here lasts as a reply does (in Redis, for its ttl): the claim alone keeps it.
    async fn keep_new_many(
        &self,
        replies: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        self.claim_many(replies, ttl).await
    }

    async fn complete_many(
        &self,
        done: &[(String, Vec<u8>, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let ttl = Bytes::from(ttl_ms(ttl).to_string());
        let keyed = done.iter().map(|(key, claim, reply)| {
            let args = vec![Bytes::copy_from_slice(claim), Bytes::copy_from_slice(reply)];
            (reply_key(key), args)
        });
        let ours = self
            .per_key(&self.complete_many, ttl, keyed.collect())
            .await?;
        ours.into_iter()
            .map(|reply| match reply? {
                Value::Int(ours) => Ok(ours == 1),
                other => Err(StoreError::Corrupt(format!(
                    "Redis answered a completion with {other:?}"
                ))),
            })
            .collect()
    }
}

/// Record keys checked at once ([`RedisStore::recognise`]).
const SCRIPTS_IN_FLIGHT: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

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
