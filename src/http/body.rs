//! Request bodies: read up to a limit (413 past it, whether or not a Content-Length was sent),
//! then parsed as a JSON object, with a problem naming what is wrong. A body that stops arriving
//! for `--idle-timeout` fails as a broken one does (the server's `RequestBody`).

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::{Problem, RequestBody};
use crate::domain::FieldError;
use crate::domain::request::json_object;

/// A PATCH or PUT body: one record's worth of fields.
pub const RECORD_LIMIT: usize = 64 * 1024;
/// A batch of 1000 orders with every input at its longest fits with room to spare.
pub const BATCH_LIMIT: usize = 2 * 1024 * 1024;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read(mut body: RequestBody, limit: usize) -> Result<Bytes, Problem> {
    let (mut pieces, mut len) = (Vec::new(), 0);
    while let Some(piece) = body.next().await {
        let piece: Bytes = piece.map_err(|err| {
            tracing::debug!(error = %err, "a request body could not be read");
            unreadable()
        })?;
        len += piece.len();
        if len > limit {
            return Err(Problem::too_large(limit));
        }
        pieces.push(piece);
    }
    Ok(match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.swap_remove(0),
        _ => pieces.concat().into(),
    })
}

/// A body whose connection failed, or went quiet, while it was sent.
pub fn unreadable() -> Problem {
    Problem::invalid(vec![FieldError::new(
        "body",
        "could not be read: the connection failed, or stopped sending, before its end",
    )])
}

/// Reads the body as a JSON object (an empty body is an empty object).
pub async fn object(body: RequestBody, limit: usize) -> Result<Map<String, Value>, Problem> {
    let bytes = read(body, limit).await?;
    json_object(&bytes).map_err(Problem::invalid)
}
