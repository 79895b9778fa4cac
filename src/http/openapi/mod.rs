//! The API's OpenAPI 3.1 description, built from the route table: each operation's method,
//! path, id and tag from there, its words from the `#[utoipa::path]` on the handler the table
//! names; utoipa builds the schemas from the reply and domain types; [`shared::add_to`] then adds
//! what every operation shares, so no path repeats it by hand. A `HEAD` answered by a route's
//! `GET` is described from the `GET` ([`head_of`]).
//!
//! utoipa 5.5's attribute does not compile without a method and a path (utoipa-gen's
//! `Path::to_tokens` refuses either missing unless its actix or rocket features read them off
//! those frameworks' attributes), and only `Path::methods()` and `Path::path()` carry them,
//! which nothing here calls: the table holds `Path::operation` alone. So every handler gives the
//! same placeholders, `trace, path = ""` (a method no route takes, a path none has), and the
//! operation id is left to default to the fn name, then replaced here. The method, path and id
//! live in the table only, and one handler serving two routes has one attribute.
//!
//! The document is built once at start ([`json`], kept in the `AppState`) and served by
//! `health::openapi` as the same bytes every time. So the imports go one way: this builder reads
//! the route table, the table names the handlers, and the handlers name only [`bodies`], which
//! reads neither.

use bytes::Bytes;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::Operation;

use super::Problem;
use super::routes::{ROUTES, Route};
use crate::domain::import::{Delimiter, ImportJob, JobStatus, RowCounts, RowError};
use crate::domain::inspect::Inspection;
use crate::domain::{FieldError, Record, Status};
use bodies::{
    BatchReply, BatchRequest, Health, ImportFile, ImportForm, ImportListing, IssueInputs, NotReady,
    Ready, RecordChanges,
};

pub(super) mod bodies;
mod shared;

/// The whole description, as the bytes `GET /openapi.json` serves.
pub fn json() -> Bytes {
    // Serializing a JSON value cannot fail: every key is a string.
    Bytes::from(serde_json::to_vec(&document()).unwrap_or_default())
}

/// The whole description, as JSON.
pub fn document() -> Value {
    document_of(ROUTES)
}

/// The description of the routes in `table`.
fn document_of(table: &'static [Route]) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut paths = serde_json::Map::new();
    for route in table {
        let mut item = serde_json::Map::new();
        for op in route.operations {
            let mut operation = (op.doc)();
            operation.operation_id = Some(op.id.to_owned());
            operation.tags = Some(vec![route.tag.to_owned()]);
            let method = op.method.as_str().to_ascii_lowercase();
            item.insert(method, serde_json::to_value(operation).unwrap_or_default());
        }
        if let Some(get) = route.head_from_get() {
            let mut operation = head_of((get.doc)());
            operation.operation_id = Some(format!("{}Head", get.id));
            operation.tags = Some(vec![route.tag.to_owned()]);
            item.insert(
                "head".into(),
                serde_json::to_value(operation).unwrap_or_default(),
            );
        }
        paths.insert(route.path.to_owned(), item.into());
    }
    doc["paths"] = paths.into();
    shared::add_to(&mut doc, |path| {
        table
            .iter()
            .any(|route| route.path == path && !route.guarded)
    });
    doc
}

/// The `HEAD` that a `GET` answers: the same parameters, statuses and headers, no bodies.
fn head_of(get: Operation) -> Operation {
    let mut head = get;
    let summary = head.summary.take().unwrap_or_default();
    head.summary = Some(format!("{summary}, without a body"));
    head.description = Some("What `GET` answers, without the body.".to_owned());
    for response in head.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.content.clear();
        }
    }
    head
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tracknum",
        description = "Issues unique parcel tracking numbers and keeps a record of each.\n\n\
            Every error is an RFC 9457 problem (`application/problem+json`). Every reply carries \
            an `X-Request-Id` header.",
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
        NotReady,
        ImportJob,
        ImportListing,
        ImportForm,
        ImportFile,
        JobStatus,
        RowCounts,
        RowError,
        Delimiter
    )),
    tags(
        (name = "issuing", description = "New tracking numbers, one at a time or in batches"),
        (name = "records", description = "The record every number leaves"),
        (name = "imports", description = "Bulk import of CSV files of orders, as jobs"),
        (name = "operations", description = "Probes, metrics and this description"),
    )
)]
struct ApiDoc;

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
    fn every_route_of_the_table_is_documented_and_nothing_else() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        for route in ROUTES {
            let item = paths[route.path].as_object().unwrap();
            let mut documented: Vec<String> = item.keys().cloned().collect();
            let mut served: Vec<String> = route
                .methods()
                .iter()
                .map(|method| method.to_ascii_lowercase())
                .collect();
            documented.sort();
            served.sort();
            assert_eq!(
                documented, served,
                "{}: HEAD too wherever GET is",
                route.path
            );
            for op in route.operations {
                let method = op.method.as_str().to_ascii_lowercase();
                let operation = &item[&method];
                let at = format!("{method} {}", route.path);
                assert_eq!(operation["operationId"], op.id, "{at}");
                assert!(!operation["summary"].as_str().unwrap().is_empty(), "{at}");
                let documented = operation["responses"].as_object().unwrap();
                assert!(documented.keys().any(|s| s.starts_with('2')), "{at}");
            }
        }
        assert_eq!(
            paths.len(),
            ROUTES.len(),
            "a documented path no route serves"
        );
    }

    #[test]
    fn guarded_operations_take_a_key_and_open_ones_do_not() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let route = ROUTES.iter().find(|r| r.path == path.as_str()).unwrap();
                let guarded = route.guarded;
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
