//! # dispatcher-sig
//!
//! GitHub webhook signatures: HMAC-SHA256 over the raw request body, sent as
//! `X-Hub-Signature-256: sha256=<hex>`.
//!
//! **Owns:** signing and constant-time verification with one or several
//! secrets (rotation: any configured secret may match), and a key type that
//! never prints its secret.
//!
//! **Must not:** know HTTP, headers beyond the signature's text format, or JSON.
//! Verification happens on the exact bytes received, before anything parses them.
//!
//! ```
//! use dispatcher_sig::{SigningKeys, sign};
//!
//! let keys = SigningKeys::new(["old-secret", "It's a Secret to Everybody"]);
//! let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
//! assert!(keys.verify(b"Hello, World!", header).is_ok());
//! assert_eq!(sign(b"It's a Secret to Everybody", b"Hello, World!"), header);
//! ```

use std::fmt;

use ring::hmac;

/// Why a signature was rejected. Deliberately coarse: the reason is logged,
/// the sender only learns that the signature is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("signature header is missing")]
    Missing,
    /// Not of the form `sha256=<64 hex digits>`.
    #[error("signature header is malformed")]
    Malformed,
    /// Well-formed, but no configured secret produces it.
    #[error("signature does not match any configured secret")]
    Mismatch,
    /// No secret is configured, so nothing can verify.
    #[error("no webhook secret is configured")]
    NoSecrets,
}

/// The configured webhook secrets as HMAC keys. `Debug` shows only how many.
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<hmac::Key>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys({} secret(s), redacted)", self.keys.len())
    }
}

impl SigningKeys {
    /// Keys for the given secrets, tried in order.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let keys = secrets
            .into_iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_ref()))
            .collect();
        Self { keys }
    }

    /// Whether no secret is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies `header` (the `X-Hub-Signature-256` value, `None` if absent)
    /// against `body` with every key, in constant time per key.
    pub fn verify<'h>(
        &self,
        body: &[u8],
        header: impl Into<Option<&'h str>>,
    ) -> Result<(), SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::NoSecrets);
        }
        let header = header.into().ok_or(SignatureError::Missing)?;
        let digest = parse_header(header)?;
        // Every key is tried even after a match would be found, so timing does not reveal which one matched.
        let mut matched = false;
        for key in &self.keys {
            matched |= hmac::verify(key, body, &digest).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Bearer tokens, checked in constant time. Each token is kept only as an
/// HMAC under a per-process random key, so comparing a presented token is an
/// HMAC verification (`ring::hmac::verify` is constant time) and the tokens
/// themselves are not held in memory after construction.
#[derive(Clone)]
pub struct TokenSet {
    key: hmac::Key,
    tags: Vec<hmac::Tag>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSet({} token(s), redacted)", self.tags.len())
    }
}

impl TokenSet {
    /// A set holding `tokens`; fails only if the system RNG does.
    pub fn new<I, S>(tokens: I) -> Result<Self, ring::error::Unspecified>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?;
        let tags = tokens
            .into_iter()
            .map(|t| hmac::sign(&key, t.as_ref()))
            .collect();
        Ok(Self { key, tags })
    }

    /// Whether no token is configured (the API is open).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Whether `presented` is one of the tokens.
    pub fn contains(&self, presented: &[u8]) -> bool {
        self.position(presented).is_some()
    }

    /// Which of the tokens (in construction order) `presented` is; every
    /// token is compared, so the time taken does not tell which matched.
    pub fn position(&self, presented: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, tag) in self.tags.iter().enumerate() {
            if hmac::verify(&self.key, presented, tag.as_ref()).is_ok() {
                found = found.or(Some(i));
            }
        }
        found
    }
}

/// The `X-Hub-Signature-256` value for `body` signed with `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Checks only the form of an `X-Hub-Signature-256` value (`None` if
/// absent): `sha256=` and 64 hex digits. A server can reject a delivery with
/// a missing or malformed signature before reading its body;
/// [`SigningKeys::verify`] still decides over the bytes.
pub fn check_header_syntax(header: Option<&str>) -> Result<(), SignatureError> {
    parse_header(header.ok_or(SignatureError::Missing)?).map(|_| ())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_header(header: &str) -> Result<[u8; 32], SignatureError> {
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn nibble(c: u8) -> Result<u8, SignatureError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(SignatureError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published test vector (docs: "Validating webhook deliveries").
    const SECRET: &str = "It's a Secret to Everybody";
    const PAYLOAD: &[u8] = b"Hello, World!";
    const EXPECTED: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_test_vector() {
        assert_eq!(sign(SECRET.as_bytes(), PAYLOAD), EXPECTED);
        assert_eq!(SigningKeys::new([SECRET]).verify(PAYLOAD, EXPECTED), Ok(()));
    }

    #[test]
    fn any_of_several_secrets_matches() {
        let keys = SigningKeys::new(["new-secret", SECRET]);
        assert_eq!(keys.verify(PAYLOAD, EXPECTED), Ok(()));
        let keys = SigningKeys::new(["new-secret", "older"]);
        assert_eq!(
            keys.verify(PAYLOAD, EXPECTED),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn header_syntax_is_checked_without_a_body() {
        assert_eq!(check_header_syntax(Some(EXPECTED)), Ok(()));
        assert_eq!(check_header_syntax(None), Err(SignatureError::Missing));
        for bad in [
            "sha256=00",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1g",
            "",
        ] {
            assert_eq!(
                check_header_syntax(Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn uppercase_hex_and_whitespace_are_tolerated() {
        let upper = format!("sha256={}", EXPECTED["sha256=".len()..].to_uppercase());
        assert_eq!(
            SigningKeys::new([SECRET]).verify(PAYLOAD, format!(" {upper} ").as_str()),
            Ok(())
        );
    }

    #[test]
    fn rejects_tampering_and_malformed_headers() {
        let keys = SigningKeys::new([SECRET]);
        assert_eq!(
            keys.verify(b"Hello, World?", EXPECTED),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(keys.verify(PAYLOAD, None), Err(SignatureError::Missing));
        for bad in [
            "",
            "sha1=abc",
            "sha256=",
            "sha256=zz",
            &EXPECTED[..EXPECTED.len() - 1],
            &format!("{EXPECTED}00"),
        ] {
            assert_eq!(
                keys.verify(PAYLOAD, bad),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        let non_hex = format!("sha256={}", "g".repeat(64));
        assert_eq!(
            keys.verify(PAYLOAD, non_hex.as_str()),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            SigningKeys::new(Vec::<&str>::new()).verify(PAYLOAD, EXPECTED),
            Err(SignatureError::NoSecrets)
        );
    }

    #[test]
    fn token_sets_match_exactly() {
        let tokens = TokenSet::new(["alpha", "beta"]).expect("rng");
        assert!(tokens.contains(b"alpha") && tokens.contains(b"beta"));
        assert_eq!(tokens.position(b"beta"), Some(1));
        assert_eq!(tokens.position(b"gamma"), None);
        assert!(!tokens.contains(b"alph") && !tokens.contains(b"alphaa") && !tokens.contains(b""));
        assert!(TokenSet::new(Vec::<&str>::new()).expect("rng").is_empty());
        assert!(!format!("{tokens:?}").contains("alpha"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let keys = SigningKeys::new([SECRET]);
        let text = format!("{keys:?}");
        assert!(!text.contains("Secret to"), "{text}");
    }
}
