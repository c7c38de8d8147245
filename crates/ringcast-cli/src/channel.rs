//! `publish`, `history`, `tail`: channels through any node.

use crate::exit::CliError;
use crate::node::{path_segment, NodeApi};
use crate::output::Report;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use tokio_tungstenite::tungstenite::Message;

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

/// Subscribes and prints messages as they arrive (one per line; raw frames with
/// `--json`), until `count` messages or the connection ends.
pub async fn tail(
    api: &NodeApi,
    channel: &str,
    since: Option<Value>,
    token: Option<String>,
    count: Option<u64>,
    json_out: bool,
) -> Result<Report, CliError> {
    let url = format!("ws://{}/ws", api.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| CliError::Failed(format!("cannot open {url}: {e}")))?;
    let mut connect = json!({"id": 1, "type": "connect"});
    if let Some(t) = token {
        connect["token"] = json!(t);
    }
    let mut sub = json!({"id": 2, "type": "subscribe", "channel": channel});
    if let Some(s) = since {
        sub["since"] = s;
    }
    for cmd in [connect, sub] {
        ws.send(Message::text(cmd.to_string())).await.map_err(|e| CliError::Failed(format!("send: {e}")))?;
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(c)) => {
                let why = c.map(|c| format!("{} {}", u16::from(c.code), c.reason)).unwrap_or_default();
                return Err(CliError::Failed(format!("the node closed the connection: {why}")));
            }
            Ok(_) => continue,
            Err(e) => return Err(CliError::Failed(format!("connection lost: {e}"))),
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        if v["type"] == "error" {
            return Err(CliError::Failed(format!("{}: {}", v["error"]["code"], v["error"]["message"])));
        }
        if v["type"] == "subscribed" && !json_out {
            let note = match v["recovered"].as_bool() {
                Some(true) => format!(", recovered {} missed", v["replayed"]),
                Some(false) => format!(", NOT recovered ({})", v["reason"].as_str().unwrap_or("?")),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "# subscribed to {channel} at {}:{}{note}",
                v["epoch"].as_str().unwrap_or("?"),
                v["offset"]
            );
        }
        if v["type"] != "message" {
            continue;
        }
        let line = if json_out {
            text.to_string()
        } else {
            format!("{}:{}  {}", v["epoch"].as_str().unwrap_or("?"), v["offset"], v["data"])
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // stdout closed (a pipe into head): done.
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(Report { human: String::new(), json: json!({"channel": channel, "messages": seen}) })
}
