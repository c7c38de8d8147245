//! The compose cluster (docker/compose.yaml) end to end, driven the way an operator
//! drives it: images from `scripts/docker-build`, the cluster from `scripts/cluster
//! --docker`, clients from the host.
//!
//! One test, because each step needs the cluster the previous one left: bring it up;
//! subscribe through one node's published port and publish through another's; `docker
//! kill` the channel's owner and check the subscriber goes on with no gap in the same
//! epoch (a durable namespace); bring the node back and rolling-restart the cluster under
//! load with zero `recovered: false`; scale to 5 nodes and back; bring it down and check
//! that no container, network or volume is left. A [`Compose`] guard
//! (`ringcast_tests::compose`) runs `docker-compose down -v` on every exit, failures
//! included.
//!
//! The Docker engine is part of this project's test machine, so this test is required:
//! without Docker it fails, it does not skip.

use anyhow::{bail, ensure, Result};
use ringcast_client::{Config, Publisher, Subscriber};
use ringcast_tests::compose::{build_images, docker, rolling_restart_under_load, Compose, Project};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The API key of the compose cluster under test.
const KEY: &str = "docker-test-api-key";
/// How long publishes may keep retrying through a failover or a restart.
const PUBLISH_WITHIN: Duration = Duration::from_secs(30);

async fn api(addr: SocketAddr, path: &str) -> Result<Value> {
    let r = http(addr, "GET", path, &[("Authorization", &format!("Bearer {KEY}"))], "").await?;
    ensure!(r.status == 200, "GET {path} on {addr}: {} {}", r.status, r.body);
    Ok(r.json())
}

/// A channel of `namespace` owned by `owner`, as `via` sees it.
async fn channel_owned_by(via: SocketAddr, namespace: &str, owner: &str) -> Result<String> {
    for i in 0..2000 {
        let ch = format!("{namespace}:c{i}");
        if api(via, &format!("/v1/channels/{ch}")).await?["owner"] == owner {
            return Ok(ch);
        }
    }
    bail!("no {namespace} channel owned by {owner}")
}

#[tokio::test]
async fn compose_cluster_survives_a_killed_owner_and_a_rolling_restart_under_load() -> Result<()> {
    let started = Instant::now();
    // Images from the binaries the tests run (no second build): scripts/docker-build.
    let tag = "test";
    let built = build_images(tag)?;
    note(&format!("images built in {:.1}s:\n{}", started.elapsed().as_secs_f64(), built));

    let compose = Compose(Project::new(tag, KEY));
    let t = Instant::now();
    let up = compose.cluster_json(&["up", "3"])?;
    note(&format!("cluster up in {:.1}s", t.elapsed().as_secs_f64()));
    assert_eq!(up["members"].as_array().map(Vec::len), Some(3), "{up}");
    assert_eq!(up["vacant"], 0, "{up}");
    let nodes = compose.nodes()?;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for n in &nodes {
        let h = docker(&["inspect", "-f", "{{.State.Health.Status}} {{.Config.User}}", &n.container])?;
        assert_eq!(h.trim(), "healthy 65532:65532", "{}: healthcheck and non-root user", n.container);
    }

    // Subscribe through node 0 and publish through node 1, from the host; node 2 owns
    // the (durable) channel and is killed halfway.
    let (sub_node, pub_node, victim) = (&nodes[0], &nodes[1], &nodes[2]);
    let channel = channel_owned_by(sub_node.host_addr, "orders", &victim.id).await?;
    let (mut sub, _) = WsClient::connect(&sub_node.ws_url(), None).await?;
    assert_eq!(sub.subscribe(&channel, None).await?["type"], "subscribed");
    let mut publisher = Publisher::new(Config::new(vec![pub_node.ws_url()]));
    let mut acks = Vec::new();
    for i in 1..=20 {
        acks.push(publisher.publish(&channel, &json!(i), &format!("k{i}"), PUBLISH_WITHIN).await?);
    }
    compose.cluster(&["kill", &victim.id])?;
    let killed = docker(&["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", &victim.container])?;
    assert_eq!(killed.trim(), "false 137", "docker kill left {} down", victim.container);
    for i in 21..=40 {
        acks.push(publisher.publish(&channel, &json!(i), &format!("k{i}"), PUBLISH_WITHIN).await?);
    }
    let epoch = acks[0].at.epoch.clone();
    for (i, a) in acks.iter().enumerate() {
        assert_eq!((a.at.epoch.as_str(), a.at.offset), (epoch.as_str(), i as u64 + 1), "acks in one epoch: {acks:?}");
    }
    let got = sub.messages(40).await?;
    assert!(got.iter().all(|m| m["epoch"] == json!(epoch)), "one epoch across the failover: {got:?}");
    assert_eq!(offsets(&got), (1..=40).collect::<Vec<u64>>(), "no gap across the failover");
    let owner = api(sub_node.host_addr, &format!("/v1/channels/{channel}")).await?["owner"].clone();
    assert_ne!(owner, json!(victim.id), "the channel moved off the killed node");
    drop(sub);

    // The killed node comes back (heal restarts containers that did not exit cleanly).
    compose.cluster(&["heal"])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = compose.cluster_json(&["status"])?;
        if s["members"].as_array().map(Vec::len) == Some(3) && s["vacant"] == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "the killed node did not rejoin: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Rolling restart under load. Clients dial the nodes' network addresses: a container
    // restarted from a published port range may get a different host port.
    let urls: Vec<String> = compose.nodes()?.iter().map(|n| format!("ws://{}:7400/ws", n.ip)).collect();
    let channels: Vec<String> = (0..4).map(|i| format!("orders:rr{i}")).collect();
    let refs: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut subscriber = Subscriber::new(Config::new(urls.clone()), &refs);
    let publisher = Publisher::new(Config::new(urls));
    let restarted = rolling_restart_under_load(&compose, publisher, &mut subscriber, &channels, PUBLISH_WITHIN).await?;
    note(&format!("rolling restart of 3 nodes: {restarted}"));

    // Scale to 5 nodes and back to 3, without editing a file.
    let five = compose.cluster_json(&["up", "5"])?;
    assert_eq!((five["members"].as_array().map(Vec::len), five["vacant"].clone()), (Some(5), json!(0)), "{five}");
    assert_eq!(compose.nodes()?.len(), 5);
    let three = compose.cluster_json(&["up", "3"])?;
    assert_eq!((three["members"].as_array().map(Vec::len), three["vacant"].clone()), (Some(3), json!(0)), "{three}");
    assert_eq!(compose.nodes()?.len(), 3, "scaling down removed the extra containers");

    // Down, and nothing left behind.
    compose.cluster(&["down"])?;
    let left = compose.leftovers()?;
    assert!(left.is_empty(), "left behind after down: {left}");
    note(&format!("docker test done in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// Timings on stderr (shown by `cargo nextest run --no-capture`, and on failure).
#[allow(clippy::print_stderr)]
fn note(s: &str) {
    eprintln!("{s}");
}
