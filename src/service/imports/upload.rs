//! Receiving an upload: its bytes are counted against the limit, digested (a retry with the same
//! `Idempotency-Key` must send the same file and parameters), cut into chunks of whole rows and
//! stored as they arrive, so the file is never held whole. An upload that fails, or whose job is
//! never made, is abandoned: what it stored is removed. How the bytes arrive (a body, a form's
//! part) is the HTTP layer's.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{Draft, Imports};
use crate::domain::FieldError;
use crate::domain::idempotency::fingerprint;
use crate::domain::import::chunks::CHUNK_BYTES;
use crate::domain::import::{Chunker, Delimiter, Upload};
use crate::store::StoreError;

/// Why an upload could not be received.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file is larger than the limit (bytes).
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    /// The file is no CSV we can read: these fields say why.
    #[error("the upload is not a CSV file we can read")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An upload stored in full: its chunks are in the store, its job not yet.
pub struct Received {
    pub draft: Unsubmitted,
    pub upload: Upload,
    /// The file and parameters, digested: a retry with the same `Idempotency-Key` must send
    /// the same.
    pub fingerprint: String,
}

/// An upload stored in full whose job is not made yet: dropped before it is (its request
/// refused, replayed or gone), what it stored is removed.
pub struct Unsubmitted {
    imports: Arc<Imports>,
    draft: Option<Draft>,
}

impl Unsubmitted {
    /// The draft, to submit (once).
    pub fn take(&mut self) -> Draft {
        self.draft.take().expect("a draft is submitted once")
    }
}

impl Drop for Unsubmitted {
    fn drop(&mut self) {
        let (Some(draft), Ok(runtime)) = (self.draft.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let imports = self.imports.clone();
        runtime.spawn(async move { imports.abandon(draft).await });
    }
}

/// Where an upload's bytes go: counted against the limit, digested, cut into chunks, stored.
pub struct Sink {
    imports: Arc<Imports>,
    chunker: Chunker,
    draft: Draft,
    digest: Sha256,
    seen: u64,
    limit: u64,
}

impl Sink {
    /// A sink for an upload of at most `limit` bytes, with its parameters as given (`params`,
    /// part of its fingerprint) and its delimiter, if one was given.
    pub fn new(
        imports: Arc<Imports>,
        params: &str,
        delimiter: Option<Delimiter>,
        limit: u64,
    ) -> Sink {
        let mut digest = Sha256::new();
        digest.update(params.as_bytes());
        digest.update([0]);
        Sink {
            draft: imports.draft(),
            imports,
            chunker: Chunker::new(delimiter, CHUNK_BYTES),
            digest,
            seen: 0,
            limit,
        }
    }

    /// Takes the next bytes of the file, storing each chunk they complete.
    pub async fn take(&mut self, piece: &[u8]) -> Result<(), UploadError> {
        self.seen += piece.len() as u64;
        if self.seen > self.limit {
            return Err(UploadError::TooLarge(self.limit));
        }
        self.digest.update(piece);
        for chunk in self.chunker.feed(piece).map_err(UploadError::Invalid)? {
            self.imports.put_chunk(&mut self.draft, chunk).await?;
        }
        Ok(())
    }

    /// The file has ended: stores its last chunk. Abandons the upload when that fails.
    pub async fn finish(self) -> Result<Received, UploadError> {
        let Sink {
            imports,
            chunker,
            mut draft,
            digest,
            ..
        } = self;
        let stored = async {
            let (chunks, upload) = chunker.finish().map_err(UploadError::Invalid)?;
            for chunk in chunks {
                imports.put_chunk(&mut draft, chunk).await?;
            }
            Ok::<_, UploadError>(upload)
        }
        .await;
        match stored {
            Ok(upload) => Ok(Received {
                draft: Unsubmitted {
                    imports,
                    draft: Some(draft),
                },
                upload,
                fingerprint: fingerprint("import", &digest.finalize()),
            }),
            Err(err) => {
                imports.abandon(draft).await;
                Err(err)
            }
        }
    }

    /// The upload failed before its end: removes what it stored.
    pub async fn abandon(self) {
        self.imports.abandon(self.draft).await;
    }
}
