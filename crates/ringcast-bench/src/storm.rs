//! The presence storm: many users, each in many presence channels, all dropped at once
//! by a network blip and reconnecting with full-jitter backoff. It counts the presence
//! traffic ringcast produces (join/leave events at the owner, and `join`/`leave` pushes
//! written to clients) against the naive count of a system that tells every member
//! about every membership change.
//!
//! The server must run a config with a `presence = true`, `join_leave = true`
//! namespace (`scripts/bench --presence` starts one, once with the default grace and
//! once with `presence_grace = "0s"`: no debounce), and an HS256 secret to sign the
//! users' tokens with.

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use ringcast_core::backoff::Backoff;
use serde::Serialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// What to run.
#[derive(Debug, Clone)]
pub struct StormSpec {
    pub addr: SocketAddr,
    pub secret: String,
    pub namespace: String,
    pub users: usize,
    pub channels_per_user: usize,
    pub rooms: usize,
    /// How long every connection stays down before the reconnects start.
    pub blip: Duration,
    /// Upper bound of the first reconnect delay (full jitter below it).
    pub backoff_cap: Duration,
    /// How long to keep counting after the last client is back (at least the
    /// namespace's grace, so pending leaves would show).
    pub settle: Duration,
    /// Label for the report (`"grace 30s"`, `"no debounce"`).
    pub label: String,
}

/// The result of one storm.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StormOutcome {
    pub label: String,
    pub users: usize,
    pub channels_per_user: usize,
    pub rooms: usize,
    pub members_per_room: f64,
    /// Subscriptions that left and came back during the blip.
    pub changes: u64,
    /// Naive: every membership change pushed to every other member of its room.
    pub naive_pushes: u64,
    /// Join and leave events the owner produced during the storm (after debouncing).
    pub events: u64,
    /// `join`/`leave` pushes the clients received during the storm.
    pub pushes: u64,
    /// `naive_pushes / max(pushes, 1)`.
    pub reduction: f64,
    /// Seconds from the blip until every user was back in all its channels.
    pub reconnect_secs: f64,
    /// Connects and subscribes refused (rate limits, handshake limits) and retried.
    pub retries: u64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token(secret: &str, user: &str, namespace: &str) -> anyhow::Result<String> {
    let pattern = format!("{namespace}:*");
    let claims = json!({
        "sub": user,
        "exp": now_secs() + 3600,
        "caps": {"subscribe": [pattern], "publish": [pattern], "presence": [pattern]},
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).context("signing key")?;
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).context("sign a token")
}

/// The rooms user `i` is in: `channels_per_user` consecutive rooms, so every room gets
/// the same number of members.
fn rooms_of(spec: &StormSpec, i: usize) -> Vec<String> {
    (0..spec.channels_per_user)
        .map(|k| format!("{}:room-{}", spec.namespace, (i * spec.channels_per_user + k) % spec.rooms))
        .collect()
}

/// Connects user `i`, subscribes it to its rooms, and returns the socket once every
/// reply came back. Counts refusals in `retries` and tries again after a pause.
async fn join(spec: &StormSpec, i: usize, token: &str, retries: &AtomicU64) -> anyhow::Result<Ws> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_join(spec, i, token).await {
            Ok(ws) => return Ok(ws),
            Err(_) if Instant::now() < deadline => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context(format!("user {i} could not join"))),
        }
    }
}

async fn try_join(spec: &StormSpec, i: usize, token: &str) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(spec.addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{}/ws", spec.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let mut cmds = vec![json!({"id": 0, "type": "connect", "token": token})];
    for (k, room) in rooms_of(spec, i).iter().enumerate() {
        cmds.push(json!({"id": k + 1, "type": "subscribe", "channel": room}));
    }
    for c in &cmds {
        ws.send(Message::text(c.to_string())).await?;
    }
    let mut replies = 0;
    while replies < cmds.len() {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.context("reply timeout")?;
        let Some(Ok(Message::Text(t))) = frame else { bail!("connection ended while joining") };
        let v: Value = serde_json::from_str(t.as_str())?;
        if v.get("id").is_some() {
            if v["type"] == "error" {
                bail!("refused: {v}");
            }
            replies += 1;
        }
    }
    Ok(ws)
}

/// Reads a connection until it ends or `stop` fires, counting `join`/`leave` pushes.
async fn count_pushes(mut ws: Ws, pushes: Arc<AtomicU64>, stop: tokio::sync::watch::Receiver<bool>) -> Ws {
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => return ws,
            f = ws.next() => match f {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t.starts_with("{\"type\":\"join\"") || t.starts_with("{\"type\":\"leave\"") {
                        pushes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => return ws,
            }
        }
    }
}

