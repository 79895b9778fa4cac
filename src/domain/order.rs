//! The optional order details a request may carry: [`OrderInput`] holds them as received and
//! [`OrderInput::parse`] validates all of them at once into an [`Order`], reporting every bad
//! field so a client can fix its request in one go.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, FixedOffset};
use deunicode::AsciiChars;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::country::Country;

const MAX_NAME_CHARS: usize = 200;
const MAX_SLUG_CHARS: usize = 100;
/// Weights are capped at 999 999.999 kg (six integer digits).
const MAX_GRAMS: u64 = 999_999_999;
pub const MAX_KILOGRAMS: f64 = MAX_GRAMS as f64 / 1000.0;

const MSG_EMPTY: &str = "must not be empty";
const MSG_COUNTRY: &str = "must be an assigned ISO 3166-1 alpha-2 country code (e.g. \"MY\")";
const MSG_WEIGHT: &str = "must be a positive weight in kilograms with at most 6 integer digits \
                          and at most 3 decimal places (e.g. \"1.234\")";
const MSG_CREATED_AT: &str = "must be an RFC 3339 date-time with a UTC offset, between years \
                              0000 and 9999 in UTC (e.g. \"2018-11-20T19:29:32+08:00\")";
const MSG_UUID: &str = "must be a UUID in hyphenated 8-4-4-4-12 form \
                        (e.g. \"de619854-b59b-425e-9db4-943979e1bd49\")";
const MSG_NAME_CONTROL: &str = "must not contain control characters";
const MSG_NAME_LONG: &str = "must be at most 200 characters";
const MSG_SLUG_LONG: &str = "must be at most 100 characters";
const MSG_SLUG_FORM: &str = "must be lowercase letters a-z and digits 0-9 in groups joined by \
                             single hyphens (e.g. \"redbox-logistics\")";

/// One bad input: which field, and what is wrong with it in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(examples(json!({"field": "weight", "message": MSG_WEIGHT})))]
pub struct FieldError {
    /// The input's name: a query parameter, a JSON member (`orders[3].weight` inside a batch),
    /// a header, `tracking_number` for the path, or `body`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Inputs as received (already percent-decoded text), before validation. None = not given.
/// The text is borrowed from the request where it can be (a query value with no escapes).
#[derive(Debug, Default, Clone)]
pub struct OrderInput<'a> {
    pub origin_country_id: Option<Cow<'a, str>>,
    pub destination_country_id: Option<Cow<'a, str>>,
    pub weight: Option<Cow<'a, str>>,
    pub created_at: Option<Cow<'a, str>>,
    pub customer_id: Option<Cow<'a, str>>,
    pub customer_name: Option<Cow<'a, str>>,
    pub customer_slug: Option<Cow<'a, str>>,
}

impl OrderInput<'_> {
    /// Validates every field and returns ALL errors (one FieldError per bad field, in the field
    /// order above), not just the first.
    pub fn parse(self) -> Result<Order, Vec<FieldError>> {
        // Vec::new does not allocate, so the all-valid path stays allocation-free here.
        let mut errors = Vec::new();
        let origin_country_id = check(
            &mut errors,
            "origin_country_id",
            self.origin_country_id.as_deref(),
            |s| Country::parse(s).ok_or(MSG_COUNTRY),
        );
        let destination_country_id = check(
            &mut errors,
            "destination_country_id",
            self.destination_country_id.as_deref(),
            |s| Country::parse(s).ok_or(MSG_COUNTRY),
        );
        let weight = check(&mut errors, "weight", self.weight.as_deref(), |s| {
            Weight::parse(s).ok_or(MSG_WEIGHT)
        });
        let order_created_at = check(&mut errors, "created_at", self.created_at.as_deref(), |s| {
            parse_created_at(s).ok_or(MSG_CREATED_AT)
        });
        let customer_id = check(
            &mut errors,
            "customer_id",
            self.customer_id.as_deref(),
            |s| parse_hyphenated_uuid(s).ok_or(MSG_UUID),
        );
        let slug_given = self.customer_slug.is_some();
        let customer_name = check(&mut errors, "customer_name", self.customer_name, parse_name);
        let mut customer_slug = check(&mut errors, "customer_slug", self.customer_slug, |s| {
            check_slug(&s).map(|()| s.into_owned())
        });
        // Only a missing slug is derived; a given but invalid one must stay an error.
        if !slug_given {
            customer_slug = customer_name.as_deref().and_then(slug_from_name);
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Order {
            origin_country_id,
            destination_country_id,
            weight,
            order_created_at,
            customer_id,
            customer_name,
            customer_slug,
        })
    }
}

