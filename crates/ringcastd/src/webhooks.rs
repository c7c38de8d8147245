//! Webhooks: events the node, as a channel's owner, reports to the application's
//! backend (`proto/webhooks.md`): channel occupied and vacated, presence members
//! joined and left, and messages published, in the namespaces that select them
//! (`webhooks = [...]`).
//!
//! The hub emits an event under the channel's lock, at the moment the owner decides
//! it; [`Webhooks::emit`] only encodes it with a fresh id and queues it (never waits).
//! One sender task per node ([`Webhooks::run`]) posts the queue in batches, one batch
//! in flight at a time so the backend sees this node's events in order, each batch
//! signed with HMAC-SHA256 (`ringcast_proto::webhook`). The queue, retries and dead
//! letters are [`ringcast_core::webhook::Dispatch`]'s decisions; this module is the
//! HTTP around it.
//!
//! Only a channel's owner emits, so an event is sent by one node of the cluster, once,
//! retried with the same id until the backend answers 2xx. What is not promised: an
//! owner that crashes loses the events it had not sent yet, and the new owner may
//! report again what the backend already knows (`proto/webhooks.md`, "Guarantees").

use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ringcast_core::webhook::{AfterFailure, Dispatch, DispatchPolicy};
use ringcast_core::{Millis, NodeId};
use ringcast_proto::webhook::{encode_batch, sign, Event, ATTEMPT_HEADER, SIGNATURE_HEADER};
use serde::Deserialize;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Largest response body read (and discarded) from the backend.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `[webhooks]`: where events go and how they are batched and retried.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The backend endpoint batches are `POST`ed to (`http://`; default none: no
    /// webhooks, and no namespace may select any).
    pub url: Option<String>,
    /// The HMAC-SHA256 key batches are signed with; at least 16 bytes, required with
    /// `url` (environment `RINGCAST_WEBHOOK_SECRET`).
    pub secret: Option<String>,
    /// Most events in one batch (default 100).
    pub batch_max: usize,
    /// How long the first event of a batch waits for others to join it (default
    /// `"100ms"`; a full batch goes at once).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub batch_delay: Duration,
    /// How long one `POST` may take (default `"5s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub timeout: Duration,
    /// How long after its first attempt a failed batch is still retried, with
    /// exponential backoff from 0.5 s up to 30 s (default `"5m"`); then its events are
    /// dead letters.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub retry_for: Duration,
    /// Events waiting to be sent, at most (default 10000); more are dropped and counted.
    pub max_pending: usize,
    /// How long a channel must stay without subscribers before `channel_vacated` is
    /// sent (default `"5s"`); a subscriber back within it cancels it.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub vacated_grace: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: None,
            secret: None,
            batch_max: 100,
            batch_delay: Duration::from_millis(100),
            timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(300),
            max_pending: 10_000,
            vacated_grace: Duration::from_secs(5),
        }
    }
}

impl WebhooksConfig {
    /// Checks the URL, secret and bounds; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let Some(url) = &self.url else { return Ok(()) };
        let uri: hyper::Uri = url.parse().map_err(|e| ("webhooks.url", format!("{url:?} is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(("webhooks.url", format!("{url:?} must be an http:// URL with a host (TLS is not supported)")));
        }
        if self.secret.as_ref().is_none_or(|s| s.len() < 16) {
            return Err((
                "webhooks.secret",
                "at least 16 bytes are required to sign batches (or set RINGCAST_WEBHOOK_SECRET)".into(),
            ));
        }
        if !(1..=10_000).contains(&self.batch_max) {
            return Err(("webhooks.batch_max", "must be between 1 and 10000".into()));
        }
        if self.batch_delay > Duration::from_secs(10) {
            return Err(("webhooks.batch_delay", "must be at most 10s".into()));
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err(("webhooks.timeout", "must be between 100ms and 60s".into()));
        }
        if self.retry_for > Duration::from_secs(24 * 3600) {
            return Err(("webhooks.retry_for", "must be at most 24h".into()));
        }
        if self.max_pending < self.batch_max || self.max_pending > 10_000_000 {
            return Err(("webhooks.max_pending", "must be between batch_max and 10000000".into()));
        }
        if self.vacated_grace > Duration::from_secs(3600) {
            return Err(("webhooks.vacated_grace", "must be at most 1h".into()));
        }
        Ok(())
    }

    fn policy(&self) -> DispatchPolicy {
        DispatchPolicy {
            batch_max: self.batch_max,
            max_pending: self.max_pending,
            retry_for: self.retry_for,
            ..DispatchPolicy::default()
        }
    }
}

/// The node's webhook sender.
pub struct Webhooks {
    config: WebhooksConfig,
    url: String,
    secret: Vec<u8>,
    node: String,
    /// Ids are `<node>.<process nonce>.<counter>`: unique across restarts.
    id_prefix: String,
    next_id: AtomicU64,
    dispatch: Mutex<Dispatch>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Unix time at `origin`, for event times from the monotonic clock.
    started: Instant,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The sender for a validated config; `None` without `webhooks.url`. `nonce` should
    /// be random per process.
    #[must_use]
    pub fn new(config: &WebhooksConfig, node: &NodeId, nonce: u64, metrics: Arc<Metrics>) -> Option<Arc<Webhooks>> {
        let url = config.url.clone()?;
        let secret = config.secret.clone().unwrap_or_default().into_bytes();
        Some(Arc::new(Webhooks {
            url,
            secret,
            node: node.to_string(),
            id_prefix: format!("{node}.{:x}.", nonce & 0xffff_ffff),
            next_id: AtomicU64::new(1),
            dispatch: Mutex::new(Dispatch::new(config.policy())),
            wake: Notify::new(),
            metrics,
            started: Instant::now(),
            config: config.clone(),
        }))
    }

