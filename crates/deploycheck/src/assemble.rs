//! A kustomize for the subset `deploy/kustomize` uses, so CI can render the
//! overlays where no `kustomize` binary is installed (and compare with it
//! where one is).
//!
//! Supported, and nothing else (any other key is an error):
//!
//! - `resources`: YAML files (several documents allowed) and directories
//!   holding a `kustomization.yaml`, assembled recursively first;
//! - `namespace`: sets `metadata.namespace` of every namespaced object
//!   (RoleBinding subjects are left alone, as kustomize does for subjects
//!   not named `default`);
//! - `labels`: `pairs` added to `metadata.labels` only (`includeSelectors`
//!   and `includeTemplates` must be absent or false);
//! - `patches`: entries with only a `path` to a strategic-merge patch naming
//!   its target by `apiVersion`, `kind` and `metadata.name`; the patch may
//!   not contain lists (maps merge, scalars replace, `null` deletes);
//! - `images`: `name` with `newName` and/or `newTag`, applied to every
//!   `image` of a `containers`/`initContainers` list.
//!
//! Order, as kustomize: resources, patches, namespace, labels, images.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why an overlay could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not YAML.
    #[error("{path}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The kustomization uses something outside the supported subset, or is
    /// inconsistent.
    #[error("{path}: {message}")]
    Unsupported {
        /// The kustomization (or patch) file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "patches",
    "images",
];

/// Kinds without a namespace (the transformer leaves them alone).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
];

/// Assembles the kustomization in `dir` into its objects (in resource order).
pub fn assemble(dir: &Path) -> Result<Vec<Value>, AssembleError> {
    let path = dir.join("kustomization.yaml");
    let unsupported = |message: String| AssembleError::Unsupported {
        path: path.clone(),
        message,
    };
    let docs = parse_yaml_documents(&read(&path)?, &path)?;
    let [Value::Object(k)] = docs.as_slice() else {
        return Err(unsupported("expected one mapping".into()));
    };
    if let Some(key) = k.keys().find(|key| !KEYS.contains(&key.as_str())) {
        return Err(unsupported(format!(
            "'{key}' is outside the supported kustomize subset (see crates/deploycheck/src/assemble.rs)"
        )));
    }
    if let Some(kind) = k.get("kind").and_then(Value::as_str)
        && kind != "Kustomization"
    {
        return Err(unsupported(format!("kind {kind} is not supported")));
    }

    let mut objects = Vec::new();
    for resource in list(k, "resources", &path)? {
        let resource = resource
            .as_str()
            .ok_or_else(|| unsupported("resources must be strings".into()))?;
        let target = dir.join(resource);
        if target.is_dir() {
            objects.extend(assemble(&target)?);
        } else {
            let docs = parse_yaml_documents(&read(&target)?, &target)?;
            objects.extend(docs.into_iter().filter(|d| !d.is_null()));
        }
    }
    for object in &objects {
        if !object.is_object() || object.pointer("/metadata/name").is_none() {
            return Err(unsupported(format!(
                "a resource is not an object with metadata.name: {object}"
            )));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for object in &objects {
        if !seen.insert(crate::object_id(object)) {
            return Err(unsupported(format!(
                "duplicate object {:?}",
                crate::object_id(object)
            )));
        }
    }

    for patch in list(k, "patches", &path)? {
        let Some(Value::String(file)) = patch.get("path") else {
            return Err(unsupported("patches: only entries with a 'path'".into()));
        };
        if patch.as_object().is_some_and(|p| p.len() != 1) {
            return Err(unsupported(
                "patches: 'target' and inline patches are not supported".into(),
            ));
        }
        let patch_path = dir.join(file);
        let docs = parse_yaml_documents(&read(&patch_path)?, &patch_path)?;
        for doc in docs {
            apply_patch(&mut objects, &doc, &patch_path)?;
        }
    }

    if let Some(namespace) = k.get("namespace") {
        let namespace = namespace
            .as_str()
            .ok_or_else(|| unsupported("namespace must be a string".into()))?;
        for object in &mut objects {
            let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
            if !CLUSTER_SCOPED.contains(&kind) {
                metadata(object).insert("namespace".into(), namespace.into());
            }
        }
    }

    for entry in list(k, "labels", &path)? {
        let Some(entry) = entry.as_object() else {
            return Err(unsupported("labels entries must be mappings".into()));
        };
        for (key, value) in entry {
            match key.as_str() {
                "pairs" => {}
                "includeSelectors" | "includeTemplates" if value == &Value::Bool(false) => {}
                _ => {
                    return Err(unsupported(format!(
                        "labels: '{key}: {value}' is not supported (metadata labels only)"
                    )));
                }
            }
        }
        let Some(Value::Object(pairs)) = entry.get("pairs") else {
            return Err(unsupported("labels: 'pairs' must be a mapping".into()));
        };
        for object in &mut objects {
            let meta = metadata(object);
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(labels) = labels {
                for (key, value) in pairs {
                    labels.insert(key.clone(), value.clone());
                }
            }
        }
    }

    for image in list(k, "images", &path)? {
        let Some(image) = image.as_object() else {
            return Err(unsupported("images entries must be mappings".into()));
        };
        if let Some(key) = image
            .keys()
            .find(|key| !["name", "newName", "newTag"].contains(&key.as_str()))
        {
            return Err(unsupported(format!("images: '{key}' is not supported")));
        }
        let name = image
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| unsupported("images: 'name' is required".into()))?;
        let new_name = image.get("newName").and_then(Value::as_str);
        let new_tag = image.get("newTag").and_then(Value::as_str);
        for object in &mut objects {
            set_images(object, name, new_name, new_tag);
        }
    }
    Ok(objects)
}

/// Parses a YAML stream of one or more documents into JSON values.
pub fn parse_yaml_documents(text: &str, path: &Path) -> Result<Vec<Value>, AssembleError> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).map_err(|e| AssembleError::Yaml {
                path: path.to_owned(),
                message: e.to_string(),
            })
        })
        .collect()
}

