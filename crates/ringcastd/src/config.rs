//! Configuration: a typed tree, layered file -> environment -> flags.
//!
//! Every field has a default documented on it, so an empty file is a valid config. The
//! layers are applied by [`Config::load`] from injected sources (file text, an env map,
//! parsed flags), so tests never touch the process environment. Anything wrong is
//! reported as a [`ConfigError`] naming the field and what is allowed; `main` prints it
//! and exits with status 64 (EX_USAGE).

pub use ringcast_auth::AuthConfig;
use ringcast_core::{NamespaceName, NamespaceOptions, NodeId};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Room a WebSocket `publish` frame needs around its `data` (id, type, channel,
/// idempotency key, JSON punctuation): `max_message_bytes` plus this must fit in
/// `max_frame_bytes`, so an oversized `data` is answered with `message_too_large`
/// instead of closing the connection with 1009.
pub const ENVELOPE_ALLOWANCE_BYTES: usize = 1024;

/// The longest `limits.min_write_interval` and `limits.busy_write_interval`: beyond it,
/// coalescing would add latency that no real-time client should see.
pub const MAX_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The largest `limits.send_queue_messages` and `limits.send_queue_bytes` (4 Gi, more than
/// any connection's queue can use): a channel keeps each subscriber's bounds in 32 bits.
pub const MAX_SEND_QUEUE: usize = u32::MAX as usize;

/// The built-in development config used when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("../demo.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub limits: Limits,
    pub heartbeat: Heartbeat,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    /// `[cluster]`: absent for a standalone node.
    pub cluster: Option<ClusterConfig>,
    /// `[namespaces.NAME]` tables. A channel whose namespace is not listed is refused
    /// with `unknown_namespace`.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// `[registry]`: the user registry channels `#user:{id}`.
    pub registry: RegistryConfig,
    /// `[hooks]`: the application backend's HTTP endpoints asked about connects,
    /// refreshes, subscribes and publishes (`crate::hooks`).
    pub hooks: crate::hooks::HooksConfig,
    /// `[webhooks]`: where channel events of the namespaces that select them are sent
    /// (`crate::webhooks`).
    pub webhooks: crate::webhooks::WebhooksConfig,
    /// `[web]`: the browser pages.
    pub web: WebConfig,
}

/// `[web]`: the pages served next to the API (`/ringcast.js` is always served).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the live scoreboard demo at `/` and the cluster dashboard at `/dashboard`
    /// (default false; the built-in development config turns it on). The pages hold no
    /// secret; the dashboard reads the operator API with the key typed into it.
    pub pages: bool,
}

/// `[registry]`: every connection with a token is subscribed to its user's registry
/// channel `#user:{sub}`. The channel's owner knows which nodes hold the user's
/// connections (`GET /v1/users/{id}`), and publishes to it (server API) are direct
/// messages to every connection of the user, recovered like any channel's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Whether connections are registered and subscribed (default true).
    pub enabled: bool,
    /// Direct messages kept per user for reconnects (default 100).
    pub history_size: usize,
    /// How long they are kept (default `"5m"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub history_ttl: Duration,
    /// Replicated registry channels (default false; see `namespaces.*.durable`).
    pub durable: bool,
    /// Largest direct message, in bytes of its JSON text (default 65536).
    pub max_message_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: true,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            durable: false,
            max_message_bytes: 64 * 1024,
        }
    }
}

impl RegistryConfig {
    /// The namespace options of `#user:` channels: presence without join/leave pushes
    /// and without a grace (a user is online while a connection is open; last seen is
    /// when the last one closed), published to by the server API only.
    #[must_use]
    pub fn namespace(&self) -> NamespaceOptions {
        NamespaceOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            presence_grace: Duration::ZERO,
            durable: self.durable,
            max_message_bytes: self.max_message_bytes,
            presence: true,
            join_leave: false,
            client_publish: false,
            anonymous: false,
            ..NamespaceOptions::default()
        }
    }
}

/// `[node]`: identity and addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node id (default `"standalone"`): a DNS host name (lowercase labels of letters,
    /// digits and `-`), because it is also the node's certificate name.
    pub id: String,
    /// Client address: HTTP and WebSocket on one TCP port (default `127.0.0.1:7400`).
    /// Port 0 picks a free port; the bound address is printed in the ready record.
    pub listen: SocketAddr,
    /// After SIGTERM, how long the node keeps serving while `/readyz` already answers
    /// 503 and new WebSocket upgrades are refused, so load balancers stop sending
    /// clients before sessions are closed (default `"0s"`; behind a load balancer use
    /// at least its health-check interval).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub drain_delay: Duration,
    /// How long a SIGTERM waits for connections to close before exiting (default `"10s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub shutdown_grace: Duration,
}

