//! The Redis backend. Serials are leased with one Lua script that first raises the counter to a
//! floor derived from Redis' own clock, so a Redis that lost its data (restart without
//! persistence, FLUSHALL, a failover dropping the last writes) never hands out a serial again.
//! Keys work unchanged on Redis Cluster: the script's two keys share one hash slot.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use deadpool_redis::{Pool, Runtime};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::{
    FLOOR_EPOCH_UNIX_SECS, LeaseSource, RecordEntry, RecordStore, Removal, ReplyStore, StoreError,
    Swap,
};
use crate::domain::codec::SERIAL_SPACE;

/// The counter and the secret fingerprint, in one hash slot (`{tracknum}`).
const SERIAL_KEY: &str = "{tracknum}:serial";
const FINGERPRINT_KEY: &str = "{tracknum}:secret-fingerprint";
/// Records spread over the cluster: one key each.
const RECORD_PREFIX: &str = "tracknum:record:";
/// Idempotency keys, one Redis key each.
const REPLY_PREFIX: &str = "tracknum:idempotency:";

const LEASE_SCRIPT: &str = r#"
local fp = redis.call('GET', KEYS[2])
if fp and fp ~= ARGV[4] then
  return redis.error_reply('TRACKNUM_SECRET_MISMATCH ' .. fp)
end
if not fp then redis.call('SET', KEYS[2], ARGV[4]) end
local t = redis.call('TIME')
local floor = (tonumber(t[1]) - tonumber(ARGV[3])) * 1000000 + tonumber(t[2])
local caller = tonumber(ARGV[2])
if caller > floor then floor = caller end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < floor then
  redis.call('SET', KEYS[1], string.format('%.0f', floor))
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"#;

/// Compare-and-swap of a record: ARGV = expected JSON, new JSON, new expiry (Unix ms).
const REPLACE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
"#;

/// Delete, optionally conditional: ARGV = '1' and the expected JSON, or '0'.
/// Returns 1 removed, 0 missing, 2 changed.
const REMOVE_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if ARGV[1] == '1' and current ~= ARGV[2] then return 2 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Claim an idempotency key unless it holds a state: ARGV = claim, ttl ms.
const CLAIM_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

/// Swap our claim for the reply: ARGV = claim, reply, ttl ms. Returns 1 when the claim was ours.
const COMPLETE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Drop our claim: ARGV = claim.
const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

pub struct RedisStore {
    pool: Pool,
    lease_script: redis::Script,
    replace_script: redis::Script,
    remove_script: redis::Script,
    claim_script: redis::Script,
    complete_script: redis::Script,
    release_script: redis::Script,
    fingerprint: String,
    timeout: Duration,
    /// The record writer's own connection, kept across batches so no batch pays for a pool check.
    writer_conn: Mutex<Option<MultiplexedConnection>>,
}

/// A pool of up to `size` connections to `url`, connecting lazily, where getting, opening or
/// checking a connection never takes longer than `timeout`.
pub fn bounded_pool(
    url: &str,
    size: usize,
    timeout: Duration,
) -> Result<deadpool_redis::Pool, deadpool_redis::CreatePoolError> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool = deadpool_redis::PoolConfig::new(size);
    pool.timeouts.wait = Some(timeout);
    pool.timeouts.create = Some(timeout);
    pool.timeouts.recycle = Some(timeout);
    config.pool = Some(pool);
    config.create_pool(Some(Runtime::Tokio1))
}

impl RedisStore {
    /// Builds the store; connects lazily, so a Redis that is down now is retried later.
    pub fn new(url: &str, fingerprint: String, timeout: Duration) -> anyhow::Result<Self> {
        let pool = bounded_pool(url, 16, timeout)
            .map_err(|e| anyhow::anyhow!("invalid --redis-url: {e}"))?;
        Ok(RedisStore {
            pool,
            lease_script: redis::Script::new(LEASE_SCRIPT),
            replace_script: redis::Script::new(REPLACE_SCRIPT),
            remove_script: redis::Script::new(REMOVE_SCRIPT),
            claim_script: redis::Script::new(CLAIM_SCRIPT),
            complete_script: redis::Script::new(COMPLETE_SCRIPT),
            release_script: redis::Script::new(RELEASE_SCRIPT),
            fingerprint,
            timeout,
            writer_conn: Mutex::new(None),
        })
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(StoreError::unavailable)
    }

