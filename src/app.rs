//! Builds the application from its configuration (store, pool, writer, routes, gateway), binds
//! the listener, serves until told to stop, then drains requests and flushes pending record
//! writes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::keys::KeyRing;
use crate::access::ratelimit::{LocalLimiter, Quota, RateLimiter, RedisLimiter};
use crate::config::Config;
use crate::domain::Codec;
use crate::domain::codec::fingerprint;
use crate::http::AppState;
use crate::http::cors::Cors;
use crate::http::edge::Edge;
use crate::http::gateway::{AUTH_FAILURE_QUOTA, Gateway, Limits};
use crate::http::openapi;
use crate::metrics::Metrics;
use crate::periodic;
use crate::serials::{BlockSizer, RefillStatus, SerialPool, first_lease, spawn_refill};
use crate::server::{self, ServerOptions};
use crate::service::idempotency::Idempotency;
use crate::service::imports::Imports;
use crate::service::issuer::Issuer;
use crate::service::records::Records;
use crate::store::{
    EmbeddedOptions, EmbeddedStore, MeteredStore, RecordWriter, RedisOptions, RedisStore, Store,
};

/// Spare blocks kept leased ahead of need.
const SPARE_BLOCKS: usize = 2;
/// How often buffered records are made durable (the embedded store's write-behind); well inside
/// the second that `--fsync everysec` promises, and in smaller, smoother transactions.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How often the embedded store's expired records are reclaimed.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How often the API keys file is checked for changes (SIGHUP reloads at once).
const KEYS_POLL: Duration = Duration::from_secs(2);
/// The largest body an endpoint takes (a batch), but for uploads (`--import-max-bytes`); a
/// bigger declared length is refused at once.
const MAX_BODY_BYTES: u64 = 2 * 1024 * 1024;
/// Longest wait on Redis for a shared rate limit; past it, the local limit decides.
const RATE_LIMIT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Header fields a request may carry.
const MAX_HEADERS: usize = 100;

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    edge: Arc<Edge>,
    metrics: Arc<Metrics>,
    server: ServerOptions,
    store: Arc<dyn Store>,
    writer_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Tells the background tasks to finish what they are doing and stop.
    stop_background: CancellationToken,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let mut upkeep = None;
        let (store, codec): (Arc<dyn Store>, Codec) = match config.redis() {
            Some(target) => {
                let secret = config
                    .secret
                    .clone()
                    .context("--secret is required with Redis")?;
                let codec = Codec::new(secret.as_bytes());
                let options = RedisOptions {
                    fingerprint: fingerprint(secret.as_bytes()),
                    timeout: config.storage_timeout,
                    wait_replicas: config.redis_wait_replicas,
                    codec: codec.clone(),
                };
                (Arc::new(RedisStore::new(&target, options)?), codec)
            }
            None => {
                let options = EmbeddedOptions {
                    fsync: config.fsync,
                    cache_size: config.cache_size,
                    min_free_disk: config.min_free_disk,
                    timeout: config.storage_timeout,
                    node_id: config.node_id,
                    ..EmbeddedOptions::default()
                };
                let (store, _secret) =
                    EmbeddedStore::open(&config.data_dir, config.secret.as_deref(), options)?;
                tracing::info!(node_id = store.node_id(), "embedded store open");
                let codec = store.codec().clone();
                let store = Arc::new(store);
                upkeep = Some(store.clone());
                (store, codec)
            }
        };
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, metrics.clone()));

        let pool = Arc::new(match store.paced_in() {
            Some(partition) => SerialPool::paced(SPARE_BLOCKS, partition),
            None => SerialPool::new(SPARE_BLOCKS),
        });
        let refill = Arc::new(RefillStatus::default());
        let floor = first_lease(&pool, store.as_ref(), config.block_size)
            .await
            .context("cannot lease serials")?
            .unwrap_or(0);
        let stop_background = CancellationToken::new();
        let mut background: Vec<JoinHandle<()>> = upkeep
            .iter()
            .map(|store| store.spawn_upkeep(stop_background.clone()))
            .collect();
        background.extend([
            spawn_refill(
                pool.clone(),
                store.clone(),
                BlockSizer::new(config.block_size, config.block_size_max),
                floor,
                refill.clone(),
                stop_background.clone(),
            ),
            spawn_store_chore(SYNC_EVERY, &store, &stop_background, |s| {
                Box::pin(async move { s.sync().await.map(|_| ()) })
            }),
            spawn_store_chore(PURGE_EVERY, &store, &stop_background, |s| {
                Box::pin(async move { s.purge_expired().await.map(|_| ()) })
            }),
        ]);

        let (writer, writer_task) = RecordWriter::spawn(store.clone());
        let issuer = Arc::new(Issuer::new(
            pool.clone(),
            codec.clone(),
            writer,
            config.record_ttl,
            config.storage_timeout,
            metrics.clone(),
        ));
        let idempotency = Arc::new(Idempotency::new(
            store.clone(),
            config.idempotency_ttl,
            config.idempotency_wait,
            config.storage_timeout,
        ));
        let imports = Arc::new(Imports::new(
            store.clone(),
            issuer.clone(),
            idempotency.clone(),
            metrics.clone(),
            config.import_ttl,
            config.import_stale_after,
        ));
        background.push(tokio::spawn(imports.clone().work(stop_background.clone())));
        background.push(tokio::spawn(imports.clone().sweep(stop_background.clone())));
        let state = Arc::new(AppState {
            issuer,
            records: Records::new(
                store.clone(),
                codec,
                metrics.clone(),
                config.record_ttl,
                config.storage_timeout,
            ),
            idempotency,
            imports,
            import_max_bytes: config.import_max_bytes,
            store: store.clone(),
            pool,
            refill,
            metrics: metrics.clone(),
            openapi_json: openapi::json(),
        });
        let gateway = build_gateway(&config, metrics.clone(), &stop_background, &mut background)?;
        let cors = Cors::from_list(&config.cors_origins).map_err(anyhow::Error::msg)?;
        let edge = Arc::new(Edge::new(Arc::new(gateway), state, cors));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            backend = match config.redis() {
                Some(target) if target.is_cluster() => "redis-cluster",
                Some(_) => "redis",
                None => "embedded",
            },
            block_size = config.block_size,
            block_size_max = config.block_size_max,
            "tracknum is listening"
        );
        Ok(Application {
            listener,
            addr,
            edge,
            metrics,
            server: ServerOptions {
                max_connections: config.max_connections as usize,
                idle_timeout: config.idle_timeout,
                drain_timeout: config.drain_timeout,
            },
            store,
            writer_task,
            background,
            stop_background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// (up to the drain timeout) and flushes every accepted record write.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            addr: _,
            edge,
            metrics,
            server,
            store,
            writer_task,
            background,
            stop_background,
        } = self;
        let drain_timeout = server.drain_timeout;
        let make_service = move |remote| TowerToHyperService::new(edge.service(remote));
        if !server::serve(listener, make_service, server, metrics, shutdown).await {
            tracing::warn!(?drain_timeout, "drain timed out; closing open connections");
        }
        // Background tasks finish their current store call (a blocking one cannot be cancelled)
        // so that the store is really closed when this returns.
        stop_background.cancel();
        for task in background {
            let _ = task.await;
        }
        // The last handle on the writer went with the server: the writer drains and stops.
        if tokio::time::timeout(drain_timeout, writer_task)
            .await
            .is_err()
        {
            tracing::warn!("pending record writes did not finish in time");
        }
        store.sync().await.context("final sync of the store")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The checks before the routes: API keys, rate limits and request limits.
fn build_gateway(
    config: &Config,
    metrics: Arc<Metrics>,
    stop: &CancellationToken,
    background: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Gateway> {
    let keys = match &config.api_keys_file {
        Some(path) => {
            let ring = KeyRing::open(path).map_err(anyhow::Error::msg)?;
            tracing::info!(keys = ring.current().len(), path = %path.display(), "API keys required");
            background.push(ring.spawn_watch(KEYS_POLL, stop.clone()));
            Some(ring)
        }
        None => {
            tracing::warn!("no --api-keys-file: the API is open to anyone who can reach it");
            None
        }
    };
    let limiter = if config.rate_limit > 0.0 {
        let burst = config
            .rate_burst
            .unwrap_or_else(|| config.rate_limit.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
        let quota = Quota {
            per_second: config.rate_limit,
            burst,
        };
        quota.validate().map_err(anyhow::Error::msg)?;
        match (config.redis(), config.rate_limit_global) {
            (Some(target), true) => RateLimiter::Global(
                RedisLimiter::new(&target, quota, RATE_LIMIT_REDIS_TIMEOUT)
                    .map_err(anyhow::Error::msg)?,
            ),
            _ => RateLimiter::Local(LocalLimiter::new(quota)),
        }
    } else {
        RateLimiter::Off
    };
    let limiter = Arc::new(limiter);
    background.push(limiter.spawn_sweeper(stop.clone()));
    Ok(Gateway {
        metrics,
        keys,
        limiter,
        limits: Limits {
            request_timeout: config.request_timeout,
            max_uri_bytes: config.max_uri_bytes as usize,
            max_header_bytes: config.max_header_bytes as usize,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            max_upload_bytes: config.import_max_bytes,
        },
        client_ip_header: config.client_ip_header.clone(),
        auth_failures: LocalLimiter::new(AUTH_FAILURE_QUOTA),
    })
}

type StoreJob =
    fn(
        Arc<dyn Store>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), crate::store::StoreError>> + Send>>;

/// Runs a store chore on a fixed period until `stop`, logging (not stopping on) failures.
fn spawn_store_chore(
    period: Duration,
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
    job: StoreJob,
) -> JoinHandle<()> {
    let store = store.clone();
    periodic::spawn_every(period, stop.clone(), move || {
        let run = job(store.clone());
        async move {
            if let Err(err) = run.await {
                tracing::warn!(error = %err, "background store task failed");
            }
        }
    })
}
