//! Namespace options: per-namespace behaviour of its channels.
//!
//! A channel's namespace is the part of its name before the first `:` (`scores` in
//! `scores:nba:lakers`; `default` when there is none). Options come from the `[namespaces.NAME]`
//! tables of the configuration file; this module owns their shape, defaults and
//! validation, so a bad value is refused before the node starts.

use crate::dedup::DedupPolicy;
use crate::log::HistoryPolicy;
use crate::send_queue::{Bounds, MessagePolicy};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest `max_message_bytes` any namespace may set.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 1024 * 1024;
/// Largest `history_size` any namespace may set.
pub const MAX_HISTORY_SIZE: usize = 100_000;
/// Longest `history_ttl` any namespace may set.
pub const MAX_HISTORY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What to do when a subscriber's send queue is full (see `crate::send_queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackpressurePolicy {
    /// Drop the channel's oldest queued messages, then tell the client with a `gap`:
    /// a slow reader keeps up with the most recent messages (chat).
    #[default]
    DropOldest,
    /// Drop the new message, then tell the client with a `gap`.
    DropNewest,
    /// Close the connection with `slow_consumer`; the client resumes from history.
    Disconnect,
    /// Replace a queued message with a newer one for the same key, then tell the client
    /// with a `gap` marked `conflated` (scoreboards: a slow viewer gets fewer, current
    /// updates); without a queued message of that key, drop the channel's oldest.
    KeepLatest,
}

impl BackpressurePolicy {
    /// The policy's configuration name (also its metrics label).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackpressurePolicy::DropOldest => "drop_oldest",
            BackpressurePolicy::DropNewest => "drop_newest",
            BackpressurePolicy::Disconnect => "disconnect",
            BackpressurePolicy::KeepLatest => "keep_latest",
        }
    }
}

/// Options of one namespace. Every field has a default, documented on the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Messages kept per channel for recovery and history (default 300).
    pub history_size: usize,
    /// Longest a message is kept (default `"2m"`).
    #[serde(with = "crate::time::serde_duration")]
    pub history_ttl: Duration,
    /// Whether clients may publish (default true). Scoreboards set false: only the
    /// server API publishes.
    pub client_publish: bool,
    /// Largest `data` of a publish, in bytes of its JSON text (default 65536).
    pub max_message_bytes: usize,
    /// Whether connections without a token may subscribe (and publish, if
    /// `client_publish`) (default false).
    pub anonymous: bool,
    /// Durable channels (RF 2; default false): each message is held by the slot's replica
    /// before it is acknowledged or delivered, and a crash of the owner continues the
    /// channel in the same epoch on the replica. Needs a cluster of two or more core
    /// nodes; publishes fail with `insufficient_replicas` when no replica is reachable.
    pub durable: bool,
    /// Slow-subscriber policy (default `drop_oldest`).
    pub backpressure: BackpressurePolicy,
    /// Messages of this namespace a connection may have queued before the policy applies
    /// (default: the connection's `limits.send_queue_messages`; never more than it).
    pub send_queue_messages: Option<usize>,
    /// Bytes of this namespace's messages a connection may have queued before the policy
    /// applies (default: `limits.send_queue_bytes`; never more than it).
    pub send_queue_bytes: Option<usize>,
    /// Client publishes per second per channel, across the cluster (the owner counts
    /// them; the server API is not limited). 0 disables the limit (default 100).
    pub client_publish_rate: u32,
    /// Client publishes a channel may take in a burst above the rate (default 200).
    pub client_publish_burst: u32,
    /// How long an idempotency key is remembered (default `"2m"`).
    #[serde(with = "crate::time::serde_duration")]
    pub dedup_window: Duration,
    /// Presence (default false): the channel's owner knows which clients are
    /// subscribed (user, connection, node, token `info`), answered by `presence` and
    /// `presence_stats` and `GET /v1/channels/{channel}/presence`.
    pub presence: bool,
    /// Join and leave pushes to the channel's subscribers (default false; needs
    /// `presence`). One `join` when a user arrives, one `leave` when the user's last
    /// client has been gone for `presence_grace`.
    pub join_leave: bool,
    /// How long a user whose last client left may come back before `leave` is sent
    /// (default `"30s"`; at most `"1h"`).
    #[serde(with = "crate::time::serde_duration")]
    pub presence_grace: Duration,
    /// Keep the newest message of each `key` (default false): scoreboards. A new
    /// subscriber first gets a `snapshot` of that state, then live messages;
    /// `GET /v1/channels/{channel}/state` returns it. Publishes may carry a `key` (a
    /// publish without one uses the empty key: the channel's single latest message).
    pub keep_latest: bool,
    /// Keys a keep-latest channel holds (default 1000, at most 100000); a new key beyond
    /// it evicts the key updated longest ago.
    pub max_keys: usize,
    /// How long a key's latest message is kept without an update (default `"24h"`, at
    /// most `"168h"`).
    #[serde(with = "crate::time::serde_duration")]
    pub state_ttl: Duration,
    /// Deltas (default false; needs `keep_latest`): a subscriber that asks for them
    /// (`"delta": true`) and already holds a key's previous version may get a keyed
    /// message as an RFC 7396 merge patch against it (`base`, `patch`) instead of the
    /// full `data` ([`crate::delta`]).
    pub delta: bool,
    /// Pattern subscriptions (default false): clients whose token grants it may
    /// `psubscribe` to patterns of this namespace (`scores:nba:*`, `scores:>`;
    /// [`crate::pattern`]). Every node then sends the subscriber's node the messages of
    /// every matching channel it owns: meant for server consumers and dashboards.
    pub patterns: bool,
    /// Ask the application backend (`hooks.subscribe_url`) before each client
    /// `subscribe` and `psubscribe` (default false).
    pub subscribe_hook: bool,
    /// Ask the application backend (`hooks.publish_url`) before each client `publish`;
    /// it may rewrite the data (default false).
    pub publish_hook: bool,
    /// Webhooks this namespace's channels send to `webhooks.url` (default none), any of
    /// `"occupancy"` (`channel_occupied`, `channel_vacated`), `"presence"`
    /// (`member_joined`, `member_left`; needs `presence`) and `"messages"` (every
    /// message published).
    pub webhooks: Vec<WebhookKind>,
}

