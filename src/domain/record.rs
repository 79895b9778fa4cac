//! The record an issued number leaves behind: the number, its parcel's status, when it was
//! issued, last changed and expires, and the order inputs it was issued for. Its JSON is both
//! the stored value and the reply, and its [`etag`] is a hash of exactly those bytes.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::order::Order;
use super::tenant::Tenant;
use super::tracking_number::TrackingNumber;

/// An issued (or registered) number's record, with the order inputs it was issued for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    #[schema(
        value_type = String,
        pattern = "^[A-Z0-9]{1,16}$",
        examples("MYG28DGOKX5I2L45")
    )]
    pub tracking_number: TrackingNumber,
    /// Records stored before statuses existed read as `issued`.
    #[serde(default)]
    #[schema(required = true)]
    pub status: Status,
    /// When the number was issued (or registered), UTC with microseconds.
    #[serde(with = "utc_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Records stored before this field existed read as never updated (the epoch); their next
    /// change sets it.
    #[serde(with = "utc_micros", default)]
    #[schema(value_type = String, format = DateTime, required = true)]
    pub updated_at: DateTime<Utc>,
    /// After this time the record answers 404 and is purged.
    #[serde(with = "utc_micros")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// The tenant whose API key created the record: only that tenant (and admins) can see it.
    /// Absent when the service runs without API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false, examples("acme"))]
    pub tenant: Option<Tenant>,
    #[serde(flatten)]
    pub order: Order,
}

impl Record {
    /// A fresh record of `tenant`'s: status `issued`, created and updated `now`.
    pub fn new(
        tracking_number: TrackingNumber,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        order: Order,
        tenant: Option<Tenant>,
    ) -> Record {
        Record {
            tracking_number,
            status: Status::Issued,
            created_at: now,
            updated_at: now,
            expires_at,
            tenant,
            order,
        }
    }
}

/// The tenant that owns a stored record, read from its JSON without reading the rest.
pub fn owner_of(json: &[u8]) -> Result<Option<Tenant>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Owner {
        #[serde(default)]
        tenant: Option<Tenant>,
    }
    serde_json::from_slice::<Owner>(json).map(|owner| owner.tenant)
}

