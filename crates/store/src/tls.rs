//! TLS to PostgreSQL with libpq's parameters: `sslmode` (`disable`,
//! `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert`,
//! `sslcert` and `sslkey`, on rustls with the ring provider.
//!
//! tokio-postgres only knows `disable`, `prefer` and `require`, so these
//! parameters are taken off the URL here and turned into a rustls client
//! configuration whose certificate verifier gives each mode libpq's meaning
//! (only the URL form, `postgres://...?sslmode=...`, is read here; a
//! `host=... sslmode=...` string keeps tokio-postgres's three modes):
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it; plain text if the TLS session fails | no |
//! | `require` | always | no; with `sslrootcert`, as `verify-ca` (libpq does the same) |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and valid for the host name |

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dispatcher_core::ports::StoreError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The URL parameters handled here (never handed to tokio-postgres).
#[cfg(test)]
const PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` (plain first, TLS if refused) is not offered.
            other => {
                return Err(invalid(format!(
                    "invalid sslmode '{other}': expected disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The TLS parameters of a URL, as given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<PathBuf>,
    pub(crate) sslcert: Option<PathBuf>,
    pub(crate) sslkey: Option<PathBuf>,
}

/// Takes the TLS parameters off a `postgres://` URL: the URL tokio-postgres
/// gets and the parameters. Other forms (`host=... dbname=...`) are returned
/// unchanged, their `sslmode` is tokio-postgres's (`disable`, `prefer`,
/// `require`, without certificate checks).
pub(crate) fn split(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return (url.to_owned(), params);
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match decode(key).as_str() {
            "sslmode" => params.sslmode = Some(value),
            "sslrootcert" => params.sslrootcert = Some(value.into()),
            "sslcert" => params.sslcert = Some(value.into()),
            "sslkey" => params.sslkey = Some(value.into()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, params)
}

/// `url` with the given TLS parameters set (replacing the URL's own): how
/// the `database.ssl*` settings take precedence over `DATABASE_URL`.
/// Parameters given as `None` keep the URL's value.
pub fn with_tls_params(
    url: &str,
    sslmode: Option<&str>,
    sslrootcert: Option<&Path>,
    sslcert: Option<&Path>,
    sslkey: Option<&Path>,
) -> String {
    let given: Vec<(&str, String)> = [
        ("sslmode", sslmode.map(str::to_owned)),
        ("sslrootcert", sslrootcert.map(|p| p.display().to_string())),
        ("sslcert", sslcert.map(|p| p.display().to_string())),
        ("sslkey", sslkey.map(|p| p.display().to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    if given.is_empty() {
        return url.to_owned();
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = decode(pair.split_once('=').map_or(*pair, |(k, _)| k));
            !given.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_owned)
        .collect();
    pairs.extend(given.iter().map(|(k, v)| format!("{k}={}", encode(v))));
    format!("{base}?{}", pairs.join("&"))
}

/// What connections use for TLS: the connector and what to say when the
/// server's certificate is refused.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) mode: SslMode,
    pub(crate) rootcert: Option<PathBuf>,
    pub(crate) connector: MakeRustlsConnect,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("rootcert", &self.rootcert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate files and builds the client configuration.
    /// Returns the mode to give tokio-postgres with it when `sslmode` was
    /// given (else [`Tls::follow`] tokio-postgres's own).
    pub(crate) fn new(params: &TlsParams) -> Result<(Self, Option<PgSslMode>), StoreError> {
        let given = params.sslmode.as_deref().map(SslMode::parse).transpose()?;
        // libpq's default; with a CA file `require` verifies like `verify-ca`.
        let mode = match (given.unwrap_or(SslMode::Prefer), &params.sslrootcert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(NoVerification(provider.signature_verification_algorithms))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let path = params.sslrootcert.as_deref().ok_or_else(|| {
                    invalid(format!(
                        "TLS: sslmode={} needs sslrootcert (the CA that signed the server's certificate)",
                        mode.as_str()
                    ))
                })?;
                let roots = roots(path)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| invalid(format!("TLS: sslrootcert {}: {e}", path.display())))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&params.sslcert, &params.sslkey) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    invalid(format!(
                        "TLS: cannot read a private key (PEM: PKCS#8, RSA or EC) from sslkey {}: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(format!("TLS: sslcert/sslkey: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(invalid("TLS: sslcert is set but sslkey is not".into())),
            (None, Some(_)) => return Err(invalid("TLS: sslkey is set but sslcert is not".into())),
        };
        let pg_mode = match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        };
        Ok((
            Self {
                mode,
                rootcert: params.sslrootcert.clone(),
                connector: MakeRustlsConnect::new(config),
            },
            given.map(|_| pg_mode),
        ))
    }

    /// Without an `sslmode` parameter: the mode tokio-postgres parsed (from a
    /// `host=... sslmode=...` string; `prefer` by default). Certificates are
    /// then never checked (only `verify-*` and `require` with `sslrootcert`
    /// check them, and those are URL parameters).
    pub(crate) fn follow(&mut self, parsed: PgSslMode) {
        if self.mode == SslMode::Prefer {
            self.mode = match parsed {
                PgSslMode::Disable => SslMode::Disable,
                PgSslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            };
        }
    }

    /// `prefer` falls back to plain text when the TLS attempt failed in its
    /// handshake or was refused by `pg_hba.conf` (28000), as libpq does.
    pub(crate) fn plain_may_work(&self, e: &tokio_postgres::Error) -> bool {
        self.mode == SslMode::Prefer
            && (e.code()
                == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                || e.to_string().starts_with("error performing TLS handshake"))
    }

    /// A clear sentence for a connection error caused by TLS, if it is one.
    pub(crate) fn explain(&self, e: &tokio_postgres::Error, host: &str) -> Option<String> {
        if let Some(db) = e.as_db_error() {
            // `hostssl`-only servers refuse plain sessions with 28000 "... no encryption".
            if db.message().contains("no encryption") {
                return Some(format!(
                    "{db} (the server accepts TLS connections only: set sslmode, e.g. \
                     sslmode=verify-full with sslrootcert; sslmode is {})",
                    self.mode.as_str()
                ));
            }
            if db.message().contains("client certificate") {
                return Some(format!(
                    "{db} (set sslcert and sslkey to the client's certificate and key)"
                ));
            }
            return None;
        }
        if e.to_string().contains("server does not support TLS") {
            return Some(format!(
                "TLS: the server does not accept TLS connections, and sslmode={} requires TLS",
                self.mode.as_str()
            ));
        }
        let rustls = rustls_error(e)?;
        let ca = self
            .rootcert
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string());
        Some(match rustls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "TLS: the server's certificate is not signed by the CA in sslrootcert ({ca})"
            ),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                presented,
            }) => format!(
                "TLS: the server's certificate is not valid for the host name '{}' \
                 (it names {}); sslmode=verify-full checks the name, verify-ca does not",
                expected.to_str(),
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
                "TLS: the server's certificate is not valid for the host name '{host}'; \
                 sslmode=verify-full checks the name, verify-ca does not"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => "TLS: the server's certificate has expired".to_owned(),
            rustls::Error::InvalidCertificate(other) => {
                format!("TLS: the server's certificate was refused: {other:?}")
            }
            other => format!("TLS: {other}"),
        })
    }
}

