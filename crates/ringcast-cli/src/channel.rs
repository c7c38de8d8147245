//! `publish`, `history`, `tail`: channels through any node.

use crate::exit::CliError;
use crate::node::{path_segment, NodeApi};
use crate::output::Report;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;

fn parse_data(data: &str) -> Result<Value, CliError> {
    serde_json::from_str(data)
        .map_err(|e| CliError::Usage(format!("DATA must be JSON (quote strings: '\"hello\"'); {e}")))
}

/// Publishes one message with the server API.
pub async fn publish(api: &NodeApi, channel: &str, data: &str, key: Option<&str>) -> Result<Report, CliError> {
    let mut body = json!({"channel": channel, "data": parse_data(data)?});
    if let Some(k) = key {
        body["idempotency_key"] = json!(k);
    }
    let ack = api.post("/v1/publish", &body).await?;
    let dup = if ack["duplicate"] == true { " (duplicate of an earlier publish)" } else { "" };
    let human =
        format!("{channel}: acked at epoch {} offset {}{dup}", ack["epoch"].as_str().unwrap_or("?"), ack["offset"]);
    Ok(Report { human, json: ack })
}

/// A page of history, oldest first.
pub async fn history(api: &NodeApi, channel: &str, before: Option<u64>, limit: u32) -> Result<Report, CliError> {
    let mut path = format!("/v1/channels/{}/history?limit={limit}", path_segment(channel));
    if let Some(b) = before {
        let _ = write!(path, "&before={b}");
    }
    let page = api.get(&path).await?;
    let mut human = String::new();
    for m in page["messages"].as_array().into_iter().flatten() {
        let _ = writeln!(human, "{:>8}  {}", m["offset"], m["data"]);
    }
    let _ = write!(
        human,
        "epoch {}, held {}..={}, next page: {}",
        page["epoch"].as_str().unwrap_or("(no stream)"),
        page["oldest"],
        page["newest"],
        page["next_before"].as_u64().map_or("none".to_owned(), |b| format!("--before {b}"))
    );
    Ok(Report { human, json: page })
}

/// Parses `EPOCH:OFFSET`.
pub fn parse_since(s: &str) -> Result<Value, CliError> {
    let (e, o) = s.split_once(':').ok_or_else(|| CliError::Usage(format!("--since {s:?}: write EPOCH:OFFSET")))?;
    let offset: u64 = o.parse().map_err(|_| CliError::Usage(format!("--since {s:?}: OFFSET must be a number")))?;
    Ok(json!({"epoch": e, "offset": offset}))
}

/// Subscribes and prints messages as they arrive (one per line; raw events as JSON with
/// `--json`), until `count` messages. The subscription survives node loss: it reconnects
/// across `nodes` with full-jitter backoff and resumes from the last position printed
/// (`ringcast_client::Subscriber`); what could not be recovered is printed as a note.
pub async fn tail(
    nodes: &[NodeApi],
    channel: &str,
    since: Option<Value>,
    token: Option<String>,
    count: Option<u64>,
    json_out: bool,
) -> Result<Report, CliError> {
    use ringcast_client::{ClientError, Config, Event, Subscriber};
    let urls = nodes.iter().map(|n| format!("ws://{}/ws", n.addr)).collect();
    let mut config = Config::new(urls);
    config.token = token;
    let mut sub = Subscriber::new(config, &[channel]);
    if let Some(s) = since {
        let epoch = s["epoch"].as_str().unwrap_or_default().to_owned();
        sub.resume_from(channel, ringcast_client::Position { epoch, offset: s["offset"].as_u64().unwrap_or(0) });
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let event = match sub.next().await {
            Ok(e) => e,
            Err(ClientError::Refused { code, message }) => return Err(CliError::Failed(format!("{code}: {message}"))),
            Err(e) => return Err(CliError::Failed(e.to_string())),
        };
        let line = match (&event, json_out) {
            (Event::Message { at, data, .. }, false) => format!("{}:{}  {data}", at.epoch, at.offset),
            (Event::Message { channel, at, data }, true) => {
                json!({"type": "message", "channel": channel, "epoch": at.epoch, "offset": at.offset, "data": data})
                    .to_string()
            }
            (_, true) => continue,
            (Event::Connected { node, node_id }, false) => format!("# connected to {node} ({node_id})"),
            (Event::Subscribed { at, recovered, reason, .. }, false) => {
                let note = match recovered {
                    Some(true) => ", recovered".to_owned(),
                    Some(false) => format!(", NOT recovered ({})", reason.as_deref().unwrap_or("?")),
                    None => String::new(),
                };
                format!("# subscribed to {channel} at {}:{}{note}", at.epoch, at.offset)
            }
            (Event::Gap { from, to, reason, .. }, false) => format!("# gap: {from}..={to} not delivered ({reason})"),
            (Event::Restarted { at, .. }, false) => format!("# the stream restarted in epoch {}", at.epoch),
            (Event::Disconnected { node, reason }, false) => {
                format!("# disconnected from {node}: {reason}; reconnecting")
            }
            (Event::Refreshed { expires_at }, false) => format!("# token refreshed; expires at {expires_at:?}"),
            (Event::RefreshFailed { reason }, false) => format!("# token refresh failed: {reason}"),
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // stdout closed (a pipe into head): done.
        }
        if matches!(event, Event::Message { .. }) {
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                break;
            }
        }
    }
    Ok(Report { human: String::new(), json: json!({"channel": channel, "messages": seen}) })
}
