//! What a tracking number says about itself, without its record: whether it has our 16-character
//! layout and a valid check character, and then its origin country and customer tag.

use serde::Serialize;

use super::codec::has_valid_check;
use super::country::Country;
use super::tracking_number::{MAX_LEN, TrackingNumber};

/// Whether a number could be one this service issued: 16 characters with a valid check
/// character. Such a number cannot be registered from elsewhere.
pub fn could_be_ours(number: &TrackingNumber) -> bool {
    let number = number.as_str();
    number.len() == MAX_LEN && has_valid_check(number)
}

/// What `GET /v1/tracking-numbers/{tn}/check` answers: every member is always present.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Inspection {
    /// The number from the path, upper case.
    #[schema(value_type = String, pattern = "^[A-Z0-9]{1,16}$")]
    pub tracking_number: TrackingNumber,
    /// 16 characters, the layout this service issues.
    pub format_valid: bool,
    /// The 16th character is the check character of the first 15.
    pub check_character_valid: bool,
    /// The origin country in the first two characters (null for `ZZ`, no origin given, or any
    /// pair that is not a country).
    #[schema(required = true)]
    pub origin_country_id: Option<Country>,
    /// Characters 3-4: base36 of the customer tag (0-1295); null when the format is not valid.
    #[schema(required = true, pattern = "^[A-Z0-9]{2}$")]
    pub customer_tag: Option<String>,
    /// The customer tag's value; null when the format is not valid.
    #[schema(required = true, maximum = 1295)]
    pub customer_tag_value: Option<u16>,
    /// Whether a live record holds the number, filled in by the caller from storage; null
    /// when storage could not be asked.
    #[schema(required = true)]
    pub record_exists: Option<bool>,
}

/// Decodes a number.
pub fn inspect(tracking_number: &TrackingNumber) -> Inspection {
    let number = tracking_number.as_str();
    let format_valid = number.len() == MAX_LEN;
    let check_character_valid = format_valid && has_valid_check(number);
    let (origin, tag) = if format_valid {
        let tag = &number[2..4];
        let value = tag
            .chars()
            .try_fold(0u16, |acc, c| Some(acc * 36 + c.to_digit(36)? as u16));
        (Country::parse(&number[..2]), Some((tag.to_owned(), value)))
    } else {
        (None, None)
    };
    Inspection {
        tracking_number: *tracking_number,
        format_valid,
        check_character_valid,
        origin_country_id: origin,
        customer_tag_value: tag.as_ref().and_then(|(_, value)| *value),
        customer_tag: tag.map(|(text, _)| text),
        record_exists: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Codec;

    #[test]
    fn decodes_a_number_we_issue() {
        let codec = Codec::new(b"secret");
        let tag = codec.customer_tag(Some("redbox-logistics"));
        let number = codec.encode(Country::parse("MY"), tag, 12345).unwrap();
        let seen = inspect(&number);
        assert!(seen.format_valid && seen.check_character_valid);
        assert_eq!(seen.origin_country_id, Country::parse("MY"));
        assert_eq!(seen.customer_tag_value, Some(tag));
        assert!(could_be_ours(&number));
    }

    #[test]
    fn a_changed_character_fails_the_check() {
        let codec = Codec::new(b"secret");
        let number = codec.encode(None, 0, 7).unwrap().to_string();
        let mut bytes = number.into_bytes();
        bytes[9] = if bytes[9] == b'A' { b'B' } else { b'A' };
        let changed = TrackingNumber::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let seen = inspect(&changed);
        assert!(seen.format_valid && !seen.check_character_valid);
        assert_eq!(seen.origin_country_id, None, "ZZ is no country");
    }

    #[test]
    fn short_numbers_have_no_layout() {
        let short = TrackingNumber::parse("ABC123").unwrap();
        let seen = inspect(&short);
        assert!(!seen.format_valid && !seen.check_character_valid);
        assert_eq!((seen.origin_country_id, seen.customer_tag), (None, None));
        assert!(!could_be_ours(&short));
    }
}
