//! The product's own checks between the router and a route's handler: the size limits and
//! framing rules (with problem bodies that name what is wrong), the API key, the rate limit,
//! then the route's handler for the method (or a 405 with `Allow`, or a 404).
//!
//! tower-http's `RequestBodyLimitLayer` was tried for the body limit: it has one limit for every
//! route (uploads take far bigger bodies than the rest) and answers with a text body, where the
//! API answers a problem; the declared length is checked here, and the handlers read bodies
//! through a limit of their own (`body::read`, multer's for uploads).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Version};

use super::routes::Route;
use super::{Call, Problem, RequestBody, Response, SharedState};
use crate::access::keys::{KeyRing, bearer_token};
use crate::access::ratelimit::{Decision, LocalLimiter, Quota, RateLimiter};
use crate::domain::Principal;
use crate::metrics::Metrics;

/// Bounds on what one request may send and take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    /// The body limit of a route that takes uploads.
    pub max_upload_bytes: u64,
}

pub struct Gateway {
    pub metrics: Arc<Metrics>,
    pub keys: Option<Arc<KeyRing>>,
    pub limiter: Arc<RateLimiter>,
    pub limits: Limits,
    /// Where the client's address is, when a trusted proxy in front sets it
    /// (`X-Forwarded-For`: its last entry; or a header holding one address).
    pub client_ip_header: Option<HeaderName>,
    /// Failed authentications per client address: past the burst, the address is refused
    /// (429) before its keys are even checked, so keys cannot be guessed at speed.
    pub auth_failures: LocalLimiter,
}

/// Failed authentications a client address may make at once, and how fast they come back.
pub const AUTH_FAILURE_QUOTA: Quota = Quota {
    per_second: 1.0,
    burst: 20,
};

const WWW_AUTHENTICATE: &str = r#"Bearer realm="tracknum""#;
const WWW_AUTHENTICATE_INVALID: &str = r#"Bearer realm="tracknum", error="invalid_token""#;

/// What the edge knows of a request that warp's filters do not tell: the client's address
/// (its connection's, or the trusted proxy's header), the HTTP version and the length of the
/// request target. The edge puts it in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub client: IpAddr,
    pub version: Version,
    pub target_len: usize,
}

/// The API key a request came with, by name: the gateway puts it in the reply's extensions,
/// for the access log.
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

/// A request as the router hands it over.
pub struct Parts {
    pub head: Head,
    pub body: RequestBody,
}

/// A request without its body.
pub struct Head {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: String,
    pub arrival: Arrival,
}

/// Who is calling, as far as limits go.
struct Caller {
    /// The API key's name, when keys are on.
    key: Option<String>,
    client: IpAddr,
}

impl Caller {
    fn subject(&self) -> String {
        match &self.key {
            Some(name) => format!("key:{name}"),
            None => format!("ip:{}", self.client),
        }
    }
}

impl Gateway {
    /// Where a request comes from, as far as the gateway goes.
    pub fn arrival<B>(&self, request: &Request<B>, remote: SocketAddr) -> Arrival {
        Arrival {
            client: self.client_ip(request.headers(), remote),
            version: request.version(),
            target_len: request
                .uri()
                .path_and_query()
                .map_or(0, |pq| pq.as_str().len()),
        }
    }

    /// Serves a request the router matched to `route` (None: no route takes its path): the
    /// checks, then the route's handler with the caller's principal, then the rate-limit
    /// headers and the key's name on the reply.
    pub async fn serve(
        &self,
        state: SharedState,
        route: Option<&'static Route>,
        param: String,
        parts: Parts,
    ) -> Response {
        let mut caller = Caller {
            key: None,
            client: parts.head.arrival.client,
        };
        let (mut response, decision) = match self.admit(&parts.head, route, &mut caller).await {
            Err(answer) => (answer, None),
            Ok((who, decision)) => (dispatch(state, route, param, who, parts).await, decision),
        };
        if let Some(decision) = &decision {
            add_rate_headers(response.headers_mut(), decision);
        }
        if let Some(key) = caller.key {
            response.extensions_mut().insert(KeyName(key));
        }
        response
    }

    /// The checks before a route: size limits, framing, API key and rate limit. `Ok` lets the
    /// request through with its principal and rate-limit decision; `Err` is the refusal.
    async fn admit(
        &self,
        parts: &Head,
        route: Option<&Route>,
        caller: &mut Caller,
    ) -> Result<(Principal, Option<Decision>), Response> {
        self.check_size(parts, route)
            .and_then(|()| check_host(parts))
            .and_then(|()| check_transfer_coding(&parts.headers))
            .and_then(|()| check_one_authorization(&parts.headers))
            .map_err(Problem::into_response)?;
        if route.is_some_and(|route| !route.guarded) {
            return Ok((Principal::OPEN, None));
        }
        let who = self
            .authenticate(&parts.headers, caller)
            .map_err(|refusal| *refusal)?
            .unwrap_or(Principal::OPEN);
        if matches!(*self.limiter, RateLimiter::Off) {
            return Ok((who, None));
        }
        let Some(decision) = self.limiter.check(&caller.subject()).await else {
            return Ok((who, None));
        };
        if decision.allowed {
            return Ok((who, Some(decision)));
        }
        self.metrics.rate_limited.inc();
        let secs = u32::try_from(decision.retry_after_secs()).unwrap_or(u32::MAX);
        let mut response = Problem::rate_limited(secs).into_response();
        add_rate_headers(response.headers_mut(), &decision);
        Err(response)
    }

