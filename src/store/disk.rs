//! The embedded store's watch on its disk. Once a write has failed, the disk has run low, the
//! data file was swapped or removed, or the disk stopped answering, nothing more is answered as
//! stored: every write is refused (a 503) with a reason a readiness probe can show, until the
//! cause is gone. Requests only read flags here; a background check every fraction of a second
//! measures the free space and the file.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What a refused write is refused for, in the order they are reported.
#[derive(Default)]
pub struct DiskGuard {
    /// Refuse new records below this many free bytes, so the records already answered still
    /// find room on the disk.
    min_free: u64,
    /// Free bytes at the last check.
    free: AtomicU64,
    low: AtomicBool,
    /// Set by a failed write, until the database has been re-opened; `has_failed_write`
    /// mirrors it, so the request path reads an atomic, not the lock.
    failed: Mutex<Option<String>>,
    has_failed_write: AtomicBool,
    /// The data file at the path is not the one open (removed, or replaced by a restore).
    replaced: AtomicBool,
    /// Writes that outlived the storage timeout and have not returned yet (a slow or frozen
    /// fsync): every write waits behind them, so writes are refused meanwhile.
    stalled_writes: AtomicUsize,
    /// Reads that did the same: the disk does not even read, and every call is refused. Reads
    /// do not wait behind a stalled write (redb reads the last commit), so a status poll during
    /// a slow fsync is still answered.
    stalled_reads: AtomicUsize,
    /// With write-behind: the longest records may wait in memory, and when they last reached
    /// the disk (Unix ms).
    window: Option<Duration>,
    last_flush_ms: AtomicI64,
}

/// Which guards a call must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads: refused only while reads hang (a stalled write does not hold them up).
    Read,
    /// Changes that free space or barely use it (a delete, a lease): refused while the disk
    /// fails or hangs, not when it is low.
    Change,
    /// New records and new versions: refused on any of the guards.
    Grow,
    /// The store's own writes while it recovers from a failure: refused only while the disk
    /// hangs.
    Repair,
}

impl DiskGuard {
    pub fn new(min_free: u64, window: Option<Duration>, now_ms: i64) -> Self {
        DiskGuard {
            min_free,
            free: AtomicU64::new(u64::MAX),
            window,
            last_flush_ms: AtomicI64::new(now_ms),
            ..DiskGuard::default()
        }
    }

    /// Why a call of this kind is refused now, if it is.
    pub fn refusal(&self, access: Access, now_ms: i64) -> Option<String> {
        const HUNG: &str = "the disk is not answering (frozen or far too slow)";
        if self.stalled_reads.load(Ordering::Relaxed) > 0 {
            return Some(HUNG.into());
        }
        if access == Access::Read {
            return None;
        }
        if self.stalled_writes.load(Ordering::Relaxed) > 0 {
            return Some(HUNG.into());
        }
        if access == Access::Repair {
            return None;
        }
        if self.has_failed_write.load(Ordering::Acquire)
            && let Some(reason) = lock(&self.failed).as_ref()
        {
            return Some(reason.clone());
        }
        if self.replaced.load(Ordering::Relaxed) {
            return Some("the data file was removed or replaced; re-opening it".into());
        }
        if access == Access::Change {
            return None;
        }
        if self.low.load(Ordering::Relaxed) {
            return Some(format!(
                "the disk has {} free, under --min-free-disk {}",
                bytes(self.free.load(Ordering::Relaxed)),
                bytes(self.min_free)
            ));
        }
        let window = self.window?;
        let waited = now_ms.saturating_sub(self.last_flush_ms.load(Ordering::Relaxed));
        (waited > window.as_millis() as i64)
            .then(|| format!("records have not reached the disk for {waited} ms"))
    }

    /// A write failed: refuse writes until [`DiskGuard::recovered`].
    pub fn failed(&self, reason: &str) {
        let mut failed = lock(&self.failed);
        if failed.is_none() {
            tracing::error!(
                reason,
                "a write to the disk failed; refusing writes until it recovers"
            );
            *failed = Some(format!("a write to the disk failed ({reason}); recovering"));
            self.has_failed_write.store(true, Ordering::Release);
        }
    }

    pub fn has_failed(&self) -> bool {
        self.has_failed_write.load(Ordering::Acquire) || self.replaced.load(Ordering::Relaxed)
    }

    /// The database was re-opened: writes may go on (the other guards still apply).
    pub fn recovered(&self) {
        let mut failed = lock(&self.failed);
        *failed = None;
        self.has_failed_write.store(false, Ordering::Release);
        drop(failed);
        self.replaced.store(false, Ordering::Relaxed);
    }

    /// Records reached the disk (or none were waiting) at `now_ms`.
    pub fn flushed(&self, now_ms: i64) {
        self.last_flush_ms.store(now_ms, Ordering::Relaxed);
    }

