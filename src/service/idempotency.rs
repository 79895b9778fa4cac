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
pub const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often a waiting retry looks again.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// How long a finished request keeps trying to store its reply while storage is unavailable.
const FINISH_PATIENCE: Duration = Duration::from_secs(10);

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
    /// How long a keyed request's caller waits for it before a 503 (it goes on regardless).
    answer_within: Duration,
}

impl Idempotency {
    pub fn new(
        store: Arc<dyn ReplyStore>,
        ttl: Duration,
        wait: Duration,
        answer_within: Duration,
    ) -> Self {
        Idempotency {
            store,
            ttl,
            wait,
            answer_within,
        }
    }

    pub fn answer_within(&self) -> Duration {
        self.answer_within
    }

    /// Claims `key` for a request with `fingerprint`, or finds the reply to replay.
    pub async fn begin(&self, key: &str, fingerprint: &str) -> Result<Begin, IdempotencyError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.begin_as(key, fingerprint, &token).await
    }

    /// [`Idempotency::begin`] for a holder named by `token`, which may have claimed the key
    /// already and lost track of it (an import resumed after its worker died): a claim with the
    /// same token and inputs is its own.
    pub async fn begin_as(
        &self,
        key: &str,
        fingerprint: &str,
        token: &str,
    ) -> Result<Begin, IdempotencyError> {
        let claim = KeyState::InFlight {
            fingerprint: fingerprint.to_owned(),
            token: token.to_owned(),
        }
        .encode();
        let deadline = Instant::now() + self.wait;
        loop {
            let held = self.store.claim(key, &claim, CLAIM_TTL).await?;
            let Some(held) = held.filter(|held| held.as_ref() != claim.as_slice()) else {
                return Ok(Begin::Run(self.claim_of(
                    key.to_owned(),
                    fingerprint.to_owned(),
                    claim,
                )));
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

/// Stores finished replies. Storage that just failed the request's own work may be busy
/// recovering: a reply is worth a few tries, since without it a retry finds the key claimed
/// until the claim runs out. Failures are logged: the caller has its outcome either way.
async fn complete_patiently(
    store: &dyn ReplyStore,
    done: &[(String, Vec<u8>, Vec<u8>)],
    ttl: Duration,
) {
    let deadline = Instant::now() + FINISH_PATIENCE;
    loop {
        match store.complete_many(done, ttl).await {
            Ok(ours) => {
                if ours.iter().any(|ours| !ours) {
                    tracing::warn!("an idempotency claim ran out before its request finished");
                }
                return;
            }
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(POLL_EVERY * 10).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not store an idempotent reply");
                return;
            }
        }
    }
}

/// An import's order id, to be bound to its row's planned number ([`Idempotency::bind_many`]):
/// the key, the inputs' fingerprint, the row's token (`job:row`), and the reply that names the
/// number.
pub struct Binding {
    pub key: String,
    pub fingerprint: String,
    pub token: String,
    pub body: Bytes,
}

/// What became of a [`Binding`].
#[derive(Debug)]
pub enum Bound {
    /// The key holds this binding's reply: kept now, or by an earlier try of the same row
    /// (a number is planned for one row only, so the same reply is the same row's).
    Ours,
    /// The key holds another reply for the same inputs (an earlier import's number).
    Replay(SavedReply),
}

impl Idempotency {
    /// Binds each order id to its row's number in one step: its reply (status 200) is kept at
    /// once, unless the key holds a state already. There is no claim before and no completion
    /// after, so an import's row costs the store one write, not a claim and then a swap.
    /// The row's record is stored after this: an import that meets the order id in that moment
    /// replays the number a moment before its record can be read. A key still claimed the old
    /// way (before bindings) under this row's own token is swapped for the reply; one claimed
    /// by another holder is in flight.
    pub async fn bind_many(
        &self,
        wanted: Vec<Binding>,
    ) -> Result<Vec<Result<Bound, IdempotencyError>>, StoreError> {
        let replies: Vec<(String, Vec<u8>)> = wanted
            .iter()
            .map(|w| {
                let reply = KeyState::Done(SavedReply {
                    fingerprint: w.fingerprint.clone(),
                    status: 200,
                    body: w.body.clone(),
                })
                .encode();
                (w.key.clone(), reply)
            })
            .collect();
        let held = self.store.keep_new_many(&replies, self.ttl).await?;
        let mut bound = Vec::with_capacity(wanted.len());
        // Keys claimed the old way under this row's own token: their rows, and the swaps of the
        // claim held for the reply.
        let mut takeovers = Vec::new();
        let mut swaps = Vec::new();
        for (at, ((w, (_, reply)), held)) in wanted.iter().zip(&replies).zip(held).enumerate() {
            let Some(held) = held.filter(|held| held.as_ref() != reply.as_slice()) else {
                bound.push(Ok(Bound::Ours));
                continue;
            };
            bound.push(match KeyState::decode(&held) {
                None => Err(StoreError::Corrupt(format!(
                    "idempotency key {:?} holds an unknown state",
                    w.key
                ))
                .into()),
                Some(state) if state.fingerprint() != w.fingerprint => {
                    Err(IdempotencyError::Mismatch)
                }
                Some(KeyState::Done(saved)) => Ok(Bound::Replay(saved)),
                Some(KeyState::InFlight { token, .. }) if token == w.token => {
                    takeovers.push(at);
                    swaps.push((w.key.clone(), held.to_vec(), reply.clone()));
                    Ok(Bound::Ours)
                }
                Some(KeyState::InFlight { .. }) => Err(IdempotencyError::InFlight),
            });
        }
        if !swaps.is_empty() {
            let ours = self.store.complete_many(&swaps, self.ttl).await?;
            for (at, ours) in takeovers.into_iter().zip(ours) {
                if !ours {
                    bound[at] = Err(IdempotencyError::InFlight);
                }
            }
        }
        Ok(bound)
    }

    fn claim_of(&self, key: String, fingerprint: String, claim: Vec<u8>) -> Claim {
        Claim {
            store: self.store.clone(),
            key,
            fingerprint,
            claim,
            ttl: self.ttl,
            settled: false,
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
        let done = [self.done(status, body)];
        complete_patiently(self.store.as_ref(), &done, self.ttl).await;
        // Only now: should this future be dropped mid-way, `Drop` releases the claim.
        self.settled = true;
    }

    /// The key, our claim, and the reply that replaces it.
    fn done(&self, status: u16, body: Bytes) -> (String, Vec<u8>, Vec<u8>) {
        let reply = KeyState::Done(SavedReply {
            fingerprint: self.fingerprint.clone(),
            status,
            body,
        })
        .encode();
        (self.key.clone(), self.claim.clone(), reply)
    }

    /// Frees the key: the request failed, and a retry should run afresh.
    pub async fn release(mut self) {
        if let Err(err) = self.store.release(&self.key, &self.claim).await {
            tracing::warn!(error = %err, "could not release an idempotency key");
        }
        self.settled = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Keys in a map, without expiry: enough to drive the protocol.
    #[derive(Default)]
    struct MapStore(Mutex<HashMap<String, Vec<u8>>>);

    #[async_trait]
    impl ReplyStore for MapStore {
        async fn claim_many(
            &self,
            claims: &[(String, Vec<u8>)],
            _: Duration,
        ) -> Result<Vec<Option<Bytes>>, StoreError> {
            let mut keys = self.0.lock().unwrap();
            Ok(claims
                .iter()
                .map(|(key, claim)| match keys.get(key) {
                    Some(held) => Some(Bytes::copy_from_slice(held)),
                    None => {
                        keys.insert(key.clone(), claim.clone());
                        None
                    }
                })
                .collect())
        }
        async fn complete_many(
            &self,
            done: &[(String, Vec<u8>, Vec<u8>)],
            _: Duration,
        ) -> Result<Vec<bool>, StoreError> {
            let mut keys = self.0.lock().unwrap();
            Ok(done
                .iter()
                .map(|(key, claim, reply)| {
                    let ours = keys.get(key).is_some_and(|held| held == claim);
                    if ours {
                        keys.insert(key.clone(), reply.clone());
                    }
                    ours
                })
                .collect())
        }
        async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
            let mut keys = self.0.lock().unwrap();
            if keys.get(key).is_some_and(|held| held == claim) {
                keys.remove(key);
            }
            Ok(())
        }
    }

    /// A real fingerprint: states store them at their fixed length.
    fn fp(inputs: &str) -> String {
        crate::domain::idempotency::fingerprint("test", inputs.as_bytes())
    }

    fn service(wait: Duration) -> Arc<Idempotency> {
        Arc::new(Idempotency::new(
            Arc::new(MapStore::default()),
            Duration::from_secs(60),
            wait,
            Duration::from_secs(1),
        ))
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_first_request_and_replays_its_reply() {
        let service = service(Duration::from_secs(5));
        let Ok(Begin::Run(claim)) = service.begin("k", &fp("fp")).await else {
            panic!("first runs")
        };
        let retry = tokio::spawn({
            let service = service.clone();
            async move { service.begin("k", &fp("fp")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits while the first runs");
        claim.finish(201, Bytes::from_static(b"{\"n\":1}")).await;
        let Ok(Begin::Replay(reply)) = retry.await.unwrap() else {
            panic!("replayed")
        };
        assert_eq!(
            (reply.status, reply.body.as_ref()),
            (201, &b"{\"n\":1}"[..])
        );
        assert!(matches!(
            service.begin("k", &fp("other")).await,
            Err(IdempotencyError::Mismatch)
        ));
    }

    #[tokio::test]
    async fn a_retry_that_outwaits_the_first_gets_in_flight_and_a_failure_frees_the_key() {
        let service = service(Duration::from_millis(50));
        let Ok(Begin::Run(claim)) = service.begin("k", &fp("fp")).await else {
            panic!("first runs")
        };
        assert!(matches!(
            service.begin("k", &fp("fp")).await,
            Err(IdempotencyError::InFlight)
        ));
        assert!(matches!(
            service.begin("k", &fp("fp2")).await,
            Err(IdempotencyError::Mismatch)
        ));
        claim.release().await;
        let Ok(Begin::Run(claim)) = service.begin("k", &fp("fp2")).await else {
            panic!("runs again")
        };
        drop(claim); // the client went away mid-request
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            service.begin("k", &fp("fp3")).await,
            Ok(Begin::Run(_))
        ));
    }

    fn binding(key: &str, inputs: &str, token: &str, number: &str) -> Binding {
        Binding {
            key: key.into(),
            fingerprint: fp(inputs),
            token: token.into(),
            body: Bytes::from(format!("{{\"tracking_number\":\"{number}\"}}")),
        }
    }

    #[tokio::test]
    async fn an_order_id_is_bound_once_and_then_replayed_to_others() {
        let service = service(Duration::from_millis(50));
        let first = service
            .bind_many(vec![
                binding("a", "in", "job-1:0", "N1"),
                binding("b", "in", "job-1:1", "N2"),
            ])
            .await
            .unwrap();
        assert!(matches!(first[..], [Ok(Bound::Ours), Ok(Bound::Ours)]));
        // The same row tried again (its chunk resumed) finds its own number bound.
        let again = service
            .bind_many(vec![binding("a", "in", "job-1:0", "N1")])
            .await
            .unwrap();
        assert!(matches!(again[..], [Ok(Bound::Ours)]));
        // Another import's row: the bound number, or a mismatch for other inputs.
        let other = service
            .bind_many(vec![
                binding("a", "in", "job-2:0", "N9"),
                binding("b", "other", "job-2:1", "N8"),
            ])
            .await
            .unwrap();
        let Ok(Bound::Replay(saved)) = &other[0] else {
            panic!("replayed: {other:?}")
        };
        assert_eq!(saved.body.as_ref(), b"{\"tracking_number\":\"N1\"}");
        assert!(matches!(other[1], Err(IdempotencyError::Mismatch)));
    }

    /// Claims that live only as long as the process (as the embedded store's do), and a
    /// completion that fails once: the binding's second try must still complete.
    #[derive(Default)]
    struct FailsOnce {
        keys: MapStore,
        failed: std::sync::atomic::AtomicBool,
        completed: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ReplyStore for FailsOnce {
        async fn claim_many(
            &self,
            claims: &[(String, Vec<u8>)],
            ttl: Duration,
        ) -> Result<Vec<Option<Bytes>>, StoreError> {
            self.keys.claim_many(claims, ttl).await
        }
        async fn complete_many(
            &self,
            done: &[(String, Vec<u8>, Vec<u8>)],
            ttl: Duration,
        ) -> Result<Vec<bool>, StoreError> {
            if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Unavailable("the disk did not answer".into()));
            }
            let ours = self.keys.complete_many(done, ttl).await?;
            let completed = ours.iter().filter(|ours| **ours).count();
            self.completed
                .fetch_add(completed, std::sync::atomic::Ordering::SeqCst);
            Ok(ours)
        }
        async fn release(&self, key: &str, claim: &[u8]) -> Result<(), StoreError> {
            self.keys.release(key, claim).await
        }
    }

    #[tokio::test]
    async fn a_binding_whose_completion_failed_completes_when_tried_again() {
        let store = Arc::new(FailsOnce::default());
        let service = Idempotency::new(
            store.clone(),
            Duration::from_secs(60),
            Duration::from_millis(50),
            Duration::from_secs(1),
        );
        assert!(
            service
                .bind_many(vec![binding("a", "in", "job-1:0", "N1")])
                .await
                .is_err()
        );
        let again = service
            .bind_many(vec![binding("a", "in", "job-1:0", "N1")])
            .await
            .unwrap();
        assert!(matches!(again[..], [Ok(Bound::Ours)]));
        // Completed on the second try: a store whose claims live only in memory (the
        // embedded one) keeps the reply on disk only through the completion.
        assert_eq!(store.completed.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_key_claimed_before_bindings_is_taken_over_by_its_own_row_only() {
        let service = service(Duration::from_millis(50));
        // Claims as the version before bindings made them: one of this row, one of another.
        let Ok(Begin::Run(ours)) = service.begin_as("a", &fp("in"), "job-1:0").await else {
            panic!("claimed")
        };
        let Ok(Begin::Run(theirs)) = service.begin_as("b", &fp("in"), "job-9:0").await else {
            panic!("claimed")
        };
        let bound = service
            .bind_many(vec![
                binding("a", "in", "job-1:0", "N1"),
                binding("b", "in", "job-1:1", "N2"),
            ])
            .await
            .unwrap();
        assert!(matches!(
            bound[..],
            [Ok(Bound::Ours), Err(IdempotencyError::InFlight)]
        ));
        let replay = service
            .bind_many(vec![binding("a", "in", "job-2:0", "N3")])
            .await
            .unwrap();
        assert!(
            matches!(&replay[..], [Ok(Bound::Replay(saved))] if saved.body.ends_with(b"\"N1\"}"))
        );
        // Not dropped: a dropped claim is released in the background, racing the test's end.
        std::mem::forget((ours, theirs));
    }

    #[tokio::test]
    async fn a_holder_that_lost_track_of_its_claim_takes_it_back_by_its_token() {
        let service = service(Duration::from_millis(50));
        let Ok(Begin::Run(first)) = service.begin_as("k", &fp("fp"), "job-1:7").await else {
            panic!("first runs")
        };
        std::mem::forget(first); // its worker died holding the claim
        assert!(matches!(
            service.begin_as("k", &fp("fp"), "job-2:7").await,
            Err(IdempotencyError::InFlight)
        ));
        let Ok(Begin::Run(again)) = service.begin_as("k", &fp("fp"), "job-1:7").await else {
            panic!("the same holder runs again")
        };
        again.finish(200, Bytes::from_static(b"{}")).await;
        assert!(matches!(
            service.begin_as("k", &fp("fp"), "job-1:7").await,
            Ok(Begin::Replay(_))
        ));
    }
}
