//! The HTTP surface: the route table (`routes`), which `router` turns into warp filters; the
//! layers around them (`edge`: request ids, telemetry, CORS, compression, panics and the time
//! limit); the checks before a route (`gateway`); and one module of thin handlers per resource.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};

use crate::domain::{Principal, etag};
use crate::metrics::Metrics;
use crate::serials::{RefillStatus, SerialPool};
use crate::service::idempotency::Idempotency;
use crate::service::imports::Imports;
use crate::service::issuer::Issuer;
use crate::service::records::Records;
use crate::store::Store;

mod body;
pub mod cors;
pub mod edge;
pub mod gateway;
mod health;
mod idempotent;
mod imports;
mod issue;
pub mod openapi;
mod page;
pub mod problem;
pub mod query;
mod records;
pub mod request_id;
pub mod router;
pub mod routes;

pub use problem::Problem;

/// A handler's reply: warp's, with its body in memory (nearly all) or streamed (an import's
/// results).
pub type Response = warp::reply::Response;

/// A reply with `bytes` as its body and nothing else set.
pub fn full(bytes: impl Into<Bytes>) -> Response {
    Response::new(bytes.into().into())
}

/// A request body as a handler reads it: its pieces as they arrive. Any error (the connection
/// broke, or the body stopped moving for `--idle-timeout`) means the body cannot be read.
pub type RequestBody = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Why a request body could not be read to its end; the reason goes to the debug log only.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What the handlers need, shared by every request.
pub struct AppState {
    pub issuer: Arc<Issuer>,
    pub records: Records,
    pub idempotency: Arc<Idempotency>,
    pub imports: Arc<Imports>,
    /// The largest import file taken, in bytes.
    pub import_max_bytes: u64,
    pub store: Arc<dyn Store>,
    pub pool: Arc<SerialPool>,
    pub refill: Arc<RefillStatus>,
    pub metrics: Arc<Metrics>,
    /// The API description (`openapi::json`), served as these bytes.
    pub openapi_json: Bytes,
}

pub type SharedState = Arc<AppState>;

/// A request as a handler gets it: admitted by the gateway, with the caller and the path's
/// varying segment (percent-decoded) already worked out.
pub struct Call {
    pub state: SharedState,
    pub who: Principal,
    /// The segment the route's `{name}` stands for; empty for a route without one.
    pub param: String,
    pub headers: HeaderMap,
    /// The query string, without the `?`; empty when there is none.
    pub query: String,
    pub body: RequestBody,
}

impl Call {
    /// The query string, without the `?`; empty when there is none.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// An optional request header, as text. A value that is not visible ASCII reads as U+FFFD,
    /// and the handler's own validation decides (a bad `Idempotency-Key` is a 400, an
    /// `If-Match` that names no version a 412).
    pub fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.get(name)?;
        Some(match value.to_str() {
            Ok(text) => text.to_owned(),
            Err(_) => char::REPLACEMENT_CHARACTER.to_string(),
        })
    }
}

/// A reply with `body` and no cache allowed.
pub(crate) fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut response = full(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON reply that no cache may keep (a cached number would go to two parcels).
fn json_reply(status: StatusCode, body: Bytes) -> Response {
    reply(status, "application/json", body)
}

/// A record's JSON, with its `ETag`.
fn record_reply(status: StatusCode, json: Bytes) -> Response {
    let tag = etag(&json);
    let mut response = json_reply(status, json);
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// A reply with a status and nothing else.
fn empty_reply(status: StatusCode) -> Response {
    let mut response = full(Bytes::new());
    *response.status_mut() = status;
    response
}
