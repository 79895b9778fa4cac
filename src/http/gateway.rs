//! What every request goes through before and after its route: request id, size limits, CORS,
//! API key, rate limit, time limit; then the `X-Request-Id` header, metrics and one access-log
//! line. It wraps the warp routes as a tower service, one per connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;
use std::task::ready;

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;

use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument;
use tracing::instrument::Instrumented;
use warp::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use warp::reply::Response;

use super::cors::Cors;
use super::{Problem, request_id};
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

/// What a request's reply needs once the routes have answered: for its headers, the metrics
/// and the access-log line.
struct Finish {
    gateway: Arc<Gateway>,
    id: HeaderValue,
    route: &'static str,
    method: &'static str,
    origin: Option<HeaderValue>,
    /// A clone of the URI shares its bytes: no copy for the log line.
    uri: Uri,
    caller: Caller,
    decision: Option<Decision>,
    started: Instant,
}

/// How a request goes on after the checks that need no waiting.
enum Admission {
    /// Answered already (a problem, a preflight).
    Reply(Response),
    /// To the routes, with the rate-limit decision, if any.
    Route(Option<Decision>),
    /// The shared (Redis) rate limit has to be asked first.
    AskLimiter,
}

impl Gateway {
    /// The checks that need no waiting: size limits, CORS preflight, API key, a local rate limit.
    /// An authenticated request leaves with its [`Principal`] in its extensions.
    fn admit<B>(
        &self,
        request: &mut Request<B>,
        route: &'static str,
        caller: &mut Caller,
    ) -> Admission {
        if let Err(problem) = self.check_size(request).and_then(|()| check_host(request)) {
            return Admission::Reply(problem.into_response());
        }
        if self.cors.is_preflight(request.method(), request.headers()) {
            return Admission::Reply(match self.cors.preflight(request.headers()) {
                Ok(response) => response,
                Err((field, detail)) => Problem::forbidden_origin(field, detail).into_response(),
            });
        }
        if is_open(route) {
            return Admission::Route(None);
        }
        match self.authenticate(request.headers(), caller) {
            Ok(Some(principal)) => {
                request.extensions_mut().insert(principal);
            }
            Ok(None) => {}
            Err(refusal) => return Admission::Reply(*refusal),
        }
        match &*self.limiter {
            RateLimiter::Off => Admission::Route(None),
            RateLimiter::Local(local) => self.judge(local.check(&caller.subject(), Instant::now())),
            RateLimiter::Global(_) => Admission::AskLimiter,
        }
    }

    fn judge(&self, decision: Decision) -> Admission {
        if decision.allowed {
            return Admission::Route(Some(decision));
        }
        self.metrics.rate_limited.inc();
        let secs = u32::try_from(decision.retry_after_secs()).unwrap_or(u32::MAX);
        let mut response = Problem::rate_limited(secs).into_response();
        add_rate_headers(response.headers_mut(), &decision);
        Admission::Reply(response)
    }

    /// Marks the reply, counts it and logs it.
    fn finish(finish: Finish, mut response: Response) -> Response {
        let Finish {
            gateway,
            id,
            route,
            method,
            origin,
            uri,
            caller,
            decision,
            started,
        } = finish;
        let headers = response.headers_mut();
        if let Some(decision) = &decision {
            add_rate_headers(headers, decision);
        }
        gateway.cors.decorate(origin.as_ref(), headers);
        let status = response.status().as_u16();
        let took = started.elapsed();
        gateway.metrics.observe_request(route, method, status, took);
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

/// The routes' future, bounded in time, run with the request id (and its log span) set, and
/// with any panic caught (it becomes a generic 500; the server and the connection go on).
type Routed<F> = Instrumented<
    tokio::time::Timeout<TaskLocalFuture<HeaderValue, CatchUnwind<AssertUnwindSafe<F>>>>,
>;

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
    type Future = GatewayFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Everything that needs no waiting happens here, and the routes' future is built in place
    /// inside the one returned: on the hot path nothing is boxed and nothing large is moved.
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let gateway = &self.gateway;
        let id = request_id::accept(request.headers().get(request_id::HEADER))
            .unwrap_or_else(request_id::generate);
        let route = route_label(request.uri().path());
        let mut caller = Caller {
            key: None,
            client: gateway.client_ip(request.headers(), self.remote),
        };
        let admission = request_id::sync_scope(id.clone(), || {
            gateway.admit(&mut request, route, &mut caller)
        });
        let mut finish = Finish {
            gateway: gateway.clone(),
            id,
            route,
            method: method_label(request.method()),
            origin: gateway
                .cors
                .is_on()
                .then(|| request.headers().get(header::ORIGIN).cloned())
                .flatten(),
            uri: request.uri().clone(),
            caller,
            decision: None,
            started,
        };
        let state = match admission {
            Admission::Reply(response) => Stage::Answered {
                response: Some(response),
            },
            Admission::Route(decision) => {
                finish.decision = decision;
                Stage::Routing {
                    routed: route_future(
                        &finish.id,
                        gateway.limits.request_timeout,
                        self.inner.call(request),
                    ),
                }
            }
            Admission::AskLimiter => Stage::Limiting {
                future: Box::pin(ask_limiter_then_route(
                    gateway.clone(),
                    finish.caller.subject(),
                    finish.id.clone(),
                    self.inner.clone(),
                    request,
                )),
            },
        };
        GatewayFuture {
            stage: state,
            finish: Some(finish),
        }
    }
}

