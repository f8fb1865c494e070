//! Logging: human-readable by default, one JSON object per line when asked.

use dispatcher_core::config::{LogFormat, log_filter_directive};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `verbose` forces `debug`.
pub(crate) fn init(format: LogFormat, level: &str, verbose: bool) -> anyhow::Result<()> {
    let directive = if verbose {
        "debug".to_owned()
    } else {
        log_filter_directive(level)
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
            // The innermost span's fields (request, dispatch pass, trigger)
            // under "span"; the whole list would repeat them on every line.
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}
