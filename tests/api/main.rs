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
    };
}

mod contract;
mod embedded;
mod faults;
mod helpers;
mod hostile;
mod lifecycle;
mod loadtest;
mod openapi;
mod ops;
mod ratelimit_redis;
mod recipes;
mod redis_backend;
mod redis_tls;
mod store_conformance;
mod tenants;
