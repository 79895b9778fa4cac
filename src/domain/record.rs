//! The record an issued number leaves behind: the number, when it was issued, when the record
//! expires, and the order inputs it was issued for. Its JSON is both the stored value and the reply.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::order::Order;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub tracking_number: String,
    #[serde(with = "utc_micros")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "utc_micros")]
    pub expires_at: DateTime<Utc>,
    #[serde(flatten)]
    pub order: Order,
}

/// UTC timestamps always written with microseconds and `Z`, so every reply has one shape.
mod utc_micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, formatted on the stack: this runs twice per issued number.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        use chrono::{Datelike, Timelike};
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
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

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Country;
    use chrono::TimeZone;

    fn sample() -> Record {
        Record {
            tracking_number: "MY0A1B2C3D4E5F6G".into(),
            created_at: Utc.with_ymd_and_hms(2026, 11, 21, 10, 15, 30).unwrap(),
            expires_at: Utc.with_ymd_and_hms(2026, 12, 21, 10, 15, 30).unwrap(),
            order: Order {
                origin_country_id: Country::parse("MY"),
                ..Order::default()
            },
        }
    }

    #[test]
    fn serializes_flat_with_microsecond_utc_times() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"{"tracking_number":"MY0A1B2C3D4E5F6G","created_at":"2026-11-21T10:15:30.000000Z","expires_at":"2026-12-21T10:15:30.000000Z","origin_country_id":"MY"}"#
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
                t.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
        }
    }

    #[test]
    fn round_trips_through_json() {
        let record = sample();
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(back, record);
    }
}
