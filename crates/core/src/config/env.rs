//! Environment variables that override configuration keys, as the original
//! deployment sets them. Part of the drop-in contract; the environment is
//! passed in as a lookup function so this stays pure.

use serde_json::{Map, Value};

use super::database_url_from_parts;

/// An environment variable that cannot be applied to the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `DISPATCHER_PORT` is not a port number (the value as given).
    #[error("invalid environment:\n  - DISPATCHER_PORT: must be a port number (got '{0}')")]
    DispatcherPort(String),
    /// `POSTGRESQL_PORT` is not a port number (the value as given).
    #[error("POSTGRESQL_PORT: must be a port number (got '{0}')")]
    PostgresqlPort(String),
}

/// Variables copied verbatim onto a key.
const STRING_OVERRIDES: [(&str, &str); 4] = [
    ("GITHUB_TOKEN", "github.token"),
    ("GITHUB_API_URL", "github.api_url"),
    ("LOG_LEVEL", "logging.level"),
    ("LOG_FORMAT", "logging.format"),
];

/// Applies the environment overrides to a parsed (and `${VAR}`-expanded)
/// config tree, creating objects as needed; empty variables are ignored.
///
/// - `DISPATCHER_PORT` → `server.port` (must be a port number);
/// - `DATABASE_URL`, else a URL built from `POSTGRESQL_USER`, `_PASSWORD`,
///   `_HOST` (`localhost`), `_PORT` (5432) and `_DATABASE`
///   (`webhook_dispatcher`) when any is set → `database.url`;
/// - `GITHUB_TOKEN`, `GITHUB_API_URL`, `LOG_LEVEL`, `LOG_FORMAT` →
///   `github.token`, `github.api_url`, `logging.level`, `logging.format`;
/// - `GITHUB_WEBHOOK_SECRET` → `security.github_webhook_secret`, only when
///   the file configures none (an empty string or list counts as none).
///
/// On error the tree may be partly updated and should be discarded.
pub fn apply_env_overrides(
    tree: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(url) = database_url(&get)? {
        set(tree, "database.url", Value::String(url));
    }
    if let Some(port) = get("DISPATCHER_PORT") {
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| EnvError::DispatcherPort(port))?;
        set(tree, "server.port", port.into());
    }
    for (var, key) in STRING_OVERRIDES {
        if let Some(value) = get(var) {
            set(tree, key, Value::String(value));
        }
    }
    if let Some(secret) = get("GITHUB_WEBHOOK_SECRET") {
        let configured = match tree.pointer("/security/github_webhook_secret") {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        };
        if !configured {
            set(
                tree,
                "security.github_webhook_secret",
                Value::String(secret),
            );
        }
    }
    Ok(())
}

