//! Pattern subscriptions in the hub.
//!
//! A node keeps two tables:
//! - **its own**: each local connection's patterns. A pattern is attached, as a
//!   subscriber of the connection, to every channel here it matches, when it subscribes
//!   and whenever a matching channel appears (a publish on an owned channel, a `Deliver`
//!   for a channel this node had no state for). From there on the channel's ordinary
//!   fan-out serves it: per-channel order, backpressure, mirrors and gap fills, resync
//!   after a broken link or a moved slot.
//! - **its peers'**: the patterns of every other node (the `Patterns` peer frame). As a
//!   channel's owner, it sends each node whose patterns match the channel one `Deliver`
//!   per message, besides the nodes in the channel's interest set, once per node
//!   however many of its clients match. Which nodes match is cached per channel and
//!   recomputed only when the peers' table changes.
//!
//! Costs: subscribing or unsubscribing a pattern scans this node's channels once; a
//! matched channel keeps its state here while the pattern lives; an owner tests a
//! channel against the peers' patterns once per change of their table.

use super::{lock, Hub, Subscriber};
use crate::outbox::Outbox;
use ringcast_core::send_queue::MessagePolicy;
use ringcast_core::{ChannelName, ConnId, NodeId, Pattern};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use tracing::warn;

/// Patterns one peer may register; beyond it, additions are ignored (and logged).
pub const MAX_PEER_PATTERNS: usize = 100_000;

/// A connection's pattern subscription, as the hub attaches it to channels.
#[derive(Debug, Clone)]
pub struct PatternSubscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    /// The pattern's namespace's policy for this connection.
    pub policy: MessagePolicy,
}

/// What removing a pattern subscription did.
#[derive(Debug, Default)]
pub struct PatternRemoved {
    /// It was this node's last subscription to the pattern: tell the peers.
    pub last: bool,
    /// Remote channels this node no longer has any subscriber for: tell their owners.
    pub released: Vec<ChannelName>,
}

#[derive(Debug, Default)]
struct Local {
    subs: Vec<(Pattern, PatternSubscriber)>,
    /// Distinct patterns, with how many subscriptions use each.
    counts: HashMap<Pattern, usize>,
}

#[derive(Debug, Default)]
struct Peers {
    by_node: HashMap<NodeId, BTreeSet<Pattern>>,
}

impl Peers {
    fn total(&self) -> usize {
        self.by_node.values().map(BTreeSet::len).sum()
    }
}

/// Both tables (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Patterns {
    local: RwLock<Local>,
    /// Whether `local` has any subscription (read on every new channel).
    any_local: AtomicBool,
    peers: RwLock<Peers>,
    /// Whether `peers` has any pattern (read on every fan-out).
    any_peer: AtomicBool,
    /// Bumped on every change of `peers`; channels cache their matching nodes under it.
    generation: AtomicU64,
}

impl Patterns {
    /// Whether one of this node's patterns matches the channel.
    pub(super) fn local_match(&self, channel: &ChannelName) -> bool {
        self.any_local.load(Ordering::Acquire)
            && self.local.read().unwrap_or_else(PoisonError::into_inner).subs.iter().any(|(p, _)| p.matches(channel))
    }

    /// The policy of `conn`'s first pattern that matches the channel, if any does.
    pub(super) fn local_policy(&self, conn: ConnId, channel: &ChannelName) -> Option<MessagePolicy> {
        if !self.any_local.load(Ordering::Acquire) {
            return None;
        }
        let local = self.local.read().unwrap_or_else(PoisonError::into_inner);
        local.subs.iter().find(|(p, s)| s.conn == conn && p.matches(channel)).map(|(_, s)| s.policy)
    }

