//! The end of a run: the summary (for people, or as JSON for machines) and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::ledger::Duplicate;
use crate::stats::{Second, Stats};

#[derive(Debug, Serialize)]
pub struct Summary {
    /// `GET http://host/next-tracking-number?...`
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    pub connections: u32,
    /// Open loop: the rate asked for.
    pub target_rate: Option<f64>,
    pub started_at_unix_ms: u64,
    pub elapsed_s: f64,
    /// Exchanges tried: replies plus exchanges that got none.
    pub requests: u64,
    pub replies: u64,
    /// Replies per second.
    pub rate: f64,
    /// Distinct numbers received.
    pub numbers: u64,
    pub latency_ms: Latency,
    pub statuses: BTreeMap<String, u64>,
    /// Exchanges with no reply, by why.
    pub failures: BTreeMap<&'static str, u64>,
    /// Open loop: requests due within the run but never sent, because every connection was
    /// still waiting for a reply when the run ended (plus --timeout).
    pub unsent: u64,
    /// Non-2xx replies plus exchanges with no reply.
    pub errors: u64,
    pub error_rate: f64,
    pub max_error_rate: f64,
    /// When the first and last errors happened, in ms since the start.
    pub first_error_ms: Option<f64>,
    pub last_error_ms: Option<f64>,
    pub invalid: u64,
    pub invalid_examples: Vec<String>,
    pub duplicates: u64,
    pub duplicate_examples: Vec<Duplicate>,
    /// Replies and errors in each second of the run.
    pub timeline: Vec<Second>,
    pub passed: bool,
    /// Why the run failed, one reason per line.
    pub failed_because: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// What the summary is built from, besides the merged stats.
pub struct Context {
    pub target: String,
    pub connections: u32,
    pub target_rate: Option<f64>,
    pub started_at_unix_ms: u64,
    pub elapsed: Duration,
    pub numbers: u64,
    pub duplicates: u64,
    pub duplicate_examples: Vec<Duplicate>,
    pub max_error_rate: f64,
}

impl Summary {
    pub fn new(stats: &Stats, cx: Context) -> Summary {
        let h = &stats.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| ms(h.value_at_quantile(q));
        let requests = stats.attempts();
        let errors = stats.errors();
        let error_rate = if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        };
        let elapsed_s = cx.elapsed.as_secs_f64();
        let replies = stats.replies();
        let mut summary = Summary {
            target: cx.target,
            mode: if cx.target_rate.is_some() {
                "open"
            } else {
                "closed"
            },
            connections: cx.connections,
            target_rate: cx.target_rate,
            started_at_unix_ms: cx.started_at_unix_ms,
            elapsed_s,
            requests,
            replies,
            rate: if elapsed_s > 0.0 {
                replies as f64 / elapsed_s
            } else {
                0.0
            },
            numbers: cx.numbers,
            latency_ms: Latency {
                p50: at(0.5),
                p90: at(0.9),
                p99: at(0.99),
                p99_9: at(0.999),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            },
            statuses: stats
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            failures: stats
                .failures
                .iter()
                .map(|(f, n)| (f.as_str(), *n))
                .collect(),
            unsent: stats.unsent,
            errors,
            error_rate,
            max_error_rate: cx.max_error_rate,
            first_error_ms: stats.first_error.map(|d| d.as_secs_f64() * 1000.0),
            last_error_ms: stats.last_error.map(|d| d.as_secs_f64() * 1000.0),
            invalid: stats.invalid,
            invalid_examples: stats.invalid_examples.clone(),
            duplicates: cx.duplicates,
            duplicate_examples: cx.duplicate_examples,
            timeline: stats.timeline.clone(),
            passed: false,
            failed_because: Vec::new(),
        };
        summary.failed_because = verdict(&summary);
        summary.passed = summary.failed_because.is_empty();
        summary
    }

