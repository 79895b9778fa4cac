//! Logging: `tracing` events as readable lines or JSON objects on stderr, filtered by RUST_LOG.
//!
//! At one access line per request, writing each line with its own system call (or handing it to
//! a writer thread, which costs a wake-up per line) took a tenth of the service's throughput.
//! So lines gather in a buffer that is written out when it fills, every `FLUSH_EVERY`, and at
//! once for warnings and errors, which should never wait.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Buffered lines are written out at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;

/// Installs the global subscriber. Keep the guard until exit: dropping it writes the last lines.
pub fn init(format: LogFormat) -> LogGuard {
    let out = LineBuffer::default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_env_filter(filter);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    let flusher = out.clone();
    std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.flush();
            }
        })
        .ok();
    LogGuard(out)
}

/// Writes out the lines still buffered when dropped.
pub struct LogGuard(LineBuffer);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Formatted lines waiting to go to stderr.
#[derive(Clone, Default)]
pub struct LineBuffer(Arc<Mutex<Vec<u8>>>);

impl LineBuffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn flush(&self) {
        let mut buffer = self.lock();
        write_out(&mut buffer);
    }
}

fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        // Nowhere to report a failed write to stderr: the lines are dropped.
        let _ = std::io::stderr().lock().write_all(buffer);
        buffer.clear();
    }
}

/// One event's line: appended to the buffer, and written out at once when urgent.
pub struct Line {
    buffer: LineBuffer,
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.buffer.lock();
        buffer.extend_from_slice(bytes);
        if self.urgent || buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LineBuffer {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buffer: self.clone(),
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            buffer: self.clone(),
            urgent: *meta.level() <= Level::WARN,
        }
    }
}
