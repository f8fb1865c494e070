//! Every overlay of deploy/kustomize, rendered and checked: each object
//! strictly typed, plus the cross-object rules a typo-free manifest can still
//! break (probes, grace period, config, Secret keys, exposure, security).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dispatcher_core::config::{Settings, apply_env_overrides, expand_env, parse};
use dispatcher_deploycheck::{assemble, check_object, object_id, parse_yaml_documents};
use serde_json::Value;

const OVERLAYS: &[&str] = &["production", "dev"];
const WEBHOOK_PATH: &str = "/api/v1/webhooks/github-pipeline";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn overlay(name: &str) -> Vec<Value> {
    let dir = repo().join("deploy/kustomize/overlays").join(name);
    assemble(&dir).unwrap_or_else(|e| panic!("assembling {name}: {e}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn one<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Pod specs of every workload, with the workload's kind and name.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "Job")
            )
        })
        .map(|o| {
            (
                format!("{} {}", o["kind"], o["metadata"]["name"]),
                &o["spec"]["template"]["spec"],
            )
        })
        .collect()
}

#[test]
fn every_object_of_every_overlay_parses_strictly() {
    for name in OVERLAYS {
        let objects = overlay(name);
        assert!(!objects.is_empty());
        let errors: Vec<String> = objects
            .iter()
            .filter_map(|o| check_object(o).err().map(|e| e.to_string()))
            .collect();
        assert!(errors.is_empty(), "overlay {name}:\n{}", errors.join("\n"));
        let ids: Vec<String> = objects
            .iter()
            .map(|o| {
                let (_, kind, ns, n) = object_id(o);
                format!("{kind} {ns}/{n}")
            })
            .collect();
        eprintln!("overlay {name}: {}", ids.join(", "));
    }
}

#[test]
fn overlays_hold_what_the_deployment_needs() {
    for name in OVERLAYS {
        let objects = overlay(name);
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "NetworkPolicy",
        ] {
            assert!(kinds.contains(kind), "overlay {name} lacks a {kind}");
        }
        assert!(
            kinds.contains("Route") || kinds.contains("Ingress"),
            "overlay {name} exposes nothing"
        );
        let deployment = one(&objects, "Deployment", "webhook-dispatcher");
        assert_eq!(deployment["spec"]["replicas"], 2, "{name}");
        let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap();
        assert!(
            image.contains(':') && !image.ends_with(":latest") || *name == "dev",
            "{name}: production images are pinned: {image}"
        );
    }
    let production = overlay("production");
    one(&production, "Job", "webhook-dispatcher-migrate");
    one(&production, "Route", "webhook-dispatcher");
    let dev = overlay("dev");
    let postgres = one(&dev, "StatefulSet", "webhook-dispatcher-postgres");
    let image = postgres["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with("docker.io/library/postgres:") && !image.ends_with(":latest"),
        "{image}"
    );
    assert!(postgres["spec"]["volumeClaimTemplates"].is_array());
    one(&dev, "Service", "webhook-dispatcher-postgres");
    for secret in of_kind(&dev, "Secret") {
        assert_eq!(
            secret["metadata"]["labels"]["webhook-dispatcher/dev-only"], "true",
            "dev Secrets are labelled as such"
        );
    }
    assert_eq!(
        of_kind(&production, "Secret").count(),
        0,
        "production ships no Secret"
    );
}

#[test]
fn rbac_grants_list_and_watch_of_pipelineruns_only() {
    for name in OVERLAYS {
        let objects = overlay(name);
        let account = one(&objects, "ServiceAccount", "webhook-dispatcher");
        let app_namespace = account["metadata"]["namespace"].as_str().unwrap();
        // `patch` (cancelling runs) only where the config enables it.
        let cancels = config_of(&objects)
            .items
            .iter()
            .any(|i| i.cancel_superseded || i.cancel_on_close);
        for role in of_kind(&objects, "Role") {
            let patch = serde_json::json!([{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["patch"]}]);
            if cancels && role["rules"] == patch {
                continue;
            }
            assert_eq!(
                role["rules"],
                serde_json::json!([{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["list", "watch"]}]),
                "{name}"
            );
        }
        for binding in of_kind(&objects, "RoleBinding") {
            let role_ns = &binding["metadata"]["namespace"];
            assert!(
                of_kind(&objects, "Role")
                    .any(|r| r["metadata"]["name"] == binding["roleRef"]["name"]
                        && &r["metadata"]["namespace"] == role_ns),
                "{name}: the RoleBinding's Role is in its namespace"
            );
            assert_eq!(
                binding["subjects"],
                serde_json::json!([{"kind": "ServiceAccount", "name": "webhook-dispatcher", "namespace": app_namespace}]),
                "{name}"
            );
        }
        // Every pool namespace of the shipped config is covered.
        let settings = config_of(&objects);
        for pool in settings.pools.values() {
            assert!(
                of_kind(&objects, "RoleBinding")
                    .any(|b| b["metadata"]["namespace"] == pool.namespace.as_str()),
                "{name}: no RoleBinding in pool namespace {}",
                pool.namespace
            );
        }
    }
}

