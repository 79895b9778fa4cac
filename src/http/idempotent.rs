//! Runs a handler under its `Idempotency-Key`, if the request has one: the first request runs
//! and its reply is kept; a retry gets the kept reply (with `Idempotent-Replayed: true`); a key
//! reused for other inputs is a 422; a retry that outwaits a first request still running is a
//! 409. Keys belong to the caller's tenant: two tenants never share one.
//!
//! A keyed request runs in a task of its own, so that its key always ends up holding what
//! really happened, even when the caller has gone or got a 503 because storage was slow: a
//! retry with the key then gets the real outcome instead of doing the work a second time.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use tracing::Instrument;

use super::{Problem, Response, SharedState, request_id};
use crate::domain::IdempotencyKey;
use crate::domain::Principal;
use crate::service::idempotency::{Begin, CLAIM_TTL};
use crate::store::deadline::with_patience;

pub const HEADER: &str = "Idempotency-Key";

/// How the API description words the 409 and the 422 of this module, for every keyed operation.
pub const IN_FLIGHT: &str = "The first request with this `Idempotency-Key` is still running and \
                             did not finish within the wait; retry to get its reply";
pub const KEY_REUSED: &str = "This `Idempotency-Key` was used for a request with other inputs; \
                              nothing was issued";

/// How long the storage calls of a keyed request may take once it runs on its own: a little
/// less than its claim lives, so the claim is still its own when it finishes.
const KEYED_PATIENCE: Duration = Duration::from_secs(CLAIM_TTL.as_secs() * 5 / 6);

/// Checks an `Idempotency-Key` header value.
pub fn key(value: Option<String>) -> Result<Option<IdempotencyKey>, Problem> {
    value
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(|message| Problem::invalid_header(HEADER, message))
}

/// What a handler's work answers: a status and a body, or a problem.
pub type Outcome = Result<(StatusCode, Bytes), Problem>;

/// Runs `run` at most once per key of `who`'s tenant, and turns its outcome into a response
/// with `reply`. `fingerprint` (the request's inputs, digested) is needed with a key only.
pub async fn respond<Run>(
    state: &SharedState,
    who: &Principal,
    key: Option<IdempotencyKey>,
    fingerprint: Option<String>,
    run: Run,
    reply: fn(StatusCode, Bytes) -> Response,
) -> Response
where
    Run: Future<Output = Outcome> + Send + 'static,
{
    let Some(key) = key else {
        return into_response(run.await, reply);
    };
    let claim = match state
        .idempotency
        .begin(&who.scope_key(&key), &fingerprint.unwrap_or_default())
        .await
    {
        Ok(Begin::Run(claim)) => claim,
        Ok(Begin::Replay(saved)) => {
            state.metrics.idempotent_replays.inc();
            let status = StatusCode::from_u16(saved.status).unwrap_or(StatusCode::OK);
            let mut response = reply(status, saved.body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Err(err) => return Problem::from(err).into_response(),
    };
    let work = async move {
        let outcome = run.await;
        match &outcome {
            Ok((status, body)) => claim.finish(status.as_u16(), body.clone()).await,
            Err(_) => claim.release().await,
        }
        outcome
    };
    let work = with_patience(KEYED_PATIENCE, work);
    // The task runs on in the request's span, and with its id for problem bodies.
    let work = work.in_current_span();
    let work = match request_id::current_header() {
        Some(id) => tokio::spawn(request_id::scope(id, work)),
        None => tokio::spawn(work),
    };
    match tokio::time::timeout(state.idempotency.answer_within(), work).await {
        Ok(Ok(outcome)) => into_response(outcome, reply),
        Ok(Err(failed)) => {
            tracing::error!(error = %failed, "a keyed request's task failed");
            Problem::internal().into_response()
        }
        Err(_) => Problem::unavailable(
            "storage is slow; the request goes on, and a retry with the same Idempotency-Key \
             gets its outcome",
        )
        .into_response(),
    }
}

fn into_response(outcome: Outcome, reply: fn(StatusCode, Bytes) -> Response) -> Response {
    match outcome {
        Ok((status, body)) => reply(status, body),
        Err(problem) => problem.into_response(),
    }
}
