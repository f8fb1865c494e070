//! Loading the configuration: the YAML file (figment), `${VAR}` expansion,
//! environment overrides, validation. Every failure names the file, field or
//! variable at fault.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dispatcher_core::config::{ConfigErrors, Settings, apply_env_overrides, expand_env, parse};
use figment::Figment;
use figment::providers::{Format, Yaml};

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
    // Always an object: figment reads a file as a map (an empty one as `{}`).
    let mut tree: serde_json::Value = Figment::from(Yaml::file_exact(path))
        .extract()
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    expand_env(&mut tree, env).map_err(ConfigErrors)?;
    apply_env_overrides(&mut tree, env)?;
    let (raw, unknown_keys) = parse(tree)?;
    Ok(Loaded {
        settings: Settings::from_raw(raw)?,
        path: path.to_owned(),
        unknown_keys,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_errors_name_the_file() {
        let err = load(Path::new("/nonexistent/d.yaml"), &|_| None).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("/nonexistent/d.yaml") && err.contains("WEBHOOK_DISPATCHER_CONFIG"));
        let path = std::env::temp_dir().join(format!("dispatcher-cfg-{}.yaml", std::process::id()));
        std::fs::write(&path, "security: [unclosed\n").unwrap();
        let err = format!("{:#}", load(&path, &|_| None).unwrap_err());
        assert!(err.contains("cannot read config file"), "{err}");
        std::fs::write(&path, "").unwrap(); // read as `{}`: only the secret is missing
        let err = load(&path, &|_| None).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("security.github_webhook_secret"), "{err}");
    }
}