fn read(path: &Path) -> Result<String, AssembleError> {
    std::fs::read_to_string(path).map_err(|source| AssembleError::Read {
        path: path.to_owned(),
        source,
    })
}

fn list<'a>(
    k: &'a Map<String, Value>,
    key: &str,
    path: &Path,
) -> Result<&'a [Value], AssembleError> {
    match k.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(AssembleError::Unsupported {
            path: path.to_owned(),
            message: format!("'{key}' must be a list"),
        }),
    }
}

fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    let meta = object
        .as_object_mut()
        .map(|o| {
            o.entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut);
    match meta {
        Some(meta) => meta,
        // Checked in `assemble`: every object has metadata.name.
        None => unreachable!("objects are checked to be mappings with metadata"),
    }
}

fn apply_patch(objects: &mut [Value], patch: &Value, path: &Path) -> Result<(), AssembleError> {
    let unsupported = |message: String| AssembleError::Unsupported {
        path: path.to_owned(),
        message,
    };
    if contains_list(patch) {
        return Err(unsupported(
            "a strategic-merge patch with lists is outside the supported subset".into(),
        ));
    }
    let (api_version, kind, namespace, name) = crate::object_id(patch);
    let mut targets = objects.iter_mut().filter(|o| {
        let (a, k, ns, n) = crate::object_id(o);
        a == api_version && k == kind && n == name && (namespace.is_empty() || ns == namespace)
    });
    let (Some(target), None) = (targets.next(), targets.next()) else {
        return Err(unsupported(format!(
            "the patch must match exactly one object ({api_version} {kind} {name})"
        )));
    };
    merge(target, patch);
    Ok(())
}

fn contains_list(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(map) => map.values().any(contains_list),
        _ => false,
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else if let Some(existing) = target.get_mut(key) {
                    merge(existing, value);
                } else {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn set_images(value: &mut Value, name: &str, new_name: Option<&str>, new_tag: Option<&str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if let ("containers" | "initContainers", Value::Array(containers)) =
                    (key.as_str(), &mut *child)
                {
                    for container in containers {
                        if let Some(Value::String(image)) = container.get_mut("image") {
                            retag(image, name, new_name, new_tag);
                        }
                    }
                } else {
                    set_images(child, name, new_name, new_tag);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                set_images(item, name, new_name, new_tag);
            }
        }
        _ => {}
    }
}

fn retag(image: &mut String, name: &str, new_name: Option<&str>, new_tag: Option<&str>) {
    // The repository is everything before a ':' that follows the last '/'.
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match image[slash..].find([':', '@']) {
        Some(i) => image.split_at(slash + i),
        None => (image.as_str(), ""),
    };
    if repo != name {
        return;
    }
    let repo = new_name.unwrap_or(repo).to_owned();
    let tag = new_tag.map_or_else(|| tag.to_owned(), |t| format!(":{t}"));
    *image = format!("{repo}{tag}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retags_only_the_named_image() {
        let mut image = "quay.io/example/app:1".to_owned();
        retag(&mut image, "quay.io/example/app", None, Some("2"));
        assert_eq!(image, "quay.io/example/app:2");
        let mut other = "docker.io/library/postgres:16".to_owned();
        retag(&mut other, "quay.io/example/app", Some("x"), Some("2"));
        assert_eq!(other, "docker.io/library/postgres:16");
        let mut bare = "localhost:5000/app".to_owned();
        retag(&mut bare, "localhost:5000/app", Some("r/app"), Some("3"));
        assert_eq!(bare, "r/app:3");
    }

    #[test]
    fn merge_patches_maps_and_deletes_with_null() {
        let mut target = serde_json::json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge(&mut target, &serde_json::json!({"a": {"b": 5, "c": null}}));
        assert_eq!(target, serde_json::json!({"a": {"b": 5}, "d": 3}));
    }
}
