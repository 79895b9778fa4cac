//! An ended job's results, read back a chunk at a time.

use std::sync::Arc;

use bytes::Bytes;

use super::{Imports, corrupt};
use crate::domain::FieldError;
use crate::domain::import::file::reader;
use crate::domain::import::results::decode_part;
use crate::domain::import::{ImportJob, JobStatus, Manifest, ResultsWriter, Shown};
use crate::store::{ImportPart, StoreError};

/// An ended job's results: the header row, then each chunk's rows. A chunk that was never
/// processed (the job was cancelled or failed first) shows its rows as they came, with why.
pub struct ResultsStream {
    imports: Arc<Imports>,
    job: ImportJob,
    manifest: Manifest,
    next: usize,
    started: bool,
}

impl ResultsStream {
    pub(super) fn new(imports: Arc<Imports>, job: ImportJob, manifest: Manifest) -> ResultsStream {
        ResultsStream {
            imports,
            job,
            manifest,
            next: 0,
            started: false,
        }
    }

    /// The results' next piece; None at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, StoreError>> {
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
        let (store, id) = (&self.imports.store, &self.job.id);
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
