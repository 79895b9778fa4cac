//! The services behind the HTTP handlers: issuing numbers, the records they leave, the
//! idempotency keys that make a retried request safe, and bulk import jobs. Each takes
//! validated domain types and talks to storage through its traits; none of them knows about
//! HTTP.

pub mod idempotency;
pub mod imports;
pub mod issuer;
pub mod records;
