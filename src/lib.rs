//! tracknum: issues unique parcel tracking numbers from serial blocks leased from a shared
//! counter (Redis, or an embedded store), and keeps a record of every number it issued.

pub mod access;
pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod periodic;
pub mod serials;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
