//! The connection side of the HTTP server: accepts connections up to a cap (the connection over
//! it gets a 503 problem and is closed), serves HTTP/1.1 and HTTP/2 with bounded heads and idle
//! times, and on shutdown stops accepting and lets in-flight requests finish, up to a deadline.
//!
//! No client holds a slot by going quiet, whatever it is in the middle of: a connection that
//! sends no head, a reply the client stops reading (`progress::Watched`), a body it stops sending
//! (`progress::RequestBody`) and an HTTP/2 connection with no stream open (`streams`) are each
//! closed after `--idle-timeout`.

mod progress;
mod streams;

pub use progress::{BodyError, RequestBody};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use progress::Watched;
use streams::{Idle, Streams, Tracked};

use crate::http::edge::{Reply, outgoing};
use crate::http::{Problem, routes};
use crate::metrics::Metrics;

/// Read buffer cap for a request head. Well above `--max-header-bytes` and the URI limit, so
/// that the gateway (with a problem body) refuses big heads before hyper (bare status) must.
const MAX_HEAD_BUFFER: usize = 256 * 1024;
/// Header fields hyper will parse; the gateway's own, lower limit answers with a problem.
const MAX_HEADERS_PARSED: usize = 512;
/// Refusals in progress at once; beyond this an over-cap connection is just closed.
const MAX_REFUSALS: usize = 256;
/// How long a refused connection may take to send its request and read the 503.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

pub struct ServerOptions {
    pub max_connections: usize,
    /// Longest wait for a request head (idle keep-alive time included), for a reply to move,
    /// for a request body to move, and longest time an HTTP/2 connection stays without a stream.
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
}

