//! Bulk import: reading a file's rows ([`file`]), cutting an upload into chunks of whole rows
//! as it arrives ([`chunks`]), the state of the job that issues them ([`job`]), and the
//! results it writes ([`results`]). Pure: the job runner and the import API will be built on
//! top (not yet).

pub mod chunks;
pub mod file;
pub mod job;
pub mod results;

pub use chunks::{Chunk, Chunker, Upload};
pub use file::{Delimiter, Header, ImportRow, RowError};
pub use job::{ImportJob, JobStatus, RowCounts, RowOutcome};
pub use results::{ResultsWriter, Shown};
