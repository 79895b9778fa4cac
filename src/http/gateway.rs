//! What every request goes through before and after its route: request id, size limits, CORS,
//! API key, rate limit, time limit; then the `X-Request-Id` header, metrics and one access-log
//! line. It wraps the warp routes as a tower service, one per connection.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::Instrument;
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use warp::reply::Response;

use super::cors::Cors;
use super::{Problem, request_id};
use crate::access::keys::{KeyRing, bearer_token};
use crate::access::ratelimit::{Decision, RateLimiter};
use crate::metrics::Metrics;

/// Bounds on what one request may send and take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
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
}

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
    /// Serves one request through `inner` (the routes) and everything around them.
    pub async fn handle<S, B>(
        self: Arc<Self>,
        inner: S,
        request: Request<B>,
        remote: SocketAddr,
    ) -> Response
    where
        S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
    {
        let started = Instant::now();
        let id = request_id::accept(request.headers().get(request_id::HEADER))
            .unwrap_or_else(request_id::generate);
        let route = route_label(request.uri().path());
        let method = method_label(request.method());
        let origin = self
            .cors
            .is_on()
            .then(|| request.headers().get(header::ORIGIN).cloned())
            .flatten();
        let path = request.uri().path().to_owned();
        let mut caller = Caller {
            key: None,
            client: self.client_ip(request.headers(), remote),
        };
        let span = tracing::info_span!("request", id = id.to_str().unwrap_or(""));
        let work = self
            .serve(inner, request, route, &mut caller)
            .instrument(span);
        let mut response = request_id::scope(id.clone(), work).await;

        let headers = response.headers_mut();
        headers.insert(request_id::HEADER, id.clone());
        self.cors.decorate(origin.as_ref(), headers);
        let status = response.status().as_u16();
        let took = started.elapsed();
        self.metrics.observe_request(route, method, status, took);
        tracing::info!(
            target: "tracknum::access",
            method,
            route,
            path,
            status,
            latency_ms = took.as_secs_f64() * 1e3,
            request_id = id.to_str().unwrap_or(""),
            client = %caller.client,
            key = caller.key.as_deref().unwrap_or("-"),
            "request"
        );
        response
    }

    async fn serve<S, B>(
        &self,
        mut inner: S,
        request: Request<B>,
        route: &'static str,
        caller: &mut Caller,
    ) -> Response
    where
        S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
    {
        if let Err(problem) = self.check_size(&request) {
            return problem.into_response();
        }
        if self.cors.is_preflight(request.method(), request.headers()) {
            return match self.cors.preflight(request.headers()) {
                Ok(response) => response,
                Err((field, detail)) => Problem::forbidden_origin(field, detail).into_response(),
            };
        }
        let mut decision = None;
        if !is_open(route) {
            if let Err(response) = self.authenticate(request.headers(), caller) {
                return response;
            }
            if !matches!(*self.limiter, RateLimiter::Off) {
                decision = self.limiter.check(&caller.subject()).await;
            }
            if let Some(refused) = decision.as_ref().filter(|d| !d.allowed) {
                self.metrics.rate_limited.inc();
                let secs = u32::try_from(refused.retry_after_secs()).unwrap_or(u32::MAX);
                let mut response = Problem::rate_limited(secs).into_response();
                add_rate_headers(response.headers_mut(), refused);
                return response;
            }
        }
        let limit = self.limits.request_timeout;
        let mut response = match tokio::time::timeout(limit, call(&mut inner, request)).await {
            Ok(response) => response,
            Err(_) => Problem::timed_out(limit).into_response(),
        };
        if let Some(decision) = &decision {
            add_rate_headers(response.headers_mut(), decision);
        }
        response
    }

    /// 414, 431 or 413 for a request over the limits, before any route sees it.
    fn check_size<B>(&self, request: &Request<B>) -> Result<(), Problem> {
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
        if declared.is_some_and(|len| len > limits.max_body_bytes) {
            return Err(Problem::too_large(limits.max_body_bytes as usize));
        }
        Ok(())
    }

    /// With API keys on, the request must carry a known one; its name becomes the caller.
    fn authenticate(&self, headers: &HeaderMap, caller: &mut Caller) -> Result<(), Response> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let presented = headers.get(header::AUTHORIZATION);
        let (reason, challenge, detail) = match bearer_token(presented.map(|v| v.as_bytes())) {
            Some(token) => match keys.current().verify(token) {
                Some(name) => {
                    caller.key = Some(name.to_owned());
                    return Ok(());
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
        let mut response = Problem::unauthorized(detail).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        Err(response)
    }

    fn client_ip(&self, headers: &HeaderMap, remote: SocketAddr) -> IpAddr {
        self.client_ip_header
            .as_ref()
            .and_then(|name| headers.get(name)?.to_str().ok())
            .and_then(|value| value.rsplit(',').next()?.trim().parse().ok())
            .unwrap_or_else(|| remote.ip())
    }
}

async fn call<S, B>(inner: &mut S, request: Request<B>) -> Response
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
{
    match inner.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

fn add_rate_headers(headers: &mut HeaderMap, decision: &Decision) {
    for (name, value) in decision.headers() {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// Probes, metrics and the API description need no key and are not rate limited.
fn is_open(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
}

/// The route a path belongs to, as a metrics label: a fixed set, whatever the path holds.
pub fn route_label(path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(""), None, ..) => "/",
        (Some("next-tracking-number"), None, ..) => "/next-tracking-number",
        (Some("healthz"), None, ..) => "/healthz",
        (Some("readyz"), None, ..) => "/readyz",
        (Some("metrics"), None, ..) => "/metrics",
        (Some("openapi.json"), None, ..) => "/openapi.json",
        (Some("v1"), Some("next-tracking-number"), None, _) => "/v1/next-tracking-number",
        (Some("v1"), Some("tracking-numbers"), None, _) => "/v1/tracking-numbers",
        (Some("v1"), Some("tracking-numbers"), Some(_), None) => "/v1/tracking-numbers/{tn}",
        (Some("v1"), Some("tracking-numbers"), Some(_), Some("check"))
            if segments.next().is_none() =>
        {
            "/v1/tracking-numbers/{tn}/check"
        }
        _ => "unmatched",
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

/// The gateway in front of one connection's routes, as the tower service hyper drives.
#[derive(Clone)]
pub struct GatewayService<S> {
    pub gateway: Arc<Gateway>,
    pub inner: S,
    pub remote: SocketAddr,
}

impl<S, B> tower_service::Service<Request<B>> for GatewayService<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let gateway = self.gateway.clone();
        let inner = self.inner.clone();
        let remote = self.remote;
        Box::pin(async move { Ok(gateway.handle(inner, request, remote).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_a_fixed_set_of_routes() {
        for (path, route) in [
            ("/", "/"),
            ("/next-tracking-number", "/next-tracking-number"),
            ("/v1/next-tracking-number", "/v1/next-tracking-number"),
            ("/v1/tracking-numbers", "/v1/tracking-numbers"),
            ("/v1/tracking-numbers/MY00ABC", "/v1/tracking-numbers/{tn}"),
            (
                "/v1/tracking-numbers/MY00ABC/check",
                "/v1/tracking-numbers/{tn}/check",
            ),
            ("/v1/tracking-numbers/MY00ABC/check/x", "unmatched"),
            ("/v1/tracking-numbers/a/b", "unmatched"),
            ("/healthz", "/healthz"),
            ("/readyz", "/readyz"),
            ("/metrics", "/metrics"),
            ("/openapi.json", "/openapi.json"),
            ("/wp-admin/login.php", "unmatched"),
            ("/healthz/x", "unmatched"),
        ] {
            assert_eq!(route_label(path), route, "{path}");
        }
    }

    #[test]
    fn only_probes_metrics_and_the_description_are_open() {
        assert!(is_open("/healthz"));
        assert!(is_open("/readyz"));
        assert!(is_open("/metrics"));
        assert!(is_open("/openapi.json"));
        assert!(!is_open("/next-tracking-number"));
        assert!(!is_open("/v1/tracking-numbers/{tn}"));
        assert!(!is_open("unmatched"));
    }
}
