//! # dispatcher-deploycheck
//!
//! Test support for `deploy/`: CI renders every kustomize overlay and parses
//! each object into its typed schema, so a typo in a manifest fails the build.
//!
//! **Owns:** [`assemble`], a small kustomize for exactly the subset the
//! repository's kustomizations use (see [`assemble`]), and [`check_object`],
//! which deserializes one object into its `k8s-openapi` type (or the
//! hand-written schemas of [`crd`] for the OpenShift Route and the Prometheus
//! Operator's ServiceMonitor) and reports every field the type does not know.
//!
//! **Must not:** ship in anything: no crate depends on it; its tests run in
//! `cargo test --workspace`.

pub mod assemble;
pub mod crd;
mod strict;

pub use assemble::{AssembleError, assemble, parse_yaml_documents};
pub use strict::{StrictError, check_object};

/// An object's identity as kustomize sees it: `apiVersion`, `kind`,
/// namespace (empty when none) and name.
pub fn object_id(object: &serde_json::Value) -> (String, String, String, String) {
    let s = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (
        s("/apiVersion"),
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name"),
    )
}
