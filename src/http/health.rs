//! Probes, metrics and the API description: `GET /healthz` (alive: the process answers), `GET
//! /readyz` (can issue now: storage answers and the pool holds serials; else 503 with the
//! reason), `GET /metrics`, and `GET /openapi.json`, whose bytes `app.rs` builds once at start
//! (`openapi::json`) and hands over in the state, so this module needs nothing from the document
//! builder, which reads the route table that names these handlers.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER};
use serde_json::json;

use super::openapi::bodies::{Health, NotReady, Ready};
use super::{Call, Response, json_reply, reply};
use crate::metrics;

/// A readiness probe never waits on storage longer than this.
const PING_DEADLINE: Duration = Duration::from_secs(2);

/// Liveness
///
/// 200 for as long as the process is alive.
#[utoipa::path(
    trace, path = "",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz(Call { state, .. }: Call) -> Response {
    let body = json!({ "status": "ok", "serials_in_pool": state.pool.remaining() });
    probe_reply(StatusCode::OK, &body)
}

/// Readiness
///
/// Ready when storage answers and the pool holds serials to issue numbers with.
#[utoipa::path(
    trace, path = "",
    responses(
        (status = 200, description = "Ready to issue numbers", body = Ready),
        (status = 503, description = "Not ready, and why", body = NotReady),
    )
)]
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

/// Metrics, in the Prometheus text format
#[utoipa::path(
    trace, path = "",
    responses(
        (status = 200, description = "Prometheus metrics, in the OpenMetrics text format", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
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

/// This description
#[utoipa::path(
    trace, path = "",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object,
         content_type = "application/json"),
    )
)]
pub async fn openapi(Call { state, .. }: Call) -> Response {
    json_reply(StatusCode::OK, state.openapi_json.clone())
}

fn probe_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    json_reply(status, Bytes::from(body.to_string()))
}
