//! How often passes may start (`dispatch.min_pass_interval`).
//!
//! A fixed gap after every pass would hold back the lone delivery that
//! arrives just after the pass which recorded the previous trigger's answer
//! (the common case when PRs come one at a time). So passes are paced by a
//! small credit instead: up to [`BURST`] may start back to back, and credit
//! comes back at one pass per `min_pass_interval`. A flood still runs at most
//! one pass per interval on average, each taking everything that arrived
//! meanwhile.

use std::time::Duration;

use tokio::time::Instant;

/// Passes that may start at once after a quiet moment.
pub(crate) const BURST: f64 = 3.0;

/// The credit of passes that may start now.
#[derive(Debug)]
pub(crate) struct PassPacer {
    credit: f64,
    at: Instant,
}

impl PassPacer {
    /// Full credit at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            credit: BURST,
            at: now,
        }
    }

    /// How long the pass about to start must wait; the pass is counted.
    pub(crate) fn delay(&mut self, now: Instant, min_interval: Duration) -> Duration {
        if min_interval.is_zero() {
            return Duration::ZERO;
        }
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / min_interval.as_secs_f64();
        self.credit = (self.credit + earned).min(BURST);
        self.at = now;
        if self.credit >= 1.0 {
            self.credit -= 1.0;
            return Duration::ZERO;
        }
        // Wait until one pass's worth has come back, then spend it.
        let wait = min_interval.mul_f64(1.0 - self.credit);
        self.credit = 0.0;
        self.at = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(5);

    #[test]
    fn a_few_passes_start_at_once_then_one_per_interval() {
        let t0 = Instant::now();
        let mut pacer = PassPacer::new(t0);
        for _ in 0..3 {
            assert_eq!(pacer.delay(t0, MIN), Duration::ZERO);
        }
        assert_eq!(pacer.delay(t0, MIN), MIN, "the burst is spent");
        // Back to back from then on: one per interval.
        let mut now = t0 + MIN;
        for _ in 0..10 {
            let wait = pacer.delay(now, MIN);
            assert_eq!(wait, MIN);
            now += wait;
        }
    }

    #[test]
    fn a_quiet_moment_restores_the_burst_but_never_more() {
        let t0 = Instant::now();
        let mut pacer = PassPacer::new(t0);
        for _ in 0..3 {
            pacer.delay(t0, MIN);
        }
        // A pass every 2 ms after the burst waits for the rest of the interval.
        assert_eq!(
            pacer.delay(t0 + Duration::from_millis(2), MIN),
            Duration::from_millis(3)
        );
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(pacer.delay(later, MIN), Duration::ZERO);
        }
        assert!(pacer.delay(later, MIN) > Duration::ZERO);
    }

    #[test]
    fn no_interval_means_no_pacing() {
        let t0 = Instant::now();
        let mut pacer = PassPacer::new(t0);
        for _ in 0..100 {
            assert_eq!(pacer.delay(t0, Duration::ZERO), Duration::ZERO);
        }
    }
}
