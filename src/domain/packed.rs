//! The compact binary form of a record of one of our numbers, as stored in a bucket of serials.
//! About 55 bytes with all seven inputs (JSON took about 420), so that Redis keeps a bucket of
//! them as a listpack (values of at most 64 bytes) and the embedded store rewrites few pages.
//!
//! Nothing the number or its serial already says is stored again: the origin country of one of
//! our numbers is its first two characters, and `created_at` is kept as an offset from the time
//! the serial counts (serials count microseconds since 2025). A number registered from elsewhere
//! (no serial) keeps both. A slug derived from an ASCII name is
//! derived again instead of kept. Unpacking gives back the record field for field, so its JSON
//! (the reply, and what the ETag hashes) is byte for byte what it was when it was made.
//!
//! Layout, version 1, every integer a LEB128 varint (`z`: zigzag-signed first):
//! ```text
//! header    0xF0 | 0x08 for a number not ours | status (0 issued … 4 cancelled)
//! flags     bit 0 destination, 1 weight, 2 order time, 3 customer id, 4 name,
//!           5 slug kept, 6 slug derived from the (ASCII) name, 7 tenant
//! created   z(created µs − anchor µs)
//! updated   z(updated µs − created µs)
//! expires   z(expires − created) as (seconds << 1 | 1) when whole, else (µs << 1)
//! then the origin (2 ASCII bytes, `ZZ` for none) of a number not ours; as the flags say:
//! destination (2 ASCII bytes); weight (grams); order time
//! (z(its seconds − created's seconds), nanoseconds, z(offset) in minutes << 1 or seconds << 1
//! | 1); customer id (16 bytes); name, slug, tenant (each a length and UTF-8 bytes)
//! ```
//! A JSON record (the layout before buckets) starts with `{`, so [`unpack_stored`] reads both.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use uuid::Uuid;

use super::codec::NODE_SERIALS;
use super::order::{Order, Weight, slug_from_name};
use super::record::{Record, Status};
use super::{Country, Tenant, TrackingNumber};

/// The high nibble of the first byte of a packed record, version 1.
const VERSION_1: u8 = 0xF0;
/// In the header: a number not ours, whose origin country is kept.
const FOREIGN: u8 = 0x08;
/// Serials count microseconds since this instant (2025-01-01T00:00:00Z): the clock floor.
pub const SERIAL_EPOCH_UNIX_SECS: i64 = 1_735_689_600;

