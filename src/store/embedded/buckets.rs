//! A bucket: the records of [`BUCKET_SERIALS`] consecutive serials, kept as one redb row, so
//! that storing records rewrites one row per bucket instead of inserting one B-tree entry per
//! record. Pure row format, no I/O.
//!
//! A row is a sequence of frames, each checked on its own:
//! ```text
//! slot     2 bytes    the serial's place in its bucket (serial − the bucket's first serial);
//!                     LOST for a mark of damage (below)
//! len      varint     the value's length (LEB128)
//! expires  8 bytes    ms since the Unix epoch
//! prefix   4 bytes    the number's first four characters (origin and customer tag): the
//!                     serial alone does not say them, and a number with other ones is another
//! crc      4 bytes    CRC-32 of the bucket's id (8 bytes), every byte above, and the value
//! value    len bytes  as the service gave it (a packed record)
//! ```
//! Integers are big-endian. Entries are written in slot order. A flipped byte fails its
//! entry's checksum, and the reader scans forward byte by byte to the next frame whose checksum
//! holds: the damage harms that one entry, its neighbours are still read. The damaged entry's
//! own slot cannot be trusted, but it lies between the slots of the intact entries around it,
//! and only a slot in that gap that holds no intact entry is refused as possibly damaged (in
//! a bucket of consecutive serials, exactly the damaged one). The first rewrite of the row
//! keeps that gap as a mark (a frame with slot LOST, the gap's first and last slot in place of
//! the prefix), written before the entries, so the refusal outlasts any change to the row.
//! The bucket's id in the checksum keeps a value from passing for a frame: a record holding
//! the bytes of a whole entry (in a customer name, say) would need the id, which only the
//! secret reveals.

use std::ops::Range;

use crate::domain::codec::NODE_SERIALS;

/// Serials per bucket in a new data dir (a data dir keeps the size it was made with). redb keeps
/// a row bigger than a page (4 KiB) in a page of its own, a power of two of them, so a bucket
/// pays when its full row just fits one: 192 entries of about 77 bytes (all seven inputs) are
/// 14.8 KB, in 16 KiB. Measured on 200,000 such records, data file blocks per record: 89 B
/// (buckets of 96), 91 B (192), 95 B (384), but 126 B (128 and 256: rows of 0.6 of a page).
/// Reads check the entries before theirs, so smaller is quicker to read; 192 keeps a bucket's
/// keys (one B-tree key and one purge key) at under a byte a record.
pub const BUCKET_SERIALS: u64 = 192;

/// The slot of a mark of damage: above every real slot.
const LOST: u16 = u16::MAX;

/// Bytes of a frame other than its value, with a one-byte length.
pub const FRAME_OVERHEAD: usize = 2 + 1 + 8 + 4 + 4;

/// How many consecutive serials a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSize(u64);

impl BucketSize {
    /// None unless it is 1 to 32,768 serials (slots fit in two bytes, below LOST) and divides a
    /// node's partition, so that no bucket spans two nodes.
    pub fn new(serials: u64) -> Option<BucketSize> {
        ((1..=1 << 15).contains(&serials) && NODE_SERIALS.is_multiple_of(serials))
            .then_some(BucketSize(serials))
    }

    pub fn serials(self) -> u64 {
        self.0
    }

    /// The bucket holding `serial`, and its slot there.
    pub fn locate(self, serial: u64) -> (u64, u16) {
        // The slot is below the size, which fits in two bytes.
        (serial / self.0, (serial % self.0) as u16)
    }

    /// The bucket ids covering `serials` (a bucket that starts inside them included).
    pub fn ids_of(self, serials: Range<u64>) -> Range<u64> {
        serials.start / self.0..serials.end.div_ceil(self.0)
    }

    /// The first serial past bucket `id`.
    pub fn end_of(self, id: u64) -> u64 {
        id.saturating_add(1).saturating_mul(self.0)
    }
}

impl Default for BucketSize {
    fn default() -> Self {
        BucketSize(BUCKET_SERIALS)
    }
}

