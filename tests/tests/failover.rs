//! Crash failover: durable channels survive the loss of their owner in the same epoch,
//! with no acknowledged message lost and no gap for subscribers on other nodes; best-
//! effort channels restart in a new epoch; and the explicit errors when a second copy
//! or etcd is missing.

use anyhow::{bail, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NAMESPACES: &str = "\n[namespaces.orders]\nanonymous = true\ndurable = true\nclient_publish_rate = 0\n";

/// Publishes with `key` until acknowledged (retrying refusals with the same key), as a
/// client that sees a failover would.
async fn publish_until_acked(p: &mut WsClient, channel: &str, data: Value, key: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = p.request(json!({"type": "publish", "channel": channel, "data": data, "idempotency_key": key})).await?;
        if r["type"] == "ack" {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("publish {key} never acknowledged; last answer {r}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_owner_fails_over_to_its_replica_in_the_same_epoch_without_a_gap() -> Result<()> {
    let c = TestCluster::start(3, NAMESPACES).await?;
    let durable = c.channel_owned_by("orders", "node-0").await?;
    let besteffort = c.channel_owned_by("chat", "node-0").await?;
    let (mut sub, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    assert_eq!(sub.subscribe(&durable, None).await?["type"], "subscribed");
    let (mut sub_be, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    assert_eq!(sub_be.subscribe(&besteffort, None).await?["type"], "subscribed");
    let (mut publisher, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    // A client of the node about to die, which knows the other nodes too.
    let urls: Vec<String> = c.nodes.iter().map(Ringcastd::ws_url).collect();
    let mut roaming = ringcast_client::Subscriber::new(ringcast_client::Config::new(urls.clone()), &[&durable]);
    assert!(matches!(roaming.next().await?, ringcast_client::Event::Connected { node, .. } if node == urls[0]));
    assert!(matches!(roaming.next().await?, ringcast_client::Event::Subscribed { recovered: None, .. }));

    let mut acks = Vec::new();
    for i in 1..=20 {
        acks.push(publish_until_acked(&mut publisher, &durable, json!(i), &format!("k{i}")).await?);
    }
    let epoch = acks[0]["epoch"].clone();
    assert!(acks.iter().enumerate().all(|(i, a)| a["epoch"] == epoch && a["offset"] == json!(i + 1)), "{acks:?}");
    let before = publisher.publish(&besteffort, json!("before")).await?;
    assert_eq!(before["type"], "ack");
    assert_eq!(sub_be.messages(1).await?[0]["data"], "before");

    c.nodes[0].signal("KILL")?;
    for i in 21..=40 {
        acks.push(publish_until_acked(&mut publisher, &durable, json!(i), &format!("k{i}")).await?);
    }
    assert!(
        acks.iter().enumerate().all(|(i, a)| a["epoch"] == epoch && a["offset"] == json!(i + 1)),
        "every acknowledged message kept its place in the same epoch: {acks:?}"
    );
    // A retry of a message acknowledged by the dead owner gets its original ack.
    let retry = publish_until_acked(&mut publisher, &durable, json!(5), "k5").await?;
    assert_eq!(
        (retry["epoch"].clone(), retry["offset"].clone(), retry["duplicate"].clone()),
        (epoch.clone(), json!(5), json!(true))
    );

    // The subscriber on a surviving node saw 1..=40 in one epoch, with no gap.
    let got = sub.messages(40).await?;
    assert!(got.iter().all(|m| m["epoch"] == epoch), "{got:?}");
    assert_eq!(offsets(&got), (1..=40).collect::<Vec<u64>>());

    // The killed node's client reconnected elsewhere and resumed with recovered: true,
    // each message once and in order.
    let mut delivered = Vec::new();
    let mut resumed = None;
    while delivered.len() < 40 {
        match roaming.next().await? {
            ringcast_client::Event::Message { at, .. } => {
                assert_eq!(json!(at.epoch), epoch);
                delivered.push(at.offset);
            }
            ringcast_client::Event::Subscribed { recovered, .. } if !delivered.is_empty() => resumed = Some(recovered),
            ringcast_client::Event::Connected { node, .. } => assert_ne!(node, urls[0], "not the dead node"),
            ringcast_client::Event::Disconnected { .. } | ringcast_client::Event::Subscribed { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, (1..=40).collect::<Vec<u64>>());
    assert_eq!(resumed, Some(Some(true)), "resumed from its position");

    // A client resuming anywhere recovers from the new owner's history.
    let (mut late, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    let r = late.subscribe(&durable, Some(json!({"epoch": epoch, "offset": 30}))).await?;
    assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(10)), "{r}");

    // The best-effort channel had one copy: it starts over in a new epoch.
    let after = publish_until_acked(&mut publisher, &besteffort, json!("after"), "b1").await?;
    assert_ne!(after["epoch"], before["epoch"], "{before} {after}");
    // Its live subscriber is told (recovered: false), then follows the new epoch.
    let told = sub_be.next_push().await?;
    assert_eq!((told["type"].as_str(), told["recovered"].as_bool()), (Some("resubscribed"), Some(false)), "{told}");
    assert_eq!((told["reason"].clone(), told["epoch"].clone()), (json!("epoch_changed"), after["epoch"].clone()));
    let next = sub_be.next_push().await?;
    assert_eq!((next["data"].clone(), next["epoch"].clone()), (json!("after"), after["epoch"].clone()), "{next}");
    let failovers =
        c.nodes[1].metric("ringcast_failovers_total").await? + c.nodes[2].metric("ringcast_failovers_total").await?;
    assert!(failovers >= 1.0);
    for n in &c.nodes[1..] {
        assert!(!n.stderr().contains("panicked"), "{}", n.stderr());
    }
    Ok(())
}

#[tokio::test]
async fn durable_publishes_fail_explicitly_without_a_replica_or_without_etcd() -> Result<()> {
    let mut c = TestCluster::start(2, NAMESPACES).await?;
    let channel = c.channel_owned_by("orders", "node-0").await?;
    let (mut p, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;
    assert_eq!(publish_until_acked(&mut p, &channel, json!(1), "a").await?["offset"], 1);

    // The only other core node dies: no second copy can be made.
    c.nodes[1].signal("KILL")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let r = p.request(json!({"type": "publish", "channel": channel, "data": 2})).await?;
        if error_code(&r) == "insufficient_replicas" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(error_code(&refused), "insufficient_replicas", "{refused}");

    // etcd goes away: the owner cannot confirm its lease and says so quickly.
    c.etcd.stop()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let started = Instant::now();
        let r = p.request(json!({"type": "publish", "channel": channel, "data": 3})).await?;
        if error_code(&r) == "coordination_unavailable" {
            assert!(started.elapsed() < Duration::from_secs(5), "answered fast, not after a hang");
            break r;
        }
        if Instant::now() > deadline {
            bail!("never coordination_unavailable; last {r}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(error_code(&refused), "coordination_unavailable");
    Ok(())
}

#[tokio::test]
async fn a_paused_owner_gets_nothing_acknowledged_or_delivered_under_its_old_epoch() -> Result<()> {
    let c = TestCluster::start(3, NAMESPACES).await?;
    let durable = c.channel_owned_by("orders", "node-0").await?;
    let besteffort = c.channel_owned_by("chat", "node-0").await?;
    let (mut zombie_client, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;
    let (mut publisher, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    let (mut sub, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    for ch in [&durable, &besteffort] {
        assert_eq!(sub.subscribe(ch, None).await?["type"], "subscribed");
    }
    let first = publish_until_acked(&mut publisher, &durable, json!("d1"), "d1").await?;
    publish_until_acked(&mut publisher, &besteffort, json!("b1"), "b1").await?;

    // Paused for twice the lease TTL (3 s): the others take its slots over meanwhile.
    c.nodes[0].signal("STOP")?;
    let mut acks = vec![(first, json!("d1"))];
    for i in 2..=6 {
        let data = json!(format!("d{i}"));
        acks.push((publish_until_acked(&mut publisher, &durable, data.clone(), &format!("d{i}")).await?, data));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.nodes[0].signal("CONT")?;

    // Its own client publishes at once, before it can have caught up: nothing may be
    // acknowledged under the old epoch at an offset the new owner also used.
    for i in 0..10 {
        for ch in [&durable, &besteffort] {
            let data = json!(format!("zombie{i}"));
            let r = zombie_client.request(json!({"type": "publish", "channel": ch, "data": data})).await;
            if let Ok(r) = r {
                if r["type"] == "ack" {
                    acks.push((r, data));
                }
            }
        }
    }
    for i in 7..=9 {
        let data = json!(format!("d{i}"));
        acks.push((publish_until_acked(&mut publisher, &durable, data.clone(), &format!("d{i}")).await?, data));
    }
    // No fork: one payload per (epoch, offset) among every ack...
    let mut at: std::collections::BTreeMap<(String, u64), Value> = std::collections::BTreeMap::new();
    for (ack, data) in &acks {
        let key = (ack["epoch"].as_str().unwrap_or_default().to_owned(), ack["offset"].as_u64().unwrap_or(0));
        if let Some(other) = at.insert(key.clone(), data.clone()) {
            assert_eq!(&other, data, "two payloads acknowledged at {key:?}");
        }
    }
    // ...and the subscriber saw the durable channel in one epoch, in order, with every
    // acknowledged message and nothing a zombie sequenced under the old epoch.
    let mut seen: Vec<(String, u64, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|(_, _, d)| d == "d9") {
        if Instant::now() > deadline {
            bail!("d9 never delivered: {seen:?}");
        }
        let m = sub.next_push().await?;
        if m["type"] == "message" && m["channel"] == durable.as_str() {
            seen.push((
                m["epoch"].as_str().unwrap_or_default().to_owned(),
                m["offset"].as_u64().unwrap_or(0),
                m["data"].clone(),
            ));
        }
    }
    let durable_acks: Vec<&(Value, Value)> = acks.iter().filter(|(a, _)| a["channel"] == durable.as_str()).collect();
    for (ack, data) in &durable_acks {
        let found = seen.iter().any(|(e, o, d)| ack["epoch"] == e.as_str() && ack["offset"] == *o && d == data);
        assert!(found, "acknowledged {data} at {ack} was delivered: {seen:?}");
    }
    let offsets: Vec<u64> = seen.iter().map(|(_, o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gap: {seen:?}");
    assert!(seen.iter().all(|(e, ..)| e == &seen[0].0), "one epoch: {seen:?}");
    Ok(())
}

#[tokio::test]
async fn an_owner_killed_and_restarted_at_once_does_not_take_its_slots_back_empty() -> Result<()> {
    let mut c = TestCluster::start(3, NAMESPACES).await?;
    let durable = c.channel_owned_by("orders", "node-0").await?;
    let (mut publisher, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    let mut acks = Vec::new();
    for i in 1..=10 {
        acks.push(publish_until_acked(&mut publisher, &durable, json!(i), &format!("r{i}")).await?);
    }
    // Killed and back under the same id before its old lease has expired: its first view
    // still shows its old claims, which name the replica that must continue them.
    c.nodes[0].signal("KILL")?;
    c.add_node("node-0", "core")?;
    for i in 11..=20 {
        let ack = publish_until_acked(&mut publisher, &durable, json!(i), &format!("r{i}")).await;
        acks.push(ack.map_err(|e| e.context(c.node_logs(40)))?);
    }
    let epoch = acks[0]["epoch"].clone();
    assert!(
        acks.iter().enumerate().all(|(i, a)| a["epoch"] == epoch && a["offset"] == json!(i + 1)),
        "the stream continued in its epoch: {acks:?}"
    );
    let (mut reader, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    let r = reader.subscribe(&durable, Some(json!({"epoch": epoch, "offset": 0}))).await?;
    assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(20)), "{r}");
    Ok(())
}
