//! # ringcast-client
//!
//! A client for ringcast's WebSocket protocol (`proto/client.md`) that survives node
//! loss:
//! - [`Subscriber`] holds subscriptions on a list of nodes. When its connection ends (a
//!   node is killed or drains, a network blip), it reconnects with full-jitter backoff
//!   ([`ringcast_core::backoff`]), moving to the next node in the list, and subscribes
//!   again with `since` = the last `(epoch, offset)` it delivered per channel. Replayed
//!   messages it already delivered are dropped by `(epoch, offset)`, so the application
//!   sees each message once, in order, and an explicit [`Event`] for anything it missed
//!   (`recovered: false`, a `gap`, a restarted stream).
//! - [`Publisher`] publishes with an idempotency key and retries the same key across
//!   reconnects and refusals that may succeed later (`unavailable`,
//!   `insufficient_replicas`, `coordination_unavailable`) until a deadline, so a retry
//!   after an unknown outcome gets the original `ack`.
//!
//! Both speak JSON text frames over plain `ws://` URLs.
//!
//! Tokens expire. Give the client a [`TokenSource`] ([`Config::with_token_source`]): when
//! the server pushes `expiring` it fetches a new token and sends `refresh`, so the
//! session and its subscriptions carry on ([`Event::Refreshed`]); and when a session was
//! closed for an expired token (`4002`), or a `connect` is refused with
//! `token_expired`, it fetches a new token before it reconnects.
//!
//! Behind a load balancer, give the one LB URL as the only node and set
//! [`Config::user`]: every connection then carries `?user=<id>`, which the LB hashes so
//! a reconnect lands on the same node while it is up (`proto/client.md`, "Behind a load
//! balancer"). Reconnects still back off and resume with `since`; [`Event::Connected`]
//! tells which node the LB picked.

use futures_util::{SinkExt, StreamExt};
use ringcast_core::backoff::Backoff;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connection attempt (TCP, upgrade and `connect`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command waits for its reply before the connection counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Command id of the `refresh` a [`Subscriber`] sends (subscribe ids count from 1).
const REFRESH_ID: u64 = 1 << 50;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where new tokens come from: typically a call to the application's backend, which
/// signs one for the same user. An `Err` is reported ([`Event::RefreshFailed`]) and
/// the session goes on with its current token until the server closes it.
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    pub fn new<F, Fut>(fetch: F) -> TokenSource
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        TokenSource(Arc::new(move || Box::pin(fetch())))
    }

    async fn fetch(&self) -> Result<String, String> {
        (self.0)().await
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource(..)")
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket URLs of the nodes to try, in order (`ws://host:port/ws`).
    pub nodes: Vec<String>,
    /// A token for `connect`; `None` connects anonymously. Replaced by each token the
    /// [`Config::token_source`] gives.
    pub token: Option<String>,
    /// Fetches new tokens before the current one expires (see the crate docs).
    pub token_source: Option<TokenSource>,
    /// Sent as the query parameter [`USER_PARAM`] on every WebSocket URL, for a load
    /// balancer that routes by user (the server ignores it: identity comes from the
    /// token). Use the token's `sub`, or any stable id for anonymous users.
    pub user: Option<String>,
    pub backoff: Backoff,
}

/// The query parameter that carries [`Config::user`] (`/ws?user=<id>`).
pub const USER_PARAM: &str = "user";

impl Config {
    /// A config for `nodes` with no token, no user and the default backoff.
    #[must_use]
    pub fn new(nodes: Vec<String>) -> Config {
        Config { nodes, token: None, token_source: None, user: None, backoff: Backoff::default() }
    }

    /// The same config, connecting with `token` and refreshing it from `source`.
    #[must_use]
    pub fn with_token_source(mut self, token: impl Into<String>, source: TokenSource) -> Config {
        self.token = Some(token.into());
        self.token_source = Some(source);
        self
    }

    /// The same config, sending `user` as `?user=` on every connection.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<String>) -> Config {
        self.user = Some(user.into());
        self
    }
}

