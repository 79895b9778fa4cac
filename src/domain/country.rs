//! ISO 3166-1 alpha-2 country codes: parsing accepts only the 249 officially assigned codes,
//! in any ASCII case, and keeps them upper case in two inline bytes.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The officially assigned ISO 3166-1 alpha-2 codes (249), sorted. Reserved and user-assigned
/// codes (AA, QM-QZ, XA-XZ, ZZ, and XK, which is only a common convention) are not listed.
const ASSIGNED_CODES: [[u8; 2]; 249] = [
    *b"AD", *b"AE", *b"AF", *b"AG", *b"AI", *b"AL", *b"AM", *b"AO", *b"AQ", *b"AR", *b"AS", *b"AT",
    *b"AU", *b"AW", *b"AX", *b"AZ", *b"BA", *b"BB", *b"BD", *b"BE", *b"BF", *b"BG", *b"BH", *b"BI",
    *b"BJ", *b"BL", *b"BM", *b"BN", *b"BO", *b"BQ", *b"BR", *b"BS", *b"BT", *b"BV", *b"BW", *b"BY",
    *b"BZ", *b"CA", *b"CC", *b"CD", *b"CF", *b"CG", *b"CH", *b"CI", *b"CK", *b"CL", *b"CM", *b"CN",
    *b"CO", *b"CR", *b"CU", *b"CV", *b"CW", *b"CX", *b"CY", *b"CZ", *b"DE", *b"DJ", *b"DK", *b"DM",
    *b"DO", *b"DZ", *b"EC", *b"EE", *b"EG", *b"EH", *b"ER", *b"ES", *b"ET", *b"FI", *b"FJ", *b"FK",
    *b"FM", *b"FO", *b"FR", *b"GA", *b"GB", *b"GD", *b"GE", *b"GF", *b"GG", *b"GH", *b"GI", *b"GL",
    *b"GM", *b"GN", *b"GP", *b"GQ", *b"GR", *b"GS", *b"GT", *b"GU", *b"GW", *b"GY", *b"HK", *b"HM",
    *b"HN", *b"HR", *b"HT", *b"HU", *b"ID", *b"IE", *b"IL", *b"IM", *b"IN", *b"IO", *b"IQ", *b"IR",
    *b"IS", *b"IT", *b"JE", *b"JM", *b"JO", *b"JP", *b"KE", *b"KG", *b"KH", *b"KI", *b"KM", *b"KN",
    *b"KP", *b"KR", *b"KW", *b"KY", *b"KZ", *b"LA", *b"LB", *b"LC", *b"LI", *b"LK", *b"LR", *b"LS",
    *b"LT", *b"LU", *b"LV", *b"LY", *b"MA", *b"MC", *b"MD", *b"ME", *b"MF", *b"MG", *b"MH", *b"MK",
    *b"ML", *b"MM", *b"MN", *b"MO", *b"MP", *b"MQ", *b"MR", *b"MS", *b"MT", *b"MU", *b"MV", *b"MW",
    *b"MX", *b"MY", *b"MZ", *b"NA", *b"NC", *b"NE", *b"NF", *b"NG", *b"NI", *b"NL", *b"NO", *b"NP",
    *b"NR", *b"NU", *b"NZ", *b"OM", *b"PA", *b"PE", *b"PF", *b"PG", *b"PH", *b"PK", *b"PL", *b"PM",
    *b"PN", *b"PR", *b"PS", *b"PT", *b"PW", *b"PY", *b"QA", *b"RE", *b"RO", *b"RS", *b"RU", *b"RW",
    *b"SA", *b"SB", *b"SC", *b"SD", *b"SE", *b"SG", *b"SH", *b"SI", *b"SJ", *b"SK", *b"SL", *b"SM",
    *b"SN", *b"SO", *b"SR", *b"SS", *b"ST", *b"SV", *b"SX", *b"SY", *b"SZ", *b"TC", *b"TD", *b"TF",
    *b"TG", *b"TH", *b"TJ", *b"TK", *b"TL", *b"TM", *b"TN", *b"TO", *b"TR", *b"TT", *b"TV", *b"TW",
    *b"TZ", *b"UA", *b"UG", *b"UM", *b"US", *b"UY", *b"UZ", *b"VA", *b"VC", *b"VE", *b"VG", *b"VI",
    *b"VN", *b"VU", *b"WF", *b"WS", *b"YE", *b"YT", *b"ZA", *b"ZM", *b"ZW",
];

/// Row per first letter, bit per second letter, built at compile time from [`ASSIGNED_CODES`]
/// so a lookup is two index operations instead of a search.
const ASSIGNED_BITMAP: [u32; 26] = build_bitmap();

