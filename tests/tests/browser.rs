//! The browser side: `ringcast.js` (its own `node --test` suite, run here against a
//! fake socket and a real node), the scoreboard demo at `/` and the dashboard at
//! `/dashboard`, in real headless Chromium driven over WebDriver
//! (`ringcast_tests::webdriver`). Each browser step saves a screenshot to
//! `tests/output/browser/{test}/`.

use anyhow::{bail, Context, Result};
use ringcast_tests::cluster::TestCluster;
use ringcast_tests::webdriver::{output_dir, Chromedriver};
use ringcast_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A keep-latest namespace for scoreboards (the base config's `scores` is not one), and
/// the pages.
const BOARD: &str = "\n[namespaces.board]\nanonymous = true\nclient_publish = false\nkeep_latest = true\n\
                     history_size = 100\npresence = true\n\n[web]\npages = true\n";

fn web_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ringcastd/web")
}

/// Publishes a score of game `key` over HTTP; returns the ack.
async fn publish_score(addr: std::net::SocketAddr, channel: &str, key: &str, home: u64, away: u64) -> Result<Value> {
    let body = json!({"channel": channel, "key": key,
        "data": {"home": "Home", "away": "Away", "home_score": home, "away_score": away}});
    let r = http(addr, "POST", "/v1/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], &body.to_string())
        .await?;
    if r.status != 200 {
        bail!("publish answered {}: {}", r.status, r.body);
    }
    Ok(r.json())
}

#[tokio::test]
async fn ringcast_js_is_served_with_its_content_type_and_cache_headers() -> Result<()> {
    let plain = Ringcastd::start(&base_config(""))?;
    let js = http(plain.addr, "GET", "/ringcast.js", &[], "").await?;
    assert_eq!(js.status, 200);
    assert_eq!(js.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(js.header("cache-control"), Some("no-cache"));
    assert_eq!(js.body, std::fs::read_to_string(web_dir().join("ringcast.js"))?, "the file in the repo, verbatim");
    let etag = js.header("etag").context("an ETag")?.to_owned();
    let again = http(plain.addr, "GET", "/ringcast.js", &[("If-None-Match", &etag)], "").await?;
    assert_eq!((again.status, again.body.as_str()), (304, ""));
    for page in ["/", "/dashboard"] {
        let r = http(plain.addr, "GET", page, &[], "").await?;
        assert_eq!((r.status, error_code(&r.json())), (404, "not_found".into()), "{page} is off by default");
        assert!(r.body.contains("web.pages"), "{}", r.body);
    }

    let with_pages = Ringcastd::start(&base_config("\n[web]\npages = true\n"))?;
    for (page, needle) in
        [("/", "import { RingcastClient } from '/ringcast.js'"), ("/dashboard", "/v1/cluster?slots=owners")]
    {
        let r = http(with_pages.addr, "GET", page, &[], "").await?;
        assert_eq!(r.status, 200, "{page}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.body.contains(needle), "{page} holds {needle:?}");
    }
    Ok(())
}

#[tokio::test]
async fn what_the_dashboard_reads_slot_owners_and_public_endpoints_for_other_origins() -> Result<()> {
    let node = Ringcastd::start(&base_config(""))?;
    let key = format!("Bearer {API_KEY}");
    let v = http(node.addr, "GET", "/v1/cluster?slots=owners", &[("Authorization", &key)], "").await?.json();
    let owners = v["slot_owners"].as_array().context("slot_owners")?;
    assert_eq!(owners.len(), 1024);
    assert!(owners.iter().all(|o| o == "standalone"), "{v}");
    let plain = http(node.addr, "GET", "/v1/cluster", &[("Authorization", &key)], "").await?.json();
    assert!(plain.get("slot_owners").is_none(), "only on request: {plain}");
    let bad = http(node.addr, "GET", "/v1/cluster?slots=all", &[("Authorization", &key)], "").await?;
    assert_eq!((bad.status, error_code(&bad.json())), (400, "bad_request".into()));
    let anonymous = http(node.addr, "GET", "/v1/cluster?slots=owners", &[], "").await?;
    assert_eq!(anonymous.status, 401, "the cluster view still needs the API key");
    for path in ["/metrics", "/readyz", "/healthz"] {
        let r = http(node.addr, "GET", path, &[("Origin", "http://other-node:7400")], "").await?;
        assert_eq!((r.status, r.header("access-control-allow-origin")), (200, Some("*")), "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn the_js_client_passes_its_node_tests_with_a_fake_socket_and_a_real_node() -> Result<()> {
    // scripts/test installs Node.js (Debian's nodejs) when it is missing.
    let version = match Command::new("node").arg("--version").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Err(e) => anyhow::bail!(
            "node is not installed ({e}); the ringcast.js tests need Node.js 20+ (apt-get install nodejs)"
        ),
    };
    let major: u32 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(major >= 20, "ringcast.js's live tests need Node.js 20 or later (WebSocket), found {version}");
    let node = Ringcastd::start(&base_config(BOARD))?;
    let dir = web_dir();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        // Node 20 has a global WebSocket behind this flag; 22 has it by default.
        if major < 22 {
            cmd.arg("--experimental-websocket");
        }
        cmd.args(["--test", "test/"]).current_dir(dir);
        cmd.env("RINGCAST_TEST_NODE", format!("http://{}", node.addr)).env("RINGCAST_TEST_API_KEY", API_KEY);
        let out = cmd.output();
        drop(node);
        out
    })
    .await??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed:\n{text}");
    let count = |what: &str| -> u32 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {what} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("fail"), 0, "{text}");
    assert_eq!(count("skipped"), 0, "the live tests ran against the node:\n{text}");
    assert!(count("pass") >= 15, "unit and live tests ran:\n{text}");
    Ok(())
}

/// The page's debug record of what it processed.
async fn page_state(b: &ringcast_tests::webdriver::Browser) -> Result<Value> {
    b.execute("return window.scoreboard ? JSON.parse(JSON.stringify(window.scoreboard)) : null;", json!([])).await
}

#[tokio::test]
async fn the_demo_scoreboard_shows_the_demo_publishers_games_in_chromium() -> Result<()> {
    // The standalone run's own config (scripts/run), on a free port.
    let demo_toml = std::fs::read_to_string(web_dir().join("../demo.toml"))?;
    let node = Ringcastd::start(&demo_toml)?;
    let driver = Chromedriver::start()?;
    let b = driver.browser().await?;
    let shots = output_dir("demo_scoreboard");
    b.goto(&format!("http://{}/", node.addr)).await?;
    b.wait_for("connected", "return document.getElementById('state').dataset.state === 'connected'", WAIT).await?;
    assert_eq!(b.text("#node").await?.as_deref(), Some("standalone"));
    b.screenshot(&shots.join("1-connected-empty.png")).await?;

    // `ringcast demo scores`, as an operator runs it: 6 games, then 40 quick updates.
    let cli = workspace_binary("ringcast", "RINGCAST_BIN")?;
    let addr = node.addr;
    let demo = tokio::task::spawn_blocking(move || {
        Command::new(cli)
            .args(["--node", &format!("http://{addr}"), "--api-key", "dev-api-key", "--json"])
            .args(["demo", "scores", "--games", "6", "--ticks", "40", "--interval-ms", "25", "--seed", "7"])
            .output()
    });
    b.wait_for("6 games", "return document.querySelectorAll('.game').length === 6", WAIT).await?;
    let out = demo.await??;
    assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report, json!({"published": 46, "games": 6}));

    // Once the publisher is done, every card shows its game's latest score.
    for channel in ["scores:nba", "scores:nhl"] {
        let st = http(node.addr, "GET", &format!("/v1/channels/{channel}/state"), &[], "").await?.json();
        for e in st["entries"].as_array().context("entries")? {
            let (key, d) = (e["key"].as_str().context("key")?, &e["data"]);
            let want = format!("{}-{}", d["home_score"], d["away_score"]);
            let script = format!(
                "const c = document.querySelector('section[data-channel=\"{channel}\"] .game[data-key=\"{key}\"]'); \
                 return c && c.dataset.score === '{want}' && c.dataset.offset === '{}';",
                e["offset"]
            );
            b.wait_for(&format!("{channel} {key} at {want}"), &script, WAIT).await?;
        }
    }
    let seen = page_state(&b).await?;
    assert_eq!(seen["gaps"], json!([]));
    assert_eq!(seen["resets"], json!([]));
    b.screenshot(&shots.join("2-six-games-live.png")).await?;

    // A page opened now gets every game from the snapshot alone.
    let late = driver.browser().await?;
    late.goto(&format!("http://{}/", node.addr)).await?;
    late.wait_for("6 games from the snapshot", "return document.querySelectorAll('.game').length === 6", WAIT).await?;
    let s = page_state(&late).await?;
    assert_eq!((s["snapshots"].clone(), s["received"].clone()), (json!(2), json!([])), "{s}");
    late.screenshot(&shots.join("3-late-viewer-snapshot.png")).await?;

    // The node goes away: the page says so (and keeps retrying) instead of freezing.
    drop(node);
    b.wait_for(
        "the page to show it is disconnected",
        "return document.getElementById('state').textContent.startsWith('disconnected, retrying in') \
            && document.getElementById('node').textContent === '–';",
        WAIT,
    )
    .await?;
    b.screenshot(&shots.join("4-node-gone.png")).await?;
    Ok(())
}