/// The config file of the overlay's ConfigMap, through the dispatcher's own
/// parser, with dummy values for the variables it references.
fn config_of(objects: &[Value]) -> Settings {
    let map = one(objects, "ConfigMap", "webhook-dispatcher");
    let text = map["data"]["dispatcher_config.yaml"].as_str().unwrap();
    let mut docs = parse_yaml_documents(text, Path::new("dispatcher_config.yaml")).unwrap();
    assert_eq!(docs.len(), 1);
    let mut tree = docs.remove(0);
    let env = |k: &str| match k {
        "GITHUB_WEBHOOK_SECRET" => Some("dummy-secret".to_owned()),
        "DATABASE_URL" => Some("postgres://u:p@db:5432/d".to_owned()),
        "METRICS_TOKEN" => Some("dummy-metrics".to_owned()),
        _ => None,
    };
    expand_env(&mut tree, &env).unwrap();
    apply_env_overrides(&mut tree, &env).unwrap();
    let (raw, unknown) = parse(tree).unwrap();
    assert!(unknown.is_empty(), "unknown config keys: {unknown:?}");
    Settings::from_raw(raw).unwrap()
}

#[test]
fn the_configmap_config_passes_the_dispatchers_validation() {
    for name in OVERLAYS {
        let settings = config_of(&overlay(name));
        assert!(!settings.items.is_empty(), "{name}");
        assert_eq!(
            settings.server.port, 5000,
            "{name}: the port the manifests use"
        );
    }
    assert!(!config_of(&overlay("production")).database.migrate_on_start);
    assert!(config_of(&overlay("dev")).database.migrate_on_start);
}

#[test]
fn grace_period_covers_the_shutdown() {
    for name in OVERLAYS {
        let objects = overlay(name);
        let settings = config_of(&objects);
        let deployment = one(&objects, "Deployment", "webhook-dispatcher");
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap();
        // bins/dispatcher/src/serve.rs: the HTTP drain, then the dispatcher's
        // stop limit of trigger_timeout + 5 s.
        let needed = settings.server.shutdown_delay
            + settings.server.shutdown_timeout
            + settings.dispatch.trigger_timeout
            + Duration::from_secs(5);
        assert!(
            Duration::from_secs(grace) > needed,
            "{name}: terminationGracePeriodSeconds {grace} must exceed {needed:?}"
        );
    }
}

/// The paths the service really serves, from its OpenAPI document.
fn served_paths() -> BTreeSet<String> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("crates/http/assets/openapi.json")).unwrap(),
    )
    .unwrap();
    doc["paths"].as_object().unwrap().keys().cloned().collect()
}

#[test]
fn probes_and_monitoring_point_at_real_endpoints() {
    let served = served_paths();
    for name in OVERLAYS {
        let objects = overlay(name);
        let deployment = one(&objects, "Deployment", "webhook-dispatcher");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let ports: BTreeSet<&str> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for (probe, expected) in [
            ("startupProbe", "/api/v1/status/ping"),
            ("readinessProbe", "/api/v1/status/ready"),
            ("livenessProbe", "/api/v1/status/live"),
        ] {
            let get = &container[probe]["httpGet"];
            let path = get["path"].as_str().unwrap_or_default();
            assert_eq!(path, expected, "{name}: {probe}");
            assert!(
                served.contains(path),
                "{name}: {probe} {path} is not served"
            );
            assert!(
                ports.contains(get["port"].as_str().unwrap()),
                "{name}: {probe} port"
            );
            assert!(
                container[probe]["timeoutSeconds"].as_u64().is_some(),
                "{name}: {probe} timeout"
            );
        }
        assert_eq!(container["ports"][0]["containerPort"], 5000);

        let service = one(&objects, "Service", "webhook-dispatcher");
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let selects = |selector: &Value| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &pod_labels[k] == v)
        };
        assert!(
            selects(&service["spec"]["selector"]),
            "{name}: Service selector"
        );
        assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
        let pdb = one(&objects, "PodDisruptionBudget", "webhook-dispatcher");
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"]),
            "{name}: PDB selector"
        );
        let policy = one(&objects, "NetworkPolicy", "webhook-dispatcher");
        assert!(
            selects(&policy["spec"]["podSelector"]["matchLabels"]),
            "{name}: NetworkPolicy selector"
        );

        let monitor = one(&objects, "ServiceMonitor", "webhook-dispatcher");
        let service_labels = &service["metadata"]["labels"];
        assert!(
            monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &service_labels[k] == v),
            "{name}: the ServiceMonitor selects the Service"
        );
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert!(
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == endpoint["port"])
        );
        assert!(served.contains(endpoint["path"].as_str().unwrap()));
    }
}

