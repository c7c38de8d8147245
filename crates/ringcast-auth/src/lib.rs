//! # ringcast-auth: client tokens and channel capabilities
//!
//! A token is a JWT signed with HS256 (shared secret), RS256 or ES256 (public keys from
//! config). The key is chosen by the token's `alg` header among the algorithms that have
//! a configured key, so `alg: none` and HS/RS confusion are refused before any signature
//! check. Claims:
//!
//! ```json
//! {"sub": "alice", "exp": 1767225600,
//!  "caps": {"subscribe": ["chat:*"], "publish": ["chat:*"], "presence": ["chat:*"]},
//!  "info": {"name": "Alice"}}
//! ```
//!
//! `sub` and `exp` are required; `nbf` is checked when present; `iss` and `aud` are
//! required and checked when configured (`auth.issuer`, `auth.audience`) and ignored
//! otherwise. `auth.leeway` applies in whole seconds, to `exp` and `nbf` alike and to
//! the session's expiry deadline. Capabilities are deny-by-default: a channel
//! needs a matching `caps` pattern unless its namespace is `anonymous`. History reads
//! follow `subscribe`; `presence` queries and receiving `join`/`leave` need a
//! `caps.presence` pattern (or an `anonymous` namespace). `info` (any JSON, at most
//! [`MAX_INFO_BYTES`]) is shown to others in presence answers and join/leave pushes.
//! Rejections never say more than `unauthorized` or `token_expired`.
//!
//! The crate does no I/O beyond reading the configured key files in
//! [`Verifier::from_config`]: `ringcastd` calls it from its sessions and HTTP handlers,
//! and the `token_caps` fuzz target (`fuzz/`) drives it without the server's stack.

mod config;

pub use config::AuthConfig;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ringcast_core::{ChannelName, ChannelPattern};
use ringcast_proto::ErrorCode;
use serde::Deserialize;

/// Most patterns a token may carry per capability.
pub const MAX_PATTERNS_PER_CAP: usize = 256;
/// Largest `info` claim, in bytes of its JSON text.
pub const MAX_INFO_BYTES: usize = 4096;

/// What an authenticated (or anonymous) session may do.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `sub`; `None` for anonymous sessions.
    pub user: Option<String>,
    /// `exp` in unix seconds.
    pub expires_at: Option<u64>,
    pub subscribe: Vec<ChannelPattern>,
    pub publish: Vec<ChannelPattern>,
    pub presence: Vec<ChannelPattern>,
    /// The token's `info` claim as JSON text.
    pub info: Option<std::sync::Arc<str>>,
}

impl Identity {
    #[must_use]
    pub fn anonymous() -> Identity {
        Identity::default()
    }

    #[must_use]
    pub fn may_subscribe(&self, channel: &ChannelName) -> bool {
        self.subscribe.iter().any(|p| p.matches(channel))
    }

    /// A pattern subscription: one `subscribe` grant covers every channel it matches.
    #[must_use]
    pub fn may_subscribe_pattern(&self, pattern: &ringcast_core::Pattern) -> bool {
        self.subscribe.iter().any(|p| p.covers(pattern))
    }

    #[must_use]
    pub fn may_publish(&self, channel: &ChannelName) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }

    #[must_use]
    pub fn may_see_presence(&self, channel: &ChannelName) -> bool {
        self.presence.iter().any(|p| p.matches(channel))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    caps: Caps,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Caps {
    subscribe: Vec<String>,
    publish: Vec<String>,
    presence: Vec<String>,
}

/// A token rejection: the code the client sees, and a reason for the server log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub code: ErrorCode,
    pub log_reason: String,
}