    /// A call of this kind outlived the storage timeout: until it returns, calls it would hold
    /// up are refused at once, so hung threads do not pile up.
    pub fn stall_began(&self, access: Access) {
        if self.stalled(access).fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(
                ?access,
                "a disk call outlived the storage timeout; refusing the calls it holds up"
            );
        }
    }

    pub fn stall_ended(&self, access: Access) {
        if self.stalled(access).fetch_sub(1, Ordering::Relaxed) == 1 {
            tracing::info!(?access, "the disk answers again");
        }
    }

    fn stalled(&self, access: Access) -> &AtomicUsize {
        match access {
            Access::Read => &self.stalled_reads,
            _ => &self.stalled_writes,
        }
    }

    /// Takes a measurement of the free space; whether it is below the minimum.
    pub fn measured(&self, free: u64) -> bool {
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.min_free;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    free = bytes(free),
                    min = bytes(self.min_free),
                    "disk space low; refusing new records"
                );
            } else {
                tracing::info!(free = bytes(free), "disk space back above the minimum");
            }
        }
        low
    }

    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    pub fn mark_replaced(&self) {
        if !self.replaced.swap(true, Ordering::Relaxed) {
            tracing::error!("the data file was removed or replaced under the running store");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes in a unit a person reads at a glance (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Room the file at `path` has claimed but not written yet: redb grows its file with
/// `set_len`, which makes a hole, not used blocks (one step once took a 67 MB file on a 60 MB
/// disk), and then fills the hole as it goes. Free space that ignores it runs out under the
/// floor without the floor ever showing it.
pub fn unwritten_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |meta| meta.size().saturating_sub(meta.blocks() * 512))
}

/// Which file `path` is (device and inode), and whether it is still linked; None if it is gone.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> DiskGuard {
        DiskGuard::new(1000, Some(Duration::from_secs(1)), 0)
    }

    #[test]
    fn a_healthy_disk_refuses_nothing() {
        let disk = guard();
        disk.measured(5000);
        for access in [Access::Read, Access::Change, Access::Grow] {
            assert_eq!(disk.refusal(access, 500), None);
        }
    }

    #[test]
    fn low_space_refuses_growth_only_and_clears_when_space_returns() {
        let disk = guard();
        assert!(disk.measured(999));
        let why = disk.refusal(Access::Grow, 0).unwrap();
        assert!(
            why.contains("999 B free") && why.contains("--min-free-disk"),
            "{why}"
        );
        assert_eq!(disk.refusal(Access::Change, 0), None);
        assert!(!disk.measured(1000));
        assert_eq!(disk.refusal(Access::Grow, 0), None);
    }

    #[test]
    fn a_failed_write_refuses_every_change_until_recovered() {
        let disk = guard();
        disk.failed("No space left on device");
        disk.failed("a second failure keeps the first reason");
        let why = disk.refusal(Access::Change, 0).unwrap();
        assert!(why.contains("No space left"), "{why}");
        assert_eq!(disk.refusal(Access::Read, 0), None, "reads go on");
        assert!(disk.has_failed());
        disk.recovered();
        assert_eq!(disk.refusal(Access::Grow, 0), None);
    }

    #[test]
    fn a_hung_read_refuses_everything_while_it_hangs() {
        let disk = guard();
        disk.stall_began(Access::Read);
        disk.stall_began(Access::Read);
        assert!(disk.refusal(Access::Read, 0).is_some());
        assert!(disk.refusal(Access::Repair, 0).is_some());
        disk.stall_ended(Access::Read);
        assert!(disk.refusal(Access::Grow, 0).is_some());
        disk.stall_ended(Access::Read);
        assert_eq!(disk.refusal(Access::Read, 0), None);
        assert_eq!(disk.refusal(Access::Grow, 0), None);
    }

    #[test]
    fn a_hung_write_refuses_writes_but_not_reads() {
        let disk = guard();
        disk.stall_began(Access::Change);
        for access in [Access::Change, Access::Grow, Access::Repair] {
            assert!(disk.refusal(access, 0).unwrap().contains("not answering"));
        }
        assert_eq!(disk.refusal(Access::Read, 0), None, "a status poll goes on");
        disk.stall_ended(Access::Change);
        assert_eq!(disk.refusal(Access::Grow, 0), None);
    }

    #[test]
    fn write_behind_refuses_new_records_once_the_disk_lags_past_the_window() {
        let disk = guard();
        assert_eq!(disk.refusal(Access::Grow, 1000), None);
        assert!(disk.refusal(Access::Grow, 1001).is_some());
        assert_eq!(disk.refusal(Access::Change, 5000), None);
        disk.flushed(5000);
        assert_eq!(disk.refusal(Access::Grow, 5500), None);
        let synchronous = DiskGuard::new(0, None, 0);
        assert_eq!(synchronous.refusal(Access::Grow, 1_000_000), None);
    }

    #[test]
    fn a_replaced_file_refuses_changes() {
        let disk = guard();
        disk.mark_replaced();
        assert!(
            disk.refusal(Access::Change, 0)
                .unwrap()
                .contains("removed or replaced")
        );
        disk.recovered();
        assert_eq!(disk.refusal(Access::Change, 0), None);
    }

    #[test]
    fn sizes_read_easily() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn measures_a_real_filesystem_and_file() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let file = dir.path().join("f");
        assert_eq!(file_identity(&file), None);
        assert_eq!(unwritten_bytes(&file), 0);
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        assert!(unwritten_bytes(&dir.path().join("sparse")) >= 60 << 20);
        std::fs::write(&file, b"x").unwrap();
        let first = file_identity(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::write(dir.path().join("g"), b"keeps the inode busy").unwrap();
        std::fs::write(&file, b"y").unwrap();
        assert_ne!(file_identity(&file), Some(first), "a new file at the path");
    }
}
