//! Slow peers: a node that stops reading (SIGSTOP) is cut off by the owner when its
//! bounded queue overflows, without slowing deliveries to the other nodes; when it comes
//! back it resyncs by offset, and its subscribers get every message or a `gap` for what
//! the owner's history no longer held, in order, and stay subscribed.

use anyhow::{ensure, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::*;
use serde_json::json;

const TOTAL: u64 = 1500;
const HISTORY: u64 = 200;

#[tokio::test]
async fn a_stalled_node_is_cut_off_without_slowing_the_others_and_resyncs_by_offset() -> Result<()> {
    let c = TestCluster::start_with(
        3,
        &format!(
            "\n[namespaces.feed]\nanonymous = true\nclient_publish_rate = 0\nhistory_size = {HISTORY}\n\n\
             [limits]\ncommands_per_second = 0\n"
        ),
        "lease_ttl = \"15s\"\nkeepalive = \"2s\"\npeer_queue_frames = 100\npeer_queue_bytes = 262144\n",
    )
    .await?;
    // A channel owned by node-0, subscribed on node-1 (healthy) and node-2 (stalled).
    let channel = c.channel_owned_by("feed", "node-0").await?;
    let (mut healthy, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    assert_eq!(healthy.subscribe(&channel, None).await?["type"], "subscribed");
    let (mut stalled, _) = WsClient::connect(&c.nodes[2].ws_url(), None).await?;
    assert_eq!(stalled.subscribe(&channel, None).await?["type"], "subscribed");
    let (mut publisher, _) = WsClient::connect(&c.nodes[0].ws_url(), None).await?;

    c.nodes[2].signal("STOP")?;
    let pad = "s".repeat(2000);
    let publish = async {
        for i in 1..=TOTAL {
            let ack = publisher.publish(&channel, json!({"i": i, "pad": pad})).await?;
            ensure!(ack["type"] == "ack", "publish {i} failed while a node was stalled: {ack}");
        }
        anyhow::Ok(())
    };
    let (published, got) = tokio::join!(publish, healthy.messages(TOTAL as usize));
    let overflowed = c.nodes[0].wait_metric("ringcast_peer_overflows_total", |v| v >= 1.0).await;
    c.nodes[2].signal("CONT")?;
    published?;
    overflowed?;
    assert_eq!(offsets(&got?), (1..=TOTAL).collect::<Vec<u64>>(), "the healthy node's subscriber lost nothing");

    // The stalled node resyncs: every offset once, in order, as a message or in a gap
    // announced before anything later; the owner's history comes back as messages.
    let seen = stalled.read_coverage(TOTAL, "unavailable").await?;
    assert_covers(&seen, TOTAL);
    let delivered: Vec<u64> = seen.iter().filter(|e| e.0 == "m").map(|e| e.1).collect();
    assert!(
        delivered.ends_with(&((TOTAL - HISTORY + 1)..=TOTAL).collect::<Vec<u64>>()),
        "what the owner still held arrived: {seen:?}"
    );
    assert!(c.nodes[2].metric("ringcast_resyncs_total").await? >= 1.0);
    // More was published than the owner's history plus a QUIC stream window holds, so
    // part of the stream was lost for good and announced.
    assert!(seen.iter().any(|e| e.0 == "gap"), "{seen:?}");
    assert!(c.nodes[2].metric("ringcast_lost_messages_total").await? >= 1.0);

    // Both stay subscribed.
    publisher.publish(&channel, json!("after")).await?;
    assert_eq!(offsets(&healthy.messages(1).await?), vec![TOTAL + 1]);
    assert_eq!(stalled.read_coverage(TOTAL + 1, "unavailable").await?, vec![("m".to_owned(), TOTAL + 1, TOTAL + 1)]);
    Ok(())
}
