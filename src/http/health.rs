//! Probes and metrics: `GET /healthz` (alive: the process answers), `GET /readyz` (can issue
//! now: storage answers and the pool holds serials; else 503 with the reason), `GET /metrics`.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde_json::json;

use super::{Call, Response, json_reply, reply};
use crate::metrics;

/// A readiness probe never waits on storage longer than this.
const PING_DEADLINE: Duration = Duration::from_secs(2);

/// `GET /healthz` (and `HEAD`, which load balancers probe with as often).
pub async fn healthz(Call { state, .. }: Call) -> Response {
    let body = json!({ "status": "ok", "serials_in_pool": state.pool.remaining() });
    probe_reply(StatusCode::OK, &body)
}

/// `GET /readyz` (and `HEAD`).
pub async fn readyz(Call { state, .. }: Call) -> Response {
    let serials = state.pool.remaining();
    let ping = tokio::time::timeout(PING_DEADLINE, state.store.ping()).await;
    let reason = match ping {
        Err(_) => Some("storage did not answer in time".to_owned()),
        Ok(Err(err)) => Some(err.probe_reason()),
        Ok(Ok(())) if serials == 0 => Some(
            state
                .refill
                .last_error()
                .unwrap_or_else(|| "waiting for a block of serials".into()),
        ),
        Ok(Ok(())) => None,
    };
    match reason {
        None => probe_reply(
            StatusCode::OK,
            &json!({ "status": "ready", "serials_in_pool": serials }),
        ),
        Some(reason) => {
            let mut response = probe_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "not_ready", "reason": reason, "serials_in_pool": serials }),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(Call { state, .. }: Call) -> Response {
    let metrics = &state.metrics;
    metrics.pool_serials.set(state.pool.remaining() as i64);
    let free = state.store.free_disk_bytes();
    metrics
        .disk_free_bytes
        .set(free.map_or(-1, |free| i64::try_from(free).unwrap_or(i64::MAX)));
    let ping = tokio::time::timeout(PING_DEADLINE, state.store.ping()).await;
    metrics
        .storage_ready
        .set(i64::from(matches!(ping, Ok(Ok(())))));
    reply(
        StatusCode::OK,
        metrics::CONTENT_TYPE,
        state.metrics.render().into(),
    )
}

fn probe_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    json_reply(status, Bytes::from(body.to_string()))
}
