//! What a good answer looks like: a JSON body holding one record (`tracking_number`) or a batch
//! (`records: [...]`), each number 16 characters of `A-Z0-9` whose last is the right check
//! character. Pure: no I/O, so every rule is unit-tested.

use serde::Deserialize;
use tracknum::domain::codec::{DIGITS, digit_value, has_valid_check};

/// Length of every number tracknum issues.
const NUMBER_LEN: usize = 16;

/// A number packed into an integer for the uniqueness set: 16 base-36 digits fit in 83 bits.
pub type NumberKey = u128;

#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The body is not the JSON the endpoint promises.
    Body(String),
    /// A number that breaks the layout or its check character.
    Number {
        number: String,
        reason: &'static str,
    },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Body(reason) => write!(f, "bad body: {reason}"),
            Invalid::Number { number, reason } => write!(f, "bad number {number:?}: {reason}"),
        }
    }
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    tracking_number: Option<&'a str>,
    #[serde(borrow, default)]
    records: Option<Vec<Record<'a>>>,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    tracking_number: &'a str,
}

/// The `expected` numbers in a successful reply, in order, each checked; or why the reply is
/// wrong.
pub fn numbers(body: &[u8], expected: usize) -> Result<Vec<NumberKey>, Invalid> {
    let keys = numbers_in(body)?;
    if keys.len() != expected {
        return Err(Invalid::Body(format!(
            "{} numbers where {expected} were asked for",
            keys.len()
        )));
    }
    Ok(keys)
}

fn numbers_in(body: &[u8]) -> Result<Vec<NumberKey>, Invalid> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| Invalid::Body(format!("not the expected JSON ({e})")))?;
    match (reply.tracking_number, reply.records) {
        (Some(number), None) => Ok(vec![parse(number)?]),
        (None, Some(records)) => {
            if let Some(count) = reply.count
                && count != records.len() as u64
            {
                return Err(Invalid::Body(format!(
                    "count is {count} but {} records came",
                    records.len()
                )));
            }
            if records.is_empty() {
                return Err(Invalid::Body("a batch with no records".into()));
            }
            records.iter().map(|r| parse(r.tracking_number)).collect()
        }
        (Some(_), Some(_)) => Err(Invalid::Body(
            "both tracking_number and records in one reply".into(),
        )),
        (None, None) => Err(Invalid::Body("no tracking_number and no records".into())),
    }
}

/// One number: its layout, its check character, and its key.
pub fn parse(number: &str) -> Result<NumberKey, Invalid> {
    let bad = |reason| Invalid::Number {
        number: number.to_owned(),
        reason,
    };
    if number.len() != NUMBER_LEN {
        return Err(bad("not 16 characters"));
    }
    let mut key: NumberKey = 0;
    for c in number.bytes() {
        let digit = digit_value(c).ok_or_else(|| bad("a character outside A-Z0-9"))?;
        key = key * 36 + NumberKey::from(digit);
    }
    if !has_valid_check(number) {
        return Err(bad("wrong check character"));
    }
    Ok(key)
}

/// The number a key stands for (for reports).
pub fn unparse(mut key: NumberKey) -> String {
    let mut out = [b'0'; NUMBER_LEN];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(key % 36) as usize];
        key /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracknum::domain::codec::check_char;

    /// A valid number: 15 chars of `body` padded with `0`, then its check character.
    fn valid(body: &str) -> String {
        let mut chars = format!("{body:0<15}").into_bytes();
        chars.push(check_char(&chars).unwrap());
        String::from_utf8(chars).unwrap()
    }

    #[test]
    fn a_single_record_gives_its_number() {
        let n = valid("MY12ABC");
        let body = format!(r#"{{"tracking_number":"{n}","status":"issued"}}"#);
        let keys = numbers(body.as_bytes(), 1).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(unparse(keys[0]), n);
    }

    #[test]
    fn a_batch_gives_every_number_in_order() {
        let (a, b) = (valid("AA1"), valid("BB2"));
        let body = format!(
            r#"{{"count":2,"records":[{{"tracking_number":"{a}"}},{{"tracking_number":"{b}"}}]}}"#
        );
        let keys = numbers(body.as_bytes(), 2).unwrap();
        assert_eq!(keys.iter().map(|k| unparse(*k)).collect::<Vec<_>>(), [a, b]);
    }

    #[test]
    fn a_batch_whose_count_disagrees_is_invalid() {
        let a = valid("AA1");
        let body = format!(r#"{{"count":3,"records":[{{"tracking_number":"{a}"}}]}}"#);
        assert!(
            matches!(numbers(body.as_bytes(), 3), Err(Invalid::Body(m)) if m.contains("count"))
        );
        assert!(matches!(
            numbers(br#"{"count":0,"records":[]}"#, 0),
            Err(Invalid::Body(_))
        ));
    }

    #[test]
    fn a_reply_with_fewer_numbers_than_asked_for_is_invalid() {
        let a = valid("AA1");
        let body = format!(r#"{{"count":1,"records":[{{"tracking_number":"{a}"}}]}}"#);
        assert!(
            matches!(numbers(body.as_bytes(), 5), Err(Invalid::Body(m)) if m.contains("5 were asked"))
        );
    }

    #[test]
    fn bodies_without_numbers_are_invalid() {
        for body in [&b"not json"[..], b"{}", b"[]", br#"{"tracking_number":7}"#] {
            assert!(
                matches!(numbers(body, 1), Err(Invalid::Body(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn numbers_are_checked_for_layout_and_check_character() {
        let good = valid("MY12ABC");
        assert!(parse(&good).is_ok());
        let mut wrong_check = good.clone().into_bytes();
        wrong_check[15] = if wrong_check[15] == b'0' { b'1' } else { b'0' };
        let wrong_check = String::from_utf8(wrong_check).unwrap();
        let cases = [
            (wrong_check.as_str(), "wrong check character"),
            ("MY12ABC", "not 16 characters"),
            ("my12abc000000000", "a character outside A-Z0-9"),
            ("MY12ABC00000000-", "a character outside A-Z0-9"),
        ];
        for (number, reason) in cases {
            assert_eq!(
                parse(number),
                Err(Invalid::Number {
                    number: number.into(),
                    reason
                }),
                "{number}"
            );
        }
    }

    #[test]
    fn keys_round_trip_and_differ_per_number() {
        let (a, b) = (valid("ZZZZZZZZZZZZZZZ"), valid("000000000000001"));
        let (ka, kb) = (parse(&a).unwrap(), parse(&b).unwrap());
        assert_ne!(ka, kb);
        assert_eq!(unparse(ka), a);
        assert_eq!(unparse(kb), b);
    }
}
