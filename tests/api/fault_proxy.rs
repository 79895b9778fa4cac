//! A TCP proxy between tracknum and Redis that misbehaves on demand: it adds latency, goes
//! silent (forwards nothing either way and closes nothing, as a partition does), resets every
//! connection, or resets a client's connection right after Redis answered a command that
//! matches a pattern (the command ran, and its reply is lost). Dropped, it resets what it holds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Byte strings that must all appear in one chunk a client sends.
type Pattern = Vec<Vec<u8>>;

pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    latency_ms: AtomicU64,
    silent: watch::Sender<bool>,
    /// Cancelled to reset every open connection, then replaced.
    reset: Mutex<CancellationToken>,
    /// The armed trigger of [`FaultProxy::reset_after`].
    trigger: Mutex<Option<Pattern>>,
    fired: AtomicUsize,
}

impl FaultProxy {
    /// A proxy on a free loopback port to `127.0.0.1:target_port`. Call it inside a runtime.
    pub fn start(target_port: u16) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = TcpListener::from_std(listener).unwrap();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            latency_ms: AtomicU64::new(0),
            silent: watch::channel(false).0,
            reset: Mutex::new(CancellationToken::new()),
            trigger: Mutex::new(None),
            fired: AtomicUsize::new(0),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve(client, shared.clone()));
                }
            }
        });
        FaultProxy {
            port,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every chunk waits this long before it is passed on.
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap();
        self.shared.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Forwards nothing either way, and closes nothing, until [`FaultProxy::heal`]; new
    /// connections are accepted and held.
    pub fn go_silent(&self) {
        self.shared.silent.send_replace(true);
    }

    /// Forwards again, what was held first.
    pub fn heal(&self) {
        self.shared.silent.send_replace(false);
    }

    /// Resets (RST) every open client connection.
    pub fn reset_all(&self) {
        let mut reset = self.shared.reset.lock().unwrap();
        reset.cancel();
        *reset = CancellationToken::new();
    }

    /// Arms a one-shot trigger: the next chunk a client sends holding every one of `pattern` is
    /// forwarded, and once Redis answers it, the reply is dropped and the client's connection
    /// reset. A reply that is an error (`-NOSCRIPT`, `-MOVED`: the command did not run) is
    /// passed on and the trigger stays armed.
    pub fn reset_after(&self, pattern: &[&str]) {
        let pattern = pattern.iter().map(|p| p.as_bytes().to_vec()).collect();
        *self.shared.trigger.lock().unwrap() = Some(pattern);
    }

    /// Disarms [`FaultProxy::reset_after`] if it has not fired.
    pub fn disarm(&self) {
        *self.shared.trigger.lock().unwrap() = None;
    }

    /// How many times [`FaultProxy::reset_after`] fired.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.heal();
        self.reset_all();
    }
}

impl Shared {
    /// Waits while the proxy is silent, then for the latency.
    async fn pass(&self) {
        let mut silent = self.silent.subscribe();
        let _ = silent.wait_for(|silent| !silent).await;
        let ms = self.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Takes the armed trigger if `chunk` matches it.
    fn matches(&self, chunk: &[u8]) -> Option<Pattern> {
        let mut trigger = self.trigger.lock().unwrap();
        let hit = trigger
            .as_ref()
            .is_some_and(|pattern| pattern.iter().all(|part| contains(chunk, part)));
        if hit { trigger.take() } else { None }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    // Closing the client's socket resets it.
    let _ = client.set_zero_linger();
    let _ = client.set_nodelay(true);
    let reset = shared.reset.lock().unwrap().clone();
    let own_reset = CancellationToken::new();
    let connect = async {
        shared.pass().await;
        TcpStream::connect(shared.target).await
    };
    let upstream = tokio::select! {
        _ = reset.cancelled() => return,
        upstream = connect => match upstream {
            Ok(upstream) => upstream,
            Err(_) => return,
        },
    };
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = upstream.into_split();
    // A matched command sent to Redis, waiting for its reply.
    let awaiting: Mutex<Option<Pattern>> = Mutex::new(None);
    let up = forward_up(client_read, server_write, &shared, &awaiting);
    let down = forward_down(server_read, client_write, &shared, &awaiting, &own_reset);
    tokio::select! {
        _ = reset.cancelled() => {}
        _ = own_reset.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

async fn forward_up(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    awaiting: &Mutex<Option<Pattern>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        shared.pass().await;
        if let Some(pattern) = shared.matches(&buf[..n]) {
            *awaiting.lock().unwrap() = Some(pattern);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn forward_down(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    awaiting: &Mutex<Option<Pattern>>,
    own_reset: &CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        shared.pass().await;
        let matched = awaiting.lock().unwrap().take();
        if let Some(pattern) = matched {
            if buf[0] == b'-' {
                // Refused, so it did not run: wait for the command that does.
                *shared.trigger.lock().unwrap() = Some(pattern);
            } else {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                own_reset.cancel();
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_proxy_forwards_and_resets_after_a_matching_command() {
    let redis = crate::helpers::RedisServer::start();
    let proxy = FaultProxy::start(redis.port);
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    proxy.reset_after(&["INCR", "a"]);
    // An error reply does not fire it.
    let refused: redis::RedisResult<()> = redis::cmd("INCR")
        .arg("a")
        .arg("extra")
        .query_async(&mut conn)
        .await;
    assert!(refused.is_err());
    assert_eq!(proxy.fired(), 0);
    let lost: redis::RedisResult<i64> = redis::cmd("INCR").arg("a").query_async(&mut conn).await;
    assert!(lost.is_err(), "the reply is lost: {lost:?}");
    assert_eq!(proxy.fired(), 1);
    assert_eq!(redis.cmd::<i64>(&["GET", "a"]), 2, "the command ran");

    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    proxy.go_silent();
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("GET").arg("a").query_async::<i64>(&mut conn),
    )
    .await;
    assert!(held.is_err(), "a silent proxy answers nothing");
    proxy.heal();
    let value: i64 = redis::cmd("GET")
        .arg("a")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, 2);

    proxy.set_latency(Duration::from_millis(100));
    let start = std::time::Instant::now();
    let _: i64 = redis::cmd("GET")
        .arg("a")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "both ways delayed"
    );
}
