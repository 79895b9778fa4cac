//! RFC 9457 problem details: every error reply, from validation to a dead Redis, has this shape.
//! The services' and the stores' errors get their HTTP meaning here, each in one `From`.

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde::Serialize;

use super::Response;
use crate::domain::{FieldError, Status};
use crate::service::idempotency::IdempotencyError;
use crate::service::issuer::IssueError;
use crate::service::records::RecordError;
use crate::store::StoreError;

pub const CONTENT_TYPE: &str = "application/problem+json";
/// A 400 lists at most this many bad inputs.
pub const MAX_LISTED_ERRORS: usize = 100;

/// An RFC 9457 problem: every error reply has this body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({
    "type": "urn:tracknum:problem:invalid-input",
    "title": "Invalid input",
    "status": 400,
    "detail": "invalid: weight",
    "errors": [{"field": "weight", "message": "must be a positive weight in kilograms"}],
    "request_id": "3f1c2a9e7b4d4e0a"
})))]
pub struct Problem {
    /// What kind of problem: `about:blank` (the status says it all) or a
    /// `urn:tracknum:problem:…` name.
    #[serde(rename = "type")]
    #[schema(value_type = String, examples("urn:tracknum:problem:invalid-input"))]
    kind: &'static str,
    /// A short summary of the kind.
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status code of the reply.
    #[serde(serialize_with = "status_code")]
    #[schema(value_type = u16, minimum = 400, maximum = 599)]
    status: StatusCode,
    /// What went wrong with this request, in plain words.
    detail: String,
    /// On a 400: one entry for each bad input, all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    /// Members particular to a problem type (RFC 9457 §3.2), e.g. the two states of a bad move.
    #[serde(flatten)]
    #[schema(value_type = ProblemMembers)]
    extensions: serde_json::Map<String, serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u32>,
}

/// The members some problems add, as the API description lists them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Only its schema is used; the members live in `Problem::extensions`.
struct ProblemMembers {
    /// The id of the request, as in the reply's `X-Request-Id` header.
    #[schema(nullable = false)]
    request_id: Option<String>,
    /// On a refused status move (409): the record's status.
    #[schema(nullable = false)]
    from: Option<Status>,
    /// On a refused status move (409): the status asked for.
    #[schema(nullable = false)]
    to: Option<Status>,
    /// On a 400: how many inputs were bad in all (`errors` lists at most 100 of them).
    #[schema(nullable = false)]
    error_count: Option<usize>,
}

