//! How big a block to lease: big enough that a block lasts about [`BLOCK_LASTS`] at the rate
//! serials are being taken, so the shared counter sees a lease every second or two per instance
//! at any load; small again when demand falls, so a killed instance leaves few serials unused.

use std::time::Duration;

/// How long a block should last at the current rate.
pub const BLOCK_LASTS: Duration = Duration::from_secs(2);
/// A block grows by at most this factor per step, so a short burst does not lease a huge one.
const MAX_GROWTH: u64 = 16;

/// Block sizes between a floor and a ceiling, following the measured rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizer {
    min: u64,
    max: u64,
    current: u64,
}

impl BlockSizer {
    /// Sizes from `min` (also the first size) to `max`; `max` below `min` counts as `min`.
    pub fn new(min: u64, max: u64) -> Self {
        let min = min.max(1);
        BlockSizer {
            min,
            max: max.max(min),
            current: min,
        }
    }

    pub fn current(&self) -> u64 {
        self.current
    }

    /// Takes in that `taken` serials were handed out over `over`, and returns the size of the
    /// next blocks. Within a factor of two of the ideal size, the size stays (no flapping).
    pub fn observe(&mut self, taken: u64, over: Duration) -> u64 {
        if over.is_zero() {
            return self.current;
        }
        let per_second = taken as f64 / over.as_secs_f64();
        let ideal = (per_second * BLOCK_LASTS.as_secs_f64()).min(u64::MAX as f64) as u64;
        let ideal = ideal.clamp(self.min, self.max);
        if ideal > self.current.saturating_mul(2) {
            self.current = ideal.min(self.current.saturating_mul(MAX_GROWTH));
        } else if ideal.saturating_mul(2) < self.current {
            self.current = ideal;
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn starts_at_the_floor() {
        assert_eq!(BlockSizer::new(1000, 1_000_000).current(), 1000);
        assert_eq!(BlockSizer::new(0, 0).current(), 1);
        assert_eq!(BlockSizer::new(500, 10).observe(1_000_000, SECOND), 500);
    }

    #[test]
    fn grows_under_load_in_bounded_steps_up_to_the_ceiling() {
        let mut sizer = BlockSizer::new(1000, 1_000_000);
        // 100k serials a second: a block should hold two seconds of them.
        assert_eq!(sizer.observe(100_000, SECOND), 16_000);
        assert_eq!(sizer.observe(100_000, SECOND), 200_000);
        assert_eq!(sizer.observe(100_000, SECOND), 200_000);
        // Ten million a second is capped.
        assert_eq!(sizer.observe(10_000_000, SECOND), 1_000_000);
    }

    #[test]
    fn shrinks_when_demand_falls_and_holds_steady_near_the_ideal() {
        let mut sizer = BlockSizer::new(1000, 1_000_000);
        for _ in 0..3 {
            sizer.observe(400_000, SECOND);
        }
        assert_eq!(sizer.current(), 800_000);
        // Somewhat slower: within a factor of two, no change.
        assert_eq!(sizer.observe(250_000, SECOND), 800_000);
        // Much slower: straight down to the ideal.
        assert_eq!(sizer.observe(10_000, SECOND), 20_000);
        // Idle for a minute: back to the floor.
        assert_eq!(sizer.observe(5, Duration::from_secs(60)), 1000);
        assert_eq!(sizer.observe(5, Duration::ZERO), 1000);
    }
}
