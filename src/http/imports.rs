//! Bulk import: `POST /v1/imports` streams an upload into the store a chunk at a time and
//! queues its job; `GET /v1/imports/{id}` is the job, `GET /v1/imports/{id}/results` its
//! results as CSV, `GET /v1/imports` the recent jobs, and `DELETE /v1/imports/{id}` cancels one.

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde::Serialize;
use sync_wrapper::SyncStream;
use warp::Reply as _;

use super::idempotent::{IN_FLIGHT, KEY_REUSED};
use super::openapi::bodies::{
    IdempotencyKey, ImportFile, ImportForm, ImportIdPath, ImportListing, ListQuery, UploadQuery,
};
use super::problem::CONTENT_TYPE as PROBLEM;
use super::{
    BodyError, Call, Problem, RequestBody, Response, SharedState, body, idempotent, json_reply,
    query,
};
use crate::domain::FieldError;
use crate::domain::import::{Delimiter, ImportId, ImportJob};
use crate::service::imports::upload::{Received, Sink, UploadError};
use crate::service::imports::{Finished, MAX_PAGE, ResultsStream};

/// A listing shows this many jobs a page unless asked for another number.
const DEFAULT_PAGE: usize = 20;
const CSV: &str = "text/csv; charset=utf-8";
/// How the API description words a 404 of an import.
const NO_IMPORT: &str = "No such import visible to the caller (never made, another tenant's, or \
                         expired)";

/// Import a CSV file of orders
///
/// A `text/csv` body, or `multipart/form-data` with a `file` part. A header row is required:
/// the columns are the order inputs plus optional `order_id` and `expires_at`, in any order and
/// any case; unknown columns are refused. UTF-8, with or without a BOM. The rows are issued by a
/// job that any instance may run; follow it at the `Location`.
#[utoipa::path(
    trace, path = "",
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
pub async fn create(call: Call) -> Response {
    let params = upload_params(call.query());
    let key = idempotent::key(call.header(idempotent::HEADER));
    let Call {
        state,
        who,
        headers,
        body,
        ..
    } = call;
    let (params, key) = match (params, key) {
        (Ok(params), Ok(key)) => (params, key),
        (Err(problem), _) | (_, Err(problem)) => return problem.into_response(),
    };
    let received = match receive(&state, &headers, body, &params).await {
        Ok(received) => received,
        Err(problem) => return problem.into_response(),
    };
    let fingerprint = key.as_ref().map(|_| received.fingerprint.clone());
    let run = {
        let (state, tenant) = (state.clone(), who.tenant.clone());
        async move {
            let Received {
                mut draft, upload, ..
            } = received;
            let draft = draft.take();
            let job = state
                .imports
                .submit(draft, upload, tenant, params.dry_run)
                .await?;
            Ok((StatusCode::ACCEPTED, job_json(&job)))
        }
    };
    idempotent::respond(&state, &who, key, fingerprint, run, accepted).await
}

/// An import's status
#[utoipa::path(
    trace, path = "",
    params(ImportIdPath),
    responses(
        (status = 200, description = "The job", body = ImportJob),
        (status = 404, description = NO_IMPORT, body = Problem, content_type = PROBLEM),
    )
)]
pub async fn get(call: Call) -> Response {
    let Some(id) = ImportId::parse(&call.param) else {
        return no_such_import();
    };
    match call.state.imports.job(&id, &call.who).await {
        Ok(Some(job)) => json_reply(StatusCode::OK, job_json(&job)),
        Ok(None) => no_such_import(),
        Err(err) => Problem::from(err).into_response(),
    }
}

/// Recent imports
#[utoipa::path(
    trace, path = "",
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's jobs, newest first", body = ImportListing),
        (status = 400, description = "Bad parameters, every one named in `errors`",
         body = Problem, content_type = PROBLEM),
    )
)]
pub async fn list(call: Call) -> Response {
    let (limit, before) = match page_params(call.query()) {
        Ok(page) => page,
        Err(errors) => return Problem::invalid(errors).into_response(),
    };
    match call.state.imports.list(&call.who, before, limit).await {
        Ok(page) => {
            #[derive(Serialize)]
            struct Listing<'a> {
                imports: &'a [ImportJob],
                /// Where the next page starts (`?before=`); null on the last page.
                next: Option<String>,
            }
            let body = serde_json::to_vec(&Listing {
                imports: &page.jobs,
                next: page.next.map(|at| at.to_string()),
            })
            .unwrap_or_default();
            json_reply(StatusCode::OK, Bytes::from(body))
        }
        Err(err) => Problem::from(err).into_response(),
    }
}

