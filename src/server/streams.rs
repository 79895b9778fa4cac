//! Idleness of an HTTP/2 connection: the streams it has open, and since when it has had none.
//! hyper closes an idle HTTP/1.1 connection itself (no request head within the timeout), but an
//! HTTP/2 one stays up for as long as the client answers hyper's keep-alive pings: three clients
//! that did so and asked for nothing held three slots for good.
//!
//! A stream counts from its request until its reply's body is sent or dropped. Per stream this is
//! a shared counter and, when the last one ends, one clock read; the connection's own task checks
//! once per idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

pub struct Streams {
    open: AtomicUsize,
    /// When the last stream ended (or the connection began), in nanoseconds since `start`.
    quiet_since: AtomicU64,
    start: Instant,
}

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            start: Instant::now(),
        })
    }

    /// A stream begins; it ends when the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Resolves once the connection has had no open stream for `idle`.
    pub async fn quiet_for(&self, idle: Duration) {
        let mut deadline = self.start + idle;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            if self.open.load(Ordering::Acquire) > 0 {
                deadline = now + idle;
                continue;
            }
            let since = Duration::from_nanos(self.quiet_since.load(Ordering::Acquire));
            deadline = self.start + since + idle;
            if deadline <= now {
                return;
            }
        }
    }
}

/// An open stream, until dropped.
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        // Noted before the count falls, so that a check that sees no stream open also sees when
        // the last one ended.
        let now = streams.start.elapsed().as_nanos() as u64;
        streams.quiet_since.fetch_max(now, Ordering::AcqRel);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reply body that keeps its stream open until it is sent or dropped.
pub struct Tracked<B> {
    body: B,
    _stream: StreamGuard,
}

impl<B> Tracked<B> {
    pub fn new(body: B, stream: StreamGuard) -> Tracked<B> {
        Tracked {
            body,
            _stream: stream,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_opens_a_stream_is_quiet_after_the_timeout() {
        let streams = Streams::new();
        let started = Instant::now();
        streams.quiet_for(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_it_busy_and_the_clock_starts_when_the_last_one_ends() {
        let streams = Streams::new();
        let started = Instant::now();
        let first = streams.open();
        let second = streams.open();
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(first);
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(second);
        });
        streams.quiet_for(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(13));
        ends.await.unwrap();
    }
}
