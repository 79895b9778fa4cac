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

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
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
    fn round_trips_through_json() {
        let record = sample();
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(back, record);
    }
}