/// One record in a bucket, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub slot: u16,
    pub prefix: [u8; 4],
    pub expires_ms: i64,
    pub value: &'a [u8],
}

/// A part of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// An entry whose checksum holds, with its whole frame (to copy as it is).
    Entry(Entry<'a>, &'a [u8]),
    /// Bytes that are no frame: damage found now.
    Damaged(&'a [u8]),
    /// A mark left by an earlier rewrite: a damaged entry was in `slots`.
    Lost { slots: Range<u16>, frame: &'a [u8] },
}

/// The pieces of `row`, the row of bucket `id`, in order.
pub fn pieces(row: &[u8], id: u64) -> Pieces<'_> {
    Pieces { row, id, at: 0 }
}

pub struct Pieces<'a> {
    row: &'a [u8],
    id: u64,
    at: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let start = self.at;
        if start >= self.row.len() {
            return None;
        }
        if let Some((entry, end)) = frame_at(self.row, start, self.id) {
            self.at = end;
            let frame = &self.row[start..end];
            if entry.slot == LOST {
                let [a, b, c, d] = entry.prefix;
                let slots = u16::from_be_bytes([a, b])..u16::from_be_bytes([c, d]);
                return Some(Piece::Lost { slots, frame });
            }
            return Some(Piece::Entry(entry, frame));
        }
        // Damaged: resume at the next offset where a frame's checksum holds.
        let mut next = start + 1;
        while next < self.row.len() && frame_at(self.row, next, self.id).is_none() {
            next += 1;
        }
        self.at = next;
        Some(Piece::Damaged(&self.row[start..next]))
    }
}

/// The frame at `at` (an entry, or a mark with slot LOST), and where it ends; None when no
/// frame starts there.
fn frame_at(row: &[u8], at: usize, id: u64) -> Option<(Entry<'_>, usize)> {
    let bytes = row.get(at..)?;
    let slot = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    let (len, len_bytes) = read_varint(bytes.get(2..)?)?;
    let header = 2 + len_bytes + 8 + 4;
    let fixed = bytes.get(2 + len_bytes..header)?;
    let crc = bytes.get(header..header + 4)?;
    let end = (header + 4).checked_add(usize::try_from(len).ok()?)?;
    let value = bytes.get(header + 4..end)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_be_bytes());
    hasher.update(&bytes[..header]);
    hasher.update(value);
    if hasher.finalize().to_be_bytes() != crc {
        return None;
    }
    let (expires, prefix) = fixed.split_at(8);
    let entry = Entry {
        slot,
        prefix: prefix.try_into().ok()?,
        expires_ms: i64::from_be_bytes(expires.try_into().ok()?),
        value,
    };
    Some((entry, at + end))
}

/// A LEB128 u32 and how many bytes it took.
fn read_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7F).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn write_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends the frame of `entry` in bucket `id` to `out`.
pub fn encode(out: &mut Vec<u8>, id: u64, entry: &Entry<'_>) {
    let start = out.len();
    out.extend_from_slice(&entry.slot.to_be_bytes());
    // Values are records of a few hundred bytes at most; a longer one is a caller's bug.
    write_varint(out, u32::try_from(entry.value.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(&entry.expires_ms.to_be_bytes());
    out.extend_from_slice(&entry.prefix);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_be_bytes());
    hasher.update(&out[start..]);
    hasher.update(entry.value);
    out.extend_from_slice(&hasher.finalize().to_be_bytes());
    out.extend_from_slice(entry.value);
}

/// Appends a mark that a damaged entry had one of `slots`.
fn encode_lost(out: &mut Vec<u8>, id: u64, slots: Range<u16>) {
    let [a, b] = slots.start.to_be_bytes();
    let [c, d] = slots.end.to_be_bytes();
    let mark = Entry {
        slot: LOST,
        prefix: [a, b, c, d],
        expires_ms: 0,
        value: &[],
    };
    encode(out, id, &mark);
}

/// The slots a damaged region between intact entries of slots `before` and `after` may have
/// held (all of them at the row's ends).
fn gap(before: Option<u16>, after: Option<u16>) -> Range<u16> {
    let end = after.unwrap_or(LOST);
    before.map_or(0, |slot| slot + 1).min(end)..end
}

/// What a lookup of one slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    Entry(Entry<'a>),
    /// No entry holds the slot.
    Missing,
    /// No intact entry holds the slot, and a damaged one may have.
    Damaged,
}