#[test]
fn only_the_webhook_path_is_exposed() {
    for name in OVERLAYS {
        let objects = overlay(name);
        for route in of_kind(&objects, "Route") {
            assert_eq!(route["spec"]["path"], WEBHOOK_PATH, "{name}");
            assert_eq!(route["spec"]["to"]["name"], "webhook-dispatcher");
            assert_eq!(
                route["spec"]["tls"]["insecureEdgeTerminationPolicy"],
                "Redirect"
            );
        }
        for ingress in of_kind(&objects, "Ingress") {
            for rule in ingress["spec"]["rules"].as_array().unwrap() {
                for path in rule["http"]["paths"].as_array().unwrap() {
                    assert_eq!(path["path"], WEBHOOK_PATH, "{name}");
                    assert_eq!(path["pathType"], "Exact", "{name}");
                }
            }
            assert!(ingress["spec"]["defaultBackend"].is_null(), "{name}");
        }
    }
}

#[test]
fn every_pod_runs_restricted() {
    for name in OVERLAYS {
        let objects = overlay(name);
        for (workload, spec) in pod_specs(&objects) {
            let pod = &spec["securityContext"];
            assert_eq!(pod["runAsNonRoot"], true, "{name}: {workload}");
            assert_eq!(
                pod["seccompProfile"]["type"], "RuntimeDefault",
                "{name}: {workload}"
            );
            for container in spec["containers"].as_array().unwrap() {
                let sc = &container["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}: {workload}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: {workload}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}: {workload}"
                );
                assert!(sc["privileged"] != true, "{name}: {workload}");
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{name}: {workload}"
                );
            }
        }
    }
}

/// Secret name → keys referenced by pods (`optional` ones apart).
fn secret_refs(objects: &[Value]) -> BTreeMap<(String, String), bool> {
    let mut refs = BTreeMap::new();
    for (_, spec) in pod_specs(objects) {
        for container in spec["containers"].as_array().unwrap() {
            for env in container["env"].as_array().into_iter().flatten() {
                let r = &env["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    refs.insert(
                        (
                            r["name"].as_str().unwrap().to_owned(),
                            r["key"].as_str().unwrap().to_owned(),
                        ),
                        r["optional"] == true,
                    );
                }
            }
        }
    }
    refs
}

#[test]
fn secret_keys_referenced_exist_in_the_dev_overlay() {
    let dev = overlay("dev");
    let refs = secret_refs(&dev);
    assert!(refs.contains_key(&("webhook-dispatcher".into(), "github-webhook-secret".into())));
    for ((secret, key), optional) in &refs {
        if *optional {
            continue;
        }
        let object = one(&dev, "Secret", secret);
        let has = ["data", "stringData"]
            .iter()
            .any(|field| object[field].get(key).is_some());
        assert!(has, "dev Secret {secret} lacks key {key}");
    }
    // The GitHub token is optional everywhere.
    for name in OVERLAYS {
        let refs = secret_refs(&overlay(name));
        assert_eq!(
            refs.get(&("webhook-dispatcher".into(), "github-token".into())),
            Some(&true),
            "{name}"
        );
    }
}

