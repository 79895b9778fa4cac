//! Bulk import: reading a file's rows ([`file`]), cutting an upload into chunks of whole rows
//! as it arrives ([`chunks`]), and the state of the job that issues them ([`job`]). Pure: the
//! job runner and the import API will be built on top (not yet).

pub mod chunks;
pub mod file;
pub mod job;

pub use chunks::{Chunk, Chunker, Upload};
pub use file::{Delimiter, Header, ImportRow, RowError};
pub use job::{ImportJob, JobStatus, RowCounts, RowOutcome};
