//! The Redis backend, on one server or a Redis Cluster ([`link`]).
//!
//! Serials are leased with one Lua script ([`scripts::LEASE`]) on the counter's node. Its guard
//! against a counter that moved back (a failover that dropped acknowledged writes, a restart
//! without persistence, a flush), so that no serial is ever handed out twice:
//! - serials count µs of Redis' own clock since [`FLOOR_EPOCH_UNIX_SECS`]; a lease never starts
//!   below that clock, nor below the end of the caller's last lease;
//! - a lease never ends past the clock plus [`LEAD`] (a fleet leasing over 10^6 serials a
//!   second waits for the clock once the lead is used up): whatever any master ever leased lies
//!   below its clock plus `LEAD`;
//! - the script remembers the replication history of the node it ran on (`master_replid`,
//!   which changes on every promotion and restart, and is gone after a flush). On a node with
//!   another history, or whose counter is below the caller's last lease, writes may have been
//!   lost: the counter first jumps to the clock plus `LEAD` plus [`SKEW_MARGIN`], past anything
//!   the old master can have leased while its clock was not ahead of this one's by more than
//!   the margin plus the time the failover took.
//!
//! Keys (see the README's table): the counter, the secret fingerprint and the history share the
//! hash tag `{tracknum}`, so the script's keys live on one node; records and idempotency keys
//! spread over every node, and a batch of records is written in one pipeline per master.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use tokio::sync::Mutex;

use super::{
    FLOOR_EPOCH_UNIX_SECS, LeaseSource, RecordEntry, RecordStore, Removal, ReplyStore, StoreError,
    Swap,
};
use crate::domain::TrackingNumber;
use crate::domain::codec::SERIAL_SPACE;

mod imports;
pub mod link;
mod scripts;
mod slots;

pub use link::{Conn, Link, RedisTarget};

/// The counter, the secret fingerprint and the replication history, in one hash slot.
pub const SERIAL_KEY: &str = "{tracknum}:serial";
const FINGERPRINT_KEY: &str = "{tracknum}:secret-fingerprint";
pub const HISTORY_KEY: &str = "{tracknum}:history";
/// Records spread over the cluster: one key each.
const RECORD_PREFIX: &str = "tracknum:record:";
/// Idempotency keys, one Redis key each.
const REPLY_PREFIX: &str = "tracknum:idempotency:";

/// How far a lease may run ahead of Redis' clock: 60 s of serials. A fleet leasing faster than
/// the clock (over 10^6 serials a second) waits for it once this lead is used up.
pub const LEAD: u64 = 60_000_000;
/// How much further a jump goes, for clocks of Redis nodes that disagree: 100 ms. Leases wait
/// this long for the clock after a jump.
pub const SKEW_MARGIN: u64 = 100_000;

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
}

pub struct RedisStore {
    link: Link,
    lease_script: redis::Script,
    replace_script: redis::Script,
    remove_script: redis::Script,
    own_script: redis::Script,
    claim_script: redis::Script,
    complete_script: redis::Script,
    release_script: redis::Script,
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
            replace_script: redis::Script::new(scripts::REPLACE),
            remove_script: redis::Script::new(scripts::REMOVE),
            own_script: redis::Script::new(scripts::OWN),
            claim_script: redis::Script::new(scripts::CLAIM),
            complete_script: redis::Script::new(scripts::COMPLETE),
            release_script: redis::Script::new(scripts::RELEASE),
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

    /// `SET key json PX ttl NX` for each entry, pipelined on `conn`: one pipeline on a single
    /// server, one per master on a cluster ([`RedisStore::write_on_cluster`]). Then `WAIT` for
    /// the configured replicas. Per entry: stored, taken, or failed (on a cluster, a node that
    /// fails fails only its own entries); an error when all failed.
    async fn write_new(
        &self,
        conn: &mut Conn,
        entries: &[RecordEntry],
    ) -> Result<Vec<Result<bool, StoreError>>, redis::RedisError> {
        let now = Utc::now();
        let keys: Vec<String> = entries
            .iter()
            .map(|entry| record_key(&entry.tracking_number))
            .collect();
        // The `SET` of the entry at `at`.
        let set = |pipe: &mut redis::Pipeline, at: usize| {
            let entry = &entries[at];
            let ttl_ms = (entry.expires_at - now).num_milliseconds().max(1);
            pipe.cmd("SET")
                .arg(&keys[at])
                .arg(entry.value.as_ref())
                .arg("PX")
                .arg(ttl_ms)
                .arg("NX");
        };
        let wait = self.options.wait_replicas;
        let wait_ms = wait_ms(self.options.timeout);
        match conn {
            Conn::Cluster(cluster) => {
                let (outcomes, failure) = self.write_on_cluster(cluster, &keys, &set).await;
                if let Some(err) = failure {
                    if outcomes.iter().all(Result::is_err) {
                        // The caller reports it to the link.
                        return Err(err);
                    }
                    self.link.failed(&err);
                }
                let mut outcomes = outcomes;
                self.recognise(
                    &Conn::Cluster(cluster.clone()),
                    &keys,
                    entries,
                    &mut outcomes,
                )
                .await?;
                if wait > 0 {
                    // Routed to every master; the answer is the fewest replicas any reached.
                    let acked: u32 = redis::cmd("WAIT")
                        .arg(wait)
                        .arg(wait_ms)
                        .query_async(cluster)
                        .await?;
                    check_replicas(acked, wait)?;
                }
                Ok(outcomes)
            }
            _ => {
                let mut pipe = redis::pipe();
                for at in 0..entries.len() {
                    set(&mut pipe, at);
                }
                let sets: Vec<Option<String>> = if wait == 0 {
                    pipe.query_async(conn).await?
                } else {
                    pipe.cmd("WAIT").arg(wait).arg(wait_ms);
                    let (sets, acked) = split_wait(pipe.query_async(conn).await?)?;
                    check_replicas(acked, wait)?;
                    sets
                };
                let mut outcomes: Vec<_> = sets.into_iter().map(|set| Ok(set.is_some())).collect();
                let recognised = self.recognise(conn, &keys, entries, &mut outcomes).await?;
                if recognised > 0 && wait > 0 {
                    // The pipeline's WAIT came before the writes that recognised them.
                    let acked: u32 = redis::cmd("WAIT")
                        .arg(wait)
                        .arg(wait_ms)
                        .query_async(conn)
                        .await?;
                    check_replicas(acked, wait)?;
                }
                Ok(outcomes)
            }
        }
    }

