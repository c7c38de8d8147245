//! Load: publishers and subscribers over real WebSockets, recording every observation.
//!
//! - A **publisher** keeps one connection and publishes one message at a time with a
//!   unique idempotency key (`p{n}-{seq}`, carried in `data.k`), waiting up to
//!   [`ACK_TIMEOUT`] for the `ack`. A timeout, a lost connection or `unavailable` is
//!   indeterminate: it reconnects to another node and retries with the same key, at most
//!   [`RETRIES`] times. The operation ends `ok` (acked), `fail` (every attempt definitely
//!   refused) or `info` (some attempt was indeterminate and none was acked).
//! - A **subscriber** keeps one connection subscribed to every channel and records each
//!   `subscribed` reply, `message` and `gap`. It sends a `ping` every second; silence
//!   for [`SILENCE_TIMEOUT`] (a paused or partitioned node), a close or an error ends the
//!   connection, and it reconnects to another node after a full-jitter backoff and
//!   resubscribes with `since` = the last position it saw per channel, recording the
//!   time from the disconnect to each `subscribed` reply.

use crate::history::{Event, Outcome, Pos, Recorder};
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a publisher waits for its `ack` before the attempt is indeterminate.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Retries after the first attempt, always with the same idempotency key.
pub const RETRIES: u32 = 3;
/// How long a subscriber tolerates hearing nothing (it pings every second).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect and handshake timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Full-jitter backoff: base and cap.
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 2000;
/// How long a subscriber waits before retrying a refused `subscribe`.
const SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A small xorshift generator: the harness needs cheap, seedable choices, not crypto.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// What to load the cluster with.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub publishers: usize,
    pub subscribers: usize,
    pub channels: Vec<String>,
    /// The hot channel, also in `channels`, picked by publishers a quarter of the time.
    pub hot: String,
    /// Pause between a publisher's operations.
    pub interval: Duration,
    pub seed: u64,
}

/// Every node's id and WebSocket URL (fixed across restarts).
pub type Targets = Arc<Vec<(String, String)>>;

async fn open(url: &str) -> Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .context("connect timed out")??;
    send(&mut ws, &json!({"type": "connect", "id": 1})).await?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let v = next_json(&mut ws, deadline).await?;
        match v["type"].as_str() {
            Some("connected") => return Ok(ws),
            Some("error") => bail!("connect refused: {v}"),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, v: &Value) -> Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// The next JSON text frame before `deadline`; a close or an error is an error.
