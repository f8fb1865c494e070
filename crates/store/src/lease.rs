//! The leader's lease: how long this replica may still assume it holds the
//! dispatcher lock without asking PostgreSQL.
//!
//! PostgreSQL ends the leader session once it has been idle for
//! `idle_session_timeout`, releasing the lock. That clock starts no earlier
//! than the moment the session's last successful round trip was *sent*, so a
//! lease renewed from that moment for `idle_session_timeout` minus a safety
//! margin runs out before the server can hand the lock to another replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A cheap, clonable view of the leader session's liveness: valid only while
/// the session's last successful round trip is recent enough that PostgreSQL
/// cannot have ended it (and released the lock) yet.
///
/// Check it right before any side effect outside the database (sending a
/// trigger): a leader that was frozen (SIGSTOP, a stalled VM, a lost network)
/// finds it expired when it runs again, before it has talked to PostgreSQL.
/// Uses the monotonic clock ([`Instant`]).
#[derive(Debug, Clone)]
pub struct Lease {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    origin: Instant,
    duration: Duration,
    /// Expiry, in nanoseconds after `origin`.
    expires_at: AtomicU64,
    revoked: AtomicBool,
}

impl Lease {
    /// A lease of `duration`, valid from `started` (when the first round
    /// trip of the session was sent).
    pub(crate) fn new(started: Instant, duration: Duration) -> Self {
        let lease = Self {
            state: Arc::new(State {
                origin: started,
                duration,
                expires_at: AtomicU64::new(0),
                revoked: AtomicBool::new(false),
            }),
        };
        lease.renew(started);
        lease
    }

    /// Whether the session may still be assumed to hold the lock.
    pub fn is_valid(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// Time left before the lease expires (zero once expired or revoked).
    pub fn remaining(&self) -> Duration {
        if self.state.revoked.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let now = nanos(self.state.origin.elapsed());
        let expires_at = self.state.expires_at.load(Ordering::Acquire);
        Duration::from_nanos(expires_at.saturating_sub(now))
    }

    /// Extends the lease after a successful round trip that was sent at `started`.
    /// Never shortens it, and does nothing once revoked.
    pub(crate) fn renew(&self, started: Instant) {
        let since_origin = started.saturating_duration_since(self.state.origin);
        let expires_at = nanos(since_origin.saturating_add(self.state.duration));
        self.state
            .expires_at
            .fetch_max(expires_at, Ordering::AcqRel);
    }

    /// Ends the lease for good (the session is gone or dropped).
    pub(crate) fn revoke(&self) {
        self.state.revoked.store(true, Ordering::Release);
    }

    /// Whether [`Lease::revoke`] was called.
    pub(crate) fn is_revoked(&self) -> bool {
        self.state.revoked.load(Ordering::Acquire)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn lease_is_a_shareable_handle() {
        assert_send_sync::<Lease>();
    }

    #[test]
    fn valid_until_duration_after_the_last_renewal_started() {
        let start = Instant::now();
        let lease = Lease::new(start, Duration::from_secs(3600));
        assert!(lease.is_valid());
        let shared = lease.clone();
        lease.revoke();
        assert!(!shared.is_valid(), "clones see the revocation");
        assert_eq!(shared.remaining(), Duration::ZERO);
        shared.renew(Instant::now());
        assert!(!shared.is_valid(), "a revoked lease cannot be renewed");
    }

    #[test]
    fn expires_without_renewal_and_renewal_never_shortens() {
        let lease = Lease::new(Instant::now(), Duration::from_millis(50));
        assert!(lease.remaining() <= Duration::from_millis(50));
        // Renewing with a round trip that started before the last one changes nothing.
        let origin = Instant::now();
        let long = Lease::new(origin, Duration::from_secs(60));
        long.renew(origin + Duration::from_secs(10));
        assert!(long.remaining() > Duration::from_secs(65), "renewed");
        long.renew(origin);
        assert!(long.remaining() > Duration::from_secs(65), "not shortened");

        let deadline = Instant::now() + Duration::from_secs(5);
        while lease.is_valid() {
            assert!(Instant::now() < deadline, "lease never expired");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lease.remaining(), Duration::ZERO);
        // Once a round trip succeeds again, it is valid again.
        lease.renew(Instant::now());
        assert!(lease.is_valid());
    }
}
