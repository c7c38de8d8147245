//! `[auth]` of the node's config file: the keys tokens are checked against, and the
//! browser origins allowed to connect. `ringcastd`'s config embeds it as is.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[auth]`: client tokens and origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (default: none, HS256 refused).
    pub hmac_secret: Option<String>,
    /// PEM file with the RSA public key for RS256 tokens (default: none).
    pub rsa_public_key_file: Option<PathBuf>,
    /// PEM file with the EC P-256 public key for ES256 tokens (default: none).
    pub ec_public_key_file: Option<PathBuf>,
    /// Required `iss` claim (default: not checked).
    pub issuer: Option<String>,
    /// Required `aud` claim (default: not checked).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default `"5s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub leeway: Duration,
    /// How long before a session's token expires the server pushes `expiring`, so the
    /// client can fetch a new token and `refresh` (default `"30s"`; `"0s"` disables;
    /// at most `"1h"`). A token shorter than twice this gets the push half-way through.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub refresh_notice: Duration,
    /// Browser origins allowed to open WebSockets (default: empty = any). Requests
    /// without an `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
}

impl AuthConfig {
    /// The leeway as JWT libraries apply it: whole seconds.
    #[must_use]
    pub fn leeway_secs(&self) -> Duration {
        Duration::from_secs(self.leeway.as_secs())
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            rsa_public_key_file: None,
            ec_public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            refresh_notice: Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}
