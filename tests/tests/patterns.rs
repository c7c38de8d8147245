//! Pattern subscriptions (`psubscribe`) on real nodes: a dashboard sees every matching
//! channel whichever node owns it, in per-channel order and nothing else; it resumes
//! the channels it had after a reconnect; a node that joins later serves it too; and
//! the namespace, the token and the per-connection bound are enforced.

use anyhow::{bail, Context, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FEED: &str = r#"
[namespaces.feed]
client_publish = false
patterns = true
history_size = 100
"#;

/// A `feed:nba:{prefix}{i}` channel whose slot `owner` holds.
async fn nba_channel_owned_by(c: &TestCluster, prefix: &str, owner: &str) -> Result<String> {
    for i in 0..10_000 {
        let channel = format!("feed:nba:{prefix}{i}");
        if c.owner_of(&channel).await? == owner {
            return Ok(channel);
        }
    }
    bail!("no feed:nba channel owned by {owner}")
}

async fn publish(node: &Ringcastd, channel: &str, n: u64) -> Result<()> {
    let r = http_publish(node, channel, json!({"n": n})).await?;
    anyhow::ensure!(r.status == 200, "publish to {channel}: {} {}", r.status, r.body);
    Ok(())
}

/// Reads `n` messages; returns, per channel, the `(epoch, offsets)` seen in order.
async fn read(client: &mut WsClient, n: usize) -> Result<BTreeMap<String, (String, Vec<u64>)>> {
    let mut seen: BTreeMap<String, (String, Vec<u64>)> = BTreeMap::new();
    for m in client.messages(n).await? {
        let channel = m["channel"].as_str().context("channel")?.to_owned();
        let entry = seen.entry(channel).or_insert_with(|| (m["epoch"].as_str().unwrap_or_default().to_owned(), vec![]));
        entry.1.push(m["offset"].as_u64().context("offset")?);
    }
    Ok(seen)
}

/// Asserts that nothing more arrives: a message published afterwards to `probe`, which
/// the client reads through another subscription, is the next message it gets.
async fn assert_quiet(client: &mut WsClient, node: &Ringcastd, probe: &str) -> Result<()> {
    publish(node, probe, 0).await?;
    let next = client.messages(1).await?;
    assert_eq!(next[0]["channel"], probe, "only the probe arrives: {}", next[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_sees_every_matching_channel_on_every_node_in_order() -> Result<()> {
    let mut c = TestCluster::start(3, FEED).await?;
    let mut nba = Vec::new();
    for owner in ["node-0", "node-1", "node-2"] {
        nba.push(nba_channel_owned_by(&c, "g", owner).await?);
    }
    let nfl = "feed:nfl:jets-bills";
    let token = user_token("dash", 600, &["feed:*"]);
    let (mut league, _) = WsClient::connect(&c.nodes[0].ws_url(), Some(&token)).await?;
    let r = league.request(json!({"type": "psubscribe", "pattern": "feed:nba:*"})).await?;
    assert_eq!((r["type"].as_str(), r["resuming"].as_u64()), (Some("psubscribed"), Some(0)), "{r}");
    let (mut all, _) = WsClient::connect(&c.nodes[1].ws_url(), Some(&token)).await?;
    let r = all.request(json!({"type": "psubscribe", "pattern": "feed:>"})).await?;
    assert_eq!(r["type"], "psubscribed", "{r}");

    // Published through every node; each channel's owner sequences it.
    let rounds = 20u64;
    let channels: Vec<String> = nba.iter().cloned().chain([nfl.to_owned()]).collect();
    for n in 1..=rounds {
        for (i, channel) in channels.iter().enumerate() {
            publish(&c.nodes[(i + n as usize) % 3], channel, n).await?;
        }
    }
    let want: Vec<u64> = (1..=rounds).collect();
    let got = read(&mut league, nba.len() * rounds as usize).await?;
    let mut want_channels = nba.clone();
    want_channels.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), want_channels, "nba only");
    for (channel, (_, offsets)) in &got {
        assert_eq!(offsets, &want, "{channel}: every message once, in order");
    }
    let got_all = read(&mut all, (nba.len() + 1) * rounds as usize).await?;
    assert_eq!(got_all.len(), 4, "`feed:>` matches the nfl channel too: {:?}", got_all.keys());
    assert!(got_all.values().all(|(_, offsets)| *offsets == want), "{got_all:?}");

    // Reconnecting elsewhere: the channels it had resume from where it was.
    drop(league);
    for n in rounds + 1..=rounds + 5 {
        for channel in &nba {
            publish(&c.nodes[0], channel, n).await?;
        }
    }
    let since: serde_json::Map<String, Value> =
        got.iter().map(|(ch, (epoch, _))| (ch.clone(), json!({"epoch": epoch, "offset": rounds}))).collect();
    let (mut back, _) = WsClient::connect(&c.nodes[2].ws_url(), Some(&token)).await?;
    let r = back.request(json!({"type": "psubscribe", "pattern": "feed:nba:*", "since": since})).await?;
    assert_eq!((r["type"].as_str(), r["resuming"].as_u64()), (Some("psubscribed"), Some(3)), "{r}");
    let mut resumed = Vec::new();
    let mut replayed: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while resumed.len() < 3 || replayed.values().map(Vec::len).sum::<usize>() < 15 {
        let p = back.next_push().await?;
        match p["type"].as_str() {
            Some("subscribed") => {
                assert_eq!((p["recovered"].as_bool(), p["replayed"].as_u64()), (Some(true), Some(5)), "{p}");
                resumed.push(p["channel"].as_str().unwrap_or_default().to_owned());
            }
            Some("message") => {
                let channel = p["channel"].as_str().unwrap_or_default().to_owned();
                assert!(resumed.contains(&channel), "a replay follows its channel's `subscribed`: {p}");
                replayed.entry(channel).or_default().push(p["offset"].as_u64().unwrap_or(0));
            }
            _ => bail!("unexpected push {p}"),
        }
    }
    let after: Vec<u64> = (rounds + 1..=rounds + 5).collect();
    assert!(replayed.values().all(|o| *o == after), "{replayed:?}");
    // And it is live again, on every channel.
    for channel in &nba {
        publish(&c.nodes[1], channel, 99).await?;
    }
    let live = read(&mut back, 3).await?;
    assert!(live.values().all(|(_, o)| *o == [rounds + 6]), "{live:?}");

    // A node that joins later learns the patterns as the members' links to it come up
    // (node-1's `feed:>`, node-2's `feed:nba:*`); then its channels reach the dashboards.
    c.add_node("node-3", "core")?;
    c.wait_settled().await?;
    c.nodes[3].wait_metric("ringcast_peer_patterns", |n| n >= 2.0).await?;
    // A channel never published before (the earlier ones may have moved to node-3 too).
    let fresh = nba_channel_owned_by(&c, "new", "node-3").await?;
    let deadline = Instant::now() + WAIT;
    publish(&c.nodes[3], &fresh, 1).await?;
    let first = loop {
        let m = all.messages(1).await?;
        if m[0]["channel"] == fresh.as_str() {
            break m[0]["offset"].as_u64().context("offset")?;
        }
        anyhow::ensure!(Instant::now() < deadline, "no message from the new node's channel");
    };
    assert_eq!(first, 1, "the new node's channel arrives from its first message");
    for n in 2..=5 {
        publish(&c.nodes[n as usize % 4], &fresh, n).await?;
    }
    let more = read(&mut all, 4).await?;
    assert_eq!(more.get(&fresh).map(|(_, o)| o.clone()), Some(vec![2, 3, 4, 5]), "{more:?}");

    // Unsubscribing stops it; a channel it subscribed to itself keeps coming.
    let probe = "feed:probe";
    let r = all.subscribe(probe, None).await?;
    assert_eq!(r["type"], "subscribed", "{r}");
    let r = all.request(json!({"type": "punsubscribe", "pattern": "feed:>"})).await?;
    assert_eq!(r["type"], "punsubscribed", "{r}");
    publish(&c.nodes[0], &nba[0], 100).await?;
    assert_quiet(&mut all, &c.nodes[2], probe).await?;
    let r = all.request(json!({"type": "punsubscribe", "pattern": "feed:>"})).await?;
    assert_eq!(error_code(&r), "not_subscribed", "{r}");
    Ok(())
}

#[tokio::test]
async fn patterns_need_the_namespace_the_token_and_room() -> Result<()> {
    let cfg = base_config(&format!("{FEED}\n[namespaces.open]\nanonymous = true\npatterns = true\n"))
        .replace("[api]", "[limits]\nmax_patterns_per_connection = 2\n\n[api]");
    let node = Ringcastd::start(&cfg)?;
    let narrow = user_token("viewer", 600, &["feed:nba:*"]);
    let (mut c, _) = WsClient::connect(&node.ws_url(), Some(&narrow)).await?;
    let c = &mut c;
    async fn ask(c: &mut WsClient, pattern: &str) -> Result<Value> {
        c.request(json!({"type": "psubscribe", "pattern": pattern})).await
    }

    let r = ask(c, "feed:>").await?;
    assert_eq!(error_code(&r), "permission_denied", "a grant of one league does not cover all: {r}");
    let r = ask(c, "scores:>").await?;
    assert_eq!(error_code(&r), "not_enabled", "the namespace does not allow patterns: {r}");
    let r = ask(c, "nowhere:*").await?;
    assert_eq!(error_code(&r), "unknown_namespace", "{r}");
    let r = ask(c, "feed:nba*").await?;
    assert_eq!(error_code(&r), "invalid_channel", "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("whole segment"), "{r}");
    let r = ask(c, "feed:nba:*").await?;
    assert_eq!(r["type"], "psubscribed", "{r}");
    let r = ask(c, "feed:nba:*").await?;
    assert_eq!(error_code(&r), "already_subscribed", "{r}");
    let r = ask(c, "open:>").await?;
    assert_eq!(r["type"], "psubscribed", "anonymous namespaces need no grant: {r}");
    let r = ask(c, "open:a:*").await?;
    assert_eq!(error_code(&r), "too_many_channels", "limits.max_patterns_per_connection = 2: {r}");
    // A `since` naming a channel the pattern does not match is refused whole.
    let r = c
        .request(json!({"type": "psubscribe", "pattern": "feed:nba:*",
                        "since": {"feed:nfl:x": {"epoch": "1", "offset": 1}}}))
        .await?;
    assert_eq!(error_code(&r), "invalid_channel", "{r}");

    // Standalone, messages flow the same way; a channel subscribed both ways comes once.
    let ch = "feed:nba:lakers";
    let (mut open, _) = WsClient::connect(&node.ws_url(), None).await?;
    let r = open.request(json!({"type": "psubscribe", "pattern": "open:>"})).await?;
    assert_eq!(r["type"], "psubscribed", "{r}");
    let r = open.subscribe("open:x", None).await?;
    assert_eq!(r["type"], "subscribed", "{r}");
    for n in 1..=3 {
        publish(&node, "open:x", n).await?;
        publish(&node, ch, n).await?;
    }
    let got = read(&mut open, 3).await?;
    assert_eq!(got.get("open:x").map(|(_, o)| o.clone()), Some(vec![1, 2, 3]), "{got:?}");
    // `c` has `feed:nba:*` and `open:>`.
    let got = read(c, 6).await?;
    assert_eq!(got.get(ch).map(|(_, o)| o.clone()), Some(vec![1, 2, 3]), "{got:?}");
    assert_eq!(got.get("open:x").map(|(_, o)| o.clone()), Some(vec![1, 2, 3]), "{got:?}");
    assert_quiet(&mut open, &node, "open:probe").await?;
    assert_eq!(node.metric("ringcast_pattern_subscriptions").await?, 3.0);
    Ok(())
}

/// Publishes over HTTP through `node` with an idempotency key until acknowledged, as a
/// backend that sees a failover would; returns the ack.
async fn publish_until_acked(node: &Ringcastd, channel: &str, n: u64) -> Result<Value> {
    let body = json!({"channel": channel, "data": {"n": n}, "idempotency_key": format!("{channel}-{n}")}).to_string();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r =
            http(node.addr, "POST", "/v1/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], &body).await?;
        if r.status == 200 {
            return Ok(r.json());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "publish {n} to {channel} never acknowledged: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes rounds `from..=to` to each channel through node 3; every ack is at offset
/// `n` in the channel's one epoch (noted in `epochs`).
async fn publish_rounds(
    c: &TestCluster,
    channels: [&str; 2],
    epochs: &mut BTreeMap<String, Value>,
    (from, to): (u64, u64),
) -> Result<()> {
    for n in from..=to {
        for ch in channels {
            let ack = publish_until_acked(&c.nodes[3], ch, n).await?;
            assert_eq!(ack["offset"], json!(n), "{ch}: {ack}");
            let epoch = epochs.entry(ch.to_owned()).or_insert_with(|| ack["epoch"].clone());
            assert_eq!(*epoch, ack["epoch"], "{ch} keeps its epoch");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_follows_its_channels_through_a_drain_and_an_owner_crash() -> Result<()> {
    let durable = "\n[namespaces.live]\nanonymous = true\nclient_publish = false\ndurable = true\npatterns = true\n";
    let c = TestCluster::start(4, durable).await?;
    let drained = c.channel_owned_by("live", "node-2").await?;
    let crashed = c.channel_owned_by("live", "node-1").await?;
    let (mut dash, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;
    let r = dash.request(json!({"type": "psubscribe", "pattern": "live:>"})).await?;
    assert_eq!(r["type"], "psubscribed", "{r}");
    let mut epochs = BTreeMap::new();
    let channels = [drained.as_str(), crashed.as_str()];
    publish_rounds(&c, channels, &mut epochs, (1, 10)).await?;
    c.drain_moving(2, &drained).await?;
    publish_rounds(&c, channels, &mut epochs, (11, 20)).await?;
    c.nodes[1].signal("KILL")?;
    publish_rounds(&c, channels, &mut epochs, (21, 30)).await?;

    // Both channels, each in one epoch, every message once and in order.
    let got = read(&mut dash, 60).await?;
    let want: Vec<u64> = (1..=30).collect();
    for ch in [&drained, &crashed] {
        let (epoch, offsets) = got.get(ch.as_str()).with_context(|| format!("{ch} missing: {got:?}"))?;
        assert_eq!(offsets, &want, "{ch}");
        assert_eq!(json!(epoch), epochs[ch.as_str()], "{ch}: the epoch of every ack");
    }
    Ok(())
}
