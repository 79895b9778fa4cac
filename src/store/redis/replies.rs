//! Idempotency replies on Redis ([`ReplyStore`]): claims, completions and releases of keys.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;

use super::spread::{Body, Call, Replies};
use super::{REPLY_PREFIX, RedisStore, spread};
use crate::store::{ReplyStore, StoreError};

impl RedisStore {
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
    pub(super) async fn claim_each(
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
}

pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn reply_key(key: &str) -> String {
    format!("{REPLY_PREFIX}{key}")
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
