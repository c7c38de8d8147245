//! Slow consumers: a reader that stops reading on a hot channel is handled by its
//! namespace's policy (`drop_oldest`, `drop_newest`, `disconnect`), while a fast reader
//! on the same node gets every message and publishers never wait; and a channel's
//! client publish rate is enforced with `rate_limited`. With `limits.socket_send_buffer`
//! a slow reader's backlog of small updates waits in ringcast's queue, where `keep_latest`
//! conflates it, rather than in the kernel.

use anyhow::{ensure, Result};
use ringcast_tests::*;
use serde_json::json;

/// Messages published to the hot channel: about 8 MB, far more than the kernel buffers
/// for a reader with a small receive buffer.
const TOTAL: u64 = 1000;
const CHANNEL: &str = "feed:hot";

fn config(policy: &str) -> String {
    base_config(&format!(
        "\n[namespaces.feed]\nanonymous = true\nbackpressure = \"{policy}\"\nclient_publish_rate = 0\n\
         send_queue_messages = 20\n"
    ))
    .replace("[api]", "[limits]\ncommands_per_second = 0\n\n[api]")
}

/// A node with a slow reader (stalled), a fast reader (caught up) and a publisher.
struct Hot {
    node: Ringcastd,
    slow: WsClient,
    _fast: WsClient,
    publisher: WsClient,
}

/// Starts a node, subscribes a slow reader (which then stops reading) and a fast one,
/// publishes [`TOTAL`] messages, and checks the fast reader got each once, in order.
async fn hot_channel(policy: &str) -> Result<Hot> {
    hot_channel_keyed(policy, |_| None).await
}

/// [`hot_channel`] with message `i` published under `key(i)`.
async fn hot_channel_keyed(policy: &str, key: impl Fn(u64) -> Option<String>) -> Result<Hot> {
    let node = Ringcastd::start(&config(policy))?;
    let url = node.ws_url();
    let mut slow = WsClient::open_with_recv_buffer(&url, 4096).await?;
    assert_eq!(slow.request(json!({"type": "connect"})).await?["type"], "connected");
    assert_eq!(slow.subscribe(CHANNEL, None).await?["type"], "subscribed");
    let (mut fast, _) = WsClient::connect(&url, None).await?;
    fast.subscribe(CHANNEL, None).await?;
    let (mut publisher, _) = WsClient::connect(&url, None).await?;
    let pad = "p".repeat(8000);
    // The fast reader reads as the publisher goes, never more than `STEP` messages
    // behind (its namespace queue holds 20), however busy the machine is; the slow one
    // never reads.
    const STEP: u64 = 10;
    let mut got = Vec::new();
    for i in 1..=TOTAL {
        let mut cmd = json!({"type": "publish", "channel": CHANNEL, "data": {"i": i, "pad": pad}});
        if let Some(k) = key(i) {
            cmd["key"] = json!(k);
        }
        let ack = publisher.request(cmd).await?;
        ensure!(ack["type"] == "ack", "publish {i} failed while a reader was stalled: {ack}");
        if i % STEP == 0 {
            got.extend(fast.messages(STEP as usize).await?);
        }
    }
    assert_eq!(offsets(&got), (1..=TOTAL).collect::<Vec<u64>>(), "the fast reader lost nothing");
    Ok(Hot { node, slow, _fast: fast, publisher })
}

#[tokio::test]
async fn drop_oldest_keeps_a_slow_reader_on_the_latest_messages_with_a_gap() -> Result<()> {
    let Hot { node, mut slow, mut publisher, _fast } = hot_channel("drop_oldest").await?;
    assert!(node.metric("ringcast_drops_total{policy=\"drop_oldest\"}").await? > 0.0);
    let seen = slow.read_coverage(TOTAL, "slow_consumer").await?;
    assert_covers(&seen, TOTAL);
    assert!(seen.iter().any(|(k, ..)| k == "gap"), "messages were dropped, so a gap was announced");
    assert_eq!(seen.last().map(|e| e.0.as_str()), Some("m"), "the newest message is kept: {seen:?}");
    // Still subscribed: the next message arrives as usual.
    publisher.publish(CHANNEL, json!("after")).await?;
    assert_eq!(slow.read_coverage(TOTAL + 1, "slow_consumer").await?, vec![("m".to_owned(), TOTAL + 1, TOTAL + 1)]);
    assert_eq!(node.metric("ringcast_closes_total{code=\"4008\"}").await?, 0.0);
    Ok(())
}

