//! What every operation of the API description shares, added to the document utoipa built:
//! the request id, the problems any request can meet and, except on open routes (probes,
//! metrics, this document), credentials and rate limits. utoipa cannot say everything needed here (a required response
//! header, a header or response `$ref`), so this works on the JSON.

use serde_json::{Map, Value, json};

use crate::http::problem::CONTENT_TYPE as PROBLEM;

/// Operations whose body may be left out: an empty body is an empty object.
const OPTIONAL_BODIES: [&str; 2] = ["updateRecord", "registerNumber"];
/// Response headers that are always sent wherever a response lists them.
const ALWAYS_SENT: [&str; 2] = ["ETag", "Location"];

/// Adds the shared parts to a document: components, and each operation's share of them.
/// `open` tells a path served without credentials or rate limits.
pub(super) fn add_to(doc: &mut Value, open: impl Fn(&str) -> bool) {
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
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>`. A server run without \
                            keys serves every request without one."
        }
    });

    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let open = open(path);
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
        ("500", "Internal"),
    ];
    if !open {
        shared.extend([("401", "Unauthorized"), ("429", "TooManyRequests")]);
    }
    for (status, name) in shared {
        responses.insert(
            status.into(),
            json!({"$ref": format!("#/components/responses/{name}")}),
        );
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
            responses.insert(
                "503".into(),
                json!({"$ref": "#/components/responses/Unavailable"}),
            );
        }
    }
    if !open {
        operation.insert("security".into(), json!([{"bearer": []}, {}]));
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
                            Problems carry it as `request_id`.",
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
        "Internal": problem(
            "Something that should not happen did (corrupt stored data, a bug): the body says \
             nothing more; the service log has the details under the request's id",
            &[],
        ),
        "Unavailable": problem(
            "Busy (records arrive faster than they can be stored), storage is unavailable, or \
             the request timed out; retry after `Retry-After`",
            &["Retry-After"],
        ),
    })
}