/// An import's results
///
/// The input rows in input order, as they came, with `tracking_number` and `error` columns
/// appended, in the file's delimiter. Rows a cancelled or failed job never reached say so in
/// `error`. A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is written
/// with a `'` before it, so that a spreadsheet does not run it as a formula.
#[utoipa::path(
    trace, path = "",
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
pub async fn results(call: Call) -> Response {
    let Some(id) = ImportId::parse(&call.param) else {
        return no_such_import();
    };
    let imports = call.state.imports.clone();
    match imports.results(&id, &call.who).await {
        Ok(Some(Ok(results))) => {
            // Fused: compression reads on after the end.
            let streamed = warp::reply::stream(SyncStream::new(pieces(results).fuse()));
            let mut response = streamed.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CSV));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let disposition = format!("attachment; filename=\"import-{}-results.csv\"", call.param);
            if let Ok(value) = HeaderValue::from_str(&disposition) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Ok(Some(Err(Finished(status)))) => Problem::conflict(
            "urn:tracknum:problem:import-not-finished",
            "Import not finished",
            format!(
                "the import is {}; its results are ready once it has ended",
                status.name()
            ),
        )
        .with("import_status", status.name())
        .into_response(),
        Ok(None) => no_such_import(),
        Err(err) => Problem::from(err).into_response(),
    }
}

/// Cancel an import
///
/// A queued job is cancelled at once. A running one is cancelled by its worker once the chunk
/// of rows in flight is done, which the reply waits for (up to 5 s): the job then says
/// `cancelled` and counts what was issued, or still `running` when the chunk takes longer (it
/// ends `cancelled` right after). Rows that already got numbers keep them; an ended job never
/// changes again.
#[utoipa::path(
    trace, path = "",
    params(ImportIdPath),
    responses(
        (status = 202, description = "The job as it is after the cancel: cancelled, or still running the chunk in flight", body = ImportJob),
        (status = 404, description = NO_IMPORT, body = Problem, content_type = PROBLEM),
        (status = 409, description = "The job has already ended", body = Problem,
         content_type = PROBLEM),
    )
)]
pub async fn cancel(call: Call) -> Response {
    let Some(id) = ImportId::parse(&call.param) else {
        return no_such_import();
    };
    match call.state.imports.cancel(&id, &call.who).await {
        Ok(Some(Ok(job))) => json_reply(StatusCode::ACCEPTED, job_json(&job)),
        Ok(Some(Err(Finished(status)))) => Problem::conflict(
            "urn:tracknum:problem:import-finished",
            "Import already ended",
            format!("the import is {} and cannot be cancelled", status.name()),
        )
        .with("import_status", status.name())
        .into_response(),
        Ok(None) => no_such_import(),
        Err(err) => Problem::from(err).into_response(),
    }
}

/// What an upload asks for besides its file.
struct UploadParams {
    delimiter: Option<Delimiter>,
    dry_run: bool,
    /// The parameters as given, for the upload's fingerprint.
    raw: String,
}

fn upload_params(raw: &str) -> Result<UploadParams, Problem> {
    let (given, mut errors) = query::named(raw, &["delimiter", "dry_run"]);
    let mut params = UploadParams {
        delimiter: None,
        dry_run: false,
        raw: String::new(),
    };
    for (name, value) in given {
        match name {
            "delimiter" => match Delimiter::from_param(&value) {
                Some(delimiter) => params.delimiter = Some(delimiter),
                None => errors.push(FieldError::new(
                    "delimiter",
                    "must be one of `,` `;` `|` or a tab, or comma, semicolon, pipe or tab",
                )),
            },
            _ => match value.as_str() {
                "true" => params.dry_run = true,
                "false" => params.dry_run = false,
                _ => errors.push(FieldError::new("dry_run", "must be true or false")),
            },
        }
    }
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    params.raw = format!(
        "delimiter={:?}&dry_run={}",
        params.delimiter, params.dry_run
    );
    Ok(params)
}