    /// The summary for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {}/s", group(rate.round() as u64)),
            None => "closed loop".to_owned(),
        };
        let _ = writeln!(out, "{}", self.target);
        let _ = writeln!(
            out,
            "  {mode}, {} connections, {:.1} s",
            self.connections, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "  requests    {}   replies {}   {}/s   numbers {}",
            group(self.requests),
            group(self.replies),
            group(self.rate.round() as u64),
            group(self.numbers)
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "  latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}{}",
            millis(l.p50),
            millis(l.p90),
            millis(l.p99),
            millis(l.p99_9),
            millis(l.max),
            if self.target_rate.is_some() {
                "  (late sends timed from their due time)"
            } else {
                ""
            }
        );
        let statuses: Vec<_> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {}", group(*n)))
            .collect();
        let _ = writeln!(out, "  statuses    {}", or_none(&statuses.join("   ")));
        if !self.failures.is_empty() {
            let failures: Vec<_> = self
                .failures
                .iter()
                .map(|(f, n)| format!("{f}: {}", group(*n)))
                .collect();
            let _ = writeln!(out, "  no reply    {}", failures.join("   "));
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "  not sent    {} (due in the run, but every connection was still waiting)",
                group(self.unsent)
            );
        }
        let _ = write!(
            out,
            "  errors      {} ({:.3}% of requests, allowed {:.3}%)",
            group(self.errors),
            self.error_rate * 100.0,
            self.max_error_rate * 100.0
        );
        if let (Some(first), Some(last)) = (self.first_error_ms, self.last_error_ms) {
            let _ = write!(
                out,
                ", from {:.1} s to {:.1} s",
                first / 1000.0,
                last / 1000.0
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "  invalid     {}", group(self.invalid));
        for example in &self.invalid_examples {
            let _ = writeln!(out, "    {example}");
        }
        let _ = writeln!(out, "  duplicates  {}", group(self.duplicates));
        for dup in &self.duplicate_examples {
            let _ = writeln!(out, "    {} was issued twice:", dup.tracking_number);
            for (which, reply) in [("first", &dup.first), ("then", &dup.second)] {
                match reply {
                    Some(r) => {
                        let _ = writeln!(
                            out,
                            "      {which} at {:.3} s on connection {} ({}): {}",
                            r.at_ms / 1000.0,
                            r.connection,
                            r.status,
                            r.body
                        );
                    }
                    None => {
                        let _ = writeln!(out, "      {which}: (reply not kept)");
                    }
                }
            }
        }
        if self.passed {
            let _ = writeln!(out, "PASS");
        } else {
            let _ = writeln!(out, "FAIL: {}", self.failed_because.join("; "));
        }
        out
    }
}

/// Why the run fails; empty when it passes.
pub fn verdict(s: &Summary) -> Vec<String> {
    let mut reasons = Vec::new();
    if s.requests == 0 {
        reasons.push("no request was made".to_owned());
    }
    if s.duplicates > 0 {
        reasons.push(format!("{} duplicate numbers", s.duplicates));
    }
    if s.invalid > 0 {
        reasons.push(format!("{} invalid replies", s.invalid));
    }
    if s.error_rate > s.max_error_rate {
        reasons.push(format!(
            "error rate {:.3}% is over the {:.3}% allowed",
            s.error_rate * 100.0,
            s.max_error_rate * 100.0
        ));
    }
    reasons
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Failure;

    fn summary(stats: &Stats, duplicates: u64, max_error_rate: f64) -> Summary {
        Summary::new(
            stats,
            Context {
                target: "GET http://h/next-tracking-number".into(),
                connections: 2,
                target_rate: None,
                started_at_unix_ms: 0,
                elapsed: Duration::from_secs(2),
                numbers: 3,
                duplicates,
                duplicate_examples: Vec::new(),
                max_error_rate,
            },
        )
    }

    fn ok_stats(n: u64) -> Stats {
        let mut s = Stats::default();
        for i in 0..n {
            s.reply(200, Duration::from_millis(i + 1), Duration::from_millis(i));
        }
        s
    }

    #[test]
    fn a_clean_run_passes_with_its_numbers() {
        let s = summary(&ok_stats(100), 0, 0.0);
        assert!(s.passed, "{:?}", s.failed_because);
        assert_eq!((s.requests, s.replies, s.errors), (100, 100, 0));
        assert_eq!(s.rate, 50.0);
        assert_eq!(s.statuses["200"], 100);
        assert!(
            (s.latency_ms.p50 - 50.0).abs() < 0.5,
            "{}",
            s.latency_ms.p50
        );
        assert!((s.latency_ms.max - 100.0).abs() < 0.5);
        assert!(s.human().ends_with("PASS\n"));
    }

    #[test]
    fn any_duplicate_or_invalid_reply_fails() {
        let s = summary(&ok_stats(10), 1, 1.0);
        assert_eq!(s.failed_because, ["1 duplicate numbers"]);
        let mut stats = ok_stats(10);
        stats.invalid("bad number".into());
        let s = summary(&stats, 0, 1.0);
        assert!(!s.passed);
        assert!(s.human().contains("bad number"));
    }

    #[test]
    fn errors_fail_only_past_the_allowed_rate() {
        let mut stats = ok_stats(98);
        stats.reply(503, Duration::from_millis(1), Duration::from_millis(5));
        stats.failure(Failure::Connect, Duration::from_millis(7));
        let s = summary(&stats, 0, 0.02);
        assert_eq!((s.errors, s.error_rate), (2, 0.02));
        assert!(s.passed);
        assert_eq!((s.first_error_ms, s.last_error_ms), (Some(5.0), Some(7.0)));
        let s = summary(&stats, 0, 0.01);
        assert!(
            s.failed_because[0].starts_with("error rate 2.000%"),
            "{:?}",
            s.failed_because
        );
    }

    #[test]
    fn requests_never_sent_count_as_errors() {
        let mut stats = ok_stats(90);
        stats.unsent = 10;
        let s = summary(&stats, 0, 0.0);
        assert_eq!((s.requests, s.errors, s.unsent), (100, 10, 10));
        assert!(!s.passed);
        assert!(s.human().contains("not sent    10"));
    }

    #[test]
    fn a_run_with_no_requests_fails() {
        let s = summary(&Stats::default(), 0, 1.0);
        assert_eq!(s.failed_because, ["no request was made"]);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
    }
}
