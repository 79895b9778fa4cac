//! What a caller asks to be issued: the order inputs plus an optional `expires_at`, read from a
//! query string (by the HTTP layer) or from JSON, and the batch form of `POST
//! /v1/tracking-numbers`. Every bad field is reported at once, with its index in a batch.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::order::{FieldError, Order, OrderInput, parse_created_at};
use super::strict_json::{self, ParseError};

/// At most this many numbers per batch.
pub const MAX_BATCH: usize = 1000;

pub(crate) const MSG_EXPIRES_AT: &str = "must be an RFC 3339 date-time with a UTC offset, in \
                                         the future and before year 10000 in UTC \
                                         (e.g. \"2030-01-31T00:00:00Z\")";
const MSG_STRING: &str = "must be a string";
const MSG_UNKNOWN: &str = "unknown field";

/// The name of every input of an issue: a query parameter, a JSON member, a CSV column.
pub const INPUT_NAMES: [&str; 8] = [
    "origin_country_id",
    "destination_country_id",
    "weight",
    "created_at",
    "customer_id",
    "customer_name",
    "customer_slug",
    "expires_at",
];

/// The inputs a JSON body may give as a number as well as a string; every other input takes a
/// string only.
pub const NUMBER_INPUTS: [&str; 1] = ["weight"];

/// The inputs of one issue, as received.
#[derive(Debug, Default, Clone)]
pub struct IssueInput<'a> {
    pub order: OrderInput<'a>,
    pub expires_at: Option<Cow<'a, str>>,
}

/// One validated issue: the order, and when its record should expire (None: the default TTL).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssueRequest {
    #[serde(flatten)]
    pub order: Order,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl<'a> IssueInput<'a> {
    /// The slot of the input called `name` (one of [`INPUT_NAMES`]), or None when there is no
    /// such input.
    pub fn slot(&mut self, name: &str) -> Option<&mut Option<Cow<'a, str>>> {
        let order = &mut self.order;
        Some(match name {
            "origin_country_id" => &mut order.origin_country_id,
            "destination_country_id" => &mut order.destination_country_id,
            "weight" => &mut order.weight,
            "created_at" => &mut order.created_at,
            "customer_id" => &mut order.customer_id,
            "customer_name" => &mut order.customer_name,
            "customer_slug" => &mut order.customer_slug,
            "expires_at" => &mut self.expires_at,
            _ => return None,
        })
    }

    /// Validates every input; `now` decides whether `expires_at` is in the future.
    pub fn parse(self, now: DateTime<Utc>) -> Result<IssueRequest, Vec<FieldError>> {
        let expires_at = self.expires_at.as_deref().map(|text| {
            parse_expiry(text, now).ok_or(FieldError::new("expires_at", MSG_EXPIRES_AT))
        });
        match (self.order.parse(), expires_at.transpose()) {
            (Ok(order), Ok(expires_at)) => Ok(IssueRequest { order, expires_at }),
            (order, expires_at) => {
                let mut errors = order.err().unwrap_or_default();
                errors.extend(expires_at.err());
                Err(errors)
            }
        }
    }

    /// Reads the inputs from a JSON object, reporting fields under `prefix` (e.g. `orders[3].`).
    /// Names in `also` are left for the caller; any other unknown name is an error.
    fn from_json(
        object: &Map<String, Value>,
        prefix: &str,
        also: &[&str],
        errors: &mut Vec<FieldError>,
    ) -> IssueInput<'static> {
        let mut input = IssueInput::default();
        for (name, value) in object {
            if also.contains(&name.as_str()) {
                continue;
            }
            let Some(slot) = input.slot(name) else {
                errors.push(FieldError::new(format!("{prefix}{name}"), MSG_UNKNOWN));
                continue;
            };
            match json_text(name, value) {
                Ok(text) => *slot = text.map(Cow::Owned),
                Err(message) => errors.push(FieldError::new(format!("{prefix}{name}"), message)),
            }
        }
        input
    }
}

/// An expiry: an RFC 3339 instant strictly after `now`.
pub fn parse_expiry(text: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let at = parse_created_at(text)?.with_timezone(&Utc);
    (at > now).then_some(at)
}

/// JSON input `name` as the text the validators take: strings as they are, a number in its JSON
/// spelling where the input takes one ([`NUMBER_INPUTS`]: `"weight": 1.5`), null as absent.
pub fn json_text(name: &str, value: &Value) -> Result<Option<String>, &'static str> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text.clone())),
        Value::Number(number) if NUMBER_INPUTS.contains(&name) => Ok(Some(number.to_string())),
        _ => Err(MSG_STRING),
    }
}

