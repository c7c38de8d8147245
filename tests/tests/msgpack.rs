//! The MessagePack encoding on a real node: negotiated at the upgrade, the same frames
//! and semantics as JSON, clients of both encodings on one channel, and bad frames
//! answered (or closed) as documented.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use ringcast_proto::msgpack::{json_to_msgpack, msgpack_to_json, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket offering `protocols`; returns it and the subprotocol the server chose.
async fn open(node: &Ringcastd, protocols: &str) -> Result<(Ws, Option<String>)> {
    let mut req = node.ws_url().into_client_request()?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(protocols)?);
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await??;
    let chosen = resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok((ws, chosen))
}

/// A MessagePack client: frames it read while waiting for a reply are kept, in order.
struct Mp {
    ws: Ws,
    pending: VecDeque<Value>,
}

impl Mp {
    async fn send(&mut self, frame: Value) -> Result<()> {
        let bytes = json_to_msgpack(&frame.to_string()).map_err(anyhow::Error::msg)?;
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next frame, which must be binary MessagePack, as a JSON value.
    async fn recv(&mut self) -> Result<Value> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(f);
        }
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.context("no frame")? {
                Some(Ok(Message::Binary(b))) => {
                    return Ok(serde_json::from_str(&msgpack_to_json(&b).map_err(anyhow::Error::msg)?)?);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// The frame answering `id`; others wait in `pending`.
    async fn reply(&mut self, id: u64) -> Result<Value> {
        if let Some(i) = self.pending.iter().position(|f| f["id"] == id) {
            return self.pending.remove(i).context("pending");
        }
        loop {
            let f = self.recv_wire().await?;
            if f["id"] == id {
                return Ok(f);
            }
            self.pending.push_back(f);
        }
    }

    /// The next frame from the socket, skipping `pending`.
    async fn recv_wire(&mut self) -> Result<Value> {
        let held = std::mem::take(&mut self.pending);
        let f = self.recv().await;
        self.pending = held;
        f
    }
}

#[tokio::test]
async fn msgpack_and_json_clients_share_a_channel() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let (ws, chosen) = open(&node, &format!("{SUBPROTOCOL_MSGPACK}, {SUBPROTOCOL_JSON}")).await?;
    let mut mp = Mp { ws, pending: VecDeque::new() };
    assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL_MSGPACK), "the first one offered that ringcast speaks");
    mp.send(json!({"id": 1, "type": "connect"})).await?;
    let connected = mp.reply(1).await?;
    assert_eq!(connected["type"], "connected", "{connected}");
    let channel = "chat:binary";
    mp.send(json!({"id": 2, "type": "subscribe", "channel": channel})).await?;
    let sub = mp.reply(2).await?;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    assert!(sub["epoch"].is_string(), "epochs stay decimal strings: {sub}");

    let (mut js, _) = WsClient::connect(&node.ws_url(), None).await?;
    assert_eq!(js.subscribe(channel, None).await?["type"], "subscribed");

    // MessagePack in, both out; then JSON in, both out: the same values everywhere.
    let from_mp = json!({"n": 1, "x": [1.5, "s", null, true, -7, 18_446_744_073_709_551_615u64], "o": {"k": {}}});
    let again = from_mp.clone();
    mp.send(json!({"id": 3, "type": "publish", "channel": channel, "data": from_mp, "idempotency_key": "k1"})).await?;
    let ack = mp.reply(3).await?;
    assert_eq!((ack["type"].as_str(), ack["offset"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    let from_js = json!({"n": 2, "text": "héllo"});
    assert_eq!(js.publish(channel, from_js.clone()).await?["type"], "ack");
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = mp.recv().await?;
        if f["type"] == "message" {
            got.push((f["offset"].as_u64().context("offset")?, f["data"].clone()));
        }
    }
    assert_eq!(got, vec![(1, from_mp.clone()), (2, from_js.clone())]);
    let seen = js.messages(2).await?;
    assert_eq!((seen[0]["data"].clone(), seen[1]["data"].clone()), (from_mp, from_js));

    // A retry answered from the idempotency window, as over JSON.
    mp.send(json!({"id": 4, "type": "publish", "channel": channel, "data": again, "idempotency_key": "k1"})).await?;
    let dup = mp.reply(4).await?;
    assert_eq!((dup["offset"].as_u64(), dup["duplicate"].as_bool()), (Some(1), Some(true)), "{dup}");

    // Bad input: a frame that is not MessagePack, and a bad command, get errors; the
    // session goes on.
    mp.ws.send(Message::Binary(vec![0xc1].into())).await?;
    let e = mp.recv().await?;
    assert_eq!((e["type"].as_str(), error_code(&e).as_str()), (Some("error"), "bad_request"), "{e}");
    mp.send(json!({"id": 5, "type": "subscribe", "channel": "bad channel"})).await?;
    assert_eq!(error_code(&mp.reply(5).await?), "invalid_channel");
    mp.send(json!({"id": 6, "type": "ping"})).await?;
    assert_eq!(mp.reply(6).await?["type"], "pong");
    // A text frame on a MessagePack session closes it with 1003.
    mp.ws.send(Message::text(json!({"id": 7, "type": "ping"}).to_string())).await?;
    loop {
        match tokio::time::timeout(WAIT, mp.ws.next()).await.context("no close")? {
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 1003);
                break;
            }
            Some(Ok(_)) => {}
            other => bail!("expected a close, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_subprotocol_is_negotiated_at_the_upgrade() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    // Asking for JSON by name gets it named back, and text frames.
    let (mut js, chosen) = open(&node, SUBPROTOCOL_JSON).await?;
    assert_eq!(chosen.as_deref(), Some(SUBPROTOCOL_JSON));
    js.send(Message::text(json!({"id": 1, "type": "ping"}).to_string())).await?;
    match tokio::time::timeout(WAIT, js.next()).await.context("no reply")? {
        Some(Ok(Message::Text(t))) => assert!(t.as_str().contains("pong"), "{t}"),
        other => bail!("expected a text pong, got {other:?}"),
    }
    // Offering only subprotocols ringcast does not speak is refused before the upgrade.
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: graphql-ws, mqtt\r\n\r\n",
        node.addr
    );
    let r = raw_http(node.addr, req.as_bytes()).await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("bad_request") && r.body.contains(SUBPROTOCOL_MSGPACK), "{}", r.body);
    Ok(())
}
