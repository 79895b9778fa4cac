//! tracknum: issues unique parcel tracking numbers from serial blocks leased from a shared
//! counter (Redis, or an embedded store), and keeps a record of every number it issued.

pub mod access;
pub mod alloc;
pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod idempotency;
pub mod issuer;
pub mod records;
pub mod store;

pub use app::Application;
pub use config::Config;
