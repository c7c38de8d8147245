//! A real cluster behaves, for clients, like one big node: real etcd, real nodes, real
//! QUIC links with mutual TLS, real WebSocket and HTTP clients.

use anyhow::Result;
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::{json, Value};

/// The node holding `channel`'s slot, as node 0 reports it.
async fn owner_of(c: &TestCluster, channel: &str) -> Result<String> {
    let r = http(c.nodes[0].addr, "GET", &format!("/v1/channels/{channel}"), &[("Authorization", &format!("Bearer {API_KEY}"))], "")
        .await?;
    Ok(r.json()["owner"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn slots_are_claimed_once_and_spread_evenly() -> Result<()> {
    let c = TestCluster::start(3, "").await?;
    let views: Vec<Value> = vec![c.view(0).await?, c.view(1).await?, c.view(2).await?];
    assert!(views.iter().all(|v| v["slots"] == views[0]["slots"]), "every node sees the same claims: {views:?}");
    let counts: Vec<u64> = views[0]["slots"].as_object().map(|m| m.values().filter_map(Value::as_u64).collect()).unwrap_or_default();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts.iter().sum::<u64>(), 1024);
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    assert!(max / (1024.0 / 3.0) <= 1.25, "balanced: {counts:?}");

    // 1,000 channels land on all three owners, roughly evenly.
    let mut per_owner = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let ch = format!("chat:room{i}");
        let slot = http(c.nodes[1].addr, "GET", &format!("/v1/channels/{ch}"), &[("Authorization", &format!("Bearer {API_KEY}"))], "")
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
        futures_util::future::try_join_all(channels.iter().map(|ch| owner_of(&c, ch))).await?.into_iter().collect();
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
    assert_eq!(offsets(r.json()["messages"].as_array().map(Vec::as_slice).unwrap_or_default()), vec![16, 17, 18, 19, 20]);
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
