//! What every request goes through before and after its route, as plain async code: request
//! id, size limits and framing, CORS, API key, rate limit, then the route (bounded in time, a
//! panic caught), then the `X-Request-Id` and CORS headers (and, for `HEAD`, no body), metrics
//! and one access-log line.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Version};

use super::cors::Cors;
use super::routes::{self, Route};
use super::{Problem, Response, full, request_id};
use crate::access::keys::{KeyRing, bearer_token};
use crate::access::ratelimit::{Decision, LocalLimiter, Quota, RateLimiter};
use crate::domain::Principal;
use crate::metrics::Metrics;
use crate::telemetry;

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
    pub cors: Cors,
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
    /// Serves one request: the checks, then `route` with the caller's principal and the route
    /// the path names (None: no route takes it), then the reply's headers, metrics and log line.
    pub async fn handle<B, R, F>(
        &self,
        remote: SocketAddr,
        request: Request<B>,
        route: R,
    ) -> Response
    where
        R: FnOnce(Request<B>, Principal, Option<&'static Route>) -> F,
        F: Future<Output = Response>,
    {
        let started = Instant::now();
        let id = request_id::accept(request.headers().get(request_id::HEADER))
            .unwrap_or_else(request_id::generate);
        let found = routes::find(request.uri().path());
        let mut caller = Caller {
            key: None,
            client: self.client_ip(request.headers(), remote),
        };
        let method = method_label(request.method());
        let head = request.method() == Method::HEAD;
        let origin = if self.cors.is_on() {
            request.headers().get(header::ORIGIN).cloned()
        } else {
            None
        };
        // A clone of the URI shares its bytes: no copy for the log line.
        let uri = request.uri().clone();
        let (mut response, decision) = request_id::scope(id.clone(), async {
            match self.admit(&request, found, &mut caller).await {
                Err(answer) => (answer, None),
                Ok((who, decision)) => (self.run(route(request, who, found)).await, decision),
            }
        })
        .await;

        let headers = response.headers_mut();
        if let Some(decision) = &decision {
            add_rate_headers(headers, decision);
        }
        self.cors.decorate(origin.as_ref(), headers);
        let route = routes::label(found);
        let status = response.status().as_u16();
        let took = started.elapsed();
        self.metrics.observe_request(route, method, status, took);
        telemetry::access(&telemetry::Access {
            method,
            route,
            path: uri.path(),
            status,
            latency: took,
            request_id: id.to_str().unwrap_or(""),
            client: caller.client,
            key: caller.key.as_deref(),
        });
        response.headers_mut().insert(request_id::HEADER, id);
        if head {
            without_body(&mut response);
        }
        response
    }

    /// The checks before a route: size limits, CORS preflight, API key and rate limit. `Ok`
    /// lets the request through with its principal and rate-limit decision; `Err` is the answer
    /// (a refusal, or a preflight's reply).
    async fn admit<B>(
        &self,
        request: &Request<B>,
        route: Option<&Route>,
        caller: &mut Caller,
    ) -> Result<(Principal, Option<Decision>), Response> {
        self.check_size(request, route)
            .and_then(|()| check_host(request))
            .and_then(|()| check_transfer_coding(request.headers()))
            .and_then(|()| check_one_authorization(request.headers()))
            .map_err(Problem::into_response)?;
        if self.cors.is_preflight(request.method(), request.headers()) {
            // The methods of the path's route, as its 405 would list them.
            let methods = route.map_or_else(routes::all_methods, Route::allow);
            return Err(match self.cors.preflight(request.headers(), &methods) {
                Ok(response) => response,
                Err((field, detail)) => Problem::forbidden_origin(field, detail).into_response(),
            });
        }
        if route.is_some_and(|route| !route.guarded) {
            return Ok((Principal::OPEN, None));
        }
        let who = self
            .authenticate(request.headers(), caller)
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

    /// Runs a route's future within the request time limit; a panic becomes a generic 500
    /// (the server and the connection go on).
    async fn run(&self, routed: impl Future<Output = Response>) -> Response {
        let limit = self.limits.request_timeout;
        match tokio::time::timeout(limit, AssertUnwindSafe(routed).catch_unwind()).await {
            Ok(Ok(response)) => response,
            Ok(Err(panic)) => {
                tracing::error!(
                    request_id = request_id::current().as_deref(),
                    panic = telemetry::panic_text(&*panic),
                    "a request panicked"
                );
                Problem::internal().into_response()
            }
            Err(_) => Problem::timed_out(limit).into_response(),
        }
    }

    /// 414, 431 or 413 for a request over the limits, before any route sees it.
    fn check_size<B>(&self, request: &Request<B>, route: Option<&Route>) -> Result<(), Problem> {
        let limits = &self.limits;
        let target = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        if target > limits.max_uri_bytes {
            return Err(Problem::uri_too_long(limits.max_uri_bytes));
        }
        let headers = request.headers();
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
fn check_host<B>(request: &Request<B>) -> Result<(), Problem> {
    let hosts = request.headers().get_all(header::HOST).iter().count();
    let needs_one = request.version() == Version::HTTP_11;
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

/// A reply to `HEAD`: `GET`'s head without its body (RFC 9110 §9.3.2). hyper leaves the body out
/// of an HTTP/1.1 reply to `HEAD`, but would send it over HTTP/2. The length is kept when known,
/// as `GET` would have sent it.
fn without_body(response: &mut Response) {
    let len = response.body().size_hint().exact().filter(|&len| len > 0);
    if let Some(len) = len {
        response
            .headers_mut()
            .entry(header::CONTENT_LENGTH)
            .or_insert(HeaderValue::from(len));
    }
    *response.body_mut() = full(Bytes::new());
}

fn add_rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    for (name, value) in decision.headers() {
        headers.insert(name, HeaderValue::from(value));
    }
}

pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    fn gateway() -> Gateway {
        Gateway {
            metrics: Metrics::new(),
            keys: None,
            limiter: Arc::new(RateLimiter::Off),
            cors: Cors::from_list(&[]).unwrap(),
            limits: Limits {
                request_timeout: Duration::from_secs(5),
                max_uri_bytes: 8192,
                max_header_bytes: 16384,
                max_headers: 100,
                max_body_bytes: 1024,
                max_upload_bytes: 4096,
            },
            client_ip_header: None,
            auth_failures: LocalLimiter::new(AUTH_FAILURE_QUOTA),
        }
    }

    fn request() -> Request<()> {
        Request::builder()
            .uri("/next-tracking-number")
            .header(header::HOST, "x")
            .body(())
            .unwrap()
    }

    const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    #[tokio::test]
    async fn a_panicking_route_is_a_generic_500_and_the_gateway_goes_on() {
        let gateway = gateway();
        let response = gateway
            .handle(REMOTE, request(), |_, _, _| async {
                panic!("secret internal detail at /var/lib/tracknum");
            })
            .await;
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key(request_id::HEADER));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("urn:tracknum:problem:internal"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("/var/lib"),
            "{text}"
        );
        let next = gateway
            .handle(REMOTE, request(), |_, _, _| async {
                Response::new(crate::http::full(Bytes::from_static(b"fine")))
            })
            .await;
        assert_eq!(
            next.status(),
            200,
            "the same gateway answers the next request"
        );
    }

    #[tokio::test]
    async fn routes_get_the_route_the_path_names_and_the_open_principal_without_keys() {
        let response = gateway()
            .handle(REMOTE, request(), |_, who, route| async move {
                assert_eq!(route.map(|r| r.path), Some("/next-tracking-number"));
                assert_eq!(who, Principal::OPEN);
                Response::new(crate::http::full(Bytes::new()))
            })
            .await;
        assert_eq!(response.status(), 200);
    }

    #[tokio::test]
    async fn a_reply_to_head_keeps_its_length_and_loses_its_body() {
        let head = Request::builder()
            .method(Method::HEAD)
            .uri("/healthz")
            .header(header::HOST, "x")
            .body(())
            .unwrap();
        let response = gateway()
            .handle(REMOTE, head, |_, _, _| async {
                Response::new(crate::http::full(Bytes::from_static(b"twelve bytes")))
            })
            .await;
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "12");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "HTTP/2 would have sent {body:?}");
    }

    #[tokio::test]
    async fn framing_and_credentials_given_twice_are_refused_before_any_route() {
        let cases = [
            (header::TRANSFER_ENCODING, ["gzip, chunked", ""], 501),
            (header::TRANSFER_ENCODING, ["gzip", "chunked"], 501),
            (header::AUTHORIZATION, ["Bearer a", "Bearer b"], 400),
        ];
        for (name, values, status) in cases {
            let mut request = request();
            for value in values.into_iter().filter(|v| !v.is_empty()) {
                request
                    .headers_mut()
                    .append(name.clone(), HeaderValue::from_static(value));
            }
            let response = gateway()
                .handle(REMOTE, request, |_, _, _| async {
                    unreachable!("refused before the route")
                })
                .await;
            assert_eq!(response.status(), status, "{name}: {values:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_over_the_time_limit_is_a_503_with_retry_after() {
        let response = gateway()
            .handle(REMOTE, request(), |_, _, _| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Response::new(crate::http::full(Bytes::new()))
            })
            .await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
