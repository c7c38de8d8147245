//! Publish/subscribe behaviour of a real standalone node: fan-out to many clients,
//! per-channel order, recovery (true and false), idempotent retries, history paging.

use anyhow::{ensure, Result};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test]
async fn fan_out_reaches_every_subscriber_in_order() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let url = node.ws_url();
    let mut subs = Vec::new();
    for _ in 0..50 {
        let (mut c, _) = WsClient::connect(&url, None).await?;
        let r = c.subscribe("chat:fanout", None).await?;
        assert_eq!(r["type"], "subscribed", "{r}");
        subs.push(c);
    }
    // Two publishers interleave: one over WebSocket, one over HTTP.
    let (mut publisher, _) = WsClient::connect(&url, None).await?;
    for i in 0..100 {
        if i % 2 == 0 {
            let ack = publisher.publish("chat:fanout", json!({"n": i})).await?;
            assert_eq!(ack["type"], "ack", "{ack}");
        } else {
            assert_eq!(http_publish(&node, "chat:fanout", json!({"n": i})).await?.status, 200);
        }
    }
    for c in &mut subs {
        let got = c.messages(100).await?;
        assert_eq!(offsets(&got), (1..=100).collect::<Vec<u64>>(), "gapless, ordered offsets");
        let data: Vec<i64> = got.iter().filter_map(|m| m["data"]["n"].as_i64()).collect();
        assert_eq!(data, (0..100).collect::<Vec<i64>>(), "payloads in publish order");
        let epochs: std::collections::HashSet<&str> = got.iter().filter_map(|m| m["epoch"].as_str()).collect();
        assert_eq!(epochs.len(), 1);
    }
    assert!(node.metric("ringcast_deliveries_total").await? >= 5000.0);
    Ok(())
}

async fn publish_n(node: &Ringcastd, channel: &str, from: i64, n: i64) -> Result<Vec<Value>> {
    let mut acks = Vec::new();
    for i in from..from + n {
        let r = http_publish(node, channel, json!(i)).await?;
        assert_eq!(r.status, 200, "{}", r.body);
        acks.push(r.json());
    }
    Ok(acks)
}

#[tokio::test]
async fn resume_inside_the_window_replays_everything_then_goes_live() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let url = node.ws_url();
    let (mut c, _) = WsClient::connect(&url, None).await?;
    c.subscribe("chat:resume", None).await?;
    publish_n(&node, "chat:resume", 1, 5).await?;
    let seen = c.messages(5).await?;
    let last = seen.last().cloned().unwrap_or_default();
    drop(c); // the client goes away...

    publish_n(&node, "chat:resume", 6, 10).await?; // ...and misses ten messages.
    let (mut c, _) = WsClient::connect(&url, None).await?;
    let since = json!({"epoch": last["epoch"], "offset": last["offset"]});
    let r = c.subscribe("chat:resume", Some(since)).await?;
    assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(10)), "{r}");
    assert_eq!(r["offset"], 15);
    publish_n(&node, "chat:resume", 16, 1).await?;
    let got = c.messages(11).await?;
    assert_eq!(offsets(&got), (6..=16).collect::<Vec<u64>>());
    assert!(got.iter().all(|m| m["epoch"] == last["epoch"]));
    Ok(())
}

