//! Every number seen in a run, and where the reply that first carried it is kept, so that a
//! duplicate is reported with both replies. Replies go to an unnamed temporary file (deleted by
//! the OS when the run ends); memory holds one small entry per number.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::check::{NumberKey, unparse};

const SHARDS: usize = 64;
/// Duplicates reported in full; more are only counted.
const KEPT_DUPLICATES: usize = 20;

/// A reply as it arrived, for the record.
pub struct Reply<'a> {
    /// Since the run started.
    pub at: Duration,
    pub connection: u32,
    pub status: u16,
    pub body: &'a [u8],
}

/// A reply read back from the spill file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptReply {
    pub at_ms: f64,
    pub connection: u32,
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Duplicate {
    pub tracking_number: String,
    pub first: Option<KeptReply>,
    pub second: Option<KeptReply>,
}

/// Where a reply sits in the spill file; `NOT_KEPT` when it could not be written.
#[derive(Clone, Copy)]
struct Spot {
    offset: u64,
    len: u32,
}

const NOT_KEPT: Spot = Spot {
    offset: u64::MAX,
    len: 0,
};

type Shard = HashMap<NumberKey, Spot, foldhash::fast::RandomState>;

pub struct Ledger {
    shards: Box<[Mutex<Shard>]>,
    spill: Mutex<Spill>,
    found: Mutex<Vec<(NumberKey, Spot, Spot)>>,
    duplicates: AtomicU64,
    numbers: AtomicU64,
}

struct Spill {
    out: Option<BufWriter<File>>,
    written: u64,
}

impl Ledger {
    pub fn new() -> Ledger {
        let out = match tempfile::tempfile() {
            Ok(file) => Some(BufWriter::with_capacity(256 * 1024, file)),
            Err(e) => {
                eprintln!(
                    "loadtest: no temporary file for replies ({e}); duplicates will be reported without them"
                );
                None
            }
        };
        Ledger {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            spill: Mutex::new(Spill { out, written: 0 }),
            found: Mutex::default(),
            duplicates: AtomicU64::new(0),
            numbers: AtomicU64::new(0),
        }
    }

    /// Enters the numbers of one reply; returns how many of them were seen before.
    pub fn record(&self, keys: &[NumberKey], reply: &Reply) -> u64 {
        let spot = self.keep(reply);
        let mut seen_before = 0;
        for &key in keys {
            let shard = &self.shards[shard_of(key)];
            let first = match shard.lock().unwrap_or_else(|e| e.into_inner()).entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(spot);
                    continue;
                }
                Entry::Occupied(taken) => *taken.get(),
            };
            seen_before += 1;
            let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            if found.len() < KEPT_DUPLICATES {
                found.push((key, first, spot));
            }
        }
        self.numbers
            .fetch_add(keys.len() as u64 - seen_before, Ordering::Relaxed);
        self.duplicates.fetch_add(seen_before, Ordering::Relaxed);
        seen_before
    }

    /// Distinct numbers seen.
    pub fn numbers(&self) -> u64 {
        self.numbers.load(Ordering::Relaxed)
    }

    /// Numbers seen more than once (each extra sighting counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// The first duplicates found, each with both replies.
    pub fn duplicate_reports(&self) -> Vec<Duplicate> {
        let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        let file = spill.out.as_mut().and_then(|out| match out.flush() {
            Ok(()) => Some(out.get_ref()),
            Err(_) => None,
        });
        let read = |spot: Spot| file.and_then(|file| read_reply(file, spot));
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found
            .iter()
            .map(|&(key, first, second)| Duplicate {
                tracking_number: unparse(key),
                first: read(first),
                second: read(second),
            })
            .collect()
    }

    fn keep(&self, reply: &Reply) -> Spot {
        let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        let Spill { out, written } = &mut *spill;
        let Some(writer) = out else { return NOT_KEPT };
        let head = format!(
            "{} {} {}\n",
            reply.at.as_micros(),
            reply.connection,
            reply.status
        );
        let len = head.len() + reply.body.len();
        let Ok(len32) = u32::try_from(len) else {
            return NOT_KEPT;
        };
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(reply.body))
            .is_err()
        {
            eprintln!("loadtest: could not keep replies in the temporary file; going on without");
            *out = None;
            return NOT_KEPT;
        }
        let spot = Spot {
            offset: *written,
            len: len32,
        };
        *written += len as u64;
        spot
    }
}

/// Keys are scrambled numbers, so their low bits spread evenly.
fn shard_of(key: NumberKey) -> usize {
    (key as usize ^ (key >> 64) as usize) % SHARDS
}

fn read_reply(file: &File, spot: Spot) -> Option<KeptReply> {
    if spot.offset == NOT_KEPT.offset {
        return None;
    }
    let mut bytes = vec![0; spot.len as usize];
    file.read_exact_at(&mut bytes, spot.offset).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once('\n')?;
    let mut head = head.split(' ').map(str::parse::<u64>);
    let (Some(Ok(at_us)), Some(Ok(connection)), Some(Ok(status))) =
        (head.next(), head.next(), head.next())
    else {
        return None;
    };
    Some(KeptReply {
        at_ms: at_us as f64 / 1000.0,
        connection: connection as u32,
        status: status as u16,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(at_ms: u64, body: &str) -> Reply<'_> {
        Reply {
            at: Duration::from_millis(at_ms),
            connection: 3,
            status: 200,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn distinct_numbers_are_counted_and_not_duplicates() {
        let ledger = Ledger::new();
        assert_eq!(ledger.record(&[1, 2], &reply(1, "a")), 0);
        assert_eq!(ledger.record(&[3], &reply(2, "b")), 0);
        assert_eq!((ledger.numbers(), ledger.duplicates()), (3, 0));
        assert!(ledger.duplicate_reports().is_empty());
    }

    #[test]
    fn a_duplicate_is_reported_with_both_replies() {
        let ledger = Ledger::new();
        ledger.record(&[7, 8], &reply(5, "first reply"));
        ledger.record(&[9], &reply(6, "unrelated"));
        assert_eq!(ledger.record(&[8], &reply(12, "second reply")), 1);
        assert_eq!((ledger.numbers(), ledger.duplicates()), (3, 1));

        let reports = ledger.duplicate_reports();
        assert_eq!(reports.len(), 1);
        let report = &reports[0];
        assert_eq!(report.tracking_number, unparse(8));
        let (first, second) = (
            report.first.as_ref().unwrap(),
            report.second.as_ref().unwrap(),
        );
        assert_eq!((first.body.as_str(), first.at_ms), ("first reply", 5.0));
        assert_eq!((second.body.as_str(), second.at_ms), ("second reply", 12.0));
        assert_eq!((second.connection, second.status), (3, 200));
    }

    #[test]
    fn a_number_twice_in_one_batch_is_a_duplicate() {
        let ledger = Ledger::new();
        assert_eq!(ledger.record(&[4, 4], &reply(1, "batch")), 1);
        let reports = ledger.duplicate_reports();
        assert_eq!(reports[0].first.as_ref().unwrap().body, "batch");
        assert_eq!(reports[0].second.as_ref().unwrap().body, "batch");
    }

    #[test]
    fn only_the_first_duplicates_are_kept_but_all_are_counted() {
        let ledger = Ledger::new();
        ledger.record(&[1], &reply(0, "x"));
        for i in 0..(KEPT_DUPLICATES as u64 + 5) {
            ledger.record(&[1], &reply(i, "again"));
        }
        assert_eq!(ledger.duplicates(), KEPT_DUPLICATES as u64 + 5);
        assert_eq!(ledger.duplicate_reports().len(), KEPT_DUPLICATES);
    }
}
