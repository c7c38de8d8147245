//! Keep-latest state on a real 3-node cluster: a late viewer starts from the current
//! scores (a `snapshot` consistent with the stream) and continues with no gap; the state
//! moves with a drain and survives an owner crash (durable namespace); viewers that ask
//! for deltas rebuild every version from merge patches, on the owner and on other nodes.

use anyhow::{Context, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::{http, WsClient, API_KEY};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const BOARD: &str = r#"
[namespaces.board]
anonymous = true
client_publish = false
keep_latest = true
durable = true
history_size = 5
"#;

async fn publish(c: &TestCluster, node: usize, channel: &str, key: &str, score: u64) -> Result<Value> {
    let body = json!({"channel": channel, "key": key, "data": {"game": key, "score": score}}).to_string();
    let r = http(c.nodes[node].addr, "POST", "/v1/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], &body)
        .await?;
    anyhow::ensure!(r.status == 200, "publish: {} {}", r.status, r.body);
    Ok(r.json())
}

/// `GET /v1/channels/{channel}/state` on node `i`, as game -> score, with its offset.
async fn state_on(c: &TestCluster, i: usize, channel: &str) -> Result<(u64, BTreeMap<String, u64>)> {
    let r = http(c.nodes[i].addr, "GET", &format!("/v1/channels/{channel}/state"), &[], "").await?;
    anyhow::ensure!(r.status == 200, "state on node {i}: {} {}", r.status, r.body);
    let v = r.json();
    Ok((v["offset"].as_u64().context("offset")?, scores(&v["entries"])))
}

fn scores(entries: &Value) -> BTreeMap<String, u64> {
    entries
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["key"].as_str().unwrap_or_default().to_owned(), e["data"]["score"].as_u64().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewer_gets_the_current_scores_then_every_update() -> Result<()> {
    let c = TestCluster::start(3, BOARD).await?;
    let ch = c.channel_owned_by("board", "node-0").await?;
    let mut want = BTreeMap::new();
    for round in 1..=4u64 {
        for g in 1..=5 {
            let key = format!("g{g}");
            publish(&c, 1, &ch, &key, round * 10 + g).await?;
            want.insert(key, round * 10 + g);
        }
    }
    // 20 updates, history keeps 5: the state still has every game.
    let (mut viewer, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    let reply = viewer.subscribe(&ch, None).await?;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let snap = viewer.next_push().await?;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["offset"], reply["offset"], "the snapshot is at the reply's position");
    assert_eq!(snap["epoch"], reply["epoch"]);
    assert_eq!(scores(&snap["entries"]), want, "{snap}");
    let at = snap["offset"].as_u64().context("offset")?;
    assert_eq!(at, 20);

    // Live updates continue right after the snapshot's offset.
    publish(&c, 0, &ch, "g3", 999).await?;
    publish(&c, 2, &ch, "g6", 1).await?;
    let live = viewer.messages(2).await?;
    assert_eq!(live.iter().map(|m| m["offset"].as_u64()).collect::<Vec<_>>(), [Some(at + 1), Some(at + 2)]);
    assert_eq!((live[0]["key"].as_str(), live[0]["data"]["score"].as_u64()), (Some("g3"), Some(999)));

    // Resuming with `since` replays instead; `snapshot: true` asks for the state too.
    let (mut again, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    let since = json!({"epoch": reply["epoch"], "offset": at});
    let r = again.request(json!({"type": "subscribe", "channel": ch, "since": since, "snapshot": true})).await?;
    assert_eq!(r["recovered"], true, "{r}");
    let replayed = again.messages(2).await?;
    assert_eq!(replayed[1]["offset"].as_u64(), Some(at + 2));
    let snap = again.next_push().await?;
    assert_eq!((snap["type"].as_str(), snap["offset"].as_u64()), (Some("snapshot"), Some(at + 2)));
    assert_eq!(scores(&snap["entries"]).len(), 6);

    // Over HTTP from any node: the same state.
    want.insert("g3".into(), 999);
    want.insert("g6".into(), 1);
    for i in 0..3 {
        assert_eq!(state_on(&c, i, &ch).await?, (at + 2, want.clone()), "state on node {i}");
    }
    let r = http(c.nodes[0].addr, "GET", "/v1/channels/chat:x/state", &[], "").await?;
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (400, json!("not_enabled")), "{}", r.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_moves_with_a_drain_and_survives_an_owner_crash() -> Result<()> {
    let c = TestCluster::start(3, BOARD).await?;
    let ch = c.channel_owned_by("board", "node-2").await?;
    let mut want = BTreeMap::new();
    for g in 1..=8u64 {
        publish(&c, 0, &ch, &format!("g{g}"), g).await?;
        want.insert(format!("g{g}"), g);
    }
    c.drain_moving(2, &ch).await?;
    assert_eq!(state_on(&c, 0, &ch).await?, (8, want.clone()), "after the drain");
    publish(&c, 1, &ch, "g1", 100).await?;
    want.insert("g1".into(), 100);

    // The new owner crashes: its replica continues the channel with the state.
    let owner = c.owner_of(&ch).await?;
    let (dead, alive) = if owner == "node-0" { (0, 1) } else { (1, 0) };
    c.nodes[dead].signal("KILL")?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match state_on(&c, alive, &ch).await {
            Ok(s) if s == (9, want.clone()) => break,
            other => {
                anyhow::ensure!(Instant::now() < deadline, "state after the crash: {other:?}\n{}", c.node_logs(20));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_publish_is_acked_per_item_in_order_across_owners() -> Result<()> {
    let c = TestCluster::start(3, BOARD.replace("durable = true\n", "").as_str()).await?;
    let channels: Vec<String> = (0..6).map(|i| format!("board:league-{i}")).collect();
    let (mut viewer, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    viewer.subscribe(&channels[0], None).await?;
    let items: Vec<Value> =
        (0..60).map(|i| json!({"channel": channels[i % 6], "key": format!("g{}", i % 4), "data": {"n": i}})).collect();
    let auth = format!("Bearer {API_KEY}");
    let r = http(
        c.nodes[2].addr,
        "POST",
        "/v1/publish/batch",
        &[("Authorization", &auth)],
        &json!({"items": items}).to_string(),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().cloned().context("results")?;
    assert_eq!(results.len(), 60);
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["channel"], json!(channels[i % 6]), "results in item order: {res}");
        let want = next.entry(channels[i % 6].clone()).or_insert(1);
        assert_eq!(res["offset"].as_u64(), Some(*want), "a channel's items keep their order: {res}");
        *want += 1;
    }
    let owners: std::collections::BTreeSet<String> =
        futures_util::future::join_all(channels.iter().map(|ch| c.owner_of(ch)))
            .await
            .into_iter()
            .collect::<Result<_>>()?;
    assert!(owners.len() > 1, "the batch spanned several owners: {owners:?}");
    let got = viewer.messages(10).await?;
    assert_eq!(
        got.iter().map(|m| m["data"]["n"].as_u64().unwrap_or(99)).collect::<Vec<_>>(),
        (0..60).step_by(6).collect::<Vec<u64>>()
    );

    // One bad item refuses the whole batch before anything is published.
    let bad = json!({"items": [{"channel": "board:league-0", "data": 1}, {"channel": "board:bad name", "data": 2}]});
    let r = http(c.nodes[0].addr, "POST", "/v1/publish/batch", &[("Authorization", &auth)], &bad.to_string()).await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("items[1]"), "the error names the item: {}", r.body);
    assert_eq!(state_on(&c, 0, "board:league-0").await?.0, 10, "nothing was published");
    Ok(())
}

const LIVE: &str = r#"
[namespaces.live]
anonymous = true
client_publish = false
keep_latest = true
delta = true
history_size = 50

[namespaces.plain]
anonymous = true
keep_latest = true
"#;

/// A full game state: every update changes the clock, some the score.
fn game(i: u64) -> Value {
    json!({
        "home": {"team": "Lakers", "score": 100 + i / 3, "fouls": 2},
        "away": {"team": "Celtics", "score": 98 + i / 5, "fouls": 4},
        "period": 4,
        "clock": format!("{}:{:02}", 9 - i / 60, 59 - i % 60),
        "last": format!("play {i}"),
    })
}

/// Reads `n` messages of one key, rebuilding the data from the snapshot entry (`held`, at
/// offset `at`) and the patches; returns the versions and how many came as patches.
async fn rebuild(viewer: &mut WsClient, (mut held, at): (Value, u64), n: usize) -> Result<(Vec<Value>, usize)> {
    let mut versions = Vec::new();
    let mut patches = 0;
    let mut last = Some(at);
    for m in viewer.messages(n).await? {
        if let Some(patch) = m.get("patch") {
            assert_eq!(m["base"].as_u64(), last, "a patch against the version held: {m}");
            ringcast_core::delta::apply(&mut held, patch);
            patches += 1;
        } else {
            held = m["data"].clone();
        }
        last = m["offset"].as_u64();
        versions.push(held.clone());
    }
    Ok((versions, patches))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_viewers_rebuild_every_version_from_patches_on_any_node() -> Result<()> {
    let c = TestCluster::start(3, LIVE).await?;
    let ch = c.channel_owned_by("live", "node-0").await?;
    let auth = format!("Bearer {API_KEY}");
    let send = |i: u64| {
        let body = json!({"channel": ch, "key": "game-1", "data": game(i)}).to_string();
        let auth = auth.clone();
        let addr = c.nodes[1].addr;
        async move {
            let r = http(addr, "POST", "/v1/publish", &[("Authorization", &auth)], &body).await?;
            anyhow::ensure!(r.status == 200, "publish: {} {}", r.status, r.body);
            Ok::<_, anyhow::Error>(())
        }
    };
    send(0).await?;
    // On the owner and on a node that mirrors it.
    let mut viewers = Vec::new();
    for node in [0, 2] {
        let (mut v, _) = WsClient::connect(&c.nodes[node].ws_url(), None).await?;
        let r = v.request(json!({"type": "subscribe", "channel": ch, "delta": true})).await?;
        assert_eq!(r["type"], "subscribed", "{r}");
        let snap = v.next_push().await?;
        assert_eq!(snap["entries"][0]["data"], game(0), "{snap}");
        let at = snap["entries"][0]["offset"].as_u64().context("entry offset")?;
        viewers.push((v, (snap["entries"][0]["data"].clone(), at)));
    }
    for i in 1..=30 {
        send(i).await?;
    }
    let want: Vec<Value> = (1..=30).map(game).collect();
    for (node, (mut v, held)) in [0, 2].into_iter().zip(viewers) {
        let (versions, patches) = rebuild(&mut v, held, 30).await?;
        assert_eq!(versions, want, "node {node}: every version rebuilt");
        assert!(patches >= 29, "node {node}: updates after the first come as patches ({patches})");
    }
    assert!(c.nodes[0].metric("ringcast_deltas_total").await? >= 30.0);

    // `state` answers the current entry of one key (for a client that lost its base).
    let (mut v, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    let st = v.request(json!({"type": "state", "channel": ch, "key": "game-1"})).await?;
    assert_eq!((st["type"].as_str(), st["entries"][0]["data"].clone()), (Some("state"), game(30)), "{st}");
    let none = v.request(json!({"type": "state", "channel": ch, "key": "nope"})).await?;
    assert_eq!(none["entries"], json!([]), "{none}");
    // Deltas are opt-in per namespace.
    let r = v.request(json!({"type": "subscribe", "channel": "plain:x", "delta": true})).await?;
    assert_eq!(r["error"]["code"], "not_enabled", "{r}");
    let r = v.request(json!({"type": "state", "channel": "chat:x"})).await?;
    assert!(r.get("error").is_some(), "{r}");
    Ok(())
}
