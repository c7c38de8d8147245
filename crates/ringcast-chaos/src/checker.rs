//! The offline checker: a pure function from a recorded history to invariant counts and
//! timings. No I/O, no clock; the harness and `ringcast-chaos check FILE` both call
//! [`check`]. Each invariant is computed as described in `docs/chaos.md`; the unit tests
//! at the end feed synthetic histories that break each invariant exactly once.
//!
//! Events are taken in file order, which is the order the harness observed them (one
//! recorder, one file); per subscriber that is also the order its connection delivered
//! them.

use crate::history::{Event, Outcome, Pos};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The invariants, in report order: id, short name.
pub const INVARIANTS: [(&str, &str); 9] = [
    ("I1", "lost acknowledged messages (durable)"),
    ("I2", "two payloads at one (channel, epoch, offset)"),
    ("I3", "offsets or epochs out of order"),
    ("I4", "silent gap (no recovered:false, gap push or epoch change)"),
    ("I5", "delivered message nobody published"),
    ("I6", "one idempotency key at two positions"),
    ("I7", "stale epoch accepted"),
    ("I8", "recovered:false/epoch change on durable while <=1 node down"),
    ("I9", "panic in a node log"),
];

/// How many examples of each violation the result keeps.
const EXAMPLES_PER_INVARIANT: usize = 5;

/// Distribution of a set of durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timing {
    pub n: usize,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
}

