//! A change to a record (`PATCH /v1/tracking-numbers/{tn}`), in JSON merge-patch style: a field
//! given is set, `null` clears an optional one, a field left out stays. The number, its origin
//! country, customer id and times of creation are fixed; `status` moves forward only.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::country::Country;
use super::order::{FieldError, OrderInput, Weight};
use super::record::{Record, Status};
use super::request::{MSG_EXPIRES_AT, json_text, parse_expiry};

const MSG_FIXED: &str = "cannot be changed";
const MSG_UNKNOWN: &str = "unknown field";
const MSG_NOT_NULL: &str = "must not be null";
const MSG_STATUS: &str = "must be one of issued, label_printed, in_transit, delivered, cancelled";

/// A validated change. `Some(None)` clears a field.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecordPatch {
    pub destination_country_id: Option<Option<Country>>,
    pub weight: Option<Option<Weight>>,
    pub customer_name: Option<Option<String>>,
    pub customer_slug: Option<Option<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: Option<Status>,
}

/// A status move the rules forbid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a parcel that is {from} cannot become {to}")]
pub struct BadMove {
    pub from: Status,
    pub to: Status,
}

impl RecordPatch {
    /// Reads and validates a patch object; every bad field is reported. `now` rules out an
    /// expiry in the past.
    pub fn from_json(
        object: &Map<String, Value>,
        now: DateTime<Utc>,
    ) -> Result<RecordPatch, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut patch = RecordPatch::default();
        // The order fields reuse the issue-time validators; `cleared` notes explicit nulls.
        let mut input = OrderInput::default();
        let mut cleared: Vec<&str> = Vec::new();
        for (name, value) in object {
            let text = match json_text(name, value) {
                Ok(text) => text,
                Err(message) => {
                    errors.push(FieldError::new(name.clone(), message));
                    continue;
                }
            };
            let slot = match name.as_str() {
                "destination_country_id" => &mut input.destination_country_id,
                "weight" => &mut input.weight,
                "customer_name" => &mut input.customer_name,
                "customer_slug" => &mut input.customer_slug,
                "status" => {
                    match text.as_deref().map(Status::parse) {
                        Some(Some(status)) => patch.status = Some(status),
                        Some(None) => errors.push(FieldError::new("status", MSG_STATUS)),
                        None => errors.push(FieldError::new("status", MSG_NOT_NULL)),
                    }
                    continue;
                }
                "expires_at" => {
                    match text.as_deref().map(|t| parse_expiry(t, now)) {
                        Some(Some(at)) => patch.expires_at = Some(at),
                        Some(None) => errors.push(FieldError::new("expires_at", MSG_EXPIRES_AT)),
                        None => errors.push(FieldError::new("expires_at", MSG_NOT_NULL)),
                    }
                    continue;
                }
                "tracking_number" | "origin_country_id" | "customer_id" | "created_at"
                | "tenant" | "updated_at" => {
                    errors.push(FieldError::new(name.clone(), MSG_FIXED));
                    continue;
                }
                _ => {
                    errors.push(FieldError::new(name.clone(), MSG_UNKNOWN));
                    continue;
                }
            };
            match text {
                Some(text) => *slot = Some(text.into()),
                None => cleared.push(name.as_str()),
            }
        }
        let slug_given = input.customer_slug.is_some();
        match input.parse() {
            Ok(order) => {
                fn given<T>(cleared: &[&str], value: Option<T>, name: &str) -> Option<Option<T>> {
                    if cleared.contains(&name) {
                        Some(None)
                    } else {
                        value.map(Some)
                    }
                }
                patch.destination_country_id = given(
                    &cleared,
                    order.destination_country_id,
                    "destination_country_id",
                );
                patch.weight = given(&cleared, order.weight, "weight");
                patch.customer_name = given(&cleared, order.customer_name, "customer_name");
                // A new name does not re-derive the slug: only a slug given is a slug changed.
                patch.customer_slug = given(
                    &cleared,
                    order.customer_slug.filter(|_| slug_given),
                    "customer_slug",
                );
            }
            Err(more) => errors.extend(more),
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(errors)
        }
    }

    /// Applies the patch as of `now`. Fails, changing nothing, on a forbidden status move.
    pub fn apply(&self, record: &Record, now: DateTime<Utc>) -> Result<Record, BadMove> {
        let mut next = record.clone();
        if let Some(to) = self.status {
            if !record.status.may_become(to) {
                return Err(BadMove {
                    from: record.status,
                    to,
                });
            }
            next.status = to;
        }
        let order = &mut next.order;
        if let Some(value) = self.destination_country_id {
            order.destination_country_id = value;
        }
        if let Some(value) = self.weight {
            order.weight = value;
        }
        if let Some(value) = &self.customer_name {
            order.customer_name.clone_from(value);
        }
        if let Some(value) = &self.customer_slug {
            order.customer_slug.clone_from(value);
        }
        if let Some(at) = self.expires_at {
            next.expires_at = at;
        }
        // Never earlier than the last change, should clocks disagree between instances.
        next.updated_at = now.max(record.updated_at);
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::json_object;
    use crate::domain::{Order, TrackingNumber};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    fn patch(json: &str) -> Result<RecordPatch, Vec<String>> {
        RecordPatch::from_json(&json_object(json.as_bytes()).unwrap(), now())
            .map_err(|errors| errors.into_iter().map(|e| e.field).collect())
    }

    fn record() -> Record {
        let mut order = Order {
            origin_country_id: Country::parse("MY"),
            weight: Weight::parse("1.5"),
            customer_name: Some("RedBox".into()),
            customer_slug: Some("redbox".into()),
            ..Order::default()
        };
        order.destination_country_id = Country::parse("ID");
        let created = now() - chrono::Duration::hours(1);
        Record::new(
            TrackingNumber::parse("MY00ABCDEFGHIJKL").unwrap(),
            created,
            created + chrono::Duration::days(30),
            order,
            None,
        )
    }

    #[test]
    fn sets_given_fields_clears_nulls_and_keeps_the_rest() {
        let p = patch(
            r#"{"weight": 2.25, "destination_country_id": null, "status": "in_transit",
                "expires_at": "2027-01-01T00:00:00Z", "customer_slug": "redbox-2"}"#,
        )
        .unwrap();
        let next = p.apply(&record(), now()).unwrap();
        assert_eq!(next.order.weight.unwrap().grams(), 2250);
        assert_eq!(next.order.destination_country_id, None);
        assert_eq!(next.order.customer_slug.as_deref(), Some("redbox-2"));
        assert_eq!(next.order.customer_name.as_deref(), Some("RedBox"));
        assert_eq!(next.order.origin_country_id, Country::parse("MY"));
        assert_eq!(next.status, Status::InTransit);
        assert_eq!(
            next.expires_at,
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(next.updated_at, now());
        assert_eq!(next.created_at, record().created_at);
        assert_eq!(next.tracking_number, record().tracking_number);
    }

    #[test]
    fn a_new_name_keeps_the_slug() {
        let next = patch(r#"{"customer_name": "Blue Box"}"#)
            .unwrap()
            .apply(&record(), now())
            .unwrap();
        assert_eq!(next.order.customer_name.as_deref(), Some("Blue Box"));
        assert_eq!(next.order.customer_slug.as_deref(), Some("redbox"));
    }

    #[test]
    fn every_bad_unknown_and_fixed_field_is_named() {
        assert_eq!(
            patch(
                r#"{"weight": -1, "status": "lost", "expires_at": "2020-01-01T00:00:00Z",
                    "origin_country_id": "ID", "colour": "red", "customer_slug": "Bad Slug",
                    "destination_country_id": ["MY"]}"#
            )
            .unwrap_err(),
            [
                "colour",
                "destination_country_id",
                "expires_at",
                "origin_country_id",
                "status",
                "weight",
                "customer_slug"
            ]
        );
        assert_eq!(
            patch(r#"{"status": null, "expires_at": null}"#).unwrap_err(),
            ["expires_at", "status"]
        );
    }

    #[test]
    fn a_backward_move_names_both_states_and_changes_nothing() {
        let mut delivered = record();
        delivered.status = Status::Delivered;
        let err = patch(r#"{"status": "in_transit", "weight": 3}"#)
            .unwrap()
            .apply(&delivered, now())
            .unwrap_err();
        assert_eq!(
            err,
            BadMove {
                from: Status::Delivered,
                to: Status::InTransit
            }
        );
        assert_eq!(
            err.to_string(),
            "a parcel that is delivered cannot become in_transit"
        );
    }

    #[test]
    fn updated_at_never_goes_back() {
        let mut later = record();
        later.updated_at = now() + chrono::Duration::seconds(5);
        let next = RecordPatch::default().apply(&later, now()).unwrap();
        assert_eq!(next.updated_at, later.updated_at);
    }
}
