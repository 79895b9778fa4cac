//! Where a record of one of our numbers lives on Redis: in the hash of its bucket of
//! [`BUCKET_SERIALS`] consecutive serials (`tracknum:bucket:<serial / 64>`), under a field made
//! of the number's first four characters (its origin and customer tag) and the serial's offset
//! in the bucket (`MY0A37`).
//!
//! Why a hash per bucket: Redis keeps a hash of at most 128 fields whose fields and values are
//! at most 64 bytes as one compact listpack (`hash-max-listpack-entries`, `-value`: upstream's
//! defaults, which managed Redis often will not let you change; Debian's Redis 7.0 allows 512
//! entries). A packed record of about 55 bytes then
//! costs about 82 bytes of Redis memory, where a key of its own cost 213 (and its JSON 661).
//! Measured on Redis 7.0 with 200,000 records of 56 bytes: 84.7 B a record in buckets of 32,
//! 82.6 in buckets of 64, 81.6 in buckets of 128; the group commit's script took 1.2 µs of
//! redis-server CPU a record in buckets of 64 and 1.4 in buckets of 128 (a listpack is searched
//! from its start, so longer ones cost more per field), hence 64.
//!
//! Why the number's first four characters in the field: a number's serial is written in its
//! 11 serial digits only, so numbers that differ in their first four characters share a serial.
//! With the offset alone, a number made up from an issued one with another prefix (and its check
//! character) would find the issued number's record. The four characters cost about 6 bytes a
//! record.
//!
//! A record longer than [`LISTPACK_VALUE_MAX`] bytes (a customer name of 25 characters or more
//! beside all other inputs: over half the orders of `scripts/bench_orders.py`) would turn its
//! whole bucket into a hash table, at about twice the memory a record. So its first 64 bytes go
//! in its field and the rest in a second field, its tail: the field's name after a `+`
//! (`+MY0A37`). A bucket then holds at most 128 fields, still within the compact form. A
//! record longer than two fields keeps a key of its own, as a number registered with PUT does,
//! and reads find it there.

use crate::domain::codec::digit_value;
use crate::domain::{Codec, Country, TrackingNumber};

/// Serials per bucket.
pub const BUCKET_SERIALS: u64 = 64;
/// The longest value a Redis hash keeps in its compact form by default
/// (`hash-max-listpack-value`): a record's part in one field.
pub const LISTPACK_VALUE_MAX: usize = 64;
/// The longest record a bucket keeps: in its field and its tail.
pub const BUCKET_VALUE_MAX: usize = 2 * LISTPACK_VALUE_MAX;
/// What a tail's field name starts with (the scripts say it too).
const TAIL: char = '+';

const BUCKET_PREFIX: &str = "tracknum:bucket:";

/// `value` as a bucket keeps it: its first part, and its tail when it is longer than one
/// field takes. None when it is too long for a bucket.
pub fn parts(value: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if value.len() > BUCKET_VALUE_MAX {
        return None;
    }
    Some(match value.split_at_checked(LISTPACK_VALUE_MAX) {
        Some((first, tail)) if !tail.is_empty() => (first, Some(tail)),
        _ => (value, None),
    })
}

/// A record's bucket and its field in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Place {
    pub bucket: String,
    pub field: String,
}

impl Place {
    /// Where the record of `number`, whose serial is `serial`, lives.
    pub fn of(number: &TrackingNumber, serial: u64) -> Place {
        let number = number.as_str();
        let prefix = number.get(..4).unwrap_or(number);
        Place {
            bucket: format!("{BUCKET_PREFIX}{}", serial / BUCKET_SERIALS),
            field: format!("{prefix}{}", serial % BUCKET_SERIALS),
        }
    }

    /// The field of the record's tail: what it holds past its first [`LISTPACK_VALUE_MAX`]
    /// bytes.
    pub fn tail(&self) -> String {
        format!("{TAIL}{}", self.field)
    }

    /// The number whose record lives here, for tools and tests that look at Redis itself: the
    /// inverse of [`Place::of`]. None for what is not a place of ours.
    pub fn number(&self, codec: &Codec) -> Option<TrackingNumber> {
        let bucket: u64 = self.bucket.strip_prefix(BUCKET_PREFIX)?.parse().ok()?;
        let (prefix, offset) = self.field.split_at_checked(4)?;
        let offset: u64 = offset.parse().ok().filter(|&o| o < BUCKET_SERIALS)?;
        let serial = bucket.checked_mul(BUCKET_SERIALS)?.checked_add(offset)?;
        let (origin, tag) = prefix.split_at(2);
        let tag = tag
            .bytes()
            .try_fold(0u16, |acc, c| Some(acc * 36 + u16::from(digit_value(c)?)))?;
        let number = codec.encode(Country::parse(origin), tag, serial)?;
        (number.as_str().get(..4) == Some(prefix)).then_some(number)
    }

