//! `/v1/tracking-numbers/{tn}`: read (GET), change (PATCH), remove (DELETE), register a number
//! issued elsewhere (PUT), and `/check` to decode a number. Numbers in paths are
//! case-insensitive; every record reply carries its `ETag`.

use bytes::Bytes;
use chrono::Utc;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use super::idempotent::KEY_REUSED;
use super::openapi::bodies::{
    IdempotencyKey, IfMatch, IssueInputs, RecordChanges, TrackingNumberPath,
};
use super::problem::CONTENT_TYPE as PROBLEM;
use super::{
    Call, Problem, Response, SharedState, body, empty_reply, idempotent, json_reply, record_reply,
};
use crate::domain::idempotency::fingerprint;
use crate::domain::inspect::Inspection;
use crate::domain::request::issue_from_json;
use crate::domain::tracking_number::MSG_NUMBER;
use crate::domain::{FieldError, Principal, Record, RecordPatch, TrackingNumber};
use crate::service::records::Registered;

// How the API description words the answers several operations share.
const BAD_NUMBER: &str = "The number in the path is not 1 to 16 characters of `A-Z0-9` \
                          (`tracking_number` in `errors`)";
const NOT_FOUND: &str = "No live record holds the number (never issued, deleted or expired)";
const STALE: &str = "The record is no longer the version in `If-Match`; nothing changed";

/// A handler's outcome as the reply: its response, or its problem.
fn reply(outcome: Result<Response, Problem>) -> Response {
    outcome.unwrap_or_else(Problem::into_response)
}

/// Read a record
#[utoipa::path(
    trace, path = "",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "The record", body = Record,
         headers(("ETag" = String, description = "The strong tag of this version of the record"))),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn get(call: Call) -> Response {
    reply(get_record(call).await)
}

/// Change a record
///
/// A JSON merge patch: a member given is set, `null` clears `destination_country_id`,
/// `weight`, `customer_name` or `customer_slug`, and a member left out stays. Without
/// `If-Match`, a change that loses a race to another is applied again to the new version.
#[utoipa::path(
    trace, path = "",
    params(TrackingNumberPath, IfMatch, IdempotencyKey),
    request_body(content(
        (RecordChanges = "application/merge-patch+json"),
        (RecordChanges = "application/json"),
    )),
    responses(
        (status = 200, description = "The changed record", body = Record,
         headers(("ETag" = String, description = "The strong tag of this version of the record"))),
        (status = 400, description = "Bad number, body or member, every one named in `errors` \
            (unknown members and members that cannot change are refused)",
         body = Problem, content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
        (status = 409, description = "A status move the rules forbid (`from` and `to` name both \
            states), a change that kept losing races, or the first request with this \
            `Idempotency-Key` still running (both with `Retry-After`)",
         body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 412, description = STALE, body = Problem, content_type = PROBLEM),
        (status = 422, description = KEY_REUSED, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn update(call: Call) -> Response {
    reply(patch_record(call).await)
}

/// Remove a record
///
/// Its number is never issued again all the same.
#[utoipa::path(
    trace, path = "",
    params(TrackingNumberPath, IfMatch, IdempotencyKey),
    responses(
        (status = 204, description = "Removed",
         headers(("Idempotent-Replayed" = String, description = "`true` on the kept reply to an earlier request with this key"))),
        (status = 400, description = "Bad number or `Idempotency-Key`", body = Problem,
         content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
        (status = 409, description = "A removal that kept losing races, or the first request \
            with this `Idempotency-Key` still running", body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 412, description = STALE, body = Problem, content_type = PROBLEM),
        (status = 422, description = KEY_REUSED, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn delete(call: Call) -> Response {
    reply(delete_record(call).await)
}

/// Register a number issued elsewhere
///
/// Takes the same inputs as issuing; the body is optional. A 16-character number whose last
/// character is a valid check character for the first 15 has this service's layout and could
/// collide with a number issued later, so it is refused. A PUT is idempotent: when the live
/// record is the one this PUT would make (same inputs, same tenant, unchanged since), the
/// answer is 200 with it.
#[utoipa::path(
    trace, path = "",
    params(TrackingNumberPath),
    request_body(content = IssueInputs),
    responses(
        (status = 200, description = "The record an earlier try of this same PUT made", body = Record,
         headers(
            ("ETag" = String, description = "The strong tag of this version of the record"),
            ("Location" = String, description = "The record's URL path"),
         )),
        (status = 201, description = "The new record", body = Record,
         headers(
            ("ETag" = String, description = "The strong tag of this version of the record"),
            ("Location" = String, description = "The record's URL path"),
         )),
        (status = 400, description = "Bad number, body or input, every one named in `errors`",
         body = Problem, content_type = PROBLEM),
        (status = 409, description = "A live record holds the number (another one, or another \
            tenant's)", body = Problem, content_type = PROBLEM),
        (status = 422, description = "The number has this service's layout", body = Problem,
         content_type = PROBLEM),
    )
)]
pub async fn register(call: Call) -> Response {
    reply(put_record(call).await)
}

/// Decode a number without its record
#[utoipa::path(
    trace, path = "",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "What the number says about itself", body = Inspection),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
    )
)]
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
