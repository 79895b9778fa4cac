//! An ended job's results, read back a chunk at a time and handed out in pieces of at most
//! [`PIECE_BYTES`].
//!
//! The pieces bound what a download holds. hyper takes the next piece while it holds less than
//! 256 KiB of the reply; handed whole chunks (a few hundred KB of results each, more for rows with
//! long errors), it took a whole chunk more each time. With pieces, a reader that stops reading
//! holds about the chunk being sent, which its pieces share (about 0.6 MB each for 300 such
//! readers of a 24 MB file, against 0.9 MB; figures in docs/api.md, under Limits).

use std::sync::Arc;

use bytes::Bytes;

use super::{Imports, corrupt};
use crate::domain::FieldError;
use crate::domain::import::file::reader;
use crate::domain::import::results::decode_part;
use crate::domain::import::{ImportJob, JobStatus, Manifest, ResultsWriter, Shown};
use crate::store::{ImportPart, StoreError};

/// The largest piece of results handed out at once.
pub const PIECE_BYTES: usize = 64 << 10;

/// An ended job's results: the header row, then each chunk's rows. A chunk that was never
/// processed (the job was cancelled or failed first) shows its rows as they came, with why.
pub struct ResultsStream {
    imports: Arc<Imports>,
    job: ImportJob,
    manifest: Manifest,
    next: usize,
    started: bool,
    /// What is left of the chunk being handed out.
    rest: Bytes,
}

impl ResultsStream {
    pub(super) fn new(imports: Arc<Imports>, job: ImportJob, manifest: Manifest) -> ResultsStream {
        ResultsStream {
            imports,
            job,
            manifest,
            next: 0,
            started: false,
            rest: Bytes::new(),
        }
    }

    /// The results' next piece, of at most [`PIECE_BYTES`]; None at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
        while self.rest.is_empty() {
            match self.next_chunk().await? {
                Ok(chunk) => self.rest = chunk,
                Err(err) => return Some(Err(err)),
            }
        }
        let len = self.rest.len().min(PIECE_BYTES);
        Some(Ok(self.rest.split_to(len)))
    }

    /// The header row, then each chunk's rows; None at the end.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        let manifest = &self.manifest;
        if !self.started {
            self.started = true;
            let mut header = ResultsWriter::new(self.job.delimiter);
            header.header(&manifest.names());
            return Some(Ok(Bytes::from(header.finish())));
        }
        let index = self.next;
        if index >= manifest.chunk_rows.len() {
            return None;
        }
        self.next += 1;
        Some(self.chunk(index as u32).await)
    }

    async fn chunk(&self, chunk: u32) -> Result<Bytes, StoreError> {
        let (store, id) = (&self.imports.store, self.job.id.as_str());
        if let Some(part) = store.import_part(id, ImportPart::Results(chunk)).await? {
            let (_, rows) = decode_part(&part).ok_or_else(|| corrupt(id, "results"))?;
            return Ok(Bytes::copy_from_slice(rows));
        }
        let file = store
            .import_part(id, ImportPart::File(chunk))
            .await?
            .ok_or_else(|| StoreError::Unavailable(format!("import {id} has expired")))?;
        let why = [FieldError::new(
            "row",
            match self.job.status {
                JobStatus::Cancelled => "not processed: the import was cancelled",
                _ => "not processed: the import failed",
            },
        )];
        let mut results = ResultsWriter::new(self.job.delimiter);
        for record in reader(self.job.delimiter, &file[..]).byte_records() {
            let record = record.map_err(|_| corrupt(id, "file"))?;
            results.row(&record, Shown::Rejected(&why));
        }
        Ok(Bytes::from(results.finish()))
    }
}
