//! Presence: who is in a channel, kept by the channel's owner.
//!
//! A channel's owner holds one [`ChannelPresence`]: every client subscribed to the
//! channel, anywhere in the cluster, as `(node, connection) -> user`. Nodes tell the
//! owner about their own clients (a join or leave per subscription, and a full
//! re-announcement, [`ChannelPresence::sync_node`], whenever the owner may have missed
//! some: a new owner after a handoff or a crash, a peer link that broke).
//!
//! Join and leave events are per **user**, not per connection, and debounced: when a
//! user's last client goes, the user is *leaving* for the grace period; coming back
//! within it (on any node) cancels the leave, so a user who flaps produces one `join`
//! and, if they stay away, one `leave`. Anonymous clients (empty user) are counted but
//! have no events. Nothing here grows without bound: a client is held while it is
//! subscribed, a leaving user for the grace period, and the node-wide [`LastSeen`]
//! table up to a fixed number of users.
//!
//! [`TypingGate`]'s job is the typing rate limit, one per user and channel per interval.

use crate::name::{ConnId, NodeId};
use crate::time::Millis;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Default grace before a user whose last client left is announced as gone.
pub const DEFAULT_LEAVE_GRACE: Duration = Duration::from_secs(30);
/// Typing notices a user may send per channel: one per this interval.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// One client in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: NodeId,
    pub conn: ConnId,
    /// The token's `sub`; empty for an anonymous client.
    pub user: Arc<str>,
    /// The token's `info` claim as JSON text, if any.
    pub info: Option<Arc<str>>,
}

/// A debounced change in a channel's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A user who was not in the channel (nor leaving it) arrived.
    Join { user: Arc<str>, info: Option<Arc<str>> },
    /// A user's last client left at `left_at` and the user did not come back within the
    /// grace period.
    Leave { user: Arc<str>, info: Option<Arc<str>>, left_at: Millis },
}

/// A user whose last client left and whose `leave` is not due yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingUser {
    pub user: Arc<str>,
    pub info: Option<Arc<str>>,
    /// How long ago the user's last client left.
    pub ago: Duration,
}

/// Counts of a channel's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceStats {
    /// Subscribed clients, anonymous ones included.
    pub clients: usize,
    /// Distinct users with at least one client (anonymous clients are not users).
    pub users: usize,
}

#[derive(Debug, Clone)]
struct Client {
    user: Arc<str>,
    info: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
struct User {
    clients: u32,
    /// When the user's last client left; `None` while the user has clients.
    left_at: Option<Millis>,
    info: Option<Arc<str>>,
}

/// A channel's presence at its owner. Deterministic: time is an argument.
#[derive(Debug, Clone)]
pub struct ChannelPresence {
    clients: BTreeMap<(NodeId, ConnId), Client>,
    users: HashMap<Arc<str>, User>,
    grace: Duration,
}

impl ChannelPresence {
    #[must_use]
    pub fn new(grace: Duration) -> ChannelPresence {
        ChannelPresence { clients: BTreeMap::new(), users: HashMap::new(), grace }
    }

    /// Changes the grace period (the namespace's option was reloaded or differs).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// A client subscribed. Returns the `Join` when its user was neither present nor
    /// leaving. Joining again with the same `(node, conn)` updates it silently.
    pub fn join(
        &mut self,
        node: &NodeId,
        conn: ConnId,
        user: &Arc<str>,
        info: Option<Arc<str>>,
        now: Millis,
    ) -> Option<PresenceEvent> {
        self.add(node, conn, user, info, now, true)
    }