/// Parses a JSON request body into an object, or names what is wrong with it. Only an empty
/// body counts as no body; one of blanks is not JSON, so it is refused like any other.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, Vec<FieldError>> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match strict_json::parse(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(vec![FieldError::new("body", "must be a JSON object")]),
        Err(ParseError::Repeated(path)) => Err(vec![FieldError::new(
            path,
            "is given more than once; give each member once",
        )]),
        Err(ParseError::Syntax(err)) => Err(vec![FieldError::new(
            "body",
            format!("is not valid JSON: {err}"),
        )]),
    }
}

/// Reads one issue's inputs from a JSON object (the body of a `PUT`, say).
pub fn issue_from_json(
    object: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<IssueRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let input = IssueInput::from_json(object, "", &[], &mut errors);
    finish(input.parse(now), "", errors)
}

/// Reads a batch: `{"count": N, ...inputs}` (N numbers for the same inputs) or
/// `{"orders": [{...inputs}, ...]}`, 1 to [`MAX_BATCH`] numbers. Nothing is valid unless all is.
pub fn batch_from_json(
    object: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Vec<IssueRequest>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let batch_size = format!("must be an integer from 1 to {MAX_BATCH}");
    match (object.get("count"), object.get("orders")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "orders",
                "give either count or orders, not both",
            ));
            Err(errors)
        }
        (None, Some(orders)) => {
            if let Some(extra) = object.keys().find(|k| *k != "orders") {
                errors.push(FieldError::new(
                    extra.clone(),
                    "give inputs inside each order when using orders",
                ));
            }
            let orders = match orders.as_array() {
                Some(orders) if (1..=MAX_BATCH).contains(&orders.len()) => orders,
                Some(_) => {
                    errors.push(FieldError::new(
                        "orders",
                        format!("must hold 1 to {MAX_BATCH} orders"),
                    ));
                    return Err(errors);
                }
                None => {
                    errors.push(FieldError::new("orders", "must be an array of objects"));
                    return Err(errors);
                }
            };
            let mut requests = Vec::with_capacity(orders.len());
            for (index, order) in orders.iter().enumerate() {
                let prefix = format!("orders[{index}].");
                let Some(order) = order.as_object() else {
                    errors.push(FieldError::new(
                        format!("orders[{index}]"),
                        "must be a JSON object",
                    ));
                    continue;
                };
                let mut own = Vec::new();
                let input = IssueInput::from_json(order, &prefix, &[], &mut own);
                match finish(input.parse(now), &prefix, own) {
                    Ok(request) => requests.push(request),
                    Err(bad) => errors.extend(bad),
                }
            }
            if errors.is_empty() {
                Ok(requests)
            } else {
                Err(errors)
            }
        }
        (count, None) => {
            let count = match count {
                None => {
                    errors.push(FieldError::new("count", "give count or orders"));
                    None
                }
                Some(count) => match whole_number(count) {
                    Some(n) if (1..=MAX_BATCH as u64).contains(&n) => Some(n as usize),
                    _ => {
                        errors.push(FieldError::new("count", batch_size));
                        None
                    }
                },
            };
            let input = IssueInput::from_json(object, "", &["count"], &mut errors);
            let request = finish(input.parse(now), "", errors)?;
            Ok(vec![request; count.unwrap_or(0)])
        }
    }
}

/// A JSON number without a fractional part: `3`, or `3.0` (JSON and JSON Schema do not tell them
/// apart).
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        // In range first, so the cast is exact.
        (float.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&float)).then_some(float as u64)
    })
}