    /// The mark a removal leaves for a while (`scripts::BUCKET_REMOVE`):
    /// `{tracknum:bucket:<n>}:removed:<field>`. Its hash tag is the bucket's whole key, so both
    /// live in one slot.
    pub fn removal_key(&self) -> String {
        format!("{{{}}}:removed:{}", self.bucket, self.field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::slots::slot_of;

    fn number(codec: &Codec, origin: &str, tag: u16, serial: u64) -> TrackingNumber {
        codec
            .encode(crate::domain::Country::parse(origin), tag, serial)
            .unwrap()
    }

    #[test]
    fn a_bucket_holds_consecutive_serials_first_to_last() {
        let codec = Codec::new(b"buckets");
        let first = 64 * 1_000_000_000;
        let place = |serial| Place::of(&number(&codec, "MY", 7, serial), serial);
        assert_eq!(place(first).bucket, "tracknum:bucket:1000000000");
        assert_eq!(place(first).field, "MY070");
        assert_eq!(place(first + 63).bucket, place(first).bucket);
        assert_eq!(place(first + 63).field, "MY0763");
        assert_ne!(place(first + 64).bucket, place(first).bucket);
        assert_ne!(place(first - 1).bucket, place(first).bucket);
        assert_eq!(place(first - 1).field, "MY0763");
    }

    #[test]
    fn numbers_sharing_a_serial_have_fields_of_their_own() {
        let codec = Codec::new(b"buckets");
        let serial = 61_000_000_000_123;
        let numbers = [
            number(&codec, "MY", 7, serial),
            number(&codec, "SG", 7, serial),
            number(&codec, "MY", 8, serial),
        ];
        let places: Vec<Place> = numbers.iter().map(|n| Place::of(n, serial)).collect();
        assert!(places.iter().all(|p| p.bucket == places[0].bucket));
        assert_ne!(places[0].field, places[1].field);
        assert_ne!(places[0].field, places[2].field);
        for (number, place) in numbers.iter().zip(&places) {
            assert_eq!(codec.decode_serial(number.as_str()), Some(serial));
            assert!(place.field.len() <= 6, "{place:?}");
            assert_eq!(place.number(&codec), Some(*number));
        }
        let ours = Place::of(&number(&codec, "ZZ", 0, 64), 64);
        assert_eq!(ours.field, "ZZ000");
        assert_eq!(ours.number(&codec).unwrap().as_str()[..4], *"ZZ00");
        for field in ["MY07", "MY0764", "MY07x", "my070", "MY0"] {
            let other = Place {
                field: field.into(),
                ..ours.clone()
            };
            assert_eq!(other.number(&codec), None, "{field}");
        }
    }

    #[test]
    fn a_long_record_takes_two_fields_and_a_longer_one_none() {
        let value: Vec<u8> = (0..=255).collect();
        assert_eq!(parts(&value[..64]), Some((&value[..64], None)));
        assert_eq!(
            parts(&value[..65]),
            Some((&value[..64], Some(&value[64..65])))
        );
        assert_eq!(
            parts(&value[..128]),
            Some((&value[..64], Some(&value[64..128])))
        );
        assert_eq!(parts(&value[..129]), None);
        assert_eq!(parts(b""), Some((&b""[..], None)));
        let codec = Codec::new(b"buckets");
        let place = Place::of(&number(&codec, "MY", 7, 70), 70);
        assert_eq!(place.tail(), "+MY076");
        let tail = Place {
            field: place.tail(),
            ..place
        };
        assert_eq!(tail.number(&codec), None, "a tail is no record of its own");
    }

    #[test]
    fn a_removal_mark_lives_in_its_buckets_slot() {
        // A script may only touch keys of one slot on a cluster.
        let codec = Codec::new(b"buckets");
        for serial in [0, 63, 64, 61_000_000_000_123] {
            let place = Place::of(&number(&codec, "ID", 1295, serial), serial);
            assert_eq!(
                slot_of(place.removal_key().as_bytes()),
                slot_of(place.bucket.as_bytes())
            );
        }
    }
}
