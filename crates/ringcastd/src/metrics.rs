//! Node metrics, rendered as Prometheus text at `/metrics`.
//!
//! Plain atomics owned by the node (not a global recorder), so several nodes can run in
//! one test process and each counts only its own work. Updates are relaxed atomic adds;
//! nothing on the hot path allocates or locks.

use crate::hooks::{CallResult, Hook};
use ringcast_core::BackpressurePolicy;
use ringcast_proto::{CloseCode, ErrorCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the publish latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Where a publish came from.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    WebSocket,
    Http,
}

/// All counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub connections_total: AtomicU64,
    pub subscriptions: AtomicI64,
    /// Pattern subscriptions of this node's connections.
    pub pattern_subscriptions: AtomicI64,
    /// Patterns the other nodes registered here (distinct per node).
    pub peer_patterns: AtomicI64,
    pub channels: AtomicI64,
    publishes_ws: AtomicU64,
    publishes_http: AtomicU64,
    pub publish_duplicates: AtomicU64,
    /// Publishes in `delta` namespaces whose message got a delta form (a merge patch).
    pub deltas: AtomicU64,
    pub deliveries: AtomicU64,
    /// Writes to client sockets: a session's batch (one `write` of everything queued) or
    /// a flusher's direct write of what was queued since its last turn; compare with
    /// `deliveries` for how well writes coalesce.
    pub client_writes: AtomicU64,
    /// Of `client_writes`, the flushers' direct writes (`outbox`, "Direct writes").
    pub client_direct_writes: AtomicU64,
    /// Flusher turns held back by `limits.busy_write_interval` (the flusher was busy).
    pub flusher_busy_waits: AtomicU64,
    /// Connections closed 4008 because their queue overflowed (`disconnect`).
    pub slow_consumer_drops: AtomicU64,
    /// Messages dropped from connections' queues under `drop_oldest` and `drop_newest`.
    drops_oldest: AtomicU64,
    drops_newest: AtomicU64,
    drops_conflated: AtomicU64,
    /// Client publishes refused by a channel's `client_publish_rate`.
    pub channel_rate_limited: AtomicU64,
    /// Messages this node lost on their way from an owner that the owner's history no
    /// longer held (announced to subscribers as `gap` with reason `unavailable`).
    pub lost_messages: AtomicU64,
    /// `Deliver` frames a peer link could not take (the peer then resyncs by offset).
    pub peer_drops: AtomicU64,
    /// Peer links dropped because their queue overflowed.
    pub peer_overflows: AtomicU64,
    /// `join` and `leave` events this node, as owner, pushed to channels (after
    /// debouncing; namespaces with `join_leave`).
    pub presence_events: AtomicU64,
    /// Ephemeral pushes (`join`, `leave`, `typing`) dropped on full send queues.
    pub ephemeral_drops: AtomicU64,
    /// Typing notices dropped by the one-per-second limit.
    pub typing_limited: AtomicU64,
    /// Channels this node re-subscribed to after an owner's stream ended.
    pub resyncs: AtomicU64,
    /// Slots this node took over from a crashed owner with their durable channels.
    pub promotions: AtomicU64,
    /// Live subscriptions told their channel restarted in a new epoch (`resubscribed`).
    pub restarts: AtomicU64,
    /// `Deliver` frames refused because an owner with a newer slot epoch was seen.
    pub fenced_frames: AtomicU64,
    /// Slots this node handed off to another node.
    pub handoffs: AtomicU64,
    pub handshakes_rejected: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    closes: [AtomicU64; CloseCode::ALL.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
    /// Webhook events queued, delivered (answered 2xx), dropped on a full queue and
    /// given up after retries (`crate::webhooks`), and the `POST`s by outcome.
    pub webhook_events: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_dropped: AtomicU64,
    pub webhook_dead_letters: AtomicU64,
    pub webhook_requests_ok: AtomicU64,
    pub webhook_requests_failed: AtomicU64,
    /// Webhook events waiting to be sent (the batch in flight included).
    pub webhook_pending: AtomicI64,
    /// Backend hook calls by hook and result (`crate::hooks`).
    hook_calls: [[AtomicU64; CallResult::ALL.len()]; Hook::ALL.len()],
    hook_nanos: [AtomicU64; Hook::ALL.len()],
}