/// A group of webhook events a namespace may select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    Occupancy,
    Presence,
    Messages,
}

/// A namespace's webhook selection as flags (cheap to copy into channel state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookSet {
    pub occupancy: bool,
    pub presence: bool,
    pub messages: bool,
}

impl WebhookSet {
    #[must_use]
    pub fn any(self) -> bool {
        self.occupancy || self.presence || self.messages
    }
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            history_size: 300,
            history_ttl: Duration::from_secs(120),
            client_publish: true,
            max_message_bytes: 64 * 1024,
            anonymous: false,
            durable: false,
            backpressure: BackpressurePolicy::DropOldest,
            send_queue_messages: None,
            send_queue_bytes: None,
            client_publish_rate: 100,
            client_publish_burst: 200,
            dedup_window: Duration::from_secs(120),
            presence: false,
            join_leave: false,
            presence_grace: crate::presence::DEFAULT_LEAVE_GRACE,
            keep_latest: false,
            max_keys: crate::latest::LatestPolicy::default().max_keys,
            state_ttl: crate::latest::LatestPolicy::default().ttl,
            delta: false,
            patterns: false,
            subscribe_hook: false,
            publish_hook: false,
            webhooks: Vec::new(),
        }
    }
}

/// A namespace option out of range. The text names the field and the allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct NamespaceError {
    pub field: &'static str,
    pub problem: String,
}

