//! A small version of every scenario, checking the invariants the simulation relies on:
//! after convergence no slot is without an owner and every slot is held by its desired
//! owner; no slot is served by two nodes at once or claimed twice at one epoch; the
//! storm's counts are conserved; the fan-out and hot-channel figures are consistent.

use ringcast_core::ownership::DEFAULT_HANDOFFS_IN_FLIGHT;
use ringcast_core::{Slot, SLOTS};
use ringcast_sim::membership::{self, Change, ChangeSpec, Cluster};
use ringcast_sim::storm::{self, StormSpec};
use ringcast_sim::{balance, fanout, hot, node_id};

#[test]
fn a_ring_balance_places_every_slot_within_the_load_cap() {
    let spec = balance::BalanceSpec { nodes: vec![10, 50], vnodes: vec![16, 128], channels: 5_000 };
    let rows = balance::run(&spec).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 4);
    for r in rows {
        let cap = (ringcast_core::ring::LOAD_FACTOR * f64::from(SLOTS) / r.nodes as f64).ceil() as usize;
        assert!(r.slots_max <= cap, "{r:?}");
        assert!(r.slots_max_over_mean >= 1.0 && r.load_max_over_mean >= 1.0, "{r:?}");
        assert_eq!(r.idle_nodes, 0, "{r:?}");
    }
}

fn spec(nodes: usize, change: Change, throttle: usize) -> ChangeSpec {
    ChangeSpec { nodes, change, throttle, slot_state_bytes: 1e6, gbit_per_s: 10.0, limit_ms: 60_000 }
}

#[test]
fn b_join_drain_and_crash_converge_without_double_owners() {
    for change in [Change::Join { count: 1 }, Change::Drain, Change::Crash, Change::Join { count: 3 }] {
        let o = membership::run(&spec(6, change, DEFAULT_HANDOFFS_IN_FLIGHT));
        assert!(o.violations.is_empty(), "{change:?}: {:?}", o.violations);
        assert!(o.converged_ms.is_some(), "{change:?}");
        assert!(o.slots_moved > 0 && o.etcd_writes > 0 && o.watch_events >= o.etcd_writes, "{o:?}");
        // Bounded loads may move a little more than the ideal, never wildly more.
        assert!(
            (o.slots_moved as f64) < o.ideal_moved * 1.6 + 4.0,
            "{change:?}: {} vs {}",
            o.slots_moved,
            o.ideal_moved
        );
        if change == Change::Crash {
            assert!(o.converged_ms.unwrap_or(0) >= ringcast_sim::cost::LEASE_TTL_MS, "the lease must expire first");
            assert!(o.claims > 0, "the replicas claim the vacated slots");
        }
    }
}

#[test]
fn b_the_throttle_bounds_handoffs_per_round() {
    // 3 -> 4 nodes moves ~256 slots, ~85 per holder: 3 rounds at 32, 1 at 1024.
    let throttled = membership::run(&spec(3, Change::Join { count: 1 }, 32));
    let free = membership::run(&spec(3, Change::Join { count: 1 }, 1024));
    assert!(throttled.violations.is_empty() && free.violations.is_empty());
    assert!(throttled.rounds >= 3, "{}", throttled.rounds);
    assert_eq!(free.rounds, 1);
    assert_eq!(throttled.slots_moved, free.slots_moved, "the throttle changes timing, not placement");
    assert!(throttled.converged_ms > free.converged_ms);
}

#[test]
fn b_the_checker_catches_a_slot_served_twice() {
    let mut c = Cluster::new(4, 32, 20);
    assert!(c.run_until_converged(10_000).is_some());
    assert!(c.violations.is_empty());
    let slot = Slot::new(5).unwrap_or_else(|| unreachable!());
    let holder = c.holders()[&slot].clone();
    let epoch = c.etcd.claims()[&slot].epoch;
    let other = (0..4).map(node_id).find(|n| *n != holder).unwrap_or_else(|| unreachable!());
    c.inject_serving(&other, slot, epoch);
    c.tick();
    assert!(c.violations.len() >= 2, "two servers and one epoch held twice: {:?}", c.violations);
}

fn small_storm(grace_ms: u64, jitter: bool) -> StormSpec {
    StormSpec {
        nodes: 10,
        connections: 100_000,
        rooms_per_connection: 1,
        outage_ms: 2_000,
        handshakes_per_second: 1_000,
        grace_ms,
        jitter,
        sample_memberships: 3_000,
        max_room: 200,
        seed: 3,
        limit_ms: 300_000,
    }
}

#[test]
fn c_storm_counts_are_conserved_and_debounce_and_jitter_help() {
    let debounced = storm::run(&small_storm(30_000, true)).unwrap_or_else(|e| panic!("{e}"));
    let raw = storm::run(&small_storm(0, true)).unwrap_or_else(|e| panic!("{e}"));
    let herd = storm::run(&small_storm(30_000, false)).unwrap_or_else(|e| panic!("{e}"));
    // 10,000 connections per node at 1,000/s: everyone is back within about 10 s of the
    // outage's end.
    let all = debounced.back_all_ms.unwrap_or_else(|| panic!("not all back"));
    assert!((11_000..20_000).contains(&all), "{all}");
    // Without debounce every membership leaves and joins once: 2 events each.
    // (Scaled from the sample: 100,000 memberships in all.)
    assert!((raw.presence_events_total - 200_000.0).abs() < 1.0, "{}", raw.presence_events_total);
    assert!(raw.spurious_leaves_fraction > 0.99);
    // With a 30 s grace and recovery in seconds, nobody leaves or rejoins.
    assert_eq!(debounced.presence_events_total, 0.0);
    assert_eq!(debounced.spurious_leaves_fraction, 0.0);
    // Reconnects are all counted once.
    let reconnects: f64 = debounced.timeline.iter().map(|s| s.reconnects).sum();
    assert!((reconnects - 100_000.0).abs() < 1.0, "{reconnects}");
    // Without jitter the clients come back in synchronized waves: slower, more refusals.
    assert!(herd.refused_total > debounced.refused_total);
    assert!(herd.back_99_ms.unwrap_or(u64::MAX) > debounced.back_99_ms.unwrap_or(0));
}

#[test]
fn d_interest_sends_one_frame_per_node() {
    let rows = fanout::run(100_000, &[2, 10, 50], 1).unwrap_or_else(|e| panic!("{e}"));
    for r in rows {
        assert_eq!(r.owner_frames_per_publish, r.nodes as u64 - 1, "{r:?}");
        let remote_share = (r.nodes as f64 - 1.0) / r.nodes as f64;
        assert!(r.naive_frames_per_publish as f64 > 100_000.0 * remote_share * 0.9, "{r:?}");
        assert!(r.link_limit_publishes_per_s > r.naive_link_limit_publishes_per_s, "{r:?}");
    }
    assert!(fanout::link_bottleneck_nodes(10.0) > fanout::link_bottleneck_nodes(100.0));
}

#[test]
fn e_the_log_sequences_and_the_bound_falls_with_fan_out() {
    let rows = hot::run(2_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 9);
    assert!(rows.iter().all(|r| r.appends_per_s > 1_000.0), "{rows:?}");
    let b = hot::bounds(100.0, &[0, 10, 100]);
    assert!(b[0].publishes_per_s_batched > b[1].publishes_per_s_batched);
    assert!(b[1].publishes_per_s_unbatched > b[2].publishes_per_s_unbatched);
}
