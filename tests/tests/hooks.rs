//! Backend hooks against a real HTTP backend started here (axum): connect, subscribe,
//! publish and refresh are allowed, denied with the backend's code, or rewritten; a
//! backend that hangs or fails follows `hooks.on_failure` without stalling the node's
//! other clients; every call is counted in `/metrics`.

use anyhow::{Context, Result};
use axum::routing::post;
use axum::{Json, Router};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every request the backend received, in order.
type Seen = Arc<Mutex<Vec<Value>>>;

/// The application's backend: its rules are in `decide`.
async fn backend() -> Result<(SocketAddr, Seen)> {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/{hook}",
        post(move |Json(req): Json<Value>| {
            let record = record.clone();
            async move {
                record.lock().map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?.push(req.clone());
                decide(&req).await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, seen))
}

async fn decide(req: &Value) -> Result<Json<Value>, axum::http::StatusCode> {
    let channel = req["channel"].as_str().unwrap_or_default();
    Ok(Json(match req["hook"].as_str() {
        Some("connect") if req["user"] == "mallory" => json!({"result": "deny", "message": "banned"}),
        Some("connect") => json!({"result": "allow", "info": {"plan": "pro"}}),
        Some("subscribe") if channel == "hooked:secret" => {
            json!({"result": "deny", "code": "permission_denied", "message": "members only"})
        }
        Some("subscribe") if channel == "hooked:slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            json!({"result": "allow"})
        }
        Some("subscribe") if channel == "hooked:broken" => return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        Some("subscribe") => json!({"result": "allow", "info": {"role": "moderator"}}),
        Some("publish") if req["data"]["text"] == "bad word" => {
            json!({"result": "deny", "code": "permission_denied", "message": "moderated"})
        }
        Some("publish") => {
            let text = req["data"]["text"].as_str().unwrap_or_default().to_uppercase();
            json!({"result": "allow", "data": {"text": text, "checked": true}})
        }
        _ => json!({"result": "allow"}),
    }))
}

fn config(backend: SocketAddr, on_failure: &str) -> String {
    let url = |hook: &str| format!("http://{backend}/{hook}");
    base_config(&format!(
        "[namespaces.hooked]\npresence = true\nsubscribe_hook = true\npublish_hook = true\n\n\
         [hooks]\nconnect_url = \"{}\"\nrefresh_url = \"{}\"\nsubscribe_url = \"{}\"\npublish_url = \"{}\"\n\
         timeout = \"1s\"\non_failure = \"{on_failure}\"\n",
        url("connect"),
        url("refresh"),
        url("subscribe"),
        url("publish"),
    ))
}

fn token(user: &str) -> String {
    let caps = ["hooked:*"];
    ringcast_tests::token(&json!({"sub": user, "exp": unix_now() + 600,
        "caps": {"subscribe": caps, "publish": caps, "presence": caps}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_allow_deny_and_rewrite() -> Result<()> {
    let (addr, seen) = backend().await?;
    let node = Ringcastd::start(&config(addr, "deny"))?;

    // connect: denied (the session ends like a bad token), or allowed.
    let mut c = WsClient::open(&node.ws_url()).await?;
    let r = c.connect_with(Some(&token("mallory")), None).await?;
    assert_eq!((error_code(&r).as_str(), r["error"]["message"].as_str()), ("unauthorized", Some("banned")), "{r}");
    assert_eq!(c.expect_close().await?.code, 4001);
    let (mut alice, _) = WsClient::connect(&node.ws_url(), Some(&token("alice"))).await?;
    {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let connect = seen.iter().rfind(|r| r["hook"] == "connect").context("connect call")?;
        assert_eq!(connect["user"], "alice");
        assert!(connect["client"].is_string() && connect["node"] == "standalone", "{connect}");
    }

    // subscribe: denied with the backend's code; allowed with presence info attached.
    let r = alice.subscribe("hooked:secret", None).await?;
    assert_eq!((error_code(&r).as_str(), r["error"]["message"].as_str()), ("permission_denied", Some("members only")));
    assert_eq!(alice.subscribe("hooked:room", None).await?["type"], "subscribed");
    let p = alice.request(json!({"type": "presence", "channel": "hooked:room"})).await?;
    assert_eq!(p["members"][0]["info"], json!({"role": "moderator"}), "{p}");

    // publish: rewritten, or denied.
    let r = alice.publish("hooked:room", json!({"text": "shout"})).await?;
    assert_eq!(r["type"], "ack", "{r}");
    let m = alice.messages(1).await?;
    assert_eq!(m[0]["data"], json!({"text": "SHOUT", "checked": true}), "the backend's data is published");
    let r = alice.publish("hooked:room", json!({"text": "bad word"})).await?;
    assert_eq!((error_code(&r).as_str(), r["error"]["message"].as_str()), ("permission_denied", Some("moderated")));

    // refresh goes through the backend too.
    let r = alice.request(json!({"type": "refresh", "token": token("alice")})).await?;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert!(seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter().any(|r| r["hook"] == "refresh"));

    // The server API is trusted: not hooked.
    let before = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
    assert_eq!(http_publish(&node, "hooked:room", json!({"text": "bad word"})).await?.status, 200);
    assert_eq!(seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len(), before);

    let metric = |hook: &str, result: &str| format!("ringcast_hook_calls_total{{hook=\"{hook}\",result=\"{result}\"}}");
    assert_eq!(node.metric(&metric("connect", "deny")).await?, 1.0);
    assert_eq!(node.metric(&metric("subscribe", "allow")).await?, 1.0);
    assert_eq!(node.metric(&metric("publish", "deny")).await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_or_failing_backend_follows_the_policy_without_stalling_others() -> Result<()> {
    let (addr, _) = backend().await?;
    for policy in ["deny", "allow"] {
        let node = Ringcastd::start(&config(addr, policy))?;
        let (mut waiting, _) = WsClient::connect(&node.ws_url(), Some(&token("alice"))).await?;
        let (mut other, _) = WsClient::connect(&node.ws_url(), Some(&token("bob"))).await?;
        assert_eq!(other.subscribe("hooked:room", None).await?["type"], "subscribed");
        // The backend hangs on this subscribe for 30 s; the node gives up after 1 s.
        waiting.send_text(&json!({"id": 900, "type": "subscribe", "channel": "hooked:slow"}).to_string()).await?;
        // Meanwhile another client's commands, hooks included, go through.
        for n in 0..3 {
            let r = other.publish("hooked:room", json!({"text": format!("m{n}")})).await?;
            assert_eq!(r["type"], "ack", "{policy}: {r}");
        }
        assert_eq!(other.messages(3).await?.len(), 3);
        let late = waiting.reply_to(900).await?;
        // A backend error (500) is a failure too.
        let broken = waiting.subscribe("hooked:broken", None).await?;
        match policy {
            "deny" => {
                assert_eq!(error_code(&late), "unavailable", "{late}");
                assert_eq!(error_code(&broken), "unavailable", "{broken}");
            }
            _ => {
                assert_eq!(late["type"], "subscribed", "{late}");
                assert_eq!(broken["type"], "subscribed", "{broken}");
            }
        }
        let failed = node.metric("ringcast_hook_calls_total{hook=\"subscribe\",result=\"failed\"}").await?;
        assert_eq!(failed, 2.0, "{policy}");
        assert!(node.metric("ringcast_hook_seconds_count{hook=\"subscribe\"}").await? >= 3.0);
    }
    Ok(())
}
