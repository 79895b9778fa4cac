//! Who may call the service and how often: API keys checked against a file of SHA-256 hashes
//! that can be swapped while running (`keys`), and token-bucket rate limits per key or client
//! address, per instance or shared through Redis (`ratelimit`). Nothing here knows about HTTP.

pub mod keys;
pub mod ratelimit;

pub use keys::{ApiKey, ApiKeys, KeyRing, bearer_token};
pub use ratelimit::{Decision, LocalLimiter, Quota, RateLimiter, RedisLimiter};
