//! The HTTP surface: one module per resource, each a small warp filter with a thin handler, and
//! one `recover` that turns routing rejections into problem replies.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::domain::{Principal, etag};
use crate::metrics::Metrics;
use crate::serials::{RefillStatus, SerialPool};
use crate::service::idempotency::Idempotency;
use crate::service::issuer::Issuer;
use crate::service::records::Records;
use crate::store::Store;

mod body;
pub mod cors;
pub mod gateway;
mod health;
mod idempotent;
mod issue;
pub mod openapi;
pub mod problem;
pub mod query;
mod records;
pub mod request_id;

pub use problem::Problem;

/// What the handlers need, shared by every request.
pub struct AppState {
    pub issuer: Issuer,
    pub records: Records,
    pub idempotency: Idempotency,
    pub store: Arc<dyn Store>,
    pub pool: Arc<SerialPool>,
    pub refill: Arc<RefillStatus>,
    pub metrics: Arc<Metrics>,
}

pub type SharedState = Arc<AppState>;

pub fn routes(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    issue::route(state.clone())
        .or(records::route(state.clone()))
        .unify()
        .or(health::route(state))
        .unify()
        .or(openapi::route())
        .unify()
        .recover(problem::recover)
        .unify()
}

fn with_state(
    state: SharedState,
) -> impl Filter<Extract = (SharedState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Whose request it is: the gateway puts the API key's principal in the request; without API
/// keys there is none, and the one open tenant asks.
fn principal() -> impl Filter<Extract = (Principal,), Error = Infallible> + Clone {
    warp::ext::optional::<Principal>().map(|who: Option<Principal>| who.unwrap_or(Principal::OPEN))
}

/// An optional request header, as text. warp's own filter rejects a value that is not visible
/// ASCII, and the request would end in another route's 405; here such a value reads as U+FFFD,
/// and the handler's own validation decides (a bad `Idempotency-Key` is a 400, an `If-Match`
/// that names no version a 412).
fn optional_header(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>(name)
        .or(warp::any().map(|| Some(char::REPLACEMENT_CHARACTER.to_string())))
        .unify()
}

/// The 405 for a known path asked with a method it does not take, with the `Allow` header
/// RFC 9110 requires (warp's own 405 has none). Put it after the path's routes: a method in
/// `allow` falls through, so their own rejections (a bad header, say) still decide the reply.
fn other_methods(
    allow: &'static str,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::method().and_then(move |method: warp::http::Method| async move {
        if allow.split(", ").any(|m| m == method.as_str()) {
            return Err(warp::reject::not_found());
        }
        let mut response = Problem::method_not_allowed().into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        Ok(response)
    })
}

/// A JSON reply that no cache may keep (a cached number would go to two parcels).
fn json_reply(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A record's JSON, with its `ETag`.
fn record_reply(status: StatusCode, json: bytes::Bytes) -> Response {
    let tag = etag(&json);
    let mut response = json_reply(status, json);
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

impl Reply for Problem {
    fn into_response(self) -> Response {
        Problem::into_response(self)
    }
}