const fn build_bitmap() -> [u32; 26] {
    let mut rows = [0u32; 26];
    let mut i = 0;
    while i < ASSIGNED_CODES.len() {
        let [a, b] = ASSIGNED_CODES[i];
        rows[(a - b'A') as usize] |= 1 << (b - b'A');
        i += 1;
    }
    rows
}

/// An officially assigned ISO 3166-1 alpha-2 country code, stored upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Country([u8; 2]);

impl Country {
    /// Accepts any ASCII case ("my", "My", "MY"); None for anything not an officially assigned code
    /// (so "ZZ", "AA", "XK", "MYS", "M1", "", "M" are None).
    #[inline]
    pub fn parse(s: &str) -> Option<Country> {
        let &[a, b] = s.as_bytes() else {
            return None;
        };
        if !a.is_ascii_alphabetic() || !b.is_ascii_alphabetic() {
            return None;
        }
        let (a, b) = (a.to_ascii_uppercase(), b.to_ascii_uppercase());
        let row = ASSIGNED_BITMAP[usize::from(a - b'A')];
        (row & (1 << (b - b'A')) != 0).then_some(Country([a, b]))
    }

    #[inline]
    pub fn as_str(&self) -> &str {
        // Always two ASCII letters by construction, so the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The two upper-case ASCII bytes, for encoders that write them straight into a buffer.
    #[inline]
    pub(crate) fn bytes(self) -> [u8; 2] {
        self.0
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// In the API description: one of the assigned codes, upper case, as replies write it.
impl utoipa::PartialSchema for Country {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let codes = ASSIGNED_CODES.iter().map(|code| {
            // Two ASCII letters each, so this never falls back.
            std::str::from_utf8(code).unwrap_or_default().to_owned()
        });
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some(
                "An officially assigned ISO 3166-1 alpha-2 country code, upper case",
            ))
            .enum_values(Some(codes))
            .examples(["MY"])
            .into()
    }
}

impl utoipa::ToSchema for Country {
    fn name() -> std::borrow::Cow<'static, str> {
        "CountryCode".into()
    }
}

impl<'de> Deserialize<'de> for Country {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CountryVisitor)
    }
}

/// Visits the string in place so deserializing never allocates.
struct CountryVisitor;

impl Visitor<'_> for CountryVisitor {
    type Value = Country;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an assigned ISO 3166-1 alpha-2 country code")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Country, E> {
        Country::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_has_249_sorted_unique_upper_case_codes() {
        assert_eq!(ASSIGNED_CODES.len(), 249);
        assert!(
            ASSIGNED_CODES.windows(2).all(|w| w[0] < w[1]),
            "codes must be strictly ascending (sorted, no duplicates)"
        );
        assert!(
            ASSIGNED_CODES
                .iter()
                .all(|c| c.iter().all(u8::is_ascii_uppercase))
        );
    }

    #[test]
    fn bitmap_matches_list_exactly() {
        let bits: u32 = ASSIGNED_BITMAP.iter().map(|r| r.count_ones()).sum();
        assert_eq!(bits, 249);
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let code = [a, b];
                let s = std::str::from_utf8(&code).unwrap();
                assert_eq!(
                    Country::parse(s).is_some(),
                    ASSIGNED_CODES.binary_search(&code).is_ok(),
                    "{s}"
                );
            }
        }
    }

    #[test]
    fn accepts_common_codes() {
        for code in ["MY", "ID", "US", "GB", "SG", "AD", "ZW", "AQ", "BQ", "SS"] {
            let c = Country::parse(code).unwrap();
            assert_eq!(c.as_str(), code);
        }
    }

    #[test]
    fn lower_and_mixed_case_are_upper_cased() {
        for s in ["my", "My", "mY", "MY"] {
            let c = Country::parse(s).unwrap();
            assert_eq!(c.as_str(), "MY");
            assert_eq!(c, Country::parse("MY").unwrap());
        }
        assert_eq!(Country::parse("gb").unwrap().to_string(), "GB");
    }

    #[test]
    fn rejects_unassigned_and_malformed() {
        for s in [
            "ZZ", "AA", "XK", "QM", "XA", "UK", "EU", "MYS", "M1", "1M", "", "M", " MY", "MY ",
            "M-", "ÄÄ", "é",
        ] {
            assert_eq!(Country::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn display_and_serde() {
        let c = Country::parse("id").unwrap();
        assert_eq!(format!("{c}"), "ID");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"ID\"");
        let back: Country = serde_json::from_str("\"id\"").unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<Country>("\"ZZ\"").is_err());
        assert!(serde_json::from_str::<Country>("\"MYS\"").is_err());
        assert!(serde_json::from_str::<Country>("12").is_err());
    }
}