/// `[limits]`: every bound on client input, named.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client TCP connections (default 10000). Further connections wait in the
    /// kernel backlog until one closes.
    pub max_connections: usize,
    /// Largest WebSocket frame or message, and largest HTTP body (default 131072).
    /// Larger frames close the connection with 1009; larger bodies get 413.
    pub max_frame_bytes: usize,
    /// Subscriptions per connection (default 512), `too_many_channels` beyond.
    pub max_channels_per_connection: usize,
    /// Pattern subscriptions per connection (default 16; 0 refuses them all),
    /// `too_many_channels` beyond. Each costs every node a test per new channel.
    pub max_patterns_per_connection: usize,
    /// Sustained commands per second per connection (default 100), `rate_limited` beyond.
    pub commands_per_second: u32,
    /// Commands a connection may send in a burst (default 200).
    pub command_burst: u32,
    /// New WebSocket handshakes per second for the whole node (default 1000; 0 = off),
    /// 429 beyond.
    pub handshakes_per_second: u32,
    /// Time to send the request head of an HTTP request or upgrade (default `"10s"`);
    /// slower clients (slowloris) are dropped.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub handshake_timeout: Duration,
    /// Time from the upgrade to the `connect` command (default `"10s"`), close 4003 beyond.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub connect_timeout: Duration,
    /// Request header fields (default 64); more get 431.
    pub max_header_count: usize,
    /// Bytes of request line plus headers (default 16384, at least 8192); more get 431.
    pub max_header_bytes: usize,
    /// Frames queued for one connection before it is a slow consumer (default 1000).
    pub send_queue_messages: usize,
    /// Bytes queued for one connection before it is a slow consumer (default 1 MiB).
    pub send_queue_bytes: usize,
    /// Longest a write to one client may take before the connection is dropped
    /// (default `"10s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub write_timeout: Duration,
    /// Least time between two writes to one client (default `"0ms"`: write as soon as
    /// something is queued). Frames queued in between go out together in the next
    /// write. A connection that has not written for this long writes at once, so an
    /// isolated message is never delayed; under a steady stream each connection makes
    /// at most one write (one system call) per interval.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub min_write_interval: Duration,
    /// Least time between two turns of a flusher while it is busy: it had work at least
    /// three quarters of the time over its last turns (default `"20ms"`; `"0ms"`: off).
    /// Below that load nothing waits; at it, each connection's pushes of the interval go
    /// out in one write (`ringcast_core::pacing`). Direct writes only.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub busy_write_interval: Duration,
    /// Let a flusher task write the messages queued for a connection straight to its
    /// socket, in one write per connection per turn, without waking the connection's
    /// session task (default `true`; `false`: every write is the session's; see
    /// `outbox`, "Direct writes").
    pub direct_writes: bool,
    /// The kernel send buffer of each client socket, in bytes (default: unset, the
    /// kernel's autotuning, which grows a slow reader's buffer to megabytes). Set it
    /// (4096..=16777216; for example 65536) so that what a slow client cannot take
    /// waits in ringcast's queue, where `keep_latest` conflation and `drop_oldest` act on
    /// it, instead of in the kernel, where it only grows stale.
    pub socket_send_buffer: Option<usize>,
}

/// `[heartbeat]`: detecting dead clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Server ping period (default `"25s"`).
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub ping_interval: Duration,
    /// Extra time allowed for an answer (default `"10s"`): a client silent for
    /// `ping_interval + pong_timeout` is closed with 4010.
    #[serde(with = "ringcast_core::time::serde_duration")]
    pub pong_timeout: Duration,
}

