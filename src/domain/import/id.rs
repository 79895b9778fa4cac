//! An import's id: 32 lowercase hex digits (a random UUID without dashes), made by the service
//! when an upload begins. An id of any other form was never made here, and is not looked up.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportId(String);

impl ImportId {
    /// A new, random id.
    pub fn new() -> ImportId {
        ImportId(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id `text` is, if it has the form of the ids [`ImportId::new`] makes.
    pub fn parse(text: &str) -> Option<ImportId> {
        let hex = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
        (text.len() == 32 && text.bytes().all(hex)).then(|| ImportId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ImportId {
    fn default() -> Self {
        ImportId::new()
    }
}

impl fmt::Display for ImportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ImportId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImportId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImportId::parse(&text).ok_or_else(|| serde::de::Error::custom("not an import id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_of_the_form_we_make_are_ids() {
        let made = ImportId::new();
        assert_eq!(ImportId::parse(made.as_str()), Some(made.clone()));
        assert_ne!(ImportId::new(), made);
        for bad in [
            "",
            "abc",
            &made.as_str().to_uppercase(),
            &format!("{made}0"),
            "{x}:job",
        ] {
            assert_eq!(ImportId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_id_is_stored_as_its_text_and_read_back_only_if_it_is_one() {
        let made = ImportId::new();
        let json = serde_json::to_string(&made).unwrap();
        assert_eq!(json, format!("\"{made}\""));
        assert_eq!(serde_json::from_str::<ImportId>(&json).unwrap(), made);
        assert!(serde_json::from_str::<ImportId>("\"not-an-id\"").is_err());
    }
}
