//! # dispatcher-core
//!
//! The Webhook Dispatcher's domain and decisions, free of I/O.
//!
//! **Owns:** domain types ([`domain`]), the configuration model and its
//! validation ([`config`]), what a stored delivery contains ([`intake`]),
//! matching rules with CEL filters ([`rules`]), the pure dispatch planner
//! ([`planner`]), event-status folding ([`status`]), retry backoff
//! ([`backoff`]), the port traits ([`ports`]) and the engine that runs one
//! dispatch pass over them ([`engine`], [`labels`]); what operators see of
//! the queue ([`operate`]) and the wording of an event's timeline
//! ([`timeline`]).
//!
//! **Must not:** do I/O or depend on tokio, hyper, diesel, kube or reqwest.
//! Adapters implement [`ports`] in other crates; `just check-layers` enforces
//! this.
//!
//! ```
//! use dispatcher_core::config::{parse, Settings};
//! use dispatcher_core::rules::{match_items, EventFacts};
//!
//! let file = serde_json::json!({
//!     "dispatcher": {"items": [{
//!         "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
//!         "callback_url": "http://el:8080",
//!         "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 2, "namespace": "ns"},
//!         "filter": {"cel_expression": "body.pull_request.base.ref == 'main'"}
//!     }]},
//!     "security": {"github_webhook_secret": "s3cr3t"}
//! });
//! let (raw, _unknown_keys) = parse(file).unwrap();
//! let settings = Settings::from_raw(raw).unwrap();
//! let payload = br#"{"pull_request": {"base": {"ref": "main"}}}"#;
//! let facts = EventFacts { action: "opened", repository: "o/r", payload, headers: &[] };
//! assert_eq!(match_items(&settings, &facts).items.len(), 1);
//! ```

pub mod backoff;
pub mod cancel;
pub mod catch_up;
pub mod config;
pub mod domain;
pub mod engine;
pub mod fairness;
pub mod intake;
pub mod labels;
pub mod open_set;
pub mod operate;
pub mod planner;
pub mod ports;
pub mod queue_status;
pub mod retention;
pub mod rules;
pub mod status;
pub mod timeline;
