//! `GET /openapi.json`: the API's OpenAPI 3.1 description. utoipa builds it from the reply and
//! domain types and from the documented stubs below (warp filters are nothing utoipa can read);
//! [`shared::add_to`] then adds what every operation shares, so no path repeats it by hand. The
//! document is built once and served as the same bytes every time.

use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::Value;
use utoipa::OpenApi;
use warp::Filter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

use super::problem::CONTENT_TYPE as PROBLEM;
use super::{Problem, other_methods};
use crate::domain::inspect::Inspection;
use crate::domain::{FieldError, Record, Status};
use bodies::{
    BatchReply, BatchRequest, Health, IdempotencyKey, IfMatch, IssueInputs, IssueQuery, NotReady,
    Ready, RecordChanges, TrackingNumberPath,
};

mod bodies;
mod shared;

pub fn route() -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let path = warp::path!("openapi.json");
    path.and(warp::get())
        .map(|| {
            let mut response = Response::new(DOCUMENT.clone().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        })
        .or(path.and(other_methods("GET")))
        .unify()
}

static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
    // Serializing a JSON value cannot fail: every key is a string.
    Bytes::from(serde_json::to_vec(&document()).unwrap_or_default())
});

/// The whole description, as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    shared::add_to(&mut doc);
    doc
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tracknum",
        description = "Issues unique parcel tracking numbers and keeps a record of each.\n\n\
            Every error is an RFC 9457 problem (`application/problem+json`). Every reply carries \
            an `X-Request-Id` header.",
    ),
    paths(
        issue_number,
        issue_batch,
        get_record,
        update_record,
        delete_record,
        register_number,
        check_number,
        healthz,
        healthz_head,
        readyz,
        readyz_head,
        metrics,
        openapi_json,
    ),
    components(schemas(
        Record,
        Status,
        Inspection,
        Problem,
        FieldError,
        BatchReply,
        BatchRequest,
        IssueInputs,
        RecordChanges,
        Health,
        Ready,
        NotReady
    )),
    tags(
        (name = "issuing", description = "New tracking numbers, one at a time or in batches"),
        (name = "records", description = "The record every number leaves"),
        (name = "operations", description = "Probes, metrics and this description"),
    )
)]
struct ApiDoc;

// The operations. utoipa reads only the attributes; warp routes requests to the handlers in
// `issue.rs`, `records.rs` and `health.rs`.

/// Issue one tracking number
///
/// Every parameter is optional. Unknown parameters are refused, and so is a parameter given
/// twice or with an empty value. Two identical requests get two different numbers, unless they
/// share an `Idempotency-Key`.
#[utoipa::path(
    get,
    path = "/next-tracking-number",
    operation_id = "issueNumber",
    tag = "issuing",
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
#[allow(dead_code)]
fn issue_number() {}

/// Issue a batch of numbers
///
/// Either `count` numbers for one set of inputs, or one number per entry of `orders`. Every
/// order is validated before any number is issued.
#[utoipa::path(
    post,
    path = "/v1/tracking-numbers",
    operation_id = "issueBatch",
    tag = "issuing",
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
#[allow(dead_code)]
fn issue_batch() {}

/// Read a record
#[utoipa::path(
    get,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "getRecord",
    tag = "records",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "The record", body = Record,
         headers(("ETag" = String, description = "The strong tag of this version of the record"))),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
    )
)]
#[allow(dead_code)]
fn get_record() {}

/// Change a record
///
/// A JSON merge patch: a member given is set, `null` clears `destination_country_id`,
/// `weight`, `customer_name` or `customer_slug`, and a member left out stays. Without
/// `If-Match`, a change that loses a race to another is applied again to the new version.
#[utoipa::path(
    patch,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "updateRecord",
    tag = "records",
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
#[allow(dead_code)]
fn update_record() {}

/// Remove a record
///
/// Its number is never issued again all the same.
#[utoipa::path(
    delete,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "deleteRecord",
    tag = "records",
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
#[allow(dead_code)]
fn delete_record() {}

