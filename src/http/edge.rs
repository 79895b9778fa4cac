//! The layers every request goes through around the routes, outermost first:
//! 1. [`Telemetry`] (ours: it is the product's own record of a request): the request id (a
//!    sane incoming `X-Request-Id` is kept, anything else replaced, `request_id`), its span and
//!    task-local scope, the client's address for the gateway, the metrics, one access-log line,
//!    the id on the reply and, for `HEAD`, no body;
//! 2. compression of large replies (tower-http), for clients that ask for it;
//! 3. panic catching (tower-http): a panic is a generic 500 problem, and the server goes on;
//! 4. CORS (tower-http), behind [`CorsGuard`], which refuses a bad preflight with a problem;
//! 5. the time limit (tower's timeout): past `--request-timeout`, a 503 problem;
//! 6. the routes: warp filters built from the route table (`router`), then the gateway.
//!
//! tower-http's request-id layers (set, propagate) were tried for the id: with the sanity rule
//! in front of them they cost 380 ns a request (an id made, a header and an extension put on
//! the request, the header copied to the reply), about 0.013 of the ratio to the ceiling, where
//! `Telemetry` does it in one step beside what it does anyway.

use std::any::Any;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, Either as Branch, FutureExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::predicate::SizeAbove;
use tower_http::compression::{CompressionBody, CompressionLayer};
use tower_http::cors::CorsLayer;
use tracing::Instrument;
use warp::filters::BoxedFilter;

use super::cors::Cors;
use super::gateway::{Gateway, KeyName};
use super::routes::{self, Route};
use super::{Problem, Response, SharedState, request_id, router};
use crate::telemetry;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A reply's body once panics are caught.
type Caught = tower_http::body::UnsyncBoxBody<Bytes, BoxError>;

pin_project! {
    /// A reply's body as the server sends it: through the layers, or made here (`HEAD`, and
    /// the server's own refusals). Its error is a plain `io::Error`: with a boxed one, the
    /// compiler cannot prove the connection task `Send`.
    #[project = Through]
    pub enum Outgoing {
        Layered { #[pin] body: CompressionBody<Caught> },
        Made { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = match self.project() {
            Through::Layered { body } => body.poll_frame(cx),
            Through::Made { body } => body.poll_frame(cx),
        };
        polled.map_err(std::io::Error::other)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Layered { body } => body.is_end_stream(),
            Outgoing::Made { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Layered { body } => body.size_hint(),
            Outgoing::Made { body } => body.size_hint(),
        }
    }
}
/// A reply as the server sends it.
pub type Reply = hyper::Response<Outgoing>;

/// Replies smaller than this are sent as they are: a record is a few hundred bytes, and
/// compressing it would cost more than it saves. The results CSV, the API description and the
/// page are larger.
const COMPRESS_ABOVE: u16 = 2048;

/// The routes and the layers around them, built once; [`Edge::service`] makes each
/// connection's service from them.
pub struct Edge {
    gateway: Arc<Gateway>,
    routes: BoxedFilter<(Response,)>,
    cors: Arc<Cors>,
    cors_layer: Option<CorsLayer>,
}

impl Edge {
    pub fn new(gateway: Arc<Gateway>, state: SharedState, cors: Cors) -> Edge {
        let routes = router::filter(gateway.clone(), state);
        Edge::around(gateway, routes, cors)
    }

    /// The layers around `routes`.
    fn around(gateway: Arc<Gateway>, routes: BoxedFilter<(Response,)>, cors: Cors) -> Edge {
        Edge {
            cors_layer: cors.layer(),
            cors: Arc::new(cors),
            gateway,
            routes,
        }
    }

    /// The service of one connection, from `remote`.
    pub fn service<B>(
        &self,
        remote: SocketAddr,
    ) -> impl Service<Request<B>, Response = Reply, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
    + use<B>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.gateway.limits.request_timeout;
        let routed = ServiceBuilder::new()
            .map_result(move |result| in_time(result, limit))
            .timeout(limit)
            .service(warp::service(self.routes.clone()));
        let guarded = CorsGuard {
            cors: self.cors.clone(),
            with: self
                .cors_layer
                .as_ref()
                .map(|layer| Box::new(layer.layer(routed.clone()))),
            without: routed,
        };
        let gateway = self.gateway.clone();
        ServiceBuilder::new()
            .layer_fn(move |inner| Telemetry {
                inner,
                gateway: gateway.clone(),
                remote,
                broken: false,
            })
            .layer(CompressionLayer::new().compress_when(SizeAbove::new(COMPRESS_ABOVE)))
            .layer(CatchPanicLayer::custom(panicked))
            .service(guarded)
    }
}

/// A reply made outside the layers (the server's refusal of a connection over the cap), as
/// the server sends it.
pub fn outgoing(response: Response) -> Reply {
    response.map(|body| Outgoing::Made {
        body: body.map_err(Into::into).boxed_unsync(),
    })
}

/// A route that panicked: a generic 500, the panic in the log (never in the reply).
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!(panic = telemetry::panic_text(&*panic), "a request panicked");
    Problem::internal().into_response()
}

