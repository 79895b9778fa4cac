//! Serial allocation: an in-process pool of leased blocks handed out with one atomic add, kept
//! topped up by a background task so that no request waits on the shared counter.

mod pool;
mod refill;
mod sizing;

pub use pool::{MAX_CLOCK_WAIT, SerialPool};
pub use refill::{RefillStatus, first_lease, spawn_refill};
pub use sizing::BlockSizer;