    /// Of the entries whose `SET … NX` found their key taken, those whose key holds exactly
    /// their own record ([`scripts::OWN`]): written by this very batch, whose pipeline was sent
    /// again after its connection broke. They become stored, not collisions. Run only when a
    /// key was taken, which otherwise never happens; returns how many were recognised.
    async fn recognise(
        &self,
        conn: &Conn,
        keys: &[String],
        entries: &[RecordEntry],
        outcomes: &mut [Result<bool, StoreError>],
    ) -> Result<usize, redis::RedisError> {
        let taken: Vec<usize> = (0..entries.len())
            .filter(|&at| matches!(outcomes[at], Ok(false)))
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
                    .key(&keys[at])
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

    /// Writes records on a cluster: one pipeline per master, as the slot map says, sent
    /// together; what a master refused with a redirect, or could not take, goes again one
    /// pipeline per slot, routed by the client (which follows redirects). `keys` are the
    /// records' keys, and `set` adds the `SET` of the one at an index. Per entry, the outcome;
    /// and the last error, if any.
    async fn write_on_cluster(
        &self,
        cluster: &mut ClusterConnection,
        keys: &[String],
        set: &(dyn Fn(&mut redis::Pipeline, usize) + Sync),
    ) -> (Vec<Result<bool, StoreError>>, Option<redis::RedisError>) {
        let mut outcomes: Vec<Result<bool, StoreError>> = keys.iter().map(|_| Ok(false)).collect();
        let mut again = Vec::new();
        let map = self.slots.current(cluster).await;
        let mut by_master: Vec<Vec<usize>> =
            vec![Vec::new(); map.as_ref().map_or(0, |m| m.masters())];
        for (at, key) in keys.iter().enumerate() {
            let owner = map
                .as_ref()
                .and_then(|map| map.owner(slots::slot_of(key.as_bytes())));
            match owner {
                Some(master) => by_master[master].push(at),
                None => again.push(at),
            }
        }
        if let Some(map) = &map {
            let sends = by_master
                .iter()
                .enumerate()
                .filter(|(_, group)| !group.is_empty())
                .map(|(master, group)| {
                    let mut pipe = redis::pipe();
                    for &at in group {
                        set(&mut pipe, at);
                    }
                    let (host, port) = map.address(master);
                    let route = SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port,
                    };
                    let mut conn = cluster.clone();
                    async move { conn.route_pipeline(pipe, 0, group.len(), route).await }
                });
            let replies = futures_util::future::join_all(sends).await;
            let groups = by_master.iter().filter(|group| !group.is_empty());
            for (group, reply) in groups.zip(replies) {
                match reply {
                    Ok(values) if values.len() == group.len() => {
                        for (&at, value) in group.iter().zip(values) {
                            match value {
                                Value::Nil => outcomes[at] = Ok(false),
                                Value::ServerError(err)
                                    if matches!(err.code(), "MOVED" | "ASK") =>
                                {
                                    again.push(at);
                                }
                                Value::ServerError(err) => {
                                    outcomes[at] = Err(StoreError::Unavailable(format!(
                                        "Redis refused a record: {}",
                                        err.code()
                                    )));
                                }
                                _ => outcomes[at] = Ok(true),
                            }
                        }
                    }
                    // A master we cannot reach (failing over, say): the client's routing decides.
                    _ => again.extend(group),
                }
            }
            if !again.is_empty() {
                self.slots.mark_stale();
            }
        }
        let failure = write_by_slot(cluster, keys, &again, set, &mut outcomes).await;
        (outcomes, failure)
    }
}