    /// Bounds every call, so a hung Redis becomes an error instead of a hung request.
    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        super::deadline::bounded(self.timeout, work).await
    }

    /// Runs a prepared script invocation on a pooled connection, bounded.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            invocation
                .invoke_async(&mut *conn)
                .await
                .map_err(StoreError::unavailable)
        })
        .await
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The script refuses a different secret with `TRACKNUM_SECRET_MISMATCH <stored fingerprint>`.
fn lease_error(err: redis::RedisError, ours: &str) -> StoreError {
    let text = err.to_string();
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

fn record_key(tracking_number: &str) -> String {
    let mut key = String::with_capacity(RECORD_PREFIX.len() + tracking_number.len());
    key.push_str(RECORD_PREFIX);
    key.push_str(tracking_number);
    key
}

fn reply_key(key: &str) -> String {
    format!("{REPLY_PREFIX}{key}")
}

#[async_trait]
impl LeaseSource for RedisStore {
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let end: u64 = self
            .bounded(async {
                let mut conn = self.conn().await?;
                self.lease_script
                    .key(SERIAL_KEY)
                    .key(FINGERPRINT_KEY)
                    .arg(size)
                    .arg(floor)
                    .arg(FLOOR_EPOCH_UNIX_SECS)
                    .arg(&self.fingerprint)
                    .invoke_async(&mut *conn)
                    .await
                    .map_err(|e| lease_error(e, &self.fingerprint))
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
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut cached = self.writer_conn.lock().await;
        let mut conn = match cached.as_ref() {
            Some(conn) => conn.clone(),
            None => {
                let fresh = self.bounded(self.conn()).await?;
                let fresh: MultiplexedConnection = (*fresh).clone();
                *cached = Some(fresh.clone());
                fresh
            }
        };
        let now = Utc::now();
        let mut pipe = redis::pipe();
        for entry in entries {
            let ttl_ms = (entry.expires_at - now).num_milliseconds().max(1);
            pipe.cmd("SET")
                .arg(record_key(&entry.tracking_number))
                .arg(entry.json.as_ref())
                .arg("PX")
                .arg(ttl_ms)
                .arg("NX");
        }
        let replies: Result<Vec<Option<String>>, StoreError> = self
            .bounded(async {
                pipe.query_async(&mut conn)
                    .await
                    .map_err(StoreError::unavailable)
            })
            .await;
        match replies {
            Ok(replies) => Ok(replies.into_iter().map(|r| r.is_some()).collect()),
            Err(err) => {
                // The connection may be dead: take a fresh one next time.
                *cached = None;
                Err(err)
            }
        }
    }

    async fn get(&self, tracking_number: &str) -> Result<Option<Bytes>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let value: Option<Vec<u8>> = conn
                .get(record_key(tracking_number))
                .await
                .map_err(StoreError::unavailable)?;
            Ok(value.map(Bytes::from))
        })
        .await
    }

    async fn replace(&self, expected: &Bytes, entry: &RecordEntry) -> Result<Swap, StoreError> {
        let mut invocation = self.replace_script.prepare_invoke();
        invocation
            .key(record_key(&entry.tracking_number))
            .arg(expected.as_ref())
            .arg(entry.json.as_ref())
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
        tracking_number: &str,
        expected: Option<&Bytes>,
    ) -> Result<Removal, StoreError> {
        let mut invocation = self.remove_script.prepare_invoke();
        invocation.key(record_key(tracking_number));
        match expected {
            Some(expected) => invocation.arg("1").arg(expected.as_ref()),
            None => invocation.arg("0"),
        };
        let outcome: i64 = self.run(invocation).await?;
        Ok(match outcome {
            1 => Removal::Removed,
            2 => Removal::Changed,
            _ => Removal::Missing,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        // Durability is Redis' own (appendfsync); nothing is buffered here.
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
}
