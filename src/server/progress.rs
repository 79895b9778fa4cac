//! Progress deadlines: a reply whose bytes the socket stops taking, or a request body that stops
//! arriving, fails once it has waited `--idle-timeout` without a step forward. hyper bounds only
//! the wait for a request head; before these, a client that asked for a 12 MB download and never
//! read held its connection slot, and its buffers, for as long as it liked.
//!
//! Only a wait costs anything: a write the socket takes at once, or a body frame already
//! received, touches neither the clock nor a timer. The first wait arms one timer (per
//! connection, or per body), and each later wait moves it; a step forward just clears a flag.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a wait may last, and the wait under way.
struct Stall {
    idle: Duration,
    /// Set by a wait, cleared by a step forward: a wait that finds it clear is a new one.
    waiting: bool,
    /// Armed at the first wait, then moved to each new wait's deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    fn new(idle: Duration) -> Stall {
        Stall {
            idle,
            waiting: false,
            timer: None,
        }
    }

    /// A step forward: the next wait starts its own clock.
    #[inline]
    fn moved(&mut self) {
        self.waiting = false;
    }

    /// The operation has to wait: true once the wait has lasted the idle timeout, with nothing
    /// moving since it began; until then, `cx` is woken when it would have.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let timer = match &mut self.timer {
            Some(timer) if self.waiting => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + idle);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(idle))),
        };
        self.waiting = true;
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A connection's socket whose writes fail once one has waited the idle timeout: the client
/// stopped reading its reply. (Reads are bounded elsewhere: hyper's head timeout, the body's
/// own deadline, and the HTTP/2 idle close.)
pub struct Watched<T> {
    io: T,
    stall: Stall,
}

impl<T> Watched<T> {
    pub fn new(io: T, idle: Duration) -> Watched<T> {
        Watched {
            io,
            stall: Stall::new(idle),
        }
    }

    fn check(
        &mut self,
        cx: &mut Context<'_>,
        wrote: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match wrote {
            Poll::Pending if self.stall.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing of the reply for the idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
            done => {
                self.stall.moved();
                done
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, wrote)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request's body as handlers read it: hyper's, failing with [`BodyError::Stalled`] once the
/// handler has waited the idle timeout for the next piece.
pub struct RequestBody {
    inner: Incoming,
    stall: Stall,
}

impl RequestBody {
    pub fn new(inner: Incoming, idle: Duration) -> RequestBody {
        RequestBody {
            inner,
            stall: Stall::new(idle),
        }
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("nothing more of the body arrived for {0:?}")]
    Stalled(Duration),
    #[error("the body could not be read: {0}")]
    Broken(#[from] hyper::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending if this.stall.expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Stalled(this.stall.idle))))
            }
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => {
                this.stall.moved();
                Poll::Ready(frame.map(|frame| frame.map_err(BodyError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn context() -> (Arc<Flag>, std::task::Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), flag.into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_expires_after_the_idle_timeout_and_a_step_forward_starts_a_new_one() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut stall = Stall::new(Duration::from_secs(10));
        assert!(!stall.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!stall.expired(&mut cx), "the same wait, not over yet");
        stall.moved();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!stall.expired(&mut cx), "a new wait starts its own clock");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!stall.expired(&mut cx));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(stall.expired(&mut cx), "ten seconds of one wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_caller_is_woken_when_its_wait_runs_out() {
        let (flag, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut stall = Stall::new(Duration::from_secs(3));
        assert!(!stall.expired(&mut cx));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(flag.0.load(Ordering::SeqCst), "woken to find the wait over");
        assert!(stall.expired(&mut cx));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_idle_timeout() {
        // A pipe whose other end reads nothing: its buffer fills, then writes wait.
        let (near, _far) = tokio::io::duplex(1024);
        let mut watched = Watched::new(near, Duration::from_secs(5));
        let started = Instant::now();
        let err = tokio::io::AsyncWriteExt::write_all(&mut watched, &[0u8; 4096])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_slowly_but_steadily_gets_everything() {
        let (near, mut far) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                match tokio::io::AsyncReadExt::read(&mut far, &mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got += n,
                }
            }
        });
        let mut watched = Watched::new(near, Duration::from_secs(5));
        tokio::io::AsyncWriteExt::write_all(&mut watched, &[0u8; 8192])
            .await
            .expect("each wait is shorter than the idle timeout");
        drop(watched);
        assert_eq!(reader.await.unwrap(), 8192);
    }
}
