//! The operations of the API description, one documented stub each: utoipa reads only their
//! attributes. The route table (`super::super::routes`) names each stub beside its handler and
//! supplies the path, method and operation id, so those three live in one place.
#![allow(dead_code)] // The stubs are never called; only their generated `__path_*` types are read.

use super::super::problem::CONTENT_TYPE as PROBLEM;
use super::bodies::{
    BatchReply, BatchRequest, Health, IdempotencyKey, IfMatch, ImportFile, ImportForm,
    ImportIdPath, ImportListing, IssueInputs, IssueQuery, ListQuery, NotReady, Ready,
    RecordChanges, TrackingNumberPath, UploadQuery,
};
use crate::domain::Record;
use crate::domain::import::ImportJob;
use crate::domain::inspect::Inspection;
use crate::http::Problem;

/// Issue one tracking number
///
/// Every parameter is optional. Unknown parameters are refused, and so is a parameter given
/// twice or with an empty value. Two identical requests get two different numbers, unless they
/// share an `Idempotency-Key`.
#[utoipa::path(
    get,
    path = "/next-tracking-number",
    operation_id = "issueNumber",
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
pub fn issue_number() {}

/// Check the inputs of an issue, issuing nothing
///
/// A `HEAD` is safe, so this issues no number: it checks the parameters and `Idempotency-Key`
/// as `GET` does and answers with `GET`'s status and content type, without a body. A 200 has no
/// `ETag`, as there is no record.
#[utoipa::path(
    head,
    path = "/next-tracking-number",
    operation_id = "issueNumberHead",
    params(IssueQuery, IdempotencyKey),
    responses(
        (status = 200, description = "A `GET` with these inputs would be taken"),
        (status = 400, description = "Bad parameters or `Idempotency-Key` (the `GET` names \
            each in `errors`)"),
    )
)]
pub fn issue_number_head() {}

/// Issue a batch of numbers
///
/// Either `count` numbers for one set of inputs, or one number per entry of `orders`. Every
/// order is validated before any number is issued.
#[utoipa::path(
    post,
    path = "/v1/tracking-numbers",
    operation_id = "issueBatch",
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
pub fn issue_batch() {}

/// Read a record
#[utoipa::path(
    get,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "getRecord",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "The record", body = Record,
         headers(("ETag" = String, description = "The strong tag of this version of the record"))),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
    )
)]
pub fn get_record() {}

/// Change a record
///
/// A JSON merge patch: a member given is set, `null` clears `destination_country_id`,
/// `weight`, `customer_name` or `customer_slug`, and a member left out stays. Without
/// `If-Match`, a change that loses a race to another is applied again to the new version.
#[utoipa::path(
    patch,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "updateRecord",
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
pub fn update_record() {}

/// Remove a record
///
/// Its number is never issued again all the same.
#[utoipa::path(
    delete,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "deleteRecord",
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
pub fn delete_record() {}

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
pub fn register_number() {}

/// Decode a number without its record
#[utoipa::path(
    get,
    path = "/v1/tracking-numbers/{tn}/check",
    operation_id = "checkNumber",
    params(TrackingNumberPath),
    responses(
        (status = 200, description = "What the number says about itself", body = Inspection),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
    )
)]
pub fn check_number() {}

/// Liveness
///
/// 200 for as long as the process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health))
)]
pub fn healthz() {}

/// Readiness
///
/// Ready when storage answers and the pool holds serials to issue numbers with.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready to issue numbers", body = Ready),
        (status = 503, description = "Not ready, and why", body = NotReady),
    )
)]
pub fn readyz() {}

/// Metrics, in the Prometheus text format
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus metrics, in the OpenMetrics text format", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
pub fn metrics() {}

/// This description
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", body = Object,
         content_type = "application/json"),
    )
)]
pub fn openapi_json() {}

/// Import a CSV file of orders
///
/// A `text/csv` body, or `multipart/form-data` with a `file` part. A header row is required:
/// the columns are the order inputs plus optional `order_id` and `expires_at`, in any order and
/// any case; unknown columns are refused. UTF-8, with or without a BOM. The rows are issued by a
/// job that any instance may run; follow it at the `Location`.
#[utoipa::path(
    post,
    path = "/v1/imports",
    operation_id = "createImport",
    params(UploadQuery, IdempotencyKey),
    request_body(content(
        (ImportFile = "text/csv"),
        (ImportForm = "multipart/form-data"),
    )),
    responses(
        (status = 202, description = "The job, queued (or done at once for a file of no rows)",
         body = ImportJob,
         headers(
            ("Location" = String, description = "The job's URL path"),
            ("Idempotent-Replayed" = String, description = "`true` on the kept reply to an earlier request with this key"),
         )),
        (status = 400, description = "Not a CSV file, or bad or missing header columns, or bad \
            parameters: every one named in `errors`", body = Problem, content_type = PROBLEM),
        (status = 409, description = IN_FLIGHT, body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 413, description = "The file is over `--import-max-bytes`", body = Problem,
         content_type = PROBLEM),
        (status = 422, description = KEY_REUSED, body = Problem, content_type = PROBLEM),
    )
)]
pub fn create_import() {}

