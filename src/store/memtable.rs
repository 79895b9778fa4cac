//! Write-behind buffer of the embedded store: records land here at once, visible to reads, and
//! are moved to disk in one large transaction at a time. Pure data structure, no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct Pending {
    pub serial: Option<u64>,
    pub expires_ms: i64,
    pub value: Bytes,
}

/// What the buffer knows of a number.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// A record not yet expired: its JSON.
    Live(Bytes),
    /// The newest record of the number has expired.
    Expired,
    /// Not buffered: ask the disk.
    Unknown,
}

/// foldhash: much cheaper than SipHash per insert, and still seeded per process.
pub type Records = HashMap<String, Pending, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct Memtable {
    /// Taking new records.
    active: Mutex<Records>,
    /// Being written to disk; readable until the write is committed.
    flushing: Mutex<Arc<Records>>,
    /// The table of the last batch written, emptied, to take the next records: one table's
    /// memory serves batch after batch, instead of a new one growing (and the old one freed)
    /// five times a second.
    spare: Mutex<Records>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lookup(pending: Option<&Pending>, now_ms: i64) -> Lookup {
    match pending {
        Some(p) if p.expires_ms > now_ms => Lookup::Live(p.value.clone()),
        Some(_) => Lookup::Expired,
        None => Lookup::Unknown,
    }
}

impl Memtable {
    pub fn get(&self, number: &str, now_ms: i64) -> Lookup {
        self.find(&lock(&self.active), number, now_ms)
    }

    /// Whether a record of `number` (live or not) waits here for the disk.
    pub fn holds(&self, number: &str) -> bool {
        lock(&self.active).contains_key(number) || lock(&self.flushing).contains_key(number)
    }

    /// Active first, then flushing: a record moves only in that direction, and leaves
    /// `flushing` only once it is on disk, so a reader that misses both finds it there.
    fn find(&self, active: &Records, number: &str, now_ms: i64) -> Lookup {
        match lookup(active.get(number), now_ms) {
            Lookup::Unknown => lookup(lock(&self.flushing).get(number), now_ms),
            found => found,
        }
    }

    /// Buffers each record whose number holds no live record, here or on disk (`live_on_disk`
    /// answers for the disk, and is asked before the buffer is locked). Returns, per record,
    /// whether it was buffered.
    pub fn insert_new<E>(
        &self,
        records: impl IntoIterator<Item = (String, Pending)>,
        now_ms: i64,
        limit: usize,
        mut live_on_disk: impl FnMut(&str, &Pending) -> Result<bool, E>,
    ) -> Result<Vec<bool>, InsertError<E>> {
        let checked: Vec<(String, Pending, bool)> = records
            .into_iter()
            .map(|(number, pending)| {
                let on_disk = live_on_disk(&number, &pending).map_err(InsertError::Disk)?;
                Ok((number, pending, on_disk))
            })
            .collect::<Result<_, _>>()?;
        let mut active = lock(&self.active);
        if !fits(active.len(), checked.len(), limit) {
            return Err(InsertError::Full);
        }
        let mut outcome = Vec::with_capacity(checked.len());
        for (number, pending, on_disk) in checked {
            let taken = match self.find(&active, &number, now_ms) {
                Lookup::Live(_) => true,
                Lookup::Expired => false,
                Lookup::Unknown => on_disk,
            };
            if !taken {
                active.insert(number, pending);
            }
            outcome.push(!taken);
        }
        Ok(outcome)
    }

    /// Whether `more` records fit beside those waiting, within `limit`.
    pub fn has_room(&self, more: usize, limit: usize) -> bool {
        fits(lock(&self.active).len(), more, limit)
    }

    /// Moves every buffered record to `flushing` and returns them, to be written to disk. What a
    /// failed earlier flush left behind is included again.
    pub fn start_flush(&self) -> Arc<Records> {
        let mut active = lock(&self.active);
        let mut flushing = lock(&self.flushing);
        if active.is_empty() {
            return flushing.clone();
        }
        let mut batch = std::mem::replace(&mut *active, std::mem::take(&mut *lock(&self.spare)));
        if !flushing.is_empty() {
            for (number, pending) in flushing.iter() {
                batch
                    .entry(number.clone())
                    .or_insert_with(|| pending.clone());
            }
        }
        *flushing = Arc::new(batch);
        flushing.clone()
    }

    /// The records of `batch` (from `start_flush`) are on disk: stop holding them, unless a
    /// later `start_flush` has taken them into a bigger batch since (a write that outlived its
    /// caller), which then still has to reach the disk.
    pub fn finish_flush(&self, batch: Arc<Records>) {
        {
            let mut flushing = lock(&self.flushing);
            if !Arc::ptr_eq(&flushing, &batch) {
                return;
            }
            *flushing = Arc::default();
        }
        // Once no reader holds it, the written table takes the next batch's records.
        if let Some(mut table) = Arc::into_inner(batch) {
            table.clear();
            *lock(&self.spare) = table;
        }
    }

    /// How many records wait to be taken to disk.
    pub fn waiting(&self) -> usize {
        lock(&self.active).len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.active).len() + lock(&self.flushing).len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, PartialEq)]