/// A reply in time, or the problem that says it was not. (Never an error: the error type is
/// the timeout's, which the services around take as it is.)
fn in_time(result: Result<Response, BoxError>, limit: Duration) -> Result<Response, BoxError> {
    Ok(match result {
        Ok(response) => response,
        Err(_) => Problem::timed_out(limit).into_response(),
    })
}

/// The product's own record of every request: metrics by route, method and status, one
/// access-log line, the request id in scope for whatever runs below (problem bodies carry it),
/// and the client's address for the gateway. A reply to `HEAD` loses its body here.
///
/// The layers below report no error (a late reply is a problem, a panic a 500), but their
/// types allow one: here it becomes a 500, so that the server sees none.
#[derive(Clone)]
struct Telemetry<S> {
    inner: S,
    gateway: Arc<Gateway>,
    remote: SocketAddr,
    /// The layers below said they cannot serve: the next request gets a 500.
    broken: bool,
}

impl<S, B> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<B>, Response = hyper::Response<CompressionBody<Caught>>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Reply, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let ready = std::task::ready!(self.inner.poll_ready(cx));
        if let Err(err) = ready {
            tracing::error!(error = %err, "the layers cannot serve a request");
            self.broken = true;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = request_id::accept(request.headers().get(request_id::HEADER))
            .unwrap_or_else(request_id::generate);
        let arrival = self.gateway.arrival(&request, self.remote);
        request.extensions_mut().insert(arrival);
        let method = method_label(request.method());
        let head = request.method() == Method::HEAD;
        // A clone of the URI shares its bytes: no copy for the log line.
        let uri = request.uri().clone();
        let answer = if self.broken {
            let broken: BoxError = "the layers cannot serve".into();
            Branch::Left(future::ready(Err(broken)))
        } else {
            // Every log line of the request carries its id from this span.
            let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or(""));
            let inner = &mut self.inner;
            // Boxed at once: the layers' futures are large, and each move copies them.
            let called = span
                .in_scope(|| request_id::sync_scope(id.clone(), || Box::pin(inner.call(request))));
            Branch::Right(request_id::scope(id.clone(), called).instrument(span))
        };
        let metrics = self.gateway.metrics.clone();
        Box::pin(async move {
            let mut response = match answer.await {
                Ok(response) => response.map(|body| Outgoing::Layered { body }),
                Err(err) => {
                    tracing::error!(error = %err, "a request failed in the layers");
                    outgoing(Problem::internal().into_response())
                }
            };
            let key = response.extensions_mut().remove::<KeyName>();
            let route = routes::label(routes::find(uri.path()));
            let status = response.status().as_u16();
            let took = started.elapsed();
            metrics.observe_request(route, method, status, took);
            telemetry::access(&telemetry::Access {
                method,
                route,
                path: uri.path(),
                status,
                latency: took,
                request_id: id.to_str().unwrap_or(""),
                client: arrival.client,
                key: key.as_ref().map(|key| key.0.as_str()),
            });
            response.headers_mut().insert(request_id::HEADER, id);
            Ok(if head {
                without_body(response)
            } else {
                response
            })
        })
    }
}

