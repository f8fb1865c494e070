//! The one way this crate opens a PostgreSQL connection: pool connections,
//! the leader session and migrations all come through [`open`], so transport
//! settings (keepalives, timeouts and TLS, see [`crate::tls`]) live in one
//! place.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use dispatcher_core::ports::StoreError;
use tokio_postgres::error::SqlState;

use crate::error;
use crate::tls::{self, Tls};

/// How connections are opened and kept honest. Values here override the same
/// settings given as URL parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Time allowed to open one connection (TCP, authentication and session
    /// setup together).
    pub connect_timeout: Duration,
    /// Idle time before the first TCP keepalive probe.
    pub keepalive_idle: Duration,
    /// Time between unanswered TCP keepalive probes.
    pub keepalive_interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub keepalive_retries: u32,
    /// Longest time sent data may stay unacknowledged before the kernel drops
    /// the connection (`TCP_USER_TIMEOUT`, Linux).
    pub tcp_user_timeout: Duration,
    /// Server-side limit of one statement (`statement_timeout`, set at
    /// start-up); `None` for no limit. Applies to pool connections and the
    /// leader session; migrations always run without it.
    pub statement_timeout: Option<Duration>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            keepalive_retries: 3,
            tcp_user_timeout: Duration::from_secs(10),
            statement_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Opens one connection to `url` with `options`. TLS follows the URL's
/// `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (libpq's meaning).
///
/// Errors: [`StoreError::Unavailable`] when the server cannot be reached or
/// cannot take the connection right now (refused, timed out, shutting down,
/// too many connections); [`StoreError::Query`] for an invalid URL or a
/// refusal that retrying does not fix (authentication, unknown database).
/// Messages never contain the URL.
pub async fn connect(
    url: &str,
    options: &ConnectionOptions,
) -> Result<AsyncPgConnection, StoreError> {
    open(&config(url, options)?, options.connect_timeout).await
}

/// A parsed URL with the connection options applied and its TLS set-up
/// (certificate files read once, here). Holds the password: never logged.
#[derive(Clone)]
pub(crate) struct Target {
    config: tokio_postgres::Config,
    tls: Tls,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Parses `url` and applies `options` to it; reads the TLS files it names.
pub(crate) fn config(url: &str, options: &ConnectionOptions) -> Result<Target, StoreError> {
    let (url, tls_params) = tls::split(url);
    let (mut tls, ssl_mode) = Tls::new(&tls_params)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        // The parser's messages name the offending parameter, not its value.
        .map_err(|e| StoreError::Query(format!("invalid database URL: {e}").into()))?;
    config
        .connect_timeout(options.connect_timeout)
        .keepalives(true)
        .keepalives_idle(options.keepalive_idle)
        .keepalives_interval(options.keepalive_interval)
        .keepalives_retries(options.keepalive_retries)
        .tcp_user_timeout(options.tcp_user_timeout);
    if let Some(timeout) = options.statement_timeout {
        let setting = format!("-c statement_timeout={}", millis(timeout));
        let startup = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {setting}"),
            _ => setting,
        };
        config.options(startup);
    }
    match ssl_mode {
        Some(mode) => {
            config.ssl_mode(mode);
        }
        // Not given as a URL parameter: a `host=... sslmode=...` string's
        // own (tokio-postgres's modes), or libpq's default `prefer`.
        None => tls.follow(config.get_ssl_mode()),
    }
    Ok(Target { config, tls })
}

/// Connects with a parsed configuration: the single place that opens sockets.
pub(crate) async fn open(
    target: &Target,
    timeout: Duration,
) -> Result<AsyncPgConnection, StoreError> {
    let attempt = async {
        let connector = target.tls.connector.clone();
        let connected = match target.config.connect(connector.clone()).await {
            // libpq's `prefer`: when the TLS session fails (handshake, or
            // pg_hba.conf has no `hostssl` entry for us), try plain text.
            Err(e) if target.tls.plain_may_work(&e) => {
                let mut plain = target.config.clone();
                plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                plain.connect(connector).await
            }
            other => other,
        };
        let (client, connection) = connected.map_err(|e| refused(e, target))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection)
            .await
            .map_err(setup_failed)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(
            format!("timed out after {timeout:?} connecting to PostgreSQL").into(),
        )),
    }
}

/// PostgreSQL settings take milliseconds; at least 1 (0 would mean "off").
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Classifies a failed connection attempt; TLS problems get a sentence that
/// says what to change (the certificate, the host name, `sslmode`).
fn refused(e: tokio_postgres::Error, target: &Target) -> StoreError {
    let transient = match e.code() {
        // No SQLSTATE: I/O (refused, reset, unreachable), TLS, timeout, closed.
        None => true,
        Some(code) => is_transient(code),
    };
    let host = target
        .config
        .get_hosts()
        .iter()
        .find_map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => Some(name.as_str()),
            #[allow(unreachable_patterns)] // Unix sockets exist on unix only
            _ => None,
        })
        .unwrap_or("");
    // tokio-postgres shows a server's refusal as just "db error": say what
    // the server said (authentication, pg_hba.conf, unknown database).
    let error: dispatcher_core::ports::BoxError = match target.tls.explain(&e, host) {
        Some(sentence) => sentence.into(),
        None => match e.as_db_error() {
            Some(db) => db.to_string().into(),
            None => Box::new(e),
        },
    };
    if transient {
        StoreError::Unavailable(error)
    } else {
        StoreError::Query(error)
    }
}

/// Server answers that mean "not now" rather than "never".
fn is_transient(code: &SqlState) -> bool {
    let code = code.code();
    // 08: connection exception; 53: insufficient resources (too many
    // connections); 57P0x: shutting down, starting up, in recovery; 58: system error.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("58")
}

fn setup_failed(e: ConnectionError) -> StoreError {
    match e {
        ConnectionError::CouldntSetupConfiguration(e) => error::query(e),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_applied_over_the_url() {
        let options = ConnectionOptions {
            statement_timeout: Some(Duration::from_millis(1500)),
            ..ConnectionOptions::default()
        };
        let c = config(
            "postgres://u:p@db:5433/x?options=-c%20search_path%3Dapp&keepalives_idle=99",
            &options,
        )
        .unwrap()
        .config;
        assert_eq!(
            c.get_options(),
            Some("-c search_path=app -c statement_timeout=1500")
        );
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
        assert!(c.get_keepalives());

        let none = ConnectionOptions {
            statement_timeout: None,
            ..options
        };
        let c = config("postgres://db/x", &none).unwrap().config;
        assert_eq!(c.get_options(), None);
    }

    #[test]
    fn invalid_urls_do_not_echo_secrets() {
        let Err(e) = config(
            "postgres://u:hunter2@db:notaport/x",
            &ConnectionOptions::default(),
        ) else {
            panic!("accepted an invalid port");
        };
        assert!(matches!(e, StoreError::Query(_)));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn sub_millisecond_settings_do_not_turn_limits_off() {
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }
}
