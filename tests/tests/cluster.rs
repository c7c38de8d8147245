//! A real cluster behaves, for clients, like one big node: real etcd, real nodes, real
//! QUIC links with mutual TLS, real WebSocket and HTTP clients.

use anyhow::Result;
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::{json, Value};

#[tokio::test]
async fn slots_are_claimed_once_and_spread_evenly() -> Result<()> {
    let c = TestCluster::start(3, "").await?;
    let views: Vec<Value> = vec![c.view(0).await?, c.view(1).await?, c.view(2).await?];
    assert!(views.iter().all(|v| v["slots"] == views[0]["slots"]), "every node sees the same claims: {views:?}");
    let counts: Vec<u64> =
        views[0]["slots"].as_object().map(|m| m.values().filter_map(Value::as_u64).collect()).unwrap_or_default();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts.iter().sum::<u64>(), 1024);
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    assert!(max / (1024.0 / 3.0) <= 1.25, "balanced: {counts:?}");

    // 1,000 channels land on all three owners, roughly evenly.
    let mut per_owner = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let ch = format!("chat:room{i}");
        let slot = http(
            c.nodes[1].addr,
            "GET",
            &format!("/v1/channels/{ch}"),
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            "",
        )
        .await?
        .json()["owner"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *per_owner.entry(slot).or_insert(0) += 1;
    }
    assert_eq!(per_owner.len(), 3, "{per_owner:?}");
    assert!(per_owner.values().all(|&n| n > 200), "{per_owner:?}");
    Ok(())
}

#[tokio::test]
async fn publish_anywhere_subscribe_anywhere_in_order() -> Result<()> {
    let c = TestCluster::start(3, "").await?;
    let channels: Vec<String> = (0..12).map(|i| format!("chat:x{i}")).collect();
    // Every (subscriber node, publisher node) pair, over channels owned by each node.
    let mut subs = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let (mut s, _) = WsClient::connect(&c.nodes[i % 3].ws_url(), None).await?;
        let r = s.subscribe(ch, None).await?;
        assert_eq!(r["type"], "subscribed", "{r}");
        subs.push(s);
    }
    let owners: std::collections::BTreeSet<String> =
        futures_util::future::try_join_all(channels.iter().map(|ch| c.owner_of(ch))).await?.into_iter().collect();
    assert!(owners.len() >= 2, "the channels span owners: {owners:?}");
    let mut publishers = Vec::new();
    for node in &c.nodes {
        publishers.push(WsClient::connect(&node.ws_url(), None).await?.0);
    }
    for n in 0..20 {
        for (i, ch) in channels.iter().enumerate() {
            let ack = publishers[(i + 1 + n) % 3].publish(ch, json!({"n": n})).await?;
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(ack["offset"], n + 1);
        }
    }
    for s in &mut subs {
        let got = s.messages(20).await?;
        assert_eq!(offsets(&got), (1..=20).collect::<Vec<u64>>());
        let data: Vec<i64> = got.iter().filter_map(|m| m["data"]["n"].as_i64()).collect();
        assert_eq!(data, (0..20).collect::<Vec<i64>>());
    }

    // History and recovery from any node.
    let ch = &channels[0];
    let r = http(c.nodes[2].addr, "GET", &format!("/v1/channels/{ch}/history?limit=5"), &[], "").await?;
    assert_eq!(
        offsets(r.json()["messages"].as_array().map(Vec::as_slice).unwrap_or_default()),
        vec![16, 17, 18, 19, 20]
    );
    let epoch = r.json()["epoch"].clone();
    for node in &c.nodes {
        let (mut late, _) = WsClient::connect(&node.ws_url(), None).await?;
        let r = late.subscribe(ch, Some(json!({"epoch": epoch, "offset": 15}))).await?;
        assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(5)), "{r}");
        assert_eq!(offsets(&late.messages(5).await?), vec![16, 17, 18, 19, 20]);
    }

    // An idempotent retry through another node gets the original ack.
    let body = |k: &str| json!({"channel": ch, "data": "once", "idempotency_key": k}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let a = http(c.nodes[0].addr, "POST", "/v1/publish", &[("Authorization", &auth)], &body("k1")).await?.json();
    let b = http(c.nodes[1].addr, "POST", "/v1/publish", &[("Authorization", &auth)], &body("k1")).await?.json();
    assert_eq!((a["offset"].clone(), b["offset"].clone(), b["duplicate"].clone()), (json!(21), json!(21), json!(true)));
    Ok(())
}

