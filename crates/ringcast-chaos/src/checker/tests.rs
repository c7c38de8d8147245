//! Synthetic histories: one clean, and one per invariant that breaks exactly that
//! invariant exactly once (the others stay at 0), so every checker path is proven to
//! fire and to stay quiet.

use super::{check, Findings, INVARIANTS};
use crate::history::{Entry, Event, Outcome, Pos};
use std::collections::BTreeMap;

fn pos(epoch: &str, offset: u64) -> Pos {
    Pos { epoch: epoch.to_owned(), offset }
}

fn meta() -> Event {
    Event::Meta {
        scenario: "test".into(),
        nodes: 3,
        durable_namespaces: vec!["durable".into()],
        durable_enforced: true,
        fault_grace_ms: 1000,
    }
}

fn invoke(t: u64, key: &str, channel: &str) -> Event {
    Event::PubInvoke {
        t,
        publisher: "p1".into(),
        key: key.into(),
        channel: channel.into(),
        attempt: 1,
        node: "node-0".into(),
    }
}

fn done(t: u64, key: &str, channel: &str, result: Outcome, at: Option<Pos>) -> Event {
    Event::PubComplete {
        t,
        publisher: "p1".into(),
        key: key.into(),
        channel: channel.into(),
        result,
        invoked: t.saturating_sub(1),
        attempts: 1,
        pos: at,
        duplicate: false,
        error: None,
    }
}

fn publish(t: u64, key: &str, channel: &str, epoch: &str, offset: u64) -> Vec<Event> {
    vec![invoke(t, key, channel), done(t + 1, key, channel, Outcome::Ok, Some(pos(epoch, offset)))]
}

fn subscribed(t: u64, sub: &str, channel: &str, since: Option<Pos>, recovered: Option<bool>, at: Pos) -> Event {
    Event::Subscribed {
        t,
        sub: sub.into(),
        channel: channel.into(),
        node: "node-1".into(),
        since,
        recovered,
        reason: recovered.and_then(|r| (!r).then(|| "epoch_changed".to_owned())),
        pos: at,
        resume_ms: None,
    }
}

fn deliver(t: u64, sub: &str, channel: &str, at: Pos, payload: &str) -> Event {
    Event::Deliver {
        t,
        sub: sub.into(),
        channel: channel.into(),
        node: "node-1".into(),
        pos: at,
        payload: Some(payload.into()),
    }
}

fn final_read(channel: &str, epoch: &str, entries: &[(u64, &str)]) -> Event {
    Event::FinalRead {
        t: 10_000,
        channel: channel.into(),
        epoch: Some(epoch.into()),
        entries: entries.iter().map(|(o, p)| Entry { offset: *o, payload: Some((*p).to_owned()) }).collect(),
        complete: true,
    }
}

/// A durable channel with two acked publishes delivered to one subscriber, and a
/// best-effort channel that changes epoch (allowed there) with a signalled resume.
fn clean() -> Vec<Event> {
    let mut h = vec![meta(), subscribed(1, "s1", "durable:a", None, None, pos("E1", 0))];
    h.extend(publish(10, "p1-1", "durable:a", "E1", 1));
    h.push(deliver(12, "s1", "durable:a", pos("E1", 1), "p1-1"));
    h.extend(publish(20, "p1-2", "durable:a", "E1", 2));
    h.push(deliver(22, "s1", "durable:a", pos("E1", 2), "p1-2"));
    h.push(subscribed(2, "s1", "besteffort:b", None, None, pos("F1", 0)));
    h.extend(publish(30, "p1-3", "besteffort:b", "F1", 1));
    h.push(deliver(32, "s1", "besteffort:b", pos("F1", 1), "p1-3"));
    h.push(Event::Disconnect { t: 40, sub: "s1".into(), node: "node-1".into(), why: "closed".into() });
    h.push(subscribed(45, "s1", "besteffort:b", Some(pos("F1", 1)), Some(false), pos("F2", 0)));
    h.extend(publish(50, "p1-4", "besteffort:b", "F2", 1));
    h.push(deliver(52, "s1", "besteffort:b", pos("F2", 1), "p1-4"));
    h.push(final_read("durable:a", "E1", &[(1, "p1-1"), (2, "p1-2")]));
    h.push(final_read("besteffort:b", "F2", &[(1, "p1-4")]));
    h
}

fn assert_only(f: &Findings, id: &str) {
    for (inv, _) in INVARIANTS {
        let want = u64::from(inv == id);
        assert_eq!(f.count(inv), want, "{inv}: {:?}", f.examples);
    }
}

#[test]
fn clean_history_has_no_violation() {
    let f = check(&clean());
    for (inv, _) in INVARIANTS {
        assert_eq!(f.count(inv), 0, "{inv}: {:?}", f.examples);
    }
    assert_eq!((f.ops_ok, f.ops_fail, f.ops_info), (4, 0, 0));
    assert_eq!(f.deliveries, 4);
    assert_eq!(f.final_read_failures, 0);
    assert_eq!(f.recovered_false, 1);
}

