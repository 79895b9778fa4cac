//! Bodies and parameters of the API description that have no Rust type of their own: the
//! request side, which the handlers read by hand (so they can name every bad input at once),
//! and the probes' replies. The handlers' `#[utoipa::path]` attributes name them, so this module
//! reads nothing from the route table or the document builder.

use serde_json::json;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder, Schema, SchemaType};
use utoipa::openapi::{
    ArrayBuilder, KnownFormat, Object, ObjectBuilder, Ref, RefOr, Required, SchemaFormat, Type,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::domain::order::MAX_KILOGRAMS;
use crate::domain::request::{MAX_BATCH, NUMBER_INPUTS};
use crate::domain::{Record, Status};
use crate::http::idempotent;

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
    /// The schema of its text, as the query takes it.
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
        text: || date_time().examples(["2018-11-20T19:29:32+08:00"]),
    },
    Input {
        name: "customer_id",
        description: "A UUID in the hyphenated 8-4-4-4-12 form, either case (records hold it \
                      lower case). It keys the customer tag, the number's third and fourth \
                      characters; without it, the slug does.",
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
        text: || date_time().examples(["2030-01-31T00:00:00Z"]),
    },
];

fn date_time() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
}

fn text(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
}

/// An input as a JSON member: its text, or `null` (the same as leaving it out); a number too
/// for the inputs that take one ([`NUMBER_INPUTS`]).
fn json_member(input: &Input) -> Schema {
    let mut types = vec![Type::String, Type::Null];
    let mut schema = (input.text)();
    if NUMBER_INPUTS.contains(&input.name) {
        types.insert(0, Type::Number);
        schema = schema
            .exclusive_minimum(Some(0.0))
            .maximum(Some(MAX_KILOGRAMS));
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
pub(in crate::http) struct IssueQuery;

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
pub(in crate::http) struct IssueInputs;

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
pub(in crate::http) struct BatchRequest;

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
            .items(Ref::from_schema_name(IssueInputs::name()))
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH))
            .description(Some("One number per order, in this order"));
        let by_orders = closed(ObjectBuilder::new().property("orders", orders))
            .required("orders")
            .title(Some("By orders"))
            .examples([
                json!({"orders": [{"origin_country_id": "MY", "weight": 1.5},
                                         {"customer_name": "Blue Box"}]}),
            ]);
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
pub(in crate::http) struct BatchReply {
    /// How many numbers were issued.
    count: usize,
    /// Their records, in the order asked for.
    records: Vec<Record>,
}

/// The body of `PATCH /v1/tracking-numbers/{tn}`.
pub(in crate::http) struct RecordChanges;

impl PartialSchema for RecordChanges {
    fn schema() -> RefOr<Schema> {
        const CHANGEABLE: [&str; 4] = [
            "destination_country_id",
            "weight",
            "customer_name",
            "customer_slug",
        ];
        let mut object = ObjectBuilder::new();
        for input in INPUTS.iter().filter(|i| CHANGEABLE.contains(&i.name)) {
            object = object.property(input.name, json_member(input));
        }
        let expires_at = date_time().description(Some(
            "A new expiry, later or earlier, but in the future; it cannot be cleared",
        ));
        closed(object)
            .property("expires_at", expires_at)
            .property("status", Ref::from_schema_name(Status::name()))
            .description(Some(
                "A JSON merge patch. Values follow the rules of issuing. `tracking_number`, \
                 `origin_country_id`, `customer_id`, `created_at` and `updated_at` cannot \
                 change, and neither can anything unknown. A new `customer_name` does not \
                 change the slug. `status` moves forward only: `issued` → `label_printed` → \
                 `in_transit` → `delivered`, skipping allowed, and `cancelled` from any state \
                 before `delivered`; setting the current status is allowed.",
            ))
            .examples([
                json!({"status": "in_transit", "weight": 2.5, "destination_country_id": null}),
            ])
            .into()
    }
}

impl ToSchema for RecordChanges {}

/// `GET /healthz`.
pub(in crate::http) struct Health;

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
pub(in crate::http) struct Ready;

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
pub(in crate::http) struct NotReady;

impl PartialSchema for NotReady {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("status", const_text("not_ready"))
            .property("reason", Object::with_type(Type::String))
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
pub(in crate::http) struct TrackingNumberPath;

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
pub(in crate::http) struct IdempotencyKey;

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
                     for byte, marked `Idempotent-Replayed: true`. Keys belong to the caller's \
                     tenant. A request that fails validation never takes the key, and one that \
                     fails on storage releases it. One answered 503 because storage was slow \
                     goes on, and a retry with its key gets what really happened.",
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
pub(in crate::http) struct IfMatch;

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

/// `{id}` in import paths.
pub(in crate::http) struct ImportIdPath;

impl IntoParams for ImportIdPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The import's id, as `POST /v1/imports` gave it"))
                .schema(Some(
                    text(".+").examples(["5f0c6b8a9d2e4f1b8c3a7e6d5b4a3c2f"]),
                ))
                .build(),
        ]
    }
}

/// The query of `POST /v1/imports`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(in crate::http) struct UploadQuery {
    /// What separates the fields: `,` `;` `|` or a tab, or its name (`comma`, `semicolon`,
    /// `pipe`, `tab`). Detected from the header row when absent.
    #[param(pattern = "^(,|;|\\||\t|comma|semicolon|pipe|tab)$")]
    delimiter: Option<String>,
    /// `true` checks every row and issues nothing.
    dry_run: Option<bool>,
}

/// The query of `GET /v1/imports`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(in crate::http) struct ListQuery {
    /// Jobs a page (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next` of the page before.
    #[param(pattern = "^[1-9][0-9]{0,18}$")]
    before: Option<String>,
}

/// The CSV body of `POST /v1/imports`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(examples("order_id,origin_country_id,weight\nA-1,MY,1.5\n"))]
pub(in crate::http) struct ImportFile(String);

/// The multipart form of `POST /v1/imports`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(in crate::http) struct ImportForm {
    /// The CSV file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// What `GET /v1/imports` answers.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(in crate::http) struct ImportListing {
    /// Newest first.
    imports: Vec<crate::domain::import::ImportJob>,
    /// Where the next page starts (pass it as `before`); null on the last page.
    next: Option<String>,
}