/// Register a number issued elsewhere
///
/// Takes the same inputs as issuing; the body is optional. A 16-character number whose last
/// character is a valid check character for the first 15 has this service's layout and could
/// collide with a number issued later, so it is refused. A PUT is idempotent: when the live
/// record is the one this PUT would make (same inputs, same tenant, unchanged since), the
/// answer is 200 with it.
#[utoipa::path(
    put,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "registerNumber",
    tag = "records",
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
#[allow(dead_code)]
fn register_number() {}

/// Decode a number without its record
#[utoipa::path(
    get,
    path = "/v1/tracking-numbers/{tn}/check",
    operation_id = "checkNumber",
    tag = "records",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "What the number says about itself", body = Inspection),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
    )
)]
#[allow(dead_code)]
fn check_number() {}

/// Liveness
///
/// 200 for as long as the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = Health))
)]
#[allow(dead_code)]
fn healthz() {}

/// Liveness, without a body
#[utoipa::path(
    head,
    path = "/healthz",
    operation_id = "healthzHead",
    tag = "operations",
    responses((status = 200, description = "Alive"))
)]
#[allow(dead_code)]
fn healthz_head() {}

/// Readiness
///
/// Ready when storage answers and the pool holds serials to issue numbers with.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to issue numbers", body = Ready),
        (status = 503, description = "Not ready, and why", body = NotReady),
    )
)]
#[allow(dead_code)]
fn readyz() {}

/// Readiness, without a body
#[utoipa::path(
    head,
    path = "/readyz",
    operation_id = "readyzHead",
    tag = "operations",
    responses(
        (status = 200, description = "Ready to issue numbers"),
        (status = 503, description = "Not ready"),
    )
)]
#[allow(dead_code)]
fn readyz_head() {}

/// Metrics, in the Prometheus text format
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus metrics, in the OpenMetrics text format", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
#[allow(dead_code)]
fn metrics() {}

/// This description
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object,
         content_type = "application/json"),
    )
)]
#[allow(dead_code)]
fn openapi_json() {}

const IN_FLIGHT: &str = "The first request with this `Idempotency-Key` is still running and did \
                         not finish within the wait; retry to get its reply";
const KEY_REUSED: &str = "This `Idempotency-Key` was used for a request with other inputs; \
                          nothing was issued";
const BAD_NUMBER: &str = "The number in the path is not 1 to 16 characters of `A-Z0-9` \
                          (`tracking_number` in `errors`)";
const NOT_FOUND: &str = "No live record holds the number (never issued, deleted or expired)";
const STALE: &str = "The record is no longer the version in `If-Match`; nothing changed";

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/openapi.json");

    /// The committed description must match the generated one, so every change to the API
    /// description shows up in review. `UPDATE_SNAPSHOTS=1 cargo test --lib openapi` rewrites it.
    #[test]
    fn document_matches_the_snapshot() {
        let generated = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(SNAPSHOT).parent().unwrap()).unwrap();
            std::fs::write(SNAPSHOT, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(SNAPSHOT).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
            panic!(
                "the OpenAPI document differs from {SNAPSHOT} from line {} on.\n\
                 If the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test --lib openapi` \
                 and commit the file.",
                line + 1
            );
        }
    }

    #[test]
    fn is_openapi_3_1_with_unique_operation_ids() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut ids = Vec::new();
        for (_, item) in doc["paths"].as_object().unwrap() {
            for (_, operation) in item.as_object().unwrap() {
                ids.push(operation["operationId"].as_str().unwrap().to_owned());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids must be unique");
    }

    #[test]
    fn guarded_operations_take_a_key_and_open_ones_do_not() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let guarded = !shared::OPEN_PATHS.contains(&path.as_str());
                assert_eq!(operation["security"].is_array(), guarded, "{method} {path}");
                assert_eq!(
                    operation["responses"]["401"].is_object(),
                    guarded,
                    "{method} {path}"
                );
                for status in ["413", "414", "431", "503"] {
                    assert!(
                        operation["responses"][status].is_object(),
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