#[test]
fn i1_acked_durable_message_missing_from_final_history() {
    let mut h = clean();
    h.extend(publish(60, "p1-5", "durable:a", "E1", 3));
    assert_only(&check(&h), "I1");
}

#[test]
fn i1_not_counted_for_best_effort_channels() {
    let mut h = clean();
    h.extend(publish(60, "p1-5", "besteffort:b", "F2", 2));
    let f = check(&h);
    assert_eq!(f.count("I1"), 0);
}

#[test]
fn i2_two_payloads_at_one_position() {
    let mut h = clean();
    h.push(invoke(60, "p1-9", "durable:a"));
    h.push(done(61, "p1-9", "durable:a", Outcome::Info, None));
    h.push(subscribed(62, "s2", "durable:a", None, None, pos("E1", 1)));
    h.push(deliver(63, "s2", "durable:a", pos("E1", 2), "p1-9"));
    assert_only(&check(&h), "I2");
}

#[test]
fn i3_offset_delivered_twice_out_of_order() {
    let mut h = clean();
    h.push(deliver(60, "s1", "durable:a", pos("E1", 1), "p1-1"));
    assert_only(&check(&h), "I3");
}

#[test]
fn i3_epoch_going_back() {
    let mut h = clean();
    h.push(invoke(58, "p1-7", "besteffort:b"));
    h.push(done(59, "p1-7", "besteffort:b", Outcome::Info, None));
    h.push(deliver(60, "s1", "besteffort:b", pos("F1", 2), "p1-7"));
    assert_only(&check(&h), "I3");
}

#[test]
fn i4_silent_gap() {
    let mut h = clean();
    h.extend(publish(60, "p1-5", "besteffort:b", "F2", 2));
    h.extend(publish(62, "p1-6", "besteffort:b", "F2", 3));
    h.push(deliver(64, "s1", "besteffort:b", pos("F2", 3), "p1-6"));
    assert_only(&check(&h), "I4");
}

#[test]
fn i4_gap_push_makes_a_gap_signalled() {
    let mut h = clean();
    h.extend(publish(60, "p1-5", "besteffort:b", "F2", 2));
    h.extend(publish(62, "p1-6", "besteffort:b", "F2", 3));
    h.push(Event::Gap {
        t: 63,
        sub: "s1".into(),
        channel: "besteffort:b".into(),
        node: "node-1".into(),
        epoch: "F2".into(),
        from: 2,
        to: 2,
        reason: "slow_consumer".into(),
    });
    h.push(deliver(64, "s1", "besteffort:b", pos("F2", 3), "p1-6"));
    let f = check(&h);
    assert_eq!(f.count("I4"), 0, "{:?}", f.examples);
    assert_eq!(f.gaps, 1);
}

#[test]
fn i5_phantom_delivery() {
    let mut h = clean();
    h.push(deliver(60, "s1", "besteffort:b", pos("F2", 2), "ghost-1"));
    assert_only(&check(&h), "I5");
}

#[test]
fn i5_delivery_of_a_failed_publish() {
    let mut h = clean();
    h.push(invoke(60, "p1-7", "besteffort:b"));
    h.push(done(61, "p1-7", "besteffort:b", Outcome::Fail, None));
    h.push(deliver(62, "s1", "besteffort:b", pos("F2", 2), "p1-7"));
    assert_only(&check(&h), "I5");
}

#[test]
fn i6_one_key_at_two_positions() {
    let mut h = clean();
    // p1-1 was acked at E1:1; the durable channel's final history holds it again at E1:3.
    for e in &mut h {
        if let Event::FinalRead { channel, entries, .. } = e {
            if channel == "durable:a" {
                entries.push(Entry { offset: 3, payload: Some("p1-1".into()) });
            }
        }
    }
    assert_only(&check(&h), "I6");
}

#[test]
fn i6_holds_within_an_epoch_of_a_best_effort_channel() {
    let mut h = clean();
    // p1-4 was acked at F2:1; F2's final history holds it again at F2:2.
    if let Some(Event::FinalRead { entries, .. }) = h.last_mut() {
        entries.push(Entry { offset: 2, payload: Some("p1-4".into()) });
    }
    assert_only(&check(&h), "I6");
}

#[test]
fn a_best_effort_key_sequenced_again_in_the_next_epoch_is_counted_not_a_violation() {
    let mut h = clean();
    // p1-3 was delivered at F1:1 before its owner was lost, unacked; the publisher's
    // retry went to the next owner, whose new epoch F2 holds it at 2 (no dedup window
    // survives a best-effort owner).
    if let Some(Event::FinalRead { entries, .. }) = h.last_mut() {
        entries.push(Entry { offset: 2, payload: Some("p1-3".into()) });
    }
    let f = check(&h);
    assert_eq!(f.count("I6"), 0, "{:?}", f.examples);
    assert_eq!(f.resequenced_best_effort, 1);
}