    /// Forgets a peer's patterns; returns how many patterns peers have registered now.
    pub(super) fn drop_peer(&self, peer: &NodeId) -> Option<usize> {
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        peers.by_node.remove(peer)?;
        self.any_peer.store(!peers.by_node.is_empty(), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Some(peers.total())
    }
}

impl Hub {
    /// Attaches the local patterns that match a channel whose state was just created.
    pub(super) fn attach_patterns(&self, channel: &ChannelName, st: &mut super::ChannelState) {
        if !self.patterns.any_local.load(Ordering::Acquire) {
            return;
        }
        let local = self.patterns.local.read().unwrap_or_else(PoisonError::into_inner);
        for (pattern, sub) in &local.subs {
            if pattern.matches(channel) && !st.subscribers.contains_key(&sub.conn) {
                st.subscribers.insert(sub.conn, Subscriber::for_pattern(sub.outbox.clone(), sub.policy));
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Owner: brings the channel's cached set of pattern-matching nodes up to date.
    pub(super) fn refresh_pattern_nodes(&self, channel: &ChannelName, st: &mut super::ChannelState) {
        if !self.patterns.any_peer.load(Ordering::Acquire) {
            st.pattern_nodes = None;
            return;
        }
        let generation = self.patterns.generation.load(Ordering::Acquire);
        if st.pattern_nodes.as_ref().is_some_and(|(g, _)| *g == generation) {
            return;
        }
        let peers = self.patterns.peers.read().unwrap_or_else(PoisonError::into_inner);
        let nodes = peers
            .by_node
            .iter()
            .filter(|(node, set)| **node != self.me && set.iter().any(|p| p.matches(channel)))
            .map(|(node, _)| node.clone())
            .collect();
        st.pattern_nodes = Some((generation, nodes));
    }

    /// A local connection subscribes to a pattern: from now on it gets the messages of
    /// every matching channel this node has or will have. Returns whether it is this
    /// node's first subscription to the pattern (the peers must learn it).
    pub fn add_pattern(&self, pattern: &Pattern, sub: PatternSubscriber) -> bool {
        let first = {
            let mut local = self.patterns.local.write().unwrap_or_else(PoisonError::into_inner);
            local.subs.push((pattern.clone(), sub.clone()));
            self.patterns.any_local.store(true, Ordering::Release);
            let n = local.counts.entry(pattern.clone()).or_insert(0);
            *n += 1;
            *n == 1
        };
        self.metrics.pattern_subscriptions.fetch_add(1, Ordering::Relaxed);
        // Channels created from now on attach it themselves; attach it to those that
        // exist (a channel created meanwhile is skipped: the connection is in it).
        for (channel, cell) in self.cells_where(|c| pattern.matches(c)) {
            let mut st = lock(&cell.state);
            if !st.removed && !st.subscribers.contains_key(&sub.conn) {
                st.subscribers.insert(sub.conn, Subscriber::for_pattern(sub.outbox.clone(), sub.policy));
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%channel, %pattern, "pattern attached");
            }
        }
        first
    }

    /// A local connection's pattern subscription ends: it leaves the channels it was
    /// attached to for this pattern only (not those it subscribed to itself or another
    /// of its patterns matches).
    pub fn remove_pattern(&self, conn: ConnId, pattern: &Pattern) -> PatternRemoved {
        let (found, last, others) = {
            let mut local = self.patterns.local.write().unwrap_or_else(PoisonError::into_inner);
            let before = local.subs.len();
            local.subs.retain(|(p, s)| !(s.conn == conn && p == pattern));
            let found = local.subs.len() < before;
            let mut last = false;
            if found {
                if let Some(n) = local.counts.get_mut(pattern) {
                    *n -= 1;
                    if *n == 0 {
                        local.counts.remove(pattern);
                        last = true;
                    }
                }
            }
            self.patterns.any_local.store(!local.subs.is_empty(), Ordering::Release);
            let others: Vec<Pattern> =
                local.subs.iter().filter(|(_, s)| s.conn == conn).map(|(p, _)| p.clone()).collect();
            (found, last, others)
        };
        let mut out = PatternRemoved { last, released: Vec::new() };
        if !found {
            return out;
        }
        self.metrics.pattern_subscriptions.fetch_sub(1, Ordering::Relaxed);
        for (channel, cell) in self.cells_where(|c| pattern.matches(c) && !others.iter().any(|p| p.matches(c))) {
            let mut st = lock(&cell.state);
            if st.removed || st.subscribers.get(&conn).is_none_or(|s| s.direct) {
                continue;
            }
            if let Some(sub) = st.subscribers.remove(&conn) {
                sub.outbox.forget(&channel);
                self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            if st.release_if_unfollowed() {
                // Nothing here follows the channel any more.
                out.released.push(channel);
            }
        }
        out
    }

    /// This node's distinct patterns (for a peer that must learn them all).
    pub fn local_patterns(&self) -> Vec<String> {
        let local = self.patterns.local.read().unwrap_or_else(PoisonError::into_inner);
        local.counts.keys().map(|p| p.as_str().to_owned()).collect()
    }

    /// Whether this node has any pattern subscription.
    pub fn has_local_patterns(&self) -> bool {
        self.patterns.any_local.load(Ordering::Acquire)
    }

    /// A peer's patterns changed (`reset`: `add` is its whole set).
    pub fn peer_patterns(&self, peer: &NodeId, reset: bool, add: Vec<Pattern>, remove: &[Pattern]) {
        let mut peers = self.patterns.peers.write().unwrap_or_else(PoisonError::into_inner);
        let set = peers.by_node.entry(peer.clone()).or_default();
        if reset {
            set.clear();
        }
        for p in remove {
            set.remove(p);
        }
        let mut refused = 0usize;
        for p in add {
            if set.len() < MAX_PEER_PATTERNS || set.contains(&p) {
                set.insert(p);
            } else {
                refused += 1;
            }
        }
        if refused > 0 {
            warn!(node = %peer, refused, "a peer registered more than {MAX_PEER_PATTERNS} patterns; ignoring the rest");
        }
        if set.is_empty() {
            peers.by_node.remove(peer);
        }
        self.metrics.peer_patterns.store(i64::try_from(peers.total()).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.patterns.any_peer.store(!peers.by_node.is_empty(), Ordering::Release);
        self.patterns.generation.fetch_add(1, Ordering::AcqRel);
    }
}
