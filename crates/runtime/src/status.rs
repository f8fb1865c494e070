//! What this replica's dispatcher is doing, for readiness and liveness.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dispatcher_core::config::Settings;
use dispatcher_core::ports::{CapacitySource, PoolState};
use time::OffsetDateTime;

/// This replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not yet contending.
    Starting,
    /// Holds the dispatcher lock.
    Leader,
    /// Another replica dispatches (or the database cannot be reached).
    Standby,
    /// Shutting down: starts no more triggers.
    Stopping,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Leader => "leader",
            Self::Standby => "standby",
            Self::Stopping => "stopping",
        }
    }
}

#[derive(Debug)]
struct View {
    role: Role,
    last_pass_at: Option<OffsetDateTime>,
    waiting: Vec<(String, u32)>,
    /// Why this replica cannot lead right now (database unreachable...).
    problem: Option<String>,
    /// Last time the loop made progress (any iteration, pass or heartbeat).
    alive_at: Instant,
}

/// Shared between the dispatch loop (writer) and HTTP handlers (readers).
#[derive(Debug)]
pub struct DispatcherStatus {
    view: RwLock<View>,
    stuck_after: Duration,
}

/// The pieces of the readiness report.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// False when something needs attention (a pool's Kubernetes state is
    /// unknown, the database cannot be reached, a paused pool).
    pub healthy: bool,
    /// Role, last pass, problem and each pool's view, as JSON.
    pub details: serde_json::Value,
}

impl DispatcherStatus {
    /// A replica that has not contended yet.
    pub(crate) fn new(settings: &Settings) -> Arc<Self> {
        let d = &settings.dispatch;
        // The loop wakes at least every safety pass, heartbeat or standby
        // poll; a pass is bounded by its timeout. Twice the longest of those
        // without progress means it is stuck.
        let stuck_after = 2 * d
            .safety_pass_interval
            .max(d.pass_timeout() + d.trigger_timeout)
            .max(d.failover_timeout);
        Arc::new(Self {
            view: RwLock::new(View {
                role: Role::Starting,
                last_pass_at: None,
                waiting: Vec::new(),
                problem: None,
                alive_at: Instant::now(),
            }),
            stuck_after,
        })
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        if let Ok(mut v) = self.view.write() {
            f(&mut v);
            v.alive_at = Instant::now();
        }
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.update(|v| {
            v.role = role;
            if role != Role::Leader {
                v.waiting.clear();
            }
        });
    }

    /// Records why this replica cannot dispatch (or `None`): shown in readiness,
    /// which then reports unhealthy. The embedding program uses it for start-up
    /// problems such as migrations that cannot be applied yet.
    pub fn set_problem(&self, problem: Option<String>) {
        self.update(|v| v.problem = problem);
    }

    /// The loop is alive (called on every iteration).
    pub(crate) fn tick(&self) {
        self.update(|_| {});
    }

    pub(crate) fn pass_done(&self, waiting: Vec<(String, u32)>) {
        self.update(|v| {
            v.last_pass_at = Some(OffsetDateTime::now_utc());
            v.waiting = waiting;
        });
    }

    /// This replica's role.
    pub fn role(&self) -> Role {
        self.view.read().map_or(Role::Starting, |v| v.role)
    }

    /// `Err(reason)` when the dispatch loop has made no progress for much
    /// longer than any of its timers allow: it is stuck, restart the process.
    pub fn liveness(&self) -> Result<(), String> {
        let Ok(v) = self.view.read() else {
            return Err("dispatcher status lock poisoned".to_owned());
        };
        let idle = v.alive_at.elapsed();
        if idle > self.stuck_after {
            return Err(format!(
                "the dispatch loop made no progress for {}s (limit {}s)",
                idle.as_secs(),
                self.stuck_after.as_secs()
            ));
        }
        Ok(())
    }

    /// The readiness report: role, last pass, and each pool's Kubernetes view.
    pub fn report<C: CapacitySource + ?Sized>(
        &self,
        settings: &Settings,
        capacity: &C,
    ) -> StatusReport {
        let (role, last_pass_at, waiting, problem) = match self.view.read() {
            Ok(v) => (v.role, v.last_pass_at, v.waiting.clone(), v.problem.clone()),
            Err(_) => (Role::Starting, None, Vec::new(), None),
        };
        let mut healthy = problem.is_none();
        let pools: Vec<serde_json::Value> = settings
            .pools
            .values()
            .map(|pool| {
                let queued = waiting
                    .iter()
                    .find(|(k, _)| *k == pool.key.0)
                    .map(|(_, n)| *n);
                if pool.is_paused() {
                    healthy = false;
                }
                let mut entry = match capacity.pool_state(pool) {
                    PoolState::Known { running, .. } => serde_json::json!({
                        "pool": pool.key, "state": "known", "running": running,
                        "max_capacity": pool.max_capacity, "queued": queued,
                    }),
                    PoolState::Unknown { reason } => {
                        healthy = false;
                        serde_json::json!({
                            "pool": pool.key, "state": "unknown", "reason": reason,
                            "max_capacity": pool.max_capacity, "queued": queued,
                        })
                    }
                };
                if let (true, Some(map)) = (pool.is_paused(), entry.as_object_mut()) {
                    map.insert(
                        "warning".to_owned(),
                        "paused: max_capacity is 0, nothing is dispatched".into(),
                    );
                }
                entry
            })
            .collect();
        let mut details = serde_json::json!({
            "role": role.as_str(),
            "last_pass_at": last_pass_at.map(dispatcher_core::domain::rfc3339::format),
            "pools": pools,
        });
        if let (Some(problem), Some(map)) = (problem, details.as_object_mut()) {
            map.insert("problem".to_owned(), problem.into());
        }
        StatusReport { healthy, details }
    }
}

/// Time from now until `t` (zero when past).
pub(crate) fn until(t: OffsetDateTime) -> Duration {
    Duration::try_from(t - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
}