#[test]
fn i7_publish_acked_in_a_replaced_epoch() {
    let mut h = clean();
    // F2 was first seen at 45 ms; an ack in F1 for a publish sent at 99 ms is stale.
    h.push(invoke(99, "p1-8", "besteffort:b"));
    h.push(Event::PubComplete {
        t: 100,
        publisher: "p1".into(),
        key: "p1-8".into(),
        channel: "besteffort:b".into(),
        result: Outcome::Ok,
        invoked: 99,
        attempts: 1,
        pos: Some(pos("F1", 2)),
        duplicate: false,
        error: None,
    });
    assert_only(&check(&h), "I7");
}

#[test]
fn i8_recovered_false_on_durable_with_no_fault() {
    let mut h = clean();
    h.push(subscribed(60, "s1", "durable:a", Some(pos("E1", 2)), Some(false), pos("E1", 2)));
    assert_only(&check(&h), "I8");
}

#[test]
fn i8_epoch_change_on_durable_with_one_node_down() {
    let mut h = clean();
    h.push(Event::Fault {
        t: 55,
        id: 1,
        kind: "kill".into(),
        nodes: vec!["node-2".into()],
        faulted: 1,
        detail: String::new(),
    });
    h.extend(publish(60, "p1-5", "durable:a", "E2", 1));
    h.push(deliver(62, "s1", "durable:a", pos("E2", 1), "p1-5"));
    // The final history now is E2's.
    h.retain(|e| !matches!(e, Event::FinalRead { channel, .. } if channel == "durable:a"));
    h.push(final_read("durable:a", "E2", &[(1, "p1-5")]));
    let f = check(&h);
    assert_eq!(f.count("I8"), 1, "{:?}", f.examples);
    // The two E1 messages are gone from the final history: lost acks.
    assert_eq!(f.count("I1"), 2, "{:?}", f.examples);
}

#[test]
fn i8_not_counted_with_two_nodes_down() {
    let mut h = clean();
    h.push(Event::Fault {
        t: 55,
        id: 1,
        kind: "kill_owner_replica".into(),
        nodes: vec!["node-1".into(), "node-2".into()],
        faulted: 2,
        detail: String::new(),
    });
    h.push(Event::Heal { t: 58, id: 1 });
    // 59 is inside the heal's grace (1000 ms): still two down.
    h.push(subscribed(59, "s1", "durable:a", Some(pos("E1", 2)), Some(false), pos("E1", 2)));
    // 5000 is after the grace: counted.
    h.push(subscribed(5000, "s2", "durable:a", Some(pos("E1", 2)), Some(false), pos("E1", 2)));
    let f = check(&h);
    assert_eq!(f.count("I8"), 1, "{:?}", f.examples);
}

#[test]
fn i9_panic_in_a_log() {
    let mut h = clean();
    h.push(Event::Panic { t: 70, node: "node-1".into(), line: "thread 'main' panicked at x.rs:1".into() });
    assert_only(&check(&h), "I9");
}

#[test]
fn failed_final_read_is_reported_not_silently_passed() {
    let mut h = clean();
    h.push(Event::FinalRead { t: 1, channel: "durable:c".into(), epoch: None, entries: vec![], complete: false });
    assert_eq!(check(&h).final_read_failures, 1);
}

#[test]
fn failover_time_is_fault_to_first_ack_on_an_owned_channel() {
    let mut h = clean();
    let owners: BTreeMap<String, String> =
        [("durable:a".to_owned(), "node-2".to_owned()), ("besteffort:b".to_owned(), "node-0".to_owned())]
            .into_iter()
            .collect();
    h.push(Event::Owners { t: 99, owners });
    h.push(Event::Fault {
        t: 100,
        id: 7,
        kind: "kill".into(),
        nodes: vec!["node-2".into()],
        faulted: 1,
        detail: "".into(),
    });
    h.push(invoke(3000, "p1-5", "durable:a"));
    h.push(Event::PubComplete {
        t: 3100,
        publisher: "p1".into(),
        key: "p1-5".into(),
        channel: "durable:a".into(),
        result: Outcome::Ok,
        invoked: 3000,
        attempts: 1,
        pos: Some(pos("E1", 3)),
        duplicate: false,
        error: None,
    });
    let f = check(&h);
    assert_eq!(f.failover.n, 1);
    assert_eq!(f.failover.max_ms, Some(3000));
    assert_eq!(f.failover_never, 0);
}

#[test]
fn timing_percentiles_use_nearest_rank() {
    let t = super::Timing::of((1..=100).collect());
    assert_eq!((t.p50_ms, t.p99_ms, t.max_ms), (Some(50), Some(99), Some(100)));
    assert_eq!(super::Timing::of(vec![]).p99_ms, None);
}
