//! Session and process lifecycle: heartbeats, connect timeout, token expiry and refresh,
//! SIGTERM drain, and refusing bad configuration.

use anyhow::Result;
use ringcast_tests::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_silent_client_is_closed_and_its_subscriptions_cleaned_up() -> Result<()> {
    let node = Ringcastd::start(
        &base_config("").replace("[api]", "[heartbeat]\nping_interval = \"200ms\"\npong_timeout = \"300ms\"\n\n[api]"),
    )?;
    // This client subscribes, then never reads again: it answers no ping.
    let (mut silent, _) = WsClient::connect(&node.ws_url(), None).await?;
    silent.subscribe("chat:hb", None).await?;
    silent.subscribe("chat:hb2", None).await?;
    // This one keeps reading (tungstenite answers pings while it is polled).
    let (mut lively, _) = WsClient::connect(&node.ws_url(), None).await?;
    lively.subscribe("chat:hb", None).await?;
    assert_eq!(node.metric("ringcast_subscriptions").await?, 3.0);

    let started = Instant::now();
    let poll = async {
        while started.elapsed() < Duration::from_millis(3000) {
            let _ = tokio::time::timeout(Duration::from_millis(100), lively.read_frame()).await;
        }
    };
    let cleanup = async {
        let r = node.wait_metric("ringcast_subscriptions", |v| v == 1.0).await;
        (r, started.elapsed())
    };
    let ((), (cleaned, took)) = tokio::join!(poll, cleanup);
    cleaned?;
    // The window is 500 ms; the bound leaves room for a loaded machine, and the lively
    // client (polled for 3 s) shows that reading clients are not closed.
    assert!(took <= Duration::from_millis(2500), "closed within interval + timeout (+ slack), took {took:?}");
    assert_eq!(node.metric("ringcast_connections").await?, 1.0);
    assert_eq!(node.metric("ringcast_closes_total{code=\"4010\"}").await?, 1.0);
    assert_eq!(lively.request(json!({"type": "ping"})).await?["type"], "pong", "the reading client is alive");
    drop(silent);
    Ok(())
}

#[tokio::test]
async fn connect_must_come_in_time() -> Result<()> {
    let node = Ringcastd::start(&base_config("").replace("[api]", "[limits]\nconnect_timeout = \"300ms\"\n\n[api]"))?;
    let mut c = WsClient::open(&node.ws_url()).await?;
    let closed = c.expect_close().await?;
    assert_eq!((closed.code, closed.reason.as_str()), (4003, "connect_timeout"));
    Ok(())
}

#[tokio::test]
async fn an_expired_token_ends_the_session_unless_refreshed() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let url = node.ws_url();
    let (mut short, r) = WsClient::connect(&url, Some(&user_token("ann", 2, &["private:*"]))).await?;
    assert_eq!((r["type"].as_str(), r["user"].as_str()), (Some("connected"), Some("ann")), "{r}");
    let (mut refreshed, _) = WsClient::connect(&url, Some(&user_token("ann", 2, &["private:*"]))).await?;
    let r = refreshed.request(json!({"type": "refresh", "token": user_token("ann", 120, &["private:*"])})).await?;
    assert_eq!(r["type"], "refreshed", "{r}");
    let r = refreshed.request(json!({"type": "refresh", "token": user_token("eve", 120, &["*"])})).await?;
    assert_eq!(error_code(&r), "unauthorized", "a token for another user is refused: {r}");

    let started = Instant::now();
    let closed = short.expect_close().await?;
    assert_eq!((closed.code, closed.reason.as_str()), (4002, "token_expired"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The refreshed session outlives its first token.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refreshed.request(json!({"type": "ping"})).await?["type"], "pong");
    let r = refreshed.subscribe("private:room", None).await?;
    assert_eq!(r["type"], "subscribed", "caps still apply after refresh: {r}");
    Ok(())
}

#[tokio::test]
async fn capabilities_gate_private_channels() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let t = token(
        &json!({"sub": "u", "exp": unix_now() + 60, "caps": {"subscribe": ["private:a*"], "publish": ["private:ab"]}}),
    );
    let (mut c, _) = WsClient::connect(&node.ws_url(), Some(&t)).await?;
    assert_eq!(c.subscribe("private:abc", None).await?["type"], "subscribed");
    assert_eq!(error_code(&c.subscribe("private:b", None).await?), "permission_denied");
    assert_eq!(c.publish("private:ab", json!(1)).await?["type"], "ack");
    assert_eq!(error_code(&c.publish("private:abc", json!(1)).await?), "permission_denied");
    let (mut anon, _) = WsClient::connect(&node.ws_url(), None).await?;
    assert_eq!(error_code(&anon.subscribe("private:abc", None).await?), "permission_denied");
    assert_eq!(anon.subscribe("chat:open", None).await?["type"], "subscribed");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_then_closes_clients_with_1001_and_exits_cleanly() -> Result<()> {
    let mut node = Ringcastd::start(&base_config("").replace("[api]", "[node]\ndrain_delay = \"1s\"\n\n[api]"))?;
    let (mut c, _) = WsClient::connect(&node.ws_url(), None).await?;
    c.subscribe("chat:bye", None).await?;
    node.terminate()?;
    // During the drain delay: not ready, but existing sessions still work.
    let r = loop {
        let r = http(node.addr, "GET", "/readyz", &[], "").await?;
        if r.status == 503 {
            break r;
        }
    };
    assert_eq!(r.json()["status"], "draining");
    assert_eq!(c.publish("chat:bye", json!("still here")).await?["type"], "ack");
    let closed = c.expect_close().await?;
    assert_eq!((closed.code, closed.reason.as_str()), (1001, "going_away: reconnect"));
    let status = node.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", node.stderr());
    Ok(())
}

#[test]
fn bad_configuration_and_flags_exit_64_with_a_reason() -> Result<()> {
    let cases: [(Option<&str>, &[&str], &str); 7] = [
        (Some("[auth]\nrsa_public_key_file = \"/no/such/key.pem\""), &[], "auth.rsa_public_key_file"),
        (Some("[node]\nlisten = \"nowhere\""), &[], "listen"),
        (Some("[limits]\nmax_frame_bytes = 1"), &[], "limits.max_frame_bytes"),
        (Some("[namespaces.chat]\nhistory_ttl = \"forever\""), &[], "history_ttl"),
        (Some("[namespace.chat]"), &[], "unknown field `namespace`"),
        (None, &["--config", "/definitely/not/here.toml"], "cannot read config file"),
        (None, &["--no-such-flag"], "--no-such-flag"),
    ];
    for (config, args, needle) in cases {
        let (code, stderr) = run_to_exit(config, args)?;
        assert_eq!(code, Some(64), "{config:?} {args:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    let (code, out) = run_to_exit(Some(&base_config("")), &["--check-config"])?;
    assert_eq!(code, Some(0), "{out}");
    Ok(())
}
