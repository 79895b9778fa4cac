//! `GET /openapi.json`: the API's OpenAPI 3.1 description. utoipa builds it from the reply and
//! domain types and from the documented stubs below (warp filters are nothing utoipa can read);
//! [`shared_parts`] then adds what every operation shares, so no path repeats it by hand. The
//! document is built once and served as the same bytes every time.

use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder, Schema, SchemaType};
use utoipa::openapi::{ArrayBuilder, Object, ObjectBuilder, RefOr, Required, Type};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToSchema};
use warp::Filter;
use warp::http::{HeaderValue, header};
use warp::reply::Response;

use super::problem::CONTENT_TYPE as PROBLEM;
use super::{Problem, idempotent, other_methods};
use crate::domain::inspect::Inspection;
use crate::domain::request::MAX_BATCH;
use crate::domain::{FieldError, Record, Status};

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
    shared_parts(&mut doc);
    doc
}

/// Paths served without credentials or rate limits: probes, metrics and this document.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
/// Paths that answer exactly like another one.
const ALIASES: [(&str, &str); 1] = [("/v1/next-tracking-number", "/next-tracking-number")];
/// Operations whose body may be left out: an empty body is an empty object.
const OPTIONAL_BODIES: [&str; 2] = ["updateRecord", "registerNumber"];
/// Response headers that are always sent wherever a response lists them.
const ALWAYS_SENT: [&str; 2] = ["ETag", "Location"];

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
    params(TrackingNumberPath, IfMatch),
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
            states), or a change that kept losing races (with `Retry-After`)",
         body = Problem, content_type = PROBLEM,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
        (status = 412, description = STALE, body = Problem, content_type = PROBLEM),
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
    params(TrackingNumberPath, IfMatch),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = BAD_NUMBER, body = Problem, content_type = PROBLEM),
        (status = 404, description = NOT_FOUND, body = Problem, content_type = PROBLEM),
        (status = 412, description = STALE, body = Problem, content_type = PROBLEM),
    )
)]
#[allow(dead_code)]
fn delete_record() {}

/// Register a number issued elsewhere
///
/// Takes the same inputs as issuing; the body is optional. A 16-character number whose last
/// character is a valid check character for the first 15 has this service's layout and could
/// collide with a number issued later, so it is refused.
#[utoipa::path(
    put,
    path = "/v1/tracking-numbers/{tn}",
    operation_id = "registerNumber",
    tag = "records",
    params(TrackingNumberPath),
    request_body(content = IssueInputs),
    responses(
        (status = 201, description = "The new record", body = Record,
         headers(
            ("ETag" = String, description = "The strong tag of this version of the record"),
            ("Location" = String, description = "The record's URL path"),
         )),
        (status = 400, description = "Bad number, body or input, every one named in `errors`",
         body = Problem, content_type = PROBLEM),
        (status = 409, description = "A live record holds the number", body = Problem,
         content_type = PROBLEM),
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
/// Ready once the server holds serials to issue numbers with.
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

/// Metrics, in the Prometheus text format
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", body = String,
         content_type = "text/plain; version=0.0.4"),
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

// The inputs of an issue. The query and the JSON bodies take the same ones, so they are listed
// once: name, description and the schema of the text.

const COUNTRY: &str = "^[A-Za-z]{2}$";
const WEIGHT: &str = r"^[0-9]{1,6}(\.[0-9]{1,3})?$";
const UUID: &str = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$";
/// No control characters (Unicode category Cc), and something left after trimming.
const NAME: &str = r"^[^\x00-\x1F\x7F-\x9F]*[^\s\x00-\x1F\x7F-\x9F][^\x00-\x1F\x7F-\x9F]*$";
const SLUG: &str = "^[a-z0-9]+(-[a-z0-9]+)*$";

struct Input {
    name: &'static str,
    description: &'static str,
    text: fn() -> ObjectBuilder,
}