#[tokio::test]
async fn an_edge_node_serves_clients_but_owns_nothing() -> Result<()> {
    let mut c = TestCluster::start(2, "").await?;
    c.add_node("edge-0", "edge")?;
    c.wait_settled().await?;
    let v = c.view(2).await?;
    assert!(v["slots"].get("edge-0").is_none(), "{v}");
    let (mut s, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    s.subscribe("chat:via-edge", None).await?;
    let (mut p, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    assert_eq!(p.publish("chat:via-edge", json!(1)).await?["offset"], 1);
    assert_eq!(offsets(&s.messages(1).await?), vec![1]);
    Ok(())
}

#[tokio::test]
async fn the_cluster_survives_an_etcd_restart() -> Result<()> {
    let mut c = TestCluster::start(3, "").await?;
    let (mut s, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;
    s.subscribe("chat:etcd", None).await?;
    c.etcd.stop()?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c.etcd.restart()?;
    // Publishing works again once leases are confirmed (retried within the deadline).
    let (mut p, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    let mut ack = json!(null);
    for _ in 0..50 {
        ack = p.publish("chat:etcd", json!("after")).await?;
        if ack["type"] == "ack" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = s.messages(1).await?;
    assert_eq!(got[0]["data"], "after");
    c.wait_settled().await?;
    for n in &c.nodes {
        assert!(!n.stderr().contains("panicked"), "{}", n.stderr());
    }
    Ok(())
}

/// Publishes `rounds` messages on each channel through `url`, retrying a refused publish
/// with the same idempotency key; returns the acked offset per channel.
async fn publish_rounds(
    url: String,
    channels: Vec<String>,
    rounds: usize,
    pause: std::time::Duration,
) -> Result<Vec<u64>> {
    let (mut p, _) = WsClient::connect(&url, None).await?;
    let mut acked = vec![0u64; channels.len()];
    for n in 0..rounds {
        for (i, ch) in channels.iter().enumerate() {
            let cmd =
                json!({"type": "publish", "channel": ch, "data": {"n": n}, "idempotency_key": format!("{ch}-{n}")});
            let mut tries = 0;
            loop {
                let r = p.request(cmd.clone()).await?;
                if r["type"] == "ack" {
                    anyhow::ensure!(r["offset"].as_u64() == Some(acked[i] + 1), "gapless acks on {ch}: {r}");
                    acked[i] += 1;
                    break;
                }
                tries += 1;
                anyhow::ensure!(tries < 50 && error_code(&r) == "unavailable", "publish failed: {r}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(pause).await;
    }
    Ok(acked)
}

#[tokio::test]
async fn a_join_and_a_drain_move_slots_under_load_without_gap_or_duplicate() -> Result<()> {
    let mut c = TestCluster::start(2, "[limits]\ncommands_per_second = 10000\ncommand_burst = 10000\n").await?;
    let channels: Vec<String> = (0..24).map(|i| format!("chat:move{i}")).collect();
    let mut subs = Vec::new();
    for ch in &channels {
        let (mut s, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;
        assert_eq!(s.subscribe(ch, None).await?["type"], "subscribed");
        subs.push(s);
    }
    let load =
        tokio::spawn(publish_rounds(c.nodes[0].ws_url(), channels.clone(), 60, std::time::Duration::from_millis(50)));

    // A third node joins under load: about a third of the slots move to it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c.add_node("node-2", "core")?;
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        let v = c.view(0).await?;
        if v["slots"]["node-2"].as_u64().unwrap_or(0) >= 250 && v["vacant"] == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            let warn = |n: &Ringcastd| -> Vec<String> {
                n.stderr()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("handed") || l.contains("taken"))
                    .take(12)
                    .map(str::to_owned)
                    .collect()
            };
            anyhow::bail!(
                "slots did not move: {}\nnode-0: {:#?}\nnode-2: {:#?}",
                v["slots"],
                warn(&c.nodes[0]),
                warn(&c.nodes[2])
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Then node-1 drains (SIGTERM): its slots move to the others before it exits.
    c.nodes[1].terminate()?;
    let status = c.nodes[1].wait_exit(std::time::Duration::from_secs(40))?;
    assert_eq!(status.code(), Some(0), "{}", c.nodes[1].stderr());
    let v = c.view(0).await?;
    let log: Vec<String> =
        c.nodes[1].stderr().lines().filter(|l| l.contains("WARN") || l.contains("drain")).map(str::to_owned).collect();
    assert!(v["slots"].get("node-1").is_none() && v["vacant"] == 0, "node-1 handed everything off: {v}\n{log:#?}");

    let acked = load.await??;
    for ((s, ch), n) in subs.iter_mut().zip(&channels).zip(&acked) {
        let got = s.messages(*n as usize).await?;
        assert_eq!(offsets(&got), (1..=*n).collect::<Vec<u64>>(), "{ch}: every acknowledged message once, in order");
        let epochs: std::collections::HashSet<&str> = got.iter().filter_map(|m| m["epoch"].as_str()).collect();
        assert_eq!(epochs.len(), 1, "{ch}: the stream kept its epoch across handoffs");
    }
    let moved: f64 = c.nodes[0].metric("ringcast_handoffs_total").await?;
    assert!(moved > 0.0, "node-0 handed slots to node-2");
    Ok(())
}

#[tokio::test]
async fn the_ringcast_cli_operates_the_cluster() -> Result<()> {
    use ringcast_tests::cluster::ringcast;
    let c = TestCluster::start(3, "").await?;
    let node = format!("http://{}", c.nodes[1].addr);
    let cli = |args: &[&str]| -> Result<Value> {
        let mut all = vec!["--json", "--node", node.as_str(), "--api-key", API_KEY];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(ringcast(&all)?.trim())?)
    };
    let members = cli(&["members"])?;
    assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "{members}");
    let ring = cli(&["ring"])?;
    assert!(ring["max_over_mean"].as_f64().unwrap_or(9.0) <= 1.25, "{ring}");
    let owner = cli(&["owner", "chat:cli"])?;
    assert!(owner["owner"].as_str().is_some_and(|o| o.starts_with("node-")), "{owner}");
    let ack = cli(&["publish", "chat:cli", r#"{"n":1}"#, "--idempotency-key", "k"])?;
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_eq!(cli(&["publish", "chat:cli", r#"{"n":1}"#, "--idempotency-key", "k"])?["duplicate"], true);
    let page = cli(&["history", "chat:cli"])?;
    assert_eq!(page["messages"][0]["data"]["n"], 1, "{page}");
    // tail resumes from a position and prints the missed message.
    let since = format!("{}:0", ack["epoch"].as_str().unwrap_or_default());
    let tail = ringcast(&["--node", &node, "tail", "chat:cli", "--since", &since, "--count", "1"])?;
    assert!(tail.contains(r#"{"n":1}"#) && tail.contains("recovered"), "{tail}");
    // With a list of nodes it skips one that is down (the first here: nothing listens).
    let nodes = format!("http://127.0.0.1:1,{node}");
    let tail = ringcast(&["--node", &nodes, "tail", "chat:cli", "--since", &since, "--count", "1"])?;
    assert!(tail.contains(r#"{"n":1}"#), "{tail}");
    // Bad input is a usage error.
    assert!(ringcast(&["--node", &node, "--api-key", API_KEY, "publish", "chat:cli", "not json"]).is_err());
    // drain hands node-2's slots to the others and waits for it.
    let drained = cli(&["drain", "node-2"])?;
    assert_eq!(drained["status"], "drained", "{drained}");
    let ring = cli(&["ring"])?;
    assert!(ring["slots"].get("node-2").is_none() && ring["vacant"] == 0, "{ring}");
    Ok(())
}
