//! Logging: human-readable by default, one JSON object per line when asked.

use dispatcher_core::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Turns the original service's level names (`INFO`, `WARNING`) into a
/// tracing filter; anything else is taken as a filter directive.
fn directive(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_owned(),
        "critical" | "fatal" => "error".to_owned(),
        "" => "info".to_owned(),
        other => other.to_owned(),
    }
}

/// Installs the global subscriber. `verbose` forces `debug`.
pub(crate) fn init(format: LogFormat, level: &str, verbose: bool) -> anyhow::Result<()> {
    let directive = if verbose {
        "debug".to_owned()
    } else {
        directive(level)
    };
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| anyhow::anyhow!("LOG_LEVEL / logging.level '{level}': {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_level_names_work() {
        assert_eq!(directive("WARNING"), "warn");
        assert_eq!(directive("INFO"), "info");
        assert_eq!(
            directive("dispatcher_core=debug,info"),
            "dispatcher_core=debug,info"
        );
    }
}
