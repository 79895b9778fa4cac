//! Request bodies: read up to a limit (413 past it, whether or not a Content-Length was sent),
//! then parsed as a JSON object, with a problem naming what is wrong.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};

use super::Problem;
use crate::domain::FieldError;
use crate::domain::request::json_object;

/// A PATCH or PUT body: one record's worth of fields.
pub const RECORD_LIMIT: usize = 64 * 1024;
/// A batch of 1000 orders with every input at its longest fits with room to spare.
pub const BATCH_LIMIT: usize = 2 * 1024 * 1024;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read(
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
    limit: usize,
) -> Result<Bytes, Problem> {
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|err| {
            tracing::debug!(error = %err, "a request body could not be read");
            Problem::invalid(vec![FieldError::new(
                "body",
                "could not be read: the connection failed while it was sent",
            )])
        })?;
        if out.len() + chunk.remaining() > limit {
            return Err(Problem::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

/// Reads the body as a JSON object (an empty body is an empty object).
pub async fn object(
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
    limit: usize,
) -> Result<Map<String, Value>, Problem> {
    let bytes = read(body, limit).await?;
    json_object(&bytes).map_err(Problem::invalid)
}