/// `kubectl kustomize` or `kustomize build`, when installed: the built-in
/// assembler must agree with it object for object.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let attempts: [(&str, &[&str]); 2] = [("kustomize", &["build"]), ("kubectl", &["kustomize"])];
    for (program, args) in attempts {
        let Ok(out) = Command::new(program).args(args).arg(dir).output() else {
            continue;
        };
        assert!(
            out.status.success(),
            "{program} {args:?} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return Some(parse_yaml_documents(&String::from_utf8(out.stdout).unwrap(), dir).unwrap());
    }
    None
}

#[test]
fn the_assembler_agrees_with_kustomize_when_installed() {
    for name in OVERLAYS {
        let dir = repo().join("deploy/kustomize/overlays").join(name);
        let Some(rendered) = kustomize(&dir) else {
            eprintln!("neither kustomize nor kubectl is installed: built-in assembler only");
            return;
        };
        let by_id = |objects: Vec<Value>| -> BTreeMap<_, _> {
            objects.into_iter().map(|o| (object_id(&o), o)).collect()
        };
        let ours = by_id(overlay(name));
        let theirs = by_id(rendered);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{name}: the same objects"
        );
        for (id, object) in &ours {
            assert_eq!(
                object, &theirs[id],
                "{name}: {id:?} differs from kustomize's"
            );
        }
    }
}

#[test]
fn the_assembler_refuses_what_it_does_not_know() {
    let dir = std::env::temp_dir().join(format!("deploycheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources: []\ncommonLabels: {a: b}\n",
    )
    .unwrap();
    let err = assemble(&dir).unwrap_err().to_string();
    assert!(err.contains("commonLabels"), "{err}");
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources: [d.yaml]\npatches: [{path: p.yaml}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("d.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {list: [1]}\n",
    )
    .unwrap();
    let err = assemble(&dir).unwrap_err().to_string();
    assert!(err.contains("lists"), "{err}");
    // And a typo in a resource fails the strict check.
    std::fs::write(
        dir.join("d.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndatta: {a: b}\n",
    )
    .unwrap();
    std::fs::write(dir.join("kustomization.yaml"), "resources: [d.yaml]\n").unwrap();
    let objects = assemble(&dir).unwrap();
    let err = check_object(&objects[0]).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("datta"), "{err}");
}

#[test]
fn containerfile_basics() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            !tag.is_empty() && tag != "latest",
            "{from}: pin base images by tag"
        );
    }
    let users: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("USER "))
        .copied()
        .collect();
    let user = users.last().expect("a USER");
    let (uid, gid) = user[5..]
        .trim()
        .split_once(':')
        .unwrap_or((user[5..].trim(), "0"));
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "{user}: numeric non-root"
    );
    assert_eq!(gid, "0", "group 0 for OpenShift's arbitrary UIDs");
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "crates",
        "bins",
        "migrations",
    ] {
        assert!(root.join(needed).exists(), "{needed}");
    }
    assert!(text.contains("cp Cargo.toml Cargo.lock rust-toolchain.toml"));
    assert!(text.contains("--locked -p dispatcher"));
    assert!(
        text.contains("ln -s dispatcher /out/bin/webhook-dispatcher"),
        "both command names"
    );
    assert!(text.contains("org.opencontainers.image.source"));
    // The build context keeps what the build reads.
    let ignore = std::fs::read_to_string(root.join(".containerignore")).unwrap();
    for kept in ["crates", "bins", "migrations", "config", "Cargo"] {
        assert!(
            !ignore.lines().any(|l| l.trim_end_matches('/') == kept),
            ".containerignore drops {kept}"
        );
    }
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

#[test]
fn pool_cancel_grants_patch_of_pipelineruns_only() {
    let dir = repo().join("deploy/kustomize/pool-cancel");
    let objects = assemble(&dir).unwrap_or_else(|e| panic!("assembling pool-cancel: {e}"));
    for object in &objects {
        check_object(object).unwrap_or_else(|e| panic!("{:?}: {e}", object_id(object)));
    }
    let role = one(&objects, "Role", "webhook-dispatcher-pipelineruns-cancel");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": ["tekton.dev"], "resources": ["pipelineruns"], "verbs": ["patch"]}])
    );
    assert_eq!(role["metadata"]["namespace"], "operator-pipeline-prod");
    let binding = one(
        &objects,
        "RoleBinding",
        "webhook-dispatcher-pipelineruns-cancel",
    );
    assert_eq!(
        binding["roleRef"]["name"],
        "webhook-dispatcher-pipelineruns-cancel"
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "webhook-dispatcher", "namespace": "webhook-dispatcher"}])
    );
}