pub enum InsertError<E> {
    /// Too many records wait for disk (it is failing or far behind).
    Full,
    Disk(E),
}

/// Whether `more` records fit beside `waiting` (not yet taken by a flush), within `limit`.
fn fits(waiting: usize, more: usize, limit: usize) -> bool {
    waiting + more <= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(expires_ms: i64, json: &'static str) -> Pending {
        Pending {
            serial: None,
            expires_ms,
            value: Bytes::from_static(json.as_bytes()),
        }
    }

    fn insert(table: &Memtable, number: &str, expires_ms: i64, on_disk: bool) -> bool {
        table
            .insert_new(
                [(number.to_owned(), pending(expires_ms, "{}"))],
                100,
                10,
                |_, _| Ok::<_, ()>(on_disk),
            )
            .unwrap()[0]
    }

    #[test]
    fn room_counts_only_the_records_not_yet_taken_by_a_flush() {
        let memtable = Memtable::default();
        let rows = (0..3).map(|i| (format!("N{i}"), pending(1_000, "{}")));
        memtable
            .insert_new(rows, 0, 10, |_, _| Ok::<_, ()>(false))
            .unwrap();
        assert!(memtable.has_room(7, 10));
        assert!(!memtable.has_room(8, 10));
        let _flushing = memtable.start_flush();
        assert!(
            memtable.has_room(10, 10),
            "a flush takes the buffer's records"
        );
    }

    #[test]
    fn a_record_is_readable_at_once_and_never_overwritten_while_live() {
        let table = Memtable::default();
        assert!(insert(&table, "A", 1000, false));
        assert_eq!(table.get("A", 100), Lookup::Live(Bytes::from_static(b"{}")));
        assert!(
            !insert(&table, "A", 2000, false),
            "a live record keeps its number"
        );
        assert!(
            !insert(&table, "B", 2000, true),
            "so does a live record on disk"
        );
        assert_eq!(table.get("B", 100), Lookup::Unknown);
    }

    #[test]
    fn expired_records_read_as_expired_and_free_their_number() {
        let table = Memtable::default();
        assert!(insert(&table, "A", 150, false));
        assert_eq!(table.get("A", 200), Lookup::Expired);
        assert!(
            table
                .insert_new(
                    [("A".to_owned(), pending(900, "{}"))],
                    200,
                    10,
                    |_, _| Ok::<_, ()>(false)
                )
                .unwrap()[0]
        );
    }

    #[test]
    fn records_stay_readable_while_flushing_and_a_failed_flush_is_retried() {
        let table = Memtable::default();
        assert!(insert(&table, "A", 1000, false));
        let batch = table.start_flush();
        assert_eq!(batch.len(), 1);
        assert!(matches!(table.get("A", 100), Lookup::Live(_)));
        assert!(
            !insert(&table, "A", 1000, false),
            "still taken while flushing"
        );
        // The write failed: the next flush carries it again, with what came since.
        assert!(insert(&table, "B", 1000, false));
        let batch = table.start_flush();
        assert_eq!(batch.len(), 2);
        table.finish_flush(batch.clone());
        assert!(table.is_empty());
        assert_eq!(table.get("A", 100), Lookup::Unknown);
    }

    #[test]
    fn a_late_finish_never_drops_records_a_later_flush_took_over() {
        let table = Memtable::default();
        assert!(insert(&table, "A", 1000, false));
        let stuck = table.start_flush();
        // While the first write hangs, another flush takes A and the newer B into its batch.
        assert!(insert(&table, "B", 1000, false));
        let retry = table.start_flush();
        assert_eq!(retry.len(), 2);
        table.finish_flush(stuck.clone());
        assert!(
            matches!(table.get("B", 100), Lookup::Live(_)),
            "B is not on disk yet"
        );
        table.finish_flush(retry.clone());
        assert_eq!(table.get("A", 100), Lookup::Unknown);
    }

    #[test]
    fn a_full_buffer_refuses_more() {
        let table = Memtable::default();
        let many = (0..10).map(|i| (format!("N{i}"), pending(1000, "{}")));
        table
            .insert_new(many, 100, 10, |_, _| Ok::<_, ()>(false))
            .unwrap();
        assert_eq!(table.len(), 10);
        let refused = table.insert_new([("X".to_owned(), pending(1000, "{}"))], 100, 10, |_, _| {
            Ok::<_, ()>(false)
        });
        assert_eq!(refused, Err(InsertError::Full));
    }
}