/// The rustls error somewhere in a connection error's chain.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// `DnsName("db")` / `IpAddress(10.0.0.1)` (how rustls lists the names a
/// certificate presents) as `db` / `10.0.0.1`.
fn plain_name(name: &str) -> &str {
    ["DnsName(", "IpAddress(", "UniformResourceIdentifier("]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix(')'))
        .map_or(name, |inner| inner.trim_matches('"'))
}

fn roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(path, "sslrootcert")?);
    if added == 0 {
        return Err(invalid(format!(
            "TLS: sslrootcert {} holds no usable CA certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let unreadable =
        |e: &dyn fmt::Display| invalid(format!("TLS: cannot read {what} {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"no PEM certificate in it"));
    }
    Ok(certs)
}

fn invalid(message: String) -> StoreError {
    StoreError::Query(message.into())
}

/// `prefer` and `require`: encrypted, the handshake's signatures checked,
/// the certificate itself not (libpq's behaviour without a CA).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the host name is not
/// checked. webpki checks the chain (and validity dates) before the name, so
/// a name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Percent-decoding of one query component (`+` stays a plus, as libpq does).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding of a query value (keeps `/`, letters, digits and `-._~`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_off_the_url() {
        let (url, p) = split(
            "postgres://u:p@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(url, "postgres://u:p@db/x?application_name=a");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.sslcert, Some(PathBuf::from("/c.pem")));
        assert_eq!(p.sslkey, Some(PathBuf::from("/k.pem")));
        let (url, p) = split("postgres://db/x?sslmode=require");
        assert_eq!(url, "postgres://db/x");
        assert_eq!(p.sslmode.as_deref(), Some("require"));
        let (url, p) = split("host=db sslmode=require");
        assert_eq!(url, "host=db sslmode=require");
        assert_eq!(p, TlsParams::default());
        for name in PARAMS {
            let (url, _) = split(&format!("postgres://db/x?{name}=v"));
            assert_eq!(url, "postgres://db/x", "{name}");
        }
    }

    #[test]
    fn settings_override_the_urls_parameters() {
        let url = with_tls_params(
            "postgres://u:p@db/x?sslmode=disable&application_name=a",
            Some("verify-full"),
            Some(Path::new("/etc/my ca.pem")),
            None,
            None,
        );
        assert_eq!(
            url,
            "postgres://u:p@db/x?application_name=a&sslmode=verify-full&sslrootcert=/etc/my%20ca.pem"
        );
        let (_, p) = split(&url);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/my ca.pem")));
        assert_eq!(
            with_tls_params("postgres://db/x", None, None, None, None),
            "postgres://db/x"
        );
        assert_eq!(
            with_tls_params("postgres://db/x", Some("require"), None, None, None),
            "postgres://db/x?sslmode=require"
        );
    }

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("other"), "other");
    }

    #[test]
    fn modes_follow_libpq() {
        let mode = |p: TlsParams| Tls::new(&p).map(|(tls, pg)| (tls.mode, pg));
        let (m, pg) = mode(TlsParams::default()).unwrap();
        assert_eq!((m, pg), (SslMode::Prefer, None));
        let (m, pg) = mode(TlsParams {
            sslmode: Some("disable".into()),
            ..TlsParams::default()
        })
        .unwrap();
        assert_eq!((m, pg), (SslMode::Disable, Some(PgSslMode::Disable)));
        // `require` with a CA verifies like `verify-ca`: the file is read
        // (a manifest is no certificate).
        let Err(e) = mode(TlsParams {
            sslmode: Some("require".into()),
            sslrootcert: Some(env!("CARGO_MANIFEST_PATH").into()),
            ..TlsParams::default()
        }) else {
            panic!("require ignored sslrootcert")
        };
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let (mut tls, _) = Tls::new(&TlsParams::default()).unwrap();
        tls.follow(PgSslMode::Disable);
        assert_eq!(tls.mode, SslMode::Disable);
        let Err(e) = mode(TlsParams {
            sslmode: Some("allow".into()),
            ..TlsParams::default()
        }) else {
            panic!("accepted sslmode=allow")
        };
        assert!(e.to_string().contains("invalid sslmode 'allow'"), "{e}");
        let Err(e) = mode(TlsParams {
            sslmode: Some("verify-full".into()),
            ..TlsParams::default()
        }) else {
            panic!("verify-full without a CA")
        };
        assert!(e.to_string().contains("needs sslrootcert"), "{e}");
        let Err(e) = mode(TlsParams {
            sslmode: Some("require".into()),
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..TlsParams::default()
        }) else {
            panic!("a missing CA file")
        };
        assert!(
            e.to_string()
                .contains("cannot read sslrootcert /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