#[tokio::test]
async fn drop_newest_keeps_what_was_queued_and_announces_the_rest() -> Result<()> {
    let Hot { node, mut slow, mut publisher, _fast } = hot_channel("drop_newest").await?;
    assert!(node.metric("ringcast_drops_total{policy=\"drop_newest\"}").await? > 0.0);
    let seen = slow.read_coverage(TOTAL, "slow_consumer").await?;
    assert_covers(&seen, TOTAL);
    assert_eq!(seen.first().map(|e| (e.0.as_str(), e.1)), Some(("m", 1)), "the oldest message is kept");
    assert_eq!(seen.last().map(|e| e.0.as_str()), Some("gap"), "the newest were dropped: {seen:?}");
    publisher.publish(CHANNEL, json!("after")).await?;
    assert_eq!(slow.read_coverage(TOTAL + 1, "slow_consumer").await?, vec![("m".to_owned(), TOTAL + 1, TOTAL + 1)]);
    Ok(())
}

#[tokio::test]
async fn disconnect_closes_a_slow_reader_with_4008() -> Result<()> {
    let Hot { node, slow, _fast, .. } = hot_channel("disconnect").await?;
    node.wait_metric("ringcast_closes_total{code=\"4008\"}", |v| v >= 1.0).await?;
    node.wait_metric("ringcast_subscriptions", |v| v == 1.0).await?; // the fast reader's
    assert!(node.metric("ringcast_drops_total{policy=\"disconnect\"}").await? >= 1.0);
    assert_eq!(node.metric("ringcast_drops_total{policy=\"drop_oldest\"}").await?, 0.0);
    drop(slow);
    Ok(())
}

#[tokio::test]
async fn client_publishes_are_rate_limited_per_channel() -> Result<()> {
    let node = Ringcastd::start(&base_config(
        "\n[namespaces.room]\nanonymous = true\nclient_publish_rate = 1\nclient_publish_burst = 3\n",
    ))?;
    let (mut a, _) = WsClient::connect(&node.ws_url(), None).await?;
    let (mut b, _) = WsClient::connect(&node.ws_url(), None).await?;
    for i in 0..3 {
        assert_eq!(a.publish("room:1", json!(i)).await?["type"], "ack");
    }
    // The budget is the channel's, whichever connection publishes.
    let r = b.publish("room:1", json!(3)).await?;
    assert_eq!(error_code(&r), "rate_limited", "{r}");
    assert_eq!(b.publish("room:2", json!(0)).await?["type"], "ack", "another channel has its own budget");
    let r = http_publish(&node, "room:1", json!("from the API")).await?;
    assert_eq!(r.status, 200, "the server API is not limited");
    assert!(node.metric("ringcast_channel_rate_limited_total").await? >= 1.0);
    Ok(())
}

#[tokio::test]
async fn keep_latest_gives_a_slow_reader_the_newest_of_each_key_with_conflated_gaps() -> Result<()> {
    let Hot { node, mut slow, .. } = hot_channel_keyed("keep_latest", |i| Some(format!("g{}", i % 5))).await?;
    assert!(node.metric("ringcast_drops_total{policy=\"keep_latest\"}").await? > 0.0);

    // The slow reader: every offset once, in order, as a message or a conflated gap, and
    // the newest value of every key, like the fast reader.
    let mut seen = Vec::new();
    let mut latest = std::collections::BTreeMap::new();
    let mut messages = 0;
    while seen.last().is_none_or(|(_, _, to): &(String, u64, u64)| *to < TOTAL) {
        let f = slow.next_push().await?;
        match f["type"].as_str() {
            Some("message") => {
                let o = f["offset"].as_u64().unwrap_or(0);
                latest.insert(f["key"].as_str().unwrap_or_default().to_owned(), f["data"]["i"].as_u64().unwrap_or(0));
                messages += 1;
                seen.push(("m".to_owned(), o, o));
            }
            Some("gap") => {
                assert_eq!(f["reason"], "conflated", "{f}");
                seen.push(("gap".to_owned(), f["from"].as_u64().unwrap_or(0), f["to"].as_u64().unwrap_or(0)));
            }
            _ => {}
        }
    }
    assert_covers(&seen, TOTAL);
    let want: std::collections::BTreeMap<String, u64> =
        (TOTAL - 4..=TOTAL).map(|i| (format!("g{}", i % 5), i)).collect();
    assert_eq!(latest, want, "the slow reader ends with the same newest value per key");
    assert!(messages < TOTAL, "and received fewer messages ({messages})");
    assert_eq!(node.metric("ringcast_closes_total{code=\"4008\"}").await?, 0.0, "nobody was disconnected");
    Ok(())
}