/// The entry of `slot` in `row` (bucket `id`). Marks come first and entries in slot order, so
/// the lookup ends at the first intact entry past the slot.
pub fn find(row: &[u8], id: u64, slot: u16) -> Found<'_> {
    let mut lost = false;
    let mut before = None;
    let mut damage_since = false;
    for piece in pieces(row, id) {
        match piece {
            Piece::Lost { slots, .. } => lost |= slots.contains(&slot),
            Piece::Damaged(_) => damage_since = true,
            Piece::Entry(entry, _) => {
                if entry.slot == slot {
                    return Found::Entry(entry);
                }
                lost |= damage_since && gap(before, Some(entry.slot)).contains(&slot);
                if entry.slot > slot {
                    break;
                }
                before = Some(entry.slot);
                damage_since = false;
            }
        }
    }
    lost |= damage_since && gap(before, None).contains(&slot);
    if lost { Found::Damaged } else { Found::Missing }
}

/// The slots of `row` whose intact entries are live at `now_ms`, in order.
pub fn live_slots(row: &[u8], id: u64, now_ms: i64) -> Vec<u16> {
    pieces(row, id)
        .filter_map(|piece| match piece {
            Piece::Entry(entry, _) if entry.expires_ms > now_ms => Some(entry.slot),
            _ => None,
        })
        .collect()
}

/// A change to one slot of a bucket.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Holds this entry from now on (a new record, or a new version).
    Put(Entry<'a>),
    Remove(u16),
}

impl Change<'_> {
    pub fn slot(&self) -> u16 {
        match self {
            Change::Put(entry) => entry.slot,
            Change::Remove(slot) => *slot,
        }
    }
}

/// What a rewritten row holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub entries: usize,
    /// The latest expiry among them.
    pub latest_ms: Option<i64>,
    /// Whether it keeps marks of damage.
    pub damaged: bool,
    /// The latest expiry among the intact entries of the row it was rewritten from.
    pub was_latest_ms: Option<i64>,
    /// Entries left out because they had expired.
    pub expired: usize,
}

impl Summary {
    /// Nothing is left: the row can go.
    pub fn is_empty(&self) -> bool {
        self.entries == 0 && !self.damaged
    }

    fn holds(&mut self, expires_ms: i64) {
        self.entries += 1;
        self.latest_ms = Some(self.latest_ms.map_or(expires_ms, |l| l.max(expires_ms)));
    }
}