/// Runs one field's validator, treating an empty string as invalid (not absent), and records
/// the failure under the field's input name.
#[inline]
fn check<S, T>(
    errors: &mut Vec<FieldError>,
    field: &'static str,
    raw: Option<S>,
    validate: impl FnOnce(S) -> Result<T, &'static str>,
) -> Option<T>
where
    S: AsRef<str>,
{
    let raw = raw?;
    let result = if raw.as_ref().is_empty() {
        Err(MSG_EMPTY)
    } else {
        validate(raw)
    };
    match result {
        Ok(v) => Some(v),
        Err(message) => {
            errors.push(FieldError::new(field, message));
            None
        }
    }
}

/// Parses an RFC 3339 timestamp. A `+` sent unencoded in a query string decodes to a space, so
/// a trailing ` HH:MM` is read as `+HH:MM`. Every time taken in (an order's time, an expiry)
/// comes through here.
pub(crate) fn parse_created_at(s: &str) -> Option<DateTime<FixedOffset>> {
    parse_rfc3339_lenient(s)
        .filter(real_leap_second_if_any)
        .filter(writable_in_utc)
}

/// RFC 3339 years have four digits. `9999-12-31T23:59:59-23:59` is valid RFC 3339, but in UTC
/// it falls in year 10000, which no RFC 3339 text can hold: a record keeping it could never be
/// written back (it once made every PATCH of such a record fail). The same goes for year -1.
fn writable_in_utc(at: &DateTime<FixedOffset>) -> bool {
    use chrono::Datelike;
    (0..=9999).contains(&at.naive_utc().year())
}

/// chrono takes a `:60` second on any minute of any day; only the 27 leap seconds that were
/// inserted (at 23:59:60 UTC) are real instants.
fn real_leap_second_if_any(at: &DateTime<FixedOffset>) -> bool {
    use chrono::{Datelike, Timelike};
    if at.nanosecond() < 1_000_000_000 {
        return true;
    }
    let utc = at.naive_utc();
    let date = utc.date();
    (utc.hour(), utc.minute(), utc.second()) == (23, 59, 59)
        && LEAP_SECOND_DAYS.contains(&(date.year(), date.month(), date.day()))
}

/// The UTC days that ended with a leap second (IERS Bulletin C; none since 2016).
const LEAP_SECOND_DAYS: [(i32, u32, u32); 27] = [
    (1972, 6, 30),
    (1972, 12, 31),
    (1973, 12, 31),
    (1974, 12, 31),
    (1975, 12, 31),
    (1976, 12, 31),
    (1977, 12, 31),
    (1978, 12, 31),
    (1979, 12, 31),
    (1981, 6, 30),
    (1982, 6, 30),
    (1983, 6, 30),
    (1985, 6, 30),
    (1987, 12, 31),
    (1989, 12, 31),
    (1990, 12, 31),
    (1992, 6, 30),
    (1993, 6, 30),
    (1994, 6, 30),
    (1995, 12, 31),
    (1997, 6, 30),
    (1998, 12, 31),
    (2005, 12, 31),
    (2008, 12, 31),
    (2012, 6, 30),
    (2015, 6, 30),
    (2016, 12, 31),
];

fn parse_rfc3339_lenient(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt);
    }
    let bytes = s.as_bytes();
    let split = bytes.len().checked_sub(6)?;
    let [b' ', h1, h2, b':', m1, m2] = bytes[split..] else {
        return None;
    };
    if ![h1, h2, m1, m2].iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Repair on the stack; 64 bytes holds any sensible timestamp (35 with nanoseconds).
    let mut buf = [0u8; 64];
    let fixed = buf.get_mut(..bytes.len())?;
    fixed.copy_from_slice(bytes);
    fixed[split] = b'+';
    // Swapping one ASCII byte for another keeps the text valid UTF-8.
    let fixed = std::str::from_utf8(fixed).ok()?;
    DateTime::parse_from_rfc3339(fixed).ok()
}