#[tokio::test]
async fn the_scoreboard_moves_to_another_node_when_its_node_is_killed_and_misses_no_score() -> Result<()> {
    let c = TestCluster::start(3, BOARD).await?;
    // A channel whose owner survives: the point is the page's connection, not failover.
    let channel = c.channel_owned_by("board", "node-1").await?;
    let nodes: Vec<String> = c.nodes.iter().map(|n| n.addr.to_string()).collect();
    let driver = Chromedriver::start()?;
    let b = driver.browser().await?;
    let shots = output_dir("scoreboard_failover");
    let url = format!("http://{}/?nodes={}&channels={channel}&backoff_ms=200", nodes[0], nodes.join(","));
    b.goto(&url).await?;
    b.wait_for("connected to node-0", "return document.getElementById('node').textContent === 'node-0'", WAIT).await?;
    // Subscribed: a score published before the subscription's snapshot is taken arrives
    // in the snapshot, not as a message, and the page would rightly not list it.
    b.wait_for("the subscription's snapshot", "return (window.scoreboard?.snapshots ?? 0) >= 1", WAIT).await?;

    let card = format!("section[data-channel=\"{channel}\"] .game[data-key=\"final\"]");
    let shows = |n: u64| {
        format!("const c = document.querySelector('{card}'); return c && c.dataset.score === '{n}-0' && c.dataset.offset === '{n}';")
    };
    for n in 1..=5 {
        publish_score(c.nodes[2].addr, &channel, "final", n, 0).await?;
    }
    b.wait_for("score 5", &shows(5), WAIT).await?;
    b.screenshot(&shots.join("1-on-node-0.png")).await?;

    c.nodes[0].signal("KILL")?;
    let killed = std::time::Instant::now();
    // Scores keep coming (through another node) while the page is away.
    for n in 6..=10 {
        publish_score(c.nodes[1].addr, &channel, "final", n, 0).await?;
    }
    b.wait_for(
        "reconnected to another node",
        "const n = document.getElementById('node').textContent; \
         return document.getElementById('state').dataset.state === 'connected' && n !== 'node-0' && n !== '–';",
        Duration::from_secs(15),
    )
    .await?;
    // The first retry goes to the next node of the list after at most backoff_ms
    // (200 ms, full jitter); the rest is Chromium noticing the dead socket and the
    // WebSocket and connect round trips.
    let away = killed.elapsed();
    assert!(away < Duration::from_secs(5), "the page took {away:?} to reconnect");
    for n in 11..=12 {
        publish_score(c.nodes[2].addr, &channel, "final", n, 0).await?;
    }
    b.wait_for("score 12", &shows(12), WAIT).await?;
    b.wait_for("the recovered badge", "return !document.getElementById('recovered').hidden", WAIT).await?;
    b.screenshot(&shots.join("2-reconnected-recovered.png")).await?;

    let s = page_state(&b).await?;
    let received = s["received"].as_array().context("received")?;
    let offsets: Vec<u64> = received.iter().filter_map(|m| m["offset"].as_u64()).collect();
    assert_eq!(offsets, (1..=12).collect::<Vec<u64>>(), "every score once, in order: {s}");
    let epochs: std::collections::BTreeSet<&str> = received.iter().filter_map(|m| m["epoch"].as_str()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {s}");
    assert_eq!((s["gaps"].clone(), s["resets"].clone()), (json!([]), json!([])), "{s}");
    assert_eq!((s["resumes"].clone(), s["recoveredResumes"].clone()), (json!(1), json!(1)), "{s}");
    Ok(())
}

#[tokio::test]
async fn the_dashboard_draws_every_member_and_the_ring_follows_a_drain_and_a_join() -> Result<()> {
    let mut c = TestCluster::start(3, BOARD).await?;
    let driver = Chromedriver::start()?;
    let b = driver.browser().await?;
    let shots = output_dir("dashboard");
    let base = format!("http://{}/dashboard", c.nodes[0].addr);

    // Without the key the page shows only this node's public health and metrics, and
    // asks for the key; with a wrong one it says so instead of drawing.
    b.goto(&format!("{base}?poll_ms=300")).await?;
    b.wait_for(
        "this node's public row and a request for the key",
        "const rows = [...document.querySelectorAll('#members tr[data-node]')]; \
         return document.getElementById('status').textContent === 'waiting for the API key' && rows.length === 1 \
            && rows[0].dataset.node === 'node-0' && rows[0].querySelector('[data-col=health]').textContent === 'ready' \
            && rows[0].querySelector('[data-col=slots]').textContent === '–' \
            && rows[0].querySelector('button').disabled;",
        WAIT,
    )
    .await?;
    b.screenshot(&shots.join("0-no-key.png")).await?;
    b.goto(&format!("{base}?poll_ms=301#key=not-the-key")).await?;
    b.wait_for("wrong key", "return document.getElementById('status').textContent === 'wrong API key'", WAIT).await?;
    b.screenshot(&shots.join("1-wrong-key.png")).await?;

    b.goto(&format!("{base}?poll_ms=300#key={API_KEY}")).await?;
    let all_three = "const v = window.dashboard; \
        return v.members.length === 3 && ['node-0','node-1','node-2'].every(n => v.health[n] === 'ready') \
            && v.owners.length === 1024 && v.owners.every(o => o) && new Set(v.owners).size === 3;";
    b.wait_for("three members owning the ring", all_three, WAIT).await?;
    // The drawing matches the data: a row per member, the ring in three colours, and
    // slot counts that are the node's own view.
    let drawn = b
        .execute(
            "return {rows: [...document.querySelectorAll('#members tr[data-node]')].map(r => r.dataset.node), \
                     fills: [...new Set([...document.querySelectorAll('#ring path[data-slot]')].map(p => p.getAttribute('fill')))].length, \
                     arcs: document.querySelectorAll('#ring path[data-slot]').length, \
                     slots: Object.fromEntries([...document.querySelectorAll('#members tr[data-node]')] \
                        .map(r => [r.dataset.node, Number(r.querySelector('[data-col=slots]').textContent)]))};",
            json!([]),
        )
        .await?;
    assert_eq!(drawn["rows"], json!(["node-0", "node-1", "node-2"]), "{drawn}");
    assert_eq!((drawn["arcs"].clone(), drawn["fills"].clone()), (json!(1024), json!(3)), "{drawn}");
    let view = c.view(0).await?;
    assert_eq!(drawn["slots"], view["slots"], "{drawn} vs {view}");

    // Deliveries per second and connections, from node-1's /metrics.
    let channel = c.channel_owned_by("chat", "node-1").await?;
    let (mut sub, _) = WsClient::connect(&c.nodes[1].ws_url(), None).await?;
    assert_eq!(sub.subscribe(&channel, None).await?["type"], "subscribed");
    let deadline = std::time::Instant::now() + WAIT;
    let rate = "const v = window.dashboard; return v.rates['node-1'] > 0 && v.connections['node-1'] >= 1;";
    loop {
        for i in 0..20 {
            http_publish(&c.nodes[1], &channel, json!(i)).await?;
        }
        if b.execute(rate, json!([])).await? == json!(true) {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("no delivery rate shown for node-1: {}", b.execute("return window.dashboard", json!([])).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_for(
        "the rate in node-1's row",
        "const t = document.querySelector('#members tr[data-node=\"node-1\"] [data-col=rate]'); \
         return t && Number(t.textContent) > 0;",
        WAIT,
    )
    .await?;

    // The owner of a channel typed into the box.
    let owner = c.owner_of(&channel).await?;
    b.execute(
        "document.getElementById('channel').value = arguments[0]; document.getElementById('owner-form').requestSubmit();",
        json!([channel]),
    )
    .await?;
    let shown =
        b.wait_for("the owner", "return document.getElementById('owner-out').dataset.owner || null;", WAIT).await?;
    assert_eq!(shown, json!(owner));
    b.screenshot(&shots.join("2-three-members.png")).await?;

    // Drain node-2: the ring moves its slots to the others, and its row goes.
    c.drain(2).await?;
    let two = "const v = window.dashboard; \
        return v.members.length === 2 && v.members.every(m => m.node_id !== 'node-2') \
            && v.owners.every(o => o === 'node-0' || o === 'node-1') \
            && document.querySelectorAll('#members tr[data-node]').length === 2 \
            && ![...document.querySelectorAll('#ring path[data-slot]')].some(p => p.dataset.owner === 'node-2');";
    b.wait_for("the ring without node-2", two, Duration::from_secs(30)).await?;
    let fills = b
        .execute(
            "return new Set([...document.querySelectorAll('#ring path[data-slot]')].map(p => p.getAttribute('fill'))).size;",
            json!([]),
        )
        .await?;
    assert_eq!(fills, json!(2));
    b.screenshot(&shots.join("3-after-draining-node-2.png")).await?;

    // A node joins: it appears, and takes its share of the ring.
    c.add_node("node-3", "core")?;
    let joined = "const v = window.dashboard; \
        return v.members.map(m => m.node_id).join() === 'node-0,node-1,node-3' && v.health['node-3'] === 'ready' \
            && v.owners.every(o => o) && v.owners.filter(o => o === 'node-3').length > 200 \
            && [...document.querySelectorAll('#ring path[data-slot]')].filter(p => p.dataset.owner === 'node-3').length \
               === v.owners.filter(o => o === 'node-3').length;";
    b.wait_for("node-3 in the ring", joined, Duration::from_secs(30)).await?;
    b.screenshot(&shots.join("4-after-node-3-joined.png")).await?;

    // The node serving the page dies: the page says it cannot reach it.
    c.nodes[0].signal("KILL")?;
    b.wait_for(
        "the page to show it is disconnected",
        "return document.getElementById('status').textContent.startsWith('disconnected: cannot reach') \
            && document.getElementById('status').dataset.ok === 'false';",
        WAIT,
    )
    .await?;
    b.screenshot(&shots.join("5-node-gone.png")).await?;
    Ok(())
}