/// `url` with `user=<id>` appended to its query (percent-encoded), or `url` unchanged.
fn url_for(url: &str, user: Option<&str>) -> String {
    let Some(user) = user else { return url.to_owned() };
    let mut out = String::with_capacity(url.len() + user.len() + 6);
    // A fragment is not sent; the parameter goes before it.
    let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
    out.push_str(base);
    out.push(if base.contains('?') { '&' } else { '?' });
    out.push_str(USER_PARAM);
    out.push('=');
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Why the client gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node to connect to")]
    NoNodes,
    /// The server refused a command for good (a code that retrying cannot fix).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("gave up after {0:?}: {1}")]
    Deadline(Duration, String),
}

/// A stream position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The epoch, as the decimal string the protocol uses.
    pub epoch: String,
    pub offset: u64,
}

/// What a [`Subscriber`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (or reconnected) to `node` (the URL dialed); `node_id` is the node the
    /// server reports in its `connected` reply (behind a load balancer, the one it picked).
    Connected { node: String, node_id: String },
    /// A subscription was (re-)established. `recovered`: `None` for a fresh subscribe,
    /// `Some(true)` when everything after the last position is replayed, `Some(false)`
    /// (with `reason`) when it is not: refetch the channel's state.
    Subscribed { channel: String, at: Position, recovered: Option<bool>, reason: Option<String> },
    /// One message, each `(epoch, offset)` at most once, in order.
    Message { channel: String, at: Position, data: Value },
    /// Offsets `from..=to` will not be delivered (`reason` from the `gap` push).
    Gap { channel: String, epoch: String, from: u64, to: u64, reason: String },
    /// The channel's stream restarted in a new epoch (`resubscribed`): what came before
    /// is not continued.
    Restarted { channel: String, at: Position },
    /// The connection ended; the subscriber reconnects on the next call.
    Disconnected { node: String, reason: String },
    /// The session took a new token (after the server's `expiring` push); it now
    /// expires at `expires_at` (UNIX seconds).
    Refreshed { expires_at: Option<u64> },
    /// A new token could not be fetched, or the server refused it: the session keeps
    /// its current token and is closed when that expires (the client then fetches one
    /// again before reconnecting).
    RefreshFailed { reason: String },
}

