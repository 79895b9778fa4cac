//! Builds the application from its configuration (store, pool, writer, routes), binds the
//! listener, serves until told to stop, then drains requests and flushes pending record writes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alloc::{RefillStatus, SerialPool, first_lease, spawn_refill};
use crate::config::Config;
use crate::domain::Codec;
use crate::domain::codec::fingerprint;
use crate::http::{self, AppState};
use crate::idempotency::Idempotency;
use crate::issuer::Issuer;
use crate::records::Records;
use crate::store::{EmbeddedStore, RecordWriter, RedisStore, Store};

/// Spare blocks kept leased ahead of need.
const SPARE_BLOCKS: usize = 2;
/// How often buffered records are made durable (the embedded store's write-behind); well inside
/// the second that `--fsync everysec` promises, and in smaller, smoother transactions.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// How often the embedded store's expired records are reclaimed.
const PURGE_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    store: Arc<dyn Store>,
    writer_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Tells the background tasks to finish what they are doing and stop.
    stop_background: CancellationToken,
    drain_timeout: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (store, secret): (Arc<dyn Store>, String) = match &config.redis_url {
            Some(url) => {
                let secret = config
                    .secret
                    .clone()
                    .context("--secret is required with --redis-url")?;
                let store =
                    RedisStore::new(url, fingerprint(secret.as_bytes()), config.storage_timeout)?;
                (Arc::new(store), secret)
            }
            None => {
                let (store, secret) =
                    EmbeddedStore::open(&config.data_dir, config.secret.as_deref(), config.fsync)?;
                (Arc::new(store), secret)
            }
        };

        let pool = Arc::new(SerialPool::new(SPARE_BLOCKS));
        let refill = Arc::new(RefillStatus::default());
        let floor = first_lease(&pool, store.as_ref(), config.block_size)
            .await
            .context("cannot lease serials")?
            .unwrap_or(0);
        let stop_background = CancellationToken::new();
        let background = vec![
            spawn_refill(
                pool.clone(),
                store.clone(),
                config.block_size,
                floor,
                refill.clone(),
                stop_background.clone(),
            ),
            spawn_every(SYNC_EVERY, &store, &stop_background, |s| {
                Box::pin(async move { s.sync().await.map(|_| ()) })
            }),
            spawn_every(PURGE_EVERY, &store, &stop_background, |s| {
                Box::pin(async move { s.purge_expired().await.map(|_| ()) })
            }),
        ];

        let (writer, writer_task) = RecordWriter::spawn(store.clone());
        let issuer = Issuer::new(
            pool.clone(),
            Codec::new(secret.as_bytes()),
            writer,
            config.record_ttl,
            config.storage_timeout,
        );
        let state = Arc::new(AppState {
            issuer,
            records: Records::new(store.clone(), config.record_ttl),
            idempotency: Idempotency::new(
                store.clone(),
                config.idempotency_ttl,
                config.idempotency_wait,
            ),
            store: store.clone(),
            pool,
            refill,
        });

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            %addr,
            backend = if config.redis_url.is_some() { "redis" } else { "embedded" },
            block_size = config.block_size,
            "tracknum is listening"
        );
        Ok(Application {
            listener,
            addr,
            state,
            store,
            writer_task,
            background,
            stop_background,
            drain_timeout: config.drain_timeout,
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
            state,
            store,
            writer_task,
            background,
            stop_background,
            drain_timeout,
        } = self;
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let server = warp::serve(http::routes(state))
            .incoming(listener)
            .graceful(async move {
                shutdown.await;
                tracing::info!("shutting down: draining in-flight requests");
                let _ = stopping_tx.send(());
            })
            .run();
        tokio::select! {
            () = server => {}
            () = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(drain_timeout).await;
            } => tracing::warn!(?drain_timeout, "drain timed out; closing open connections"),
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

type StoreJob =
    fn(
        Arc<dyn Store>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), crate::store::StoreError>> + Send>>;

/// Runs a store chore on a fixed period until `stop`, logging (not stopping on) failures.
fn spawn_every(
    period: Duration,
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
    job: StoreJob,
) -> JoinHandle<()> {
    let (store, stop) = (store.clone(), stop.clone());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            if let Err(err) = job(store.clone()).await {
                tracing::warn!(error = %err, "background store task failed");
            }
        }
    })
}