/// Problems with the auth section of the config.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.{field}: cannot read {path}: {source}")]
    Read { field: &'static str, path: String, source: std::io::Error },
    #[error("auth.{field}: not a valid PEM public key: {message}")]
    Key { field: &'static str, message: String },
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.keys.iter().map(|(a, _)| a).collect();
        f.debug_struct("Verifier").field("algorithms", &algs).finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn from_config(c: &AuthConfig) -> Result<Verifier, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &c.hmac_secret {
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| AuthConfigError::Key { field: "hmac_secret", message: e.to_string() })?;
            keys.push((Algorithm::HS256, key));
        }
        let read = |field: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| AuthConfigError::Read {
                field,
                path: path.display().to_string(),
                source,
            })
        };
        if let Some(path) = &c.rsa_public_key_file {
            let pem = read("rsa_public_key_file", path)?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map_err(|e| AuthConfigError::Key { field: "rsa_public_key_file", message: e.to_string() })?;
            keys.push((Algorithm::RS256, key));
        }
        if let Some(path) = &c.ec_public_key_file {
            let pem = read("ec_public_key_file", path)?;
            let key = DecodingKey::from_ec_pem(&pem)
                .map_err(|e| AuthConfigError::Key { field: "ec_public_key_file", message: e.to_string() })?;
            keys.push((Algorithm::ES256, key));
        }
        Ok(Verifier {
            keys,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway_secs: c.leeway_secs().as_secs(),
        })
    }

    /// Whether any token can be accepted at all.
    #[must_use]
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Verifies a token and returns the identity it grants.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let unauthorized = |why: String| AuthError { code: ErrorCode::Unauthorized, log_reason: why };
        if token.len() > 8192 {
            return Err(unauthorized("token longer than 8192 bytes".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| unauthorized(format!("bad header: {e}")))?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or_else(|| unauthorized(format!("no key configured for alg {:?}", header.alg)))?;
        let mut v = Validation::new(*alg);
        v.leeway = self.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError { code: ErrorCode::TokenExpired, log_reason: "expired".into() },
            other => unauthorized(format!("{other:?}")),
        })?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.len() > 256 {
            return Err(unauthorized("sub must be 1..=256 bytes".into()));
        }
        let patterns = |list: Vec<String>, what: &str| -> Result<Vec<ChannelPattern>, AuthError> {
            if list.len() > MAX_PATTERNS_PER_CAP {
                return Err(unauthorized(format!("more than {MAX_PATTERNS_PER_CAP} {what} patterns")));
            }
            list.iter()
                .map(|p| ChannelPattern::new(p).map_err(|e| unauthorized(format!("{what} pattern {p:?}: {e}"))))
                .collect()
        };
        let info = match c.info {
            Some(raw) if raw.get().len() > MAX_INFO_BYTES => {
                return Err(unauthorized(format!("info is above {MAX_INFO_BYTES} bytes")));
            }
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(std::sync::Arc::from(raw.get())),
            None => None,
        };
        Ok(Identity {
            subscribe: patterns(c.caps.subscribe, "subscribe")?,
            publish: patterns(c.caps.publish, "publish")?,
            presence: patterns(c.caps.presence, "presence")?,
            info,
            user: Some(c.sub),
            expires_at: c.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        let c = AuthConfig { hmac_secret: Some(SECRET.into()), ..AuthConfig::default() };
        Verifier::from_config(&c).unwrap_or_else(|e| panic!("{e}"))
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn sign(claims: serde_json::Value) -> String {
        EncodingKey::from_secret(SECRET.as_bytes())
            .and_then(|key| encode(&Header::default(), &claims, &key))
            .unwrap_or_default()
    }

    #[test]
    fn valid_token_grants_its_caps() {
        let t = sign(json!({"sub": "alice", "exp": now() + 60, "caps": {"subscribe": ["chat:*"]}}));
        let id = verifier().verify(&t).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(id.user.as_deref(), Some("alice"));
        let room = ChannelName::new("chat:1").unwrap_or_else(|e| panic!("{e}"));
        assert!(id.may_subscribe(&room));
        assert!(!id.may_publish(&room), "deny by default");
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn sign_with(alg: Algorithm, private_pem: &str, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(fixture(private_pem)).unwrap_or_else(|e| panic!("{private_pem}: {e}"));
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        };
        key.and_then(|k| encode(&Header::new(alg), claims, &k)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_configured_public_keys() {
        let c = AuthConfig {
            rsa_public_key_file: Some(fixture("rsa_public.pem")),
            ec_public_key_file: Some(fixture("ec_public.pem")),
            ..AuthConfig::default()
        };
        let v = Verifier::from_config(&c).unwrap_or_else(|e| panic!("{e}"));
        let claims = json!({"sub": "rsa-user", "exp": now() + 60});
        let rs = sign_with(Algorithm::RS256, "rsa_private.pem", &claims);
        assert_eq!(v.verify(&rs).ok().and_then(|i| i.user).as_deref(), Some("rsa-user"));
        let es = sign_with(Algorithm::ES256, "ec_private.pem", &claims);
        assert_eq!(v.verify(&es).ok().and_then(|i| i.user).as_deref(), Some("rsa-user"));

        // HS/RS confusion: an HS256 token "signed" with the public key as the secret.
        let public = std::fs::read(fixture("rsa_public.pem")).unwrap_or_default();
        let forged =
            EncodingKey::from_secret(&public).and_then(|k| encode(&Header::default(), &claims, &k)).unwrap_or_default();
        assert_eq!(v.verify(&forged).err().map(|e| e.code), Some(ErrorCode::Unauthorized));
        // A token signed by a key we do not trust.
        let stranger = sign_with(Algorithm::ES256, "ec_private.pem", &claims);
        let only_rsa = Verifier::from_config(&AuthConfig {
            rsa_public_key_file: Some(fixture("rsa_public.pem")),
            ..AuthConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(only_rsa.verify(&stranger).err().map(|e| e.code), Some(ErrorCode::Unauthorized));
    }

    #[test]
    fn unreadable_or_invalid_key_files_are_config_errors() {
        let missing = AuthConfig { rsa_public_key_file: Some(fixture("nope.pem")), ..AuthConfig::default() };
        assert!(matches!(Verifier::from_config(&missing), Err(AuthConfigError::Read { .. })));
        let not_a_key = AuthConfig { ec_public_key_file: Some(fixture("README.md")), ..AuthConfig::default() };
        assert!(matches!(Verifier::from_config(&not_a_key), Err(AuthConfigError::Key { .. })));
    }

    #[test]
    fn bad_tokens_are_refused_with_the_right_code() {
        let v = verifier();
        let code = |t: &str| v.verify(t).err().map(|e| e.code);
        assert_eq!(code(&sign(json!({"sub": "a", "exp": now() - 60}))), Some(ErrorCode::TokenExpired));
        assert_eq!(code(&sign(json!({"sub": "a"}))), Some(ErrorCode::Unauthorized), "exp required");
        assert_eq!(code(&sign(json!({"exp": now() + 60}))), Some(ErrorCode::Unauthorized), "sub required");
        assert_eq!(
            code(&sign(json!({"sub": "a", "exp": now() + 60, "nbf": now() + 600}))),
            Some(ErrorCode::Unauthorized)
        );
        assert_eq!(code("garbage"), Some(ErrorCode::Unauthorized));
        // alg: none, hand-built.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(code(none), Some(ErrorCode::Unauthorized));
        // Signed with another secret.
        let other = EncodingKey::from_secret(b"another-secret-another-secret!!")
            .and_then(|k| encode(&Header::default(), &json!({"sub": "a", "exp": now() + 60}), &k))
            .unwrap_or_default();
        assert_eq!(code(&other), Some(ErrorCode::Unauthorized));
        // RS256 header with no RSA key configured.
        let rs = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        assert_eq!(code(rs), Some(ErrorCode::Unauthorized));
        let bad_pattern = sign(json!({"sub": "a", "exp": now() + 60, "caps": {"publish": ["a b"]}}));
        assert_eq!(code(&bad_pattern), Some(ErrorCode::Unauthorized));
    }
}