fn page_params(raw: &str) -> Result<(usize, i64), Vec<FieldError>> {
    let mut page = (DEFAULT_PAGE, i64::MAX);
    let (given, mut errors) = query::named(raw, &["limit", "before"]);
    for (name, value) in given {
        match name {
            "limit" => match value.parse::<usize>() {
                Ok(limit) if (1..=MAX_PAGE).contains(&limit) => page.0 = limit,
                _ => errors.push(FieldError::new(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_PAGE}"),
                )),
            },
            _ => match value.parse::<i64>() {
                Ok(before) if before > 0 => page.1 = before,
                _ => errors.push(FieldError::new(
                    "before",
                    "must be the `next` of an earlier page",
                )),
            },
        }
    }
    if errors.is_empty() {
        Ok(page)
    } else {
        Err(errors)
    }
}

/// Reads the upload as it arrives, storing each chunk of whole rows as soon as it is complete:
/// the file is never held whole.
async fn receive(
    state: &SharedState,
    headers: &HeaderMap,
    body: RequestBody,
    params: &UploadParams,
) -> Result<Received, Problem> {
    let limit = state.import_max_bytes;
    let boundary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let mut sink = Sink::new(state.imports.clone(), &params.raw, params.delimiter, limit);
    match feed(&mut sink, body, boundary, limit).await {
        Ok(()) => Ok(sink.finish().await?),
        Err(problem) => {
            sink.abandon().await;
            Err(problem)
        }
    }
}

/// Hands the upload's bytes to `sink`: the body as it is, or the `file` part of a form.
async fn feed(
    sink: &mut Sink,
    body: impl Stream<Item = Result<Bytes, BodyError>> + Send + Unpin,
    boundary: Option<String>,
    limit: u64,
) -> Result<(), Problem> {
    let Some(boundary) = boundary else {
        let mut body = body;
        while let Some(piece) = body.next().await {
            sink.take(&piece.map_err(|_| body::unreadable())?).await?;
        }
        return Ok(());
    };
    // Every part counts against the limit, the ones skipped too.
    let whole = multer::SizeLimit::new().whole_stream(limit.saturating_add(64 << 10));
    let constraints = multer::Constraints::new().size_limit(whole);
    let mut form = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut found = false;
    let too_large = |err| bad_form(err, limit);
    while let Some(mut field) = form.next_field().await.map_err(too_large)? {
        if field.name() != Some("file") || found {
            continue;
        }
        found = true;
        while let Some(piece) = field.chunk().await.map_err(too_large)? {
            sink.take(&piece).await?;
        }
    }
    if found {
        Ok(())
    } else {
        Err(Problem::invalid(vec![FieldError::new(
            "file",
            "a multipart upload needs a part named `file` holding the CSV",
        )]))
    }
}

/// The results as body pieces; a storage failure mid-way ends the body with an error, so the
/// client sees a cut reply, never a short file that looks whole.
fn pieces(results: ResultsStream) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    stream::unfold(results, |mut results| async move {
        let piece = results.next().await?;
        let frame = piece.map_err(|err| {
            tracing::warn!(error = %err, "an import's results could not be read to the end");
            std::io::Error::other("the results could not be read")
        });
        Some((frame, results))
    })
}

fn job_json(job: &ImportJob) -> Bytes {
    Bytes::from(serde_json::to_vec(job).unwrap_or_default())
}

/// A 202 with the job, and where to follow it.
fn accepted(status: StatusCode, body: Bytes) -> Response {
    let location = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|job| Some(format!("/v1/imports/{}", job.get("id")?.as_str()?)));
    let mut response = json_reply(status, body);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn no_such_import() -> Response {
    Problem::not_found("no such import").into_response()
}

fn bad_form(err: multer::Error, limit: u64) -> Problem {
    match err {
        multer::Error::StreamReadFailed(_) => body::unreadable(),
        multer::Error::StreamSizeExceeded { .. } => Problem::too_large(limit as usize),
        _ => Problem::invalid(vec![FieldError::new(
            "body",
            "is not a valid multipart/form-data body",
        )]),
    }
}

impl From<UploadError> for Problem {
    fn from(err: UploadError) -> Problem {
        match err {
            UploadError::TooLarge(limit) => Problem::too_large(limit as usize),
            UploadError::Invalid(errors) => Problem::invalid(errors),
            UploadError::Store(err) => err.into(),
        }
    }
}
