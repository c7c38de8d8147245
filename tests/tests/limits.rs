//! Limits and malformed input at the transport level: each rejection has its documented
//! status or close code, and the node keeps serving everyone else.

use anyhow::Result;
use ringcast_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn with_limits(limits: &str) -> String {
    base_config("").replace("[api]", &format!("[limits]\n{limits}\n\n[api]"))
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n";

async fn still_serving(node: &Ringcastd) -> Result<()> {
    let (mut c, r) = WsClient::connect(&node.ws_url(), None).await?;
    assert_eq!(r["type"], "connected");
    assert_eq!(c.publish("chat:alive", json!(1)).await?["type"], "ack");
    Ok(())
}

#[tokio::test]
async fn oversized_and_binary_frames_close_with_their_codes() -> Result<()> {
    let node = Ringcastd::start(&with_limits("max_frame_bytes = 70000"))?;
    let (mut big, _) = WsClient::connect(&node.ws_url(), None).await?;
    big.send_text(&format!(r#"{{"id":9,"type":"ping","pad":"{}"}}"#, "x".repeat(100_000))).await?;
    assert_eq!(big.expect_close().await?.code, 1009);

    let (mut bin, _) = WsClient::connect(&node.ws_url(), None).await?;
    bin.send_message(Message::binary(vec![1u8, 2, 3])).await?;
    assert_eq!(bin.expect_close().await?.code, 1003);

    // HTTP bodies have the same limit.
    let body = json!({"channel": "chat:x", "data": "y".repeat(100_000)}).to_string();
    let r = http(node.addr, "POST", "/v1/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], &body).await?;
    assert_eq!((r.status, error_code(&r.json())), (413, "message_too_large".into()), "{}", r.body);
    still_serving(&node).await
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_then_closed_while_others_are_served() -> Result<()> {
    let node = Ringcastd::start(&with_limits("commands_per_second = 1\ncommand_burst = 5"))?;
    let (mut flood, _) = WsClient::connect(&node.ws_url(), None).await?;
    let (mut calm, _) = WsClient::connect(&node.ws_url(), None).await?;
    for i in 0..60 {
        flood.send_text(&json!({"id": 100 + i, "type": "ping"}).to_string()).await?;
    }
    let mut limited = 0;
    let closed = loop {
        match flood.read_frame().await {
            Ok(f) if error_code(&f) == "rate_limited" => limited += 1,
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(closed.contains("4009"), "closed with rate_limited: {closed}");
    assert!(limited >= 40, "each refused command was answered ({limited})");
    assert_eq!(calm.request(json!({"type": "ping"})).await?["type"], "pong");
    Ok(())
}

#[tokio::test]
async fn oversized_headers_get_431_and_slow_handshakes_are_dropped() -> Result<()> {
    let node = Ringcastd::start(&with_limits("handshake_timeout = \"500ms\""))?;
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw_http(node.addr, format!("{UPGRADE}{many}\r\n").as_bytes()).await?;
    assert_eq!(r.status, 431, "more than 64 headers");
    let huge = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let r = raw_http(node.addr, format!("{UPGRADE}{huge}\r\n").as_bytes()).await?;
    assert_eq!(r.status, 431, "more than 16 KiB of headers");

    // Slowloris: half a request head, then silence.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(node.addr).await?;
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "dropped after the handshake timeout, not {waited:?}");
    still_serving(&node).await
}

#[tokio::test]
async fn bad_upgrades_get_their_statuses() -> Result<()> {
    let node = Ringcastd::start(&base_config("").replace(
        "[auth]",
        "[limits]\nhandshakes_per_second = 3\n\n[auth]\nallowed_origins = [\"https://good.example\"]",
    ))?;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = raw_http(node.addr, format!("{UPGRADE}Sec-WebSocket-Version: 8\r\n{key}\r\n").as_bytes()).await?;
    assert_eq!((r.status, r.header("sec-websocket-version")), (426, Some("13")));
    let r = raw_http(
        node.addr,
        format!("{UPGRADE}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n").as_bytes(),
    )
    .await?;
    assert_eq!((r.status, error_code(&r.json())), (400, "bad_request".into()));
    let r = raw_http(node.addr, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert_eq!(r.status, 400, "not an upgrade");
    let r = raw_http(
        node.addr,
        format!("{UPGRADE}Sec-WebSocket-Version: 13\r\n{key}Origin: https://evil.example\r\n\r\n").as_bytes(),
    )
    .await?;
    assert_eq!((r.status, error_code(&r.json())), (403, "permission_denied".into()));
    // The handshake budget: 3 per second, so a burst of upgrades meets 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = raw_http(
            node.addr,
            format!("{UPGRADE}Sec-WebSocket-Version: 13\r\n{key}Origin: https://good.example\r\n\r\n").as_bytes(),
        )
        .await?;
        statuses.push(r.status);
    }
    assert!(statuses.contains(&101) && statuses.contains(&429), "{statuses:?}");
    assert!(node.metric("ringcast_handshakes_rejected_total").await? >= 4.0);
    Ok(())
}

#[tokio::test]
async fn bad_http_requests_get_json_errors() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let auth = format!("Bearer {API_KEY}");
    let h = [("Authorization", auth.as_str())];
    let cases: [(&str, &str, &str, u16, &str); 8] = [
        ("POST", "/v1/publish", "{not json", 400, "bad_request"),
        ("POST", "/v1/publish", r#"{"channel":"chat:x"}"#, 400, "bad_request"),
        ("POST", "/v1/publish", r#"{"channel":"chat:x","data":1,"extra":true}"#, 400, "bad_request"),
        ("POST", "/v1/publish", r#"{"channel":"bad name","data":1}"#, 400, "invalid_channel"),
        ("POST", "/v1/publish", r#"{"channel":"ghost:x","data":1}"#, 404, "unknown_namespace"),
        ("POST", "/v1/broadcast", r#"{"channels":[],"data":1}"#, 400, "bad_request"),
        ("GET", "/v1/channels/chat:x/history?limit=abc", "", 400, "bad_request"),
        ("GET", "/v1/channels/chat:x/history?limit=5000", "", 400, "bad_request"),
    ];
    for (method, path, body, status, code) in cases {
        let r = http(node.addr, method, path, &h, body).await?;
        assert_eq!((r.status, error_code(&r.json()).as_str()), (status, code), "{method} {path} {body}: {}", r.body);
    }
    let r = http(
        node.addr,
        "POST",
        "/v1/publish",
        &[("Authorization", "Bearer wrong-key")],
        r#"{"channel":"chat:x","data":1}"#,
    )
    .await?;
    assert_eq!((r.status, error_code(&r.json())), (401, "unauthorized".into()));
    // History: an unknown namespace is only revealed to callers with the API key, and a
    // channel with no stream has no epoch (reading creates nothing).
    let r = http(node.addr, "GET", "/v1/channels/ghost:x/history", &[], "").await?;
    assert_eq!((r.status, error_code(&r.json())), (401, "unauthorized".into()), "{}", r.body);
    let r = http(node.addr, "GET", "/v1/channels/ghost:x/history", &h, "").await?;
    assert_eq!((r.status, error_code(&r.json())), (404, "unknown_namespace".into()), "{}", r.body);
    let r = http(node.addr, "GET", "/v1/channels/chat:never/history", &[], "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["epoch"].clone(), r.json()["newest"].clone()), (json!(null), json!(0)), "{}", r.body);
    let r = http(node.addr, "GET", "/v1/channels/chat:never", &h, "").await?;
    assert_eq!(r.json()["epoch"], json!(null), "history reads create no channel state: {}", r.body);

    let r = http(node.addr, "GET", "/v1/channels/chat:x", &h, "").await?;
    assert_eq!((r.status, r.json()["owner"].as_str()), (200, Some("standalone")), "{}", r.body);
    assert_eq!(r.json()["namespace"], "chat");
    still_serving(&node).await
}