fn status_code<S: serde::Serializer>(status: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(status.as_u16())
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        Problem {
            kind,
            title,
            status,
            detail,
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_secs: None,
        }
    }

    /// Adds a problem-specific member to the body.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// 400 for a bad value of one request header.
    pub fn invalid_header(name: &str, message: &str) -> Self {
        Problem::invalid(vec![FieldError::new(name, message)])
    }

    /// 409: the request conflicts with the resource's current state.
    pub fn conflict(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, kind, title, detail.into())
    }

    /// 412: the `If-Match` version is not the current one.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "urn:tracknum:problem:stale-version",
            "Version mismatch",
            detail.into(),
        )
    }

    /// 422: well-formed, but not something this service can do.
    pub fn unprocessable(
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, kind, title, detail.into())
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "about:blank",
            "Payload Too Large",
            format!("the request body is over {limit} bytes"),
        )
    }

    /// 401: no API key, or not a known one. The caller adds `WWW-Authenticate`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "urn:tracknum:problem:unauthorized",
            "Unauthorized",
            detail.into(),
        )
    }

    /// 429: over the rate limit; retry when a token is back.
    pub fn rate_limited(retry_after_secs: u32) -> Self {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:tracknum:problem:rate-limited",
            "Too Many Requests",
            format!("over the rate limit; retry in {retry_after_secs} s"),
        )
        .retry_after(retry_after_secs)
    }

    /// 429: this client address failed to authenticate too often; retry later.
    pub fn too_many_failed_logins(retry_after_secs: u32) -> Self {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:tracknum:problem:too-many-failed-authentications",
            "Too Many Requests",
            format!(
                "too many failed authentications from this address; retry in {retry_after_secs} s"
            ),
        )
        .retry_after(retry_after_secs)
    }

    /// 414: the request target is over the limit.
    pub fn uri_too_long(limit: usize) -> Self {
        Problem::new(
            StatusCode::URI_TOO_LONG,
            "about:blank",
            "URI Too Long",
            format!("the request target is over {limit} bytes"),
        )
    }

    /// 431: the request headers are over the limit.
    pub fn headers_too_large(detail: String) -> Self {
        Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "about:blank",
            "Request Header Fields Too Large",
            detail,
        )
    }

    /// 403: a browser origin (CORS) that may not call the API.
    pub fn forbidden_origin(field: &str, detail: String) -> Self {
        let mut problem = Problem::new(
            StatusCode::FORBIDDEN,
            "urn:tracknum:problem:cors-refused",
            "Cross-origin request refused",
            detail.clone(),
        );
        problem.errors = vec![FieldError::new(field, &detail)];
        problem
    }

    /// 503: the request took longer than the server allows.
    pub fn timed_out(limit: std::time::Duration) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:tracknum:problem:timeout",
            "Request timed out",
            format!("the request did not finish within {limit:?}"),
        )
        .retry_after(1)
    }

    /// 503: every connection slot is taken.
    pub fn too_many_connections() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:tracknum:problem:overloaded",
            "Too many connections",
            "the server is at its connection limit; retry shortly".into(),
        )
        .retry_after(1)
    }

    /// 503: the service is sound but behind (new records arrive faster than storage takes
    /// them). Not a fault: the same request a second later will likely go through.
    pub fn busy() -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:tracknum:problem:busy",
            "Busy",
            "busy: new records are arriving faster than they can be stored; retry shortly".into(),
        )
        .retry_after(1)
    }

    /// Asks the client to retry after `secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 400: one entry per bad field, up to [`MAX_LISTED_ERRORS`] of them; `error_count` says
    /// how many there were in all, so a hostile request cannot make the reply huge.
    pub fn invalid(mut errors: Vec<FieldError>) -> Self {
        let total = errors.len();
        errors.truncate(MAX_LISTED_ERRORS);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let mut detail = format!("invalid: {}", fields.join(", "));
        if total > errors.len() {
            detail.push_str(&format!(" and {} more", total - errors.len()));
        }
        let mut problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:tracknum:problem:invalid-input",
            "Invalid input",
            detail,
        );
        problem.errors = errors;
        problem.with("error_count", total)
    }

    /// 501: the request's body comes in a transfer coding not taken.
    pub fn transfer_coding_not_implemented(coding: &str) -> Self {
        Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "about:blank",
            "Not Implemented",
            format!(
                "Transfer-Encoding {coding:?} is not supported: send the body as it is, with \
                 Content-Length or Transfer-Encoding: chunked alone"
            ),
        )
    }

    /// 405: the resource exists, but not with this method. The caller adds `Allow`.
    pub fn method_not_allowed() -> Self {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "about:blank",
            "Method Not Allowed",
            "this method is not allowed on this resource".to_owned(),
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "about:blank",
            "Not Found",
            detail.into(),
        )
    }

    /// 500: something that should not happen did (corrupt data, a bug). The client learns
    /// nothing of it but the request id; the log has the rest.
    pub fn internal() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:tracknum:problem:internal",
            "Internal error",
            "the request could not be completed; the service log has the details under this \
             request's id"
                .into(),
        )
    }

    /// 503 with `Retry-After`: a dependency is down, try again shortly.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:tracknum:problem:storage-unavailable",
            "Storage unavailable",
            detail.into(),
        );
        problem.retry_after_secs = Some(1);
        problem
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn into_response(mut self) -> Response {
        // The id of the request, as in its `X-Request-Id` reply header, for support tickets.
        if let Some(id) = super::request_id::current() {
            self.extensions.insert("request_id".into(), id.into());
        }
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = super::full(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

// Errors carry their HTTP meaning here, and only here.

/// Storage errors: a store too busy for new records is a 503 that says so; unreachable or slow
/// storage is a 503 too; both carry `Retry-After`. Anything else (corrupt data, a secret
/// mismatch, a bug) is a 500. The client gets a generic detail and the request id; the log gets
/// the error.
impl From<StoreError> for Problem {
    fn from(err: StoreError) -> Problem {
        let request_id = super::request_id::current();
        if let StoreError::Busy(_) = err {
            // Load, not a fault: the metrics count it, and a flood must not flood the log too.
            tracing::debug!(request_id, error = %err, "storage busy");
            Problem::busy()
        } else if err.is_transient() {
            tracing::warn!(request_id, error = %err, "storage unavailable");
            Problem::unavailable("storage is unavailable right now; retry shortly")
        } else {
            tracing::error!(request_id, error = %err, "storage failed");
            Problem::internal()
        }
    }
}

/// A record operation's failure: its own words for what the caller can act on, the storage
/// mapping above for the rest.
impl From<RecordError> for Problem {
    fn from(err: RecordError) -> Problem {
        let detail = err.to_string();
        match err {
            RecordError::NotFound(_) => Problem::not_found(detail),
            RecordError::Stale => Problem::precondition_failed(detail),
            RecordError::Busy => Problem::conflict(
                "urn:tracknum:problem:concurrent-update",
                "Concurrent update",
                detail,
            )
            .retry_after(1),
            RecordError::BadMove(bad) => Problem::conflict(
                "urn:tracknum:problem:invalid-status-move",
                "Invalid status move",
                detail,
            )
            .with("from", bad.from.as_str())
            .with("to", bad.to.as_str()),
            RecordError::Exists(_) => Problem::conflict(
                "urn:tracknum:problem:already-exists",
                "Record exists",
                detail,
            ),
            RecordError::Reserved(_) => Problem::unprocessable(
                "urn:tracknum:problem:reserved-number",
                "Number reserved",
                detail,
            ),
            RecordError::Unconfirmed(err) => {
                let request_id = super::request_id::current();
                tracing::warn!(request_id, error = %err, "a change was not confirmed");
                Problem::unavailable(
                    "storage did not confirm this change, so it may or may not have been \
                     applied; read the record before changing it again, or retry with the same \
                     Idempotency-Key",
                )
            }
            RecordError::Store(err) => err.into(),
        }
    }
}

/// An issue that failed: no serial in time is storage being unavailable, in the caller's eyes.
impl From<IssueError> for Problem {
    fn from(err: IssueError) -> Problem {
        match err {
            IssueError::Store(err) => err.into(),
            IssueError::NoSerials(_) => {
                let request_id = super::request_id::current();
                tracing::warn!(request_id, error = %err, "could not issue a number");
                Problem::unavailable("no tracking number can be issued right now; retry shortly")
            }
        }
    }
}

/// A keyed request the key's state refuses.
impl From<IdempotencyError> for Problem {
    fn from(err: IdempotencyError) -> Problem {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn reply(problem: Problem) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = problem.into_response();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_busy_store_is_a_503_that_says_busy_and_when_to_retry() {
        let err = StoreError::Busy("records are arriving faster than the disk takes them".into());
        assert!(err.is_transient());
        let (status, retry_after, body) = reply(err.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["type"], "urn:tracknum:problem:busy");
        assert_eq!(body["title"], "Busy");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("busy") && detail.ends_with("retry shortly"),
            "{detail}"
        );
        assert!(
            !detail.contains("disk"),
            "our own words, not the store's: {detail}"
        );
    }

    #[tokio::test]
    async fn a_store_that_is_down_is_still_unavailable_not_busy() {
        for err in [
            StoreError::Unavailable("connection refused".into()),
            StoreError::NotWritable("the disk is full".into()),
        ] {
            let (status, retry_after, body) = reply(err.into()).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert_eq!(body["type"], "urn:tracknum:problem:storage-unavailable");
        }
    }
}