    fn add(
        &mut self,
        node: &NodeId,
        conn: ConnId,
        user: &Arc<str>,
        info: Option<Arc<str>>,
        now: Millis,
        announce: bool,
    ) -> Option<PresenceEvent> {
        let key = (node.clone(), conn);
        if let Some(old) = self.clients.get(&key) {
            if old.user == *user {
                self.clients.insert(key, Client { user: user.clone(), info });
                return None;
            }
            // The same connection under another user cannot happen in one session;
            // treat it as the old client leaving first.
            self.remove_client(&key, now);
        }
        self.clients.insert(key, Client { user: user.clone(), info: info.clone() });
        if user.is_empty() {
            return None;
        }
        match self.users.get_mut(user) {
            Some(u) => {
                u.clients += 1;
                u.left_at = None;
                None
            }
            None => {
                self.users.insert(user.clone(), User { clients: 1, left_at: None, info: info.clone() });
                announce.then(|| PresenceEvent::Join { user: user.clone(), info })
            }
        }
    }

    /// A client unsubscribed or disconnected. Returns the `Leave` only when the grace
    /// period is zero (otherwise [`ChannelPresence::tick`] sends it once it is due).
    pub fn leave(&mut self, node: &NodeId, conn: ConnId, now: Millis) -> Option<PresenceEvent> {
        self.remove_client(&(node.clone(), conn), now);
        self.due(now).into_iter().next()
    }

    fn remove_client(&mut self, key: &(NodeId, ConnId), now: Millis) {
        let Some(client) = self.clients.remove(key) else { return };
        if let Some(u) = self.users.get_mut(&client.user) {
            u.clients = u.clients.saturating_sub(1);
            if u.clients == 0 {
                u.left_at = Some(now);
            }
        }
    }

