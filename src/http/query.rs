//! Reads the order inputs from a raw query string, strictly: an unknown or repeated parameter is
//! an error (a typo must not be silently ignored), and so is a value that is not valid UTF-8.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use chrono::{DateTime, Utc};

use crate::domain::{FieldError, IssueInput, IssueRequest};

/// Parses and validates the query; on failure, every bad parameter is named. `now` decides
/// whether an `expires_at` is in the future.
pub fn parse_issue(raw: &str, now: DateTime<Utc>) -> Result<IssueRequest, Vec<FieldError>> {
    let mut input = IssueInput::default();
    let mut errors: Vec<FieldError> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match decode(name) {
            Some(name) => name,
            None => {
                errors.push(FieldError::new(
                    shorten(name),
                    "is not valid percent-encoded UTF-8",
                ));
                continue;
            }
        };
        let Some(slot) = input.slot(&name) else {
            errors.push(FieldError::new(shorten(&name), "unknown parameter"));
            continue;
        };
        if slot.is_some() {
            if !errors.iter().any(|e| e.field == name) {
                errors.push(FieldError::new(name, "given more than once"));
            }
            continue;
        }
        match decode(value) {
            Some(value) => *slot = Some(value),
            None => errors.push(FieldError::new(name, "is not valid percent-encoded UTF-8")),
        }
    }
    match input.parse(now) {
        Ok(request) if errors.is_empty() => Ok(request),
        Ok(_) => Err(errors),
        Err(more) => {
            // A parameter already reported (e.g. repeated) is reported once.
            for error in more {
                if !errors.iter().any(|e| e.field == error.field) {
                    errors.push(error);
                }
            }
            Err(errors)
        }
    }
}

/// Reads a query of the given `names`, each at most once: the parameters given, and an error
/// naming each unknown, repeated or undecodable one.
pub fn named(raw: &str, names: &[&'static str]) -> (Vec<(&'static str, String)>, Vec<FieldError>) {
    let mut given: Vec<(&'static str, String)> = Vec::new();
    let mut errors: Vec<FieldError> = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(name) = decode(name) else {
            errors.push(FieldError::new(
                shorten(name),
                "is not valid percent-encoded UTF-8",
            ));
            continue;
        };
        let Some(&name) = names.iter().find(|known| **known == name) else {
            errors.push(FieldError::new(shorten(&name), "unknown parameter"));
            continue;
        };
        if given.iter().any(|(seen, _)| *seen == name) {
            if !errors.iter().any(|e| e.field == name) {
                errors.push(FieldError::new(name, "given more than once"));
            }
            continue;
        }
        match decode(value) {
            Some(value) => given.push((name, value.into_owned())),
            None => errors.push(FieldError::new(name, "is not valid percent-encoded UTF-8")),
        }
    }
    (given, errors)
}

/// application/x-www-form-urlencoded decoding: `+` is a space, `%XX` a byte, UTF-8 required.
/// Text with nothing to decode (the common case) is borrowed as it is: the query is UTF-8
/// already, so it needs neither a copy nor a second check.
fn decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(text));
    }
    let spaced = text.replace('+', " ");
    let bytes: Cow<'_, [u8]> = percent_decode(spaced.as_bytes()).into();
    String::from_utf8(bytes.into_owned()).ok().map(Cow::Owned)
}

/// Unknown names are echoed back, but never at unbounded length.
fn shorten(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Order;

    fn parse_order(raw: &str) -> Result<Order, Vec<FieldError>> {
        parse_issue(raw, Utc::now()).map(|request| request.order)
    }

    fn fields(raw: &str) -> Vec<String> {
        parse_order(raw)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn an_empty_query_is_an_order_with_nothing_given() {
        assert_eq!(parse_order("").unwrap(), Order::default());
    }

    #[test]
    fn decodes_percent_escapes_and_plus_as_space() {
        let order =
            parse_order("customer_name=RedBox+Logistics&created_at=2018-11-20T19:29:32%2B08:00")
                .unwrap();
        assert_eq!(order.customer_name.as_deref(), Some("RedBox Logistics"));
        assert_eq!(order.customer_slug.as_deref(), Some("redbox-logistics"));
        assert_eq!(
            order.order_created_at.unwrap().to_rfc3339(),
            "2018-11-20T19:29:32+08:00"
        );
    }

    #[test]
    fn unknown_repeated_and_bad_fields_are_all_named() {
        assert_eq!(
            fields("weigth=1&origin_country_id=MY&origin_country_id=ID&weight=0&customer_slug=A"),
            vec!["weigth", "origin_country_id", "weight", "customer_slug"]
        );
    }

    #[test]
    fn an_empty_value_or_missing_equals_is_invalid_not_absent() {
        assert_eq!(fields("weight="), vec!["weight"]);
        assert_eq!(fields("weight"), vec!["weight"]);
    }

    #[test]
    fn takes_an_expiry_in_the_future() {
        let now = Utc::now();
        let request = parse_issue("expires_at=2999-01-01T00:00:00Z", now).unwrap();
        assert_eq!(
            request.expires_at.unwrap().to_rfc3339(),
            "2999-01-01T00:00:00+00:00"
        );
        assert_eq!(
            fields("expires_at=2001-01-01T00:00:00Z"),
            vec!["expires_at"]
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(fields("customer_name=%FF%FE"), vec!["customer_name"]);
    }

    #[test]
    fn named_parameters_are_strict_too() {
        let (given, errors) = named("limit=5&before=%31", &["limit", "before"]);
        assert_eq!(
            given,
            [("limit", "5".to_owned()), ("before", "1".to_owned())]
        );
        assert!(errors.is_empty());
        let (given, errors) = named("limit=1&limit=2&x=1&before=%FF", &["limit", "before"]);
        assert_eq!(given, [("limit", "1".to_owned())]);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limit", "x", "before"]);
    }
}
