//! The pure core of tracknum: validated order inputs and issue requests, the tracking number and
//! its codec, the record an issued number leaves behind and how it may change, and the rules of
//! idempotent issuing. Nothing in here does I/O.

pub mod codec;
pub mod country;
pub mod idempotency;
pub mod import;
pub mod inspect;
pub mod order;
pub mod packed;
pub mod patch;
pub mod record;
pub mod request;
mod round_hash;
pub mod strict_json;
pub mod tenant;
pub mod tracking_number;

pub use codec::Codec;
pub use country::Country;
pub use idempotency::IdempotencyKey;
pub use order::{FieldError, Order, OrderInput, Weight};
pub use patch::{BadMove, RecordPatch};
pub use record::{Record, Status, etag};
pub use request::{IssueInput, IssueRequest};
pub use tenant::{Principal, Tenant};
pub use tracking_number::TrackingNumber;
