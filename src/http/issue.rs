//! Issuing: `GET /next-tracking-number` (and `/v1/next-tracking-number`) for one number, `POST
//! /v1/tracking-numbers` for a batch. Both validate everything first, then issue under the
//! request's `Idempotency-Key`, if any. A `HEAD` of the one-number route validates the same way
//! and issues nothing: a HEAD is safe (RFC 9110 §9.2.1), whatever its GET does.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::Utc;
use hyper::StatusCode;

use super::idempotent::{IN_FLIGHT, KEY_REUSED};
use super::openapi::bodies::{BatchReply, BatchRequest, IdempotencyKey, IssueQuery};
use super::problem::CONTENT_TYPE as PROBLEM;
use super::{Call, Problem, Response, body, idempotent, json_reply, query, record_reply};
use crate::domain::Record;
use crate::domain::idempotency::fingerprint;
use crate::domain::request::batch_from_json;

/// Issue one tracking number
///
/// Every parameter is optional. Unknown parameters are refused, and so is a parameter given
/// twice or with an empty value. Two identical requests get two different numbers, unless they
/// share an `Idempotency-Key`.
#[utoipa::path(
    trace, path = "",
    params(IssueQuery, IdempotencyKey),
    responses(
        (status = 200, description = "The new number's record", body = Record,
         headers(
            ("ETag" = String, description = "The strong tag of this version of the record"),
            ("Idempotent-Replayed" = String, description = "`true` on the kept reply to an earlier request with this key"),
         )),
        (status = 400, description = "Bad parameters or `Idempotency-Key`, every one named in \
            `errors`", body = Problem, content_type = PROBLEM),
        (status = 409, description = IN_FLIGHT, body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 422, description = KEY_REUSED, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn one(call: Call) -> Response {
    let request = match query::parse_issue(call.query(), Utc::now()) {
        Ok(request) => request,
        Err(errors) => return Problem::invalid(errors).into_response(),
    };
    let key = match idempotent::key(call.header(idempotent::HEADER)) {
        Ok(key) => key,
        Err(problem) => return problem.into_response(),
    };
    // Only a keyed request needs one: worked out before the request moves into the work.
    let fingerprint = key.as_ref().map(|_| canonical("issue", &request));
    let Call { state, who, .. } = call;
    let run = {
        let (state, owner) = (state.clone(), who.tenant.clone());
        async move {
            match state.issuer.issue(&request, owner.as_ref()).await {
                Ok(json) => Ok((StatusCode::OK, json)),
                Err(err) => Err(err.into()),
            }
        }
    };
    idempotent::respond(&state, &who, key, fingerprint, run, record_reply).await
}

/// Check the inputs of an issue, issuing nothing
///
/// A `HEAD` is safe, so this issues no number: it checks the parameters and `Idempotency-Key`
/// as `GET` does and answers with `GET`'s status and content type, without a body. A 200 has no
/// `ETag`, as there is no record.
#[utoipa::path(
    trace, path = "",
    params(IssueQuery, IdempotencyKey),
    responses(
        (status = 200, description = "A `GET` with these inputs would be taken"),
        (status = 400, description = "Bad parameters or `Idempotency-Key` (the `GET` names \
            each in `errors`)"),
    )
)]
pub async fn check(call: Call) -> Response {
    if let Err(errors) = query::parse_issue(call.query(), Utc::now()) {
        return Problem::invalid(errors).into_response();
    }
    if let Err(problem) = idempotent::key(call.header(idempotent::HEADER)) {
        return problem.into_response();
    }
    // The head of `GET`'s reply, without an `ETag` or a length: no record, nothing to measure.
    json_reply(StatusCode::OK, Bytes::new())
}

/// Issue a batch of numbers
///
/// Either `count` numbers for one set of inputs, or one number per entry of `orders`. Every
/// order is validated before any number is issued.
#[utoipa::path(
    trace, path = "",
    params(IdempotencyKey),
    request_body(content = BatchRequest),
    responses(
        (status = 201, description = "The records, in the order asked for", body = BatchReply,
         headers(("Idempotent-Replayed" = String, description = "`true` on the kept reply to an earlier request with this key"))),
        (status = 400, description = "Bad body or `Idempotency-Key`: every bad field is named, \
            with its order's index (`orders[3].weight`); nothing was issued",
         body = Problem, content_type = PROBLEM),
        (status = 409, description = IN_FLIGHT, body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 422, description = KEY_REUSED, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn batch(call: Call) -> Response {
    let key = call.header(idempotent::HEADER);
    let Call {
        state, who, body, ..
    } = call;
    let requests = match body::object(body, body::BATCH_LIMIT).await {
        Ok(object) => batch_from_json(&object, Utc::now()).map_err(Problem::invalid),
        Err(problem) => Err(problem),
    };
    let (requests, key) = match (requests, idempotent::key(key)) {
        (Ok(requests), Ok(key)) => (requests, key),
        (Err(problem), _) | (_, Err(problem)) => return problem.into_response(),
    };
    let fingerprint = key.as_ref().map(|_| canonical("batch", &requests));
    let run = {
        let (state, owner) = (state.clone(), who.tenant.clone());
        async move {
            match state.issuer.issue_batch(&requests, owner.as_ref()).await {
                Ok(records) => Ok((StatusCode::CREATED, batch_body(&records))),
                Err(err) => Err(err.into()),
            }
        }
    };
    idempotent::respond(&state, &who, key, fingerprint, run, json_reply).await
}

/// `{"count": N, "records": [...]}`, the records' stored JSON spliced in as is.
fn batch_body(records: &[Bytes]) -> Bytes {
    let size: usize = records.iter().map(|r| r.len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 32);
    out.put_slice(format!("{{\"count\":{},\"records\":[", records.len()).as_bytes());
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(record);
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// The fingerprint of validated inputs, in their canonical JSON form.
fn canonical(operation: &str, inputs: &(impl serde::Serialize + ?Sized)) -> String {
    fingerprint(operation, &serde_json::to_vec(inputs).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IssueRequest;

    #[test]
    fn batch_bodies_are_valid_json_in_order() {
        let body = batch_body(&[
            Bytes::from_static(b"{\"a\":1}"),
            Bytes::from_static(b"{\"a\":2}"),
        ]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["count"], 2);
        assert_eq!(value["records"][1]["a"], 2);
        let empty: serde_json::Value = serde_json::from_slice(&batch_body(&[])).unwrap();
        assert_eq!(empty["records"], serde_json::json!([]));
    }

    #[test]
    fn fingerprints_follow_inputs() {
        let a = IssueRequest {
            order: Default::default(),
            expires_at: None,
        };
        let mut b = a.clone();
        b.expires_at = Some(Utc::now());
        assert_ne!(canonical("issue", &a), canonical("issue", &b));
        assert_eq!(canonical("issue", &a), canonical("issue", &a.clone()));
    }
}