/// Where a parcel is. Moves go forward only (`issued` → `label_printed` → `in_transit` →
/// `delivered`); `cancelled` is reachable from any state before `delivered`. `delivered` and
/// `cancelled` are final. Staying in the same state is not a move and always allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Issued,
    LabelPrinted,
    InTransit,
    Delivered,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Issued,
        Status::LabelPrinted,
        Status::InTransit,
        Status::Delivered,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Issued => "issued",
            Status::LabelPrinted => "label_printed",
            Status::InTransit => "in_transit",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether a parcel in this state may be put in `next`.
    pub fn may_become(self, next: Status) -> bool {
        use Status::*;
        match (self, next) {
            _ if self == next => true,
            (Delivered | Cancelled, _) => false,
            (_, Cancelled) => true,
            (from, to) => from.step() < to.step(),
        }
    }

    /// Position on the forward path (cancelled is off it).
    fn step(self) -> u8 {
        match self {
            Status::Issued => 0,
            Status::LabelPrinted => 1,
            Status::InTransit => 2,
            Status::Delivered => 3,
            Status::Cancelled => 4,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The strong entity tag of a stored record: a 128-bit SipHash (fixed keys, so every instance
/// agrees) of its exact JSON bytes, quoted as HTTP wants it.
pub fn etag(json: &[u8]) -> ETag {
    use std::hash::Hasher;
    let mut hasher = siphasher::sip128::SipHasher13::new();
    hasher.write(json);
    let hash = siphasher::sip128::Hasher128::finish128(&hasher).as_u128();
    let mut tag = [b'"'; 34];
    // 16 bytes make exactly 32 hex digits: this cannot fail.
    let _ = hex::encode_to_slice(hash.to_be_bytes(), &mut tag[1..33]);
    ETag(tag)
}

/// A strong entity tag, `"` and 32 hex digits and `"`, held on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ETag([u8; 34]);

impl std::ops::Deref for ETag {
    type Target = str;

    fn deref(&self) -> &str {
        // Quotes and hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// Whether an `If-Match` header value lets a change to the version tagged `etag` go ahead:
/// `*`, or a list holding that exact strong tag (weak tags never match, RFC 9110 §13.1.1).
pub fn if_match_allows(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag == etag)
}

/// UTC timestamps always written with microseconds and `Z`, so every reply has one shape.
mod utc_micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, formatted on the stack: this runs twice per issued number.
    /// A time outside RFC 3339's four-digit years (only records stored before such times were
    /// refused can hold one) is written as the nearest time that fits.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        use chrono::{Datelike, Timelike};
        let t = &clamp_to_rfc3339(*t);
        let year = t.year();
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        // A leap second shows as :60, as RFC 3339 allows.
        put(17, 2, t.second() + t.nanosecond() / 1_000_000_000);
        put(20, 6, (t.nanosecond() % 1_000_000_000) / 1_000);
        s.serialize_str(std::str::from_utf8(&out).map_err(serde::ser::Error::custom)?)
    }

    /// Also reads the signed five-digit years (`+10000-01-01T…Z`) that versions before
    /// December 2026 stored for a far-future `expires_at`, so those records can still change.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .or_else(|_| text.parse::<DateTime<chrono::FixedOffset>>())
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }

    fn clamp_to_rfc3339(t: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::TimeZone;
        let earliest = Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap();
        let latest = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::microseconds(999_999);
        t.clamp(earliest, latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Country;
    use chrono::TimeZone;

    fn sample() -> Record {
        Record::new(
            TrackingNumber::parse("MY0A1B2C3D4E5F6G").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 30).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 21, 10, 15, 30).unwrap(),
            Order {
                origin_country_id: Country::parse("MY"),
                ..Order::default()
            },
            None,
        )
    }

    #[test]
    fn a_record_names_its_tenant_when_it_has_one() {
        let mut record = sample();
        assert_eq!(
            owner_of(&serde_json::to_vec(&record).unwrap()).unwrap(),
            None
        );
        record.tenant = Tenant::parse("acme");
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(owner_of(&json).unwrap(), Tenant::parse("acme"));
        let back: Record = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, record);
        assert!(
            owner_of(br#"{"tenant":"a/b"}"#).is_err(),
            "not a tenant name"
        );
    }

    #[test]
    fn a_far_future_expiry_stored_by_an_older_version_reads_and_writes_back_as_rfc3339() {
        // What versions before December 2026 stored for `9999-12-31T23:59:59-23:59`.
        let json = serde_json::to_string(&sample()).unwrap().replace(
            "2026-12-21T10:15:30.000000Z",
            "+10000-01-01T23:58:59.000000Z",
        );
        assert!(json.contains("+10000-"), "{json}");
        let record: Record = serde_json::from_str(&json).unwrap();
        let again = serde_json::to_string(&record).unwrap();
        assert!(
            again.contains(r#""expires_at":"9999-12-31T23:59:59.999999Z""#),
            "{again}"
        );
    }

    #[test]
    fn serializes_flat_with_microsecond_utc_times() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"{"tracking_number":"MY0A1B2C3D4E5F6G","status":"issued","created_at":"2026-11-21T10:15:30.000000Z","updated_at":"2026-11-21T10:15:30.000000Z","expires_at":"2026-12-21T10:15:30.000000Z","origin_country_id":"MY"}"#
        );
    }

    #[test]
    fn times_match_chronos_own_formatting() {
        for t in [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(2099, 12, 31, 23, 59, 59).unwrap()
                + chrono::Duration::microseconds(999_999),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::microseconds(7),
        ] {
            let record = Record {
                created_at: t,
                expires_at: t,
                ..sample()
            };
            let json: serde_json::Value = serde_json::to_value(&record).unwrap();
            assert_eq!(
                json["created_at"],
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            );
        }
    }

    #[test]
    fn status_moves_forward_only_and_final_states_stay() {
        use Status::*;
        let allowed = |from: Status, to: Status| from.may_become(to);
        assert!(allowed(Issued, LabelPrinted) && allowed(Issued, Delivered));
        assert!(allowed(LabelPrinted, InTransit) && allowed(InTransit, Delivered));
        assert!(allowed(Issued, Cancelled) && allowed(InTransit, Cancelled));
        assert!(!allowed(InTransit, Issued) && !allowed(Delivered, InTransit));
        assert!(
            !allowed(Delivered, Cancelled),
            "a delivered parcel cannot be cancelled"
        );
        for to in Status::ALL {
            assert_eq!(
                allowed(Cancelled, to),
                to == Cancelled,
                "cancelled is final"
            );
            assert!(allowed(to, to), "staying put is not a move");
        }
    }

    #[test]
    fn statuses_parse_their_json_names() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("shipped"), None);
    }

    #[test]
    fn etags_follow_the_exact_bytes() {
        let a = etag(br#"{"a":1}"#);
        assert_eq!(a, etag(br#"{"a":1}"#));
        assert_ne!(a, etag(br#"{"a":2}"#));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with('"') && a.ends_with('"'));
    }

    #[test]
    fn if_match_takes_star_or_a_list_of_strong_tags() {
        let tag = etag(b"{}");
        assert!(if_match_allows("*", &tag));
        assert!(if_match_allows(&tag, &tag));
        assert!(if_match_allows(&format!("\"nope\", {tag}"), &tag));
        assert!(!if_match_allows("\"nope\"", &tag));
        assert!(
            !if_match_allows(&format!("W/{tag}"), &tag),
            "weak tags never match"
        );
        assert!(!if_match_allows("", &tag));
    }

    #[test]
    fn records_stored_before_statuses_still_read() {
        let old = r#"{"tracking_number":"ZZ00AAAAAAAAAAAA","created_at":"2026-11-21T10:15:30.000000Z","expires_at":"2026-12-21T10:15:30.000000Z"}"#;
        let record: Record = serde_json::from_str(old).unwrap();
        assert_eq!(record.status, Status::Issued);
        assert_eq!(record.updated_at, DateTime::<Utc>::UNIX_EPOCH);
    }

    #[test]
    fn round_trips_through_json() {
        let record = sample();
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(back, record);
    }
}