#[tokio::test]
async fn resume_outside_the_window_says_why_and_what_is_left() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let (mut c, _) = WsClient::connect(&node.ws_url(), None).await?;
    // `small` keeps 5 messages.
    let acks = publish_n(&node, "small:x", 1, 20).await?;
    let epoch = acks[0]["epoch"].clone();

    let r = c.subscribe("small:x", Some(json!({"epoch": epoch, "offset": 3}))).await?;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(
        (r["reason"].as_str(), r["oldest"].as_u64(), r["newest"].as_u64()),
        (Some("position_expired"), Some(16), Some(20))
    );
    c.request(json!({"type": "unsubscribe", "channel": "small:x"})).await?;

    let r = c.subscribe("small:x", Some(json!({"epoch": "12345", "offset": 20}))).await?;
    assert_eq!((r["recovered"].clone(), r["reason"].clone()), (json!(false), json!("epoch_changed")), "{r}");
    c.request(json!({"type": "unsubscribe", "channel": "small:x"})).await?;

    let r = c.subscribe("small:x", Some(json!({"epoch": "", "offset": 20}))).await?;
    assert_eq!(r["reason"], "epoch_changed", "an empty epoch cannot prove continuity: {r}");
    c.request(json!({"type": "unsubscribe", "channel": "small:x"})).await?;

    let r = c.subscribe("small:x", Some(json!({"epoch": epoch, "offset": 21}))).await?;
    assert_eq!(r["reason"], "position_ahead", "{r}");
    c.request(json!({"type": "unsubscribe", "channel": "small:x"})).await?;

    let r = c.subscribe("small:x", Some(json!({"epoch": epoch, "offset": u64::MAX}))).await?;
    assert_eq!(r["reason"], "position_ahead", "{r}");
    c.request(json!({"type": "unsubscribe", "channel": "small:x"})).await?;

    // At the top of the window: recovered with nothing to replay.
    let r = c.subscribe("small:x", Some(json!({"epoch": epoch, "offset": 20}))).await?;
    assert_eq!((r["recovered"].clone(), r["replayed"].clone()), (json!(true), json!(0)), "{r}");
    // Not recovered means nothing was replayed: the next push is live.
    publish_n(&node, "small:x", 21, 1).await?;
    assert_eq!(offsets(&c.messages(1).await?), vec![21]);
    Ok(())
}

#[tokio::test]
async fn a_retried_publish_returns_the_original_ack() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let (mut c, _) = WsClient::connect(&node.ws_url(), None).await?;
    let (mut sub, _) = WsClient::connect(&node.ws_url(), None).await?;
    sub.subscribe("chat:idem", None).await?;
    let cmd = json!({"type": "publish", "channel": "chat:idem", "data": {"m": "hello"}, "idempotency_key": "msg-1"});
    let first = c.request(cmd.clone()).await?;
    let retry = c.request(cmd).await?;
    assert_eq!((first["offset"].clone(), first["duplicate"].clone()), (json!(1), json!(false)), "{first}");
    assert_eq!((retry["offset"].clone(), retry["duplicate"].clone()), (json!(1), json!(true)), "{retry}");
    assert_eq!(retry["epoch"], first["epoch"]);

    // Same key over HTTP: the same ack.
    let body = json!({"channel": "chat:idem", "data": {"m": "hello"}, "idempotency_key": "msg-1"}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let r = http(node.addr, "POST", "/v1/publish", &[("Authorization", &auth)], &body).await?;
    assert_eq!((r.json()["offset"].clone(), r.json()["duplicate"].clone()), (json!(1), json!(true)), "{}", r.body);

    // Same key, different data: a conflict, nothing sequenced.
    let clash = c
        .request(json!({"type": "publish", "channel": "chat:idem", "data": {"m": "other"}, "idempotency_key": "msg-1"}))
        .await?;
    assert_eq!(error_code(&clash), "conflict", "{clash}");
    let next = c.publish("chat:idem", json!("next")).await?;
    assert_eq!(next["offset"], 2, "the subscriber saw exactly one copy: {next}");
    assert_eq!(offsets(&sub.messages(2).await?), vec![1, 2]);
    Ok(())
}

