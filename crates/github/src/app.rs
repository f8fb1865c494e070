//! GitHub App authentication: a JWT signed RS256 with the app's private key
//! (ring), exchanged for installation tokens that are cached and refreshed
//! before they expire.
//!
//! Neither the key, the JWT nor a token is ever logged or put into an error.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dispatcher_core::ports::NotifyError;
use ring::signature::RsaKeyPair;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

/// How long before its expiry an installation token is replaced.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The JWT's `iat` lies this far in the past (clock drift, GitHub's advice).
const JWT_BACKDATE: Duration = Duration::from_secs(60);
/// The JWT's lifetime from now (GitHub allows at most 10 minutes).
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// A GitHub App's RSA private key.
pub struct AppKey(RsaKeyPair);

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(***)")
    }
}

impl AppKey {
    /// Reads a PEM key file: PKCS#1 (`BEGIN RSA PRIVATE KEY`, what GitHub
    /// issues) or PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn from_pem_file(path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a PEM key (see [`AppKey::from_pem_file`]).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no PEM private key found ({e})"))?;
        let pair = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err("not an RSA private key (a GitHub App key is RSA)".to_owned()),
        }
        .map_err(|e| format!("not a usable RSA private key ({e})"))?;
        Ok(Self(pair))
    }

    /// The public key, DER `RSAPublicKey` (what verifies the JWTs).
    pub fn public_key_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair as _;
        self.0.public_key().as_ref().to_vec()
    }

    /// The app's JWT at `now`: `iat` = now − 60 s, `exp` = now + 9 min,
    /// `iss` = `app_id`; RS256, base64url without padding.
    pub fn jwt(&self, app_id: u64, now: OffsetDateTime) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": (now - JWT_BACKDATE).unix_timestamp(),
            "exp": (now + JWT_LIFETIME).unix_timestamp(),
            "iss": app_id,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the GitHub App JWT failed".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The clock of a [`GithubApp`].
pub type AppClock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// A GitHub App installation to act as.
pub struct GithubApp {
    /// The app's id (`iss` of its JWTs).
    pub app_id: u64,
    /// The installation whose tokens are used.
    pub installation_id: u64,
    /// The app's private key.
    pub key: AppKey,
    /// A cached token is replaced when less than this remains
    /// ([`DEFAULT_REFRESH_MARGIN`]).
    pub refresh_margin: Duration,
    /// The clock (tests move it); `OffsetDateTime::now_utc` in production.
    pub clock: AppClock,
}

impl std::fmt::Debug for GithubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApp")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("refresh_margin", &self.refresh_margin)
            .finish_non_exhaustive()
    }
}

impl GithubApp {
    /// The app `app_id` acting as `installation_id`, with the key in `private_key_file`.
    pub fn from_key_file(
        app_id: u64,
        installation_id: u64,
        private_key_file: &Path,
    ) -> Result<Self, String> {
        Ok(Self::new(
            app_id,
            installation_id,
            AppKey::from_pem_file(private_key_file)?,
        ))
    }

    /// The app with its key, the default margin and the system clock.
    pub fn new(app_id: u64, installation_id: u64, key: AppKey) -> Self {
        Self {
            app_id,
            installation_id,
            key,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            clock: Arc::new(OffsetDateTime::now_utc),
        }
    }
}

#[derive(Clone)]
struct Cached {
    token: String,
    expires_at: OffsetDateTime,
}