const DESTINATION: u8 = 1 << 0;
const WEIGHT: u8 = 1 << 1;
const ORDER_TIME: u8 = 1 << 2;
const CUSTOMER_ID: u8 = 1 << 3;
const NAME: u8 = 1 << 4;
const SLUG: u8 = 1 << 5;
const SLUG_DERIVED: u8 = 1 << 6;
const TENANT: u8 = 1 << 7;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored record is unreadable: {0}")]
pub struct Unreadable(pub &'static str);

/// The instant (µs since the Unix epoch) that `serial` counts: where its record's `created_at`
/// is kept from (0 for a number not ours). In a node's partition, the serial within it.
fn anchor_us(serial: Option<u64>) -> i64 {
    serial.map_or(0, |serial| {
        SERIAL_EPOCH_UNIX_SECS * 1_000_000 + (serial % NODE_SERIALS) as i64
    })
}

/// Appends the packed form of `record` to `out`. `serial` is its number's serial, None for a
/// number not ours (registered with PUT).
pub fn pack(record: &Record, serial: Option<u64>, out: &mut Vec<u8>) {
    let anchor_us = anchor_us(serial);
    let order = &record.order;
    let status = Status::ALL
        .iter()
        .position(|&s| s == record.status)
        .unwrap_or(0) as u8;
    let foreign = if serial.is_none() { FOREIGN } else { 0 };
    out.push(VERSION_1 | foreign | status);
    let derived = order.customer_name.as_deref().is_some_and(str::is_ascii)
        && order.customer_slug.is_some()
        && order
            .customer_name
            .as_deref()
            .and_then(slug_from_name)
            .as_deref()
            == order.customer_slug.as_deref();
    let mut flags = 0;
    for (present, flag) in [
        (order.destination_country_id.is_some(), DESTINATION),
        (order.weight.is_some(), WEIGHT),
        (order.order_created_at.is_some(), ORDER_TIME),
        (order.customer_id.is_some(), CUSTOMER_ID),
        (order.customer_name.is_some(), NAME),
        (order.customer_slug.is_some() && !derived, SLUG),
        (derived, SLUG_DERIVED),
        (record.tenant.is_some(), TENANT),
    ] {
        if present {
            flags |= flag;
        }
    }
    out.push(flags);
    let created = record.created_at.timestamp_micros();
    put_signed(out, created.wrapping_sub(anchor_us));
    put_signed(
        out,
        record.updated_at.timestamp_micros().wrapping_sub(created),
    );
    put_duration(
        out,
        record.expires_at.timestamp_micros().wrapping_sub(created),
    );
    if serial.is_none() {
        out.extend_from_slice(&order.origin_country_id.map_or(*b"ZZ", Country::bytes));
    }
    if let Some(country) = order.destination_country_id {
        out.extend_from_slice(&country.bytes());
    }
    if let Some(weight) = order.weight {
        put(out, weight.grams());
    }
    if let Some(at) = order.order_created_at {
        put_signed(
            out,
            at.timestamp().wrapping_sub(record.created_at.timestamp()),
        );
        put(out, u64::from(at.timestamp_subsec_nanos()));
        let offset = i64::from(at.offset().local_minus_utc());
        let tagged = if offset % 60 == 0 {
            (offset / 60) << 1
        } else {
            (offset << 1) | 1
        };
        put_signed(out, tagged);
    }
    if let Some(id) = order.customer_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(name) = &order.customer_name {
        put_text(out, name);
    }
    if let Some(slug) = order.customer_slug.as_deref().filter(|_| !derived) {
        put_text(out, slug);
    }
    if let Some(tenant) = &record.tenant {
        put_text(out, tenant.as_str());
    }
}

/// Whether stored bytes are a packed record (else they are the JSON of the earlier layout).
pub fn is_packed(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0xF0 == VERSION_1)
}

/// When the record packed as `bytes` (by [`pack`], with the same `serial`) expires, in µs since
/// the Unix epoch, read without unpacking the rest: what a store that keeps several records
/// under one expiry (a Redis bucket) checks so as never to serve an expired one.
pub fn expires_at_us(bytes: &[u8], serial: Option<u64>) -> Result<i64, Unreadable> {
    if !is_packed(bytes) {
        return Err(Unreadable("it is not a packed record"));
    }
    let mut r = Reader(bytes.get(2..).ok_or(Unreadable("it is truncated"))?);
    let created_us = anchor_us(serial).wrapping_add(r.signed()?);
    r.signed()?;
    Ok(created_us.wrapping_add(r.duration()?))
}

/// The record `number` stored as `bytes`: packed ([`pack`], with the same serial), or JSON.
pub fn unpack_stored(
    bytes: &[u8],
    number: TrackingNumber,
    serial: Option<u64>,
) -> Result<Record, Unreadable> {
    if is_packed(bytes) {
        unpack(bytes, number, serial)
    } else {
        serde_json::from_slice(bytes).map_err(|_| Unreadable("its JSON does not parse"))
    }
}