impl Metrics {
    pub fn publish(&self, source: Source) {
        match source {
            Source::WebSocket => self.publishes_ws.fetch_add(1, Relaxed),
            Source::Http => self.publishes_http.fetch_add(1, Relaxed),
        };
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts messages dropped from a queue under `policy`.
    pub fn dropped(&self, policy: BackpressurePolicy, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        match policy {
            BackpressurePolicy::DropOldest => self.drops_oldest.fetch_add(n, Relaxed),
            BackpressurePolicy::DropNewest => self.drops_newest.fetch_add(n, Relaxed),
            BackpressurePolicy::KeepLatest => self.drops_conflated.fetch_add(n, Relaxed),
            BackpressurePolicy::Disconnect => 0,
        };
    }

    pub fn close(&self, code: CloseCode) {
        if let Some(i) = CloseCode::ALL.iter().position(|c| *c == code) {
            self.closes[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a backend hook call (`hook` and `result`: positions in `Hook::ALL` and
    /// `CallResult::ALL`).
    pub fn hook_call(&self, hook: usize, result: usize) {
        if let Some(c) = self.hook_calls.get(hook).and_then(|r| r.get(result)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Adds a hook call's duration (slot wait included).
    pub fn hook_time(&self, hook: usize, d: Duration) {
        if let Some(n) = self.hook_nanos.get(hook) {
            n.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        }
    }

    /// Records the time from receiving a publish to the end of its fan-out.
    pub fn publish_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_nanos.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    #[must_use]
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut o, "ringcast_connections", "Open WebSocket sessions.", self.connections.load(Relaxed));
        gauge(&mut o, "ringcast_subscriptions", "Active subscriptions on this node.", self.subscriptions.load(Relaxed));
        gauge(&mut o, "ringcast_channels", "Channels with state on this node.", self.channels.load(Relaxed));
        gauge(
            &mut o,
            "ringcast_pattern_subscriptions",
            "Pattern subscriptions (psubscribe) of this node's connections.",
            self.pattern_subscriptions.load(Relaxed),
        );
        gauge(
            &mut o,
            "ringcast_peer_patterns",
            "Patterns other nodes registered here; this node sends them the matching channels it owns.",
            self.peer_patterns.load(Relaxed),
        );
        gauge(
            &mut o,
            "ringcast_webhook_pending",
            "Webhook events waiting to be sent, the batch in flight included.",
            self.webhook_pending.load(Relaxed),
        );
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut o,
            "ringcast_connections_total",
            "WebSocket sessions opened.",
            self.connections_total.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP ringcast_publishes_total Publishes sequenced, by source.\n# TYPE ringcast_publishes_total counter\n\
             ringcast_publishes_total{{source=\"ws\"}} {}\nringcast_publishes_total{{source=\"http\"}} {}",
            self.publishes_ws.load(Relaxed),
            self.publishes_http.load(Relaxed)
        );
        counter(
            &mut o,
            "ringcast_publish_duplicates_total",
            "Publishes answered from the idempotency window.",
            self.publish_duplicates.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_deltas_total",
            "Messages of delta namespaces sequenced with a merge-patch form for subscribers that hold the previous version.",
            self.deltas.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_deliveries_total",
            "Messages queued to local subscribers.",
            self.deliveries.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_client_writes_total",
            "Writes to client connections: a session's batch (one socket write of everything queued) or a flusher's direct write of what was queued since its last turn.",
            self.client_writes.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_client_direct_writes_total",
            "Direct writes: pre-framed writes of what was queued for a connection, straight to the socket, by a flusher or, when the socket was full, by the connection's session (also counted in ringcast_client_writes_total).",
            self.client_direct_writes.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_flusher_busy_waits_total",
            "Flusher turns held back by limits.busy_write_interval: the flusher had work at least three quarters of the time, so each connection's pushes of the interval went out in one write.",
            self.flusher_busy_waits.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP ringcast_drops_total Slow-consumer drops by policy: messages dropped (drop_oldest, drop_newest), \
             replaced by a newer one of the same key (keep_latest) or connections closed 4008 (disconnect).\n# TYPE ringcast_drops_total counter\n\
             ringcast_drops_total{{policy=\"drop_oldest\"}} {}\nringcast_drops_total{{policy=\"drop_newest\"}} {}\n\
             ringcast_drops_total{{policy=\"keep_latest\"}} {}\nringcast_drops_total{{policy=\"disconnect\"}} {}",
            self.drops_oldest.load(Relaxed),
            self.drops_newest.load(Relaxed),
            self.drops_conflated.load(Relaxed),
            self.slow_consumer_drops.load(Relaxed)
        );
        counter(
            &mut o,
            "ringcast_channel_rate_limited_total",
            "Client publishes refused by a channel's client_publish_rate.",
            self.channel_rate_limited.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_lost_messages_total",
            "Messages lost between an owner and this node beyond the owner's history (sent to clients as gap).",
            self.lost_messages.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_peer_drops_total",
            "Deliver frames dropped because a peer link was full or gone (the peer resyncs by offset).",
            self.peer_drops.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_presence_events_total",
            "Join and leave events this node, as channel owner, pushed to channels (after debouncing).",
            self.presence_events.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_ephemeral_drops_total",
            "Join, leave and typing pushes dropped because a connection's send queue was full.",
            self.ephemeral_drops.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_typing_limited_total",
            "Typing notices dropped by the one-per-second-per-user-and-channel limit.",
            self.typing_limited.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_peer_overflows_total",
            "Peer links dropped because their bounded queue overflowed (a slow or stalled peer).",
            self.peer_overflows.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_resyncs_total",
            "Channels re-subscribed by offset after an owner's stream to this node ended.",
            self.resyncs.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_stream_restarts_total",
            "Channels whose local subscribers were told the stream restarted in a new epoch (resubscribed).",
            self.restarts.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_failovers_total",
            "Slots this node took over from a crashed owner, continuing their durable channels in the same epochs.",
            self.promotions.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_handoffs_total",
            "Slots this node handed off gracefully.",
            self.handoffs.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_fenced_frames_total",
            "Deliver frames refused because they came from an owner with a stale slot epoch.",
            self.fenced_frames.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_handshakes_rejected_total",
            "WebSocket upgrades refused (origin, rate, readiness, malformed).",
            self.handshakes_rejected.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_webhook_events_total",
            "Webhook events queued by this node as channel owner.",
            self.webhook_events.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_webhook_delivered_total",
            "Webhook events the backend accepted (2xx).",
            self.webhook_delivered.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_webhook_dropped_total",
            "Webhook events dropped because webhooks.max_pending events were waiting.",
            self.webhook_dropped.load(Relaxed),
        );
        counter(
            &mut o,
            "ringcast_webhook_dead_letters_total",
            "Webhook events given up: refused for good (4xx) or still failing after webhooks.retry_for.",
            self.webhook_dead_letters.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP ringcast_webhook_requests_total Webhook batch POSTs, by outcome.\n# TYPE ringcast_webhook_requests_total counter\n\
             ringcast_webhook_requests_total{{result=\"ok\"}} {}\nringcast_webhook_requests_total{{result=\"failed\"}} {}",
            self.webhook_requests_ok.load(Relaxed),
            self.webhook_requests_failed.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ringcast_errors_total Errors returned to clients, by code.\n# TYPE ringcast_errors_total counter"
        );
        for (c, v) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(o, "ringcast_errors_total{{code=\"{}\"}} {}", c.as_str(), v.load(Relaxed));
        }
        let _ = writeln!(o, "# HELP ringcast_closes_total WebSocket closes by the server, by code.\n# TYPE ringcast_closes_total counter");
        for (c, v) in CloseCode::ALL.iter().zip(&self.closes) {
            let _ = writeln!(o, "ringcast_closes_total{{code=\"{}\"}} {}", c.code(), v.load(Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP ringcast_publish_seconds Time from receiving a publish to the end of its local fan-out.\n\
             # TYPE ringcast_publish_seconds histogram"
        );
        let mut cumulative = 0;
        for (b, v) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            cumulative += v.load(Relaxed);
            let _ = writeln!(o, "ringcast_publish_seconds_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "ringcast_publish_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "ringcast_publish_seconds_sum {}", self.latency_sum_nanos.load(Relaxed) as f64 / 1e9);
        let _ = writeln!(o, "ringcast_publish_seconds_count {count}");
        let _ = writeln!(
            o,
            "# HELP ringcast_hook_calls_total Backend hook calls, by hook and result (failed: on_failure decided).\n\
             # TYPE ringcast_hook_calls_total counter"
        );
        for (hook, row) in Hook::ALL.iter().zip(&self.hook_calls) {
            for (result, v) in CallResult::ALL.iter().zip(row) {
                let (h, r, n) = (hook.as_str(), result.as_str(), v.load(Relaxed));
                let _ = writeln!(o, "ringcast_hook_calls_total{{hook=\"{h}\",result=\"{r}\"}} {n}");
            }
        }
        let _ = writeln!(
            o,
            "# HELP ringcast_hook_seconds Time in backend hook calls, waiting for a slot included.\n\
             # TYPE ringcast_hook_seconds summary"
        );
        for (hook, (row, nanos)) in Hook::ALL.iter().zip(self.hook_calls.iter().zip(&self.hook_nanos)) {
            let calls: u64 = row.iter().map(|v| v.load(Relaxed)).sum();
            let secs = nanos.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(o, "ringcast_hook_seconds_sum{{hook=\"{}\"}} {secs}", hook.as_str());
            let _ = writeln!(o, "ringcast_hook_seconds_count{{hook=\"{}\"}} {calls}", hook.as_str());
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_and_cumulative_buckets() {
        let m = Metrics::default();
        m.publish(Source::Http);
        m.publish_latency(Duration::from_micros(200));
        m.publish_latency(Duration::from_secs(5));
        m.error(ErrorCode::RateLimited);
        let text = m.render();
        assert!(text.contains("ringcast_publishes_total{source=\"http\"} 1"));
        assert!(text.contains("ringcast_errors_total{code=\"rate_limited\"} 1"));
        assert!(text.contains("ringcast_publish_seconds_bucket{le=\"0.00025\"} 1"));
        assert!(text.contains("ringcast_publish_seconds_bucket{le=\"1\"} 1"));
        assert!(text.contains("ringcast_publish_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("ringcast_closes_total{code=\"4008\"} 0"));
    }
}