const INPUTS: [Input; 8] = [
    Input {
        name: "origin_country_id",
        description: "Where the parcel leaves from: an officially assigned ISO 3166-1 alpha-2 \
                      code, any case (`my` is `MY`). Unassigned codes such as `ZZ` or `AA` are \
                      refused. It becomes the number's first two characters.",
        text: || text(COUNTRY).examples(["MY"]),
    },
    Input {
        name: "destination_country_id",
        description: "Where the parcel goes: an assigned ISO 3166-1 alpha-2 code, any case.",
        text: || text(COUNTRY).examples(["ID"]),
    },
    Input {
        name: "weight",
        description: "Kilograms, greater than zero, with up to 6 integer digits and 3 decimals.",
        text: || text(WEIGHT).examples(["1.234"]),
    },
    Input {
        name: "created_at",
        description: "The order's own time: RFC 3339 with an offset, fractions allowed. A `+` \
                      sent unencoded in a query (read as a space) is accepted. Records return \
                      it as `order_created_at`.",
        text: || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .examples(["2018-11-20T19:29:32+08:00"])
        },
    },
    Input {
        name: "customer_id",
        description: "A UUID in the hyphenated 8-4-4-4-12 form, either case (records hold it \
                      lower case). With or without it, the customer's tag is the number's \
                      third and fourth characters.",
        text: || text(UUID).examples(["de619854-b59b-425e-9db4-943979e1bd49"]),
    },
    Input {
        name: "customer_name",
        description: "1 to 200 characters after trimming, no control characters.",
        text: || {
            text(NAME)
                .max_length(Some(200))
                .examples(["RedBox Logistics"])
        },
    },
    Input {
        name: "customer_slug",
        description: "Lower-case letters and digits in groups joined by single hyphens, at most \
                      100 characters. When absent, it is derived from `customer_name`.",
        text: || {
            text(SLUG)
                .max_length(Some(100))
                .examples(["redbox-logistics"])
        },
    },
    Input {
        name: "expires_at",
        description: "When the record should expire: RFC 3339 with an offset, in the future. \
                      The default is the issue time plus the server's record TTL (30 days \
                      unless configured otherwise).",
        text: || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::DateTime,
                )))
                .examples(["2030-01-31T00:00:00Z"])
        },
    },
];

fn text(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// An input as a JSON member: its text, or `null` (the same as leaving it out). `weight` may
/// also be a JSON number.
fn json_member(input: &Input) -> Schema {
    let mut types = vec![Type::String, Type::Null];
    let mut schema = (input.text)();
    if input.name == "weight" {
        types.insert(0, Type::Number);
        schema = schema
            .exclusive_minimum(Some(0.0))
            .maximum(Some(999_999.999));
    }
    schema
        .schema_type(SchemaType::from_iter(types))
        .description(Some(input.description))
        .into()
}

/// An object that refuses members it does not list.
fn closed(object: ObjectBuilder) -> ObjectBuilder {
    object.additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

fn with_inputs(mut object: ObjectBuilder) -> ObjectBuilder {
    for input in &INPUTS {
        object = object.property(input.name, json_member(input));
    }
    object
}

/// The query of `GET /next-tracking-number`.
struct IssueQuery;

impl IntoParams for IssueQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        INPUTS
            .iter()
            .map(|input| {
                ParameterBuilder::new()
                    .name(input.name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(input.description))
                    .schema(Some((input.text)()))
                    .build()
            })
            .collect()
    }
}

/// The order inputs of one number as JSON: the body of `PUT`, each entry of a batch's
/// `orders`.
struct IssueInputs;

impl PartialSchema for IssueInputs {
    fn schema() -> RefOr<Schema> {
        closed(with_inputs(ObjectBuilder::new()))
            .description(Some(
                "The inputs of one number: the query parameters of `GET /next-tracking-number`, \
                 plus `expires_at`. Every member is optional, and `null` is the same as leaving \
                 it out. Unknown members are refused.",
            ))
            .examples([json!({"origin_country_id": "MY", "weight": 1.5, "customer_name": "RedBox Logistics"})])
            .into()
    }
}

impl ToSchema for IssueInputs {}

/// The body of `POST /v1/tracking-numbers`.
struct BatchRequest;

impl PartialSchema for BatchRequest {
    fn schema() -> RefOr<Schema> {
        let count = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_BATCH as u64))
            .description(Some("How many numbers to issue for these inputs"));
        let by_count = closed(with_inputs(ObjectBuilder::new().property("count", count)))
            .required("count")
            .title(Some("By count"))
            .examples([json!({"count": 3, "origin_country_id": "MY"})]);
        let orders = ArrayBuilder::new()
            .items(IssueInputs::schema())
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH))
            .description(Some("One number per order, in this order"));
        let by_orders = closed(ObjectBuilder::new().property("orders", orders))
            .required("orders")
            .title(Some("By orders"))
            .examples([json!({"orders": [{"origin_country_id": "MY", "weight": 1.5},
                                         {"customer_name": "Blue Box"}]})]);
        OneOfBuilder::new()
            .item(by_count)
            .item(by_orders)
            .description(Some(
                "1 to 1000 numbers: `count` of them for one set of inputs, or one per order",
            ))
            .into()
    }
}

impl ToSchema for BatchRequest {}

/// What `POST /v1/tracking-numbers` answers.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BatchReply {
    /// How many numbers were issued.
    count: usize,
    /// Their records, in the order asked for.
    records: Vec<Record>,
}