/// Recent imports
#[utoipa::path(
    get,
    path = "/v1/imports",
    operation_id = "listImports",
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's jobs, newest first", body = ImportListing),
        (status = 400, description = "Bad parameters, every one named in `errors`",
         body = Problem, content_type = PROBLEM),
    )
)]
pub fn list_imports() {}

/// An import's status
#[utoipa::path(
    get,
    path = "/v1/imports/{id}",
    operation_id = "getImport",
    params(ImportIdPath),
    responses(
        (status = 200, description = "The job", body = ImportJob),
        (status = 404, description = NO_IMPORT, body = Problem, content_type = PROBLEM),
    )
)]
pub fn get_import() {}

/// Cancel an import
///
/// A queued job is cancelled at once. A running one is cancelled by its worker once the chunk
/// of rows in flight is done, which the reply waits for (up to 5 s): the job then says
/// `cancelled` and counts what was issued, or still `running` when the chunk takes longer (it
/// ends `cancelled` right after). Rows that already got numbers keep them; an ended job never
/// changes again.
#[utoipa::path(
    delete,
    path = "/v1/imports/{id}",
    operation_id = "cancelImport",
    params(ImportIdPath),
    responses(
        (status = 202, description = "The job as it is after the cancel: cancelled, or still running the chunk in flight", body = ImportJob),
        (status = 404, description = NO_IMPORT, body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job has already ended", body = Problem,
         content_type = PROBLEM),
    )
)]
pub fn cancel_import() {}

/// An import's results
///
/// The input rows in input order, as they came, with `tracking_number` and `error` columns
/// appended, in the file's delimiter. Rows a cancelled or failed job never reached say so in
/// `error`. A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is written
/// with a `'` before it, so that a spreadsheet does not run it as a formula.
#[utoipa::path(
    get,
    path = "/v1/imports/{id}/results",
    operation_id = "getImportResults",
    params(ImportIdPath),
    responses(
        (status = 200, description = "The results, streamed", body = String,
         content_type = "text/csv; charset=utf-8",
         headers(("Content-Disposition" = String, description = "A file name for the download"))),
        (status = 404, description = NO_IMPORT, body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job has not ended yet", body = Problem,
         content_type = PROBLEM),
    )
)]
pub fn import_results() {}

const NO_IMPORT: &str = "No such import visible to the caller (never made, another tenant's, or \
                         expired)";

/// The web page
///
/// One HTML page for people: issue a number, look one up or check it, upload a CSV import and
/// follow it to its results, see recent imports. Its style and script are inline, and it calls
/// this API from the browser. The page needs no API key; the calls it makes do when keys are on.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "page",
    params(("If-None-Match" = Option<String>, Header,
            description = "The `ETag` of a copy the caller holds")),
    responses(
        (status = 200, description = "The page", body = String,
         content_type = "text/html; charset=utf-8",
         headers(
            ("ETag" = String, description = "The strong tag of this build's page"),
            ("Content-Security-Policy" = String, description = "Only the page's own inline style \
                and script run, and it calls this origin only"),
         )),
        (status = 304, description = PAGE_HELD,
         headers(("ETag" = String, description = "The strong tag of this build's page"))),
    )
)]
pub fn page() {}

const PAGE_HELD: &str = "The caller's copy (`If-None-Match`) is this build's page";

const IN_FLIGHT: &str = "The first request with this `Idempotency-Key` is still running and did \
                         not finish within the wait; retry to get its reply";
const KEY_REUSED: &str = "This `Idempotency-Key` was used for a request with other inputs; \
                          nothing was issued";
const BAD_NUMBER: &str = "The number in the path is not 1 to 16 characters of `A-Z0-9` \
                          (`tracking_number` in `errors`)";
const NOT_FOUND: &str = "No live record holds the number (never issued, deleted or expired)";
const STALE: &str = "The record is no longer the version in `If-Match`; nothing changed";
