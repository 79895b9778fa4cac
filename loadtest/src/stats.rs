//! What one worker saw, merged across workers at the end: latencies, statuses, failures by
//! kind and by second, invalid replies.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::client::Failure;

/// Invalid replies quoted in the summary; more are only counted.
const KEPT_INVALID: usize = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Second {
    pub replies: u64,
    pub errors: u64,
}

#[derive(Clone)]
pub struct Stats {
    /// Microseconds, 1 µs to 1 h at 3 significant digits.
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub failures: BTreeMap<Failure, u64>,
    pub invalid: u64,
    pub invalid_examples: Vec<String>,
    /// Numbers received, duplicates included.
    pub numbers: u64,
    /// Replies and errors in each second since the start.
    pub timeline: Vec<Second>,
    pub first_error: Option<Duration>,
    pub last_error: Option<Duration>,
    /// When the last exchange ended, since the start.
    pub last_end: Duration,
    /// Open loop: requests due within the run that were never sent (the server fell behind).
    pub unsent: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("static histogram bounds are valid"),
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            invalid: 0,
            invalid_examples: Vec::new(),
            numbers: 0,
            timeline: Vec::new(),
            first_error: None,
            last_error: None,
            last_end: Duration::ZERO,
            unsent: 0,
        }
    }
}

impl Stats {
    /// A reply with this status after `latency`, ending at `at` since the start.
    pub fn reply(&mut self, status: u16, latency: Duration, at: Duration) {
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
        *self.statuses.entry(status).or_default() += 1;
        let second = self.second(at);
        second.replies += 1;
        if !(200..300).contains(&status) {
            second.errors += 1;
            self.error_at(at);
        }
        self.last_end = self.last_end.max(at);
    }

    /// No reply at all.
    pub fn failure(&mut self, failure: Failure, at: Duration) {
        *self.failures.entry(failure).or_default() += 1;
        self.second(at).errors += 1;
        self.error_at(at);
        self.last_end = self.last_end.max(at);
    }

    pub fn invalid(&mut self, why: String) {
        self.invalid += 1;
        if self.invalid_examples.len() < KEPT_INVALID {
            self.invalid_examples.push(why);
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        for (failure, n) in &other.failures {
            *self.failures.entry(*failure).or_default() += n;
        }
        self.invalid += other.invalid;
        let room = KEPT_INVALID.saturating_sub(self.invalid_examples.len());
        self.invalid_examples
            .extend(other.invalid_examples.iter().take(room).cloned());
        self.numbers += other.numbers;
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize(other.timeline.len(), Second::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.replies += theirs.replies;
            mine.errors += theirs.errors;
        }
        self.first_error = min_some(self.first_error, other.first_error);
        self.last_error = self.last_error.max(other.last_error);
        self.last_end = self.last_end.max(other.last_end);
        self.unsent += other.unsent;
    }

    pub fn replies(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Non-2xx replies, exchanges with no reply, and requests never sent.
    pub fn errors(&self) -> u64 {
        let bad_statuses: u64 = self
            .statuses
            .iter()
            .filter(|(status, _)| !(200..300).contains(*status))
            .map(|(_, n)| n)
            .sum();
        bad_statuses + self.failures.values().sum::<u64>() + self.unsent
    }

    /// Every request due: replies, exchanges with no reply, and requests never sent.
    pub fn attempts(&self) -> u64 {
        self.replies() + self.failures.values().sum::<u64>() + self.unsent
    }

    fn second(&mut self, at: Duration) -> &mut Second {
        let index = at.as_secs() as usize;
        if self.timeline.len() <= index {
            self.timeline.resize(index + 1, Second::default());
        }
        &mut self.timeline[index]
    }

    fn error_at(&mut self, at: Duration) {
        self.first_error = min_some(self.first_error, Some(at));
        self.last_error = self.last_error.max(Some(at));
    }
}

fn min_some(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn replies_and_failures_are_counted_by_kind_and_second() {
        let mut s = Stats::default();
        s.reply(200, ms(2), ms(100));
        s.reply(200, ms(3), ms(1100));
        s.reply(503, ms(1), ms(1200));
        s.failure(Failure::Connect, ms(2500));
        assert_eq!((s.replies(), s.attempts(), s.errors()), (3, 4, 2));
        assert_eq!(s.statuses[&200], 2);
        assert_eq!(s.failures[&Failure::Connect], 1);
        let seconds: Vec<_> = s.timeline.iter().map(|s| (s.replies, s.errors)).collect();
        assert_eq!(seconds, [(1, 0), (2, 1), (0, 1)]);
        assert_eq!(
            (s.first_error, s.last_error),
            (Some(ms(1200)), Some(ms(2500)))
        );
        assert_eq!(s.last_end, ms(2500));
    }

    #[test]
    fn merging_adds_everything_up() {
        let mut a = Stats::default();
        a.reply(200, ms(1), ms(10));
        a.invalid("a".into());
        a.numbers = 1;
        let mut b = Stats::default();
        b.reply(200, ms(9), ms(3100));
        b.failure(Failure::Timeout, ms(900));
        b.invalid("b".into());
        b.numbers = 4;
        a.merge(&b);
        assert_eq!(
            (a.replies(), a.errors(), a.numbers, a.invalid),
            (2, 1, 5, 2)
        );
        assert_eq!(a.invalid_examples, ["a", "b"]);
        assert_eq!(a.timeline.len(), 4);
        assert_eq!(
            a.timeline[0],
            Second {
                replies: 1,
                errors: 1
            }
        );
        assert_eq!(a.first_error, Some(ms(900)));
        assert_eq!(a.last_end, ms(3100));
        assert_eq!(a.latency_us.len(), 2);
        assert!(a.latency_us.max() >= 9000);
    }

    #[test]
    fn only_a_few_invalid_replies_are_quoted() {
        let mut s = Stats::default();
        for i in 0..(KEPT_INVALID + 3) {
            s.invalid(format!("bad {i}"));
        }
        assert_eq!(s.invalid, KEPT_INVALID as u64 + 3);
        assert_eq!(s.invalid_examples.len(), KEPT_INVALID);
    }
}
