//! The pure core of tracknum: validated order inputs, the tracking-number codec and the
//! record an issued number leaves behind. Nothing in here does I/O.

pub mod codec;
pub mod country;
pub mod order;
pub mod record;

pub use codec::{Codec, TrackingNumber};
pub use country::Country;
pub use order::{FieldError, Order, OrderInput, Weight};
pub use record::Record;
