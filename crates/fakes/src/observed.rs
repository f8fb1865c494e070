//! State shared by a fake's server and its test handle, with change
//! notifications, so tests wait for a condition instead of sleeping.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct Observed<T> {
    state: Mutex<T>,
    tick: watch::Sender<u64>,
}

impl<T> Observed<T> {
    pub(crate) fn new(state: T) -> Self {
        Self {
            state: Mutex::new(state),
            tick: watch::channel(0).0,
        }
    }

    /// The state; a panic in another holder does not poison it for tests.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells waiters that something changed.
    pub(crate) fn changed(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    /// A receiver of change notifications (for streams that follow changes).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Waits until `predicate` holds, re-checking on every change; false after `timeout`.
    pub(crate) async fn wait_until(&self, timeout: Duration, predicate: impl Fn() -> bool) -> bool {
        let mut rx = self.tick.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                rx.mark_unchanged();
                if predicate() || rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}
