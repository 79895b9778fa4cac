//! A tracking number as everything past the edge handles it: 1 to 16 characters of `A-Z0-9`,
//! parsed once from what a client sent (lower case is read as upper case), or built by the codec
//! from the 16 digits it encodes. Stored inline and `Copy`: no heap allocation.

use std::fmt;

use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most characters a number has; the codec's numbers have exactly this many.
pub const MAX_LEN: usize = 16;

/// What a number that does not parse is told.
pub const MSG_NUMBER: &str = "must be 1 to 16 characters of A-Z and 0-9";

/// A tracking number: 1 to [`MAX_LEN`] ASCII characters of `A-Z0-9`. Bytes past the length are
/// always zero, so equality and hashing may look at all of them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackingNumber {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl TrackingNumber {
    /// A number as a client gives it: 1 to 16 of `A-Z0-9`, lower case read as upper case;
    /// None for anything else.
    pub fn parse(text: &str) -> Option<TrackingNumber> {
        let raw = text.as_bytes();
        if raw.is_empty() || raw.len() > MAX_LEN || !raw.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut bytes = [0; MAX_LEN];
        for (to, from) in bytes.iter_mut().zip(raw) {
            *to = from.to_ascii_uppercase();
        }
        Some(TrackingNumber {
            bytes,
            len: raw.len() as u8,
        })
    }

    /// The codec's 16 digits (each one of `0-9A-Z`) as a number.
    pub(super) fn from_digits(digits: [u8; MAX_LEN]) -> TrackingNumber {
        debug_assert!(
            digits
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        TrackingNumber {
            bytes: digits,
            len: MAX_LEN as u8,
        }
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        // Only ever holds ASCII, so this is always valid and the fallback never used.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Display for TrackingNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TrackingNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrackingNumber")
            .field(&self.as_str())
            .finish()
    }
}

impl Serialize for TrackingNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Read as [`TrackingNumber::parse`] reads it.
impl<'de> Deserialize<'de> for TrackingNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = TrackingNumber;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a tracking number that {MSG_NUMBER}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<TrackingNumber, E> {
                TrackingNumber::parse(text)
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Option<String> {
        TrackingNumber::parse(text).map(|number| number.as_str().to_owned())
    }

    #[test]
    fn parse_reads_case_and_refuses_other_characters() {
        assert_eq!(parsed("ab12").as_deref(), Some("AB12"));
        assert_eq!(parsed(""), None);
        assert_eq!(parsed("A-1"), None);
        assert_eq!(parsed(&"A".repeat(17)), None);
        assert_eq!(parsed("\u{e9}"), None);
    }

    #[test]
    fn parse_takes_every_length_up_to_sixteen() {
        let all = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for len in 1..=MAX_LEN {
            assert_eq!(parsed(&all[..len]).as_deref(), Some(&all[..len]));
            assert_eq!(
                parsed(&all[20..20 + len]).as_deref(),
                Some(&all[20..20 + len])
            );
        }
        assert_eq!(
            parsed("mY0a123456789xYm").as_deref(),
            Some("MY0A123456789XYM")
        );
        assert_eq!(parsed(" A"), None);
        assert_eq!(parsed("A\0"), None);
        assert_eq!(parsed("A_B"), None);
        // 16 characters, but more than 16 bytes.
        assert_eq!(parsed(&format!("{}\u{e9}", "A".repeat(15))), None);
    }

    #[test]
    fn equal_numbers_are_equal_whatever_case_they_came_in() {
        use std::collections::HashSet;
        let upper = TrackingNumber::parse("AB12").unwrap();
        let lower = TrackingNumber::parse("ab12").unwrap();
        assert_eq!(upper, lower);
        assert_ne!(upper, TrackingNumber::parse("AB120").unwrap());
        assert_ne!(upper, TrackingNumber::parse("AB1").unwrap());
        let set: HashSet<_> = [upper, lower].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn displays_serializes_and_deserializes_as_its_text() {
        let number = TrackingNumber::parse("zz07").unwrap();
        assert_eq!(number.to_string(), "ZZ07");
        assert_eq!(format!("{number:?}"), r#"TrackingNumber("ZZ07")"#);
        assert_eq!(serde_json::to_string(&number).unwrap(), r#""ZZ07""#);
        let back: TrackingNumber = serde_json::from_str(r#""zz07""#).unwrap();
        assert_eq!(back, number);
        let escaped: TrackingNumber = serde_json::from_str(r#""\u005A\u005A07""#).unwrap();
        assert_eq!(escaped, number);
        for bad in [r#""""#, r#""A-1""#, "7", "null", r#""AAAAAAAAAAAAAAAAA""#] {
            assert!(
                serde_json::from_str::<TrackingNumber>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn codec_digits_make_a_sixteen_character_number() {
        let number = TrackingNumber::from_digits(*b"MY0A123456789XYM");
        assert_eq!(number.as_str(), "MY0A123456789XYM");
        assert_eq!(TrackingNumber::parse("my0a123456789xym"), Some(number));
    }
}
