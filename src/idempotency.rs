//! Safe retries: the first request with an `Idempotency-Key` claims the key, runs, and leaves
//! its reply under the key for a day; a retry with the same key and inputs gets that reply
//! again, byte for byte. A retry that arrives while the first still runs waits for it (up to a
//! bound, then 409). The key's state lives in the store, so this holds across instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::domain::idempotency::{KeyState, SavedReply};
use crate::store::{ReplyStore, StoreError};

/// How long a claim lives if its request dies without releasing it (a killed instance).
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// How often a waiting retry looks again.
const POLL_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("this Idempotency-Key was used with different inputs")]
    Mismatch,
    #[error("a request with this Idempotency-Key is still being processed")]
    InFlight,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to do with a request that carries a key.
pub enum Begin {
    /// Run it, then settle the claim.
    Run(Claim),
    /// Answer with the reply of the first request.
    Replay(SavedReply),
}

pub struct Idempotency {
    store: Arc<dyn ReplyStore>,
    /// How long replies are kept.
    ttl: Duration,
    /// How long a retry waits for the first request before a 409.
    wait: Duration,
}

impl Idempotency {
    pub fn new(store: Arc<dyn ReplyStore>, ttl: Duration, wait: Duration) -> Self {
        Idempotency { store, ttl, wait }
    }

    /// Claims `key` for a request with `fingerprint`, or finds the reply to replay.
    pub async fn begin(&self, key: &str, fingerprint: &str) -> Result<Begin, IdempotencyError> {
        let claim = KeyState::InFlight {
            fingerprint: fingerprint.to_owned(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }
        .encode();
        let deadline = Instant::now() + self.wait;
        loop {
            let Some(held) = self.store.claim(key, &claim, CLAIM_TTL).await? else {
                return Ok(Begin::Run(Claim {
                    store: self.store.clone(),
                    key: key.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                    claim,
                    ttl: self.ttl,
                    settled: false,
                }));
            };
            let state = KeyState::decode(&held).ok_or_else(|| {
                StoreError::Corrupt(format!("idempotency key {key:?} holds an unknown state"))
            })?;
            if state.fingerprint() != fingerprint {
                return Err(IdempotencyError::Mismatch);
            }
            match state {
                KeyState::Done(reply) => return Ok(Begin::Replay(reply)),
                KeyState::InFlight { .. } if Instant::now() >= deadline => {
                    return Err(IdempotencyError::InFlight);
                }
                KeyState::InFlight { .. } => tokio::time::sleep(POLL_EVERY).await,
            }
        }
    }
}

/// A key claimed by a running request. Settle it with [`Claim::finish`] or [`Claim::release`];
/// dropped unsettled (the client went away mid-request), it is released in the background.
pub struct Claim {
    store: Arc<dyn ReplyStore>,
    key: String,
    fingerprint: String,
    claim: Vec<u8>,
    ttl: Duration,
    settled: bool,
}

impl Claim {
    /// Stores the reply for replays. A failure is logged, not returned: the caller has a good
    /// reply to send, and a retry will find the key claimed until the claim runs out.
    pub async fn finish(mut self, status: u16, body: Bytes) {
        self.settled = true;
        let reply = KeyState::Done(SavedReply {
            fingerprint: std::mem::take(&mut self.fingerprint),
            status,
            body,
        })
        .encode();
        match self
            .store
            .complete(&self.key, &self.claim, &reply, self.ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!("an idempotency claim ran out before its request finished"),
            Err(err) => tracing::warn!(error = %err, "could not store an idempotent reply"),
        }
    }

    /// Frees the key: the request failed, and a retry should run afresh.
    pub async fn release(mut self) {
        self.settled = true;
        if let Err(err) = self.store.release(&self.key, &self.claim).await {
            tracing::warn!(error = %err, "could not release an idempotency key");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (store, key, claim) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.claim),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.release(&key, &claim).await;
            });
        }
    }
}