/// Merges a parse result with the errors found while reading the JSON (type errors first),
/// naming fields under `prefix` and each field once.
fn finish(
    parsed: Result<IssueRequest, Vec<FieldError>>,
    prefix: &str,
    mut errors: Vec<FieldError>,
) -> Result<IssueRequest, Vec<FieldError>> {
    match parsed {
        Ok(request) if errors.is_empty() => Ok(request),
        Ok(_) => Err(errors),
        Err(more) => {
            for mut error in more {
                error.field.insert_str(0, prefix);
                if !errors.iter().any(|e| e.field == error.field) {
                    errors.push(error);
                }
            }
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    fn object(json: &str) -> Map<String, Value> {
        json_object(json.as_bytes()).unwrap()
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn every_named_input_has_a_slot_and_no_other_name_does() {
        let mut input = IssueInput::default();
        for name in INPUT_NAMES {
            assert!(input.slot(name).is_some(), "{name}");
        }
        for name in ["order_id", "tracking_number", "Weight", ""] {
            assert!(input.slot(name).is_none(), "{name}");
        }
    }

    #[test]
    fn count_repeats_one_set_of_inputs() {
        let batch = batch_from_json(
            &object(r#"{"count": 3, "origin_country_id": "MY", "weight": 1.5}"#),
            now(),
        )
        .unwrap();
        assert_eq!(batch.len(), 3);
        assert!(
            batch
                .iter()
                .all(|r| r.order.weight.unwrap().grams() == 1500)
        );
        assert_eq!(batch[0], batch[2]);
        for whole in [r#"{"count": 3.0}"#, r#"{"count": 3e0}"#] {
            assert_eq!(batch_from_json(&object(whole), now()).unwrap().len(), 3);
        }
    }

    #[test]
    fn orders_are_read_in_order_and_every_bad_one_is_named_with_its_index() {
        let batch = batch_from_json(
            &object(r#"{"orders": [{"origin_country_id": "MY"}, {}, {"weight": "2"}]}"#),
            now(),
        )
        .unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[2].order.weight.unwrap().grams(), 2000);
        let errors = batch_from_json(
            &object(
                r#"{"orders": [{"weight": 0}, {"origin_country_id": "MY"}, 5,
                              {"colour": "red", "customer_id": true}]}"#,
            ),
            now(),
        )
        .unwrap_err();
        assert_eq!(
            fields(errors),
            [
                "orders[0].weight",
                "orders[2]",
                "orders[3].colour",
                "orders[3].customer_id"
            ]
        );
    }

    #[test]
    fn batch_sizes_are_bounded() {
        for body in [
            r#"{"count": 0}"#,
            r#"{"count": 1001}"#,
            r#"{"count": "5"}"#,
            r#"{"count": 2.5}"#,
            r#"{"count": -1.0}"#,
            r#"{"count": 1e300}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                fields(batch_from_json(&object(body), now()).unwrap_err()),
                ["count"],
                "{body}"
            );
        }
        let many = format!(r#"{{"orders": [{}]}}"#, vec!["{}"; 1001].join(","));
        assert_eq!(
            fields(batch_from_json(&object(&many), now()).unwrap_err()),
            ["orders"]
        );
        assert_eq!(
            fields(batch_from_json(&object(r#"{"orders": []}"#), now()).unwrap_err()),
            ["orders"]
        );
        assert_eq!(
            fields(batch_from_json(&object(r#"{"count": 1, "orders": [{}]}"#), now()).unwrap_err()),
            ["orders"]
        );
        assert_eq!(
            batch_from_json(&object(r#"{"count": 1000}"#), now())
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn count_with_bad_inputs_names_all_of_them() {
        let errors = batch_from_json(
            &object(
                r#"{"count": 0, "weight": "heavy", "expires_at": "2020-01-01T00:00:00Z", "x": 1}"#,
            ),
            now(),
        )
        .unwrap_err();
        assert_eq!(fields(errors), ["count", "x", "weight", "expires_at"]);
    }

    #[test]
    fn expiry_must_be_a_future_instant() {
        let ok = parse_expiry("2026-11-22T00:00:00+08:00", now()).unwrap();
        assert_eq!(ok, Utc.with_ymd_and_hms(2026, 11, 21, 16, 0, 0).unwrap());
        assert_eq!(
            parse_expiry("2026-11-21T12:00:00Z", now()),
            None,
            "now is not the future"
        );
        assert_eq!(parse_expiry("tomorrow", now()), None);
        let mut input = IssueInput::default();
        *input.slot("expires_at").unwrap() = Some("2026-11-20T00:00:00Z".into());
        assert_eq!(fields(input.parse(now()).unwrap_err()), ["expires_at"]);
    }

    #[test]
    fn bodies_must_be_json_objects_and_only_empty_is_nothing_given() {
        assert!(json_object(b"").unwrap().is_empty());
        assert_eq!(fields(json_object(b"  \n").unwrap_err()), ["body"]);
        assert!(json_object(b" {} \n").unwrap().is_empty());
        assert_eq!(fields(json_object(b"[1]").unwrap_err()), ["body"]);
        assert_eq!(fields(json_object(b"{\"a\":").unwrap_err()), ["body"]);
        assert_eq!(
            fields(json_object(br#"{"count":1,"count":3}"#).unwrap_err()),
            ["count"]
        );
    }

    #[test]
    fn json_inputs_take_strings_numbers_and_null() {
        use serde_json::json;
        let text = |name, value| json_text(name, &value);
        assert_eq!(
            text("origin_country_id", json!("MY")),
            Ok(Some("MY".into()))
        );
        assert_eq!(text("weight", json!(1.25)), Ok(Some("1.25".into())));
        assert_eq!(text("weight", json!("1.25")), Ok(Some("1.25".into())));
        assert_eq!(text("customer_slug", Value::Null), Ok(None));
        assert_eq!(text("weight", json!([1])), Err(MSG_STRING));
        // Only the inputs that take a number may be one (a slug of 12 is no slug).
        for name in INPUT_NAMES
            .iter()
            .filter(|name| !NUMBER_INPUTS.contains(name))
        {
            assert_eq!(json_text(name, &json!(12)), Err(MSG_STRING), "{name}");
        }
        let request = issue_from_json(
            &object(r#"{"customer_name": "RedBox Logistics", "destination_country_id": null}"#),
            now(),
        )
        .unwrap();
        assert_eq!(
            request.order.customer_slug.as_deref(),
            Some("redbox-logistics")
        );
        assert_eq!(request.order.destination_country_id, None);
    }
}