async fn next_json(ws: &mut Ws, deadline: Instant) -> Result<Value> {
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.context("timed out")?;
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(c))) => bail!("closed: {}", c.map_or(1005, |c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

fn pos_of(v: &Value) -> Option<Pos> {
    Some(Pos { epoch: v["epoch"].as_str()?.to_owned(), offset: v["offset"].as_u64()? })
}

/// Runs a publisher until `stop` turns true (the current operation completes first).
pub async fn publisher(n: usize, cfg: LoadConfig, targets: Targets, rec: Recorder, stop: watch::Receiver<bool>) {
    let name = format!("p{n}");
    let mut rng = Rng::new(cfg.seed.wrapping_add(1000 + n as u64));
    let mut conn: Option<(Ws, usize)> = None;
    let mut seq = 0u64;
    let mut req_id = 10u64;
    let mut last_node = n % targets.len();
    while !*stop.borrow() {
        seq += 1;
        let key = format!("{name}-{seq}");
        let channel =
            if rng.below(4) == 0 { cfg.hot.clone() } else { cfg.channels[rng.below(cfg.channels.len())].clone() };
        let mut indeterminate = false;
        let mut last_error = None;
        let mut result = None;
        let mut invoked = 0;
        let mut attempts = 0;
        for attempt in 1..=RETRIES + 1 {
            attempts = attempt;
            if conn.is_none() {
                // A fresh connection goes to another node than the one that failed.
                let mut i = rng.below(targets.len());
                if i == last_node && targets.len() > 1 {
                    i = (i + 1) % targets.len();
                }
                last_node = i;
                match open(&targets[i].1).await {
                    Ok(ws) => conn = Some((ws, i)),
                    Err(e) => {
                        last_error = Some(format!("connect {}: {e}", targets[i].0));
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                        continue;
                    }
                }
            }
            let Some((ws, i)) = conn.as_mut() else { continue };
            req_id += 1;
            invoked = rec.now();
            rec.record(&Event::PubInvoke {
                t: invoked,
                publisher: name.clone(),
                key: key.clone(),
                channel: channel.clone(),
                attempt,
                node: targets[*i].0.clone(),
            });
            let cmd = json!({"type": "publish", "id": req_id, "channel": channel, "data": {"k": key},
                             "idempotency_key": key});
            let reply = async {
                send(ws, &cmd).await?;
                let deadline = Instant::now() + ACK_TIMEOUT;
                loop {
                    let v = next_json(ws, deadline).await?;
                    if v["id"].as_u64() == Some(req_id) {
                        return anyhow::Ok(v);
                    }
                }
            }
            .await;
            match reply {
                Ok(v) if v["type"] == "ack" => {
                    result = Some((Outcome::Ok, pos_of(&v), v["duplicate"].as_bool().unwrap_or(false)));
                    break;
                }
                Ok(v) => {
                    let code = v["error"]["code"].as_str().unwrap_or("?").to_owned();
                    last_error = Some(code.clone());
                    match code.as_str() {
                        "unavailable" => {
                            indeterminate = true;
                            conn = None;
                        }
                        "rate_limited" => {}
                        _ => {
                            result = Some((Outcome::Fail, None, false));
                            break;
                        }
                    }
                }
                Err(e) => {
                    indeterminate = true;
                    last_error = Some(e.to_string());
                    conn = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let (outcome, pos, duplicate) = match result {
            Some((Outcome::Fail, ..)) if indeterminate => (Outcome::Info, None, false),
            Some(r) => r,
            None if indeterminate => (Outcome::Info, None, false),
            None => (Outcome::Fail, None, false),
        };
        rec.record(&Event::PubComplete {
            t: rec.now(),
            publisher: name.clone(),
            key,
            channel,
            result: outcome,
            invoked,
            attempts,
            pos,
            duplicate,
            error: if outcome == Outcome::Ok { None } else { last_error },
        });
        tokio::time::sleep(cfg.interval).await;
    }
}

/// A subscriber's per-channel state.
#[derive(Debug, Default)]
struct Channel {
    pos: Option<Pos>,
    subscribed: bool,
    retry_at: Option<Instant>,
}

/// Runs a subscriber until `stop` turns true.
pub async fn subscriber(n: usize, cfg: LoadConfig, targets: Targets, rec: Recorder, stop: watch::Receiver<bool>) {
    let name = format!("s{n}");
    let mut rng = Rng::new(cfg.seed.wrapping_add(5000 + n as u64));
    let mut chans: HashMap<String, Channel> = cfg.channels.iter().map(|c| (c.clone(), Channel::default())).collect();
    let mut node = n % targets.len();
    let mut failures = 0u32;
    let mut disconnected_at: Option<u64> = None;
    while !*stop.borrow() {
        if failures > 0 {
            let cap = BACKOFF_CAP_MS.min(BACKOFF_BASE_MS << failures.min(10));
            tokio::time::sleep(Duration::from_millis(rng.next() % (cap + 1))).await;
            node = (node + 1 + rng.below(targets.len().max(2) - 1)) % targets.len();
        }
        let (id, url) = &targets[node];
        let mut ws = match open(url).await {
            Ok(ws) => ws,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        for c in chans.values_mut() {
            c.subscribed = false;
            c.retry_at = Some(Instant::now());
        }
        let why = session(&name, id, &mut ws, &mut chans, &rec, &mut disconnected_at, stop.clone()).await;
        if *stop.borrow() {
            let _ = ws.close(None).await;
            break;
        }
        rec.record(&Event::Disconnect { t: rec.now(), sub: name.clone(), node: id.clone(), why });
        disconnected_at.get_or_insert(rec.now());
        failures = 1;
    }
}

/// One connection's life; returns why it ended.
async fn session(
    name: &str,
    node: &str,
    ws: &mut Ws,
    chans: &mut HashMap<String, Channel>,
    rec: &Recorder,
    disconnected_at: &mut Option<u64>,
    mut stop: watch::Receiver<bool>,
) -> String {
    let mut pending: HashMap<u64, (String, Option<Pos>)> = HashMap::new();
    let mut next_id = 100u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return "stopped".into(),
            _ = tick.tick() => {
                if heard.elapsed() > SILENCE_TIMEOUT {
                    return format!("silent for {SILENCE_TIMEOUT:?}");
                }
                next_id += 1;
                if send(ws, &json!({"type": "ping", "id": next_id})).await.is_err() {
                    return "send failed".into();
                }
                let now = Instant::now();
                for (channel, c) in chans.iter_mut() {
                    if c.subscribed || c.retry_at.is_none_or(|r| r > now) {
                        continue;
                    }
                    next_id += 1;
                    let mut cmd = json!({"type": "subscribe", "id": next_id, "channel": channel});
                    if let Some(p) = &c.pos {
                        cmd["since"] = json!({"epoch": p.epoch, "offset": p.offset});
                    }
                    if send(ws, &cmd).await.is_err() {
                        return "send failed".into();
                    }
                    c.retry_at = None;
                    pending.insert(next_id, (channel.clone(), c.pos.clone()));
                }
            }
            m = ws.next() => {
                let v: Value = match m {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(e) => return format!("bad frame: {e}"),
                    },
                    Some(Ok(Message::Close(c))) => return format!("closed {}", c.map_or(1005, |c| u16::from(c.code))),
                    Some(Ok(_)) => { heard = Instant::now(); continue }
                    Some(Err(e)) => return format!("error: {e}"),
                    None => return "ended".into(),
                };
                heard = Instant::now();
                handle(name, node, &v, chans, &mut pending, rec, disconnected_at);
            }
        }
    }
}

fn handle(
    name: &str,
    node: &str,
    v: &Value,
    chans: &mut HashMap<String, Channel>,
    pending: &mut HashMap<u64, (String, Option<Pos>)>,
    rec: &Recorder,
    disconnected_at: &mut Option<u64>,
) {
    let t = rec.now();
    match v["type"].as_str() {
        Some("subscribed") => {
            let Some((channel, since)) = v["id"].as_u64().and_then(|id| pending.remove(&id)) else { return };
            let Some(pos) = pos_of(v) else { return };
            let recovered = since.as_ref().and_then(|_| v["recovered"].as_bool());
            let Some(c) = chans.get_mut(&channel) else { return };
            c.subscribed = true;
            if recovered != Some(true) {
                c.pos = Some(pos.clone());
            }
            rec.record(&Event::Subscribed {
                t,
                sub: name.to_owned(),
                channel,
                node: node.to_owned(),
                resume_ms: disconnected_at.filter(|_| since.is_some()).map(|d| t.saturating_sub(d)),
                since,
                recovered,
                reason: v["reason"].as_str().map(str::to_owned),
                pos,
            });
            if chans.values().all(|c| c.subscribed) {
                *disconnected_at = None;
            }
        }
        Some("error") => {
            if let Some((channel, _)) = v["id"].as_u64().and_then(|id| pending.remove(&id)) {
                if let Some(c) = chans.get_mut(&channel) {
                    c.retry_at = Some(Instant::now() + SUBSCRIBE_RETRY);
                }
            }
        }
        Some("resubscribed") => {
            // The channel's stream restarted in a new epoch (`recovered: false`): recorded
            // like a `subscribed` reply that did not recover, from the position we had.
            let (Some(channel), Some(pos)) = (v["channel"].as_str(), pos_of(v)) else { return };
            let Some(c) = chans.get_mut(channel) else { return };
            let since = c.pos.replace(pos.clone());
            rec.record(&Event::Subscribed {
                t,
                sub: name.to_owned(),
                channel: channel.to_owned(),
                node: node.to_owned(),
                resume_ms: None,
                since,
                recovered: v["recovered"].as_bool(),
                reason: v["reason"].as_str().map(str::to_owned),
                pos,
            });
        }
        Some("message") => {
            let (Some(channel), Some(pos)) = (v["channel"].as_str(), pos_of(v)) else { return };
            if let Some(c) = chans.get_mut(channel) {
                c.pos = Some(pos.clone());
            }
            rec.record(&Event::Deliver {
                t,
                sub: name.to_owned(),
                channel: channel.to_owned(),
                node: node.to_owned(),
                pos,
                payload: v["data"]["k"].as_str().map(str::to_owned),
            });
        }
        Some("gap") => {
            let (Some(channel), Some(epoch), Some(from), Some(to)) =
                (v["channel"].as_str(), v["epoch"].as_str(), v["from"].as_u64(), v["to"].as_u64())
            else {
                return;
            };
            if let Some(c) = chans.get_mut(channel) {
                if c.pos.as_ref().is_some_and(|p| p.epoch == epoch && p.offset < to) {
                    c.pos = Some(Pos { epoch: epoch.to_owned(), offset: to });
                }
            }
            rec.record(&Event::Gap {
                t,
                sub: name.to_owned(),
                channel: channel.to_owned(),
                node: node.to_owned(),
                epoch: epoch.to_owned(),
                from,
                to,
                reason: v["reason"].as_str().unwrap_or("?").to_owned(),
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::read;
    use serde_json::json;

    #[test]
    fn a_restart_push_is_recorded_as_a_subscribe_that_did_not_recover() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("ringcast-chaos-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("history.jsonl");
        let rec = Recorder::create(&path)?;
        rec.record(&Event::Meta {
            scenario: "test".into(),
            nodes: 3,
            durable_namespaces: vec!["durable".into()],
            durable_enforced: true,
            fault_grace_ms: 1000,
        });
        let c = "durable:c1";
        let mut chans: HashMap<String, Channel> = HashMap::from([(c.to_owned(), Channel::default())]);
        let mut pending = HashMap::from([(1, (c.to_owned(), None))]);
        let mut disconnected = None;
        for v in [
            json!({"type": "subscribed", "id": 1, "channel": c, "epoch": "7", "offset": 0}),
            json!({"type": "message", "channel": c, "epoch": "7", "offset": 1, "data": {"k": "p1-1"}}),
            json!({"type": "resubscribed", "channel": c, "epoch": "8", "offset": 5, "recovered": false,
                   "reason": "epoch_changed", "oldest": 6, "newest": 5}),
            json!({"type": "message", "channel": c, "epoch": "8", "offset": 6, "data": {"k": "p1-2"}}),
        ] {
            handle("s1", "node-1", &v, &mut chans, &mut pending, &rec, &mut disconnected);
        }
        rec.flush();
        let events = read(&path)?;
        std::fs::remove_dir_all(&dir)?;
        match &events[3] {
            Event::Subscribed { since: Some(since), recovered: Some(false), reason: Some(reason), pos, .. } => {
                assert_eq!((since.epoch.as_str(), since.offset), ("7", 1), "from where the subscriber was");
                assert_eq!((pos.epoch.as_str(), pos.offset, reason.as_str()), ("8", 5, "epoch_changed"));
            }
            other => panic!("{other:?}"),
        }
        // Resumes go on from the restarted stream.
        assert_eq!(chans[c].pos.as_ref().map(|p| (p.epoch.as_str(), p.offset)), Some(("8", 6)));
        // A durable channel restarting with no node faulted is a violation (I8), and the
        // restart is no silent gap (I4).
        let f = crate::checker::check(&events);
        assert_eq!((f.count("I8"), f.count("I4"), f.recovered_false), (1, 0, 1));
        Ok(())
    }
}
