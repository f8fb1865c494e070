//! Strict parsing: an object deserialized into its typed schema, every field
//! the schema does not know reported with its path.
//!
//! `k8s-openapi`'s types skip unknown fields silently (through
//! `serde::de::IgnoredAny`); `serde_ignored` sees each skipped value and
//! names its path, so `readinessProbe.httpGett` is an error here.

use k8s_openapi::api::{apps, batch, core, networking, policy, rbac};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::crd;

/// Why an object is not valid for its schema.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    /// No schema is known for this `apiVersion` and `kind`.
    #[error("{0} {1}: no schema known for this apiVersion and kind")]
    UnknownKind(String, String),
    /// The object does not deserialize (a wrong type, a missing required field).
    #[error("{kind} {name}: {message}")]
    Invalid {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The deserializer's message.
        message: String,
    },
    /// Fields the schema does not know (typos), by path.
    #[error("{kind} {name}: unknown field(s) {fields:?}")]
    UnknownFields {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// Paths of the unknown fields.
        fields: Vec<String>,
    },
}

/// Parses `object` into the type of its `apiVersion` and `kind`, rejecting
/// unknown fields.
pub fn check_object(object: &Value) -> Result<(), StrictError> {
    let (api_version, kind, _, _) = crate::object_id(object);
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "ServiceAccount") => strict::<core::v1::ServiceAccount>(object),
        ("v1", "ConfigMap") => strict::<core::v1::ConfigMap>(object),
        ("v1", "Secret") => strict::<core::v1::Secret>(object),
        ("v1", "Service") => strict::<core::v1::Service>(object),
        ("apps/v1", "Deployment") => strict::<apps::v1::Deployment>(object),
        ("apps/v1", "StatefulSet") => strict::<apps::v1::StatefulSet>(object),
        ("batch/v1", "Job") => strict::<batch::v1::Job>(object),
        ("policy/v1", "PodDisruptionBudget") => strict::<policy::v1::PodDisruptionBudget>(object),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            strict::<networking::v1::NetworkPolicy>(object)
        }
        ("networking.k8s.io/v1", "Ingress") => strict::<networking::v1::Ingress>(object),
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<rbac::v1::RoleBinding>(object),
        ("route.openshift.io/v1", "Route") => strict::<crd::Route>(object),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => strict::<crd::ServiceMonitor>(object),
        _ => Err(StrictError::UnknownKind(api_version, kind)),
    }
}

fn strict<T: DeserializeOwned>(object: &Value) -> Result<(), StrictError> {
    let (_, kind, _, name) = crate::object_id(object);
    let mut fields = Vec::new();
    let parsed: Result<T, _> = serde_ignored::deserialize(object.clone(), |path| {
        // `?` marks an `Option` layer in serde_ignored's paths: not a field.
        fields.push(path.to_string().replace(".?", ""));
    });
    if let Err(e) = parsed {
        return Err(StrictError::Invalid {
            kind,
            name,
            message: e.to_string(),
        });
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(StrictError::UnknownFields { kind, name, fields })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::needless_pass_by_value)]
    use super::*;

    fn deployment(probe: Value) -> Value {
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "readinessProbe": probe}]}
                }
            }
        })
    }

    #[test]
    fn a_valid_deployment_passes() {
        check_object(&deployment(
            serde_json::json!({"httpGet": {"path": "/", "port": "http"}}),
        ))
        .unwrap();
    }

    #[test]
    fn a_misspelt_field_fails_with_its_path() {
        let err = check_object(&deployment(
            serde_json::json!({"httpGett": {"path": "/", "port": "http"}}),
        ))
        .unwrap_err();
        let StrictError::UnknownFields { fields, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            fields,
            &["spec.template.spec.containers.0.readinessProbe.httpGett"]
        );
    }

    #[test]
    fn wrong_types_and_unknown_kinds_fail() {
        let err = check_object(&deployment(serde_json::json!({"periodSeconds": "ten"})));
        assert!(matches!(err, Err(StrictError::Invalid { .. })), "{err:?}");
        let err = check_object(&serde_json::json!({"apiVersion": "v1", "kind": "Pood"}));
        assert!(matches!(err, Err(StrictError::UnknownKind(..))), "{err:?}");
    }

    #[test]
    fn custom_resources_reject_unknown_fields() {
        let route = serde_json::json!({
            "apiVersion": "route.openshift.io/v1", "kind": "Route",
            "metadata": {"name": "r", "labelz": {}},
            "spec": {"to": {"kind": "Service", "name": "s"}, "pth": "/x"}
        });
        let err = check_object(&route).unwrap_err().to_string();
        assert!(err.contains("pth") || err.contains("labelz"), "{err}");
        let monitor = serde_json::json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": {"name": "m"},
            "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "30s"}]}
        });
        let err = check_object(&monitor).unwrap_err().to_string();
        assert!(err.contains("intervall"), "{err}");
    }
}
