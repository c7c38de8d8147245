//! Presence, join/leave, typing and the user registry on a real 3-node cluster (real
//! etcd, real `ringcastd` processes, real WebSocket clients).

use anyhow::{bail, Context, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::{http, token, unix_now, WsClient, API_KEY};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A chat namespace with presence and join/leave, and a short grace so tests are quick.
const ROOM: &str = r#"
[namespaces.room]
presence = true
join_leave = true
presence_grace = "3s"
"#;
const GRACE: Duration = Duration::from_secs(3);

/// A token for `user` with every capability on `room:*` and an `info` claim.
fn tok(user: &str) -> String {
    token(&json!({
        "sub": user,
        "exp": unix_now() + 600,
        "caps": {"subscribe": ["room:*"], "publish": ["room:*"], "presence": ["room:*"]},
        "info": {"name": user},
    }))
}

async fn member(c: &TestCluster, node: usize, user: &str, channel: &str) -> Result<WsClient> {
    let (mut ws, reply) = WsClient::connect(&c.nodes[node].ws_url(), Some(&tok(user))).await?;
    anyhow::ensure!(reply["type"] == "connected", "connect: {reply}");
    let r = ws.subscribe(channel, None).await?;
    anyhow::ensure!(r["type"] == "subscribed", "subscribe: {r}");
    Ok(ws)
}

/// Pushes of `kinds` (`join`, `leave`, `typing`) received within `wait`, as
/// `(type, user)`.
async fn events_within(ws: &mut WsClient, kinds: &[&str], wait: Duration) -> Vec<(String, String)> {
    let until = Instant::now() + wait;
    let mut out = Vec::new();
    while let Ok(Ok(p)) = tokio::time::timeout(until.saturating_duration_since(Instant::now()), ws.next_push()).await {
        let kind = p["type"].as_str().unwrap_or_default();
        if kinds.contains(&kind) {
            out.push((kind.to_owned(), p["user"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out
}

/// Waits for a push of `kind` for `user`, failing after `wait`; returns what came
/// before it (of `join`/`leave`/`typing`) too.
async fn expect_event(ws: &mut WsClient, kind: &str, user: &str, wait: Duration) -> Result<Vec<(String, String)>> {
    let until = Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let p = tokio::time::timeout(left, ws.next_push())
            .await
            .with_context(|| format!("no {kind} for {user} within {wait:?}; saw {seen:?}"))??;
        let (k, u) = (p["type"].as_str().unwrap_or_default(), p["user"].as_str().unwrap_or_default());
        if ["join", "leave", "typing"].contains(&k) {
            seen.push((k.to_owned(), u.to_owned()));
        }
        if k == kind && u == user {
            assert_eq!(p["info"], json!({"name": user}), "the event carries the token's info: {p}");
            return Ok(seen);
        }
    }
}

/// `GET /v1/channels/{channel}/presence` on node `i`, as `(node, user)` pairs.
async fn presence_on(c: &TestCluster, i: usize, channel: &str) -> Result<(Value, BTreeSet<(String, String)>)> {
    let r = http(
        c.nodes[i].addr,
        "GET",
        &format!("/v1/channels/{channel}/presence"),
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await?;
    anyhow::ensure!(r.status == 200, "presence on node {i}: {} {}", r.status, r.body);
    let body = r.json();
    let members = body["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| (m["node"].as_str().unwrap_or_default().to_owned(), m["user"].as_str().unwrap_or_default().to_owned()))
        .collect();
    Ok((body, members))
}

/// Polls node `i`'s presence answer until it lists exactly `want`.
async fn wait_presence(c: &TestCluster, i: usize, channel: &str, want: &[(&str, &str)]) -> Result<()> {
    let want: BTreeSet<(String, String)> = want.iter().map(|(n, u)| ((*n).to_owned(), (*u).to_owned())).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = presence_on(c, i, channel).await.map(|(_, m)| m);
        if got.as_ref().is_ok_and(|m| *m == want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("presence on node {i} never became {want:?}; last {got:?}\n{}", c.node_logs(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn api_get(c: &TestCluster, i: usize, path: &str) -> Result<Value> {
    let r = http(c.nodes[i].addr, "GET", path, &[("Authorization", &format!("Bearer {API_KEY}"))], "").await?;
    anyhow::ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.body);
    Ok(r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_joins_leaves_and_typing_across_nodes() -> Result<()> {
    let c = TestCluster::start(3, ROOM).await?;
    let ch = c.channel_owned_by("room", "node-0").await?;

    // carol watches from the owner; alice and bob join through the other nodes.
    let mut carol = member(&c, 0, "carol", &ch).await?;
    expect_event(&mut carol, "join", "carol", Duration::from_secs(5)).await?;
    let mut alice = member(&c, 1, "alice", &ch).await?;
    expect_event(&mut carol, "join", "alice", Duration::from_secs(5)).await?;
    let mut bob = member(&c, 2, "bob", &ch).await?;
    expect_event(&mut carol, "join", "bob", Duration::from_secs(5)).await?;

    // Every node answers with the same members, wherever they are connected.
    let all = [("node-0", "carol"), ("node-1", "alice"), ("node-2", "bob")];
    for i in 0..3 {
        wait_presence(&c, i, &ch, &all).await?;
    }
    let (body, _) = presence_on(&c, 1, &ch).await?;
    assert_eq!((body["clients"].as_u64(), body["users"].as_u64()), (Some(3), Some(3)));
    let stats = alice.request(json!({"type": "presence_stats", "channel": ch})).await?;
    assert_eq!(
        (stats["type"].as_str(), stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some("presence_stats"), Some(3), Some(3))
    );
    let p = bob.request(json!({"type": "presence", "channel": ch})).await?;
    assert_eq!(p["members"].as_array().map(Vec::len), Some(3), "{p}");

    // alice flaps 10 times, across two nodes, always back within the grace: no join,
    // no leave.
    drop(alice);
    let mut last = None;
    for i in 0..10 {
        let node = if i % 2 == 0 { 2 } else { 1 };
        // Dropping the previous connection closes it; the next one is already open.
        last = Some(member(&c, node, "alice", &ch).await?);
    }
    let mut alice = last.context("alice reconnected")?;
    let flapping = events_within(&mut carol, &["join", "leave"], GRACE + Duration::from_secs(2)).await;
    assert_eq!(flapping, vec![], "a flapping user produces no join or leave");
    wait_presence(&c, 0, &ch, &all).await?;

    // Typing: ephemeral, to everyone subscribed, one per second per user.
    let t = bob.request(json!({"type": "typing", "channel": ch})).await?;
    assert_eq!(t["type"], "typing_sent", "{t}");
    expect_event(&mut carol, "typing", "bob", Duration::from_secs(5)).await?;
    expect_event(&mut alice, "typing", "bob", Duration::from_secs(5)).await?;
    bob.request(json!({"type": "typing", "channel": ch})).await?;
    let again = events_within(&mut carol, &["typing"], Duration::from_millis(600)).await;
    assert_eq!(again, vec![], "a second typing within a second is dropped by the owner");
    let history = api_get(&c, 1, &format!("/v1/channels/{ch}/history")).await?;
    assert_eq!(history["messages"], json!([]), "typing is never stored: {history}");
    let unsubscribed = WsClient::connect(&c.nodes[1].ws_url(), Some(&tok("eve")))
        .await?
        .0
        .request(json!({"type": "typing", "channel": ch}))
        .await?;
    assert_eq!(unsubscribed["error"]["code"], "not_subscribed", "{unsubscribed}");

    // Node 2 (bob's) dies: bob leaves once, after the grace; nobody else does.
    let killed_at = Instant::now();
    c.nodes[2].signal("KILL")?;
    let seen = expect_event(&mut carol, "leave", "bob", Duration::from_secs(30)).await?;
    assert!(killed_at.elapsed() >= GRACE, "the leave waited for the grace");
    assert_eq!(seen, vec![("leave".to_owned(), "bob".to_owned())], "only bob left");
    let after = events_within(&mut carol, &["join", "leave"], GRACE + Duration::from_secs(2)).await;
    assert_eq!(after, vec![], "a leave is sent once");
    wait_presence(&c, 0, &ch, &[("node-0", "carol"), ("node-1", "alice")]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_every_connection_and_the_registry_answers() -> Result<()> {
    let c = TestCluster::start(3, ROOM).await?;
    let (mut a, reply) = WsClient::connect(&c.nodes[1].ws_url(), Some(&tok("dave"))).await?;
    assert_eq!(reply["user_channel"], "#user:dave", "{reply}");
    assert_eq!(a.registry.as_ref().map(|r| r["type"].clone()), Some(json!("subscribed")), "{:?}", a.registry);
    let (mut b, _) = WsClient::connect(&c.nodes[2].ws_url(), Some(&tok("dave"))).await?;

    let user = api_get(&c, 0, "/v1/users/dave").await?;
    assert_eq!((user["online"].as_bool(), user["connections"].as_u64()), (Some(true), Some(2)), "{user}");
    assert_eq!(user["nodes"].as_array().map(Vec::len), Some(2), "connections on two nodes: {user}");
    assert_eq!(user["last_seen"], Value::Null);

    // A direct message is a publish to #user:dave, delivered to both connections.
    let dm = |n: u64| json!({"channel": "#user:dave", "data": {"dm": n}}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let r = http(c.nodes[0].addr, "POST", "/v1/publish", &[("Authorization", &auth)], &dm(1)).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = a.messages(1).await?.remove(0);
    assert_eq!((first["channel"].as_str(), first["data"].clone()), (Some("#user:dave"), json!({"dm": 1})));
    assert_eq!(b.messages(1).await?[0]["data"], json!({"dm": 1}));

    // Missed while away, recovered on reconnect like any channel.
    drop(a);
    let r = http(c.nodes[0].addr, "POST", "/v1/publish", &[("Authorization", &auth)], &dm(2)).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut a = WsClient::open(&c.nodes[0].ws_url()).await?;
    let since = json!({"epoch": first["epoch"], "offset": first["offset"]});
    a.connect_with(Some(&tok("dave")), Some(since)).await?;
    let registry = a.registry.clone().context("registry push")?;
    assert_eq!((registry["recovered"].as_bool(), registry["replayed"].as_u64()), (Some(true), Some(1)), "{registry}");
    assert_eq!(a.messages(1).await?[0]["data"], json!({"dm": 2}));

    // Clients cannot name registry channels themselves.
    let refused = a.request(json!({"type": "subscribe", "channel": "#user:mallory"})).await?;
    assert_eq!(refused["error"]["code"], "invalid_channel", "{refused}");

    // Offline: last seen is when the last connection closed.
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let user = api_get(&c, 2, "/v1/users/dave").await?;
        if user["online"] == false {
            let seen = user["last_seen"].as_u64().context("last_seen once offline")?;
            let now_ms = unix_now() * 1000;
            assert!(seen <= now_ms + 1000 && seen + 30_000 >= now_ms, "last_seen {seen} vs now {now_ms}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "dave never went offline: {user}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nobody = api_get(&c, 1, "/v1/users/nobody").await?;
    assert_eq!((nobody["online"].as_bool(), nobody["last_seen"].clone()), (Some(false), Value::Null));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_rebuilt_after_a_drain_and_a_crash() -> Result<()> {
    let c = TestCluster::start(3, ROOM).await?;
    let ch = c.channel_owned_by("room", "node-2").await?;
    let _a = member(&c, 0, "ann", &ch).await?;
    let _b = member(&c, 1, "ben", &ch).await?;
    let _c = member(&c, 2, "cat", &ch).await?;
    wait_presence(&c, 0, &ch, &[("node-0", "ann"), ("node-1", "ben"), ("node-2", "cat")]).await?;

    // The owner drains: its slots move with a handoff, its clients are closed. The new
    // owner rebuilds the presence from its own clients and the others' re-announcements.
    c.drain(2).await?;
    wait_presence(&c, 0, &ch, &[("node-0", "ann"), ("node-1", "ben")]).await?;
    wait_presence(&c, 1, &ch, &[("node-0", "ann"), ("node-1", "ben")]).await?;

    // The new owner crashes: the survivor takes the slot over and knows its own client.
    let owner = c.owner_of(&ch).await?;
    let (dead, survivor, left) = if owner == "node-0" { (0, 1, "ben") } else { (1, 0, "ann") };
    c.nodes[dead].signal("KILL")?;
    let node = format!("node-{survivor}");
    wait_presence(&c, survivor, &ch, &[(node.as_str(), left)]).await?;
    Ok(())
}
