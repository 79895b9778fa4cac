//! Logging: `tracing` events as readable lines or JSON objects on stderr, filtered by RUST_LOG.
//!
//! At one access line per request, writing each line with its own system call (or handing it to
//! a writer thread, which costs a wake-up per line) took a tenth of the service's throughput.
//! tracing-appender's non-blocking writer is such a thread: tried in December 2026, it cost
//! 3.7 µs of CPU per request (17.1 → 20.8 µs, embedded, under wrk), about 0.1 of the ratio to
//! the ceiling, in futex wake-ups of its writer. So this writer stays ours.
//! So lines gather in a buffer that is written out when it fills, every `FLUSH_EVERY`, and at
//! once for warnings and errors, which should never wait. The access line itself is formatted
//! here, in the same two formats, rather than by the tracing formatter, which took three times
//! as long for it; it still obeys RUST_LOG (target `tracknum::access`).

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Buffered lines are written out at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once (about a tenth of a second of access lines at
/// full speed, so the flusher thread normally gets there first).
const FLUSH_AT: usize = 1024 * 1024;

/// Installs the global subscriber. Keep the guard until exit: dropping it writes the last lines.
pub fn init(format: LogFormat) -> LogGuard {
    let out = LineBuffer::default();
    let _ = ACCESS_LOG.set((out.clone(), format));
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

/// Formatted lines waiting to go to stderr. Appending takes one short lock; writing out swaps
/// the lines for an empty buffer and writes them outside that lock, so requests never wait on
/// stderr. Writers take turns (the second lock), which keeps the lines in order.
#[derive(Clone, Default)]
pub struct LineBuffer(Arc<Lines>);

#[derive(Default)]
struct Lines {
    pending: Mutex<Vec<u8>>,
    /// The buffer being written out; held while writing.
    writing: Mutex<Vec<u8>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl LineBuffer {
    /// Adds `bytes`; returns how many bytes wait now.
    fn append(&self, bytes: &[u8]) -> usize {
        let mut pending = lock(&self.0.pending);
        pending.extend_from_slice(bytes);
        pending.len()
    }

    pub fn flush(&self) {
        let mut out = lock(&self.0.writing);
        std::mem::swap(&mut *lock(&self.0.pending), &mut *out);
        if !out.is_empty() {
            // Nowhere to report a failed write to stderr: the lines are dropped.
            let _ = std::io::stderr().lock().write_all(&out);
            out.clear();
        }
    }
}

/// One event's line: appended to the buffer, and written out at once when urgent.
pub struct Line {
    buffer: LineBuffer,
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let waiting = self.buffer.append(bytes);
        if self.urgent || waiting >= FLUSH_AT {
            self.buffer.flush();
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

/// Where access lines go, and in which format; unset (no access lines) until `init`.
static ACCESS_LOG: OnceLock<(LineBuffer, LogFormat)> = OnceLock::new();

/// One request, as its access line tells it.
pub struct Access<'a> {
    pub method: &'static str,
    pub route: &'static str,
    pub path: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub request_id: &'a str,
    pub client: IpAddr,
    /// The API key's name, never the key.
    pub key: Option<&'a str>,
}

/// Writes the access line of a request, when RUST_LOG lets `tracknum::access` through.
pub fn access(line: &Access<'_>) {
    if !tracing::enabled!(target: "tracknum::access", Level::INFO) {
        return;
    }
    let Some((out, format)) = ACCESS_LOG.get() else {
        return;
    };
    thread_local! {
        static TEXT: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
    }
    TEXT.with_borrow_mut(|text| {
        text.clear();
        format_access(text, line, *format, SystemTime::now());
        if out.append(text.as_bytes()) >= FLUSH_AT {
            out.flush();
        }
    });
}

fn format_access(text: &mut String, line: &Access<'_>, format: LogFormat, now: SystemTime) {
    let micros = line.latency.as_micros();
    let key = line.key.unwrap_or("-");
    // Writing into a String cannot fail. Text goes in with `push_str`, numbers and the address
    // with `write!`: one pass, no allocation.
    match format {
        LogFormat::Human => {
            push_timestamp(text, now);
            text.push_str("  INFO tracknum::access: request method=");
            text.push_str(line.method);
            text.push_str(" route=");
            text.push_str(line.route);
            let _ = write!(text, " path={} status={}", Escaped(line.path), line.status);
            let _ = write!(
                text,
                " latency_us={micros} request_id={}",
                Escaped(line.request_id)
            );
            let _ = write!(text, " client={} key=", line.client);
            text.push_str(key);
            text.push('\n');
        }
        LogFormat::Json => {
            text.push_str(r#"{"timestamp":""#);
            push_timestamp(text, now);
            text.push_str(r#"","level":"INFO","message":"request","method":""#);
            text.push_str(line.method);
            text.push_str(r#"","route":""#);
            text.push_str(line.route);
            text.push_str(r#"","path":"#);
            push_json_string(text, line.path);
            let _ = write!(
                text,
                r#","status":{},"latency_us":{micros},"request_id":"#,
                line.status
            );
            push_json_string(text, line.request_id);
            let _ = write!(text, r#","client":"{}","key":"#, line.client);
            push_json_string(text, key);
            text.push_str(r#","target":"tracknum::access"}"#);
            text.push('\n');
        }
    }
}

/// `now` in RFC 3339 with microseconds, UTC. The date and time up to the second are formatted
/// once a second (per thread); each line adds its microseconds.
fn push_timestamp(text: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != since.as_secs() {
            *second = since.as_secs();
            prefix.clear();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            // `YYYY-MM-DDTHH:MM:SSZ`: keep all but the `Z`.
            let _ = write!(prefix, "{}", humantime::format_rfc3339_seconds(whole));
            prefix.pop();
        }
        text.push_str(prefix);
    });
    let _ = write!(text, ".{:06}Z", since.subsec_micros());
}

/// `value` as a JSON string: as it is between quotes when nothing in it needs escaping.
fn push_json_string(text: &mut String, value: &str) {
    let plain = value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        text.push('"');
        text.push_str(value);
        text.push('"');
    } else {
        text.push_str(&serde_json::Value::from(value).to_string());
    }
}

/// Text for a human log line: as it is when it is plain printable ASCII (nearly always, and
/// written in one piece), else escaped so that it stays on one line.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plain =
            (self.0.bytes()).all(|b| b.is_ascii_graphic() && !matches!(b, b'\\' | b'"' | b'\''));
        match plain {
            true => f.write_str(self.0),
            false => write!(f, "{}", self.0.escape_debug()),
        }
    }
}

/// A panic's message, for the log only (never for a client).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Access<'static> {
        Access {
            method: "GET",
            route: "/v1/tracking-numbers/{tn}",
            path: "/v1/tracking-numbers/\"odd\"",
            status: 404,
            latency: Duration::from_micros(1234),
            request_id: "req-1",
            client: "10.0.0.7".parse().unwrap(),
            key: Some("shop-a"),
        }
    }

    #[test]
    fn json_access_lines_are_json_with_every_field() {
        let mut text = String::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        format_access(&mut text, &line(), LogFormat::Json, at);
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["timestamp"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "tracknum::access");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["route"], "/v1/tracking-numbers/{tn}");
        assert_eq!(value["path"], "/v1/tracking-numbers/\"odd\"");
        assert_eq!(value["status"], 404);
        assert_eq!(value["latency_us"], 1234);
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["client"], "10.0.0.7");
        assert_eq!(value["key"], "shop-a");
    }

    #[test]
    fn human_access_lines_are_one_line_of_fields() {
        let mut text = String::new();
        let mut open = line();
        open.key = None;
        open.path = "/x\ny";
        format_access(&mut text, &open, LogFormat::Human, SystemTime::UNIX_EPOCH);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(" INFO tracknum::access: request method=GET "),
            "{text}"
        );
        assert!(text.contains("status=404 latency_us=1234 request_id=req-1 client=10.0.0.7 key=-"));
        assert!(text.contains(r"path=/x\ny"), "{text}");
    }
}
