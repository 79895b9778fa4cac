//! Idempotency keys in the embedded store. Claims live in memory: one process owns the data
//! dir, so a claim never needs to outlive it. Replies are rows of OTHERS, written behind like
//! records.
//!
//! A reply is stored under its key as it is, `~reply:` and the key. Keys that come in order (an
//! import's order ids, and most platforms' order numbers) then sit side by side in the B-tree,
//! and a commit rewrites a page for every few dozen replies. Until December 2026 every reply
//! was stored under a digest of its key, `~idempotency:` and 32 hex digits. Random names put
//! each reply of a commit on a page of its own: 300,000 order ids cost 288,000 page writes, and
//! an import ran at a third of its speed.
//!
//! A key too long for a stored name ([`MAX_NAME`]) is still stored under its digest. A data dir
//! written before keeps until when the replies of shorter keys under digests may live
//! ([`LEGACY_REPLIES_UNTIL`], measured once, at the first start that knows it). Until then, a
//! short key not found under its name is looked for under its digest too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use redb::{Database, ReadableTable};

use super::{EmbeddedStore, META, OTHERS, decode_value};
use crate::store::memtable::Pending;
use crate::store::{ReplyStore, StoreError};

/// Where replies are stored under their keys.
const NAME_PREFIX: &str = "~reply:";
/// Where replies are stored under digests of their keys: every key's until December 2026, and
/// a key too long for a name since.
const DIGEST_PREFIX: &str = "~idempotency:";
/// The longest stored name: a stored value gives its name's length in one byte.
const MAX_NAME: usize = u8::MAX as usize;
/// Kept in META: until when (ms since the epoch, 8 bytes big-endian) replies of keys that now
/// have a name of their own may still live under digests.
const LEGACY_REPLIES_UNTIL: &str = "legacy_replies_until";

/// The name a key's reply is stored under.
fn reply_name(key: &str) -> String {
    if NAME_PREFIX.len() + key.len() <= MAX_NAME {
        format!("{NAME_PREFIX}{key}")
    } else {
        digest_name(key)
    }
}

/// The name of a key's reply stored under its digest.
fn digest_name(key: &str) -> String {
    let digest = crate::domain::idempotency::fingerprint("key", key.as_bytes());
    format!("{DIGEST_PREFIX}{digest}")
}

/// Whether a key's reply may also be under its digest: its own name is not the digest, and
/// the data dir may still hold replies from before names.
fn may_be_under_digest(key: &str, legacy_until: i64, now_ms: i64) -> bool {
    now_ms < legacy_until && NAME_PREFIX.len() + key.len() <= MAX_NAME
}

/// Until when the data dir's replies from before names may live: kept, or measured now (the
/// latest expiry among its replies under digests; a new data dir has none) and kept.
pub(super) fn settle_legacy_replies(db: &Database) -> anyhow::Result<i64> {
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    let until = {
        let mut meta = tx.open_table(META)?;
        let kept = meta
            .get(LEGACY_REPLIES_UNTIL)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok().map(i64::from_be_bytes));
        match kept {
            Some(until) => until,
            None => {
                let others = tx.open_table(OTHERS)?;
                let mut until = i64::MIN;
                // ';' follows ':': the range holds every name under the digest prefix.
                let end = format!("{};", DIGEST_PREFIX.trim_end_matches(':'));
                for row in others.range(DIGEST_PREFIX..end.as_str())? {
                    let (_, value) = row?;
                    // A corrupt reply is never served: it need not be looked for.
                    if let Ok(stored) = decode_value(value.value()) {
                        until = until.max(stored.expires_ms);
                    }
                }
                meta.insert(LEGACY_REPLIES_UNTIL, until.to_be_bytes().as_slice())?;
                until
            }
        }
    };
    tx.commit()?;
    Ok(until)
}

/// Past this many claims held at once, claims that ran out are dropped.
const MAX_LIVE_CLAIMS: usize = 10_000;

/// Idempotency keys claimed by requests of this process, each with when its claim runs out.
#[derive(Default)]
pub(super) struct Claims {
    held: HashMap<String, (Vec<u8>, std::time::Instant)>,
    /// The map's size at which claims that ran out are dropped next (0: at the next claim).
    sweep_at: usize,
}

fn holds_claim(
    claims: &HashMap<String, (Vec<u8>, std::time::Instant)>,
    key: &str,
    claim: &[u8],
) -> bool {
    claims.get(key).is_some_and(|(held, _)| held == claim)
}