    /// Replaces everything this presence holds about `node`'s clients with `clients`
    /// (the node's re-announcement). Clients it no longer has leave (debounced); clients
    /// added here are not announced as joins: they were in the channel already, the
    /// owner had only lost track. Returns the leaves that are due at once.
    pub fn sync_node(
        &mut self,
        node: &NodeId,
        clients: impl IntoIterator<Item = (ConnId, Arc<str>, Option<Arc<str>>)>,
        now: Millis,
    ) -> Vec<PresenceEvent> {
        let fresh: BTreeMap<ConnId, (Arc<str>, Option<Arc<str>>)> =
            clients.into_iter().map(|(c, u, i)| (c, (u, i))).collect();
        let stale: Vec<(NodeId, ConnId)> = self
            .clients
            .range((node.clone(), ConnId(0))..=(node.clone(), ConnId(u64::MAX)))
            .filter(|((_, conn), _)| !fresh.contains_key(conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &stale {
            self.remove_client(key, now);
        }
        for (conn, (user, info)) in fresh {
            self.add(node, conn, &user, info, now, false);
        }
        self.due(now)
    }

    /// `node` is gone (it left the cluster or restarted): its clients leave, debounced.
    pub fn drop_node(&mut self, node: &NodeId, now: Millis) -> Vec<PresenceEvent> {
        self.sync_node(node, std::iter::empty(), now)
    }

    /// The leaves whose grace period has passed by `now`.
    pub fn tick(&mut self, now: Millis) -> Vec<PresenceEvent> {
        self.due(now)
    }

    fn due(&mut self, now: Millis) -> Vec<PresenceEvent> {
        let grace = u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX);
        let gone: Vec<Arc<str>> = self
            .users
            .iter()
            .filter(|(_, u)| u.clients == 0 && u.left_at.is_some_and(|t| t.0.saturating_add(grace) <= now.0))
            .map(|(name, _)| name.clone())
            .collect();
        let mut events: Vec<PresenceEvent> = gone
            .into_iter()
            .filter_map(|name| {
                let u = self.users.remove(&name)?;
                Some(PresenceEvent::Leave { user: name, info: u.info, left_at: u.left_at.unwrap_or(now) })
            })
            .collect();
        // Deterministic order for callers and tests.
        events.sort_by(|a, b| event_user(a).cmp(event_user(b)));
        events
    }

    /// Counts of clients and users present.
    #[must_use]
    pub fn stats(&self) -> PresenceStats {
        PresenceStats { clients: self.clients.len(), users: self.users.values().filter(|u| u.clients > 0).count() }
    }

    /// Up to `limit` clients, in `(node, connection)` order.
    #[must_use]
    pub fn members(&self, limit: usize) -> Vec<Member> {
        self.clients
            .iter()
            .take(limit)
            .map(|((node, conn), c)| Member {
                node: node.clone(),
                conn: *conn,
                user: c.user.clone(),
                info: c.info.clone(),
            })
            .collect()
    }

    /// The nodes holding clients of `user` (for the connection registry), with counts.
    #[must_use]
    pub fn nodes_of(&self, user: &str) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for ((node, _), c) in &self.clients {
            if &*c.user == user {
                *out.entry(node.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Whether `user` has a client here right now.
    #[must_use]
    pub fn is_present(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.clients > 0)
    }

    /// Users whose leave is pending (inside their grace period).
    #[must_use]
    pub fn leaving(&self) -> usize {
        self.users.values().filter(|u| u.clients == 0).count()
    }

    /// Users whose leave is pending, with how long ago their last client left: what a
    /// handoff carries to the channel's next owner, so their `leave` is not lost.
    #[must_use]
    pub fn pending_leaves(&self, now: Millis) -> Vec<LeavingUser> {
        let mut out: Vec<LeavingUser> = self
            .users
            .iter()
            .filter_map(|(user, u)| {
                let left_at = u.left_at.filter(|_| u.clients == 0)?;
                let ago = Duration::from_millis(now.0.saturating_sub(left_at.0));
                Some(LeavingUser { user: user.clone(), info: u.info.clone(), ago })
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Continues the leaves the previous owner had pending: each user not known here is
    /// leaving since `ago` before `now`, and gets its `leave` when the rest of the grace
    /// has passed, unless a client of theirs is announced first. Users known here are
    /// left as they are. (A leave that happened before this process started is taken as
    /// at its start: such a `leave` may come later than the grace, never earlier.)
    pub fn adopt_leaves(&mut self, leaving: impl IntoIterator<Item = LeavingUser>, now: Millis) {
        for l in leaving.into_iter().filter(|l| !l.user.is_empty()) {
            let ago = u64::try_from(l.ago.as_millis()).unwrap_or(u64::MAX);
            self.users.entry(l.user).or_insert(User {
                clients: 0,
                left_at: Some(Millis(now.0.saturating_sub(ago))),
                info: l.info,
            });
        }
    }

    /// Nothing is held: no client, no pending leave.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.users.is_empty()
    }
}

fn event_user(e: &PresenceEvent) -> &str {
    match e {
        PresenceEvent::Join { user, .. } | PresenceEvent::Leave { user, .. } => user,
    }
}

/// The typing rate limit of one channel: one notice per user per [`TYPING_INTERVAL`].
/// Entries older than the interval are pruned, so it holds at most the users who typed
/// within the last interval, and at most `cap` of them.
#[derive(Debug, Clone)]
pub struct TypingGate {
    last: HashMap<Arc<str>, Millis>,
    interval: u64,
    cap: usize,
}

impl TypingGate {
    #[must_use]
    pub fn new(interval: Duration, cap: usize) -> TypingGate {
        TypingGate { last: HashMap::new(), interval: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX), cap }
    }

    /// Whether `user` may send a typing notice now (and records it if so).
    pub fn allow(&mut self, user: &Arc<str>, now: Millis) -> bool {
        if let Some(t) = self.last.get(user) {
            if now.0 < t.0.saturating_add(self.interval) {
                return false;
            }
        }
        if self.last.len() >= self.cap {
            self.prune(now);
            if self.last.len() >= self.cap {
                return false;
            }
        }
        self.last.insert(user.clone(), now);
        true
    }

    /// Forgets users whose interval has passed.
    pub fn prune(&mut self, now: Millis) {
        let interval = self.interval;
        self.last.retain(|_, t| now.0 < t.0.saturating_add(interval));
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// When users were last seen online (UNIX milliseconds), for the users whose registry
/// channel this node owns. Bounded: beyond `cap` users the oldest entries are evicted.
#[derive(Debug, Clone)]
pub struct LastSeen {
    at: HashMap<Arc<str>, u64>,
    /// Insertion order; may hold superseded entries, compacted when it grows past
    /// twice the cap.
    order: VecDeque<(Arc<str>, u64)>,
    cap: usize,
}

impl LastSeen {
    #[must_use]
    pub fn new(cap: usize) -> LastSeen {
        LastSeen { at: HashMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Records that `user` was last seen at `unix_ms`.
    pub fn record(&mut self, user: &Arc<str>, unix_ms: u64) {
        self.at.insert(user.clone(), unix_ms);
        self.order.push_back((user.clone(), unix_ms));
        while self.at.len() > self.cap {
            let Some((u, t)) = self.order.pop_front() else { break };
            if self.at.get(&u) == Some(&t) {
                self.at.remove(&u);
            }
        }
        if self.order.len() > 2 * self.cap {
            let at = &self.at;
            self.order.retain(|(u, t)| at.get(u) == Some(t));
        }
    }

    #[must_use]
    pub fn get(&self, user: &str) -> Option<u64> {
        self.at.get(user).copied()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.at.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).expect("valid node id")
    }

    fn u(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    const GRACE: Duration = Duration::from_secs(30);

    fn join(user: &str) -> PresenceEvent {
        PresenceEvent::Join { user: u(user), info: None }
    }

    #[test]
    fn pending_leaves_move_to_the_next_owner_with_the_rest_of_their_grace() {
        let a = node("a");
        let mut old = ChannelPresence::new(GRACE);
        old.join(&a, ConnId(1), &u("alice"), Some(u("{}")), Millis(0));
        old.join(&a, ConnId(2), &u("bob"), None, Millis(0));
        old.join(&a, ConnId(3), &u("carol"), None, Millis(0));
        old.leave(&a, ConnId(1), Millis(1_000));
        old.leave(&a, ConnId(2), Millis(5_000));
        let leaving = old.pending_leaves(Millis(10_000));
        let ago: Vec<(&str, u128)> = leaving.iter().map(|l| (&*l.user, l.ago.as_millis())).collect();
        assert_eq!(ago, [("alice", 9_000), ("bob", 5_000)], "carol is present, not leaving");

        let mut new = ChannelPresence::new(GRACE);
        // The new owner already knows bob is back (a node re-announced him).
        let t = 50_000;
        new.sync_node(&node("b"), [(ConnId(7), u("bob"), None)], Millis(t));
        new.adopt_leaves(leaving, Millis(t));
        assert_eq!(new.leaving(), 1);
        assert_eq!(new.tick(Millis(t + 20_999)), vec![], "alice's grace runs from her real leave");
        let due = new.tick(Millis(t + 21_000));
        assert!(matches!(&due[..], [PresenceEvent::Leave { user, info: Some(_), .. }] if &**user == "alice"));
        assert!(new.is_present("bob"));
    }

    #[test]
    fn a_user_joins_once_however_many_clients_it_has() {
        let (a, b) = (node("a"), node("b"));
        let mut p = ChannelPresence::new(GRACE);
        assert_eq!(p.join(&a, ConnId(1), &u("alice"), None, Millis(0)), Some(join("alice")));
        assert_eq!(p.join(&b, ConnId(1), &u("alice"), None, Millis(1)), None, "second client, same user");
        assert_eq!(p.join(&a, ConnId(2), &u("bob"), None, Millis(2)), Some(join("bob")));
        assert_eq!(p.stats(), PresenceStats { clients: 3, users: 2 });
        assert_eq!(p.nodes_of("alice").len(), 2);
        assert_eq!(p.leave(&a, ConnId(1), Millis(3)), None);
        assert!(p.is_present("alice"), "alice still has a client on b");
        assert_eq!(p.tick(Millis(100_000)), vec![]);
    }

    #[test]
    fn a_flapping_user_produces_no_leave_until_gone_for_the_grace() {
        let a = node("a");
        let mut p = ChannelPresence::new(GRACE);
        let mut events = vec![];
        let mut t = 0;
        for i in 0..10u64 {
            events.extend(p.join(&a, ConnId(i), &u("alice"), None, Millis(t)));
            t += 1000;
            events.extend(p.leave(&a, ConnId(i), Millis(t)));
            t += 2000; // back within the grace
            events.extend(p.tick(Millis(t)));
        }
        assert_eq!(events, vec![join("alice")], "one join, no leave while flapping");
        let left_at = Millis(t - 2000);
        assert_eq!(p.tick(Millis(left_at.0 + 29_999)), vec![]);
        assert_eq!(
            p.tick(Millis(left_at.0 + 30_000)),
            vec![PresenceEvent::Leave { user: u("alice"), info: None, left_at }]
        );
        assert!(p.is_empty(), "nothing is kept after the leave");
        assert_eq!(p.tick(Millis(left_at.0 + 90_000)), vec![], "a leave is sent once");
    }

    #[test]
    fn zero_grace_leaves_at_once() {
        let a = node("a");
        let mut p = ChannelPresence::new(Duration::ZERO);
        p.join(&a, ConnId(1), &u("alice"), None, Millis(0));
        assert!(matches!(p.leave(&a, ConnId(1), Millis(5)), Some(PresenceEvent::Leave { .. })));
        assert!(p.is_empty());
    }

    #[test]
    fn anonymous_clients_are_counted_without_events() {
        let a = node("a");
        let mut p = ChannelPresence::new(GRACE);
        assert_eq!(p.join(&a, ConnId(1), &u(""), None, Millis(0)), None);
        assert_eq!(p.stats(), PresenceStats { clients: 1, users: 0 });
        assert_eq!(p.leave(&a, ConnId(1), Millis(1)), None);
        assert!(p.is_empty());
    }

    #[test]
    fn a_sync_rebuilds_silently_and_a_dropped_node_leaves_after_the_grace() {
        let (a, b) = (node("a"), node("b"));
        let mut p = ChannelPresence::new(GRACE);
        // A new owner learns its members from re-announcements: no joins.
        let none = p.sync_node(&a, vec![(ConnId(1), u("alice"), None), (ConnId(2), u("bob"), None)], Millis(0));
        assert_eq!(none, vec![]);
        p.sync_node(&b, vec![(ConnId(7), u("bob"), None)], Millis(0));
        assert_eq!(p.stats(), PresenceStats { clients: 3, users: 2 });
        // A re-announcement without bob's client on a: bob stays (on b).
        p.sync_node(&a, vec![(ConnId(1), u("alice"), None)], Millis(10));
        assert_eq!(p.stats(), PresenceStats { clients: 2, users: 2 });
        // Node a dies: alice leaves once, after the grace; bob never does.
        assert_eq!(p.drop_node(&a, Millis(1000)), vec![]);
        assert_eq!(p.leaving(), 1);
        let leaves = p.tick(Millis(31_000));
        assert_eq!(leaves, vec![PresenceEvent::Leave { user: u("alice"), info: None, left_at: Millis(1000) }]);
        assert_eq!(p.tick(Millis(61_000)), vec![]);
        assert_eq!(p.stats(), PresenceStats { clients: 1, users: 1 });
    }

    #[test]
    fn a_user_reconnecting_elsewhere_within_the_grace_is_not_announced() {
        let (a, b) = (node("a"), node("b"));
        let mut p = ChannelPresence::new(GRACE);
        p.join(&a, ConnId(1), &u("alice"), None, Millis(0));
        p.drop_node(&a, Millis(100));
        assert_eq!(p.join(&b, ConnId(9), &u("alice"), None, Millis(5000)), None);
        assert_eq!(p.tick(Millis(100_000)), vec![]);
        assert!(p.is_present("alice"));
    }

    #[test]
    fn typing_is_one_per_second_per_user_and_bounded() {
        let mut g = TypingGate::new(TYPING_INTERVAL, 2);
        assert!(g.allow(&u("a"), Millis(0)));
        assert!(!g.allow(&u("a"), Millis(999)));
        assert!(g.allow(&u("a"), Millis(1000)));
        assert!(g.allow(&u("b"), Millis(1000)));
        assert!(!g.allow(&u("c"), Millis(1500)), "full: a and b typed within the interval");
        assert!(g.allow(&u("c"), Millis(2000)), "pruned");
        g.prune(Millis(10_000));
        assert!(g.is_empty());
    }

    #[test]
    fn last_seen_is_bounded_and_keeps_the_newest() {
        let mut l = LastSeen::new(3);
        for (i, name) in ["a", "b", "c", "a", "d"].iter().enumerate() {
            l.record(&u(name), i as u64);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.get("b"), None, "the oldest was evicted");
        assert_eq!(l.get("a"), Some(3), "a was refreshed");
        for i in 0..100 {
            l.record(&u("a"), 100 + i);
        }
        assert!(l.order.len() <= 6, "superseded entries are compacted");
        assert_eq!(l.get("a"), Some(199));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8, u8, u8),
        Leave(u8, u8),
        Drop(u8),
        Sync(u8, Vec<(u8, u8)>),
        Wait(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3u8, 0..6u8, 0..4u8).prop_map(|(n, c, u)| Op::Join(n, c, u)),
            4 => (0..3u8, 0..6u8).prop_map(|(n, c)| Op::Leave(n, c)),
            1 => (0..3u8).prop_map(Op::Drop),
            1 => (0..3u8, proptest::collection::vec((0..6u8, 0..4u8), 0..4)).prop_map(|(n, v)| Op::Sync(n, v)),
            3 => (0..40_000u16).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Events alternate join/leave per user, a leave comes only after the user had no
        /// client for the whole grace, and once every client is gone and the grace has
        /// passed nothing is held.
        #[test]
        fn events_alternate_and_state_drains(ops in proptest::collection::vec(op(), 1..120)) {
            let nodes = [node("a"), node("b"), node("c")];
            let users: Vec<Arc<str>> = ["", "u1", "u2", "u3"].iter().map(|s| u(s)).collect();
            let mut p = ChannelPresence::new(Duration::from_secs(10));
            let mut now = Millis(0);
            let mut joined: HashMap<Arc<str>, bool> = HashMap::new();
            let mut check = |events: Vec<PresenceEvent>, p: &ChannelPresence, now: Millis| {
                for e in events {
                    match e {
                        PresenceEvent::Join { user, .. } => {
                            prop_assert!(!joined.get(&user).copied().unwrap_or(false), "double join");
                            prop_assert!(!user.is_empty());
                            joined.insert(user, true);
                        }
                        PresenceEvent::Leave { user, left_at, .. } => {
                            prop_assert!(!p.is_present(&user), "leave while present");
                            prop_assert!(left_at.0 + 10_000 <= now.0, "leave before the grace ended");
                            joined.insert(user, false);
                        }
                    }
                }
                Ok(())
            };
            for op in ops {
                let events = match op {
                    Op::Join(n, c, us) => p.join(&nodes[n as usize], ConnId(c.into()), &users[us as usize], None, now).into_iter().collect(),
                    Op::Leave(n, c) => p.leave(&nodes[n as usize], ConnId(c.into()), now).into_iter().collect(),
                    Op::Drop(n) => p.drop_node(&nodes[n as usize], now),
                    Op::Sync(n, v) => p.sync_node(
                        &nodes[n as usize],
                        v.into_iter().map(|(c, us)| (ConnId(c.into()), users[us as usize].clone(), None)),
                        now,
                    ),
                    Op::Wait(ms) => {
                        now = Millis(now.0 + u64::from(ms));
                        p.tick(now)
                    }
                };
                check(events, &p, now)?;
            }
            for n in &nodes {
                let e = p.drop_node(n, now);
                check(e, &p, now)?;
            }
            now = Millis(now.0 + 10_000);
            let e = p.tick(now);
            check(e, &p, now)?;
            prop_assert!(p.is_empty());
        }
    }
}
