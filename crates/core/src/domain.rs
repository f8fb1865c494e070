//! Domain vocabulary shared by every crate: identifiers, statuses and the
//! shapes of stored events and dispatches.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Internal database key of a stored webhook event: the FIFO and
/// newest-wins ordering key of the engine. Never shown to clients, who see
/// the event's [`EventUuid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Public identifier of a stored webhook event: a random (version 4) UUID,
/// as the original service's primary key. It is the event's `id` in every
/// JSON answer and the key of `GET /api/v1/events/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventUuid(pub uuid::Uuid);

impl fmt::Display for EventUuid {
    /// Lower-case hyphenated, as Python's `str(uuid4())`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventUuid {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::try_parse(s).map(Self)
    }
}

/// How a caller names one event: by its public UUID (the API) or by its
/// internal key (the engine and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventRef {
    /// The internal key.
    Id(EventId),
    /// The public UUID.
    Uuid(EventUuid),
}

impl From<EventId> for EventRef {
    fn from(id: EventId) -> Self {
        Self::Id(id)
    }
}

impl From<EventUuid> for EventRef {
    fn from(uuid: EventUuid) -> Self {
        Self::Uuid(uuid)
    }
}

/// Database identifier of a dispatch (one event routed to one config item).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DispatchId(pub i64);

impl fmt::Display for DispatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A pull request: repository `owner/name` plus its number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PullRequestRef {
    /// `owner/name`, as GitHub spells it in `repository.full_name`.
    pub repository: String,
    /// The pull request number.
    pub number: i64,
}

impl fmt::Display for PullRequestRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repository, self.number)
    }
}

/// Declares a string-backed enum with `as_str`, `FromStr`, `Display`, serde
/// and the list of all values, so the vocabulary is written exactly once.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire and database spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue {
                        kind: stringify!($name),
                        value: other.to_owned(),
                        allowed: &[$($text,)+],
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A string that is not part of a vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} '{value}' (allowed: {})", allowed.join(", "))]
pub struct UnknownValue {
    /// Which vocabulary was asked.
    pub kind: &'static str,
    /// The rejected text.
    pub value: String,
    /// The accepted spellings.
    pub allowed: &'static [&'static str],
}

vocabulary! {
    /// Status of a webhook event, in the original service's vocabulary plus `failed`.
    EventStatus {
        /// Stored, not yet planned.
        Pending => "pending",
        /// Waiting for pipeline capacity.
        Queued => "queued",
        /// Accepted by the EventListener (202).
        Processed => "processed",
        /// Superseded by a newer event for the same pull request.
        Cancelled => "cancelled",
        /// No config item matched.
        Aborted => "aborted",
        /// The trigger ran out of retries.
        Failed => "failed",
    }
}

vocabulary! {
    /// Lifecycle of one dispatch (event × config item).
    DispatchState {
        /// Waiting for capacity (or for its next retry).
        Queued => "queued",
        /// The POST to the EventListener is in flight.
        Triggering => "triggering",
        /// The EventListener answered 202; the PipelineRun is not seen yet.
        Triggered => "triggered",
        /// The PipelineRun carrying our EventListener event id was seen.
        Confirmed => "confirmed",
        /// Superseded by a newer event before it was triggered.
        Cancelled => "cancelled",
        /// Ran out of trigger attempts.
        Failed => "failed",
    }
}

impl DispatchState {
    /// Whether the dispatch still needs the engine's attention.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Queued | Self::Triggering | Self::Triggered)
    }

    /// Whether the EventListener accepted this dispatch.
    pub fn was_accepted(self) -> bool {
        matches!(self, Self::Triggered | Self::Confirmed)
    }
}

vocabulary! {
    /// What one entry of an event's stored timeline records (see
    /// [`crate::timeline`] for the facts each kind carries).
    TimelineKind {
        /// GitHub's delivery was stored (rendered from the event row).
        Received => "received",
        /// A dispatch joined its pool's queue: `item`, `pool`, `position`, `of`.
        Queued => "queued",
        /// No configured item matched the event.
        Aborted => "aborted",
        /// A waiting dispatch was cancelled by a newer event: `by_event`.
        Superseded => "superseded",
        /// A POST to the EventListener started: `attempt`.
        TriggerSent => "trigger_sent",
        /// The EventListener answered 202: `attempt`, `listener_event_id`.
        Accepted => "accepted",
        /// A trigger failed and will be retried: `attempt`, `error`, `next_attempt_at`.
        Retry => "retry",
        /// A trigger ran out of attempts (or its item vanished): `attempt`, `error`.
        Failed => "failed",
        /// A trigger's answer was lost: `attempt`, `error`.
        Unanswered => "unanswered",
        /// The dispatch's PipelineRun was seen: `run`, `listener_event_id`.
        Confirmed => "confirmed",
        /// A waiting dispatch followed its item to another pool: `pool`.
        Moved => "moved",
        /// An operator cancelled a waiting dispatch.
        Cancelled => "cancelled",
        /// An operator replayed the event: `round`, `force`.
        Replayed => "replayed",
        /// An operator paused the pool a dispatch waits in: `pool`.
        PoolPaused => "pool_paused",
        /// An operator resumed the pool a dispatch waits in: `pool`.
        PoolResumed => "pool_resumed",
        /// The event reached a final status (rendered from the event row).
        Finished => "finished",
        /// The dispatch's PipelineRun is to be cancelled (`cancel_superseded`
        /// or `cancel_on_close`): `reason` (`superseded` or `closed`), `by_event`.
        RunCancelRequested => "run_cancel_requested",
        /// The dispatch's PipelineRun was cancelled (`spec.status` patched): `run`.
        RunCancelled => "run_cancelled",
        /// Cancelling the PipelineRun failed: `attempt`, `error`, and
        /// `next_attempt_at` unless it was given up.
        RunCancelFailed => "run_cancel_failed",
    }
}

