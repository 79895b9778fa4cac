//! Leasing serials from the data file's counter ([`LeaseSource`]): a block is committed with
//! fsync before any of its serials is used.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redb::ReadableTable;

use crate::domain::codec::NODE_SERIALS;
use crate::serials::MAX_CLOCK_WAIT;
use crate::store::disk::Access;
use crate::store::{LeaseSource, StoreError, clock_serial};

use super::{BUCKETS, EmbeddedStore, ISSUED, META, SERIAL_NEXT, begin_durable, corrupt, db_err};

#[async_trait]
impl LeaseSource for EmbeddedStore {
    /// Serials count microseconds since 2025 in a node's partition, and none is handed out
    /// before the clock has passed it.
    fn paced_in(&self) -> Option<u64> {
        Some(NODE_SERIALS)
    }

    /// A block starts past the counter, the caller's floor, every record on disk, and the
    /// clock: serials count microseconds since 2025, and none is handed out before the clock
    /// has passed it (the pool paces them, [`LeaseSource::paced_in`]). So no state of the file
    /// (truncated, deleted, restored from a backup) can bring back a serial that was issued: a
    /// restart always starts at the clock, past them. A block is handed over at once and its
    /// serials come due one by one as the clock passes them: a block that waited for the clock
    /// to pass its end held every serial of it back (the pool of a busy instance ran dry for
    /// up to 500 ms as its blocks grew, and four batches got a 503).
    ///
    /// Each node counts in its own partition of the serial space ([`NODE_SERIALS`] from
    /// `node * NODE_SERIALS`), so instances with distinct node ids never meet.
    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let base = u64::from(self.node) * NODE_SERIALS;
        let top = base + NODE_SERIALS;
        let clock = base + clock_serial(SystemTime::now());
        let bucket = self.bucket;
        let range = self
            .blocking(Access::Change, move |db| {
                // The block is on disk before any serial of it is handed out.
                let tx = begin_durable(db)?;
                let range = {
                    let mut meta = tx.open_table(META).map_err(db_err)?;
                    let next = match meta.get(SERIAL_NEXT).map_err(db_err)? {
                        Some(v) => u64::from_be_bytes(v.value().try_into().map_err(corrupt)?),
                        None => 0,
                    };
                    // Past every record of this node on disk too, should the counter ever have
                    // gone back.
                    let past_records = tx
                        .open_table(ISSUED)
                        .map_err(db_err)?
                        .range(base..top)
                        .map_err(db_err)?
                        .next_back()
                        .transpose()
                        .map_err(db_err)?
                        .map_or(0, |(serial, _)| serial.value() + 1);
                    // A bucket is passed whole: its last entries may be damaged, and unreadable.
                    let past_buckets = tx
                        .open_table(BUCKETS)
                        .map_err(db_err)?
                        .range(bucket.ids_of(base..top))
                        .map_err(db_err)?
                        .next_back()
                        .transpose()
                        .map_err(db_err)?
                        .map_or(0, |(id, _)| bucket.end_of(id.value()));
                    let start = next
                        .max(floor)
                        .max(past_records)
                        .max(past_buckets)
                        .max(clock);
                    let end = start
                        .checked_add(size)
                        .filter(|&end| end <= top)
                        .ok_or_else(|| {
                            StoreError::Bug("this node's serial space is exhausted".into())
                        })?;
                    meta.insert(SERIAL_NEXT, end.to_be_bytes().as_slice())
                        .map_err(db_err)?;
                    start..end
                };
                tx.commit().map_err(db_err)?;
                Ok(range)
            })
            .await?;
        warn_if_far_ahead(range.start - base);
        Ok(range)
    }
}

/// Says so when `serial` is further ahead of the clock than the pool waits for
/// ([`MAX_CLOCK_WAIT`]): the clock went back.
fn warn_if_far_ahead(serial: u64) {
    let ahead = Duration::from_micros(serial.saturating_sub(clock_serial(SystemTime::now())));
    if ahead > MAX_CLOCK_WAIT {
        tracing::warn!(
            ?ahead,
            "the serial counter is ahead of the clock (did the clock go back?); until it \
             catches up, a wiped data file could repeat numbers"
        );
    }
}
