//! Probes and metrics: `GET /healthz` (alive: the process answers), `GET /readyz` (can issue
//! now: storage answers and the pool holds serials; else 503 with the reason), `GET /metrics`.

use std::time::Duration;

use serde_json::json;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{SharedState, other_methods, with_state};
use crate::metrics;

/// A readiness probe never waits on storage longer than this.
const PING_DEADLINE: Duration = Duration::from_secs(2);

pub fn route(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    // Load balancers probe with HEAD as often as with GET.
    let get_or_head = || warp::get().or(warp::head()).unify();
    let healthz = warp::path!("healthz")
        .and(get_or_head())
        .and(with_state(state.clone()))
        .map(healthz);
    let readyz = warp::path!("readyz")
        .and(get_or_head())
        .and(with_state(state.clone()))
        .then(readyz);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(metrics);
    let fallbacks = warp::path!("healthz")
        .and(other_methods("GET, HEAD"))
        .or(warp::path!("readyz").and(other_methods("GET, HEAD")))
        .unify()
        .or(warp::path!("metrics").and(other_methods("GET")))
        .unify();
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(fallbacks)
        .unify()
}

fn healthz(state: SharedState) -> Response {
    let body = json!({ "status": "ok", "serials_in_pool": state.pool.remaining() });
    probe_reply(StatusCode::OK, &body)
}

async fn readyz(state: SharedState) -> Response {
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
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
            response
        }
    }
}

async fn metrics(state: SharedState) -> Response {
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
    let mut response = Response::new(state.metrics.render().into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn probe_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = warp::reply::json(body).into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