/// One stored entry of an event's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// When it happened (the database clock).
    pub at: OffsetDateTime,
    /// The dispatch it is about; `None` for the event as a whole.
    pub dispatch: Option<DispatchId>,
    /// What happened.
    pub kind: TimelineKind,
    /// The facts of this kind (a JSON object).
    pub detail: serde_json::Value,
    /// Who did it, for operator actions (the admin token's name).
    pub actor: Option<String>,
}

/// Message stored on events cancelled by a newer one (the original's text).
pub const CANCELLED_MESSAGE: &str =
    "Cancelled due to receiving a newer event for the same pull request";
/// Message stored on events no config item matched (the original's text).
pub const UNSUPPORTED_MESSAGE: &str = "Unsupported event";

/// An event as the API reports it (its JSON shape lives in `dispatcher-http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Internal key (ordering, newest-wins); never shown to clients.
    pub id: EventId,
    /// Public id, shown as `id`.
    pub uuid: EventUuid,
    /// GitHub's `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// Payload `action` (opened, synchronize, ...).
    pub action: String,
    /// Payload `repository.full_name`.
    pub repository_full_name: String,
    /// Payload `pull_request.number`.
    pub pull_request_number: i64,
    /// The event reached a final status (the original's flag).
    pub processed: bool,
    /// Why the event was not (or not fully) processed.
    pub processing_error: Option<String>,
    /// When the delivery was stored.
    pub received_at: OffsetDateTime,
    /// When the event reached a final status.
    pub processed_at: Option<OffsetDateTime>,
    /// Current status.
    pub status: EventStatus,
}

/// One dispatch as shown in the event detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRecord {
    /// Database id.
    pub id: DispatchId,
    /// Config item name.
    pub item: String,
    /// Replay round (1 for the delivery itself).
    pub round: i32,
    /// Capacity pool key.
    pub pool: String,
    /// Lifecycle state.
    pub state: DispatchState,
    /// Trigger attempts made so far.
    pub attempts: i32,
    /// When the next attempt may run (queued dispatches).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Last trigger error, if any.
    pub last_error: Option<String>,
    /// `eventID` returned by the EventListener.
    pub listener_event_id: Option<String>,
    /// When the dispatch was created.
    pub created_at: OffsetDateTime,
    /// When the EventListener answered 202.
    pub triggered_at: Option<OffsetDateTime>,
    /// When the PipelineRun was first seen.
    pub confirmed_at: Option<OffsetDateTime>,
    /// When the dispatch was cancelled or failed.
    pub finished_at: Option<OffsetDateTime>,
}

/// An event with everything stored about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    /// The listing fields.
    pub event: EventRecord,
    /// `X-GitHub-Event`.
    pub event_type: String,
    /// Forwardable headers, GitHub's spelling.
    pub headers: Vec<(String, String)>,
    /// One entry per matched config item.
    pub dispatches: Vec<DispatchRecord>,
}

/// RFC 3339 (UTC, `Z`) formatting for timestamps.
pub mod rfc3339 {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// Formats a timestamp in UTC.
    pub fn format(t: OffsetDateTime) -> String {
        t.to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_round_trip() {
        for s in EventStatus::ALL {
            assert_eq!(s.as_str().parse::<EventStatus>(), Ok(*s));
        }
        for s in DispatchState::ALL {
            assert_eq!(s.as_str().parse::<DispatchState>(), Ok(*s));
        }
        let err = "bogus".parse::<EventStatus>().unwrap_err();
        assert!(err.to_string().contains("pending"), "{err}");
    }

    #[test]
    fn uuids_are_lower_case_and_strict() {
        let uuid: EventUuid = "8F14E45F-CEEA-467F-A0E6-A7C1B4E0B1E2"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(uuid.to_string(), "8f14e45f-ceea-467f-a0e6-a7c1b4e0b1e2");
        assert!("42".parse::<EventUuid>().is_err());
        assert!("not-a-uuid".parse::<EventUuid>().is_err());
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        let t = time::macros::datetime!(2026-11-28 10:00:00.5 +02:00);
        assert_eq!(rfc3339::format(t), "2026-11-28T08:00:00.5Z");
    }
}