/// `[cluster]`: joining a cluster. Without this section (and without
/// `--membership`) the node runs standalone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints, e.g. `["http://10.0.0.1:2379"]` (required).
    pub membership: Vec<String>,
    /// Cluster name: the etcd key prefix `/{name}/` (default `"ringcast"`).
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// `core` (owns slots and serves clients) or `edge` (serves clients only)
    /// (default `core`).
    #[serde(default = "default_role")]
    pub role: ringcast_cluster::membership::Role,
    /// QUIC address for peers (default `127.0.0.1:7401`; port 0 picks a free port).
    #[serde(default = "default_quic_listen")]
    pub listen: SocketAddr,
    /// QUIC address peers should dial, when it differs from `listen` (NAT, containers).
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// Client address advertised to peers and tools (default: the bound client address).
    #[serde(default)]
    pub advertise_client: Option<SocketAddr>,
    /// Cluster CA certificate (PEM), required.
    pub ca_file: PathBuf,
    /// This node's certificate (PEM; its SAN must be the node id), required.
    pub cert_file: PathBuf,
    /// This node's private key (PEM), required.
    pub key_file: PathBuf,
    /// etcd lease TTL (default `"6s"`): how long a crashed node keeps its slots.
    #[serde(default = "default_ttl", with = "ringcast_core::time::serde_duration")]
    pub lease_ttl: Duration,
    /// Keepalive period (default `"2s"`; at most a third of the TTL).
    #[serde(default = "default_keepalive", with = "ringcast_core::time::serde_duration")]
    pub keepalive: Duration,
    /// How long a joining node waits before claiming vacant slots (default `"2s"`), so
    /// nodes started together divide the slots between them. Until graceful handoff
    /// lands, slots stay with the node that claimed them.
    #[serde(default = "default_claim_delay", with = "ringcast_core::time::serde_duration")]
    pub claim_delay: Duration,
    /// Frames queued for one peer before its link counts as overloaded and is dropped
    /// (default 65536).
    #[serde(default = "default_peer_queue_frames")]
    pub peer_queue_frames: usize,
    /// Bytes queued for one peer before its link counts as overloaded (default 64 MiB).
    #[serde(default = "default_peer_queue_bytes")]
    pub peer_queue_bytes: usize,
}

fn default_peer_queue_frames() -> usize {
    65_536
}

fn default_peer_queue_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_claim_delay() -> Duration {
    Duration::from_secs(2)
}

fn default_cluster_name() -> String {
    "ringcast".into()
}
fn default_role() -> ringcast_cluster::membership::Role {
    ringcast_cluster::membership::Role::Core
}
fn default_quic_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}
fn default_ttl() -> Duration {
    Duration::from_secs(6)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(2)
}

/// `[api]`: the server HTTP API.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API key for `POST /v1/publish` and `/v1/broadcast` (sent as
    /// `Authorization: Bearer KEY`). Default: none, and those endpoints answer 401.
    pub key: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: "standalone".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_frame_bytes: 128 * 1024,
            max_channels_per_connection: 512,
            max_patterns_per_connection: 16,
            commands_per_second: 100,
            command_burst: 200,
            handshakes_per_second: 1000,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_header_count: 64,
            max_header_bytes: 16 * 1024,
            send_queue_messages: 1000,
            send_queue_bytes: 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            min_write_interval: Duration::ZERO,
            busy_write_interval: Duration::from_millis(20),
            direct_writes: true,
            socket_send_buffer: None,
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { ping_interval: Duration::from_secs(25), pong_timeout: Duration::from_secs(10) }
    }
}

/// A configuration problem, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

/// Overrides taken from command-line flags (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub listen: Option<SocketAddr>,
    pub node_id: Option<String>,
    pub api_key: Option<String>,
    /// `--membership etcd://h1:2379,h2:2379`, already split into endpoints.
    pub membership: Option<Vec<String>>,
    pub cluster_name: Option<String>,
    pub role: Option<ringcast_cluster::membership::Role>,
    pub quic_listen: Option<SocketAddr>,
}

/// Parses `etcd://h1:2379,h2:2379` into etcd endpoints (`http://h1:2379`, ...).
pub fn parse_membership(s: &str) -> Result<Vec<String>, String> {
    let rest = s.strip_prefix("etcd://").ok_or_else(|| format!("{s:?}: write etcd://HOST:PORT[,HOST:PORT...]"))?;
    let hosts: Vec<String> = rest.split(',').map(str::trim).filter(|h| !h.is_empty()).map(String::from).collect();
    if hosts.is_empty() || hosts.iter().any(|h| !h.contains(':') || h.contains('/')) {
        return Err(format!("{s:?}: every endpoint needs HOST:PORT, e.g. etcd://127.0.0.1:2379"));
    }
    Ok(hosts.into_iter().map(|h| format!("http://{h}")).collect())
}

/// Environment variables read, and the field each overrides.
pub const ENV_VARS: [(&str, &str); 6] = [
    ("RINGCAST_LISTEN", "node.listen"),
    ("RINGCAST_NODE_ID", "node.id"),
    ("RINGCAST_API_KEY", "api.key"),
    ("RINGCAST_HMAC_SECRET", "auth.hmac_secret"),
    ("RINGCAST_ALLOWED_ORIGINS", "auth.allowed_origins (comma-separated)"),
    ("RINGCAST_WEBHOOK_SECRET", "webhooks.secret"),
];

