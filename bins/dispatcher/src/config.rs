//! Loading the configuration: the YAML file (figment), `${VAR}` expansion,
//! environment overrides, validation. Every failure names the file, field or
//! variable at fault.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dispatcher_core::config::{ConfigErrors, Settings, database_url_from_parts, expand_env, parse};
use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};

/// Default path of the config file (the original service's).
pub(crate) const DEFAULT_CONFIG_PATH: &str = "./config/dispatcher_config.yaml";

/// A loaded configuration plus what to warn about once logging is up.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The validated settings.
    pub(crate) settings: Settings,
    /// Where they came from.
    pub(crate) path: PathBuf,
    /// Unknown keys in the file (ignored, probably typos).
    pub(crate) unknown_keys: Vec<String>,
}

/// Reads `path`, expands `${VAR}`, applies environment overrides, validates.
pub(crate) fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Loaded> {
    if !path.is_file() {
        bail!(
            "config file {} not found (set WEBHOOK_DISPATCHER_CONFIG or --config)",
            path.display()
        );
    }
    let mut tree: serde_json::Value = Figment::from(Yaml::file_exact(path))
        .extract()
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    if tree.is_null() {
        tree = serde_json::json!({});
    }
    expand_env(&mut tree, env).map_err(|errors| anyhow::anyhow!(ConfigErrors(errors)))?;

    let mut figment = Figment::from(Serialized::defaults(tree));
    let mut env_errors = Vec::new();
    if let Some(port) = env("DISPATCHER_PORT").filter(|p| !p.is_empty()) {
        match port.trim().parse::<u16>() {
            Ok(port) => figment = figment.merge(Serialized::default("server.port", port)),
            Err(_) => env_errors.push(format!(
                "DISPATCHER_PORT: must be a port number (got '{port}')"
            )),
        }
    }
    if let Some(url) = database_url(env)? {
        figment = figment.merge(Serialized::default("database.url", url));
    }
    for (var, key) in [
        ("GITHUB_TOKEN", "github.token"),
        ("GITHUB_API_URL", "github.api_url"),
        ("LOG_LEVEL", "logging.level"),
        ("LOG_FORMAT", "logging.format"),
    ] {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    // The secret may come from the environment alone, as in the original deployment.
    if let Some(secret) = env("GITHUB_WEBHOOK_SECRET").filter(|v| !v.is_empty()) {
        let tree: serde_json::Value = figment.extract().context("merging environment overrides")?;
        let configured = tree
            .pointer("/security/github_webhook_secret")
            .is_some_and(|s| match s {
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                _ => false,
            });
        if !configured {
            figment = figment.merge(Serialized::default(
                "security.github_webhook_secret",
                secret,
            ));
        }
    }
    if !env_errors.is_empty() {
        bail!("invalid environment:\n  - {}", env_errors.join("\n  - "));
    }
    let tree: serde_json::Value = figment.extract().context("merging environment overrides")?;
    let (raw, unknown_keys) = parse(tree).map_err(anyhow::Error::new)?;
    let settings = Settings::from_raw(raw).map_err(anyhow::Error::new)?;
    Ok(Loaded {
        settings,
        path: path.to_owned(),
        unknown_keys,
    })
}

/// `DATABASE_URL`, else a URL built from the original's `POSTGRESQL_*` variables.
fn database_url(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<String>> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(url) = get("DATABASE_URL") {
        return Ok(Some(url));
    }
    let parts = [
        "POSTGRESQL_USER",
        "POSTGRESQL_PASSWORD",
        "POSTGRESQL_HOST",
        "POSTGRESQL_PORT",
        "POSTGRESQL_DATABASE",
    ];
    if parts.iter().all(|k| get(k).is_none()) {
        return Ok(None);
    }
    let port = match get("POSTGRESQL_PORT") {
        Some(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("POSTGRESQL_PORT: must be a port number (got '{p}')"))?,
        None => 5432,
    };
    Ok(Some(database_url_from_parts(
        &get("POSTGRESQL_USER").unwrap_or_else(|| "postgres".to_owned()),
        get("POSTGRESQL_PASSWORD").as_deref(),
        &get("POSTGRESQL_HOST").unwrap_or_else(|| "localhost".to_owned()),
        port,
        &get("POSTGRESQL_DATABASE").unwrap_or_else(|| "webhook_dispatcher".to_owned()),
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::HashMap;

    use super::*;

    const ORIGINAL: &str = r#"
dispatcher:
  items:
    - name: "Community Operators"
      events: [opened, synchronize, ready_for_review]
      full_repository_name: "redhat-openshift-ecosystem/community-operators"
      capacity:
        type: ocp_tekton
        pipeline_name: "operator-hosted-pipeline"
        max_capacity: 5
        namespace: "operator-pipeline-prod"
        annotation_selector:
          operator-pipelines.redhat.com/repository: "redhat-openshift-ecosystem/community-operators"
      filter:
        cel_expression: 'body.pull_request.base.ref == "main"'
      callback_url: "https://el-operator-pipeline.example.com"
security:
  github_webhook_secret: "${GITHUB_WEBHOOK_SECRET}"
  verify_signatures: true
  allowed_github_events: [pull_request]
"#;

    fn write(content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dispatcher-config-test-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.yaml",
            content
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        ));
        std::fs::write(&path, content).unwrap();
        path
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn loads_the_original_file_unchanged() {
        let path = write(ORIGINAL);
        let loaded = load(
            &path,
            &env(&[
                ("GITHUB_WEBHOOK_SECRET", "s3cr3t"),
                ("DISPATCHER_PORT", "8081"),
            ]),
        )
        .unwrap();
        let s = loaded.settings;
        assert_eq!(s.security.webhook_secrets[0].expose(), "s3cr3t");
        assert_eq!(s.server.port, 8081);
        assert_eq!(s.items[0].name, "Community Operators");
        assert!(loaded.unknown_keys.is_empty());
    }

    #[test]
    fn unset_variable_is_named() {
        let err = load(&write(ORIGINAL), &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("GITHUB_WEBHOOK_SECRET") && err.contains("security.github_webhook_secret"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides() {
        let path = write("security:\n  verify_signatures: false\n");
        let e = env(&[
            ("POSTGRESQL_USER", "app"),
            ("POSTGRESQL_PASSWORD", "p@ss word"),
            ("POSTGRESQL_HOST", "db"),
            ("GITHUB_TOKEN", "ghp_x"),
            ("GITHUB_API_URL", "https://ghe.example/api/v3"),
            ("LOG_LEVEL", "debug"),
        ]);
        let s = load(&path, &e).unwrap().settings;
        assert_eq!(
            s.database.url.unwrap().expose(),
            "postgres://app:p%40ss%20word@db:5432/webhook_dispatcher"
        );
        assert_eq!(s.github.token.unwrap().expose(), "ghp_x");
        assert_eq!(s.github_api_url.as_str(), "https://ghe.example/api/v3");
        assert_eq!(s.log_level, "debug");
        let s = load(
            &path,
            &env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("POSTGRESQL_HOST", "ignored"),
            ]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.database.url.unwrap().expose(), "postgres://x/y");
    }

    #[test]
    fn secret_from_environment_only_when_not_configured() {
        let s = load(
            &write("{}\n"),
            &env(&[("GITHUB_WEBHOOK_SECRET", "from-env")]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.security.webhook_secrets[0].expose(), "from-env");
        let s = load(
            &write("security:\n  github_webhook_secret: [a, b]\n"),
            &env(&[("GITHUB_WEBHOOK_SECRET", "from-env")]),
        )
        .unwrap()
        .settings;
        assert_eq!(s.security.webhook_secrets.len(), 2);
    }

    #[test]
    fn bad_inputs_name_their_source() {
        let err = load(Path::new("/nonexistent/dispatcher.yaml"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/dispatcher.yaml")
                && err.contains("WEBHOOK_DISPATCHER_CONFIG"),
            "{err}"
        );
        let err = load(&write("security: [unclosed\n"), &env(&[])).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read config file"),
            "{err:#}"
        );
        let err = load(
            &write("{}\n"),
            &env(&[("GITHUB_WEBHOOK_SECRET", "x"), ("DISPATCHER_PORT", "http")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("DISPATCHER_PORT"), "{err}");
        let err = load(&write("{}\n"), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("security.github_webhook_secret"), "{err}");
    }
}
