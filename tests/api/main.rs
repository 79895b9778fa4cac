//! One integration binary: the real server over HTTP, on both backends.

mod contract;
mod embedded;
mod helpers;
mod redis_backend;
mod store_conformance;
