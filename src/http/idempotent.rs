//! Runs an issuing handler under its `Idempotency-Key`, if the request has one: the first
//! request runs and its reply is kept; a retry gets the kept reply (with
//! `Idempotent-Replayed: true`); a key reused for other inputs is a 422; a retry that outwaits
//! a first request still running is a 409.

use bytes::Bytes;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

use super::{Problem, SharedState};
use crate::domain::idempotency::check_key;
use crate::idempotency::{Begin, IdempotencyError};

pub const HEADER: &str = "Idempotency-Key";

/// Checks an `Idempotency-Key` header value.
pub fn key(value: Option<String>) -> Result<Option<String>, Problem> {
    match value {
        None => Ok(None),
        Some(value) => match check_key(value.as_bytes()) {
            Ok(_) => Ok(Some(value)),
            Err(message) => Err(Problem::invalid_header(HEADER, message)),
        },
    }
}

/// Runs `run` (which answers with a status and a JSON body) at most once per key, and turns
/// its outcome into a response with `reply`.
pub async fn respond<Run>(
    state: &SharedState,
    key: Option<String>,
    fingerprint: impl FnOnce() -> String,
    run: Run,
    reply: fn(StatusCode, Bytes) -> Response,
) -> Response
where
    Run: Future<Output = Result<(StatusCode, Bytes), Problem>>,
{
    let Some(key) = key else {
        return match run.await {
            Ok((status, body)) => reply(status, body),
            Err(problem) => problem.into_response(),
        };
    };
    let claim = match state.idempotency.begin(&key, &fingerprint()).await {
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
        Err(err) => return refused(err).into_response(),
    };
    match run.await {
        Ok((status, body)) => {
            claim.finish(status.as_u16(), body.clone()).await;
            reply(status, body)
        }
        Err(problem) => {
            claim.release().await;
            problem.into_response()
        }
    }
}

fn refused(err: IdempotencyError) -> Problem {
    match err {
        IdempotencyError::Mismatch => Problem::unprocessable(
            "urn:tracknum:problem:idempotency-key-reused",
            "Idempotency-Key reused",
            format!("{err}; use a new key for a new request"),
        ),
        IdempotencyError::InFlight => Problem::conflict(
            "urn:tracknum:problem:idempotency-key-in-flight",
            "Request in progress",
            format!("{err}; retry shortly to get its reply"),
        )
        .retry_after(1),
        IdempotencyError::Store(err) => err.into(),
    }
}