/// Serves connections from `listener`, each with the service `make_service(peer)` builds, until
/// `shutdown` resolves; then drains. Returns whether every connection finished in time.
pub async fn serve<M, S>(
    listener: TcpListener,
    make_service: M,
    options: ServerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> bool
where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<RequestBody>, Response = Reply, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let idle_timeout = options.idle_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout)
        // Reply bodies are queued as they are, not copied into one buffer: a download held
        // up to 256 KiB copied (in a 512 KiB buffer) beside the chunk of results it came from.
        // Queued, what it holds is about that chunk (300 readers that stopped reading: ~0.6 MB
        // each against ~0.9 MB copied, RSS). The hot path's throughput did not move beyond
        // the noise of a shared machine.
        .writev(true)
        .max_buf_size(MAX_HEAD_BUFFER)
        .max_headers(MAX_HEADERS_PARSED);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(options.idle_timeout / 2))
        .max_header_list_size(MAX_HEAD_BUFFER as u32);
    // The first bytes tell HTTP/1.1 from HTTP/2, so each connection gets a builder that reads
    // no version of its own (hyper-util's reading has no time limit).
    let http1 = builder.clone().http1_only();
    let http2 = builder.http2_only();
    let mut refusing = auto::Builder::new(TokioExecutor::new());
    refusing.http1().keep_alive(false);

    let slots = Arc::new(Semaphore::new(options.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    // Each connection holds a receiver until it ends: shutdown is a send, the drain waits for
    // every receiver to go.
    let (stop, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused_connections.inc();
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                // Probes still get through: a liveness check must not fail because clients
                // hold every slot.
                let service = make_service(peer);
                let answer = service_fn(move |request: Request<Incoming>| {
                    let request = request.map(|body| RequestBody::new(body, REFUSAL_DEADLINE));
                    probe_or_refuse(service.clone(), request)
                });
                let conn = refusing.serve_connection(TokioIo::new(stream), answer);
                let conn = conn.into_owned();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSAL_DEADLINE, conn).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let service = make_service(peer);
        let (http1, http2, stopped) = (http1.clone(), http2.clone(), stop.subscribe());
        let metrics = metrics.clone();
        metrics.open_connections.inc();
        tokio::spawn(async move {
            // A connection that sends nothing is closed after the idle timeout, like one that
            // goes quiet between requests: silent sockets cannot hold the slots.
            let version = tokio::time::timeout(idle_timeout, sniff_version(&stream)).await;
            if let Ok(Some(version)) = version {
                let io = TokioIo::new(Watched::new(stream, idle_timeout));
                let ended = match version {
                    HttpVersion::One => {
                        let conn =
                            http1.serve_connection(io, with_watched_body(service, idle_timeout));
                        let idle = std::future::pending();
                        run(conn.into_owned(), stopped, idle, idle_timeout).await
                    }
                    HttpVersion::Two => {
                        // Each request is an open stream until its reply's body is done.
                        let streams = Streams::new();
                        let open = streams.clone();
                        let service = service_fn(move |request: Request<Incoming>| {
                            let stream = open.open();
                            let request = request.map(|body| RequestBody::new(body, idle_timeout));
                            let reply = service.call(request);
                            async move {
                                let response = reply.await?;
                                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, stream)))
                            }
                        });
                        let conn = http2.serve_connection(io, service);
                        let idle = streams.idle_for(idle_timeout);
                        run(conn.into_owned(), stopped, idle, idle_timeout).await
                    }
                };
                if let Err(err) = ended {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
            metrics.open_connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    stop.send_replace(());
    tokio::select! {
        () = stop.closed() => true,
        () = tokio::time::sleep(options.drain_timeout) => false,
    }
}

/// The service for an HTTP/1.1 connection: request bodies that stop moving fail.
fn with_watched_body<S>(
    service: S,
    idle: Duration,
) -> impl Service<Request<Incoming>, Response = Reply, Error = Infallible, Future = S::Future>
where
    S: Service<Request<RequestBody>, Response = Reply, Error = Infallible>,
{
    service_fn(move |request: Request<Incoming>| {
        service.call(request.map(|body| RequestBody::new(body, idle)))
    })
}

/// Serves `conn` to its end. At shutdown, or once `idle` finds it quiet, it is closed
/// gracefully (in-flight requests finish; after a quiet close, for `grace` at most); once `idle`
/// finds a reply stalled, it is dropped.
async fn run<C>(
    conn: C,
    mut stopped: watch::Receiver<()>,
    idle: impl Future<Output = Idle>,
    grace: Duration,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn, idle);
    let give_up = tokio::time::sleep(Duration::MAX);
    tokio::pin!(give_up);
    let (mut closing, mut quiet_close) = (false, false);
    loop {
        tokio::select! {
            ended = &mut conn => return ended,
            _ = stopped.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            why = &mut idle, if !closing => {
                if why == Idle::Stalled {
                    tracing::debug!("a reply waited the idle timeout for the client: closed");
                    return Ok(());
                }
                (closing, quiet_close) = (true, true);
                conn.as_mut().graceful_shutdown();
                give_up.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut give_up, if quiet_close => return Ok(()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HttpVersion {
    One,
    Two,
}

/// What HTTP/2 with prior knowledge opens with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for the connection's first bytes and tells its HTTP version; None if it closes first.
async fn sniff_version(stream: &TcpStream) -> Option<HttpVersion> {
    let mut seen = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut seen).await.ok()?;
        if n == 0 {
            return None;
        }
        if seen[..n] != H2_PREFACE[..n] {
            return Some(HttpVersion::One);
        }
        if n == H2_PREFACE.len() {
            return Some(HttpVersion::Two);
        }
        // Part of the preface so far: peek again once more may have come.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The one request of a connection over the cap: an open route (a probe, say) is answered as
/// usual, anything else gets a 503 problem.
async fn probe_or_refuse<S>(service: S, request: Request<RequestBody>) -> Result<Reply, Infallible>
where
    S: Service<Request<RequestBody>, Response = Reply, Error = Infallible>,
{
    // Open routes (probes, metrics, the API description) need no storage write and no key.
    let open = routes::find(request.uri().path())
        .filter(|route| !route.guarded)
        .and_then(|route| route.operation(request.method()))
        .is_some();
    if open {
        return service.call(request).await;
    }
    let mut response = outgoing(Problem::too_many_connections().into_response());
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}
