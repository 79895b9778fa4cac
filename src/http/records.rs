//! `/v1/tracking-numbers/{tn}`: read (GET), change (PATCH), remove (DELETE), register a number
//! issued elsewhere (PUT), and `/check` to decode a number. Numbers in paths are
//! case-insensitive; every record reply carries its `ETag`.

use chrono::Utc;
use warp::Filter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use bytes::Bytes;

use super::{
    Problem, SharedState, body, idempotent, json_reply, optional_header, other_methods, principal,
    record_reply, with_state,
};
use crate::domain::idempotency::fingerprint;
use crate::domain::inspect::{MSG_NUMBER, normalize};
use crate::domain::request::issue_from_json;
use crate::domain::{FieldError, Principal, RecordPatch};
use crate::service::records::{RecordError, Registered};

pub fn route(
    state: SharedState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let record = warp::path!("v1" / "tracking-numbers" / String);
    let if_match = || optional_header("if-match");
    let key = || optional_header(idempotent::HEADER);
    let get = record
        .and(warp::get())
        .and(principal())
        .and(with_state(state.clone()))
        .then(get_record)
        .map(reply);
    let patch = record
        .and(warp::patch())
        .and(if_match())
        .and(key())
        .and(warp::body::stream())
        .and(principal())
        .and(with_state(state.clone()))
        .then(patch_record)
        .map(reply);
    let delete = record
        .and(warp::delete())
        .and(if_match())
        .and(key())
        .and(principal())
        .and(with_state(state.clone()))
        .then(delete_record)
        .map(reply);
    let put = record
        .and(warp::put())
        .and(warp::body::stream())
        .and(principal())
        .and(with_state(state.clone()))
        .then(put_record)
        .map(reply);
    let check_path = warp::path!("v1" / "tracking-numbers" / String / "check");
    let check = check_path
        .and(warp::get())
        .and(principal())
        .and(with_state(state))
        .then(check_number)
        .map(reply);
    get.or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(put)
        .unify()
        .or(check)
        .unify()
        .or(record
            .and(other_methods("GET, PATCH, DELETE, PUT"))
            .map(|_, r| r))
        .unify()
        .or(check_path.and(other_methods("GET")).map(|_, r| r))
        .unify()
}

/// A handler's outcome as the reply: its response, or its problem.
fn reply(outcome: Result<Response, Problem>) -> Response {
    outcome.unwrap_or_else(Problem::into_response)
}

/// The path's number, normalized, or a 400 naming it.
fn number(raw: &str) -> Result<String, Problem> {
    normalize(raw)
        .ok_or_else(|| Problem::invalid(vec![FieldError::new("tracking_number", MSG_NUMBER)]))
}

async fn get_record(raw: String, who: Principal, state: SharedState) -> Result<Response, Problem> {
    let number = number(&raw)?;
    let json = state.records.get(&number, &who).await.map_err(failed)?;
    Ok(record_reply(StatusCode::OK, json))
}

async fn patch_record(
    raw: String,
    if_match: Option<String>,
    key: Option<String>,
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>>,
    who: Principal,
    state: SharedState,
) -> Result<Response, Problem> {
    let object = body::object(body, body::RECORD_LIMIT).await;
    let number = number(&raw)?;
    let object = object?;
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
                .await
                .map_err(failed)?;
            Ok((StatusCode::OK, json))
        }
    };
    Ok(idempotent::respond(&state, &who, key, fingerprint, run, record_reply).await)
}

async fn delete_record(
    raw: String,
    if_match: Option<String>,
    key: Option<String>,
    who: Principal,
    state: SharedState,
) -> Result<Response, Problem> {
    let number = number(&raw)?;
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
                .await
                .map_err(failed)?;
            Ok((StatusCode::NO_CONTENT, Bytes::new()))
        }
    };
    Ok(idempotent::respond(&state, &who, key, fingerprint, run, no_content).await)
}

/// What a keyed change is about: the operation, the number, the version asked for and the
/// patch's members (a JSON object's members come out in one order, whatever order they came in).
fn change_fingerprint(
    operation: &str,
    number: &str,
    if_match: Option<&str>,
    patch: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    let inputs = serde_json::json!({ "number": number, "if_match": if_match, "patch": patch });
    fingerprint(operation, inputs.to_string().as_bytes())
}

fn no_content(status: StatusCode, _: Bytes) -> Response {
    let mut response = Response::new(Default::default());
    *response.status_mut() = status;
    response
}

async fn put_record(
    raw: String,
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>>,
    who: Principal,
    state: SharedState,
) -> Result<Response, Problem> {
    let object = body::object(body, body::RECORD_LIMIT).await;
    let number = number(&raw)?;
    let request = issue_from_json(&object?, Utc::now()).map_err(Problem::invalid)?;
    let (json, registered) = state
        .records
        .register(&number, request, &who)
        .await
        .map_err(failed)?;
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

async fn check_number(
    raw: String,
    who: Principal,
    state: SharedState,
) -> Result<Response, Problem> {
    let number = number(&raw)?;
    let inspection = state.records.check(&number, &who).await;
    let body = serde_json::to_vec(&inspection).unwrap_or_default();
    Ok(json_reply(StatusCode::OK, body.into()))
}

fn failed(err: RecordError) -> Problem {
    let detail = err.to_string();
    match err {
        RecordError::NotFound(_) => Problem::not_found(detail),
        RecordError::Stale => Problem::precondition_failed(detail),
        RecordError::Busy => Problem::conflict(
            "urn:tracknum:problem:concurrent-update",
            "Concurrent update",
            detail,
        )
        .retry_after(1),
        RecordError::BadMove(bad) => Problem::conflict(
            "urn:tracknum:problem:invalid-status-move",
            "Invalid status move",
            detail,
        )
        .with("from", bad.from.as_str())
        .with("to", bad.to.as_str()),
        RecordError::Exists(_) => Problem::conflict(
            "urn:tracknum:problem:already-exists",
            "Record exists",
            detail,
        ),
        RecordError::Reserved(_) => Problem::unprocessable(
            "urn:tracknum:problem:reserved-number",
            "Number reserved",
            detail,
        ),
        RecordError::Store(err) => err.into(),
    }
}