/// `DATABASE_URL`, else a URL built from the original's `POSTGRESQL_*` variables.
fn database_url(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, EnvError> {
    if let Some(url) = get("DATABASE_URL") {
        return Ok(Some(url));
    }
    let vars = [
        "POSTGRESQL_USER",
        "POSTGRESQL_PASSWORD",
        "POSTGRESQL_HOST",
        "POSTGRESQL_PORT",
        "POSTGRESQL_DATABASE",
    ]
    .map(get);
    if vars.iter().all(Option::is_none) {
        return Ok(None);
    }
    let [user, password, host, port, database] = vars;
    let port = match port {
        Some(p) => p.trim().parse().map_err(|_| EnvError::PostgresqlPort(p))?,
        None => 5432,
    };
    Ok(Some(database_url_from_parts(
        user.as_deref().unwrap_or("postgres"),
        password.as_deref(),
        host.as_deref().unwrap_or("localhost"),
        port,
        database.as_deref().unwrap_or("webhook_dispatcher"),
    )))
}

/// Sets the dotted `key`, replacing anything that is not an object on the way.
fn set(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    for part in key.split('.') {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map.entry(part).or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::config::{ConfigErrors, Settings, expand_env, parse};

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// What the binary does after reading the file.
    fn load(
        mut tree: Value,
        vars: &[(&str, &str)],
    ) -> Result<(Settings, Vec<String>), Box<dyn std::error::Error>> {
        let env = env(vars);
        expand_env(&mut tree, &env).map_err(ConfigErrors)?;
        apply_env_overrides(&mut tree, &env)?;
        let (raw, unknown) = parse(tree)?;
        Ok((Settings::from_raw(raw)?, unknown))
    }

    /// The original service's example file, as the YAML reader parses it.
    fn original() -> Value {
        json!({
            "dispatcher": {"items": [{
                "name": "Community Operators",
                "events": ["opened", "synchronize", "ready_for_review"],
                "full_repository_name": "redhat-openshift-ecosystem/community-operators",
                "capacity": {
                    "type": "ocp_tekton",
                    "pipeline_name": "operator-hosted-pipeline",
                    "max_capacity": 5,
                    "namespace": "operator-pipeline-prod",
                    "annotation_selector": {
                        "operator-pipelines.redhat.com/repository": "redhat-openshift-ecosystem/community-operators"
                    }
                },
                "filter": {"cel_expression": "body.pull_request.base.ref == \"main\""},
                "callback_url": "https://el-operator-pipeline.example.com"
            }]},
            "security": {
                "github_webhook_secret": "${GITHUB_WEBHOOK_SECRET}",
                "verify_signatures": true,
                "allowed_github_events": ["pull_request"]
            }
        })
    }

    #[test]
    fn loads_the_original_file_unchanged() {
        let vars = [
            ("GITHUB_WEBHOOK_SECRET", "s3cr3t"),
            ("DISPATCHER_PORT", "8081"),
        ];
        let (s, unknown) = load(original(), &vars).unwrap();
        assert_eq!(s.security.webhook_secrets[0].expose(), "s3cr3t");
        assert_eq!(s.server.port, 8081);
        assert_eq!(s.items[0].name, "Community Operators");
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn unset_variable_is_named() {
        let err = load(original(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("GITHUB_WEBHOOK_SECRET") && err.contains("security.github_webhook_secret"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides() {
        let file = json!({"security": {"verify_signatures": false}});
        let (s, _) = load(
            file.clone(),
            &[
                ("POSTGRESQL_USER", "app"),
                ("POSTGRESQL_PASSWORD", "p@ss word"),
                ("POSTGRESQL_HOST", "db"),
                ("GITHUB_TOKEN", "ghp_x"),
                ("GITHUB_API_URL", "https://ghe.example/api/v3"),
                ("LOG_LEVEL", "debug"),
                ("LOG_FORMAT", "json"),
                ("DISPATCHER_PORT", " 8081 "),
            ],
        )
        .unwrap();
        assert_eq!(
            s.database.url.unwrap().expose(),
            "postgres://app:p%40ss%20word@db:5432/webhook_dispatcher"
        );
        assert_eq!(s.github.token.unwrap().expose(), "ghp_x");
        assert_eq!(s.github_api_url.as_str(), "https://ghe.example/api/v3");
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.log_format, crate::config::LogFormat::Json);
        assert_eq!(s.server.port, 8081);
        let vars = [
            ("DATABASE_URL", "postgres://x/y"),
            ("POSTGRESQL_HOST", "ignored"),
        ];
        let (s, _) = load(file.clone(), &vars).unwrap();
        assert_eq!(s.database.url.unwrap().expose(), "postgres://x/y");
        let (s, _) = load(file, &[("POSTGRESQL_DATABASE", "d")]).unwrap();
        assert_eq!(
            s.database.url.unwrap().expose(),
            "postgres://postgres@localhost:5432/d"
        );
    }

    #[test]
    fn overrides_set_only_their_keys_and_ignore_empty_variables() {
        let mut tree = json!({"server": {"bind": "127.0.0.1", "port": 1}, "github": "not a map"});
        let vars = [
            ("DISPATCHER_PORT", "2"),
            ("GITHUB_TOKEN", "t"),
            ("LOG_LEVEL", ""),
            ("DATABASE_URL", ""),
        ];
        apply_env_overrides(&mut tree, &env(&vars)).unwrap();
        assert_eq!(
            tree,
            json!({"server": {"bind": "127.0.0.1", "port": 2}, "github": {"token": "t"}})
        );
    }

    #[test]
    fn secret_from_environment_only_when_not_configured() {
        let vars = [("GITHUB_WEBHOOK_SECRET", "from-env")];
        for file in [
            json!({}),
            json!({"security": {"github_webhook_secret": ""}}),
            json!({"security": {"github_webhook_secret": []}}),
        ] {
            let (s, _) = load(file, &vars).unwrap();
            assert_eq!(s.security.webhook_secrets.len(), 1);
            assert_eq!(s.security.webhook_secrets[0].expose(), "from-env");
        }
        let file = json!({"security": {"github_webhook_secret": ["a", "b"]}});
        let (s, _) = load(file, &vars).unwrap();
        assert_eq!(s.security.webhook_secrets.len(), 2);
        assert_eq!(s.security.webhook_secrets[0].expose(), "a");
    }

    #[test]
    fn bad_ports_name_their_variable() {
        let vars = [("GITHUB_WEBHOOK_SECRET", "x"), ("DISPATCHER_PORT", "http")];
        let err = load(json!({}), &vars).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid environment:\n  - DISPATCHER_PORT: must be a port number (got 'http')"
        );
        let mut tree = json!({});
        let err = apply_env_overrides(&mut tree, &env(&[("POSTGRESQL_PORT", "x")])).unwrap_err();
        assert_eq!(err, EnvError::PostgresqlPort("x".to_owned()));
        assert_eq!(
            err.to_string(),
            "POSTGRESQL_PORT: must be a port number (got 'x')"
        );
        let vars = [("DISPATCHER_PORT", "http"), ("POSTGRESQL_PORT", "x")];
        let err = apply_env_overrides(&mut json!({}), &env(&vars)).unwrap_err();
        assert_eq!(
            err,
            EnvError::PostgresqlPort("x".to_owned()),
            "reported first"
        );
        let err = load(json!({}), &[]).unwrap_err().to_string();
        assert!(err.contains("security.github_webhook_secret"), "{err}");
    }
}
