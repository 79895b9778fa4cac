//! `GET /healthz` (and `HEAD`): 200 once the server can issue numbers, 503 with the reason before that.

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{SharedState, other_methods, with_state};

pub fn route(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    // Load balancers probe with HEAD as often as with GET.
    warp::path!("healthz")
        .and(warp::get().or(warp::head()).unify())
        .and(with_state(state))
        .map(healthz)
        .or(warp::path!("healthz").and(other_methods("GET, HEAD")))
        .unify()
}

fn healthz(state: SharedState) -> Response {
    let serials = state.pool.remaining();
    let (status, body) = if serials > 0 {
        (
            StatusCode::OK,
            json!({ "status": "ok", "serials_in_pool": serials }),
        )
    } else {
        let reason = state
            .refill
            .last_error()
            .unwrap_or_else(|| "waiting for the first block of serials".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "unavailable", "reason": reason }),
        )
    };
    let mut response = warp::reply::json(&body).into_response();
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CACHE_CONTROL,
        warp::http::HeaderValue::from_static("no-store"),
    );
    response
}
