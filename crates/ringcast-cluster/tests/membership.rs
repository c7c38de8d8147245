//! Membership against a real etcd: each test starts its own `etcd` process
//! ([`EtcdServer`]), so tests are independent and can stop and restart it.
//!
//! Waiting is done on the view channel with a timeout, never with a sleep; the few sleeps
//! below are either the outage being tested or a negative check ("still there after X").

use anyhow::{bail, Context, Result};
use ringcast_cluster::membership::{
    ClaimExpect, ClaimOutcome, MemberRecord, Membership, MembershipConfig, MembershipError, Role, View,
};
use ringcast_core::{NodeId, Slot};
use ringcast_tests::EtcdServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest wait for any expected change.
const WAIT: Duration = Duration::from_secs(10);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ringcast_cluster=debug"));
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
}

/// Defaults, or a 2 s TTL with 300 ms keepalives where expiry matters.
fn config(etcd: &EtcdServer, cluster: &str, short_ttl: bool) -> MembershipConfig {
    let mut cfg = MembershipConfig::new(vec![etcd.endpoint()], cluster);
    if short_ttl {
        cfg.ttl = Duration::from_secs(2);
        cfg.keepalive = Duration::from_millis(300);
    }
    cfg.connect_timeout = Duration::from_secs(2);
    cfg
}

fn record(id: &str, port: u16) -> MemberRecord {
    MemberRecord {
        node_id: id.into(),
        quic_addr: ([127, 0, 0, 1], port).into(),
        client_addr: ([127, 0, 0, 1], port + 1).into(),
        role: Role::Core,
        draining: false,
        started_at_ms: 1_700_000_000_000,
    }
}

struct Node {
    m: Membership,
    views: watch::Receiver<Arc<View>>,
    shutdown: CancellationToken,
}