/// Only the canonical 36-character form; uuid alone would also take braced, URN and simple forms.
#[inline]
fn parse_hyphenated_uuid(s: &str) -> Option<Uuid> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// Trims, then checks the name's content. Reuses the input buffer so a valid name is not copied.
fn parse_name(s: Cow<'_, str>) -> Result<String, &'static str> {
    let start = s.len() - s.trim_start().len();
    let end = s.trim_end().len();
    let Some(trimmed) = s.get(start..end).filter(|t| !t.is_empty()) else {
        return Err(MSG_EMPTY);
    };
    let mut chars = 0usize;
    for c in trimmed.chars() {
        if c.is_control() {
            return Err(MSG_NAME_CONTROL);
        }
        chars += 1;
    }
    if chars > MAX_NAME_CHARS {
        return Err(MSG_NAME_LONG);
    }
    Ok(match s {
        Cow::Borrowed(s) => s[start..end].to_owned(),
        Cow::Owned(mut s) => {
            s.truncate(end);
            s.drain(..start);
            s
        }
    })
}

/// `^[a-z0-9]+(-[a-z0-9]+)*$`, at most 100 characters, checked by hand (one pass, no regex).
fn check_slug(s: &str) -> Result<(), &'static str> {
    let b = s.as_bytes();
    if b.len() > MAX_SLUG_CHARS {
        // Every valid slug is ASCII, so a long non-ASCII slug is reported as too long only when
        // it really has too many characters.
        return Err(if s.chars().count() > MAX_SLUG_CHARS {
            MSG_SLUG_LONG
        } else {
            MSG_SLUG_FORM
        });
    }
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let well_formed = b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && !b.windows(2).any(|w| w == b"--");
    if well_formed {
        Ok(())
    } else {
        Err(MSG_SLUG_FORM)
    }
}

/// Derives a slug from a customer name: transliterate to ASCII, lowercase, collapse every run of
/// other characters into one `-`, trim `-` at both ends, and cut to 100 characters without a
/// trailing `-`. None when nothing alphanumeric is left.
pub(crate) fn slug_from_name(name: &str) -> Option<String> {
    let mut slug = String::with_capacity(name.len().min(MAX_SLUG_CHARS));
    let mut pending_dash = false;
    // `ascii_chars` yields the same text as `deunicode::deunicode` without building it first;
    // characters it cannot transliterate (None) count as separators, as its "[?]" would.
    'outer: for piece in name.ascii_chars() {
        for &c in piece.unwrap_or("-").as_bytes() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                // A dash is only written in front of a following character, so the slug can
                // never end with one, even when it is cut short.
                let needed = 1 + usize::from(pending_dash);
                if slug.len() + needed > MAX_SLUG_CHARS {
                    break 'outer;
                }
                if pending_dash {
                    slug.push('-');
                    pending_dash = false;
                }
                slug.push(char::from(c));
            } else if !slug.is_empty() {
                pending_dash = true;
            }
        }
    }
    (!slug.is_empty()).then_some(slug)
}

/// Weight in kilograms with at most 3 decimals, kept exactly as whole grams.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Weight(u64 /* grams */);

impl Weight {
    /// Parses `^[0-9]{1,6}(\.[0-9]{1,3})?$` kilograms, greater than zero, in exact integer
    /// arithmetic (never via f64, so "0.001" is exactly one gram).
    pub fn parse(s: &str) -> Option<Weight> {
        let (int, frac) = match s.split_once('.') {
            Some((int, frac)) => (int.as_bytes(), Some(frac.as_bytes())),
            None => (s.as_bytes(), None),
        };
        if int.is_empty() || int.len() > 6 || !int.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut grams = int
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'))
            * 1000;
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut scale = 100;
            for d in frac {
                grams += u64::from(d - b'0') * scale;
                scale /= 10;
            }
        }
        (grams > 0).then_some(Weight(grams))
    }

    #[inline]
    pub fn grams(self) -> u64 {
        self.0
    }

    #[inline]
    pub fn kilograms(self) -> f64 {
        // Exact below 2^53 grams, and division is correctly rounded, so 1234 g prints as 1.234.
        self.0 as f64 / 1000.0
    }

    /// Validates whole grams against the same bounds as [`Weight::parse`].
    #[inline]
    pub(crate) fn from_grams(grams: u64) -> Option<Weight> {
        (1..=MAX_GRAMS).contains(&grams).then_some(Weight(grams))
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.kilograms())
    }
}

/// In the API description: kilograms as a JSON number, as replies write it.
impl utoipa::PartialSchema for Weight {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::Number)
            .description(Some(
                "Kilograms, greater than zero, with at most 6 integer digits and 3 decimals",
            ))
            .exclusive_minimum(Some(0.0))
            .maximum(Some(MAX_KILOGRAMS))
            .examples([1.234])
            .into()
    }
}

impl utoipa::ToSchema for Weight {}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_f64(WeightVisitor)
    }
}

struct WeightVisitor;

