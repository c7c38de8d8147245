//! The load balancer (HAProxy, docker/haproxy.cfg) in front of the compose cluster, end
//! to end: every client connects to the one LB address with `?user=<id>`
//! (`proto/client.md`, "Behind a load balancer"), and the node it lands on is the `node`
//! of the `connected` reply.
//!
//! One test, because each step needs the cluster the previous one left:
//! 1. 500 users connect through the LB, disconnect and connect again: each lands on the
//!    same node both times, and every node gets users;
//! 2. the node of user 0 is `docker kill`ed while its users hold reconnecting
//!    subscriptions on a durable channel with a publisher running: the LB takes the node
//!    out (timed), the users land on other nodes and receive every acknowledged message
//!    with no gap in one epoch;
//! 3. the node is started again: new connections of its users go back to it;
//! 4. a rolling restart through the LB under load: every acknowledged message reaches
//!    the subscriber, no `recovered: false`, gap or restarted stream;
//! 5. a 4th node is added: the share of users that move is measured (ideal 1/4), and
//!    every user that moves goes to the new node (consistent hashing).
//!
//! A [`Compose`] guard runs `docker-compose down -v` on every exit, failures included.
//! Docker is part of this project's test machine: without it the test fails.
//!
//! A second, quick test checks without Docker that a node accepts and ignores the `user`
//! query parameter on `/ws`.

use anyhow::{ensure, Context, Result};
use ringcast_client::{Config, Event, Publisher, Subscriber};
use ringcast_tests::compose::{build_images, record, rolling_restart_under_load, Compose, Project};
use ringcast_tests::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The API key of the compose cluster under test.
const KEY: &str = "lb-test-api-key";
/// How many distinct users connect through the LB.
const USERS: usize = 500;
/// How many connections are opened at once (the nodes admit 1000 handshakes a second).
const PARALLEL: usize = 50;
/// How long publishes may keep retrying through a failover or a restart.
const PUBLISH_WITHIN: Duration = Duration::from_secs(30);
/// How long anything the LB must notice may take (its checks: every 1 s, 2 to change).
const LB_WITHIN: Duration = Duration::from_secs(30);

fn user(i: usize) -> String {
    format!("user-{i}")
}

/// Connects `users` through the LB (at most [`PARALLEL`] at once), each with
/// `?user=<id>`; returns the node each landed on. The connections are closed.
async fn landings(lb: SocketAddr, users: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for chunk in users.chunks(PARALLEL) {
        let mut set = JoinSet::new();
        for u in chunk {
            let (u, url) = (u.clone(), format!("ws://{lb}/ws?user={u}"));
            set.spawn(async move {
                let (c, reply) = WsClient::connect(&url, None).await.with_context(|| format!("connect {url}"))?;
                drop(c);
                let node = reply["node"].as_str().with_context(|| format!("no node in {reply}"))?.to_owned();
                anyhow::Ok((u, node))
            });
        }
        while let Some(r) = set.join_next().await {
            let (u, node) = r??;
            out.insert(u, node);
        }
    }
    Ok(out)
}

/// The LB's node servers (backend `nodes_by_user`) from its stats CSV: status by name,
/// for the servers DNS has filled (`MAINT` slots left out).
async fn lb_servers(stats: SocketAddr) -> Result<BTreeMap<String, String>> {
    let r = http(stats, "GET", "/stats;csv", &[], "").await?;
    ensure!(r.status == 200, "stats: {} {}", r.status, r.body);
    let mut out = BTreeMap::new();
    for line in r.body.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 17 && f[0] == "nodes_by_user" && f[1].starts_with("node-") && !f[17].starts_with("MAINT") {
            out.insert(f[1].to_owned(), f[17].to_owned());
        }
    }
    Ok(out)
}

