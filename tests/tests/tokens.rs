//! Token refresh flows: the server pushes `expiring` ahead of a token's `exp`; a client
//! that answers with `refresh` keeps its session and subscriptions through any number
//! of tokens; one that does not is closed with 4002, and the Rust client then fetches a
//! new token before it reconnects and resumes.

use anyhow::{bail, Context, Result};
use ringcast_client::{Config, Event, Subscriber, TokenSource};
use ringcast_tests::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Short-lived tokens for `alice` (3 s: `expiring` comes about half-way through).
const TTL_SECS: u64 = 3;

fn alice() -> String {
    user_token("alice", TTL_SECS, &["chat:*"])
}

/// Publishes `n` over HTTP.
async fn publish(node: &Ringcastd, channel: &str, n: u64) -> Result<()> {
    let r = http_publish(node, channel, json!(n)).await?;
    anyhow::ensure!(r.status == 200, "publish {n}: {} {}", r.status, r.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_three_token_refreshes() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let fetched = Arc::new(AtomicUsize::new(0));
    let source = {
        let fetched = fetched.clone();
        TokenSource::new(move || {
            fetched.fetch_add(1, Ordering::Relaxed);
            async { Ok(alice()) }
        })
    };
    let channel = "chat:refresh";
    let config = Config::new(vec![node.ws_url()]).with_token_source(alice(), source);
    let mut sub = Subscriber::new(config, &[channel]);
    let (mut refreshes, mut connects, mut got) = (0, 0, Vec::new());
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Three tokens of 3 s each come and go while messages keep flowing.
    while refreshes < 3 || got.len() < sent as usize {
        anyhow::ensure!(Instant::now() < deadline, "after {refreshes} refreshes and {} messages", got.len());
        if connects > 0 && refreshes < 3 && got.len() == sent as usize {
            sent += 1;
            publish(&node, channel, sent).await?;
        }
        match tokio::time::timeout(WAIT, sub.next()).await.context("no event")?? {
            Event::Connected { .. } => connects += 1,
            Event::Subscribed { recovered: None, .. } => {}
            Event::Refreshed { expires_at } => {
                refreshes += 1;
                assert!(expires_at.is_some_and(|e| e > unix_now()), "a later expiry: {expires_at:?}");
            }
            Event::Message { at, data, .. } => {
                assert_eq!(data, json!(at.offset), "in order, once");
                got.push(at.offset);
            }
            other => bail!("the session must carry on untouched, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connects, 1, "one connection throughout");
    assert_eq!(fetched.load(Ordering::Relaxed), 3);
    assert_eq!(got, (1..=sent).collect::<Vec<_>>());
    assert!(sent >= 10, "messages flowed across the refreshes: {sent}");
    assert!(!node.stderr().contains("panicked"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_closes_4002_and_the_client_comes_back_with_a_new_token() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;

    // The raw protocol: `expiring` names the token's `exp`, then 4002 without a refresh.
    let token = alice();
    let (mut raw, connected) = WsClient::connect(&node.ws_url(), Some(&token)).await?;
    let exp = connected["expires_at"].as_u64().context("expires_at")?;
    let push = raw.next_push().await?;
    assert_eq!((push["type"].as_str(), push["expires_at"].as_u64()), (Some("expiring"), Some(exp)), "{push}");
    assert!(push["in_ms"].as_u64().is_some_and(|ms| ms <= TTL_SECS * 1000), "{push}");
    let closed = raw.expect_close().await?;
    assert_eq!((closed.code, closed.reason.as_str()), (4002, "token_expired"));

    // A client whose backend fails at the first `expiring`: the session is closed at
    // expiry, then the client fetches a token (the backend is back) before reconnecting
    // and resumes where it was.
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let calls = calls.clone();
        TokenSource::new(move || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n == 0 {
                    Err("the auth backend is down".to_owned())
                } else {
                    Ok(alice())
                }
            }
        })
    };
    let channel = "chat:expire";
    let mut sub = Subscriber::new(Config::new(vec![node.ws_url()]).with_token_source(alice(), source), &[channel]);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "events so far: {seen:?}");
        let e = tokio::time::timeout(WAIT, sub.next()).await.context("no event")??;
        let label = match &e {
            // The server's own subscription of the user's registry channel, each time.
            Event::Subscribed { channel: c, .. } if c.starts_with("#user:") => continue,
            Event::Connected { .. } => "connected",
            Event::Subscribed { recovered: None, .. } => {
                publish(&node, channel, 1).await?;
                "subscribed"
            }
            Event::Subscribed { recovered: Some(true), .. } => "resumed",
            Event::Message { .. } => "message",
            Event::RefreshFailed { .. } => "refresh failed",
            Event::Disconnected { reason, .. } if reason.starts_with("closed 4002") => "closed 4002",
            other => bail!("unexpected {other:?} after {seen:?}"),
        };
        seen.push(label);
        if label == "resumed" {
            break;
        }
    }
    assert_eq!(
        seen,
        ["connected", "subscribed", "message", "refresh failed", "closed 4002", "connected", "resumed"],
        "one failed refresh, the close, then a new token and a resume"
    );
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    Ok(())
}
