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
//! Keys (see the table in docs/guarantees.md): the counter, the secret fingerprint and the
//! history share the hash tag `{tracknum}`, so the script's keys live on one node. Records of
//! our numbers live in buckets of consecutive serials ([`buckets`]); records of numbers
//! registered with PUT, and of the layout before buckets, under a key each. Buckets and
//! idempotency keys spread over every node, and a batch of records, or of an import's claims,
//! is sent in one pipeline per master ([`spread`]).
//!
//! Its rooms: `lease` leases serials; `records` writes and reads records (group commits, swaps,
//! removals); `replies` keeps idempotency replies; `imports` imports' parts and queue. Below
//! them, `spread` sends many calls in one pipeline per master, [`link`] reaches one server or a
//! cluster, and `scripts` holds the Lua.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::Mutex;

use super::StoreError;
use crate::domain::{Codec, TrackingNumber};
use spread::{Body, Call, Lua, Replies};

mod buckets;
mod imports;
mod lease;
pub mod link;
mod records;
mod replies;
mod scripts;
mod slots;
mod spread;

pub use buckets::{BUCKET_SERIALS, Place};
pub use link::{Conn, Link, RedisTarget};
use replies::ttl_ms;

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
}