/// Waits until the LB has exactly `n` servers, all up; returns how long it took.
async fn wait_lb_up(stats: SocketAddr, n: usize) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let s = lb_servers(stats).await?;
        if s.len() == n && s.values().all(|v| v.starts_with("UP")) {
            return Ok(t.elapsed());
        }
        ensure!(t.elapsed() < LB_WITHIN, "the LB does not show {n} servers up: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn lb_keeps_users_on_their_node_fails_over_and_brings_them_back() -> Result<()> {
    let started = Instant::now();
    // Its own tag: scripts/docker-build's context is per tag, so the docker test's build
    // can run at the same time.
    let tag = "lbtest";
    let built = build_images(tag)?;
    note(&format!("images built in {:.1}s:\n{built}", started.elapsed().as_secs_f64()));
    let compose = Compose(Project::new(tag, KEY));
    let t = Instant::now();
    let up = compose.cluster_json(&["up", "3"])?;
    note(&format!("cluster and LB up in {:.1}s", t.elapsed().as_secs_f64()));
    assert_eq!(up["lb"]["up"], 3, "{up}");
    let lb = compose.lb;
    let health = http(compose.lb_stats, "GET", "/healthz", &[], "").await?;
    assert_eq!(health.status, 200, "the LB's own health");

    // 1. Sticky: the same node for each user, twice; every node gets users.
    let users: Vec<String> = (0..USERS).map(user).collect();
    let t = Instant::now();
    let first = landings(lb, &users).await?;
    let second = landings(lb, &users).await?;
    note(&format!("{} connections through the LB in {:.1}s", 2 * USERS, t.elapsed().as_secs_f64()));
    let moved: Vec<&String> = users.iter().filter(|u| first[*u] != second[*u]).collect();
    assert!(moved.is_empty(), "users that reconnected to another node: {moved:?}");
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for n in first.values() {
        *per_node.entry(n).or_default() += 1;
    }
    note(&format!("users per node (3 nodes): {per_node:?}"));
    let ids: BTreeSet<String> = compose.nodes()?.into_iter().map(|n| n.id).collect();
    assert_eq!(per_node.keys().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>(), ids, "every node gets users");
    assert!(per_node.values().all(|&c| c >= USERS / 10), "a very uneven spread: {per_node:?}");

    // 2. Kill the node of user 0 while its users subscribe to a durable channel through
    //    the LB and a publisher (no user: leastconn) runs.
    let victim_id = first[&user(0)].clone();
    let victims: Vec<String> = users.iter().filter(|u| first[*u] == victim_id).cloned().collect();
    let victim = compose.nodes()?.into_iter().find(|n| n.id == victim_id).context("the victim's container")?;
    let channel = "orders:lb-failover";
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(victims.len());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u64);
    let mut subscribers = JoinSet::new();
    for u in &victims {
        let config = Config::new(vec![format!("ws://{lb}/ws")]).with_user(u.clone());
        let (ready, mut stop, victim_id, u) = (ready_tx.clone(), stop_rx.clone(), victim_id.clone(), u.clone());
        subscribers.spawn(async move {
            let mut sub = Subscriber::new(config, &[channel]);
            let (mut nodes, mut seen, mut bad) = (Vec::new(), BTreeMap::new(), Vec::new());
            loop {
                let want = *stop.borrow();
                if want > 0 && seen.get(channel).map_or(0, Vec::len) >= usize::try_from(want).unwrap_or(0) {
                    break;
                }
                tokio::select! {
                    e = sub.next() => {
                        let e = e?;
                        match &e {
                            Event::Connected { node_id, .. } => nodes.push(node_id.clone()),
                            Event::Subscribed { recovered: None, .. } => { let _ = ready.try_send(()); }
                            _ => {}
                        }
                        record(e, &mut seen, &mut bad);
                    }
                    r = stop.changed() => r?,
                }
            }
            ensure!(nodes.first() == Some(&victim_id), "{u}: first landed on {nodes:?}, not {victim_id}");
            anyhow::Ok((u, nodes, seen.remove(channel).unwrap_or_default(), bad))
        });
    }
    drop(ready_tx);
    for _ in 0..victims.len() {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await.context("subscribers ready")?;
    }
    let mut publisher = Publisher::new(Config::new(vec![format!("ws://{lb}/ws")]));
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(publisher.publish(channel, &json!(i), &format!("k{i}"), PUBLISH_WITHIN).await?.at);
    }
    let killed = Instant::now();
    compose.cluster(&["kill", &victim.container])?;
    let out_after = loop {
        let s = lb_servers(compose.lb_stats).await?;
        if s.values().filter(|v| v.starts_with("UP")).count() == 2 {
            break killed.elapsed();
        }
        ensure!(killed.elapsed() < LB_WITHIN, "the LB still routes to the killed node: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    note(&format!("killed node {victim_id} taken out by the LB after {:.2}s", out_after.as_secs_f64()));
    for i in 10..20 {
        acked.push(publisher.publish(channel, &json!(i), &format!("k{i}"), PUBLISH_WITHIN).await?.at);
    }
    let epoch = acked[0].epoch.clone();
    assert!(acked.iter().all(|a| a.epoch == epoch), "acks in one epoch: {acked:?}");
    let offsets: Vec<u64> = acked.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<u64>>(), "acked offsets contiguous");
    let _ = stop_tx.send(20);
    let mut elsewhere = 0;
    let recovered_in = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(r) = subscribers.join_next().await {
            let (u, nodes, seen, bad) = r??;
            assert!(bad.is_empty(), "{u}: not a lossless resume: {bad:?}");
            let got: Vec<(String, u64)> = seen.into_iter().take(20).collect();
            let want: Vec<(String, u64)> = acked.iter().map(|a| (a.epoch.clone(), a.offset)).collect();
            assert_eq!(got, want, "{u}: every acked message once, in order");
            let last = nodes.last().cloned().unwrap_or_default();
            assert!(nodes.len() >= 2 && last != victim_id, "{u}: reconnected elsewhere: {nodes:?}");
            elsewhere += 1;
        }
        anyhow::Ok(killed.elapsed())
    })
    .await
    .context("the killed node's users did not all recover")??;
    assert_eq!(elsewhere, victims.len());
    note(&format!(
        "{} users of the killed node moved to other nodes, all 20 messages, no gap ({:.1}s after the kill)",
        victims.len(),
        recovered_in.as_secs_f64()
    ));

    // 3. The node returns (same container, same address): its users come back to it.
    compose.cluster(&["heal"])?;
    let back_in = wait_lb_up(compose.lb_stats, 3).await?;
    note(&format!("restarted node back in the LB after {:.1}s", back_in.as_secs_f64()));
    let again = landings(lb, &victims).await?;
    let strays: Vec<(&String, &String)> = again.iter().filter(|(_, n)| **n != victim_id).collect();
    assert!(strays.is_empty(), "users of {victim_id} that did not come back to it: {strays:?}");

    // 4. A rolling restart through the LB under load loses no durable message.
    let channels: Vec<String> = (0..4).map(|i| format!("orders:lb-rr{i}")).collect();
    let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    let lb_url = vec![format!("ws://{lb}/ws")];
    let mut subscriber = Subscriber::new(Config::new(lb_url.clone()).with_user("rr-subscriber"), &refs);
    let publisher = Publisher::new(Config::new(lb_url).with_user("rr-publisher"));
    let restarted = rolling_restart_under_load(&compose, publisher, &mut subscriber, &channels, PUBLISH_WITHIN).await?;
    note(&format!("rolling restart through the LB: {restarted}"));
    drop(subscriber);

    // 5. A 4th node: about 1/4 of the users move, all of them to the new node.
    let before = landings(lb, &users).await?;
    let four = compose.cluster_json(&["up", "4"])?;
    assert_eq!(four["lb"]["up"], 4, "{four}");
    let old: BTreeSet<&String> = before.values().collect();
    let after = landings(lb, &users).await?;
    let moved: Vec<&String> = users.iter().filter(|u| before[*u] != after[*u]).collect();
    let share = moved.len() as f64 / USERS as f64;
    note(&format!("adding a 4th node moved {} of {USERS} users ({:.1}%; ideal 25%)", moved.len(), share * 100.0));
    let new_nodes: BTreeSet<&String> = moved.iter().map(|u| &after[*u]).collect();
    assert_eq!(new_nodes.len(), 1, "moved users went to one node: {new_nodes:?}");
    assert!(new_nodes.iter().all(|n| !old.contains(n)), "moved users went to the new node only");
    assert!((0.10..=0.45).contains(&share), "share of users moved: {share}");

    compose.cluster(&["down"])?;
    let left = compose.leftovers()?;
    assert!(left.is_empty(), "left behind after down: {left}");
    note(&format!("lb test done in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// A node accepts `/ws?user=<id>` (the LB's routing parameter, proto/client.md) and
/// ignores it: the session is the same as without it.
#[tokio::test]
async fn a_node_accepts_and_ignores_the_user_query_parameter() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let config = Config::new(vec![node.ws_url()]).with_user("alice and bob/é");
    let mut sub = Subscriber::new(config, &["chat:lb"]);
    let first = tokio::time::timeout(WAIT, sub.next()).await??;
    assert!(matches!(&first, Event::Connected { node_id, .. } if node_id == "standalone"), "{first:?}");
    let (mut c, reply) = WsClient::connect(&format!("{}?user=carol&other=1", node.ws_url()), None).await?;
    assert_eq!(reply["type"], "connected", "{reply}");
    assert_eq!(reply.get("user"), None, "the parameter is not an identity: {reply}");
    let ack = c.publish("chat:lb", json!("hi")).await?;
    assert_eq!(ack["type"], "ack", "{ack}");
    loop {
        let e = tokio::time::timeout(WAIT, sub.next()).await??;
        if let Event::Message { data, .. } = e {
            assert_eq!(data, json!("hi"));
            return Ok(());
        }
    }
}

/// Timings on stderr (shown by `cargo nextest run --no-capture`, and on failure).
#[allow(clippy::print_stderr)]
fn note(s: &str) {
    eprintln!("{s}");
}