#[tokio::test]
async fn history_pages_backwards_over_websocket_and_http() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    publish_n(&node, "chat:hist", 1, 25).await?;
    let (mut c, _) = WsClient::connect(&node.ws_url(), None).await?;

    let mut before: Option<u64> = None;
    let mut pages = Vec::new();
    loop {
        let mut cmd = json!({"type": "history", "channel": "chat:hist", "limit": 10});
        if let Some(b) = before {
            cmd["before"] = json!(b);
        }
        let page = c.request(cmd).await?;
        assert_eq!(page["type"], "history", "{page}");
        let msgs = page["messages"].as_array().cloned().unwrap_or_default();
        pages.push(offsets(&msgs));
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let want: Vec<Vec<u64>> = vec![(16..=25).collect(), (6..=15).collect(), (1..=5).collect()];
    assert_eq!(pages, want);

    let r = http(node.addr, "GET", "/v1/channels/chat:hist/history?limit=3&before=10", &[], "").await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(offsets(v["messages"].as_array().map(Vec::as_slice).unwrap_or_default()), vec![7, 8, 9]);
    assert_eq!((v["oldest"].as_u64(), v["newest"].as_u64(), v["next_before"].as_u64()), (Some(1), Some(25), Some(7)));
    assert_eq!(v["messages"][0]["data"], 7);

    // Private namespaces need the API key or a token with the capability.
    publish_n(&node, "private:h", 1, 2).await?;
    let r = http(node.addr, "GET", "/v1/channels/private:h/history", &[], "").await?;
    assert_eq!((r.status, error_code(&r.json())), (401, "unauthorized".into()));
    let t = user_token("bob", 60, &["private:other"]);
    let r = http(node.addr, "GET", "/v1/channels/private:h/history", &[("Authorization", &format!("Bearer {t}"))], "")
        .await?;
    assert_eq!((r.status, error_code(&r.json())), (403, "permission_denied".into()));
    let t = user_token("bob", 60, &["private:*"]);
    let r = http(node.addr, "GET", "/v1/channels/private:h/history", &[("Authorization", &format!("Bearer {t}"))], "")
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        node.addr,
        "GET",
        "/v1/channels/private:h/history",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        "",
    )
    .await?;
    assert_eq!(r.json()["newest"], 2);
    Ok(())
}

#[tokio::test]
async fn broadcast_publishes_to_many_channels_with_per_channel_results() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let (mut a, _) = WsClient::connect(&node.ws_url(), None).await?;
    a.subscribe("scores:game1", None).await?;
    a.subscribe("scores:game2", None).await?;
    let body = json!({"channels": ["scores:game1", "scores:game2", "nope:x"], "data": {"home": 1}}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let r = http(node.addr, "POST", "/v1/broadcast", &[("Authorization", &auth)], &body).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["offset"], 1);
    assert_eq!(results[1]["offset"], 1);
    assert_eq!(error_code(&results[2]), "unknown_namespace");
    let got = a.messages(2).await?;
    let chans: Vec<&str> = got.iter().filter_map(|m| m["channel"].as_str()).collect();
    assert_eq!(chans, vec!["scores:game1", "scores:game2"]);

    // Clients may not publish on `scores` (client_publish = false), the server may.
    let r = a.publish("scores:game1", json!(1)).await?;
    assert_eq!(error_code(&r), "permission_denied", "{r}");
    Ok(())
}