/// Writes the entries at `indices` one pipeline per hash slot, routed by the client, and sets
/// their outcomes; returns the last error.
async fn write_by_slot(
    cluster: &mut ClusterConnection,
    keys: &[String],
    indices: &[usize],
    set: &(dyn Fn(&mut redis::Pipeline, usize) + Sync),
    outcomes: &mut [Result<bool, StoreError>],
) -> Option<redis::RedisError> {
    let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
    for &at in indices {
        groups
            .entry(slots::slot_of(keys[at].as_bytes()))
            .or_default()
            .push(at);
    }
    let sends = groups.values().map(|group| {
        let mut pipe = redis::pipe();
        for &at in group {
            set(&mut pipe, at);
        }
        let mut conn = cluster.clone();
        async move { pipe.query_async::<Vec<Option<String>>>(&mut conn).await }
    });
    let replies = futures_util::future::join_all(sends).await;
    let mut failure = None;
    for (group, reply) in groups.values().zip(replies) {
        match reply {
            Ok(sets) => {
                for (&at, set) in group.iter().zip(sets) {
                    outcomes[at] = Ok(set.is_some());
                }
            }
            Err(err) => {
                for &at in group {
                    outcomes[at] = Err(StoreError::unavailable(&err));
                }
                failure = Some(err);
            }
        }
    }
    failure
}

/// A `WAIT` may take half the storage timeout, leaving the rest for the writes before it.
fn wait_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A pipeline's replies: the `SET`s, then the `WAIT`'s count.
fn split_wait(
    mut replies: Vec<redis::Value>,
) -> Result<(Vec<Option<String>>, u32), redis::RedisError> {
    let acked = replies
        .pop()
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "no WAIT reply")))?;
    let acked: u32 = redis::from_redis_value(acked)?;
    let sets = replies
        .into_iter()
        .map(redis::from_redis_value)
        .collect::<Result<Vec<Option<String>>, _>>()?;
    Ok((sets, acked))
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
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let fingerprint = &self.options.fingerprint;
        let end: u64 = self
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
                    .invoke_async(&mut conn)
                    .await;
                reply.map_err(|e| {
                    self.link.failed(&e);
                    lease_error(e, fingerprint)
                })
            })
            .await?;
        let start = end.saturating_sub(size);
        // Defence in depth: never accept a block below one this instance already used.
        if start < floor || end > SERIAL_SPACE {
            return Err(StoreError::Corrupt(format!(
                "Redis leased {start}..{end}, below this instance's floor {floor} or past the serial space"
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
        let mut get = redis::cmd("GET");
        get.arg(record_key(tracking_number));
        let value: Option<Vec<u8>> = self.query_again(&get).await?;
        Ok(value.map(Bytes::from))
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
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

    async fn remove(
        &self,
        tracking_number: &TrackingNumber,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        let mut invocation = self.remove_script.prepare_invoke();
        invocation
            .key(record_key(tracking_number))
            .key(removal_key(tracking_number));
        match expected {
            Some(expected) => invocation.arg("1").arg(expected.as_ref()),
            None => invocation.arg("0").arg(""),
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        invocation.arg(token).arg(ttl_ms(REMOVAL_MARK_TTL));
        let outcome: i64 = self.run(invocation).await?;
        Ok(match outcome {
            1 => Removal::Removed,
            2 => Removal::Changed,
            _ => Removal::Missing,
        })
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
    async fn claim(
        &self,
        key: &str,
        claim: &[u8],
        ttl: Duration,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut invocation = self.claim_script.prepare_invoke();
        invocation.key(reply_key(key)).arg(claim).arg(ttl_ms(ttl));
        let held: Option<Vec<u8>> = self.run(invocation).await?;
        Ok(held.map(Bytes::from))
    }

    async fn complete(
        &self,
        key: &str,
        claim: &[u8],
        reply: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.complete_script.prepare_invoke();
        invocation
            .key(reply_key(key))
            .arg(claim)
            .arg(reply)
            .arg(ttl_ms(ttl));
        let ours: i64 = self.run(invocation).await?;
        Ok(ours == 1)
    }

    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
        let mut invocation = self.release_script.prepare_invoke();
        invocation.key(reply_key(key)).arg(claim);
        let _: i64 = self.run(invocation).await?;
        Ok(())
    }

    // Keys spread over a cluster's nodes: each is its own script call, many in flight.
    async fn claim_many(
        &self,
        claims: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        // Collected first: a stream over a borrowing closure is not `Send` enough.
        let calls: Vec<_> = claims
            .iter()
            .map(|(key, claim)| self.claim(key, claim, ttl))
            .collect();
        stream::iter(calls)
            .buffered(SCRIPTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn complete_many(
        &self,
        done: &[(String, Vec<u8>, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let calls: Vec<_> = done
            .iter()
            .map(|(key, claim, reply)| self.complete(key, claim, reply, ttl))
            .collect();
        stream::iter(calls)
            .buffered(SCRIPTS_IN_FLIGHT)
            .try_collect()
            .await
    }
}

/// Script calls of one batch ([`ReplyStore::claim_many`]) in flight at once.
const SCRIPTS_IN_FLIGHT: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

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
