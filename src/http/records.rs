//! `/v1/tracking-numbers/{tn}`: read (GET), change (PATCH), remove (DELETE), register a number
//! issued elsewhere (PUT), and `/check` to decode a number. Numbers in paths are
//! case-insensitive; every record reply carries its `ETag`.

use bytes::Bytes;
use chrono::Utc;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::{
    Call, Problem, Response, SharedState, body, empty_reply, idempotent, json_reply, record_reply,
};
use crate::domain::idempotency::fingerprint;
use crate::domain::request::issue_from_json;
use crate::domain::tracking_number::MSG_NUMBER;
use crate::domain::{FieldError, Principal, RecordPatch, TrackingNumber};
use crate::service::records::Registered;

/// A handler's outcome as the reply: its response, or its problem.
fn reply(outcome: Result<Response, Problem>) -> Response {
    outcome.unwrap_or_else(Problem::into_response)
}

/// `GET`: the record.
pub async fn get(call: Call) -> Response {
    reply(get_record(call).await)
}

/// `PATCH`: a merge patch, optionally against the version in `If-Match`.
pub async fn update(call: Call) -> Response {
    reply(patch_record(call).await)
}

/// `DELETE`: removes the record, optionally only the version in `If-Match`.
pub async fn delete(call: Call) -> Response {
    reply(delete_record(call).await)
}

/// `PUT`: registers a number issued elsewhere.
pub async fn register(call: Call) -> Response {
    reply(put_record(call).await)
}

/// `GET .../check`: what the number says about itself.
pub async fn check(call: Call) -> Response {
    reply(check_number(call).await)
}

/// The path's number, parsed, or a 400 naming it.
fn number(raw: &str) -> Result<TrackingNumber, Problem> {
    TrackingNumber::parse(raw)
        .ok_or_else(|| Problem::invalid(vec![FieldError::new("tracking_number", MSG_NUMBER)]))
}

/// A change: the caller's state and principal, the number, the body.
type Change = (
    SharedState,
    Principal,
    TrackingNumber,
    serde_json::Map<String, serde_json::Value>,
);

/// A change's parts: the caller, the path's number and the body as a JSON object. The body is
/// read whatever the number, and a bad number is reported before a bad body.
async fn number_and_body(call: Call) -> Result<Change, Problem> {
    let Call {
        state,
        who,
        param,
        body,
        ..
    } = call;
    let object = body::object(body, body::RECORD_LIMIT).await;
    Ok((state, who, number(&param)?, object?))
}

async fn get_record(call: Call) -> Result<Response, Problem> {
    let number = number(&call.param)?;
    let json = call.state.records.get(&number, &call.who).await?;
    Ok(record_reply(StatusCode::OK, json))
}

async fn patch_record(call: Call) -> Result<Response, Problem> {
    let (if_match, key) = (call.header("if-match"), call.header(idempotent::HEADER));
    let (state, who, number, object) = number_and_body(call).await?;
    let patch = RecordPatch::from_json(&object, Utc::now()).map_err(Problem::invalid)?;
    let key = idempotent::key(key)?;
    let fingerprint = key
        .as_ref()
        .map(|_| change_fingerprint("patch", &number, if_match.as_deref(), Some(&object)));
    let run = {
        let (state, who) = (state.clone(), who.clone());
        async move {
            let json = state
                .records
                .update(&number, &patch, if_match.as_deref(), &who)
                .await?;
            Ok((StatusCode::OK, json))
        }
    };
    Ok(idempotent::respond(&state, &who, key, fingerprint, run, record_reply).await)
}

async fn delete_record(call: Call) -> Result<Response, Problem> {
    let (if_match, key) = (call.header("if-match"), call.header(idempotent::HEADER));
    let Call {
        state, who, param, ..
    } = call;
    let number = number(&param)?;
    let key = idempotent::key(key)?;
    let fingerprint = key
        .as_ref()
        .map(|_| change_fingerprint("delete", &number, if_match.as_deref(), None));
    let run = {
        let (state, who) = (state.clone(), who.clone());
        async move {
            state
                .records
                .delete(&number, if_match.as_deref(), &who)
                .await?;
            Ok((StatusCode::NO_CONTENT, Bytes::new()))
        }
    };
    Ok(idempotent::respond(&state, &who, key, fingerprint, run, no_content).await)
}

/// What a keyed change is about: the operation, the number, the version asked for and the
/// patch's members (a JSON object's members come out in one order, whatever order they came in).
fn change_fingerprint(
    operation: &str,
    number: &TrackingNumber,
    if_match: Option<&str>,
    patch: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    let inputs = serde_json::json!({ "number": number, "if_match": if_match, "patch": patch });
    fingerprint(operation, inputs.to_string().as_bytes())
}

fn no_content(status: StatusCode, _: Bytes) -> Response {
    empty_reply(status)
}

async fn put_record(call: Call) -> Result<Response, Problem> {
    let (state, who, number, object) = number_and_body(call).await?;
    let request = issue_from_json(&object, Utc::now()).map_err(Problem::invalid)?;
    let (json, registered) = state.records.register(&number, request, &who).await?;
    let status = match registered {
        Registered::Created => StatusCode::CREATED,
        Registered::Existed => StatusCode::OK,
    };
    let mut response = record_reply(status, json);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tracking-numbers/{number}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn check_number(call: Call) -> Result<Response, Problem> {
    let number = number(&call.param)?;
    let inspection = call.state.records.check(&number, &call.who).await;
    let body = serde_json::to_vec(&inspection).unwrap_or_default();
    Ok(json_reply(StatusCode::OK, body.into()))
}