/// `limits.min_write_interval`: a push to a connection that wrote less than the interval
/// ago waits for its end and goes out with everything queued by then, in order; a
/// connection that has not written for the interval is written at once; and a
/// command's reply never waits. With direct writes (the default) the pushes are the
/// flusher's writes, paced by the interval.
#[tokio::test]
async fn pushes_within_the_write_interval_go_out_together_and_replies_do_not_wait() -> Result<()> {
    const INTERVAL: Duration = Duration::from_secs(1);
    let node = Ringcastd::start(&base_config("\n[limits]\nmin_write_interval = \"1s\"\n"))?;
    let url = node.ws_url();
    let (mut sub, _) = WsClient::connect(&url, None).await?;
    sub.subscribe("chat:coalesced", None).await?;

    // 20 publishes over HTTP: only the subscriber's connection is written meanwhile.
    let writes_before = node.metric("ringcast_client_writes_total").await?;
    let direct_before = node.metric("ringcast_client_direct_writes_total").await?;
    let start = Instant::now();
    publish_n(&node, "chat:coalesced", 1, 20).await?;
    let got = sub.messages(20).await?;
    let took = start.elapsed();
    assert_eq!(offsets(&got), (1..=20).collect::<Vec<u64>>(), "complete and in order");
    let writes = node.metric("ringcast_client_writes_total").await? - writes_before;
    let direct = node.metric("ringcast_client_direct_writes_total").await? - direct_before;
    ensure!(direct == writes, "{direct} of {writes} writes were the flusher's");
    // One write at once (or a first one waiting for the interval since `subscribed`),
    // then at most one per interval; a write per message would be 20.
    let most = 2.0 + took.as_secs_f64() / INTERVAL.as_secs_f64();
    ensure!(writes <= most.floor(), "{writes} writes for 20 messages in {took:?}; at most {most:.1} expected");

    // Idle for longer than the interval: the next message is written at once.
    tokio::time::sleep(INTERVAL + Duration::from_millis(200)).await;
    let start = Instant::now();
    publish_n(&node, "chat:coalesced", 21, 1).await?;
    let got = sub.messages(1).await?;
    let took = start.elapsed();
    assert_eq!(offsets(&got), vec![21]);
    ensure!(took < INTERVAL - Duration::from_millis(100), "an isolated message waited {took:?}");

    // Replies go out at once, also on a connection that just received pushes: 20
    // publishes, each waiting for its ack, would take 20 intervals if acks waited.
    let start = Instant::now();
    for i in 0..20 {
        let ack = sub.publish("chat:coalesced", json!({"n": i})).await?;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let took = start.elapsed();
    ensure!(took < 5 * INTERVAL, "20 acknowledged publishes took {took:?}");
    Ok(())
}

/// `limits.busy_write_interval`: a flusher spaces its turns only while it is busy
/// (working at least three quarters of the time), so on a node that is not loaded every
/// message is written at once, however long the interval. The spacing itself, once the
/// flusher is busy, is tested on the runtime's clock in `ringcastd::outbox`.
#[tokio::test]
async fn a_node_that_is_not_busy_never_waits_for_the_busy_write_interval() -> Result<()> {
    const INTERVAL: Duration = Duration::from_secs(1);
    let node = Ringcastd::start(&base_config("\n[limits]\nbusy_write_interval = \"1s\"\n"))?;
    let (mut sub, _) = WsClient::connect(&node.ws_url(), None).await?;
    sub.subscribe("chat:quiet", None).await?;
    let start = Instant::now();
    for i in 1..=20 {
        publish_n(&node, "chat:quiet", i, 1).await?;
        let got = sub.messages(1).await?;
        assert_eq!(offsets(&got), vec![i as u64]);
    }
    let took = start.elapsed();
    let waits = node.metric("ringcast_flusher_busy_waits_total").await?;
    // A flusher pacing every turn would take about 20 intervals. The slack of two: a turn
    // the host preempted looks long, and may make one later turn wait.
    ensure!(waits <= 2.0, "{waits} turns waited for the busy interval on a quiet node");
    ensure!(took < 3 * INTERVAL, "20 messages, each awaited, took {took:?}");
    Ok(())
}

/// Direct writes (`limits.direct_writes`, the default): a subscriber's messages are
/// written by a flusher task, and interleaved with the connection's own replies they
/// still arrive complete and in order; switched off, every write is the session's.
#[tokio::test]
async fn direct_writes_keep_order_with_replies_and_can_be_switched_off() -> Result<()> {
    for direct in [true, false] {
        let config = if direct { "" } else { "\n[limits]\ndirect_writes = false\n" };
        let node = Ringcastd::start(&base_config(config))?;
        let url = node.ws_url();
        let (mut a, _) = WsClient::connect(&url, None).await?;
        let (mut b, _) = WsClient::connect(&url, None).await?;
        a.subscribe("chat:direct", None).await?;
        b.subscribe("chat:direct", None).await?;
        let before = node.metric("ringcast_client_direct_writes_total").await?;
        // HTTP publishes, with `a` publishing too: its acks and its own messages share
        // its connection with everything else.
        let mut published = 0;
        for round in 0..10 {
            publish_n(&node, "chat:direct", round * 3, 2).await?;
            let ack = a.publish("chat:direct", json!({"from": "a", "round": round})).await?;
            assert_eq!(ack["type"], "ack", "{ack}");
            published += 3;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (who, c) in [("a", &mut a), ("b", &mut b)] {
            let got = c.messages(published).await?;
            assert_eq!(offsets(&got), (1..=published as u64).collect::<Vec<u64>>(), "{who}, direct {direct}");
        }
        let written = node.metric("ringcast_client_direct_writes_total").await? - before;
        if direct {
            // 60 deliveries, 20 ms apart in rounds: most go direct.
            ensure!(written >= 20.0, "only {written} direct writes for 60 deliveries");
        } else {
            ensure!(written == 0.0, "{written} direct writes without direct_writes");
        }
    }
    Ok(())
}