/// The record `number` was packed into by [`pack`] with `serial`.
pub fn unpack(
    bytes: &[u8],
    number: TrackingNumber,
    serial: Option<u64>,
) -> Result<Record, Unreadable> {
    let mut r = Reader(bytes);
    let header = r.byte()?;
    if header & 0xF0 != VERSION_1 {
        return Err(Unreadable("it has an unknown layout"));
    }
    if (header & FOREIGN != 0) != serial.is_none() {
        return Err(Unreadable("it was packed for another number"));
    }
    let status = *Status::ALL
        .get(usize::from(header & 0x07))
        .ok_or(Unreadable("its status is unknown"))?;
    let flags = r.byte()?;
    let created_us = anchor_us(serial).wrapping_add(r.signed()?);
    let created = micros(created_us)?;
    let updated = micros(created_us.wrapping_add(r.signed()?))?;
    let expires = micros(created_us.wrapping_add(r.duration()?))?;
    let origin = match serial {
        Some(_) => number.as_str().get(..2).unwrap_or(""),
        None => std::str::from_utf8(r.take(2)?).map_err(|_| Unreadable("bad origin"))?,
    };
    let origin_country_id = Country::parse(origin);
    let destination_country_id = if flags & DESTINATION != 0 {
        let code = r.take(2)?;
        Some(
            std::str::from_utf8(code)
                .ok()
                .and_then(Country::parse)
                .ok_or(Unreadable("its destination is not a country"))?,
        )
    } else {
        None
    };
    let weight = if flags & WEIGHT != 0 {
        Some(Weight::from_grams(r.unsigned()?).ok_or(Unreadable("its weight is out of range"))?)
    } else {
        None
    };
    let order_created_at = if flags & ORDER_TIME != 0 {
        let seconds = created.timestamp().wrapping_add(r.signed()?);
        let nanos = u32::try_from(r.unsigned()?).map_err(|_| Unreadable("bad nanoseconds"))?;
        let tagged = r.signed()?;
        let offset = if tagged & 1 == 0 {
            (tagged >> 1) * 60
        } else {
            tagged >> 1
        };
        let offset = i32::try_from(offset)
            .ok()
            .and_then(FixedOffset::east_opt)
            .ok_or(Unreadable("its order time has a bad offset"))?;
        Some(
            offset
                .timestamp_opt(seconds, nanos)
                .single()
                .ok_or(Unreadable("its order time is out of range"))?,
        )
    } else {
        None
    };
    let customer_id = if flags & CUSTOMER_ID != 0 {
        let id: [u8; 16] = r.take(16)?.try_into().map_err(|_| Unreadable("short id"))?;
        Some(Uuid::from_bytes(id))
    } else {
        None
    };
    let customer_name = (flags & NAME != 0).then(|| r.text()).transpose()?;
    let customer_slug = if flags & SLUG != 0 {
        Some(r.text()?)
    } else if flags & SLUG_DERIVED != 0 {
        Some(
            customer_name
                .as_deref()
                .and_then(slug_from_name)
                .ok_or(Unreadable("its slug cannot be derived"))?,
        )
    } else {
        None
    };
    let tenant = if flags & TENANT != 0 {
        Some(Tenant::parse(&r.text()?).ok_or(Unreadable("its tenant is not a tenant name"))?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(Unreadable("it has bytes past its end"));
    }
    Ok(Record {
        tracking_number: number,
        status,
        created_at: created,
        updated_at: updated,
        expires_at: expires,
        tenant,
        order: Order {
            origin_country_id,
            destination_country_id,
            weight,
            order_created_at,
            customer_id,
            customer_name,
            customer_slug,
        },
    })
}

fn micros(us: i64) -> Result<DateTime<Utc>, Unreadable> {
    DateTime::from_timestamp_micros(us).ok_or(Unreadable("a time is out of range"))
}

fn put(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// A duration in µs: in whole seconds when it is whole (a `--record-ttl` of 30 days takes 4
/// bytes instead of 6).
fn put_duration(out: &mut Vec<u8>, us: i64) {
    if us % 1_000_000 == 0 {
        put_signed(out, ((us / 1_000_000) << 1) | 1);
    } else {
        put_signed(out, us << 1);
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    put(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Unreadable> {
        let (&first, rest) = self.0.split_first().ok_or(Unreadable("it is truncated"))?;
        self.0 = rest;
        Ok(first)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        let (taken, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(Unreadable("it is truncated"))?;
        self.0 = rest;
        Ok(taken)
    }

    fn unsigned(&mut self) -> Result<u64, Unreadable> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Unreadable("a number is too long"))
    }

    fn signed(&mut self) -> Result<i64, Unreadable> {
        let raw = self.unsigned()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn duration(&mut self) -> Result<i64, Unreadable> {
        let tagged = self.signed()?;
        Ok(if tagged & 1 == 1 {
            (tagged >> 1).wrapping_mul(1_000_000)
        } else {
            tagged >> 1
        })
    }

    fn text(&mut self) -> Result<String, Unreadable> {
        let len = usize::try_from(self.unsigned()?).map_err(|_| Unreadable("too long"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Unreadable("a text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Codec, OrderInput};

    /// Deterministic test randomness (SplitMix64), so failures reproduce.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    const NAMES: [&str; 6] = [
        "RedBox Logistics",
        "Blue Box",
        "Ünïcødé Frachten GmbH",
        "東京 Express",
        "A",
        "Very Long Customer Name Incorporated, Shipping & Handling Division 42",
    ];
    const COUNTRIES: [&str; 6] = ["MY", "SG", "ID", "DE", "JP", "US"];
    const TIMES: [&str; 6] = [
        "2018-11-20T19:29:32+08:00",
        "2026-12-04T10:00:00.5-05:00",
        "2026-12-04T10:00:00.123456Z",
        "0001-01-01T00:00:00.123456789+14:00",
        "9999-12-31T23:59:59+00:30",
        "2016-12-31T23:59:60Z",
    ];

    /// A record as issuing makes it, with inputs picked by `seed`; and its serial.
    fn record(seed: &mut u64) -> (Record, u64) {
        let mut pick = |n: usize| (splitmix(seed) % n as u64) as usize;
        let serial = 60_000_000_000_000 + pick(1_000_000_000) as u64;
        let mut input = OrderInput::default();
        let given = pick(256);
        let text = |s: &str| Some(std::borrow::Cow::Owned(s.to_owned()));
        if given & 1 != 0 {
            input.origin_country_id = text(COUNTRIES[pick(6)]);
        }
        if given & 2 != 0 {
            input.destination_country_id = text(COUNTRIES[pick(6)]);
        }
        if given & 4 != 0 {
            let weight = format!("{}.{:03}", pick(999_999) + 1, pick(1000));
            input.weight = text(weight.trim_end_matches(".000"));
        }
        if given & 8 != 0 {
            input.created_at = text(TIMES[pick(6)]);
        }
        if given & 16 != 0 {
            input.customer_id = text(&Uuid::from_u128(pick(usize::MAX) as u128).to_string());
        }
        if given & 32 != 0 {
            input.customer_name = text(NAMES[pick(6)]);
        }
        if given & 64 != 0 {
            input.customer_slug = text(["acme-co", "redbox-logistics", "x"][pick(3)]);
        }
        let order = input.parse().expect("valid inputs");
        let codec = Codec::new(b"packed tests");
        let tag = codec.customer_tag(order.customer_key().as_deref());
        let number = codec.encode(order.origin_country_id, tag, serial).unwrap();
        let created = DateTime::from_timestamp_micros(anchor_us(Some(serial))).unwrap()
            + chrono::Duration::microseconds(pick(4_000_000) as i64 - 1_000_000);
        let expires = created
            + match pick(3) {
                0 => chrono::Duration::days(30),
                1 => chrono::Duration::microseconds(pick(1 << 40) as i64 + 1),
                _ => chrono::Duration::days(365 * 70),
            };
        let tenant = (given & 128 != 0).then(|| Tenant::parse("shop-a_1.b").unwrap());
        let mut record = Record::new(number, created, expires, order, tenant);
        record.status = Status::ALL[pick(5)];
        if pick(2) == 0 {
            record.updated_at = created + chrono::Duration::microseconds(pick(1 << 30) as i64);
        }
        (record, serial)
    }

    #[test]
    fn a_packed_record_unpacks_to_the_same_record_and_the_same_json() {
        let mut seed = 1;
        for _ in 0..20_000 {
            let (record, serial) = record(&mut seed);
            // Ours, and the same record under a number registered from elsewhere.
            let foreign = Record {
                tracking_number: TrackingNumber::parse("LEGACY42").unwrap(),
                ..record.clone()
            };
            let mut packed = Vec::new();
            pack(&foreign, None, &mut packed);
            assert_eq!(
                unpack(&packed, foreign.tracking_number, None).unwrap(),
                foreign
            );
            assert!(unpack(&packed, foreign.tracking_number, Some(serial)).is_err());
            let anchor = Some(serial);
            let mut packed = Vec::new();
            pack(&record, anchor, &mut packed);
            assert!(is_packed(&packed));
            assert!(unpack(&packed, record.tracking_number, None).is_err());
            let back = unpack(&packed, record.tracking_number, anchor).unwrap();
            assert_eq!(back, record);
            assert_eq!(
                serde_json::to_vec(&back).unwrap(),
                serde_json::to_vec(&record).unwrap()
            );
        }
    }

    #[test]
    fn a_record_with_every_input_fits_a_redis_listpack_value() {
        let input = OrderInput {
            origin_country_id: Some("MY".into()),
            destination_country_id: Some("ID".into()),
            weight: Some("1.234".into()),
            created_at: Some("2026-12-04T19:29:32+08:00".into()),
            customer_id: Some("de619854-b59b-425e-9db4-943979e1bd49".into()),
            customer_name: Some("RedBox Logistics".into()),
            customer_slug: None,
        };
        let order = input.parse().unwrap();
        let serial = 61_000_000_000_000;
        let number = Codec::new(b"s")
            .encode(order.origin_country_id, 7, serial)
            .unwrap();
        let created = DateTime::from_timestamp_micros(anchor_us(Some(serial)) + 1_500_000).unwrap();
        let record = Record::new(
            number,
            created,
            created + chrono::Duration::days(30),
            order,
            None,
        );
        let mut packed = Vec::new();
        pack(&record, Some(serial), &mut packed);
        let json = serde_json::to_vec(&record).unwrap();
        assert!(packed.len() <= 56, "{} bytes", packed.len());
        assert!(
            json.len() > 7 * packed.len(),
            "{} bytes of JSON",
            json.len()
        );
    }

    #[test]
    fn the_expiry_reads_without_unpacking() {
        let mut seed = 11;
        for _ in 0..5_000 {
            let (record, serial) = record(&mut seed);
            let mut packed = Vec::new();
            pack(&record, Some(serial), &mut packed);
            assert_eq!(
                expires_at_us(&packed, Some(serial)),
                Ok(record.expires_at.timestamp_micros())
            );
            let mut foreign = Vec::new();
            pack(&record, None, &mut foreign);
            assert_eq!(
                expires_at_us(&foreign, None),
                Ok(record.expires_at.timestamp_micros())
            );
            for cut in 0..3 {
                assert!(expires_at_us(&packed[..cut], Some(serial)).is_err());
            }
        }
        let json = serde_json::to_vec(&record(&mut seed).0).unwrap();
        assert!(expires_at_us(&json, None).is_err(), "JSON is not packed");
        assert!(expires_at_us(b"\xF0\x00\xFF\xFF", Some(1)).is_err());
    }

    #[test]
    fn a_derived_slug_is_derived_again_and_a_given_one_kept() {
        let mut seed = 99;
        let mut derived = 0;
        for _ in 0..2_000 {
            let (record, serial) = record(&mut seed);
            let mut packed = Vec::new();
            pack(&record, Some(serial), &mut packed);
            if packed[1] & SLUG_DERIVED != 0 {
                derived += 1;
                assert!(record.order.customer_name.as_deref().unwrap().is_ascii());
            }
        }
        assert!(derived > 100, "{derived}");
    }

    #[test]
    fn json_of_the_earlier_layout_reads_too() {
        let (record, serial) = record(&mut 5);
        let json = serde_json::to_vec(&record).unwrap();
        assert!(!is_packed(&json));
        let read = unpack_stored(&json, record.tracking_number, Some(serial)).unwrap();
        assert_eq!(read, record);
    }

    #[test]
    fn damaged_bytes_are_refused_never_a_panic() {
        let mut seed = 3;
        for _ in 0..300 {
            let (record, serial) = record(&mut seed);
            let anchor = Some(serial);
            let mut packed = Vec::new();
            pack(&record, anchor, &mut packed);
            for cut in 0..packed.len() {
                assert!(unpack(&packed[..cut], record.tracking_number, anchor).is_err());
            }
            let mut longer = packed.clone();
            longer.push(0);
            assert!(unpack(&longer, record.tracking_number, anchor).is_err());
            for at in 0..packed.len() {
                let mut flipped = packed.clone();
                flipped[at] ^= 1 << (splitmix(&mut seed) % 8);
                // A flipped byte may still read as some record; it must never panic.
                let _ = unpack(&flipped, record.tracking_number, anchor);
            }
        }
        assert!(unpack_stored(b"\xF7\x00", TrackingNumber::parse("A").unwrap(), None).is_err());
        assert!(unpack_stored(b"{nope", TrackingNumber::parse("A").unwrap(), None).is_err());
    }
}