/// Small scoreboard updates fit the kernel's autotuned buffers by the hundred, so without
/// a bound there a slow viewer's backlog never reaches the queue and is never conflated.
/// With `socket_send_buffer` the server's socket holds a few KiB: the rest waits in the
/// queue and conflates, and the slow viewer ends on the newest value of every key.
#[tokio::test]
async fn a_small_socket_send_buffer_moves_a_slow_viewers_backlog_where_keep_latest_conflates_it() -> Result<()> {
    const UPDATES: u64 = 600;
    let node = Ringcastd::start(
        &base_config(
            "\n[namespaces.feed]\nanonymous = true\nbackpressure = \"keep_latest\"\nclient_publish_rate = 0\n\
             send_queue_messages = 20\n",
        )
        .replace("[api]", "[limits]\ncommands_per_second = 0\nsocket_send_buffer = 4096\n\n[api]"),
    )?;
    let url = node.ws_url();
    let mut slow = WsClient::open_with_recv_buffer(&url, 4096).await?;
    assert_eq!(slow.request(json!({"type": "connect"})).await?["type"], "connected");
    assert_eq!(slow.subscribe(CHANNEL, None).await?["type"], "subscribed");
    let (mut publisher, _) = WsClient::connect(&url, None).await?;
    for i in 1..=UPDATES {
        let cmd = json!({"type": "publish", "channel": CHANNEL, "key": format!("g{}", i % 3), "data": {"i": i}});
        let ack = publisher.request(cmd).await?;
        ensure!(ack["type"] == "ack", "publish {i}: {ack}");
    }
    // The server's sockets carry the configured buffer (Linux doubles it for overhead).
    let port = node.addr.port();
    let out = std::process::Command::new("ss").args(["-tmnH", "state", "established"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let server_side: Vec<&str> = text.lines().filter(|l| l.contains(&format!(":{port} "))).collect();
    let buffers: Vec<u64> = text
        .split("skmem:(")
        .skip(1)
        .zip(text.lines().filter(|l| !l.trim_start().starts_with("skmem")))
        .filter(|(_, head)| head.split_whitespace().nth(2).is_some_and(|local| local.ends_with(&format!(":{port}"))))
        .filter_map(|(mem, _)| mem.split(',').find_map(|f| f.strip_prefix("tb")).and_then(|v| v.parse().ok()))
        .collect();
    ensure!(!server_side.is_empty(), "ss shows no connection to port {port}:\n{text}");
    ensure!(!buffers.is_empty() && buffers.iter().all(|&b| b <= 8192), "server send buffers {buffers:?}:\n{text}");

    let mut latest = std::collections::BTreeMap::new();
    let (mut messages, mut conflated, mut top) = (0, 0, 0);
    while top < UPDATES {
        let f = slow.next_push().await?;
        match f["type"].as_str() {
            Some("message") => {
                latest.insert(f["key"].as_str().unwrap_or_default().to_owned(), f["data"]["i"].as_u64().unwrap_or(0));
                messages += 1;
                top = f["offset"].as_u64().unwrap_or(0);
            }
            Some("gap") => {
                assert_eq!(f["reason"], "conflated", "{f}");
                conflated += 1;
                top = f["to"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        (UPDATES - 2..=UPDATES).map(|i| (format!("g{}", i % 3), i)).collect();
    assert_eq!(latest, want, "the slow viewer ends on the newest value of every key");
    assert!(conflated > 0 && messages < UPDATES / 2, "conflated {conflated} times, {messages} messages of {UPDATES}");
    assert_eq!(node.metric("ringcast_closes_total{code=\"4008\"}").await?, 0.0, "nobody was disconnected");
    Ok(())
}
