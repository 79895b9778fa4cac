//! One integration binary: the real server over HTTP, on both backends.

/// Runs each listed test body against an embedded-store app and a Redis-backed app.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded_backend {
            $(#[tokio::test] async fn $name() {
                let (app, _dir) = crate::helpers::spawn_embedded(&["--secret", crate::helpers::SECRET]).await;
                super::$name(&app).await;
            })*
        }
        mod redis_backend {
            $(#[tokio::test] async fn $name() {
                let redis = crate::helpers::RedisServer::start();
                let app = crate::helpers::spawn_on_redis(&redis, &[]).await;
                super::$name(&app).await;
            })*
        }
        mod redis_cluster_backend {
            /// Every body in turn on one cluster (starting one per body would cost more than
            /// the bodies), each on a fresh app over a flushed cluster.
            #[tokio::test]
            async fn every_test_on_one_cluster() {
                let cluster = crate::redis_cluster::RedisCluster::start();
                $(
                    cluster.flushall();
                    let app = crate::helpers::spawn_on_redis(&cluster, &[]).await;
                    eprintln!("on the cluster: {}", stringify!($name));
                    super::$name(&app).await;
                    drop(app);
                )*
            }
        }
    };
}

/// Runs each listed test body, which takes a `TestRedis`, on one Redis server and on a Redis
/// Cluster.
macro_rules! on_each_redis {
    ($($name:ident),* $(,)?) => {
        mod single_redis {
            $(#[tokio::test] async fn $name() {
                super::$name(crate::helpers::TestRedis::single()).await;
            })*
        }
        mod redis_cluster {
            $(#[tokio::test] async fn $name() {
                super::$name(crate::helpers::TestRedis::cluster()).await;
            })*
        }
    };
}

mod browser;
mod busy;
mod client;
mod contract;
mod edge;
mod embedded;
mod errors;
mod fault_proxy;
mod faults;
mod helpers;
mod hostile;
mod imports;
mod lifecycle;
mod nodes;
mod openapi;
mod ops;
mod ratelimit_redis;
mod recipes;
mod redis_backend;
mod redis_cluster;
mod redis_failover;
mod redis_faults;
mod redis_tls;
mod store_conformance;
mod tenants;
mod upgrade;