impl Config {
    /// Parses a TOML document (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
    }

    /// Layers: the file text (or the built-in demo config), then `env`, then `flags`,
    /// then validation.
    pub fn load(
        file: Option<(&str, &str)>,
        env: &HashMap<String, String>,
        flags: &FlagOverrides,
    ) -> Result<Config, ConfigError> {
        let mut c = match file {
            Some((text, origin)) => Config::from_toml(text, origin)?,
            None => Config::from_toml(DEMO_CONFIG, "(built-in demo config)")?,
        };
        c.apply_env(env)?;
        if let Some(l) = flags.listen {
            c.node.listen = l;
        }
        if let Some(id) = &flags.node_id {
            c.node.id = id.clone();
        }
        if let Some(k) = &flags.api_key {
            c.api.key = Some(k.clone());
        }
        if let Some(endpoints) = &flags.membership {
            match &mut c.cluster {
                Some(cl) => cl.membership = endpoints.clone(),
                None => {
                    return Err(ConfigError::Invalid {
                        field: "--membership".into(),
                        problem:
                            "joining a cluster also needs a [cluster] section with ca_file, cert_file and key_file"
                                .into(),
                    })
                }
            }
        }
        if let Some(cl) = &mut c.cluster {
            if let Some(n) = &flags.cluster_name {
                cl.name = n.clone();
            }
            if let Some(r) = flags.role {
                cl.role = r;
            }
            if let Some(q) = flags.quic_listen {
                cl.listen = q;
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        if let Some(v) = env.get("RINGCAST_LISTEN") {
            self.node.listen = v.parse().map_err(|_| ConfigError::Invalid {
                field: "RINGCAST_LISTEN".into(),
                problem: format!("{v:?} is not an address like 127.0.0.1:7400"),
            })?;
        }
        if let Some(v) = env.get("RINGCAST_NODE_ID") {
            self.node.id = v.clone();
        }
        if let Some(v) = env.get("RINGCAST_API_KEY") {
            self.api.key = Some(v.clone());
        }
        if let Some(v) = env.get("RINGCAST_HMAC_SECRET") {
            self.auth.hmac_secret = Some(v.clone());
        }
        if let Some(v) = env.get("RINGCAST_WEBHOOK_SECRET") {
            self.webhooks.secret = Some(v.clone());
        }
        if let Some(v) = env.get("RINGCAST_ALLOWED_ORIGINS") {
            self.auth.allowed_origins =
                v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        }
        Ok(())
    }

    /// Checks what serde cannot: ranges, names, and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| Err(ConfigError::Invalid { field: field.into(), problem });
        if let Err(e) = NodeId::new(&self.node.id) {
            return invalid("node.id", e.to_string());
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&l.max_frame_bytes) {
            return invalid("limits.max_frame_bytes", "must be between 1024 and 16777216".into());
        }
        if l.max_channels_per_connection == 0 {
            return invalid("limits.max_channels_per_connection", "must be at least 1".into());
        }
        if let Err((field, problem)) = self.hooks.validate() {
            return invalid(field, problem);
        }
        if let Err((field, problem)) = self.webhooks.validate() {
            return invalid(field, problem);
        }
        if self.auth.refresh_notice > Duration::from_secs(3600) {
            return invalid("auth.refresh_notice", "must be at most 1h".into());
        }
        if l.max_patterns_per_connection > 1000 {
            return invalid("limits.max_patterns_per_connection", "must be at most 1000".into());
        }
        if l.command_burst == 0 {
            return invalid("limits.command_burst", "must be at least 1".into());
        }
        if !(1..=1024).contains(&l.max_header_count) {
            return invalid("limits.max_header_count", "must be between 1 and 1024".into());
        }
        if !(8192..=1024 * 1024).contains(&l.max_header_bytes) {
            return invalid("limits.max_header_bytes", "must be between 8192 and 1048576".into());
        }
        if l.socket_send_buffer.is_some_and(|b| !(4096..=16 * 1024 * 1024).contains(&b)) {
            return invalid("limits.socket_send_buffer", "must be between 4096 and 16777216 bytes".into());
        }
        if l.min_write_interval > MAX_WRITE_INTERVAL {
            return invalid("limits.min_write_interval", "must be at most 1s".into());
        }
        if l.busy_write_interval > MAX_WRITE_INTERVAL {
            return invalid("limits.busy_write_interval", "must be at most 1s".into());
        }
        if l.send_queue_messages == 0 || l.send_queue_bytes < l.max_frame_bytes {
            return invalid(
                "limits.send_queue_*",
                "send_queue_messages must be at least 1 and send_queue_bytes at least max_frame_bytes".into(),
            );
        }
        // A channel keeps each subscriber's bounds in 32 bits (the hub's `PackedPolicy`).
        if l.send_queue_messages > MAX_SEND_QUEUE || l.send_queue_bytes > MAX_SEND_QUEUE {
            return invalid(
                "limits.send_queue_*",
                format!("send_queue_messages and send_queue_bytes must be at most {MAX_SEND_QUEUE}"),
            );
        }
        for (name, d) in [
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("limits.write_timeout", l.write_timeout),
            ("heartbeat.ping_interval", self.heartbeat.ping_interval),
            ("heartbeat.pong_timeout", self.heartbeat.pong_timeout),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return invalid(name, "must be between 10ms and 1h".into());
            }
        }
        if self.node.drain_delay > Duration::from_secs(300) || self.node.shutdown_grace > Duration::from_secs(300) {
            return invalid("node.drain_delay / node.shutdown_grace", "must be at most 5m".into());
        }
        if matches!(&self.auth.hmac_secret, Some(s) if s.len() < 16) {
            return invalid("auth.hmac_secret", "must be at least 16 bytes".into());
        }
        if matches!(&self.api.key, Some(k) if k.len() < 8) {
            return invalid("api.key", "must be at least 8 bytes".into());
        }
        if let Some(cl) = &self.cluster {
            if cl.membership.is_empty() {
                return invalid("cluster.membership", "list at least one etcd endpoint".into());
            }
            if let Err(e) = NamespaceName::new(&cl.name) {
                return invalid("cluster.name", e.to_string());
            }
            if cl.lease_ttl < Duration::from_secs(2) || cl.lease_ttl > Duration::from_secs(60) {
                return invalid("cluster.lease_ttl", "must be between 2s and 60s".into());
            }
            if cl.claim_delay > Duration::from_secs(60) {
                return invalid("cluster.claim_delay", "must be at most 60s".into());
            }
            if !(16..=10_000_000).contains(&cl.peer_queue_frames) {
                return invalid("cluster.peer_queue_frames", "must be between 16 and 10000000".into());
            }
            if !(64 * 1024..=16 * 1024 * 1024 * 1024).contains(&cl.peer_queue_bytes) {
                return invalid("cluster.peer_queue_bytes", "must be between 65536 and 17179869184 (16 GiB)".into());
            }
            if cl.keepalive.is_zero() || cl.keepalive * 3 > cl.lease_ttl {
                return invalid("cluster.keepalive", "must be above zero and at most a third of lease_ttl".into());
            }
        }
        for name in self.namespaces.keys() {
            if let Err(e) = NamespaceName::new(name) {
                return invalid(&format!("namespaces.{name}"), e.to_string());
            }
        }
        let registry = self.registry.namespace();
        let all = self
            .namespaces
            .iter()
            .map(|(name, ns)| (format!("namespaces.{name}"), ns))
            .chain(std::iter::once(("registry".to_owned(), &registry)));
        for (name, ns) in all {
            if let Err(e) = ns.validate() {
                return invalid(&format!("{name}.{}", e.field), e.problem);
            }
            if ns.subscribe_hook && self.hooks.subscribe_url.is_none() {
                return invalid(&format!("{name}.subscribe_hook"), "needs hooks.subscribe_url".into());
            }
            if ns.publish_hook && self.hooks.publish_url.is_none() {
                return invalid(&format!("{name}.publish_hook"), "needs hooks.publish_url".into());
            }
            if !ns.webhooks.is_empty() && self.webhooks.url.is_none() {
                return invalid(&format!("{name}.webhooks"), "needs webhooks.url (and webhooks.secret)".into());
            }
            if ns.durable && self.cluster.is_none() {
                return invalid(
                    &format!("{name}.durable"),
                    "needs a cluster: a standalone node has no replica to hold a second copy".into(),
                );
            }
            if ns.send_queue_bytes.is_some_and(|b| b < ns.max_message_bytes + ENVELOPE_ALLOWANCE_BYTES) {
                return invalid(
                    &format!("{name}.send_queue_bytes"),
                    format!(
                        "must be at least max_message_bytes + {ENVELOPE_ALLOWANCE_BYTES} ({}): room for one message",
                        ns.max_message_bytes + ENVELOPE_ALLOWANCE_BYTES
                    ),
                );
            }
            if ns.max_message_bytes + ENVELOPE_ALLOWANCE_BYTES > l.max_frame_bytes {
                return invalid(
                    &format!("{name}.max_message_bytes"),
                    format!(
                        "must be at least {ENVELOPE_ALLOWANCE_BYTES} bytes below limits.max_frame_bytes ({}), \
                         room for the command around the data",
                        l.max_frame_bytes
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::load(Some((text, "test.toml")), &HashMap::new(), &FlagOverrides::default())
    }

    #[test]
    fn the_full_example_in_the_docs_is_valid() {
        let doc = include_str!("../../../docs/configuration.md");
        let after = doc.split("## A full example").nth(1).unwrap_or_default();
        let example = after.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap_or_default();
        assert!(example.contains("[namespaces."), "the example block was not found");
        let c = load(example).unwrap_or_else(|e| panic!("docs/configuration.md example: {e}"));
        assert_eq!(c.namespaces["chat"].backpressure, ringcast_core::BackpressurePolicy::DropOldest);
    }

    #[test]
    fn empty_file_is_valid_and_demo_config_parses() {
        let c = load("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node.listen.port(), 7400);
        assert_eq!(c.auth.leeway, Duration::from_secs(5));
        let d = Config::load(None, &HashMap::new(), &FlagOverrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(d.namespaces.contains_key("chat"));
    }

    #[test]
    fn layers_apply_in_order() {
        let env = HashMap::from([
            ("RINGCAST_LISTEN".to_string(), "127.0.0.1:9000".to_string()),
            ("RINGCAST_NODE_ID".to_string(), "from-env".to_string()),
        ]);
        let flags = FlagOverrides { node_id: Some("from-flag".into()), ..Default::default() };
        let c = Config::load(Some(("[node]\nid = \"from-file\"", "t")), &env, &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node.listen.port(), 9000);
        assert_eq!(c.node.id, "from-flag");
    }

    #[test]
    fn mistakes_name_the_field() {
        let msg = |t: &str| load(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg("[node]\nlisen = \"x\"").contains("unknown field `lisen`"));
        assert!(msg("[limits]\nmax_frame_bytes = 10").contains("limits.max_frame_bytes"));
        assert!(msg("[heartbeat]\nping_interval = \"25\"").contains("no unit"));
        assert!(msg("[namespaces.Bad]").contains("namespaces.Bad"));
        assert!(msg("[namespaces.chat]\nhistory_size = 1000000").contains("namespaces.chat.history_size"));
        assert!(msg("[namespaces.chat]\nbackpressure = \"yolo\"").contains("unknown variant"));
        assert!(msg("[auth]\nhmac_secret = \"short\"").contains("auth.hmac_secret"));
        assert!(msg("[limits]\nsocket_send_buffer = 100").contains("limits.socket_send_buffer"));
        assert!(msg("[limits]\nmin_write_interval = \"2s\"").contains("limits.min_write_interval"));
        assert!(load("[limits]\nmin_write_interval = \"1s\"").is_ok());
        assert!(msg("[limits]\nbusy_write_interval = \"1001ms\"").contains("limits.busy_write_interval"));
        assert!(load("[limits]\nbusy_write_interval = \"0ms\"").is_ok());
        assert!(load("").is_ok_and(|c| c.limits.direct_writes), "on unless switched off");
        assert!(load("[limits]\ndirect_writes = false").is_ok_and(|c| !c.limits.direct_writes));
        assert!(msg("[limits]\ndirect_writes = \"no\"").contains("direct_writes"));
        assert!(msg("[limits]\nsend_queue_messages = 4294967296").contains("at most 4294967295"));
        assert!(msg("[limits]\nsend_queue_bytes = 4294967296").contains("limits.send_queue_*"));
        assert!(load("[limits]\nsend_queue_messages = 4294967295\nsend_queue_bytes = 4294967295").is_ok());
        assert!(msg("[namespaces.s]\ndelta = true").contains("needs keep_latest"));
        assert!(load("[limits]\nsocket_send_buffer = 65536\n[namespaces.s]\nkeep_latest = true\ndelta = true").is_ok());
        let env = HashMap::from([("RINGCAST_LISTEN".to_string(), "nope".to_string())]);
        let e = Config::load(Some(("", "t")), &env, &FlagOverrides::default()).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("RINGCAST_LISTEN"));
    }
}
