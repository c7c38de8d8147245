//! Backend hooks: the node asks the application's backend, over HTTP, whether a client
//! may connect, refresh its token, subscribe or publish, and acts on the answer (allow,
//! deny with a code, rewrite a publish's data, set the client's presence info).
//!
//! Each hook is one `POST` of a JSON body to a configured URL (`[hooks]`), answered with
//! a JSON object (`proto/hooks.md`). A call waits for a slot under
//! `hooks.max_concurrency` and for the answer within `hooks.timeout`, both counted in
//! the one deadline; a timeout, a refused connection, a status other than 200 or an
//! answer that is not a valid object follows `hooks.on_failure` (deny with
//! `unavailable`, or allow). Only the calling client's session waits, for at most the
//! timeout; the node's other clients are never blocked by a slow backend.

use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ringcast_proto::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Largest answer body read from the backend.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `[hooks]`: where each hook is sent and how calls are bounded.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Called on every `connect` (default: none).
    pub connect_url: Option<String>,
    /// Called on every `refresh` (default: none).
    pub refresh_url: Option<String>,
    /// Called on `subscribe` and `psubscribe` in namespaces with `subscribe_hook = true`.
    pub subscribe_url: Option<String>,
    /// Called on client `publish` in namespaces with `publish_hook = true` (the server
    /// API is trusted and never hooked).
    pub publish_url: Option<String>,
    /// How long a call may take, waiting for a slot included (default `"1s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub timeout: Duration,
    /// What a failed call (timeout, no connection, non-200, bad answer) means:
    /// `"deny"` (default; the command fails with `unavailable`) or `"allow"`.
    pub on_failure: FailurePolicy,
    /// Calls in flight at once, node-wide (default 64); further calls wait for a slot
    /// within their timeout.
    pub max_concurrency: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            connect_url: None,
            refresh_url: None,
            subscribe_url: None,
            publish_url: None,
            timeout: Duration::from_secs(1),
            on_failure: FailurePolicy::Deny,
            max_concurrency: 64,
        }
    }
}

/// What a failed hook call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    Deny,
    Allow,
}

impl HooksConfig {
    /// Checks the URLs and bounds; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, url) in [
            ("hooks.connect_url", &self.connect_url),
            ("hooks.refresh_url", &self.refresh_url),
            ("hooks.subscribe_url", &self.subscribe_url),
            ("hooks.publish_url", &self.publish_url),
        ] {
            if let Some(u) = url {
                let uri: hyper::Uri = u.parse().map_err(|e| (field, format!("{u:?} is not a URL: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err((field, format!("{u:?} must be an http:// URL with a host (TLS is not supported)")));
                }
            }
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(60) {
            return Err(("hooks.timeout", "must be between 10ms and 60s".into()));
        }
        if !(1..=10_000).contains(&self.max_concurrency) {
            return Err(("hooks.max_concurrency", "must be between 1 and 10000".into()));
        }
        Ok(())
    }
}

/// The four hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Refresh,
    Subscribe,
    Publish,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::Connect, Hook::Refresh, Hook::Subscribe, Hook::Publish];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a hook call ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Allow,
    Deny,
    /// The call failed and `on_failure` decided.
    Failed,
}

impl CallResult {
    pub const ALL: [CallResult; 3] = [CallResult::Allow, CallResult::Deny, CallResult::Failed];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Allow => "allow",
            CallResult::Deny => "deny",
            CallResult::Failed => "failed",
        }
    }

    /// Position in [`CallResult::ALL`].
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What the backend decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go ahead; `data` replaces a publish's data, `info` the client's presence info.
    Allow { data: Option<Box<RawValue>>, info: Option<Box<RawValue>> },
    /// Refuse with `code` (a client error code) and `message`.
    Deny { code: ErrorCode, message: String },
}

/// The backend's answer body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    result: Decision,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Decision {
    Allow,
    Deny,
}

/// What every hook call tells the backend about the client.
#[derive(Debug, Serialize)]
pub struct Caller<'a> {
    /// The connection id (unique per node and process).
    pub client: String,
    pub node: &'a str,
    /// The token's `sub`; absent for anonymous clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// The token's `info` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