/// A reply to `HEAD`: `GET`'s head without its body (RFC 9110 §9.3.2). hyper leaves the body out
/// of an HTTP/1.1 reply to `HEAD`, but would send it over HTTP/2. The length is kept when known,
/// as `GET` would have sent it.
fn without_body(response: Reply) -> Reply {
    let len = response.body().size_hint().exact().filter(|&len| len > 0);
    let (mut parts, _) = response.into_parts();
    if let Some(len) = len {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert(HeaderValue::from(len));
    }
    let empty = Empty::new().map_err(|never| match never {}).boxed_unsync();
    Reply::from_parts(parts, Outgoing::Made { body: empty })
}

/// Checks a CORS preflight before tower-http's layer answers it: a refused one gets a 403
/// problem naming the field, an allowed one a 204 that lists the path's own methods. Requests
/// that are no preflight go through the layer (which marks their replies), but a plain
/// `OPTIONS` goes around it: the layer would answer any `OPTIONS` as a preflight, where the
/// router answers it with a 405 and `Allow`.
#[derive(Clone)]
struct CorsGuard<S> {
    cors: Arc<Cors>,
    /// Boxed: the layer's settings are large, and the services are cloned for every request.
    with: Option<Box<tower_http::cors::Cors<S>>>,
    without: S,
}

impl<S, B> Service<Request<B>> for CorsGuard<S>
where
    S: Service<Request<B>, Response = Response, Error = BoxError> + Clone,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = Branch<
        Branch<tower_http::cors::ResponseFuture<S::Future>, S::Future>,
        BoxFuture<'static, Result<Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(with) = &mut self.with {
            std::task::ready!(with.poll_ready(cx))?;
        }
        self.without.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(with) = &mut self.with else {
            return Branch::Left(Branch::Right(self.without.call(request)));
        };
        if !self.cors.is_preflight(request.method(), request.headers()) {
            if request.method() == Method::OPTIONS {
                return Branch::Left(Branch::Right(self.without.call(request)));
            }
            return Branch::Left(Branch::Left(with.call(request)));
        }
        // The methods of the path's route, as its 405 would list them.
        let methods =
            routes::find(request.uri().path()).map_or_else(routes::all_methods, Route::allow);
        if let Err((field, detail)) = self.cors.check_preflight(request.headers(), &methods) {
            let mut refusal = Problem::forbidden_origin(field, detail).into_response();
            // As the layer would have marked it: the answer depends on the origin.
            let vary = HeaderValue::from_static("origin");
            refusal.headers_mut().append(header::VARY, vary);
            return Branch::Right(future::ready(Ok(refusal)).boxed());
        }
        let answer = with.call(request);
        Branch::Right(
            async move {
                let mut response = answer.await?;
                *response.status_mut() = StatusCode::NO_CONTENT;
                if let Ok(methods) = HeaderValue::from_str(&methods) {
                    response
                        .headers_mut()
                        .insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
                }
                Ok(response)
            }
            .boxed(),
        )
    }
}