/// An app's installation tokens: exchanged on demand, cached, refreshed.
pub(crate) struct AppTokens {
    app: GithubApp,
    url: String,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl AppTokens {
    pub(crate) fn new(app: GithubApp, api_url: &str) -> Self {
        let url = format!(
            "{api_url}/app/installations/{}/access_tokens",
            app.installation_id
        );
        Self {
            app,
            url,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// A token valid for at least the refresh margin (one exchange at a
    /// time; concurrent callers wait for it and share the result).
    pub(crate) async fn token(&self, http: &reqwest::Client) -> Result<String, NotifyError> {
        let mut cache = self.cache.lock().await;
        let now = (self.app.clock)();
        if let Some(cached) = cache.as_ref()
            && cached.expires_at - now > self.app.refresh_margin
        {
            return Ok(cached.token.clone());
        }
        let fresh = self.exchange(http, now).await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// Forgets `rejected` (GitHub answered 401 to it), so the next
    /// [`AppTokens::token`] exchanges again; a newer token is kept.
    pub(crate) async fn invalidate(&self, rejected: &str) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| c.token == rejected) {
            *cache = None;
        }
    }

    async fn exchange(
        &self,
        http: &reqwest::Client,
        now: OffsetDateTime,
    ) -> Result<Cached, NotifyError> {
        let jwt = self
            .app
            .key
            .jwt(self.app.app_id, now)
            .map_err(NotifyError::new)?;
        let response = http
            .post(&self.url)
            .bearer_auth(jwt)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| {
                NotifyError::new(format!("GitHub App token exchange: {}", e.without_url()))
            })?;
        let status = response.status();
        let retry_at = crate::rate_limit_end(status, response.headers(), OffsetDateTime::now_utc());
        let body = response.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status != reqwest::StatusCode::CREATED && !status.is_success() {
            let message = json
                .get("message")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("(no message)");
            tracing::warn!(
                status = status.as_u16(),
                message,
                app_id = self.app.app_id,
                installation_id = self.app.installation_id,
                "GitHub refused the app's token exchange"
            );
            let message = format!(
                "GitHub App token exchange (app {}, installation {}): HTTP {}: {message}",
                self.app.app_id,
                self.app.installation_id,
                status.as_u16()
            );
            return Err(match retry_at {
                Some(at) => NotifyError::rate_limited(message, at),
                None => NotifyError::new(message),
            });
        }
        let token = json.get("token").and_then(serde_json::Value::as_str);
        let expires_at = json
            .get("expires_at")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            });
        match (token, expires_at) {
            (Some(token), Some(expires_at)) if !token.is_empty() => {
                tracing::debug!(%expires_at, "GitHub App installation token obtained");
                Ok(Cached {
                    token: token.to_owned(),
                    expires_at,
                })
            }
            _ => Err(NotifyError::new(
                "GitHub App token exchange: the answer has no token or expires_at",
            )),
        }
    }
}

/// How the labels client authenticates.
#[derive(Clone)]
pub(crate) enum Auth {
    /// A fixed token, swappable (`set_token`) and shared by every clone.
    Token(Arc<std::sync::RwLock<String>>),
    /// A GitHub App's installation tokens.
    App(Arc<AppTokens>),
}

impl Auth {
    /// The token for the next request.
    pub(crate) async fn token(&self, http: &reqwest::Client) -> Result<String, NotifyError> {
        match self {
            Self::Token(token) => Ok(match token.read() {
                Ok(token) => token.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            }),
            Self::App(app) => app.token(http).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> AppKey {
        AppKey::from_pem_file(&dispatcher_fakes::fixtures::app_key_pkcs1()).unwrap()
    }

    #[test]
    fn the_jwt_decodes_to_the_claims_and_verifies_with_the_public_key() {
        let key = key();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let jwt = key.jwt(4242, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('='), "no padding");
        let decode = |p: &str| -> serde_json::Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
        };
        assert_eq!(
            decode(parts[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
        assert_eq!(
            decode(parts[1]),
            serde_json::json!({"iat": 1_800_000_000 - 60, "exp": 1_800_000_000 + 540, "iss": 4242})
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        let public = key.public_key_der();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &public,
        )
        .verify(signed.as_bytes(), &signature)
        .unwrap();
        // Another key's public half does not verify it.
        let other = AppKey::from_pem_file(&dispatcher_fakes::fixtures::other_key_pkcs1()).unwrap();
        assert!(
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                other.public_key_der(),
            )
            .verify(signed.as_bytes(), &signature)
            .is_err()
        );
    }

    #[test]
    fn pkcs1_and_pkcs8_files_are_the_same_key() {
        let pkcs8 = AppKey::from_pem_file(&dispatcher_fakes::fixtures::app_key_pkcs8()).unwrap();
        assert_eq!(pkcs8.public_key_der(), key().public_key_der());
        assert_eq!(format!("{pkcs8:?}"), "AppKey(***)");
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        let err = AppKey::from_pem(b"not a key").unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = AppKey::from_pem(
            b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.contains("not a usable RSA private key"), "{err}");
        let err = AppKey::from_pem_file(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(err.contains("cannot read /nonexistent/key.pem"), "{err}");
    }
}