/// The body of `PATCH /v1/tracking-numbers/{tn}`.
struct RecordChanges;

impl PartialSchema for RecordChanges {
    fn schema() -> RefOr<Schema> {
        let mut object = ObjectBuilder::new();
        for input in &INPUTS {
            let changeable = [
                "destination_country_id",
                "weight",
                "customer_name",
                "customer_slug",
            ];
            if changeable.contains(&input.name) {
                object = object.property(input.name, json_member(input));
            }
        }
        let expires_at = (INPUTS[7].text)().description(Some(
            "A new expiry, later or earlier, but in the future; it cannot be cleared",
        ));
        closed(object)
            .property("expires_at", expires_at)
            .property("status", Status::schema())
            .description(Some(
                "A JSON merge patch. Values follow the rules of issuing. `tracking_number`, \
                 `origin_country_id`, `customer_id`, `created_at` and `updated_at` cannot \
                 change, and neither can anything unknown. A new `customer_name` does not \
                 change the slug. `status` moves forward only: `issued` → `label_printed` → \
                 `in_transit` → `delivered`, skipping allowed, and `cancelled` from any state \
                 before `delivered`; setting the current status is allowed.",
            ))
            .examples([json!({"status": "in_transit", "weight": 2.5, "destination_country_id": null})])
            .into()
    }
}

impl ToSchema for RecordChanges {}

/// `GET /healthz`.
struct Health;

impl PartialSchema for Health {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("status", const_text("ok"))
            .required("status")
            .description(Some("`ok`, and maybe more details"))
            .into()
    }
}

impl ToSchema for Health {}

/// `GET /readyz` when ready.
struct Ready;

impl PartialSchema for Ready {
    fn schema() -> RefOr<Schema> {
        let serials = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .description(Some("Serials leased and not yet handed out"));
        ObjectBuilder::new()
            .property("status", const_text("ready"))
            .property("serials_in_pool", serials)
            .required("status")
            .required("serials_in_pool")
            .into()
    }
}

impl ToSchema for Ready {}

/// `GET /readyz` when not ready.
struct NotReady;

impl PartialSchema for NotReady {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("status", const_text("not_ready"))
            .property(
                "reason",
                Object::with_type(Type::String),
            )
            .required("status")
            .required("reason")
            .into()
    }
}

impl ToSchema for NotReady {}

fn const_text(value: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
}

/// `{tn}` in record paths.
struct TrackingNumberPath;

impl IntoParams for TrackingNumberPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("tn")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(
                    "A tracking number: 1 to 16 characters of `A-Z0-9`, any case (`myg28…` is \
                     `MYG28…`)",
                ))
                .schema(Some(
                    text("^[A-Za-z0-9]{1,16}$").examples(["MYG28DGOKX5I2L45"]),
                ))
                .build(),
        ]
    }
}

/// The `Idempotency-Key` request header.
struct IdempotencyKey;

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name(idempotent::HEADER)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes the request safe to retry: 1 to 255 printable ASCII characters. The \
                     first request with a key runs; its reply is kept (24 h by default) and \
                     every later request with the key and the same inputs gets it again, byte \
                     for byte, marked `Idempotent-Replayed: true`. A request that fails \
                     validation never takes the key, and one that fails on storage releases it.",
                ))
                // Printable ASCII; HTTP drops spaces at either end of a header value.
                .schema(Some(
                    text(r"^[\x21-\x7E]([\x20-\x7E]{0,253}[\x21-\x7E])?$").examples(["order-1234"]),
                ))
                .build(),
        ]
    }
}

/// The `If-Match` request header.
struct IfMatch;

impl IntoParams for IfMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("If-Match")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Change only this version: an `ETag`, a comma-separated list of them, or \
                     `*`. Weak tags never match.",
                ))
                .schema(Some(Object::with_type(Type::String)))
                .build(),
        ]
    }
}

