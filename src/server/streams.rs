//! Idleness of an HTTP/2 connection: the streams it has open, since when it has had none, and
//! whether a streamed reply has stopped moving. hyper closes an idle HTTP/1.1 connection itself
//! (no request head within the timeout), but an HTTP/2 one stays up for as long as the client
//! answers hyper's keep-alive pings: three clients that did so and asked for nothing held three
//! slots for good. Nor does a reply stall on the socket there: a client that stops granting
//! flow-control window stops it while the socket stays free.
//!
//! A stream counts from its request until its reply's body is sent or dropped. Per stream this is
//! a shared counter and, when the last one ends, one clock read; a streamed reply (one whose
//! length is not known, such as an import's results) also notes when hyper last took a piece.
//! The connection's own task checks once per idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

pub struct Streams {
    open: AtomicUsize,
    /// When the last stream ended (or the connection began), in nanoseconds since `start`.
    quiet_since: AtomicU64,
    start: Instant,
    /// The streamed replies under way: when hyper last took a piece of each ([`MOVING`]).
    streamed: Mutex<Vec<Weak<AtomicU64>>>,
}

/// A streamed reply's note while it is the body's own turn (reading the next piece), not the
/// client's: its wait does not count.
const OURS: u64 = 0;

/// Why a connection's wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Idle {
    /// No stream open for the idle timeout: the connection is closed gracefully.
    Quiet,
    /// A streamed reply waited the idle timeout for the client to take its next piece.
    Stalled,
}

impl Streams {
    pub fn new() -> Arc<Streams> {
        Arc::new(Streams {
            open: AtomicUsize::new(0),
            quiet_since: AtomicU64::new(0),
            start: Instant::now(),
            streamed: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        // Never `OURS`: a nanosecond after the start at least.
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// The moment `now` noted (the start for 0).
    fn at(&self, nanos: u64) -> Instant {
        self.start + Duration::from_nanos(nanos.saturating_sub(1))
    }

    /// A streamed reply begins: the note of its progress.
    fn streamed_reply(&self) -> Arc<AtomicU64> {
        let note = Arc::new(AtomicU64::new(self.now()));
        let mut streamed = self.streamed.lock().unwrap_or_else(|e| e.into_inner());
        streamed.retain(|reply| reply.strong_count() > 0);
        streamed.push(Arc::downgrade(&note));
        note
    }

    /// When the streamed reply that has waited longest for the client last moved.
    fn longest_wait(&self) -> Option<Instant> {
        let streamed = self.streamed.lock().unwrap_or_else(|e| e.into_inner());
        let notes = streamed.iter().filter_map(Weak::upgrade);
        let moved = notes.map(|note| note.load(Ordering::Acquire));
        moved.filter(|&at| at != OURS).min().map(|at| self.at(at))
    }

    /// A stream begins; it ends when the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Resolves once the connection has had no open stream for `idle`, or one of its streamed
    /// replies has waited `idle` for the client.
    pub async fn idle_for(&self, idle: Duration) -> Idle {
        let mut deadline = self.start + idle;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            let waiting = self.longest_wait();
            if waiting.is_some_and(|since| since + idle <= now) {
                return Idle::Stalled;
            }
            deadline = if self.open.load(Ordering::Acquire) > 0 {
                now + idle
            } else {
                let quiet = self.at(self.quiet_since.load(Ordering::Acquire)) + idle;
                if quiet <= now {
                    return Idle::Quiet;
                }
                quiet
            };
            if let Some(since) = waiting {
                deadline = deadline.min(since + idle);
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
        streams
            .quiet_since
            .fetch_max(streams.now(), Ordering::AcqRel);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reply body that keeps its stream open until it is sent or dropped, and notes the
/// progress of a streamed one.
pub struct Tracked<B> {
    body: B,
    /// A streamed reply's note: when hyper last took a piece, or [`OURS`] while the body is
    /// getting the next one.
    moved: Option<Arc<AtomicU64>>,
    stream: StreamGuard,
}

impl<B: Body> Tracked<B> {
    pub fn new(body: B, stream: StreamGuard) -> Tracked<B> {
        let streamed = !body.is_end_stream() && body.size_hint().exact().is_none();
        Tracked {
            moved: streamed.then(|| stream.0.streamed_reply()),
            body,
            stream,
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
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(moved) = &this.moved {
            let note = match polled {
                Poll::Pending => OURS,
                Poll::Ready(_) => this.stream.0.now(),
            };
            moved.store(note, Ordering::Release);
        }
        polled
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
        let idle = streams.idle_for(Duration::from_secs(3)).await;
        assert_eq!(
            (idle, started.elapsed()),
            (Idle::Quiet, Duration::from_secs(3))
        );
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
        let idle = streams.idle_for(Duration::from_secs(3)).await;
        assert_eq!(
            (idle, started.elapsed()),
            (Idle::Quiet, Duration::from_secs(13))
        );
        ends.await.unwrap();
    }

    /// A body of `pieces` pieces, the next one ready only when `ready` says so.
    struct Pieces {
        left: usize,
        ready: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Body for Pieces {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            if !self.ready.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"piece")))))
        }
    }

    fn poll_once<B: Body + Unpin>(body: &mut Tracked<B>) {
        let waker = std::task::Waker::noop();
        let _ = Pin::new(body).poll_frame(&mut Context::from_waker(waker));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_reply_the_client_stops_taking_stalls_the_connection() {
        let streams = Streams::new();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let body = Pieces {
            left: 10,
            ready: ready.clone(),
        };
        let mut reply = Tracked::new(body, streams.open());
        let started = Instant::now();
        let taker = tokio::spawn(async move {
            // hyper takes a piece every 2 s, then no more after 8 s.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                poll_once(&mut reply);
            }
            reply
        });
        let idle = streams.idle_for(Duration::from_secs(3)).await;
        assert_eq!(
            (idle, started.elapsed()),
            (Idle::Stalled, Duration::from_secs(11))
        );
        drop(taker.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_reply_waiting_on_its_own_body_is_not_stalled() {
        let streams = Streams::new();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Pieces {
            left: 1,
            ready: ready.clone(),
        };
        let mut reply = Tracked::new(body, streams.open());
        poll_once(&mut reply); // the body is reading its next piece from storage, say
        let started = Instant::now();
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            ready.store(true, Ordering::SeqCst);
            poll_once(&mut reply);
            poll_once(&mut reply);
            drop(reply);
        });
        let idle = streams.idle_for(Duration::from_secs(3)).await;
        assert_eq!(
            (idle, started.elapsed()),
            (Idle::Quiet, Duration::from_secs(13))
        );
        ends.await.unwrap();
    }
}