    /// How long a channel stays empty before `channel_vacated`.
    #[must_use]
    pub fn vacated_grace(&self) -> Duration {
        self.config.vacated_grace
    }

    /// Queues `event` under a fresh id. Never waits; an event beyond `max_pending` is
    /// dropped and counted.
    pub fn emit(&self, mut event: Event<'_>) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        event.id = Cow::Owned(format!("{}{n}", self.id_prefix));
        let encoded: Box<str> = event.encode().into();
        let accepted = self.lock().push(encoded);
        if accepted {
            self.metrics.webhook_events.fetch_add(1, Ordering::Relaxed);
            self.metrics.webhook_pending.fetch_add(1, Ordering::Relaxed);
            self.wake.notify_one();
        } else {
            self.metrics.webhook_dropped.fetch_add(1, Ordering::Relaxed);
            debug!(channel = %event.channel, "webhook queue full: event dropped");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dispatch> {
        self.dispatch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tests: every queued event, parsed, as if delivered.
    #[cfg(test)]
    pub(crate) fn take_queued(&self) -> Vec<serde_json::Value> {
        let mut d = self.lock();
        let mut out = Vec::new();
        while let Some((batch, _)) = d.batch(Millis(0)) {
            out.extend(batch.iter().map(|e| serde_json::from_str(e).unwrap_or_default()));
            d.delivered();
        }
        out
    }

    /// `n` events left the queue (delivered or dead-lettered).
    fn settled(&self, n: usize) {
        self.metrics.webhook_pending.fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Sends batches until `shutdown` and the queue is empty. After `shutdown`, a batch
    /// that fails is not retried: what is left is counted as dead letters.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.config.timeout));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        info!(url = %self.url, "webhooks on");
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (pending, _) = self.lock().pending();
            if pending == 0 {
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = &mut notified => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            // A fresh batch waits a little for company unless it is full already (a
            // batch being retried goes as it is).
            let fresh = {
                let d = self.lock();
                !d.in_flight() && d.queued() < self.config.batch_max
            };
            if fresh && !shutdown.is_cancelled() {
                tokio::select! {
                    () = tokio::time::sleep(self.config.batch_delay) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            self.send_one(&client, &shutdown).await;
        }
    }

    /// Sends the batch in flight (or the next one) once and acts on the outcome.
    async fn send_one(&self, client: &Client<HttpConnector, Full<Bytes>>, shutdown: &CancellationToken) {
        let Some((body, attempt, events)) = ({
            let mut d = self.lock();
            d.batch(self.now()).map(|(batch, attempt)| (encode_batch(&self.node, batch), attempt, batch.len()))
        }) else {
            return;
        };
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signature = sign(&self.secret, unix, body.as_bytes());
        let outcome = tokio::time::timeout(self.config.timeout, self.post(client, body, &signature, attempt)).await;
        let failure = match outcome {
            Ok(Ok(())) => {
                let n = self.lock().delivered();
                self.metrics.webhook_requests_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics.webhook_delivered.fetch_add(n as u64, Ordering::Relaxed);
                self.settled(n);
                debug!(events = n, attempt, "webhook batch delivered");
                return;
            }
            Ok(Err(f)) => f,
            Err(_) => Failure { permanent: false, reason: format!("no answer within {:?}", self.config.timeout) },
        };
        self.metrics.webhook_requests_failed.fetch_add(1, Ordering::Relaxed);
        let after = {
            let mut d = self.lock();
            if shutdown.is_cancelled() {
                let (left, _) = d.pending();
                let dropped = d.failed(self.now(), true, 0);
                drop(d);
                let AfterFailure::DeadLettered { events: n } = dropped else { return };
                self.metrics.webhook_dead_letters.fetch_add(n as u64, Ordering::Relaxed);
                self.settled(n);
                error!(reason = %failure.reason, events = n, left, "webhook batch failed while shutting down: dropped");
                return;
            }
            d.failed(self.now(), failure.permanent, getrandom::u64().unwrap_or(attempt.into()))
        };
        match after {
            AfterFailure::Retry { after, attempt: next } => {
                warn!(reason = %failure.reason, events, attempt, retry_in_ms = after.as_millis() as u64, next, "webhook batch failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(after) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            AfterFailure::DeadLettered { events: n } => {
                self.metrics.webhook_dead_letters.fetch_add(n as u64, Ordering::Relaxed);
                self.settled(n);
                error!(
                    reason = %failure.reason,
                    events = n,
                    attempts = attempt,
                    permanent = failure.permanent,
                    "webhook batch given up: its events are dead letters"
                );
            }
        }
    }

    /// One `POST`; `Ok` for a 2xx answer.
    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: String,
        signature: &str,
        attempt: u32,
    ) -> Result<(), Failure> {
        let req = hyper::Request::post(&self.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, concat!("ringcastd/", env!("CARGO_PKG_VERSION")))
            .header(SIGNATURE_HEADER, signature)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure { permanent: true, reason: e.to_string() })?;
        let response = client
            .request(req)
            .await
            .map_err(|e| Failure { permanent: false, reason: format!("request failed: {e}") })?;
        let status = response.status();
        // Read the answer so the connection can be reused; its content is ignored.
        let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect().await;
        if status.is_success() {
            return Ok(());
        }
        // A 4xx other than 408 and 429 is the backend refusing this batch for good
        // (a bad signature, say): retrying the same bytes would not change its mind.
        let permanent = status.is_client_error()
            && status != hyper::StatusCode::REQUEST_TIMEOUT
            && status != hyper::StatusCode::TOO_MANY_REQUESTS;
        Err(Failure { permanent, reason: format!("answered {status}") })
    }
}

/// Why a `POST` failed.
struct Failure {
    permanent: bool,
    reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut WebhooksConfig)) -> Result<(), &'static str> {
        let mut c = WebhooksConfig {
            url: Some("http://127.0.0.1:9000/webhooks".into()),
            secret: Some("0123456789abcdef".into()),
            ..WebhooksConfig::default()
        };
        f(&mut c);
        c.validate().map_err(|e| e.0)
    }

    #[test]
    fn config_is_checked_field_by_field() {
        assert_eq!(WebhooksConfig::default().validate(), Ok(()), "off by default");
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(with(|c| c.url = Some("https://backend/x".into())), Err("webhooks.url"));
        assert_eq!(with(|c| c.url = Some("/relative".into())), Err("webhooks.url"));
        assert_eq!(with(|c| c.secret = None), Err("webhooks.secret"));
        assert_eq!(with(|c| c.secret = Some("short".into())), Err("webhooks.secret"));
        assert_eq!(with(|c| c.batch_max = 0), Err("webhooks.batch_max"));
        assert_eq!(with(|c| c.timeout = Duration::ZERO), Err("webhooks.timeout"));
        assert_eq!(with(|c| c.max_pending = 10), Err("webhooks.max_pending"));
        assert_eq!(with(|c| c.vacated_grace = Duration::from_secs(7200)), Err("webhooks.vacated_grace"));
    }

    #[test]
    fn emitted_events_get_unique_ids_and_a_full_queue_drops() {
        let config = WebhooksConfig {
            url: Some("http://127.0.0.1:9/x".into()),
            secret: Some("0123456789abcdef".into()),
            batch_max: 1,
            max_pending: 2,
            ..WebhooksConfig::default()
        };
        let metrics = Arc::new(Metrics::default());
        let Ok(node) = NodeId::new("n1") else { panic!("node id") };
        let Some(w) = Webhooks::new(&config, &node, 0xabc, metrics.clone()) else { panic!("configured") };
        for _ in 0..3 {
            w.emit(Event::new("", ringcast_proto::webhook::EventType::ChannelOccupied, "chat:x", 1));
        }
        assert_eq!(metrics.webhook_events.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.webhook_dropped.load(Ordering::Relaxed), 1);
        let mut d = w.lock();
        let Some((batch, _)) = d.batch(Millis(0)) else { panic!("a batch") };
        assert!(batch[0].contains(r#""id":"n1.abc.1""#), "{}", batch[0]);
    }
}
