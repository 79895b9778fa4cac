//! Bulk import: reading a file's rows ([`file`]) and the state of the job that issues them
//! ([`job`]). Pure; the job runner and the import API are built on top (not yet).

pub mod file;
pub mod job;

pub use file::{Delimiter, Header, ImportRow, RowError};
pub use job::{ImportJob, JobStatus, RowCounts, RowOutcome};