/// Opens a connection to `url` and sends `connect` (with `since` for the user's
/// registry channel, `#user:{sub}`, which the server subscribes a token's connection
/// to); returns the socket and the node id the server reports.
async fn open(url: &str, token: Option<&str>, since: Option<&Position>) -> Result<(Ws, String), String> {
    let attempt = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
        let mut cmd = json!({"id": 0, "type": "connect"});
        if let Some(t) = token {
            cmd["token"] = json!(t);
        }
        if let Some(p) = since {
            cmd["since"] = json!({"epoch": p.epoch, "offset": p.offset});
        }
        ws.send(Message::text(cmd.to_string())).await.map_err(|e| e.to_string())?;
        loop {
            let v = read_json(&mut ws).await?;
            if v["id"] == 0 {
                return match v["type"].as_str() {
                    Some("connected") => Ok((ws, v["node"].as_str().unwrap_or_default().to_owned())),
                    _ => Err(format!("connect refused: {v}")),
                };
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt).await.map_err(|_| "connect timed out".to_owned())?
}

/// The next text frame as JSON; an error when the connection ends.
async fn read_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("bad frame: {e}"));
            }
            Some(Ok(Message::Close(c))) => {
                return Err(c.map_or("closed".to_owned(), |c| format!("closed {} {}", u16::from(c.code), c.reason)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended".to_owned()),
        }
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // Without OS randomness the delay is the window's start: still bounded.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Rotates through `nodes` with backoff between attempts.
#[derive(Debug)]
struct Dialer {
    config: Config,
    next: usize,
    attempt: u32,
    /// The token expired: fetch a new one before the next attempt.
    stale_token: bool,
}

impl Dialer {
    fn new(config: Config) -> Dialer {
        Dialer { config, next: 0, attempt: 0, stale_token: false }
    }

    /// Notes why a connection ended: a `4002` (token expired) close or refusal means
    /// the next attempt needs a new token.
    fn ended(&mut self, reason: &str) {
        if reason.starts_with("closed 4002") || reason.contains("token_expired") {
            self.stale_token = true;
        }
    }

    /// A new token from the source, kept for later connections.
    async fn fresh_token(&mut self) -> Result<String, String> {
        let source = self.config.token_source.clone().ok_or("no token source")?;
        let token = source.fetch().await?;
        self.config.token = Some(token.clone());
        self.stale_token = false;
        Ok(token)
    }
}

impl Dialer {
    /// Connects to the next node that answers, waiting the backoff before each retry
    /// (`first`: this is the first connection, no wait). Returns the socket, the URL
    /// and the node id the server reported.
    async fn dial(&mut self, first: bool, since: Option<&Position>) -> Result<(Ws, String, String), ClientError> {
        if self.config.nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        loop {
            if !first || self.attempt > 0 {
                let delay = self.config.backoff.delay(self.attempt.saturating_sub(u32::from(first)), random_u64());
                tokio::time::sleep(delay).await;
            }
            if self.stale_token && self.config.token_source.is_some() {
                if let Err(e) = self.fresh_token().await {
                    debug!(error = %e, "could not fetch a new token");
                    self.attempt = self.attempt.saturating_add(1);
                    continue;
                }
            }
            let node = self.config.nodes[self.next % self.config.nodes.len()].clone();
            self.next = self.next.wrapping_add(1);
            let url = url_for(&node, self.config.user.as_deref());
            match open(&url, self.config.token.as_deref(), since).await {
                Ok((ws, node_id)) => {
                    self.attempt = 0;
                    return Ok((ws, node, node_id));
                }
                Err(e) => {
                    debug!(%node, error = %e, "connect failed");
                    self.ended(&e);
                    self.attempt = self.attempt.saturating_add(1);
                }
            }
        }
    }
}

/// Reconnecting subscriptions (see the crate docs).
#[derive(Debug)]
pub struct Subscriber {
    dialer: Dialer,
    ws: Option<(Ws, String)>,
    /// Channels with the last position delivered (None before the first message).
    channels: BTreeMap<String, Option<Position>>,
    /// The last position delivered on the user's registry channel (`#user:{sub}`, direct
    /// messages), which the server subscribes for us and `connect` resumes.
    registry: Option<Position>,
    queued: VecDeque<Event>,
    connected_once: bool,
    /// The server pushed `expiring`: refresh before reading on.
    refresh_due: bool,
}

impl Subscriber {
    /// Subscriptions to `channels`, established on the first [`Subscriber::next`].
    #[must_use]
    pub fn new(config: Config, channels: &[&str]) -> Subscriber {
        Subscriber {
            dialer: Dialer::new(config),
            ws: None,
            channels: channels.iter().map(|c| ((*c).to_owned(), None)).collect(),
            registry: None,
            queued: VecDeque::new(),
            connected_once: false,
            refresh_due: false,
        }
    }

    /// Starts `channel` after `position` (a resume across program runs): the first
    /// subscribe sends it as `since`. Ignored for a channel not given to `new`.
    pub fn resume_from(&mut self, channel: &str, position: Position) {
        if let Some(p) = self.channels.get_mut(channel) {
            *p = Some(position);
        }
    }

    /// The last position delivered on `channel`.
    #[must_use]
    pub fn position(&self, channel: &str) -> Option<&Position> {
        self.channels.get(channel).and_then(Option::as_ref)
    }

    /// The next event, reconnecting as needed. Fails only for an empty node list or a
    /// subscribe the server refuses for good.
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Ok(e);
            }
            if std::mem::take(&mut self.refresh_due) {
                if let Some(e) = self.refresh().await {
                    return Ok(e);
                }
            }
            let Some((ws, node)) = self.ws.as_mut() else {
                self.connect().await?;
                continue;
            };
            match read_json(ws).await {
                Ok(v) => {
                    if let Some(e) = self.on_frame(&v)? {
                        return Ok(e);
                    }
                }
                Err(reason) => {
                    let node = node.clone();
                    self.ws = None;
                    self.dialer.ended(&reason);
                    return Ok(Event::Disconnected { node, reason });
                }
            }
        }
    }

    /// Connects to some node and subscribes to every channel from its last position.
    async fn connect(&mut self) -> Result<(), ClientError> {
        loop {
            let (mut ws, node, node_id) = self.dialer.dial(!self.connected_once, self.registry.as_ref()).await?;
            self.connected_once = true;
            let mut events = vec![Event::Connected { node: node.clone(), node_id }];
            let mut ok = true;
            for (i, (channel, pos)) in self.channels.iter().enumerate() {
                let id = i as u64 + 1;
                let mut cmd = json!({"id": id, "type": "subscribe", "channel": channel});
                if let Some(p) = pos {
                    cmd["since"] = json!({"epoch": p.epoch, "offset": p.offset});
                }
                if ws.send(Message::text(cmd.to_string())).await.is_err() {
                    ok = false;
                    break;
                }
            }
            // Replies come in order, possibly after replayed messages of earlier ones;
            // keep frames in order and let `on_frame` handle all of them.
            let mut pending: Vec<Value> = Vec::new();
            let mut replies = 0;
            let deadline = Instant::now() + REPLY_TIMEOUT;
            while ok && replies < self.channels.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, read_json(&mut ws)).await {
                    Ok(Ok(v)) => {
                        if v.get("id").is_some() {
                            replies += 1;
                            if v["type"] == "error" {
                                let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
                                if !matches!(code.as_str(), "unavailable" | "coordination_unavailable" | "rate_limited")
                                {
                                    return Err(ClientError::Refused {
                                        code,
                                        message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
                                    });
                                }
                                ok = false;
                                break;
                            }
                        }
                        pending.push(v);
                    }
                    _ => ok = false,
                }
            }
            if !ok {
                events.push(Event::Disconnected { node: node.clone(), reason: "subscribe failed".into() });
                self.queued.extend(events);
                continue;
            }
            self.ws = Some((ws, node));
            self.queued.extend(events);
            for v in pending {
                if let Some(e) = self.on_frame(&v)? {
                    self.queued.push_back(e);
                }
            }
            return Ok(());
        }
    }

    /// The token expires soon: fetch a new one and send `refresh` (its reply becomes an
    /// event in [`Subscriber::on_frame`]). Without a token source, nothing is done.
    async fn refresh(&mut self) -> Option<Event> {
        self.dialer.config.token_source.as_ref()?;
        let token = match self.dialer.fresh_token().await {
            Ok(t) => t,
            Err(reason) => return Some(Event::RefreshFailed { reason }),
        };
        let (ws, _) = self.ws.as_mut()?;
        let cmd = json!({"id": REFRESH_ID, "type": "refresh", "token": token});
        // A failed send shows as the connection ending on the next read.
        let _ = ws.send(Message::text(cmd.to_string())).await;
        None
    }

    /// Records the last position delivered on `channel`.
    fn note(&mut self, channel: &str, at: Position) {
        if channel.starts_with('#') {
            self.registry = Some(at);
        } else {
            self.channels.insert(channel.to_owned(), Some(at));
        }
    }

    fn last(&self, channel: &str) -> Option<&Position> {
        if channel.starts_with('#') {
            self.registry.as_ref()
        } else {
            self.channels.get(channel).and_then(Option::as_ref)
        }
    }

    /// Turns a frame into an event, dropping duplicates.
    fn on_frame(&mut self, v: &Value) -> Result<Option<Event>, ClientError> {
        let channel = v["channel"].as_str().unwrap_or("").to_owned();
        let at = || Position {
            epoch: v["epoch"].as_str().unwrap_or("").to_owned(),
            offset: v["offset"].as_u64().unwrap_or(0),
        };
        Ok(match v["type"].as_str() {
            Some("subscribed") => {
                let recovered = v["recovered"].as_bool();
                let at = at();
                if recovered != Some(true) {
                    // Fresh or not recovered: continue from the reply's position.
                    self.note(&channel, at.clone());
                }
                Some(Event::Subscribed { channel, at, recovered, reason: v["reason"].as_str().map(str::to_owned) })
            }
            Some("message") => {
                let at = at();
                if self.last(&channel).is_some_and(|l| l.epoch == at.epoch && l.offset >= at.offset) {
                    return Ok(None); // a replay of something already delivered
                }
                self.note(&channel, at.clone());
                Some(Event::Message { channel, at, data: v["data"].clone() })
            }
            Some("gap") => {
                let (epoch, to) = (v["epoch"].as_str().unwrap_or("").to_owned(), v["to"].as_u64().unwrap_or(0));
                self.note(&channel, Position { epoch: epoch.clone(), offset: to });
                Some(Event::Gap {
                    channel,
                    epoch,
                    from: v["from"].as_u64().unwrap_or(0),
                    to,
                    reason: v["reason"].as_str().unwrap_or("").to_owned(),
                })
            }
            Some("resubscribed") => {
                let at = at();
                self.note(&channel, at.clone());
                Some(Event::Restarted { channel, at })
            }
            Some("expiring") => {
                self.refresh_due = true;
                None
            }
            Some("refreshed") => Some(Event::Refreshed { expires_at: v["expires_at"].as_u64() }),
            Some("error") if v["id"] == REFRESH_ID => {
                Some(Event::RefreshFailed { reason: v["error"]["message"].as_str().unwrap_or("refused").to_owned() })
            }
            _ => None,
        })
    }
}

