//! What the dispatcher needs to know about one PipelineRun.

use std::collections::BTreeMap;

use dispatcher_core::ports::RunView;
use kube::api::DynamicObject;
use time::OffsetDateTime;

/// Label Tekton Pipelines puts on every PipelineRun of a Pipeline.
pub const PIPELINE_LABEL: &str = "tekton.dev/pipeline";
/// Label Tekton Triggers puts on resources created for one EventListener event.
pub const EVENT_ID_LABEL: &str = "triggers.tekton.dev/triggers-eventid";

/// A PipelineRun reduced to what capacity counting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The EventListener event that created it, if any.
    pub event_id: Option<String>,
    /// `metadata.labels` (the pool's `dispatch_label` is read from here).
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`.
    pub created_at: Option<OffsetDateTime>,
    /// Whether its `Succeeded` condition is final (`True` or `False`).
    pub finished: bool,
    /// `metadata.name`.
    pub name: Option<String>,
    /// `status.completionTime` (or, without one, when the final `Succeeded`
    /// condition was set).
    pub finished_at: Option<OffsetDateTime>,
    /// `metadata.resourceVersion`, when it is a number (it is on etcd-backed
    /// API servers); used to merge a full list with newer watch events.
    pub resource_version: Option<u64>,
}

impl RunInfo {
    /// Reads a PipelineRun. Runs with no `Succeeded` condition yet, or one
    /// with status `Unknown` (running, pending, cancelling...), are unfinished.
    pub fn from_object(obj: &DynamicObject) -> Self {
        let conditions = obj
            .data
            .pointer("/status/conditions")
            .and_then(|c| c.as_array());
        let finished = conditions.is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Succeeded")
                    && matches!(
                        c.get("status").and_then(|s| s.as_str()),
                        Some("True" | "False")
                    )
            })
        });
        let labels = obj.metadata.labels.clone().unwrap_or_default();
        let finished_at = finished
            .then(|| {
                let when = obj.data.pointer("/status/completionTime").or_else(|| {
                    conditions?
                        .iter()
                        .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Succeeded"))?
                        .get("lastTransitionTime")
                });
                let text = when?.as_str()?;
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
            })
            .flatten();
        Self {
            name: obj.metadata.name.clone(),
            finished_at,
            created_at: obj
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).ok()),
            resource_version: obj
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok()),
            annotations: obj.metadata.annotations.clone().unwrap_or_default(),
            event_id: labels.get(EVENT_ID_LABEL).cloned(),
            labels,
            finished,
        }
    }

    /// The run as the planner sees it; `dispatch_label` is the pool's.
    pub fn view(&self, dispatch_label: Option<&str>) -> RunView {
        RunView {
            name: self.name.clone(),
            finished: self.finished,
            finished_at: self.finished_at,
            event_id: self.event_id.clone(),
            dispatch_id: dispatch_label.and_then(|l| self.labels.get(l).cloned()),
            created_at: self.created_at,
        }
    }

    /// Whether the run carries every annotation of `selector`.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.annotations.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {
                "name": "r", "namespace": "ns", "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"tekton.dev/pipeline": "p", "triggers.tekton.dev/triggers-eventid": "ev-1"},
                "annotations": {"repo": "o/r"}
            },
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn finished_only_when_succeeded_is_final() {
        let cond = |status: &str, reason: &str| serde_json::json!({"conditions": [{"type": "Succeeded", "status": status, "reason": reason}]});
        assert!(
            !RunInfo::from_object(&run(&serde_json::json!({}))).finished,
            "no condition yet"
        );
        assert!(!RunInfo::from_object(&run(&cond("Unknown", "Running"))).finished);
        assert!(!RunInfo::from_object(&run(&cond("Unknown", "PipelineRunPending"))).finished);
        assert!(!RunInfo::from_object(&run(&cond("Unknown", "Cancelling"))).finished);
        assert!(RunInfo::from_object(&run(&cond("True", "Succeeded"))).finished);
        assert!(RunInfo::from_object(&run(&cond("False", "Cancelled"))).finished);
        assert!(RunInfo::from_object(&run(&cond("False", "Failed"))).finished);
    }

    #[test]
    fn reads_event_id_and_annotations() {
        let info = RunInfo::from_object(&run(&serde_json::json!({})));
        assert_eq!(info.event_id.as_deref(), Some("ev-1"));
        assert_eq!(
            info.created_at,
            Some(time::macros::datetime!(2026-12-01 10:00 UTC))
        );
        assert_eq!(
            info.view(Some("tekton.dev/pipeline"))
                .dispatch_id
                .as_deref(),
            Some("p")
        );
        assert_eq!(info.view(None).dispatch_id, None);
        assert!(info.matches(&BTreeMap::new()));
        assert!(info.matches(&BTreeMap::from([("repo".to_owned(), "o/r".to_owned())])));
        assert!(!info.matches(&BTreeMap::from([("repo".to_owned(), "o/other".to_owned())])));
        assert!(!info.matches(&BTreeMap::from([("missing".to_owned(), "x".to_owned())])));
    }
}
