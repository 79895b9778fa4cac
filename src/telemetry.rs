//! Logging: `tracing` events as readable lines or JSON objects on stderr, filtered by RUST_LOG.
//!
//! Lines go to stderr through `tracing_appender`'s non-blocking writer: a request hands its
//! line to a bounded channel, and one thread writes what waits there, many lines to a system
//! call (a `BufWriter` it flushes whenever the channel is empty), so a request never waits on
//! stderr while the channel has room. No line is dropped: when stderr is so slow that
//! `BUFFERED_LINES` lines wait, a request waits for room, as it waited on the write before.
//! The access line itself is formatted here, in the same two formats, rather than by the
//! tracing formatter, which took three times as long for it; it still obeys RUST_LOG (target
//! `tracknum::access`).

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tracing::Level;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines that may wait for stderr: about a tenth of a second of access lines at full speed, a
/// couple of MiB (what the buffer of the hand-written writer before this held).
const BUFFERED_LINES: usize = 8 * 1024;
/// What the writer thread gathers before a system call, at most.
const WRITE_BUFFER: usize = 64 * 1024;

/// Installs the global subscriber. Keep the guard until exit: dropping it writes the last lines
/// (waiting a second at most).
pub fn init(format: LogFormat) -> WorkerGuard {
    let (out, guard) = writer(std::io::stderr());
    let _ = ACCESS_LOG.set((out.clone(), format));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(out)
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
    guard
}

/// The log's writer in front of `sink` (see the module documentation).
fn writer(sink: impl Write + Send + 'static) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, sink))
}

/// Where access lines go, and in which format; unset (no access lines) until `init`.
static ACCESS_LOG: OnceLock<(NonBlocking, LogFormat)> = OnceLock::new();

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
        // Fails only once the writer has stopped (the process is ending): nowhere to say so.
        let _ = out.clone().write_all(text.as_bytes());
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

    /// A sink that takes its time, and keeps what it was given.
    #[derive(Clone, Default)]
    struct Slow(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Slow {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(1));
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_sink_loses_no_line_and_the_guard_writes_the_last_ones() {
        let sink = Slow::default();
        let (out, guard) = writer(sink.clone());
        let lines = 3 * BUFFERED_LINES;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let mut out = out.clone();
                std::thread::spawn(move || {
                    for i in 0..lines / 2 {
                        out.write_all(format!("{w} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), lines);
        for w in 0..2 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{w} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..lines / 2).collect::<Vec<_>>(), "in order");
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