impl EmbeddedStore {
    /// The stored replies of `keys`: under their names, and under their digests while replies
    /// from before names may live.
    async fn replies(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut found = self
            .get_rows(keys.iter().map(|key| reply_name(key)).collect())
            .await?;
        let legacy_until = self.legacy_replies_until.load(Ordering::Relaxed);
        let now = Utc::now().timestamp_millis();
        let missing: Vec<usize> = (0..keys.len())
            .filter(|&i| found[i].is_none() && may_be_under_digest(keys[i], legacy_until, now))
            .collect();
        if !missing.is_empty() {
            let digests = missing.iter().map(|&i| digest_name(keys[i])).collect();
            for (i, reply) in missing.into_iter().zip(self.get_rows(digests).await?) {
                found[i] = reply;
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl ReplyStore for EmbeddedStore {
    async fn claim_many(
        &self,
        wanted: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        // Checked in this order under the lock, and `complete` stores the reply before it drops
        // the claim: a key is never seen as neither claimed nor done while its reply is written.
        let now = std::time::Instant::now();
        let mut claims = self.claims.lock().await;
        if claims.held.len() > claims.sweep_at {
            claims.held.retain(|_, (_, until)| *until > now);
            // Swept again only once the map has doubled: never a sweep per claim.
            claims.sweep_at = MAX_LIVE_CLAIMS.max(claims.held.len() * 2);
        }
        let mut held: Vec<Option<Bytes>> = wanted
            .iter()
            .map(|(key, _)| match claims.held.get(key) {
                Some((held, until)) if *until > now => Some(Bytes::copy_from_slice(held)),
                _ => None,
            })
            .collect();
        // The replies of the keys not claimed here, in one read.
        let unclaimed: Vec<usize> = (0..wanted.len()).filter(|&i| held[i].is_none()).collect();
        let keys: Vec<&str> = unclaimed.iter().map(|&i| wanted[i].0.as_str()).collect();
        for (i, done) in unclaimed.iter().copied().zip(self.replies(&keys).await?) {
            match done {
                Some(done) => held[i] = Some(done),
                None => {
                    let (key, claim) = &wanted[i];
                    claims.held.insert(key.clone(), (claim.clone(), now + ttl));
                }
            }
        }
        Ok(held)
    }

    async fn complete_many(
        &self,
        done: &[(String, Vec<u8>, Vec<u8>)],
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let ours: Vec<bool> = {
            let claims = self.claims.lock().await;
            done.iter()
                .map(|(key, claim, _)| holds_claim(&claims.held, key, claim))
                .collect()
        };
        let expires_at =
            Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let rows = done
            .iter()
            .zip(&ours)
            .filter(|(_, ours)| **ours)
            .map(|((key, _, reply), _)| {
                let row = Pending {
                    serial: None,
                    expires_ms: expires_at.timestamp_millis(),
                    value: Bytes::copy_from_slice(reply),
                };
                (reply_name(key), row)
            })
            .collect::<Vec<_>>();
        if !rows.is_empty() {
            self.insert_rows(rows, false).await?;
        }
        let mut claims = self.claims.lock().await;
        for ((key, _, _), ours) in done.iter().zip(&ours) {
            if *ours {
                claims.held.remove(key);
            }
        }
        Ok(ours)
    }

    async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
        let mut claims = self.claims.lock().await;
        if holds_claim(&claims.held, key, claim) {
            claims.held.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_reply_name_unless_too_long() {
        assert_eq!(reply_name("a:order:ORD-1"), "~reply:a:order:ORD-1");
        let longest = "k".repeat(MAX_NAME - NAME_PREFIX.len());
        assert_eq!(reply_name(&longest).len(), MAX_NAME);
        let longer = format!("{longest}k");
        assert_eq!(reply_name(&longer), digest_name(&longer));
        assert!(reply_name(&longer).len() <= MAX_NAME);
    }

    #[test]
    fn keys_in_order_have_names_in_order() {
        let names: Vec<String> = (0..1000)
            .map(|i| reply_name(&format!(":order:ORD-{i:09}")))
            .collect();
        assert!(names.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn only_short_keys_are_looked_for_under_digests_and_only_while_old_replies_live() {
        let long = "k".repeat(MAX_NAME);
        assert!(may_be_under_digest("a", 2_000, 1_000));
        assert!(!may_be_under_digest("a", 1_000, 1_000));
        assert!(!may_be_under_digest("a", i64::MIN, 1_000));
        assert!(!may_be_under_digest(&long, 2_000, 1_000));
    }
}