async fn join(cfg: MembershipConfig, id: &str, port: u16) -> Result<Node> {
    let shutdown = CancellationToken::new();
    let (m, views) = Membership::start(cfg, record(id, port), shutdown.clone()).await?;
    Ok(Node { m, views, shutdown })
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn slot(n: u16) -> Slot {
    Slot::new(n).unwrap_or_else(|| panic!("slot {n}"))
}

/// Waits until the node's view satisfies `pred`; returns that view.
async fn wait_view(node: &mut Node, what: &str, pred: impl Fn(&View) -> bool) -> Result<Arc<View>> {
    let got = tokio::time::timeout(WAIT, node.views.wait_for(|v| pred(v))).await.map(|r| r.map(|v| Arc::clone(&v)));
    match got {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => bail!("view channel closed while waiting for {what}"),
        Err(_) => bail!("no view with {what} within {WAIT:?}; last: {:?}", node.views.borrow()),
    }
}

fn members(v: &View) -> Vec<&str> {
    v.members.keys().map(NodeId::as_str).collect()
}

async fn raw_client(etcd: &EtcdServer) -> Result<etcd_client::Client> {
    Ok(etcd_client::Client::connect([etcd.endpoint()], None).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_see_each_other_and_leave_is_prompt() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let mut a = join(config(&etcd, "c", false), "a", 7000).await?;
    let mut b = join(config(&etcd, "c", false), "b", 7010).await?;
    for n in [&mut a, &mut b] {
        let v = wait_view(n, "a and b", |v| members(v) == ["a", "b"]).await?;
        assert_eq!(v.members[&id("b")], record("b", 7010));
    }
    let left = Instant::now();
    b.m.leave().await?;
    wait_view(&mut a, "b gone", |v| members(v) == ["a"]).await?;
    // Well inside the 6 s TTL: the lease was revoked, not left to expire.
    assert!(left.elapsed() < Duration::from_secs(3), "took {:?}", left.elapsed());
    assert_eq!(b.m.lease_id(), None);
    assert_eq!(b.m.owner_deadline(), None);
    assert!(matches!(b.m.claim(slot(1), ClaimExpect::Vacant).await, Err(MembershipError::Stopped)));
    b.m.leave().await?; // idempotent
    a.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_disappears_after_the_ttl_with_its_claims() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let mut a = join(config(&etcd, "c", true), "a", 7000).await?;
    let b = join(config(&etcd, "c", true), "b", 7010).await?;
    let ClaimOutcome::Claimed { epoch } = b.m.claim(slot(5), ClaimExpect::Vacant).await? else {
        bail!("vacant claim lost")
    };
    wait_view(&mut a, "b and its claim", |v| {
        members(v) == ["a", "b"] && v.claims.get(&slot(5)).is_some_and(|c| c.owner == id("b") && c.epoch == epoch)
    })
    .await?;

    // A crash: the task stops, nothing is revoked.
    b.shutdown.cancel();
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(members(&a.views.borrow()), ["a", "b"], "b must linger until its lease expires");
    let v = wait_view(&mut a, "b and its claim gone", |v| members(v) == ["a"] && v.claims.is_empty()).await?;
    let gone = crashed.elapsed();
    assert!(gone >= Duration::from_millis(1500) && gone < Duration::from_secs(6), "gone after {gone:?}");
    assert!(v.revision > i64::try_from(epoch)?);
    assert!(matches!(b.m.claim(slot(6), ClaimExpect::Vacant).await, Err(MembershipError::Stopped)));
    a.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_compare_and_swap_with_rising_epochs() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let mut a = join(config(&etcd, "c", false), "a", 7000).await?;
    let b = join(config(&etcd, "c", false), "b", 7010).await?;
    let s = slot(9);

    let ClaimOutcome::Claimed { epoch: e1 } = a.m.claim(s, ClaimExpect::Vacant).await? else { bail!("first claim") };
    let second = b.m.claim(s, ClaimExpect::Vacant).await?;
    let held_by_a = ringcast_cluster::membership::SlotClaim { owner: id("a"), epoch: e1, replica: None };
    assert_eq!(second, ClaimOutcome::Lost { current: Some(held_by_a.clone()) });
    wait_view(&mut a, "a's claim", |v| {
        v.claims.get(&s) == Some(&held_by_a) && v.revision >= i64::try_from(e1).unwrap_or(0)
    })
    .await?;

    let ClaimOutcome::Claimed { epoch: e2 } = b.m.claim(s, ClaimExpect::Epoch(e1)).await? else { bail!("handoff") };
    assert!(e2 > e1);
    let held_by_b = ringcast_cluster::membership::SlotClaim { owner: id("b"), epoch: e2, replica: None };
    assert_eq!(a.m.claim(s, ClaimExpect::Epoch(e1)).await?, ClaimOutcome::Lost { current: Some(held_by_b.clone()) });
    assert_eq!(a.m.claim(s, ClaimExpect::Epoch(0)).await?, ClaimOutcome::Lost { current: Some(held_by_b.clone()) });
    assert_eq!(a.m.claim(s, ClaimExpect::Vacant).await?, ClaimOutcome::Lost { current: Some(held_by_b.clone()) });
    wait_view(&mut a, "b's claim", |v| v.claims.get(&s) == Some(&held_by_b)).await?;

    // The owner names its replica by a CAS on its own epoch, which moves the epoch on.
    let ClaimOutcome::Claimed { epoch: e3 } = b.m.claim_with_replica(s, ClaimExpect::Epoch(e2), Some(&id("a"))).await?
    else {
        bail!("replica update")
    };
    assert!(e3 > e2);
    let with_replica = ringcast_cluster::membership::SlotClaim { owner: id("b"), epoch: e3, replica: Some(id("a")) };
    wait_view(&mut a, "b's claim naming a", |v| v.claims.get(&s) == Some(&with_replica)).await?;

    // An epoch on a vacant slot matches nothing, Epoch(0) included.
    let vacant = slot(10);
    assert_eq!(a.m.claim(vacant, ClaimExpect::Epoch(e1)).await?, ClaimOutcome::Lost { current: None });
    assert_eq!(a.m.claim(vacant, ClaimExpect::Epoch(0)).await?, ClaimOutcome::Lost { current: None });
    assert!(!a.views.borrow().claims.contains_key(&vacant));
    a.m.leave().await?;
    b.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_is_visible_to_others() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let a = join(config(&etcd, "c", false), "a", 7000).await?;
    let mut b = join(config(&etcd, "c", false), "b", 7010).await?;
    a.m.set_draining(true).await?;
    wait_view(&mut b, "a draining", |v| v.members.get(&id("a")).is_some_and(|r| r.draining)).await?;
    a.m.set_draining(false).await?;
    wait_view(&mut b, "a not draining", |v| v.members.get(&id("a")).is_some_and(|r| !r.draining)).await?;
    a.m.leave().await?;
    b.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_keep_working_across_an_etcd_restart() -> Result<()> {
    init_tracing();
    let mut etcd = EtcdServer::start()?;
    let mut a = join(config(&etcd, "c", true), "a", 7000).await?;
    let b = join(config(&etcd, "c", true), "b", 7010).await?;
    wait_view(&mut a, "a and b", |v| members(v) == ["a", "b"]).await?;

    etcd.stop()?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(b.m.claim(slot(1), ClaimExpect::Vacant).await.is_err(), "a claim cannot succeed without etcd");
    assert_eq!(members(&a.views.borrow()), ["a", "b"], "the last view is kept while etcd is away");
    etcd.restart()?;

    b.m.set_draining(true).await.context("set_draining after the restart")?;
    wait_view(&mut a, "b draining", |v| v.members.get(&id("b")).is_some_and(|r| r.draining)).await?;
    let ClaimOutcome::Claimed { epoch } = b.m.claim(slot(2), ClaimExpect::Vacant).await? else { bail!("claim lost") };
    wait_view(&mut a, "b's new claim", |v| v.claims.get(&slot(2)).is_some_and(|c| c.epoch == epoch)).await?;
    let deadline = Instant::now() + WAIT;
    while a.m.owner_deadline().is_none_or(|d| d <= Instant::now()) {
        assert!(Instant::now() < deadline, "a's keepalives did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.m.leave().await?;
    b.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_stay_correct_across_compaction() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let mut cfg = config(&etcd, "c", false);
    cfg.relist_interval = Duration::from_millis(400);
    let mut a = join(cfg.clone(), "a", 7000).await?;
    let b = join(cfg, "b", 7010).await?;
    let mut raw = raw_client(&etcd).await?;
    for i in 0..100u16 {
        raw.put(format!("/c/slots/{}", i % 20), r#"{"owner":"b"}"#, None).await?;
        raw.delete(format!("/c/slots/{}", i % 20), None).await?;
    }
    let at = raw.get("/c/", None).await?.header().map_or(0, |h| h.revision());
    raw.compact(at, Some(etcd_client::CompactionOptions::new().with_physical())).await?;

    let ClaimOutcome::Claimed { epoch } = b.m.claim(slot(100), ClaimExpect::Vacant).await? else { bail!("claim") };
    let v = wait_view(&mut a, "only b's claim", |v| v.claims.keys().eq([&slot(100)])).await?;
    assert_eq!(members(&v), ["a", "b"]);
    assert_eq!(v.claims[&slot(100)].epoch, epoch);

    // Several periodic re-lists later the view is still right, and unchanged views were
    // not published again.
    a.views.mark_unchanged();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(!a.views.has_changed()?, "a re-list that found nothing new must not publish");
    raw.delete("/c/slots/100", None).await?;
    wait_view(&mut a, "no claims", |v| v.claims.is_empty() && members(v) == ["a", "b"]).await?;
    a.m.leave().await?;
    b.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_are_skipped() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let mut raw = raw_client(&etcd).await?;
    let good = |id: &str| serde_json::to_string(&record(id, 7100)).unwrap_or_else(|e| panic!("{e}"));
    let mut extra_field: serde_json::Value = serde_json::from_str(&good("y"))?;
    extra_field["cert_fingerprint"] = "ab:cd".into();
    let bad = [
        ("/c/nodes/x", "not json".to_owned()),
        ("/c/nodes/y", extra_field.to_string()),
        ("/c/nodes/z", good("other")),
        ("/c/nodes/Bad", good("Bad")),
        ("/c/nodes/", good("")),
        ("/c/slots/abc", r#"{"owner":"a"}"#.to_owned()),
        ("/c/slots/1024", r#"{"owner":"a"}"#.to_owned()),
        ("/c/slots/07", r#"{"owner":"a"}"#.to_owned()),
        ("/c/slots/3", r#"{"owner":"a","prev_epoch":1}"#.to_owned()),
        ("/c/slots/8", r#"{"owner":"NOT VALID"}"#.to_owned()),
        ("/c/config", "anything".to_owned()),
    ];
    // Present at the first list...
    for (k, v) in &bad {
        raw.put(*k, v.as_str(), None).await?;
    }
    raw.put("/c/slots/4", r#"{"owner":"q"}"#, None).await?;
    let mut a = join(config(&etcd, "c", false), "a", 7000).await?;
    let v = a.views.borrow().clone();
    assert_eq!(members(&v), ["a"]);
    assert_eq!(v.claims.keys().map(|s| s.get()).collect::<Vec<_>>(), [4]);

    // ...and arriving through the watch, followed by a good record.
    raw.delete("/c/", Some(etcd_client::DeleteOptions::new().with_prefix())).await?;
    a.m.set_draining(false).await?; // our own record was deleted with the rest: put it back
    for (k, v) in &bad {
        raw.put(*k, v.as_str(), None).await?;
    }
    raw.put("/c/nodes/w", good("w"), None).await?;
    let v = wait_view(&mut a, "w", |v| members(v) == ["a", "w"]).await?;
    assert!(v.claims.is_empty(), "{:?}", v.claims);

    // A good value replacing a bad one is picked up; the member keeps working.
    raw.put("/c/slots/3", r#"{"owner":"w"}"#, None).await?;
    wait_view(&mut a, "slot 3", |v| v.claims.get(&slot(3)).is_some_and(|c| c.owner == id("w"))).await?;
    assert!(matches!(a.m.claim(slot(5), ClaimExpect::Vacant).await?, ClaimOutcome::Claimed { .. }));
    // A claim lost to an undecodable value reports no current claim.
    assert_eq!(a.m.claim(slot(8), ClaimExpect::Vacant).await?, ClaimOutcome::Lost { current: None });
    a.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_deadline_follows_keepalives_and_passes_without_etcd() -> Result<()> {
    init_tracing();
    let mut etcd = EtcdServer::start()?;
    let a = join(config(&etcd, "c", true), "a", 7000).await?;
    let lease = a.m.lease_id().context("a lease")?;
    let until = Instant::now() + Duration::from_secs(2);
    let mut last = None;
    while Instant::now() < until {
        let d = a.m.owner_deadline().context("deadline while keepalives succeed")?;
        assert!(d > Instant::now(), "deadline passed while etcd is up");
        // TTL 2 s: never more than 2*0.99 - 1 s ahead of now.
        assert!(d <= Instant::now() + Duration::from_millis(980));
        last = Some(d);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_some());

    etcd.stop()?;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let d = a.m.owner_deadline().context("the lease is still ours as far as we know")?;
    assert!(d < Instant::now(), "deadline must pass while etcd is away");
    assert!(d <= stopped + Duration::from_millis(980), "no keepalive can have succeeded after the stop");
    assert_eq!(a.m.lease_id(), Some(lease));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_its_claims_stay_lost() -> Result<()> {
    init_tracing();
    let etcd = EtcdServer::start()?;
    let a = join(config(&etcd, "c", true), "a", 7000).await?;
    let mut b = join(config(&etcd, "c", true), "b", 7010).await?;
    let ClaimOutcome::Claimed { .. } = a.m.claim(slot(1), ClaimExpect::Vacant).await? else { bail!("claim") };
    wait_view(&mut b, "a's claim", |v| v.claims.contains_key(&slot(1))).await?;
    let old = a.m.lease_id().context("lease")?;

    let mut raw = raw_client(&etcd).await?;
    raw.lease_revoke(old).await?;
    // a's record vanishes and comes back within one keepalive period, which can be too
    // quick to observe; its claim vanishes for good.
    wait_view(&mut b, "a's claim gone", |v| v.claims.is_empty()).await?;
    // The record is put before the handle learns the new lease: poll briefly.
    let until = Instant::now() + WAIT;
    let new = loop {
        match a.m.lease_id() {
            Some(l) if l != old => break l,
            _ if Instant::now() > until => bail!("no new lease"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_ne!(new, old);
    assert!(a.m.owner_deadline().is_some());
    let v = wait_view(&mut b, "a back", |v| members(v) == ["a", "b"]).await?;
    assert!(v.claims.is_empty(), "claims under the old lease must not come back");
    assert!(matches!(a.m.claim(slot(1), ClaimExpect::Vacant).await?, ClaimOutcome::Claimed { .. }));
    a.m.leave().await?;
    b.m.leave().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_bad_input_and_unreachable_etcd() -> Result<()> {
    init_tracing();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cfg = |cluster: &str| {
        let mut c = MembershipConfig::new(vec![format!("http://127.0.0.1:{port}")], cluster);
        c.connect_timeout = Duration::from_millis(500);
        c
    };
    let start = |cfg: MembershipConfig, me: MemberRecord| async move {
        Membership::start(cfg, me, CancellationToken::new()).await.map(|_| ())
    };
    for bad in ["", "Upper", "a/b", "#x", "a:b"] {
        assert!(
            matches!(start(cfg(bad), record("a", 7000)).await, Err(MembershipError::InvalidCluster { .. })),
            "{bad}"
        );
    }
    assert!(matches!(start(cfg("c"), record("a/b", 7000)).await, Err(MembershipError::InvalidNodeId { .. })));
    let mut slow = cfg("c");
    slow.keepalive = Duration::from_secs(5);
    assert!(matches!(start(slow, record("a", 7000)).await, Err(MembershipError::Config(_))));
    let mut unspecified = record("a", 7000);
    unspecified.quic_addr = ([0, 0, 0, 0], 7000).into();
    assert!(matches!(start(cfg("c"), unspecified).await, Err(MembershipError::Config(_))));

    let t = Instant::now();
    let r = start(cfg("c"), record("a", 7000)).await;
    assert!(matches!(r, Err(MembershipError::Etcd { .. } | MembershipError::Timeout { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
    Ok(())
}

/// The router holds the handle across tasks: its futures must be `Send`.
#[test]
fn handle_and_futures_are_send_and_sync() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync + Clone>() {}
    sync::<Membership>();
    let cfg = MembershipConfig::new(vec!["http://127.0.0.1:1".into()], "c");
    send(&Membership::start(cfg, record("a", 7000), CancellationToken::new()));
    let _ = |m: Membership| {
        send(&m.claim(slot(1), ClaimExpect::Vacant));
        send(&m.set_draining(true));
        send(&m.leave());
    };
}