impl Visitor<'_> for WeightVisitor {
    type Value = Weight;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive number of kilograms below 1000000 with at most 3 decimal places")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
        v.checked_mul(1000)
            .and_then(Weight::from_grams)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
        u64::try_from(v)
            .ok()
            .and_then(|v| v.checked_mul(1000))
            .and_then(Weight::from_grams)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weight, E> {
        let invalid = || E::invalid_value(de::Unexpected::Float(v), &self);
        // The range check also rejects NaN and infinities before the cast.
        if !(v > 0.0 && v < 1_000_000.0) {
            return Err(invalid());
        }
        let grams = (v * 1000.0).round() as u64;
        let weight = Weight::from_grams(grams).ok_or_else(invalid)?;
        // More than 3 decimals would not survive the trip through whole grams.
        if weight.kilograms() != v {
            return Err(invalid());
        }
        Ok(weight)
    }
}

/// The validated order details. Absent fields are left out of the JSON form.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub origin_country_id: Option<Country>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub destination_country_id: Option<Country>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false)]
    pub weight: Option<Weight>,
    /// The order's own time (the `created_at` input), with the offset it was given in.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "rfc3339_opt")]
    #[schema(value_type = String, format = DateTime, nullable = false)]
    pub order_created_at: Option<DateTime<FixedOffset>>,
    /// Always lower case.
    #[serde(skip_serializing_if = "Option::is_none", default, with = "uuid_opt")]
    #[schema(value_type = String, format = "uuid", nullable = false,
             pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    pub customer_id: Option<Uuid>,
    /// Trimmed, 1 to 200 characters.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(nullable = false, min_length = 1, max_length = 200)]
    pub customer_name: Option<String>,
    /// Given, or derived from `customer_name`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(
        nullable = false,
        max_length = 100,
        pattern = "^[a-z0-9]+(-[a-z0-9]+)*$"
    )]
    pub customer_slug: Option<String>,
}

impl Order {
    /// The canonical customer key for the customer tag: the lowercase hyphenated customer_id,
    /// else the slug, else None.
    pub fn customer_key(&self) -> Option<Cow<'_, str>> {
        if let Some(id) = self.customer_id {
            let mut buf = Uuid::encode_buffer();
            let text: &str = id.hyphenated().encode_lower(&mut buf);
            return Some(Cow::Owned(text.to_owned()));
        }
        self.customer_slug.as_deref().map(Cow::Borrowed)
    }
}

/// Adapts a string visitor to an optional field, so null reads as None.
struct OptionOf<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OptionOf<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self.0).map(Some)
    }
}

/// `order_created_at` as RFC 3339, keeping the sender's offset (`Z` for UTC).
mod rfc3339_opt {
    use super::*;
    use chrono::SecondsFormat;