    /// 414, 431 or 413 for a request over the limits, before any route sees it.
    fn check_size(&self, parts: &Head, route: Option<&Route>) -> Result<(), Problem> {
        let limits = &self.limits;
        if parts.arrival.target_len > limits.max_uri_bytes {
            return Err(Problem::uri_too_long(limits.max_uri_bytes));
        }
        let headers = &parts.headers;
        if headers.len() > limits.max_headers {
            return Err(Problem::headers_too_large(format!(
                "more than {} header fields",
                limits.max_headers
            )));
        }
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if bytes > limits.max_header_bytes {
            return Err(Problem::headers_too_large(format!(
                "the request headers are over {} bytes",
                limits.max_header_bytes
            )));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let max_body = match route {
            Some(route) if route.uploads => limits.max_upload_bytes,
            _ => limits.max_body_bytes,
        };
        if declared.is_some_and(|len| len > max_body) {
            return Err(Problem::too_large(max_body as usize));
        }
        Ok(())
    }

    /// With API keys on, the request must carry a known one: its name becomes the caller's, and
    /// its principal is returned. `Ok(None)` with keys off; `Err` is the refusal.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        caller: &mut Caller,
    ) -> Result<Option<Principal>, Box<Response>> {
        let Some(keys) = self.keys.as_ref() else {
            return Ok(None);
        };
        let address = caller.client.to_string();
        let now = Instant::now();
        if let Some(wait) = self.auth_failures.exhausted(&address, now) {
            self.metrics.unauthorized_request("throttled");
            let secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
            return Err(Box::new(
                Problem::too_many_failed_logins(secs).into_response(),
            ));
        }
        let presented = headers.get(header::AUTHORIZATION);
        let (reason, challenge, detail) = match bearer_token(presented.map(|v| v.as_bytes())) {
            Some(token) => match keys.current().verify(token) {
                Some(key) => {
                    caller.key = Some(key.name().to_owned());
                    return Ok(Some(key.principal().clone()));
                }
                None => (
                    "unknown_key",
                    WWW_AUTHENTICATE_INVALID,
                    "the API key is not valid",
                ),
            },
            None if presented.is_some() => (
                "malformed",
                WWW_AUTHENTICATE_INVALID,
                "the Authorization header must be `Bearer <API key>`",
            ),
            None => (
                "missing",
                WWW_AUTHENTICATE,
                "an API key is required: send `Authorization: Bearer <API key>`",
            ),
        };
        self.metrics.unauthorized_request(reason);
        if presented.is_some() {
            // A wrong key is a guess; a missing one is a client left unconfigured.
            self.auth_failures.check(&address, now);
        }
        let mut response = Problem::unauthorized(detail).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        Err(Box::new(response))
    }

    fn client_ip(&self, headers: &HeaderMap, remote: SocketAddr) -> IpAddr {
        self.client_ip_header
            .as_ref()
            .and_then(|name| headers.get(name)?.to_str().ok())
            .and_then(|value| value.rsplit(',').next()?.trim().parse().ok())
            .unwrap_or_else(|| remote.ip())
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; no request carries two.
fn check_host(parts: &Head) -> Result<(), Problem> {
    let hosts = parts.headers.get_all(header::HOST).iter().count();
    let needs_one = parts.arrival.version == Version::HTTP_11;
    if hosts > 1 || (needs_one && hosts == 0) {
        return Err(Problem::invalid_header(
            "Host",
            "an HTTP/1.1 request must carry exactly one Host header",
        ));
    }
    Ok(())
}

/// The only transfer coding taken is `chunked`. hyper reads a body whose last coding is
/// `chunked` and ignores the others: a `gzip, chunked` body would be taken as if it were plain.
/// A coding the server does not understand is a 501 (RFC 9112 §6.1). HTTP/2 has no transfer
/// codings (hyper refuses the field there).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), Problem> {
    let codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|coding| coding.trim_ascii());
    for coding in codings {
        if !coding.eq_ignore_ascii_case(b"chunked") {
            return Err(Problem::transfer_coding_not_implemented(
                &String::from_utf8_lossy(coding),
            ));
        }
    }
    Ok(())
}

/// `Authorization` takes one value (RFC 9110 §11.6.2). With two, a proxy in front may check
/// the last where the key check here would take the first: neither is taken.
fn check_one_authorization(headers: &HeaderMap) -> Result<(), Problem> {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::invalid_header(
            "Authorization",
            "a request may carry one Authorization header, not several",
        ));
    }
    Ok(())
}

/// Hands an admitted request to its route's handler: a 404 when no route takes the path, a 405
/// with `Allow` when the route does not take the method.
async fn dispatch(
    state: SharedState,
    route: Option<&'static Route>,
    param: String,
    who: Principal,
    parts: Parts,
) -> Response {
    let Some(route) = route else {
        return Problem::not_found("no such resource").into_response();
    };
    let Parts { head, body } = parts;
    let Some(operation) = route.operation(&head.method) else {
        let mut response = Problem::method_not_allowed().into_response();
        if let Ok(allow) = HeaderValue::from_str(&route.allow()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        return response;
    };
    let call = Call {
        state,
        who,
        param,
        headers: head.headers,
        query: head.query,
        body,
    };
    (operation.handler)(call).await
}

fn add_rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    for (name, value) in decision.headers() {
        headers.insert(name, HeaderValue::from(value));
    }
}
