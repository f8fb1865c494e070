//! Retry delays: exponential with jitter, capped.
//!
//! The jitter is derived from the dispatch id and attempt number instead of a
//! random number generator: retries of different dispatches still spread out,
//! and a given retry schedule is reproducible in tests and logs.

use std::time::Duration;

/// Delay before the attempt after `attempts_made` failed attempts (≥ 1):
/// `base × 2^(attempts_made-1)`, capped at `max`, then "equal jitter": a
/// value in `[d/2, d]`.
pub fn retry_delay(base: Duration, max: Duration, attempts_made: u32, seed: u64) -> Duration {
    let exp = attempts_made.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << exp.min(31)).min(max);
    let half = full / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    let jitter = if spread == 0 {
        0
    } else {
        mix(seed ^ u64::from(attempts_made)) % (spread + 1)
    };
    half + Duration::from_millis(jitter)
}

/// splitmix64: a well-spread 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_within_jitter_bounds() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for seed in 0..50u64 {
            for attempt in 1..12u32 {
                let full = (base * 2u32.pow(attempt - 1)).min(max);
                let d = retry_delay(base, max, attempt, seed);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} vs {full:?}"
                );
            }
        }
        assert!(retry_delay(base, max, 40, 1) <= max);
    }

    #[test]
    fn jitter_spreads_retries() {
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|seed| retry_delay(Duration::from_secs(8), Duration::from_secs(60), 1, seed))
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