/// An acknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub at: Position,
    /// Answered from the idempotency window (an earlier attempt was sequenced).
    pub duplicate: bool,
}

/// Publishes with retries across reconnects (see the crate docs).
#[derive(Debug)]
pub struct Publisher {
    dialer: Dialer,
    ws: Option<Ws>,
    next_id: u64,
}

impl Publisher {
    #[must_use]
    pub fn new(config: Config) -> Publisher {
        Publisher { dialer: Dialer::new(config), ws: None, next_id: 1 }
    }

    /// Publishes `data` on `channel` with `key`, retrying the same key until acked or
    /// `within` passes. Refusals that retrying cannot fix fail at once.
    pub async fn publish(
        &mut self,
        channel: &str,
        data: &Value,
        key: &str,
        within: Duration,
    ) -> Result<Ack, ClientError> {
        let deadline = Instant::now() + within;
        let mut attempt: u32 = 0;
        let mut last = String::from("not tried");
        while Instant::now() < deadline {
            if attempt > 0 {
                let delay = self.dialer.config.backoff.delay(attempt, random_u64()).min(Duration::from_secs(1));
                tokio::time::sleep(delay).await;
            }
            attempt = attempt.saturating_add(1);
            if self.ws.is_none() {
                match tokio::time::timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    self.dialer.dial(true, None),
                )
                .await
                {
                    Ok(Ok((ws, _, _))) => self.ws = Some(ws),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => break,
                }
            }
            let Some(ws) = self.ws.as_mut() else { continue };
            let id = self.next_id;
            self.next_id += 1;
            let cmd = json!({"id": id, "type": "publish", "channel": channel, "data": data, "idempotency_key": key});
            let reply = async {
                ws.send(Message::text(cmd.to_string())).await.map_err(|e| e.to_string())?;
                loop {
                    let v = read_json(ws).await?;
                    if v["id"] == id {
                        return Ok::<Value, String>(v);
                    }
                }
            };
            match tokio::time::timeout(REPLY_TIMEOUT, reply).await {
                Ok(Ok(v)) if v["type"] == "ack" => {
                    return Ok(Ack {
                        at: Position {
                            epoch: v["epoch"].as_str().unwrap_or("").to_owned(),
                            offset: v["offset"].as_u64().unwrap_or(0),
                        },
                        duplicate: v["duplicate"].as_bool().unwrap_or(false),
                    });
                }
                Ok(Ok(v)) => {
                    let code = v["error"]["code"].as_str().unwrap_or("").to_owned();
                    let message = v["error"]["message"].as_str().unwrap_or("").to_owned();
                    if !matches!(
                        code.as_str(),
                        "unavailable" | "insufficient_replicas" | "coordination_unavailable" | "rate_limited"
                    ) {
                        return Err(ClientError::Refused { code, message });
                    }
                    last = format!("{code}: {message}");
                }
                Ok(Err(e)) => {
                    self.dialer.ended(&e);
                    last = e;
                    self.ws = None;
                }
                Err(_) => {
                    last = "no reply".into();
                    self.ws = None;
                }
            }
        }
        Err(ClientError::Deadline(within, last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_goes_into_the_query_percent_encoded() {
        assert_eq!(url_for("ws://lb:7400/ws", None), "ws://lb:7400/ws");
        assert_eq!(url_for("ws://lb:7400/ws", Some("alice")), "ws://lb:7400/ws?user=alice");
        assert_eq!(url_for("ws://lb/ws?x=1", Some("a b&c=d/é")), "ws://lb/ws?x=1&user=a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(url_for("ws://lb/ws#f", Some("u-1.2_3~")), "ws://lb/ws?user=u-1.2_3~#f");
        assert_eq!(Config::new(vec![]).with_user("bob").user.as_deref(), Some("bob"));
    }
}
