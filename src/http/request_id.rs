//! Request ids: a sane incoming `X-Request-Id` is kept, anything else is replaced by a fresh
//! one (the edge's `Telemetry` puts it on the reply). The id of the request being served is in a task-local, so that
//! problem bodies built anywhere below can carry it.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::HeaderValue;
use tokio::task::futures::TaskLocalFuture;

pub const HEADER: &str = "x-request-id";
/// Longest incoming id kept; longer ones are replaced, not echoed.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: HeaderValue;
}

/// Keeps an incoming id when it is 1 to 128 characters of letters, digits and `-_.:/+=@`.
pub fn accept(incoming: Option<&HeaderValue>) -> Option<HeaderValue> {
    let value = incoming?;
    let bytes = value.as_bytes();
    let sane = !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b));
    sane.then(|| value.clone())
}

/// A fresh id: a random per-process prefix and a counter, so ids never repeat across instances
/// or within one, and cost no system call.
pub fn generate() -> HeaderValue {
    static PREFIX: LazyLock<u64> = LazyLock::new(rand::random);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let mut raw = [0u8; 12];
    raw[..8].copy_from_slice(&PREFIX.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut id = [0u8; 24];
    hex::encode_to_slice(raw, &mut id).expect("24 digits for 12 bytes");
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `work`, run with `id` as the current request id.
pub fn scope<F: Future>(id: HeaderValue, work: F) -> TaskLocalFuture<HeaderValue, F> {
    CURRENT.scope(id, work)
}

/// Runs `work` now with `id` as the current request id.
pub fn sync_scope<R>(id: HeaderValue, work: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(id, work)
}

/// The id of the request being served on this task, as its header value.
pub fn current_header() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    CURRENT
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_the_rest() {
        let ok = HeaderValue::from_static("req-42_a.b:c/d+e=f@g");
        assert_eq!(accept(Some(&ok)), Some(ok.clone()));
        for bad in ["", "has space", "semi;colon", "quote\"", &"x".repeat(129)] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert_eq!(accept(Some(&value)), None, "{bad:?}");
        }
        assert_eq!(accept(None), None);
    }

    #[test]
    fn generated_ids_differ_and_are_sane() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(accept(Some(&a)), Some(a.clone()));
        assert_eq!(a.len(), 24);
    }

    #[tokio::test]
    async fn the_current_id_is_seen_inside_the_scope_only() {
        assert_eq!(current(), None);
        let id = HeaderValue::from_static("abc");
        let seen = scope(id, async { current() }).await;
        assert_eq!(seen.as_deref(), Some("abc"));
    }
}
