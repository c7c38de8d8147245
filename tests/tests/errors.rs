//! Every client-visible error code is reachable and documented behaviour holds: each
//! is provoked here through a real client, and the test fails if a code in
//! `ErrorCode::ALL` was not seen. Exempt: `internal`, which no input can cause, and the
//! cluster-only `insufficient_replicas` and `coordination_unavailable`, provoked against a
//! real cluster in `tests/tests/failover.rs`.

use anyhow::Result;
use ringcast_proto::ErrorCode;
use ringcast_tests::*;
use serde_json::json;
use std::collections::BTreeSet;

fn note(seen: &mut BTreeSet<String>, code: &str, want: &str, context: &str) {
    assert_eq!(code, want, "{context}");
    seen.insert(code.to_owned());
}

#[tokio::test]
async fn every_error_code_is_returned_for_its_documented_cause() -> Result<()> {
    let cfg = base_config("[namespaces.tiny]\nanonymous = true\nmax_message_bytes = 1024\n")
        .replace("[api]", "[limits]\nmax_channels_per_connection = 3\n\n[api]");
    let node = Ringcastd::start(&cfg)?;
    let url = node.ws_url();
    let mut seen = BTreeSet::new();

    // Before connect.
    let mut c = WsClient::open(&url).await?;
    let r = c.request(json!({"type": "subscribe", "channel": "chat:a"})).await?;
    note(&mut seen, &error_code(&r), "not_connected", &r.to_string());
    c.send_text("this is not json").await?;
    let r = c.read_frame().await?;
    note(&mut seen, &error_code(&r), "bad_request", &r.to_string());
    assert!(r.get("id").is_none(), "no id could be read: {r}");
    let r = c.request(json!({"type": "connect"})).await?;
    assert_eq!(r["type"], "connected", "{r}");
    let r = c.request(json!({"type": "connect"})).await?;
    note(&mut seen, &error_code(&r), "already_connected", &r.to_string());

    let r = c.request(json!({"type": "teleport"})).await?;
    note(&mut seen, &error_code(&r), "unknown_command", &r.to_string());
    assert_eq!(r["id"], 4, "errors echo the command id: {r}");
    let r = c.subscribe("chat:a b", None).await?;
    note(&mut seen, &error_code(&r), "invalid_channel", &r.to_string());
    let r = c.subscribe("nowhere:a", None).await?;
    note(&mut seen, &error_code(&r), "unknown_namespace", &r.to_string());
    let r = c.subscribe("private:a", None).await?;
    note(&mut seen, &error_code(&r), "permission_denied", &r.to_string());
    let r = c.subscribe("chat:a", Some(json!({"epoch": "x", "offset": 1}))).await?;
    note(&mut seen, &error_code(&r), "invalid_position", &r.to_string());
    let r = c.subscribe("chat:a", Some(json!({"epoch": "1", "offset": -1}))).await?;
    note(&mut seen, &error_code(&r), "invalid_position", &r.to_string());
    let r = c.request(json!({"type": "publish", "channel": "chat:a", "data": 1, "idempotency_key": ""})).await?;
    note(&mut seen, &error_code(&r), "invalid_idempotency_key", &r.to_string());
    let r = c.publish("tiny:a", json!("x".repeat(2000))).await?;
    note(&mut seen, &error_code(&r), "message_too_large", &r.to_string());
    for ch in ["chat:1", "chat:2", "chat:3"] {
        assert_eq!(c.subscribe(ch, None).await?["type"], "subscribed");
    }
    let r = c.subscribe("chat:4", None).await?;
    note(&mut seen, &error_code(&r), "too_many_channels", &r.to_string());
    let r = c.subscribe("chat:1", None).await?;
    note(&mut seen, &error_code(&r), "already_subscribed", &r.to_string());
    let r = c.request(json!({"type": "unsubscribe", "channel": "chat:9"})).await?;
    note(&mut seen, &error_code(&r), "not_subscribed", &r.to_string());
    let r = c.request(json!({"type": "presence", "channel": "chat:1"})).await?;
    note(&mut seen, &error_code(&r), "not_enabled", &r.to_string());
    let key = json!({"type": "publish", "channel": "chat:1", "data": 1, "idempotency_key": "k"});
    c.request(key.clone()).await?;
    let mut clash = key;
    clash["data"] = json!(2);
    let r = c.request(clash).await?;
    note(&mut seen, &error_code(&r), "conflict", &r.to_string());
    // The session survived all of that.
    assert_eq!(c.request(json!({"type": "ping"})).await?["type"], "pong");

    // Authentication failures end the session with their close code.
    let (mut bad, r) = WsClient::connect(&url, Some("not-a-token")).await?;
    note(&mut seen, &error_code(&r), "unauthorized", &r.to_string());
    assert_eq!(bad.expect_close().await?.code, 4001);
    let expired = token(&json!({"sub": "old", "exp": unix_now() - 60}));
    let (mut old, r) = WsClient::connect(&url, Some(&expired)).await?;
    note(&mut seen, &error_code(&r), "token_expired", &r.to_string());
    assert_eq!(old.expect_close().await?.code, 4002);

    // HTTP-only codes.
    let r = http(node.addr, "GET", "/no/such/path", &[], "").await?;
    assert_eq!(r.status, 404);
    note(&mut seen, &error_code(&r.json()), "not_found", &r.body);
    let r = http(node.addr, "GET", "/v1/publish", &[], "").await?;
    assert_eq!(r.status, 405);
    note(&mut seen, &error_code(&r.json()), "method_not_allowed", &r.body);

    // Rate limits, on a node with a tiny command budget.
    let limited = Ringcastd::start(
        &base_config("").replace("[api]", "[limits]\ncommands_per_second = 1\ncommand_burst = 3\n\n[api]"),
    )?;
    let (mut l, _) = WsClient::connect(&limited.ws_url(), None).await?;
    let mut last = json!(null);
    for _ in 0..4 {
        last = l.request(json!({"type": "ping"})).await?;
    }
    note(&mut seen, &error_code(&last), "rate_limited", &last.to_string());

    // A draining node refuses new sessions.
    let draining = Ringcastd::start(&base_config("").replace("[api]", "[node]\ndrain_delay = \"3s\"\n\n[api]"))?;
    draining.terminate()?;
    let deadline = std::time::Instant::now() + WAIT;
    let r = loop {
        let r = http(draining.addr, "GET", "/readyz", &[], "").await?;
        if r.status == 503 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(r.json()["status"], "draining", "{}", r.body);
    let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = raw_http(draining.addr, upgrade.as_bytes()).await?;
    assert_eq!(r.status, 503);
    note(&mut seen, &error_code(&r.json()), "unavailable", &r.body);

    let cluster_only = [ErrorCode::Internal, ErrorCode::InsufficientReplicas, ErrorCode::CoordinationUnavailable];
    let want: BTreeSet<String> =
        ErrorCode::ALL.iter().filter(|c| !cluster_only.contains(c)).map(|c| c.as_str().to_owned()).collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "error codes never provoked: {missing:?}");
    assert!(node.metric("ringcast_errors_total{code=\"conflict\"}").await? >= 1.0);
    Ok(())
}