impl Timing {
    fn of(mut v: Vec<u64>) -> Timing {
        v.sort_unstable();
        let pick = |q: f64| -> Option<u64> {
            if v.is_empty() {
                return None;
            }
            // Nearest rank; the cast is of a value in 0..len.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Timing { n: v.len(), p50_ms: pick(0.50), p99_ms: pick(0.99), max_ms: v.last().copied() }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Findings {
    /// Violations per invariant id.
    pub counts: BTreeMap<String, u64>,
    /// A few human-readable examples per invariant id.
    pub examples: BTreeMap<String, Vec<String>>,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_info: u64,
    pub deliveries: u64,
    /// Channels whose final history read failed: their I1 is unchecked.
    pub final_read_failures: u64,
    /// Channels with a final read.
    pub final_reads: u64,
    /// Kill/pause/partition to the first acknowledged publish on a channel the faulted
    /// node owned.
    pub failover: Timing,
    /// Affected (fault, channel) pairs that never saw an acknowledged publish again.
    pub failover_never: u64,
    /// Disconnect to `subscribed` for resumed subscriptions.
    pub resume: Timing,
    pub recovered_false: u64,
    pub gaps: u64,
    /// Keys of best-effort channels sequenced again, once per stream epoch: a retry that
    /// reached the next owner after the one that sequenced it was lost (with its dedup
    /// window, which best-effort channels do not replicate). Reported, not a violation.
    pub resequenced_best_effort: u64,
}

impl Findings {
    fn violation(&mut self, id: &str, example: String) {
        *self.counts.entry(id.to_owned()).or_default() += 1;
        let ex = self.examples.entry(id.to_owned()).or_default();
        if ex.len() < EXAMPLES_PER_INVARIANT {
            ex.push(example);
        }
    }

    /// Violations of invariant `id`.
    #[must_use]
    pub fn count(&self, id: &str) -> u64 {
        self.counts.get(id).copied().unwrap_or(0)
    }

    /// Acknowledged publishes over all operations.
    #[must_use]
    pub fn publish_success_rate(&self) -> Option<f64> {
        let total = self.ops_ok + self.ops_fail + self.ops_info;
        #[allow(clippy::cast_precision_loss)]
        (total > 0).then(|| self.ops_ok as f64 / total as f64)
    }
}

/// One subscriber's view of one channel while the history is replayed.
#[derive(Debug, Default)]
struct SubChannel {
    /// Current epoch and the next offset expected in it.
    epoch: Option<String>,
    next: u64,
    /// Epochs seen before the current one.
    past_epochs: HashSet<String>,
}

/// Per (sub, channel, epoch): offsets delivered and ranges accounted for otherwise
/// (gap pushes, positions skipped by a `recovered: false`), for I1's second half.
#[derive(Debug, Default)]
struct Coverage {
    delivered: BTreeSet<u64>,
    signalled: Vec<(u64, u64)>,
}

/// A channel's final history: its epoch and payload key per offset.
type FinalHistory<'a> = (Option<&'a str>, HashMap<u64, Option<&'a str>>);

fn channel_namespace(channel: &str) -> &str {
    channel.split_once(':').map_or("default", |(ns, _)| ns)
}

/// Computes every invariant and timing from `events`.
#[must_use]
#[allow(clippy::too_many_lines)] // One pass over the history, one section per invariant.
pub fn check(events: &[Event]) -> Findings {
    let mut f = Findings::default();
    for (id, _) in INVARIANTS {
        f.counts.insert(id.to_owned(), 0);
    }
    let (durable_ns, grace) = events
        .iter()
        .find_map(|e| match e {
            Event::Meta { durable_namespaces, fault_grace_ms, .. } => {
                Some((durable_namespaces.clone(), *fault_grace_ms))
            }
            _ => None,
        })
        .unwrap_or_default();
    let durable = |c: &str| durable_ns.iter().any(|n| n == channel_namespace(c));

    // Fault windows: [start, heal + grace), with how many nodes each takes out.
    let mut windows: BTreeMap<u64, (u64, u64, u32)> = BTreeMap::new();
    for e in events {
        match e {
            Event::Fault { t, id, faulted, .. } => {
                windows.insert(*id, (*t, u64::MAX, *faulted));
            }
            Event::Heal { t, id } => {
                if let Some(w) = windows.get_mut(id) {
                    w.1 = t.saturating_add(grace);
                }
            }
            _ => {}
        }
    }
    let faulted_at = |t: u64| -> u32 { windows.values().filter(|(s, e, _)| *s <= t && t < *e).map(|w| w.2).sum() };

    // Publishes: every key ever invoked, final outcome per key, acked positions.
    let mut published: HashSet<&str> = HashSet::new();
    let mut outcome: HashMap<&str, Outcome> = HashMap::new();
    for e in events {
        match e {
            Event::PubInvoke { key, .. } => {
                published.insert(key);
            }
            Event::PubComplete { key, result, .. } => {
                outcome.insert(key, *result);
                match result {
                    Outcome::Ok => f.ops_ok += 1,
                    Outcome::Fail => f.ops_fail += 1,
                    Outcome::Info => f.ops_info += 1,
                }
            }
            _ => {}
        }
    }

    // I2 (forks), I5 (phantoms), I6 (one key at two positions): every observation of a
    // payload at a position, from acks, deliveries and final reads.
    let mut at: BTreeMap<(&str, &str, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut key_pos: BTreeMap<&str, BTreeSet<(&str, &str, u64)>> = BTreeMap::new();
    let mut phantoms: BTreeSet<(&str, &str, u64)> = BTreeSet::new();
    let mut observations: Vec<(&str, &str, u64, Option<&str>, bool)> = Vec::new();
    for e in events {
        match e {
            Event::PubComplete { key, channel, result: Outcome::Ok, pos: Some(p), .. } => {
                observations.push((channel, &p.epoch, p.offset, Some(key), true));
            }
            Event::Deliver { channel, pos, payload, .. } => {
                f.deliveries += 1;
                observations.push((channel, &pos.epoch, pos.offset, payload.as_deref(), false));
            }
            Event::FinalRead { channel, epoch: Some(ep), entries, .. } => {
                for en in entries {
                    observations.push((channel, ep, en.offset, en.payload.as_deref(), false));
                }
            }
            _ => {}
        }
    }
    for &(channel, epoch, offset, payload, acked) in &observations {
        let Some(p) = payload else {
            phantoms.insert((channel, epoch, offset));
            continue;
        };
        at.entry((channel, epoch, offset)).or_default().insert(p);
        key_pos.entry(p).or_default().insert((channel, epoch, offset));
        if !acked && (!published.contains(p) || outcome.get(p) == Some(&Outcome::Fail)) {
            phantoms.insert((channel, epoch, offset));
        }
    }
    for ((c, e, o), payloads) in &at {
        if payloads.len() > 1 {
            f.violation("I2", format!("{c} epoch {e} offset {o} holds {payloads:?}"));
        }
    }
    for (c, e, o) in &phantoms {
        f.violation("I5", format!("{c} epoch {e} offset {o}: payload never published or its publish failed"));
    }
    for (k, positions) in &key_pos {
        if positions.len() > 1 {
            // Once per epoch of one best-effort channel: sequenced again after an owner
            // loss. Anything else (twice in an epoch, a durable channel) breaks I6.
            let channels: BTreeSet<&str> = positions.iter().map(|(c, ..)| *c).collect();
            let epochs: BTreeSet<&str> = positions.iter().map(|(_, e, _)| *e).collect();
            let best_effort = channels.len() == 1 && channels.iter().all(|c| !durable(c));
            if best_effort && epochs.len() == positions.len() {
                f.resequenced_best_effort += 1;
            } else {
                f.violation("I6", format!("key {k} at {positions:?}"));
            }
        }
    }

    // I7: an acknowledged publish in a stream epoch that another epoch of the same channel
    // had already replaced before the publish was sent.
    let mut first_seen: HashMap<(&str, &str), u64> = HashMap::new();
    for e in events {
        let (c, ep, t) = match e {
            Event::PubComplete { channel, result: Outcome::Ok, pos: Some(p), t, .. } => (channel, &p.epoch, *t),
            Event::Deliver { channel, pos, t, .. } => (channel, &pos.epoch, *t),
            Event::Subscribed { channel, pos, t, .. } => (channel, &pos.epoch, *t),
            _ => continue,
        };
        first_seen.entry((c, ep)).or_insert(t);
    }
    for e in events {
        if let Event::PubComplete { channel, key, result: Outcome::Ok, pos: Some(p), invoked, .. } = e {
            let mine = first_seen.get(&(channel.as_str(), p.epoch.as_str())).copied().unwrap_or(0);
            let newer = first_seen
                .iter()
                .filter(|((c, ep), t)| *c == channel && *ep != p.epoch && **t > mine && **t < *invoked)
                .map(|((_, ep), t)| (*ep, *t))
                .min_by_key(|x| x.1);
            if let Some((ep, t)) = newer {
                f.violation(
                    "I7",
                    format!("{channel}: {key} acked in epoch {} after epoch {ep} took over at {t} ms", p.epoch),
                );
            }
        }
    }

    // I3, I4, I8 and I1's per-subscriber half: replay each subscriber's stream.
    let mut subs: HashMap<(&str, &str), SubChannel> = HashMap::new();
    let mut cover: HashMap<(&str, &str, &str), Coverage> = HashMap::new();
    let mut resume = Vec::new();
    for e in events {
        match e {
            Event::Subscribed { t, sub, channel, since, recovered, pos, resume_ms, .. } => {
                if let Some(ms) = resume_ms {
                    resume.push(*ms);
                }
                let s = subs.entry((sub, channel)).or_default();
                let resumed_ok = since.is_some() && *recovered == Some(true);
                if recovered == &Some(false) {
                    f.recovered_false += 1;
                    if durable(channel) && faulted_at(*t) <= 1 {
                        f.violation(
                            "I8",
                            format!("{sub} {channel} at {t} ms: recovered:false ({} node(s) faulted)", faulted_at(*t)),
                        );
                    }
                }
                if let Some(old) = s.epoch.take() {
                    if old != pos.epoch {
                        s.past_epochs.insert(old);
                    } else if !resumed_ok && pos.offset >= s.next {
                        let c = cover.entry((sub, channel, &pos.epoch)).or_default();
                        c.signalled.push((s.next, pos.offset));
                    }
                }
                match (resumed_ok, since) {
                    (true, Some(Pos { offset, .. })) => s.next = offset + 1,
                    _ => s.next = pos.offset + 1,
                }
                s.epoch = Some(pos.epoch.clone());
            }
            Event::Deliver { t, sub, channel, pos, .. } => {
                let s = subs.entry((sub, channel)).or_default();
                cover.entry((sub, channel, &pos.epoch)).or_default().delivered.insert(pos.offset);
                match s.epoch.as_deref() {
                    Some(cur) if cur == pos.epoch => {
                        if pos.offset < s.next {
                            f.violation(
                                "I3",
                                format!("{sub} {channel} epoch {cur}: offset {} after {}", pos.offset, s.next - 1),
                            );
                        } else if pos.offset > s.next {
                            f.violation(
                                "I4",
                                format!("{sub} {channel} epoch {cur}: offsets {}..={} missing", s.next, pos.offset - 1),
                            );
                        }
                    }
                    Some(cur) => {
                        if s.past_epochs.contains(&pos.epoch) {
                            f.violation("I3", format!("{sub} {channel}: epoch {} came back after {cur}", pos.epoch));
                        }
                        if durable(channel) && faulted_at(*t) <= 1 {
                            f.violation(
                                "I8",
                                format!("{sub} {channel} at {t} ms: epoch changed {cur} -> {}", pos.epoch),
                            );
                        }
                        s.past_epochs.insert(cur.to_owned());
                    }
                    None => {}
                }
                let same = s.epoch.as_deref() == Some(pos.epoch.as_str());
                // An out-of-order delivery (counted under I3) does not move `next` back.
                if !same || pos.offset >= s.next {
                    s.next = pos.offset + 1;
                }
                s.epoch = Some(pos.epoch.clone());
            }
            Event::Gap { t, sub, channel, epoch, from, to, reason, .. } => {
                f.gaps += 1;
                let s = subs.entry((sub, channel)).or_default();
                cover.entry((sub, channel, epoch)).or_default().signalled.push((*from, *to));
                if s.epoch.as_deref() == Some(epoch.as_str()) {
                    if *from > s.next {
                        f.violation("I4", format!("{sub} {channel}: gap push from {from} but {} expected", s.next));
                    }
                    s.next = s.next.max(to + 1);
                }
                if reason == "unavailable" && durable(channel) && faulted_at(*t) <= 1 {
                    f.violation("I8", format!("{sub} {channel} at {t} ms: gap {from}..={to} ({reason})"));
                }
            }
            _ => {}
        }
    }
    f.resume = Timing::of(resume);

    // I1: every acknowledged durable publish is in the final history, and reached every
    // subscriber whose stream of that epoch spans it.
    let mut finals: HashMap<&str, Option<FinalHistory<'_>>> = HashMap::new();
    for e in events {
        if let Event::FinalRead { channel, epoch, entries, complete, .. } = e {
            f.final_reads += 1;
            if *complete {
                let m = entries.iter().map(|en| (en.offset, en.payload.as_deref())).collect();
                finals.insert(channel, Some((epoch.as_deref(), m)));
            } else {
                f.final_read_failures += 1;
                finals.insert(channel, None);
            }
        }
    }
    for e in events {
        let Event::PubComplete { key, channel, result: Outcome::Ok, pos: Some(p), .. } = e else { continue };
        if !durable(channel) {
            continue;
        }
        // A channel whose final read failed is unchecked here (and fails the run).
        if let Some(Some((ep, m))) = finals.get(channel.as_str()) {
            let held = *ep == Some(p.epoch.as_str()) && m.get(&p.offset) == Some(&Some(key.as_str()));
            if !held {
                f.violation(
                    "I1",
                    format!("{channel}: {key} acked at {}:{} is not in the final history", p.epoch, p.offset),
                );
            }
        }
        for ((sub, c, ep), cov) in &cover {
            if *c != channel || *ep != p.epoch {
                continue;
            }
            let (Some(lo), Some(hi)) = (cov.delivered.first(), cov.delivered.last()) else { continue };
            let spanned = *lo < p.offset && p.offset < *hi;
            let accounted = cov.delivered.contains(&p.offset)
                || cov.signalled.iter().any(|(a, b)| *a <= p.offset && p.offset <= *b);
            if spanned && !accounted {
                f.violation("I1", format!("{channel}: {key} at {}:{} never reached {sub}", p.epoch, p.offset));
            }
        }
    }

    // I9.
    for e in events {
        if let Event::Panic { node, line, .. } = e {
            f.violation("I9", format!("{node}: {line}"));
        }
    }

    // Failover: per fault, per channel its nodes owned, the first acknowledged publish
    // sent after the fault started.
    let mut owners: Option<&BTreeMap<String, String>> = None;
    let mut failover = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Owners { owners: o, .. } => owners = Some(o),
            Event::Fault { t, nodes, kind, .. } if kind != "etcd_quorum" && kind != "packet_faults" => {
                let Some(o) = owners else { continue };
                for (channel, owner) in o {
                    if !nodes.contains(owner) {
                        continue;
                    }
                    let first = events[i..].iter().find_map(|e| match e {
                        Event::PubComplete { channel: c, result: Outcome::Ok, invoked, t: done, .. }
                            if c == channel && invoked >= t =>
                        {
                            Some(done - t)
                        }
                        _ => None,
                    });
                    match first {
                        Some(ms) => failover.push(ms),
                        None => f.failover_never += 1,
                    }
                }
            }
            _ => {}
        }
    }
    f.failover = Timing::of(failover);
    f
}

#[cfg(test)]
mod tests;