/// `ringcast_presence_events_total` from the node's `/metrics`.
async fn events_metric(addr: SocketAddr) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix("ringcast_presence_events_total ").and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .context("ringcast_presence_events_total not in /metrics")
}

/// Runs one storm (see the module docs).
pub async fn run(spec: StormSpec) -> anyhow::Result<StormOutcome> {
    if spec.rooms == 0 || spec.users == 0 || spec.channels_per_user == 0 || spec.channels_per_user > spec.rooms {
        bail!("need users, rooms and channels per user above zero, and no more channels per user than rooms");
    }
    let tokens: Vec<String> = (0..spec.users)
        .map(|i| token(&spec.secret, &format!("user-{i}"), &spec.namespace))
        .collect::<Result<_, _>>()?;
    let retries = Arc::new(AtomicU64::new(0));
    let spec = Arc::new(spec);

    // Everyone joins (in waves, to stay under the node's handshake limit).
    let mut sockets = Vec::with_capacity(spec.users);
    for chunk in (0..spec.users).collect::<Vec<_>>().chunks(200) {
        let joins = chunk.iter().map(|&i| {
            let (spec, token, retries) = (spec.clone(), tokens[i].clone(), retries.clone());
            tokio::spawn(async move { join(&spec, i, &token, &retries).await })
        });
        for j in futures_util::future::join_all(joins).await {
            sockets.push(j??);
        }
    }
    // Let the initial joins drain, then start counting.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_counter = Arc::new(AtomicU64::new(0));
    let drains: Vec<_> =
        sockets.into_iter().map(|ws| tokio::spawn(count_pushes(ws, drain_counter.clone(), stop_rx.clone()))).collect();
    let mut last = u64::MAX;
    while drain_counter.load(Ordering::Relaxed) != last {
        last = drain_counter.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let _ = stop_tx.send(true);
    let mut sockets = Vec::with_capacity(spec.users);
    for d in drains {
        sockets.push(d.await?);
    }
    let events_before = events_metric(spec.addr).await?;

    // The blip: every connection drops without a close handshake.
    let blip_at = Instant::now();
    drop(sockets);
    tokio::time::sleep(spec.blip).await;

    // Reconnect with full-jitter backoff, then count what arrives.
    let pushes = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let backoff = Backoff { base: spec.backoff_cap, cap: spec.backoff_cap, first: spec.backoff_cap };
    let mut readers = Vec::with_capacity(spec.users);
    let mut rejoined = Vec::with_capacity(spec.users);
    for (i, token) in tokens.iter().enumerate() {
        let delay = backoff.delay(0, seed(i));
        let (spec, token, retries) = (spec.clone(), token.clone(), retries.clone());
        rejoined.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            join(&spec, i, &token, &retries).await
        }));
    }
    for r in rejoined {
        let ws = r.await??;
        readers.push(tokio::spawn(count_pushes(ws, pushes.clone(), stop_rx.clone())));
    }
    let reconnect_secs = blip_at.elapsed().as_secs_f64();
    tokio::time::sleep(spec.settle).await;
    let events = events_metric(spec.addr).await?.saturating_sub(events_before);
    let _ = stop_tx.send(true);
    for r in readers {
        let _ = r.await;
    }

    let members_per_room = (spec.users * spec.channels_per_user) as f64 / spec.rooms as f64;
    let changes = 2 * (spec.users * spec.channels_per_user) as u64;
    let naive_pushes = (changes as f64 * (members_per_room - 1.0)).round() as u64;
    let pushes = pushes.load(Ordering::Relaxed);
    Ok(StormOutcome {
        label: spec.label.clone(),
        users: spec.users,
        channels_per_user: spec.channels_per_user,
        rooms: spec.rooms,
        members_per_room,
        changes,
        naive_pushes,
        events,
        pushes,
        reduction: naive_pushes as f64 / pushes.max(1) as f64,
        reconnect_secs,
        retries: retries.load(Ordering::Relaxed),
    })
}

/// A deterministic per-user seed for the jitter (splitmix64).
fn seed(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The Markdown table of storm outcomes.
#[must_use]
pub fn markdown(outcomes: &[StormOutcome]) -> String {
    let mut out = String::from(
        "| run | users × channels | members/room | changes | naive pushes | owner events | pushes received | reduction | all back after |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        out.push_str(&format!(
            "| {} | {} × {} | {:.0} | {} | {} | {} | {} | {} | {:.1} s |\n",
            o.label,
            o.users,
            o.channels_per_user,
            o.members_per_room,
            o.changes,
            o.naive_pushes,
            o.events,
            o.pushes,
            if o.pushes == 0 { "all absorbed".to_owned() } else { format!("{:.0}×", o.reduction) },
            o.reconnect_secs
        ));
    }
    out
}