    pub fn serialize<S: Serializer>(
        value: &Option<DateTime<FixedOffset>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(dt) => serializer.serialize_str(&dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<FixedOffset>>, D::Error> {
        deserializer.deserialize_option(OptionOf(Rfc3339Visitor))
    }

    struct Rfc3339Visitor;

    impl Visitor<'_> for Rfc3339Visitor {
        type Value = DateTime<FixedOffset>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 date-time with a UTC offset")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

/// `customer_id` as a lowercase hyphenated UUID; uuid's own serde support is not enabled.
mod uuid_opt {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<Uuid>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(id) => {
                let mut buf = Uuid::encode_buffer();
                serializer.serialize_str(id.hyphenated().encode_lower(&mut buf))
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Uuid>, D::Error> {
        deserializer.deserialize_option(OptionOf(UuidVisitor))
    }

    struct UuidVisitor;

    impl Visitor<'_> for UuidVisitor {
        type Value = Uuid;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a hyphenated UUID")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_hyphenated_uuid(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> OrderInput<'static> {
        OrderInput::default()
    }

    fn only_error(input: OrderInput) -> FieldError {
        let errors = input.parse().unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.into_iter().next().unwrap()
    }

    // ---- weight ----

    #[test]
    fn weight_accepts_valid_forms_exactly() {
        for (s, grams) in [
            ("1", 1000),
            ("1.2", 1200),
            ("1.23", 1230),
            ("1.234", 1234),
            ("0.001", 1),
            ("0.5", 500),
            ("000001", 1000),
            ("999999.999", 999_999_999),
            ("999999", 999_999_000),
        ] {
            assert_eq!(Weight::parse(s).map(Weight::grams), Some(grams), "{s}");
        }
    }

    #[test]
    fn weight_rejects_invalid_forms() {
        for s in [
            "0", "0.000", "0.0", "-1", "1.2345", "1e3", "nan", "NaN", "inf", "abc", "1.", ".5",
            "+1", " 1", "1 ", "1234567", "1,5", "1.2.3", "", ".", "١", "1.-1", "0x10",
        ] {
            assert_eq!(Weight::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn weight_kilograms() {
        assert_eq!(Weight::parse("1.234").unwrap().kilograms(), 1.234);
        assert_eq!(Weight::parse("2").unwrap().kilograms(), 2.0);
        assert_eq!(Weight::parse("0.001").unwrap().kilograms(), 0.001);
    }

    #[test]
    fn weight_serializes_as_json_number() {
        let w = Weight::parse("1.234").unwrap();
        assert_eq!(serde_json::to_string(&w).unwrap(), "1.234");
        assert_eq!(
            serde_json::to_string(&Weight::parse("2").unwrap()).unwrap(),
            "2.0"
        );
        assert_eq!(
            serde_json::to_string(&Weight::parse("999999.999").unwrap()).unwrap(),
            "999999.999"
        );
    }

    #[test]
    fn weight_deserializes_from_json_number() {
        let w: Weight = serde_json::from_str("1.234").unwrap();
        assert_eq!(w.grams(), 1234);
        let w: Weight = serde_json::from_str("2").unwrap();
        assert_eq!(w.grams(), 2000);
        let w: Weight = serde_json::from_str("0.001").unwrap();
        assert_eq!(w.grams(), 1);
        let w: Weight = serde_json::from_str("999999.999").unwrap();
        assert_eq!(w.grams(), 999_999_999);
        for bad in [
            "0", "0.0", "-1", "-0.5", "1.2345", "1000000", "1e6", "\"1.2\"", "null", "1e300",
        ] {
            assert!(serde_json::from_str::<Weight>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_gram_value_round_trips_through_json() {
        // Sample across the range, including the awkward binary fractions.
        let samples = (1..=5000u64).chain((999_990_000..=999_999_999).step_by(7));
        for grams in samples {
            let w = Weight(grams);
            let json = serde_json::to_string(&w).unwrap();
            let back: Weight = serde_json::from_str(&json).unwrap();
            assert_eq!(back, w, "{json}");
        }
    }

    // ---- created_at ----

    #[test]
    fn created_at_accepts_rfc3339_with_offset() {
        let dt = parse_created_at("2018-11-20T19:29:32+08:00").unwrap();
        assert_eq!(dt.offset().local_minus_utc(), 8 * 3600);
        assert_eq!(dt.timestamp(), 1_542_713_372);
        let z = parse_created_at("2018-11-20T11:29:32Z").unwrap();
        assert_eq!(z.offset().local_minus_utc(), 0);
        assert_eq!(z, dt);
        let neg = parse_created_at("2018-11-20T06:29:32.5-05:00").unwrap();
        assert_eq!(neg.offset().local_minus_utc(), -5 * 3600);
        assert_eq!(neg.timestamp_subsec_millis(), 500);
    }

    #[test]
    fn created_at_takes_only_real_leap_seconds() {
        for real in [
            "2016-12-31T23:59:60Z",
            "2017-01-01T08:59:60+09:00",
            "1972-06-30T23:59:60.5Z",
            "2012-06-30T19:59:60-04:00",
        ] {
            assert!(parse_created_at(real).is_some(), "{real}");
        }
        for invented in [
            "2018-11-20T23:59:60Z",
            "2016-12-31T22:59:60Z",
            "2016-12-31T23:58:60Z",
            "2016-12-31T23:59:60+01:00",
            "2026-06-30T23:59:60Z",
        ] {
            assert_eq!(parse_created_at(invented), None, "{invented}");
        }
    }

    #[test]
    fn times_outside_four_digit_utc_years_are_refused() {
        for bad in [
            "9999-12-31T23:59:59-23:59",
            "9999-12-31T23:00:00-01:00",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert_eq!(parse_created_at(bad), None, "{bad}");
        }
        for good in [
            "9999-12-31T23:59:59Z",
            "9999-12-31T22:00:00-01:00",
            "0000-01-01T00:00:00Z",
            "0000-01-01T23:00:00+01:00",
        ] {
            assert!(parse_created_at(good).is_some(), "{good}");
        }
    }

    #[test]
    fn created_at_reads_decoded_plus_as_space() {
        let dt = parse_created_at("2018-11-20T19:29:32 08:00").unwrap();
        assert_eq!(dt, parse_created_at("2018-11-20T19:29:32+08:00").unwrap());
        assert_eq!(dt.offset().local_minus_utc(), 8 * 3600);
        let frac = parse_created_at("2018-11-20T19:29:32.123 08:00").unwrap();
        assert_eq!(frac.timestamp_subsec_millis(), 123);
        assert_eq!(frac.offset().local_minus_utc(), 8 * 3600);
    }

    #[test]
    fn created_at_rejects_missing_offset_and_garbage() {
        for s in [
            "2018-11-20T19:29:32",
            "2018-11-20",
            "garbage",
            "",
            " 08:00",
            "2018-11-20 08:00",
            "2018-11-20T19:29:32 8:00",
            "2018-11-20T19:29:32 08:00 ",
            "2018-11-20T19:29:32  08:00",
            "2018-11-20T19:29:32 0800",
            "2018-11-20T19:29:32 -08:00",
            "2018-13-20T19:29:32+08:00",
            "2018-11-20T19:29:32+25:00",
        ] {
            assert_eq!(parse_created_at(s), None, "{s:?}");
        }
    }

    // ---- customer_id ----

    #[test]
    fn uuid_only_hyphenated_either_case() {
        let lower = parse_hyphenated_uuid("de619854-b59b-425e-9db4-943979e1bd49").unwrap();
        let upper = parse_hyphenated_uuid("DE619854-B59B-425E-9DB4-943979E1BD49").unwrap();
        assert_eq!(lower, upper);
        for s in [
            "{de619854-b59b-425e-9db4-943979e1bd49}",
            "urn:uuid:de619854-b59b-425e-9db4-943979e1bd49",
            "de619854b59b425e9db4943979e1bd49",
            "de619854-b59b-425e-9db4-943979e1bd4",
            "de619854-b59b-425e-9db4-943979e1bd4g",
            "de61985-4b59b-425e-9db4-943979e1bd49",
            "de619854-b59b-425e-9db4+943979e1bd49",
            "",
        ] {
            assert_eq!(parse_hyphenated_uuid(s), None, "{s:?}");
        }
    }

    // ---- name and slug ----

    #[test]
    fn name_is_trimmed_and_checked() {
        assert_eq!(parse_name("  RedBox  ".into()).unwrap(), "RedBox");
        assert_eq!(parse_name("\u{3000}名前\u{a0}".into()).unwrap(), "名前");
        assert_eq!(parse_name("x".repeat(200).into()).unwrap().len(), 200);
        // 200 characters but 400 bytes is still fine: the limit counts characters.
        assert_eq!(
            parse_name("é".repeat(200).into()).unwrap().chars().count(),
            200
        );
        assert_eq!(parse_name("x".repeat(201).into()), Err(MSG_NAME_LONG));
        assert_eq!(parse_name(" \t\n ".into()), Err(MSG_EMPTY));
        assert_eq!(parse_name("a\u{0}b".into()), Err(MSG_NAME_CONTROL));
        assert_eq!(parse_name("a\nb".into()), Err(MSG_NAME_CONTROL));
        assert_eq!(parse_name("a\u{7f}".into()), Err(MSG_NAME_CONTROL));
    }

    #[test]
    fn slug_form() {
        for ok in ["a", "redbox-logistics", "a1-b2-c3", "0", &"a".repeat(100)] {
            assert_eq!(check_slug(ok), Ok(()), "{ok}");
        }
        for bad in [
            "-a", "a-", "a--b", "A", "Red", "a_b", "a b", "é", "-", "a.b", " a",
        ] {
            assert_eq!(check_slug(bad), Err(MSG_SLUG_FORM), "{bad}");
        }
        assert_eq!(check_slug(&"a".repeat(101)), Err(MSG_SLUG_LONG));
        assert_eq!(check_slug(&"é".repeat(60)), Err(MSG_SLUG_FORM));
    }

    #[test]
    fn slug_derivation_examples() {
        assert_eq!(
            slug_from_name("RedBox Logistics").as_deref(),
            Some("redbox-logistics")
        );
        assert_eq!(
            slug_from_name("  Café Ünïcode & Co. ").as_deref(),
            Some("cafe-unicode-co")
        );
        assert_eq!(slug_from_name("ACME--Corp").as_deref(), Some("acme-corp"));
        assert_eq!(slug_from_name("!!!"), None);
        assert_eq!(
            slug_from_name("北京 Trading").as_deref(),
            Some("bei-jing-trading")
        );
    }

    #[test]
    fn slug_derivation_cuts_at_100_without_trailing_dash() {
        // 99 letters then a separator then more: the dash would be the 100th character.
        let name = format!("{} {}", "a".repeat(99), "b".repeat(10));
        let slug = slug_from_name(&name).unwrap();
        assert_eq!(slug, "a".repeat(99));
        let name = format!("{} {}", "a".repeat(98), "b".repeat(10));
        let slug = slug_from_name(&name).unwrap();
        assert_eq!(slug.len(), 100);
        assert_eq!(slug, format!("{}-b", "a".repeat(98)));
        let slug = slug_from_name(&"x".repeat(150)).unwrap();
        assert_eq!(slug.len(), 100);
        assert_eq!(check_slug(&slug), Ok(()));
    }

    #[test]
    fn slug_derivation_agrees_with_deunicode() {
        // A direct reference implementation over deunicode's String output.
        fn reference(name: &str) -> Option<String> {
            let ascii = deunicode::deunicode(name).to_ascii_lowercase();
            let mut out = String::new();
            for part in ascii
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|p| !p.is_empty())
            {
                if !out.is_empty() {
                    out.push('-');
                }
                out.push_str(part);
            }
            out.truncate(100);
            let out = out.trim_end_matches('-').to_owned();
            (!out.is_empty()).then_some(out)
        }
        for name in [
            "RedBox Logistics",
            "  Café Ünïcode & Co. ",
            "ACME--Corp",
            "!!!",
            "中国 x 🅶 ☃中 国",
            "Ærøskøbing Fisk A/S",
            "Đồng Nai Cargo",
            "Москва Экспресс",
            "東京 Express",
            "\u{e000}private\u{e000}use",
            &"ab ".repeat(60),
        ] {
            assert_eq!(slug_from_name(name), reference(name), "{name:?}");
        }
    }

    // ---- OrderInput::parse ----

    #[test]
    fn empty_input_parses_to_empty_order() {
        let order = input().parse().unwrap();
        assert_eq!(order, Order::default());
        assert_eq!(order.customer_key(), None);
    }

    #[test]
    fn full_valid_input() {
        let order = OrderInput {
            origin_country_id: Some("my".into()),
            destination_country_id: Some("ID".into()),
            weight: Some("1.234".into()),
            created_at: Some("2018-11-20T19:29:32 08:00".into()),
            customer_id: Some("DE619854-B59B-425E-9DB4-943979E1BD49".into()),
            customer_name: Some("  RedBox Logistics ".into()),
            customer_slug: None,
        }
        .parse()
        .unwrap();
        assert_eq!(order.origin_country_id, Country::parse("MY"));
        assert_eq!(order.destination_country_id, Country::parse("ID"));
        assert_eq!(order.weight.map(Weight::grams), Some(1234));
        assert_eq!(
            order.order_created_at.unwrap().to_rfc3339(),
            "2018-11-20T19:29:32+08:00"
        );
        assert_eq!(order.customer_name.as_deref(), Some("RedBox Logistics"));
        assert_eq!(order.customer_slug.as_deref(), Some("redbox-logistics"));
        assert_eq!(
            order.customer_key().as_deref(),
            Some("de619854-b59b-425e-9db4-943979e1bd49")
        );
    }

    #[test]
    fn given_slug_wins_over_name() {
        let order = OrderInput {
            customer_name: Some("RedBox Logistics".into()),
            customer_slug: Some("rbx".into()),
            ..input()
        }
        .parse()
        .unwrap();
        assert_eq!(order.customer_slug.as_deref(), Some("rbx"));
        assert!(matches!(order.customer_key(), Some(Cow::Borrowed("rbx"))));
    }

    #[test]
    fn name_without_letters_leaves_slug_empty() {
        let order = OrderInput {
            customer_name: Some("!!!".into()),
            ..input()
        }
        .parse()
        .unwrap();
        assert_eq!(order.customer_name.as_deref(), Some("!!!"));
        assert_eq!(order.customer_slug, None);
        assert_eq!(order.customer_key(), None);
    }

    #[test]
    fn empty_strings_are_errors_not_absent() {
        let fields = [
            "origin_country_id",
            "destination_country_id",
            "weight",
            "created_at",
            "customer_id",
            "customer_name",
            "customer_slug",
        ];
        let errors = OrderInput {
            origin_country_id: Some("".into()),
            destination_country_id: Some("".into()),
            weight: Some("".into()),
            created_at: Some("".into()),
            customer_id: Some("".into()),
            customer_name: Some("".into()),
            customer_slug: Some("".into()),
        }
        .parse()
        .unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, fields);
        assert!(errors.iter().all(|e| e.message == MSG_EMPTY));
    }

    #[test]
    fn each_field_reports_its_own_name_and_message() {
        let e = only_error(OrderInput {
            origin_country_id: Some("ZZ".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("origin_country_id", MSG_COUNTRY));
        let e = only_error(OrderInput {
            destination_country_id: Some("MYS".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("destination_country_id", MSG_COUNTRY));
        let e = only_error(OrderInput {
            weight: Some("1.2345".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("weight", MSG_WEIGHT));
        let e = only_error(OrderInput {
            created_at: Some("2018-11-20T19:29:32".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("created_at", MSG_CREATED_AT));
        let e = only_error(OrderInput {
            customer_id: Some("de619854b59b425e9db4943979e1bd49".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("customer_id", MSG_UUID));
        let e = only_error(OrderInput {
            customer_name: Some("x".repeat(201).into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("customer_name", MSG_NAME_LONG));
        let e = only_error(OrderInput {
            customer_slug: Some("Red Box".into()),
            ..input()
        });
        assert_eq!(e, FieldError::new("customer_slug", MSG_SLUG_FORM));
        assert!(MSG_COUNTRY.contains("\"MY\""));
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let errors = OrderInput {
            origin_country_id: Some("XK".into()),
            destination_country_id: Some("US".into()),
            weight: Some("0".into()),
            created_at: Some("2018-11-20T19:29:32Z".into()),
            customer_id: None,
            customer_name: Some("Fine Name".into()),
            customer_slug: Some("bad--slug".into()),
        }
        .parse()
        .unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, ["origin_country_id", "weight", "customer_slug"]);
    }

    #[test]
    fn invalid_name_does_not_derive_a_slug_or_hide_the_error() {
        let errors = OrderInput {
            customer_name: Some("Bad\u{1}Name".into()),
            ..input()
        }
        .parse()
        .unwrap_err();
        assert_eq!(errors, [FieldError::new("customer_name", MSG_NAME_CONTROL)]);
    }

    // ---- Order serde ----

    #[test]
    fn order_json_round_trip_and_field_names() {
        let order = OrderInput {
            origin_country_id: Some("MY".into()),
            destination_country_id: Some("sg".into()),
            weight: Some("1.234".into()),
            created_at: Some("2018-11-20T19:29:32.120 08:00".into()),
            customer_id: Some("DE619854-B59B-425E-9DB4-943979E1BD49".into()),
            customer_name: Some("Café Ünïcode".into()),
            customer_slug: None,
        }
        .parse()
        .unwrap();
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"origin_country_id":"MY","destination_country_id":"SG","weight":1.234,"#,
                r#""order_created_at":"2018-11-20T19:29:32.120+08:00","#,
                r#""customer_id":"de619854-b59b-425e-9db4-943979e1bd49","#,
                r#""customer_name":"Café Ünïcode","customer_slug":"cafe-unicode"}"#
            )
        );
        let back: Order = serde_json::from_str(&json).unwrap();
        assert_eq!(back, order);
        assert_eq!(
            back.order_created_at.unwrap().offset().local_minus_utc(),
            8 * 3600
        );
    }

    #[test]
    fn order_json_omits_absent_fields() {
        assert_eq!(serde_json::to_string(&Order::default()).unwrap(), "{}");
        let order = OrderInput {
            weight: Some("2".into()),
            created_at: Some("2018-11-20T11:29:32Z".into()),
            ..input()
        }
        .parse()
        .unwrap();
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(
            json,
            r#"{"weight":2.0,"order_created_at":"2018-11-20T11:29:32Z"}"#
        );
        let back: Order = serde_json::from_str(&json).unwrap();
        assert_eq!(back, order);
    }

    #[test]
    fn order_json_accepts_nulls_and_rejects_bad_values() {
        let back: Order = serde_json::from_str(
            r#"{"origin_country_id":null,"order_created_at":null,"customer_id":null}"#,
        )
        .unwrap();
        assert_eq!(back, Order::default());
        for bad in [
            r#"{"origin_country_id":"ZZ"}"#,
            r#"{"weight":0}"#,
            r#"{"weight":"1"}"#,
            r#"{"order_created_at":"2018-11-20T19:29:32"}"#,
            r#"{"customer_id":"de619854b59b425e9db4943979e1bd49"}"#,
        ] {
            assert!(serde_json::from_str::<Order>(bad).is_err(), "{bad}");
        }
    }
}
