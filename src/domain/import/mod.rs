//! Bulk import: reading a file's rows ([`file`]), cutting an upload into chunks of whole rows
//! as it arrives ([`chunks`]), the state of the job that issues them ([`job`]), and the
//! results it writes ([`results`]). Pure: the job runner (`service::imports`) and the import API
//! (`http::imports`) are built on top.

pub mod chunks;
pub mod file;
pub mod id;
pub mod job;
pub mod results;

pub use chunks::{Chunk, Chunker, Manifest, Upload};
pub use file::{Delimiter, Header, ImportRow, RowError};
pub use id::ImportId;
pub use job::{ChunkTally, ImportJob, JobStatus, RowCounts, RowOutcome};
pub use results::{ResultsWriter, Shown};