/// Adds what every operation shares: the request id, the problems any request can meet, and,
/// except on [`OPEN_PATHS`], credentials and rate limits.
fn shared_parts(doc: &mut Value) {
    let components = &mut doc["components"];
    components["headers"] = shared_headers();
    components["responses"] = shared_responses();
    components["parameters"] = json!({
        "X-Request-Id": {
            "name": "X-Request-Id",
            "in": "header",
            "required": false,
            "description": "An id for this request, echoed in the reply's `X-Request-Id`. \
                            Without one, the server makes one up.",
            "schema": {"type": "string"}
        }
    });
    components["securitySchemes"] = json!({
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>`. A server run without \
                            keys serves every request without one."
        }
    });

    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (alias, of) in ALIASES {
        if let Some(mut item) = paths.get(of).cloned() {
            for operation in operations(&mut item) {
                if let Some(Value::String(id)) = operation.get_mut("operationId") {
                    id.push_str("V1");
                }
            }
            paths.insert(alias.to_owned(), item);
        }
    }
    for (path, item) in paths.iter_mut() {
        let open = OPEN_PATHS.contains(&path.as_str());
        for operation in operations(item) {
            shared_by(operation, open);
        }
    }
}

fn operations(item: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    item.as_object_mut()
        .into_iter()
        .flat_map(|methods| methods.values_mut())
        .filter_map(Value::as_object_mut)
}

fn shared_by(operation: &mut Map<String, Value>, open: bool) {
    let id = operation.get("operationId").and_then(Value::as_str);
    if id.is_some_and(|id| OPTIONAL_BODIES.contains(&id)) {
        operation["requestBody"]["required"] = false.into();
    }
    let parameters = operation.entry("parameters").or_insert_with(|| json!([]));
    if let Some(parameters) = parameters.as_array_mut() {
        parameters.push(json!({"$ref": "#/components/parameters/X-Request-Id"}));
    }
    let Some(responses) = operation
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    else {
        return;
    };
    for response in responses.values_mut() {
        let headers = response
            .as_object_mut()
            .map(|r| r.entry("headers").or_insert_with(|| json!({})));
        if let Some(Value::Object(headers)) = headers {
            for name in ALWAYS_SENT {
                if let Some(Value::Object(header)) = headers.get_mut(name) {
                    header.insert("required".into(), true.into());
                }
            }
            headers.insert("X-Request-Id".into(), header_ref("X-Request-Id"));
        }
    }
    let mut shared = vec![
        ("413", "PayloadTooLarge"),
        ("414", "UriTooLong"),
        ("431", "HeadersTooLarge"),
    ];
    if !open {
        shared.extend([("401", "Unauthorized"), ("429", "TooManyRequests")]);
    }
    for (status, name) in shared {
        responses.insert(status.into(), json!({"$ref": format!("#/components/responses/{name}")}));
    }
    // An operation with a 503 of its own (readiness) can also time out as every other one can.
    match responses.get_mut("503") {
        Some(own) => {
            own["content"][PROBLEM] = problem_content();
            own["headers"]["Retry-After"] = json!({
                "description": "On a problem (a timeout), seconds to wait before retrying",
                "schema": {"type": "integer", "minimum": 0}
            });
        }
        None => {
            responses.insert("503".into(), json!({"$ref": "#/components/responses/Unavailable"}));
        }
    }
    if !open {
        operation.insert("security".into(), json!([{"apiKey": []}, {}]));
    }
}

fn header_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/headers/{name}")})
}

fn problem_content() -> Value {
    json!({"schema": {"$ref": "#/components/schemas/Problem"}})
}

fn shared_headers() -> Value {
    let seconds = |description: &str| {
        json!({
            "description": description,
            "required": true,
            "schema": {"type": "integer", "minimum": 0}
        })
    };
    json!({
        "X-Request-Id": {
            "description": "The request's id: the one it came with, or one the server made up. \
                            Problems carry it as `request_id`; logs carry it too.",
            "required": true,
            "schema": {"type": "string"}
        },
        "Retry-After": seconds("Seconds to wait before retrying"),
        "RateLimit-Limit": seconds("Requests allowed in the current window"),
        "RateLimit-Remaining": seconds("Requests left in the current window"),
        "RateLimit-Reset": seconds("Seconds until the window resets"),
        "WWW-Authenticate": {
            "description": "The scheme to authenticate with: `Bearer`",
            "required": true,
            "schema": {"type": "string"}
        }
    })
}

fn shared_responses() -> Value {
    let problem = |description: &str, extra_headers: &[&str]| {
        let mut headers = Map::new();
        for name in extra_headers.iter().chain(["X-Request-Id"].iter()) {
            headers.insert((*name).to_owned(), header_ref(name));
        }
        json!({
            "description": description,
            "headers": headers,
            "content": {PROBLEM: problem_content()}
        })
    };
    json!({
        "Unauthorized": problem(
            "A key is required and the request had none, or not a valid one",
            &["WWW-Authenticate"],
        ),
        "TooManyRequests": problem(
            "Over the rate limit",
            &["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        ),
        "PayloadTooLarge": problem("The request body is over the limit", &[]),
        "UriTooLong": problem("The request target is too long", &[]),
        "HeadersTooLarge": problem("The request headers are too large", &[]),
        "Unavailable": problem(
            "Storage is unavailable, or the request timed out; retry after `Retry-After`",
            &["Retry-After"],
        ),
    })
}

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
                let guarded = !OPEN_PATHS.contains(&path.as_str());
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
