//! Leasing serials from the counter ([`LeaseSource`]) with [`super::scripts::LEASE`].

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;

use super::{FINGERPRINT_KEY, HISTORY_KEY, LEAD, LEASE_LEAST, RedisStore, SERIAL_KEY, SKEW_MARGIN};
use crate::domain::codec::SERIAL_SPACE;
use crate::store::{FLOOR_EPOCH_UNIX_SECS, LeaseSource, StoreError};

/// The lease script refuses with `TRACKNUM_SECRET_MISMATCH <stored fingerprint>` or with
/// `TRACKNUM_AHEAD <µs>` (the lease would run too far ahead of the clock: retry that much later).
fn lease_error(err: redis::RedisError, ours: &str) -> StoreError {
    let text = err.to_string();
    if let Some(at) = text.find("TRACKNUM_AHEAD") {
        let micros = text[at + "TRACKNUM_AHEAD".len()..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|token| !token.is_empty())
            .and_then(|token| token.parse().ok())
            .unwrap_or(1000);
        return StoreError::WaitForClock(Duration::from_micros(micros));
    }
    match text.find("TRACKNUM_SECRET_MISMATCH") {
        Some(at) => {
            let rest = &text[at + "TRACKNUM_SECRET_MISMATCH".len()..];
            let stored = rest
                .split(|c: char| !c.is_ascii_alphanumeric())
                .find(|token| !token.is_empty())
                .unwrap_or("");
            StoreError::SecretMismatch {
                stored: stored.to_owned(),
                ours: ours.to_owned(),
            }
        }
        None => StoreError::Unavailable(text),
    }
}

#[async_trait]
impl LeaseSource for RedisStore {
    /// The lease script's lead and jump guard a counter that moved back.
    fn paced_in(&self) -> Option<u64> {
        None
    }

    async fn lease(&self, size: u64, floor: u64) -> Result<Range<u64>, StoreError> {
        let fingerprint = &self.options.fingerprint;
        let (start, end): (u64, u64) = self
            .bounded(async {
                let mut conn = self.link.get().await?;
                let reply = self
                    .lease_script
                    .key(SERIAL_KEY)
                    .key(FINGERPRINT_KEY)
                    .key(HISTORY_KEY)
                    .arg(size)
                    .arg(floor)
                    .arg(FLOOR_EPOCH_UNIX_SECS)
                    .arg(fingerprint)
                    .arg(LEAD)
                    .arg(SKEW_MARGIN)
                    .arg(LEASE_LEAST)
                    .invoke_async(&mut conn)
                    .await;
                reply.map_err(|e| {
                    self.link.failed(&e);
                    lease_error(e, fingerprint)
                })
            })
            .await?;
        // Defence in depth: never accept a block below one this instance already used.
        if start < floor || end > SERIAL_SPACE || start >= end || end - start > size {
            return Err(StoreError::Corrupt(format!(
                "Redis leased {start}..{end} for {size} serials: below this instance's floor {floor}, past the serial space or longer than asked"
            )));
        }
        Ok(start..end)
    }
}
