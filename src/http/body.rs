//! Request bodies: read up to a limit (413 past it, whether or not a Content-Length was sent),
//! then parsed as a JSON object, with a problem naming what is wrong. A body that stops arriving
//! for `--idle-timeout` fails as a broken one does (the server's `RequestBody`).

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value};

use super::Problem;
use crate::domain::FieldError;
use crate::domain::request::json_object;
use crate::server::RequestBody;

/// A PATCH or PUT body: one record's worth of fields.
pub const RECORD_LIMIT: usize = 64 * 1024;
/// A batch of 1000 orders with every input at its longest fits with room to spare.
pub const BATCH_LIMIT: usize = 2 * 1024 * 1024;

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
pub async fn read(body: RequestBody, limit: usize) -> Result<Bytes, Problem> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Problem::too_large(limit)),
        Err(err) => {
            tracing::debug!(error = %err, "a request body could not be read");
            Err(unreadable())
        }
    }
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