/// The node's hook client.
pub struct Hooks {
    config: HooksConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Hooks {
    #[must_use]
    pub fn new(config: HooksConfig, metrics: Arc<Metrics>) -> Hooks {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        let slots = Arc::new(Semaphore::new(config.max_concurrency));
        Hooks { config, client, slots, metrics }
    }

    /// Whether `hook` has a URL.
    #[must_use]
    pub fn enabled(&self, hook: Hook) -> bool {
        self.url(hook).is_some()
    }

    fn url(&self, hook: Hook) -> Option<&str> {
        match hook {
            Hook::Connect => self.config.connect_url.as_deref(),
            Hook::Refresh => self.config.refresh_url.as_deref(),
            Hook::Subscribe => self.config.subscribe_url.as_deref(),
            Hook::Publish => self.config.publish_url.as_deref(),
        }
    }

    /// Calls `hook` with `body` (the caller's fields flattened in) and returns what the
    /// backend decided, or what `on_failure` decides when the call fails. A hook with
    /// no URL allows.
    pub async fn call<T: Serialize>(&self, hook: Hook, caller: &Caller<'_>, body: &T) -> Verdict {
        let Some(url) = self.url(hook) else { return Verdict::Allow { data: None, info: None } };
        #[derive(Serialize)]
        struct Request<'a, T: Serialize> {
            hook: &'static str,
            #[serde(flatten)]
            caller: &'a Caller<'a>,
            #[serde(flatten)]
            body: &'a T,
        }
        let started = Instant::now();
        let request = Request { hook: hook.as_str(), caller, body };
        let outcome = tokio::time::timeout(self.config.timeout, self.send(url, &request)).await;
        self.metrics.hook_time(hook.index(), started.elapsed());
        let failure = match outcome {
            Ok(Ok(answer)) => match verdict(answer) {
                Ok(v) => {
                    let result = if matches!(v, Verdict::Allow { .. }) { CallResult::Allow } else { CallResult::Deny };
                    self.metrics.hook_call(hook.index(), result.index());
                    return v;
                }
                Err(e) => e,
            },
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.config.timeout),
        };
        self.metrics.hook_call(hook.index(), CallResult::Failed.index());
        warn!(
            hook = hook.as_str(),
            client = caller.client,
            error = %failure,
            policy = ?self.config.on_failure,
            "backend hook failed"
        );
        match self.config.on_failure {
            FailurePolicy::Allow => Verdict::Allow { data: None, info: None },
            FailurePolicy::Deny => Verdict::Deny {
                code: ErrorCode::Unavailable,
                message: format!("the {} check is unavailable; retry later", hook.as_str()),
            },
        }
    }

    /// One POST, waiting for a slot first; the answer body, parsed.
    async fn send<T: Serialize>(&self, url: &str, request: &T) -> Result<Answer, String> {
        let _slot = self.slots.acquire().await.map_err(|_| "the hook client is closed".to_owned())?;
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let req = hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("ringcastd/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self.client.request(req).await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("answer is not a hook answer: {e}"))
    }
}

/// The verdict an answer carries; an error for one that breaks the rules.
fn verdict(a: Answer) -> Result<Verdict, String> {
    match a.result {
        Decision::Allow => Ok(Verdict::Allow { data: a.data, info: a.info }),
        Decision::Deny => {
            let code = match a.code.as_deref() {
                None => ErrorCode::PermissionDenied,
                Some(c) => ErrorCode::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == c && k.http_status() < 500)
                    .ok_or_else(|| format!("{c:?} is not a client error code"))?,
            };
            let message = a.message.unwrap_or_else(|| "denied by the application".to_owned());
            debug!(code = code.as_str(), %message, "backend hook denied");
            Ok(Verdict::Deny { code, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(s: &str) -> Result<Verdict, String> {
        verdict(serde_json::from_str(s).map_err(|e| e.to_string())?)
    }

    #[test]
    fn answers_are_read_strictly() {
        assert!(matches!(answer(r#"{"result":"allow"}"#), Ok(Verdict::Allow { data: None, info: None })));
        let Ok(Verdict::Allow { data: Some(d), .. }) = answer(r#"{"result":"allow","data":{"x":1}}"#) else {
            panic!("rewrite")
        };
        assert_eq!(d.get(), r#"{"x":1}"#);
        assert!(matches!(answer(r#"{"result":"deny"}"#), Ok(Verdict::Deny { code: ErrorCode::PermissionDenied, .. })));
        assert!(matches!(
            answer(r#"{"result":"deny","code":"rate_limited","message":"slow"}"#),
            Ok(Verdict::Deny { code: ErrorCode::RateLimited, .. })
        ));
        assert!(answer(r#"{"result":"deny","code":"internal"}"#).is_err(), "not a client error");
        assert!(answer(r#"{"result":"deny","code":"nope"}"#).is_err());
        assert!(answer(r#"{"result":"maybe"}"#).is_err());
        assert!(answer(r#"{"result":"allow","extra":1}"#).is_err());
        assert!(answer("[]").is_err());
    }

    #[test]
    fn urls_must_be_plain_http_with_a_host() {
        let with = |url: &str| HooksConfig { publish_url: Some(url.into()), ..HooksConfig::default() }.validate();
        assert!(with("http://127.0.0.1:9000/hooks/publish").is_ok());
        assert_eq!(with("https://backend/x").map_err(|e| e.0), Err("hooks.publish_url"));
        assert!(with("not a url").is_err());
        assert!(with("/relative").is_err());
        assert!(HooksConfig { timeout: Duration::ZERO, ..HooksConfig::default() }.validate().is_err());
        assert!(HooksConfig { max_concurrency: 0, ..HooksConfig::default() }.validate().is_err());
    }
}