impl NamespaceOptions {
    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), NamespaceError> {
        let err = |field, problem: String| Err(NamespaceError { field, problem });
        if self.history_size > MAX_HISTORY_SIZE {
            return err("history_size", format!("{} is above the maximum {MAX_HISTORY_SIZE}", self.history_size));
        }
        if self.history_ttl > MAX_HISTORY_TTL {
            return err("history_ttl", "must be at most 24h".into());
        }
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return err("history_ttl", "must be above zero when history_size is above zero".into());
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
            return err(
                "max_message_bytes",
                format!("{} is outside 1..={MAX_MESSAGE_BYTES_CEILING}", self.max_message_bytes),
            );
        }
        if self.dedup_window.is_zero() || self.dedup_window > Duration::from_secs(3600) {
            return err("dedup_window", "must be between 1ms and 1h".into());
        }
        if self.join_leave && !self.presence {
            return err("join_leave", "needs presence = true (joins and leaves come from the presence state)".into());
        }
        if self.webhooks.contains(&WebhookKind::Presence) && !self.presence {
            return err(
                "webhooks",
                "\"presence\" needs presence = true (the events come from the presence state)".into(),
            );
        }
        if self.delta && !self.keep_latest {
            return err("delta", "needs keep_latest = true (a patch is taken against the key's latest message)".into());
        }
        if self.max_keys == 0 || self.max_keys > 100_000 {
            return err("max_keys", format!("{} is outside 1..=100000", self.max_keys));
        }
        if self.state_ttl.is_zero() || self.state_ttl > Duration::from_secs(7 * 24 * 3600) {
            return err("state_ttl", "must be between 1ms and 168h (7 days)".into());
        }
        if self.presence_grace > Duration::from_secs(3600) {
            return err("presence_grace", "must be at most 1h".into());
        }
        if self.send_queue_messages == Some(0) {
            return err("send_queue_messages", "must be at least 1".into());
        }
        if let Some(b) = self.send_queue_bytes {
            if b < self.max_message_bytes {
                return err(
                    "send_queue_bytes",
                    format!("{b} is below max_message_bytes ({}): no message would fit", self.max_message_bytes),
                );
            }
        }
        if self.client_publish_rate > 0 && self.client_publish_burst == 0 {
            return err("client_publish_burst", "must be at least 1 when client_publish_rate is set".into());
        }
        Ok(())
    }

    /// The webhook events this namespace selected.
    #[must_use]
    pub fn webhook_set(&self) -> WebhookSet {
        let has = |k| self.webhooks.contains(&k);
        WebhookSet {
            occupancy: has(WebhookKind::Occupancy),
            presence: has(WebhookKind::Presence),
            messages: has(WebhookKind::Messages),
        }
    }

    #[must_use]
    pub fn history_policy(&self) -> HistoryPolicy {
        HistoryPolicy { size: self.history_size, ttl: self.history_ttl }
    }

    /// How this namespace's messages are queued on a connection bounded by `connection`.
    #[must_use]
    pub fn message_policy(&self, connection: Bounds) -> MessagePolicy {
        MessagePolicy {
            policy: self.backpressure,
            bounds: Bounds {
                messages: self.send_queue_messages.map_or(connection.messages, |m| m.min(connection.messages)),
                bytes: self.send_queue_bytes.map_or(connection.bytes, |b| b.min(connection.bytes)),
            },
        }
    }

    /// The keep-latest state channels keep, if any.
    #[must_use]
    pub fn latest_policy(&self) -> Option<crate::latest::LatestPolicy> {
        self.keep_latest.then_some(crate::latest::LatestPolicy { max_keys: self.max_keys, ttl: self.state_ttl })
    }

    #[must_use]
    pub fn dedup_policy(&self) -> DedupPolicy {
        DedupPolicy { window: self.dedup_window, ..DedupPolicy::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let d = NamespaceOptions::default();
        assert_eq!(d.validate(), Ok(()));
        assert_eq!((d.history_size, d.history_ttl), (300, Duration::from_secs(120)));
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let bad = NamespaceOptions { max_message_bytes: 0, ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("max_message_bytes"));
        let bad = NamespaceOptions { history_size: MAX_HISTORY_SIZE + 1, ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("history_size"));
        let bad = NamespaceOptions { history_ttl: Duration::ZERO, ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("history_ttl"));
        let bad = NamespaceOptions { join_leave: true, ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("join_leave"));
        let bad = NamespaceOptions { presence: true, presence_grace: Duration::from_secs(7200), ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("presence_grace"));
        let bad = NamespaceOptions { webhooks: vec![WebhookKind::Presence], ..Default::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("webhooks"));
    }

    #[test]
    fn policies_parse_by_snake_case_name() {
        for (s, p) in [
            ("drop_oldest", BackpressurePolicy::DropOldest),
            ("drop_newest", BackpressurePolicy::DropNewest),
            ("disconnect", BackpressurePolicy::Disconnect),
            ("keep_latest", BackpressurePolicy::KeepLatest),
        ] {
            let v: Result<BackpressurePolicy, _> = serde_json::from_str(&format!("\"{s}\""));
            assert_eq!(v.ok(), Some(p));
        }
        assert!(serde_json::from_str::<BackpressurePolicy>("\"drop_all\"").is_err());
        let keep = NamespaceOptions { backpressure: BackpressurePolicy::KeepLatest, ..Default::default() };
        assert_eq!(keep.validate(), Ok(()));
    }

    #[test]
    fn webhook_selections_parse_by_name() {
        let ns: NamespaceOptions =
            serde_json::from_str(r#"{"presence":true,"webhooks":["occupancy","presence"]}"#).expect("test value");
        assert_eq!(ns.validate(), Ok(()));
        assert_eq!(ns.webhook_set(), WebhookSet { occupancy: true, presence: true, messages: false });
        assert!(!NamespaceOptions::default().webhook_set().any());
        assert!(serde_json::from_str::<NamespaceOptions>(r#"{"webhooks":["typing"]}"#).is_err());
    }

    #[test]
    fn a_namespace_bound_never_exceeds_the_connections() {
        let conn = Bounds { messages: 1000, bytes: 1 << 20 };
        let d = NamespaceOptions::default();
        assert_eq!(d.message_policy(conn).bounds, conn);
        assert_eq!(d.message_policy(conn).policy, BackpressurePolicy::DropOldest);
        let tight = NamespaceOptions { send_queue_messages: Some(10), send_queue_bytes: Some(1 << 30), ..d };
        assert_eq!(tight.message_policy(conn).bounds, Bounds { messages: 10, bytes: 1 << 20 });
        let bad = NamespaceOptions { send_queue_bytes: Some(10), ..NamespaceOptions::default() };
        assert_eq!(bad.validate().map_err(|e| e.field), Err("send_queue_bytes"));
    }
}
