//! Webhooks against a real HTTP backend started here (axum), which checks every
//! batch's signature and answers 500 to the first requests it gets:
//! - across a 3-node cluster, channel occupied/vacated, presence joined/left and
//!   published messages arrive signed, batched, retried after the 500s with the same
//!   ids, and exactly once per event, each from the owner of its channel; a graceful
//!   handoff of one channel's slot reports nothing twice and loses nothing;
//! - a backend that keeps failing gets the batch retried for `retry_for`, then its
//!   events are counted as dead letters; one that refuses with 401 is not retried; the
//!   node keeps serving clients throughout.

use anyhow::{bail, Result};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use ringcast_proto::webhook::{verify, ATTEMPT_HEADER, SIGNATURE_HEADER};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";

/// What the backend saw: every attempt, and the batches it accepted.
#[derive(Default)]
struct Seen {
    /// `(attempt header, status answered, event ids)`, in arrival order.
    attempts: Vec<(u32, u16, Vec<String>)>,
    /// Batches answered 200: `(sending node, events)`.
    accepted: Vec<(String, Vec<Value>)>,
    /// Bodies whose signature did not verify.
    bad_signatures: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// The backend: verifies the signature, answers `fail_status` to the first
/// `fail_first` requests (all of them when `None`), then 200.
async fn backend(fail_first: Option<usize>, fail_status: u16) -> Result<(SocketAddr, Shared)> {
    let seen: Shared = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let record = seen.clone();
    let app = Router::new().route(
        "/webhooks",
        post(move |headers: HeaderMap, body: String| {
            let (record, count) = (record.clone(), count.clone());
            async move {
                let header =
                    |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let signed = verify(
                    WEBHOOK_SECRET.as_bytes(),
                    &header(SIGNATURE_HEADER),
                    body.as_bytes(),
                    unix_now(),
                    Duration::from_secs(60),
                );
                let batch: Value = serde_json::from_str(&body).unwrap_or_default();
                let events = batch["events"].as_array().cloned().unwrap_or_default();
                let ids = events.iter().map(|e| e["id"].as_str().unwrap_or_default().to_owned()).collect();
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = match fail_first {
                    _ if signed.is_err() => StatusCode::UNAUTHORIZED,
                    Some(k) if n >= k => StatusCode::OK,
                    _ => StatusCode::from_u16(fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                };
                let mut seen = record.lock().map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
                seen.bad_signatures += usize::from(signed.is_err());
                seen.attempts.push((header(ATTEMPT_HEADER).parse().unwrap_or(0), status.as_u16(), ids));
                if status == StatusCode::OK {
                    seen.accepted.push((batch["node"].as_str().unwrap_or_default().to_owned(), events));
                }
                Ok::<_, StatusCode>(status)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, seen))
}

fn config(backend: SocketAddr, retry_for: &str) -> String {
    format!(
        "[namespaces.room]\npresence = true\npresence_grace = \"1s\"\nwebhooks = [\"occupancy\", \"presence\", \"messages\"]\n\n\
         [namespaces.lobby]\npresence = true\npresence_grace = \"6s\"\nwebhooks = [\"presence\"]\n\n\
         [webhooks]\nurl = \"http://{backend}/webhooks\"\nsecret = \"{WEBHOOK_SECRET}\"\nbatch_delay = \"200ms\"\n\
         vacated_grace = \"2s\"\nretry_for = \"{retry_for}\"\ntimeout = \"2s\"\n"
    )
}

fn token(user: &str) -> String {
    let caps = ["room:*", "lobby:*"];
    ringcast_tests::token(&json!({"sub": user, "exp": unix_now() + 600,
        "caps": {"subscribe": caps, "publish": caps, "presence": caps}}))
}

/// The accepted events, each with the node that sent it.
fn accepted(seen: &Shared) -> Result<Vec<(String, Value)>> {
    let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(seen.accepted.iter().flat_map(|(node, events)| events.iter().map(move |e| (node.clone(), e.clone()))).collect())
}

/// Waits until the accepted events satisfy `done`.
async fn wait_for(
    seen: &Shared,
    what: &str,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Result<Vec<(String, Value)>> {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let events = accepted(seen)?;
        if done(&events) {
            return Ok(events);
        }
        if Instant::now() > deadline {
            let lines: Vec<String> = events
                .iter()
                .map(|(node, e)| {
                    format!(
                        "{node} {} {}",
                        e["channel"],
                        story(
                            std::slice::from_ref(&(node.clone(), e.clone())),
                            e["channel"].as_str().unwrap_or_default()
                        )
                        .join("")
                    )
                })
                .collect();
            bail!("never saw {what}; accepted {}:\n{}", events.len(), lines.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One channel's events as `type` strings (messages as `message N`), in arrival order.
fn story(events: &[(String, Value)], channel: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(_, e)| e["channel"] == channel)
        .map(|(_, e)| match e["type"].as_str().unwrap_or("?") {
            "message" => format!("message {}", e["data"]["n"]),
            "member_joined" | "member_left" => {
                format!("{} {}", e["type"].as_str().unwrap_or("?"), e["user"].as_str().unwrap_or("?"))
            }
            other => other.to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_batched_retried_and_once_across_the_cluster() -> Result<()> {
    let (addr, seen) = backend(Some(2), 500).await?;
    let c = TestCluster::start(3, &config(addr, "5m")).await?;
    // One channel per owner; `moved` is handed off later (node-1 drains).
    let mut channels = Vec::new();
    for owner in ["node-0", "node-1", "node-2"] {
        channels.push((c.channel_owned_by("room", owner).await?, owner));
    }
    let moved = channels[1].0.clone();

    // Alice on node-0 and Bob on node-2 join every channel and each publishes 3.
    let (mut alice, _) = WsClient::connect(&c.nodes[0].ws_url(), Some(&token("alice"))).await?;
    let (mut bob, _) = WsClient::connect(&c.nodes[2].ws_url(), Some(&token("bob"))).await?;
    for (channel, _) in &channels {
        for client in [&mut alice, &mut bob] {
            let r = client.subscribe(channel, None).await?;
            anyhow::ensure!(r["type"] == "subscribed", "{r}");
        }
    }
    for (channel, _) in &channels {
        for n in 1..=3 {
            let r = alice.publish(channel, json!({"n": n})).await?;
            anyhow::ensure!(r["type"] == "ack", "{r}");
        }
        for n in 4..=6 {
            let r = bob.publish(channel, json!({"n": n})).await?;
            anyhow::ensure!(r["type"] == "ack", "{r}");
        }
    }
    let first = |channel: &str| {
        vec!["channel_occupied".to_owned(), "member_joined alice".to_owned(), "member_joined bob".to_owned()]
            .into_iter()
            .chain((1..=6).map(|n| format!("message {n}")))
            .map(move |s| (channel.to_owned(), s))
            .collect::<Vec<_>>()
    };
    let wanted: Vec<(String, String)> = channels.iter().flat_map(|(ch, _)| first(ch)).collect();
    let events = wait_for(&seen, "the first 27 events", |e| e.len() >= wanted.len()).await?;
    for (channel, owner) in &channels {
        let mut s = story(&events, channel);
        // A remote member's join and the subscribe that occupies travel separately:
        // only their set is fixed.
        s[0..3].sort();
        assert_eq!(s, first(channel).into_iter().map(|(_, s)| s).collect::<Vec<_>>(), "{channel}");
        for (node, e) in events.iter().filter(|(_, e)| e["channel"] == *channel) {
            assert_eq!(node, owner, "sent by the channel's owner: {e}");
        }
    }

    // Carol leaves a lobby owned by node-1 just before node-1 drains: her pending leave
    // moves with the slot and is sent once, by the new owner, when her grace ends.
    let lobby = c.channel_owned_by("lobby", "node-1").await?;
    let (mut carol, _) = WsClient::connect(&c.nodes[0].ws_url(), Some(&token("carol"))).await?;
    let r = carol.subscribe(&lobby, None).await?;
    anyhow::ensure!(r["type"] == "subscribed", "{r}");
    wait_for(&seen, "carol's join", |e| story(e, &lobby) == ["member_joined carol"]).await?;
    drop(carol);

    // The slot of `moved` is handed off: its new owner inherits what was reported.
    c.drain_moving(1, &moved).await?;
    let new_owner = c.owner_of(&moved).await?;
    let r = alice.publish(&moved, json!({"n": 7})).await?;
    anyhow::ensure!(r["type"] == "ack", "{r}");

    // Everyone leaves: members leave and channels empty, after their graces.
    drop(alice);
    drop(bob);
    let total = wanted.len() + 1 + 3 * 3 + 2;
    let events = wait_for(&seen, "every leave and vacancy", |e| e.len() >= total).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events_after = accepted(&seen)?;
    assert_eq!(events_after.len(), events.len(), "nothing more: {:#?}", &events_after[events.len()..]);

    for (channel, owner) in &channels {
        let s = story(&events, channel);
        let tail: Vec<&str> = s[9..].iter().map(String::as_str).collect();
        let mut leaves: Vec<&str> = tail.iter().copied().filter(|t| t.starts_with("member_left")).collect();
        leaves.sort_unstable();
        assert_eq!(leaves, ["member_left alice", "member_left bob"], "{channel}: {s:?}");
        assert_eq!(tail.last(), Some(&"channel_vacated"), "{channel}: {s:?}");
        let expected_tail = if *channel == moved { 4 } else { 3 };
        assert_eq!(tail.len(), expected_tail, "{channel}: {s:?}");
        let sender = if *channel == moved { new_owner.as_str() } else { *owner };
        for (node, e) in events.iter().filter(|(_, e)| e["channel"] == *channel).skip(9) {
            assert_eq!(node, sender, "sent by the channel's owner at the time: {e}");
        }
    }
    assert!(story(&events, &moved).contains(&"message 7".to_owned()), "the new owner reports its messages");
    assert_eq!(story(&events, &lobby), ["member_joined carol", "member_left carol"]);
    let lobby_owner = c.owner_of(&lobby).await?;
    let left_by: Vec<&str> = events.iter().filter(|(_, e)| e["channel"] == *lobby).map(|(n, _)| n.as_str()).collect();
    assert_eq!(left_by, ["node-1", lobby_owner.as_str()], "the join from the old owner, the leave from the new");

    // Exactly once: unique ids, and the 500s were retried with the same events.
    let ids: Vec<&str> = events.iter().map(|(_, e)| e["id"].as_str().unwrap_or_default()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "every event once");
    {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        assert_eq!(seen.bad_signatures, 0, "every batch is signed");
        let failed: Vec<&(u32, u16, Vec<String>)> = seen.attempts.iter().filter(|a| a.1 == 500).collect();
        assert_eq!(failed.len(), 2);
        for (attempt, _, ids) in &failed {
            let retried = seen.attempts.iter().any(|a| a.0 > *attempt && a.1 == 200 && a.2 == *ids);
            assert!(retried, "the batch {ids:?} was retried unchanged and accepted: {:?}", seen.attempts);
        }
        let batched = seen.accepted.iter().filter(|(_, e)| e.len() > 1).count();
        assert!(batched > 0, "events are batched");
    }
    // node-1 drained and exited; the others sent everything and gave nothing up.
    for i in [0, 2] {
        assert_eq!(c.nodes[i].metric("ringcast_webhook_dead_letters_total").await?, 0.0);
        assert_eq!(c.nodes[i].metric("ringcast_webhook_pending").await?, 0.0);
        assert!(c.nodes[i].metric("ringcast_webhook_delivered_total").await? > 0.0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_gets_retries_for_a_bounded_time_then_dead_letters() -> Result<()> {
    let (addr, seen) = backend(None, 503).await?;
    let node = Ringcastd::start(&base_config(&config(addr, "2s")))?;
    let (mut alice, _) = WsClient::connect(&node.ws_url(), Some(&token("alice"))).await?;
    alice.subscribe("room:a", None).await?;
    let r = alice.publish("room:a", json!({"n": 1})).await?;
    anyhow::ensure!(r["type"] == "ack", "{r}");
    // occupied, joined, message: retried until 2 s after the first try.
    node.wait_metric("ringcast_webhook_dead_letters_total", |v| v >= 3.0).await?;
    {
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let attempts: Vec<u32> = seen.attempts.iter().map(|a| a.0).collect();
        assert!(attempts.len() >= 2 && attempts[..2] == [1, 2], "retried with backoff: {attempts:?}");
        assert!(seen.accepted.is_empty());
    }
    // The node serves its clients all along, and later events go on being sent.
    let r = alice.publish("room:a", json!({"n": 2})).await?;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(alice.messages(2).await?.len(), 2);
    node.wait_metric("ringcast_webhook_requests_total{result=\"failed\"}", |v| v >= 4.0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_is_not_retried_and_config_errors_name_the_field() -> Result<()> {
    let (addr, seen) = backend(None, 401).await?;
    let node = Ringcastd::start(&base_config(&config(addr, "5m")))?;
    let (mut alice, _) = WsClient::connect(&node.ws_url(), Some(&token("alice"))).await?;
    alice.subscribe("room:b", None).await?;
    node.wait_metric("ringcast_webhook_dead_letters_total", |v| v >= 2.0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.attempts.clone();
    assert!(attempts.iter().all(|a| a.0 == 1), "a 4xx is final: {attempts:?}");

    for (extra, field) in [
        ("[namespaces.room]\nwebhooks = [\"occupancy\"]\n", "namespaces.room.webhooks"),
        ("[namespaces.room]\nwebhooks = [\"presence\"]\n[webhooks]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"0123456789abcdef\"\n", "namespaces.room.webhooks"),
        ("[webhooks]\nurl = \"http://127.0.0.1:1/\"\n", "webhooks.secret"),
        ("[webhooks]\nurl = \"https://example.com/\"\nsecret = \"0123456789abcdef\"\n", "webhooks.url"),
    ] {
        let (code, stderr) = run_to_exit(Some(&base_config(extra)), &[])?;
        assert_eq!(code, Some(64), "{stderr}");
        assert!(stderr.contains(field), "{field} named in: {stderr}");
    }
    let (code, stderr) = run_to_exit(Some(&base_config("[namespaces.room]\nwebhooks = [\"typing\"]\n")), &[])?;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("typing"), "{stderr}");
    Ok(())
}
