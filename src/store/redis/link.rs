//! How tracknum reaches Redis: one server (a pool of multiplexed connections) or a Redis Cluster
//! (one cluster connection that discovers the nodes and follows `MOVED`/`ASK` redirects). Both
//! give a [`Conn`] that runs commands, scripts and pipelines the same way.
//!
//! A call whose connection broke before its reply came may have run. The cluster client sends
//! every such call again by itself (`retries`); on one server the store sends again those that
//! may run twice ([`Link::sends_again`]): a record read, its scripts and the record pipeline,
//! whose writes recognise their own first run (`scripts.rs`). So both paths answer what
//! happened. Other calls (the import queue's, say) get a 503 on one server.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_redis::{Pool, Runtime};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::store::StoreError;

/// Where Redis is: a plain value the configuration holds.
pub use crate::config::RedisTarget;

/// A way to get connections to the configured Redis; connects lazily, so a Redis that is down
/// at start is retried on use.
pub enum Link {
    Single(Pool),
    Cluster(Box<ClusterLink>),
}

/// A connection to run one call on.
pub enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(ClusterConnection),
    /// Another handle on a pooled connection's socket (see [`Conn::another`]).
    Shared(redis::aio::MultiplexedConnection),
}

impl Conn {
    /// A second handle on the same connection, for calls in flight together: all of them go
    /// over the same socket (or the same cluster connection), so a `WAIT` on this connection
    /// afterwards covers their writes.
    pub fn another(&self) -> Conn {
        match self {
            Conn::Single(pooled) => Conn::Shared((**pooled).clone()),
            Conn::Shared(conn) => Conn::Shared(conn.clone()),
            Conn::Cluster(conn) => Conn::Cluster(conn.clone()),
        }
    }
}

impl Link {
    /// Up to `size` connections to one server, or one cluster connection; opening or checking a
    /// connection never takes longer than `timeout`.
    pub fn new(target: &RedisTarget, size: usize, timeout: Duration) -> anyhow::Result<Link> {
        match target {
            RedisTarget::Single(url) => {
                let mut config = deadpool_redis::Config::from_url(url);
                let mut pool = deadpool_redis::PoolConfig::new(size);
                pool.timeouts.wait = Some(timeout);
                pool.timeouts.create = Some(timeout);
                pool.timeouts.recycle = Some(timeout);
                config.pool = Some(pool);
                let pool = config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(|_| anyhow::anyhow!("invalid --redis-url"))?;
                Ok(Link::Single(pool))
            }
            RedisTarget::Cluster(urls) => {
                Ok(Link::Cluster(Box::new(ClusterLink::new(urls, timeout)?)))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    pub async fn get(&self) -> Result<Conn, StoreError> {
        match self {
            Link::Single(pool) => pool
                .get()
                .await
                .map(Conn::Single)
                .map_err(StoreError::unavailable),
            Link::Cluster(cluster) => cluster.get().await.map(Conn::Cluster),
        }
    }

    /// Whether a call that may run twice, failed with `err` on try `tries` (0 for the first),
    /// goes once more on a fresh connection: on one server, when the connection broke. The
    /// cluster client retries such calls itself.
    pub fn sends_again(&self, err: &redis::RedisError, tries: u32) -> bool {
        matches!(self, Link::Single(_))
            && tries == 0
            && (err.is_connection_dropped() || err.is_io_error())
            && !err.is_timeout()
    }

    /// Reports a failed call on a connection from [`Link::get`], so a broken cluster connection
    /// is replaced (a pool checks its connections itself).
    pub fn failed(&self, err: &redis::RedisError) {
        if let Link::Cluster(cluster) = self
            && (err.is_io_error()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
                || err.is_unrecoverable_error())
        {
            cluster.forget();
        }
    }
}

/// One shared cluster connection (it multiplexes every caller over one socket per node), made
/// on first use and made again after it broke, at most once per [`RECONNECT_EVERY`].
pub struct ClusterLink {
    client: ClusterClient,
    state: Mutex<ClusterState>,
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct ClusterState {
    conn: Option<ClusterConnection>,
    last_attempt: Option<Instant>,
}

const RECONNECT_EVERY: Duration = Duration::from_millis(250);

impl ClusterLink {
    fn new(urls: &[String], timeout: Duration) -> anyhow::Result<ClusterLink> {
        // Redirects and a failover's reconnects are retried inside the client, quickly: every
        // call is bounded by the storage timeout anyway, and a retry after that is the caller's.
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(4)
            .min_retry_wait(20)
            .max_retry_wait(200)
            .build()
            .map_err(|_| anyhow::anyhow!("invalid --redis-cluster-urls"))?;
        Ok(ClusterLink {
            client,
            state: Mutex::new(ClusterState::default()),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self) -> Option<ClusterConnection> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conn
            .clone()
    }

    async fn get(&self) -> Result<ClusterConnection, StoreError> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        // One caller connects; the others wait for its connection instead of opening their own.
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let recently = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt
            .is_some_and(|at| at.elapsed() < RECONNECT_EVERY);
        if recently {
            return Err(StoreError::Unavailable(
                "Redis Cluster unreachable; reconnecting".into(),
            ));
        }
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(Instant::now());
        let conn = self
            .client
            .get_async_connection()
            .await
            .map_err(StoreError::unavailable)?;
        self.state.lock().unwrap_or_else(|e| e.into_inner()).conn = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).conn = None;
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
            Conn::Shared(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Shared(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
            Conn::Shared(conn) => conn.get_db(),
        }
    }
}