fn route_future<F: Future>(id: &HeaderValue, limit: Duration, future: F) -> Routed<F> {
    let span = tracing::info_span!("request", id = id.to_str().unwrap_or(""));
    let caught = AssertUnwindSafe(future).catch_unwind();
    tokio::time::timeout(limit, request_id::scope(id.clone(), caught)).instrument(span)
}

/// What a route's future ended with: its response, a panic, or the time limit.
fn routed_response(
    outcome: Result<std::thread::Result<Result<Response, Infallible>>, tokio::time::error::Elapsed>,
    id: &HeaderValue,
    limit: Duration,
) -> Response {
    match outcome {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(never))) => match never {},
        Ok(Err(panic)) => request_id::sync_scope(id.clone(), || {
            tracing::error!(panic = telemetry::panic_text(&*panic), "a request panicked");
            Problem::internal().into_response()
        }),
        Err(_) => request_id::sync_scope(id.clone(), || Problem::timed_out(limit).into_response()),
    }
}

/// The slow path, for a rate limit shared through Redis: ask it, then route (or refuse).
async fn ask_limiter_then_route<S, B>(
    gateway: Arc<Gateway>,
    subject: String,
    id: HeaderValue,
    mut inner: S,
    request: Request<B>,
) -> (Response, Option<Decision>)
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>,
{
    let Some(decision) = gateway.limiter.check(&subject).await else {
        return (Response::default(), None);
    };
    match request_id::sync_scope(id.clone(), || gateway.judge(decision)) {
        Admission::Reply(response) => (response, None),
        _ => {
            let limit = gateway.limits.request_timeout;
            let routed = Box::pin(route_future(&id, limit, inner.call(request)));
            (routed_response(routed.await, &id, limit), Some(decision))
        }
    }
}

pin_project_lite::pin_project! {
    #[project = StageProjection]
    enum Stage<F> {
        Answered { response: Option<Response> },
        Routing { #[pin] routed: Routed<F> },
        Limiting { future: Pin<Box<dyn Future<Output = (Response, Option<Decision>)> + Send>> },
    }
}

pin_project_lite::pin_project! {
    /// A request on its way through the gateway: answered already, with the routes, or waiting
    /// for a shared rate limit.
    pub struct GatewayFuture<F> {
        #[pin]
        stage: Stage<F>,
        finish: Option<Finish>,
    }
}

impl<F> Future for GatewayFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.stage.project() {
            StageProjection::Answered { response } => response.take().unwrap_or_default(),
            StageProjection::Routing { routed } => {
                let outcome = ready!(routed.poll(cx));
                let finish = this.finish.as_ref().expect("polled after completion");
                routed_response(outcome, &finish.id, finish.gateway.limits.request_timeout)
            }
            StageProjection::Limiting { future } => {
                let (response, decision) = ready!(future.as_mut().poll(cx));
                if let Some(finish) = this.finish.as_mut() {
                    finish.decision = decision;
                }
                response
            }
        };
        let finish = this.finish.take().expect("polled after completion");
        Poll::Ready(Ok(Gateway::finish(finish, response)))
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

    fn gateway() -> Arc<Gateway> {
        Arc::new(Gateway {
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
            },
            client_ip_header: None,
            auth_failures: LocalLimiter::new(AUTH_FAILURE_QUOTA),
        })
    }

    #[tokio::test]
    async fn a_panicking_route_is_a_generic_500_and_the_service_goes_on() {
        use tower_service::Service;
        /// Routes whose first request panics.
        #[derive(Clone, Default)]
        struct Panicky(Arc<std::sync::atomic::AtomicUsize>);

        impl Service<Request<()>> for Panicky {
            type Response = Response;
            type Error = Infallible;
            type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _: Request<()>) -> Self::Future {
                let first = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if first {
                        panic!("secret internal detail at /var/lib/tracknum");
                    }
                    Ok(Response::new("fine".into()))
                })
            }
        }

        let mut service = GatewayService {
            gateway: gateway(),
            inner: Panicky::default(),
            remote: "127.0.0.1:9".parse().unwrap(),
        };
        let request = || {
            Request::builder()
                .uri("/next-tracking-number")
                .header(header::HOST, "x")
                .body(())
                .unwrap()
        };
        let response = service.call(request()).await.unwrap();
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key(request_id::HEADER));
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("urn:tracknum:problem:internal"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("/var/lib"),
            "{text}"
        );
        let next = service.call(request()).await.unwrap();
        assert_eq!(
            next.status(),
            200,
            "the same service answers the next request"
        );
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
