//! JSON as RFC 8259 leaves open and serde_json decides silently: an object that names a member
//! twice. serde_json keeps the last one, so `{"count":1,"count":3}` would issue three numbers.
//! This reader refuses such a document and names the member, wherever it is nested.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Where a value sits in the document, kept as a chain of borrowed steps so that a path costs
/// nothing unless it has to be named.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Member(&'a Path<'a>, &'a str),
    Element(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Member(Path::Root, name) => f.write_str(name),
            Path::Member(parent, name) => write!(f, "{parent}.{name}"),
            Path::Element(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Parses `body` as JSON; `Err(Some(path))` names the first member given twice, `Err(None)` is
/// any other parse error (returned as serde_json's message).
pub fn parse(body: &[u8]) -> Result<Value, ParseError> {
    let repeated = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_slice(body);
    let value = Strict {
        path: Path::Root,
        repeated: &repeated,
    }
    .deserialize(&mut reader)
    .and_then(|value| reader.end().map(|()| value));
    match (value, repeated.into_inner()) {
        (_, Some(path)) => Err(ParseError::Repeated(path)),
        (Ok(value), None) => Ok(value),
        (Err(err), None) => Err(ParseError::Syntax(err.to_string())),
    }
}

#[derive(Debug, PartialEq)]
pub enum ParseError {
    /// The path of a member given twice (`count`, `orders[2].weight`).
    Repeated(String),
    /// Not JSON.
    Syntax(String),
}

struct Strict<'a> {
    path: Path<'a>,
    repeated: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let element = Strict {
                path: Path::Element(&self.path, items.len()),
                repeated: self.repeated,
            };
            match seq.next_element_seed(element)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            let path = Path::Member(&self.path, &name);
            if members.contains_key(&name) {
                *self.repeated.borrow_mut() = Some(path.to_string());
                return Err(de::Error::custom("a member is given twice"));
            }
            let value = access.next_value_seed(Strict {
                path,
                repeated: self.repeated,
            })?;
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"count":3,"weight":1.25,"name":"a\"b","x":null,"ok":true}"#,
            r#"{"orders":[{"weight":"1"},{"weight":2}],"n":-4,"big":18446744073709551615}"#,
            "[1, 2.5e3, {}]",
            "\"text\"",
        ] {
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn names_a_repeated_member_wherever_it_is() {
        for (text, path) in [
            (r#"{"count":1,"count":3}"#, "count"),
            (
                r#"{"orders":[{"weight":1},{"weight":1,"weight":2}]}"#,
                "orders[1].weight",
            ),
            (r#"{"a":{"b":{"c":1,"c":1}}}"#, "a.b.c"),
            (r#"[{"k":1,"k":2}]"#, "[0].k"),
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(ParseError::Repeated(path.into())),
                "{text}"
            );
        }
        assert!(
            parse(br#"{"a":{"k":1},"b":{"k":1}}"#).is_ok(),
            "same name, two objects"
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        for text in ["", "{", "{\"a\":1} x", "{'a':1}", "[1,]"] {
            assert!(
                matches!(parse(text.as_bytes()), Err(ParseError::Syntax(_))),
                "{text:?}"
            );
        }
    }
}