/// The method as a metric label: the API's own, or `OTHER`.
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
    use std::net::{IpAddr, Ipv4Addr};

    use http_body_util::Full;
    use hyper::http::response::Parts;
    use tower::ServiceExt;
    use warp::Filter;

    use super::*;
    use crate::access::ratelimit::{LocalLimiter, RateLimiter};
    use crate::http::gateway::{AUTH_FAILURE_QUOTA, Limits};
    use crate::metrics::Metrics;

    const REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);

    fn edge(routes: BoxedFilter<(Response,)>) -> Edge {
        let gateway = Gateway {
            metrics: Metrics::new(),
            keys: None,
            limiter: Arc::new(RateLimiter::Off),
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
        };
        Edge::around(Arc::new(gateway), routes, Cors::Off)
    }

    fn request(method: Method, id: Option<&str>) -> Request<Full<Bytes>> {
        let mut request = Request::builder().method(method).uri("/healthz");
        if let Some(id) = id {
            request = request.header(request_id::HEADER, id);
        }
        request.body(Full::new(Bytes::new())).unwrap()
    }

    async fn send(edge: &Edge, request: Request<Full<Bytes>>) -> (Parts, Bytes) {
        let Ok(reply) = edge.service(REMOTE).oneshot(request).await;
        let (parts, body) = reply.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn a_panicking_route_is_a_generic_500_and_the_edge_goes_on() {
        let routes = warp::path("panic")
            .then(|| async { panic!("secret internal detail at /var/lib/tracknum") })
            .or(warp::any().map(|| crate::http::full("fine")))
            .unify()
            .boxed();
        let edge = edge(routes);
        let mut panics = request(Method::GET, None);
        *panics.uri_mut() = "/panic".parse().unwrap();
        let (reply, body) = send(&edge, panics).await;
        assert_eq!(reply.status, 500);
        assert!(reply.headers.contains_key(request_id::HEADER));
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("urn:tracknum:problem:internal"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("/var/lib"),
            "{text}"
        );
        let (next, body) = send(&edge, request(Method::GET, None)).await;
        assert_eq!((next.status.as_u16(), &body[..]), (200, &b"fine"[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_over_the_time_limit_is_a_503_problem_with_retry_after() {
        let routes = warp::any()
            .then(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                crate::http::full("late")
            })
            .boxed();
        let (reply, body) = send(&edge(routes), request(Method::GET, None)).await;
        assert_eq!(reply.status, 503);
        assert!(reply.headers.contains_key(header::RETRY_AFTER));
        assert!(String::from_utf8_lossy(&body).contains("urn:tracknum:problem:"));
    }

    #[tokio::test]
    async fn a_reply_to_head_keeps_its_length_and_loses_its_body() {
        let routes = warp::any()
            .map(|| crate::http::full("twelve bytes"))
            .boxed();
        let (reply, body) = send(&edge(routes), request(Method::HEAD, None)).await;
        assert_eq!(reply.headers[header::CONTENT_LENGTH], "12");
        assert!(body.is_empty(), "HTTP/2 would have sent {body:?}");
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_routes_log_lines_carry_the_request_id_from_its_span() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let routes = warp::any()
            .map(|| {
                tracing::warn!("inside the route");
                crate::http::full("logged")
            })
            .boxed();
        send(&edge(routes), request(Method::GET, Some("req-span-7"))).await;
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().find(|line| line.contains("inside the route"));
        let line = line.unwrap_or_else(|| panic!("no line in {text}"));
        assert!(line.contains(r#""request_id":"req-span-7""#), "{line}");
    }

    #[tokio::test]
    async fn a_sane_request_id_is_kept_and_any_other_replaced() {
        let routes = warp::any()
            .map(|| crate::http::full(request_id::current().unwrap_or_default()))
            .boxed();
        let edge = edge(routes);
        let (kept, seen) = send(&edge, request(Method::GET, Some("req-42"))).await;
        assert_eq!(kept.headers[request_id::HEADER], "req-42");
        assert_eq!(&seen[..], b"req-42", "the route runs with the request's id");
        let (replaced, seen) = send(&edge, request(Method::GET, Some("has space"))).await;
        let fresh = replaced.headers[request_id::HEADER].to_str().unwrap();
        assert_eq!(fresh.len(), 24);
        assert_eq!(seen, fresh.as_bytes());
        let (fresh, _) = send(&edge, request(Method::GET, None)).await;
        assert_eq!(fresh.headers[request_id::HEADER].len(), 24);
    }
}