/// Writes `row` (bucket `id`) with `changes` applied into `out`: `changes` in slot order, one
/// per slot at most. Entries expired at `now_ms` are left out (they are never served). Marks
/// of damage are kept, and damage found now becomes a mark of the slots it may have held (its
/// bytes go), so that its record stays a refusal, not a "not found", whatever changes next.
pub fn rewrite(
    row: &[u8],
    id: u64,
    changes: &[Change<'_>],
    now_ms: i64,
    out: &mut Vec<u8>,
) -> Summary {
    out.clear();
    out.reserve(row.len() + changes.len() * (FRAME_OVERHEAD + 64));
    let mut summary = Summary::default();
    // The marks first: those kept, then one per damaged region found now.
    let mut before = None;
    let mut damage_since = false;
    for piece in pieces(row, id) {
        match piece {
            Piece::Lost { frame, .. } => {
                out.extend_from_slice(frame);
                summary.damaged = true;
            }
            Piece::Damaged(_) => damage_since = true,
            Piece::Entry(entry, _) => {
                if std::mem::take(&mut damage_since) {
                    encode_lost(out, id, gap(before, Some(entry.slot)));
                    summary.damaged = true;
                }
                before = Some(entry.slot);
                summary.was_latest_ms = summary.was_latest_ms.max(Some(entry.expires_ms));
            }
        }
    }
    if damage_since {
        encode_lost(out, id, gap(before, None));
        summary.damaged = true;
    }
    let put = |out: &mut Vec<u8>, summary: &mut Summary, change: &Change<'_>| {
        if let Change::Put(entry) = change {
            encode(out, id, entry);
            summary.holds(entry.expires_ms);
        }
    };
    let mut changes = changes.iter().peekable();
    for piece in pieces(row, id) {
        let Piece::Entry(entry, frame) = piece else {
            continue;
        };
        while let Some(change) = changes.next_if(|c| c.slot() < entry.slot) {
            put(out, &mut summary, change);
        }
        match changes.next_if(|c| c.slot() == entry.slot) {
            Some(change) => put(out, &mut summary, change),
            None if entry.expires_ms <= now_ms => summary.expired += 1,
            None => {
                out.extend_from_slice(frame);
                summary.holds(entry.expires_ms);
            }
        }
    }
    for change in changes {
        put(out, &mut summary, change);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 77;

    fn entry(slot: u16, expires_ms: i64, value: &[u8]) -> Entry<'_> {
        Entry {
            slot,
            prefix: *b"DE0A",
            expires_ms,
            value,
        }
    }

    /// A row of entries at `slots`, each expiring at 1000 + slot, value "v{slot}" padded.
    fn row_of(slots: &[u16]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let values: Vec<Vec<u8>> = slots
            .iter()
            .map(|s| format!("v{s}-packed-record-bytes-of-some-length").into_bytes())
            .collect();
        let changes: Vec<Change<'_>> = slots
            .iter()
            .zip(&values)
            .map(|(&s, v)| Change::Put(entry(s, 1000 + i64::from(s), v)))
            .collect();
        let mut row = Vec::new();
        rewrite(&[], ID, &changes, 0, &mut row);
        (row, values)
    }

    #[test]
    fn serials_map_to_buckets_and_slots() {
        let size = BucketSize::default();
        assert_eq!(size.serials(), BUCKET_SERIALS);
        let last = (BUCKET_SERIALS - 1) as u16;
        assert_eq!(size.locate(0), (0, 0));
        assert_eq!(size.locate(BUCKET_SERIALS - 1), (0, last));
        assert_eq!(size.locate(BUCKET_SERIALS * 5 + 3), (5, 3));
        assert_eq!(size.end_of(5), BUCKET_SERIALS * 6);
        assert_eq!(size.ids_of(BUCKET_SERIALS..BUCKET_SERIALS * 3 + 1), 1..4);
        assert_eq!(size.ids_of(0..BUCKET_SERIALS), 0..1);
        // Every node's partition is whole buckets: a bucket never spans two nodes.
        for serials in [1, 64, 96, 128, 256, 512, 1 << 15] {
            assert_eq!(
                BucketSize::new(serials).map(BucketSize::serials),
                Some(serials)
            );
        }
        for serials in [0, 100, 1 << 16, u64::MAX] {
            assert_eq!(BucketSize::new(serials), None, "{serials}");
        }
        assert_eq!(BucketSize::new(BUCKET_SERIALS), Some(size));
    }

    #[test]
    fn entries_read_back_in_slot_order_first_and_last_slot_included() {
        let last = (BUCKET_SERIALS - 1) as u16;
        let (row, values) = row_of(&[0, 1, 7, last]);
        for (slot, value) in [0, 1, 7, last].into_iter().zip(&values) {
            let Found::Entry(found) = find(&row, ID, slot) else {
                panic!("slot {slot} not found")
            };
            assert_eq!(found, entry(slot, 1000 + i64::from(slot), value));
        }
        for slot in [2, 6, 8, last - 1] {
            assert_eq!(find(&row, ID, slot), Found::Missing, "{slot}");
        }
        let summary = rewrite(&row, ID, &[], 0, &mut Vec::new());
        assert_eq!(summary.was_latest_ms, Some(1000 + i64::from(last)));
        assert_eq!(find(&[], ID, 0), Found::Missing);
        let per_entry = row.len() / 4 - values[0].len();
        assert!(
            per_entry <= FRAME_OVERHEAD + 1,
            "{per_entry} bytes of framing"
        );
    }

    #[test]
    fn a_row_read_under_another_bucket_id_is_all_damage() {
        let (row, _) = row_of(&[3, 4]);
        assert_eq!(find(&row, ID + 1, 3), Found::Damaged);
        assert_eq!(pieces(&row, ID + 1).count(), 1);
    }

    #[test]
    fn rewrites_put_replace_remove_and_drop_expired_entries() {
        let (row, _) = row_of(&[2, 4, 6]);
        let mut out = Vec::new();
        let summary = rewrite(
            &row,
            ID,
            &[
                Change::Put(entry(1, 5000, b"new-first")),
                Change::Remove(2),
                Change::Put(entry(4, 6000, b"replaced")),
                Change::Put(entry(9, 3000, b"new-last")),
            ],
            1005, // slot 2 (1002) and 4 (1004, replaced) are due; 6 (1006) lives
            &mut out,
        );
        assert_eq!(
            summary,
            Summary {
                entries: 4,
                latest_ms: Some(6000),
                damaged: false,
                was_latest_ms: Some(1006),
                expired: 0
            }
        );
        let slots: Vec<u16> = pieces(&out, ID)
            .map(|p| match p {
                Piece::Entry(e, _) => e.slot,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(slots, [1, 4, 6, 9]);
        assert_eq!(find(&out, ID, 4), Found::Entry(entry(4, 6000, b"replaced")));
        // Later, the untouched slot 6 has expired and is left out; removing the rest empties it.
        let mut emptied = Vec::new();
        let summary = rewrite(
            &out,
            ID,
            &[Change::Remove(1), Change::Remove(4), Change::Remove(9)],
            1006,
            &mut emptied,
        );
        assert_eq!(summary.expired, 1);
        assert!(summary.is_empty() && emptied.is_empty());
    }

    /// Every single flipped byte of a row (several bit patterns each) harms only the entry it
    /// falls in: every other entry reads back exactly, the hit one is refused, never read as
    /// something else; of the slots holding nothing, only those between the hit entry's
    /// neighbours are refused, the rest are "missing". The same after the row is rewritten.
    #[test]
    fn a_flipped_byte_harms_only_its_own_entry() {
        let slots = [0u16, 3, 4, 5, 200, 255];
        let (row, values) = row_of(&slots);
        let mut ends = Vec::new();
        let mut at = 0;
        for piece in pieces(&row, ID) {
            let Piece::Entry(_, frame) = piece else {
                panic!("{piece:?}")
            };
            at += frame.len();
            ends.push(at);
        }
        let empty = [1u16, 2, 6, 100, 201, 254, 256, 4000];
        let mut rewritten = Vec::new();
        for at in 0..row.len() {
            let hit = ends.iter().position(|&end| at < end).unwrap();
            let gap = gap(
                hit.checked_sub(1).map(|k| slots[k]),
                slots.get(hit + 1).copied(),
            );
            for flip in [0x01u8, 0x20, 0x80, 0xFF] {
                let mut damaged = row.clone();
                damaged[at] ^= flip;
                rewrite(&damaged, ID, &[], 0, &mut rewritten);
                for read in [&damaged, &rewritten] {
                    for (k, (&slot, value)) in slots.iter().zip(&values).enumerate() {
                        let found = find(read, ID, slot);
                        if k == hit {
                            assert_eq!(found, Found::Damaged, "byte {at} ^ {flip:#x}");
                        } else {
                            let intact = entry(slot, 1000 + i64::from(slot), value);
                            assert_eq!(found, Found::Entry(intact), "byte {at} ^ {flip:#x}");
                        }
                    }
                    for slot in empty {
                        let expected = if gap.contains(&slot) {
                            Found::Damaged
                        } else {
                            Found::Missing
                        };
                        assert_eq!(find(read, ID, slot), expected, "byte {at}: slot {slot}");
                    }
                }
            }
        }
    }

    #[test]
    fn damage_is_kept_through_rewrites_and_stays_a_refusal() {
        let (row, values) = row_of(&[3, 5, 8]);
        let mut damaged = row.clone();
        let second = row.len() / 3 + 20; // inside the entry of slot 5
        damaged[second] ^= 0x40;
        assert_eq!(find(&damaged, ID, 5), Found::Damaged);
        assert_eq!(find(&damaged, ID, 7), Found::Damaged, "in the gap");
        assert_eq!(find(&damaged, ID, 1), Found::Missing, "before the gap");
        assert_eq!(find(&damaged, ID, 9), Found::Missing, "after the gap");
        let mut out = Vec::new();
        let summary = rewrite(
            &damaged,
            ID,
            &[
                Change::Put(entry(4, 2000, b"four")),
                Change::Put(entry(6, 2000, b"six")),
                Change::Remove(8),
            ],
            0,
            &mut out,
        );
        assert!(summary.damaged);
        assert_eq!(summary.entries, 3);
        assert_eq!(find(&out, ID, 5), Found::Damaged, "still refused");
        assert_eq!(find(&out, ID, 7), Found::Damaged, "the gap is kept");
        assert_eq!(find(&out, ID, 3), Found::Entry(entry(3, 1003, &values[0])));
        assert_eq!(find(&out, ID, 4), Found::Entry(entry(4, 2000, b"four")));
        assert_eq!(find(&out, ID, 6), Found::Entry(entry(6, 2000, b"six")));
        assert_eq!(find(&out, ID, 8), Found::Missing, "removed, past the gap");
        // With every intact entry gone, the mark alone keeps the row; the purge drops it.
        let mut rest = Vec::new();
        let summary = rewrite(
            &out,
            ID,
            &[Change::Remove(3), Change::Remove(4), Change::Remove(6)],
            0,
            &mut rest,
        );
        assert!(!summary.is_empty() && summary.latest_ms.is_none());
        assert_eq!(find(&rest, ID, 5), Found::Damaged);
        assert_eq!(find(&rest, ID, 3), Found::Missing);
    }

    /// In a bucket of consecutive serials, a damaged record's gap is itself alone: deleting its
    /// neighbours leaves them "not found", not refused.
    #[test]
    fn in_a_full_run_only_the_damaged_slot_is_refused() {
        let (row, _) = row_of(&[10, 11, 12]);
        let mut damaged = row.clone();
        damaged[row.len() / 2] ^= 0x08; // inside slot 11's entry
        let mut out = Vec::new();
        rewrite(
            &damaged,
            ID,
            &[Change::Remove(10), Change::Remove(12)],
            0,
            &mut out,
        );
        assert_eq!(find(&out, ID, 11), Found::Damaged);
        for slot in [9, 10, 12, 13] {
            assert_eq!(find(&out, ID, slot), Found::Missing, "{slot}");
        }
    }

    #[test]
    fn truncated_rows_and_long_values_are_handled() {
        let long = vec![7u8; 70_000];
        let mut row = Vec::new();
        rewrite(&[], ID, &[Change::Put(entry(9, 1, &long))], 0, &mut row);
        assert_eq!(find(&row, ID, 9), Found::Entry(entry(9, 1, &long)));
        for cut in [1, 5, row.len() - 1] {
            assert_eq!(find(&row[..cut], ID, 9), Found::Damaged, "cut at {cut}");
        }
        assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80]), None);
        assert_eq!(read_varint(&[0xFF, 0x01]), Some((255, 2)));
    }
}
