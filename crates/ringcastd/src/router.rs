//! The router: where each channel operation runs.
//!
//! Sessions and the HTTP API call the router, never the hub directly. For each channel
//! it looks up the slot's route: when this node holds the slot's claim, the operation
//! runs on the local hub (as owner); otherwise it is forwarded to the owner over the
//! cluster links ([`crate::cluster`]). A standalone node is a one-member cluster whose
//! route table names it as the holder of every slot, so the same code path runs with no
//! frame ever sent.

use crate::cluster::Runtime;
use crate::hub::{Hub, LocalSubscriber, PublishRequest, Published};
use ringcast_core::ownership::{Route, RouteTable, SlotEpoch};
use ringcast_core::{ChannelName, ConnId, Epoch, Millis, NamespaceOptions, NodeId, Offset, Pattern, Slot};
use ringcast_proto::ErrorCode;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The slot epoch a standalone node acts under.
pub const STANDALONE_EPOCH: SlotEpoch = SlotEpoch(1);

/// A refused operation: the client-visible code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// Nothing was done and trying again (after re-routing) is safe: true for
    /// `unavailable` unless the outcome is unknown.
    pub retry: bool,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into(), retry: code == ErrorCode::Unavailable }
    }

    /// `unavailable` with an unknown outcome (a message may have been sequenced): the
    /// client retries with its idempotency key; the node does not retry on its own.
    pub fn indeterminate(message: impl Into<String>) -> Refusal {
        Refusal { code: ErrorCode::Unavailable, message: message.into(), retry: false }
    }
}

/// A keep-latest channel's state wherever it came from: the position it holds at, and
/// the newest `message` frame per key in offset order (`top` is `None` for a channel
/// with no stream).
#[derive(Debug, Clone, Default)]
pub struct State {
    pub top: Option<ringcast_core::StreamPosition>,
    pub entries: Vec<Utf8Bytes>,
}

/// A channel's presence wherever it came from.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    pub stats: ringcast_core::presence::PresenceStats,
    pub members: Vec<ringcast_core::presence::Member>,
    /// Registry channels: when the user was last online (UNIX ms), while offline.
    pub last_seen: Option<u64>,
}

/// A page of history wherever it came from.
#[derive(Debug, Clone)]
pub struct History {
    /// `None` when the channel has no stream.
    pub epoch: Option<Epoch>,
    pub oldest: Offset,
    pub newest: Offset,
    pub next_before: Option<Offset>,
    pub messages: Vec<Utf8Bytes>,
}

/// Where an operation on a slot runs.
pub(crate) enum Target {
    Local(SlotEpoch),
    Remote { owner: NodeId, epoch: SlotEpoch },
}

/// Routes channel operations to the local hub or to the owning node.
#[derive(Debug)]
pub struct Router {
    me: NodeId,
    hub: Arc<Hub>,
    standalone: RouteTable,
    cluster: Option<Arc<Runtime>>,
}

impl Router {
    #[must_use]
    pub fn new(me: NodeId, hub: Arc<Hub>, cluster: Option<Arc<Runtime>>) -> Router {
        let standalone = RouteTable::standalone(&me, STANDALONE_EPOCH);
        Router { me, hub, standalone, cluster }
    }

    #[must_use]
    pub fn cluster(&self) -> Option<&Arc<Runtime>> {
        self.cluster.as_ref()
    }

    /// The route of a channel's slot right now.
    #[must_use]
    pub fn route(&self, channel: &ChannelName) -> Route {
        let slot = Slot::of(channel);
        match &self.cluster {
            Some(c) => c.table().route(slot),
            None => self.standalone.route(slot),
        }
    }

    /// Where to run an operation on `channel`: local, remote, or a refusal to retry.
    pub(crate) fn target(&self, channel: &ChannelName) -> Result<Target, Refusal> {
        match self.route(channel) {
            Route::Claimed { owner, epoch } if owner == self.me => {
                if let Some(c) = &self.cluster {
                    c.check_owner()?;
                    return Ok(Target::Local(c.owner_epoch(Slot::of(channel), epoch)));
                }
                Ok(Target::Local(epoch))
            }
            Route::Claimed { owner, epoch } => Ok(Target::Remote { owner, epoch }),
            Route::Vacant { desired } => Err(Refusal::new(
                ErrorCode::Unavailable,
                format!("the channel's slot is being claimed by {desired}; retry shortly"),
            )),
            Route::NoOwner => Err(Refusal::new(ErrorCode::Unavailable, "no node can own channels right now")),
        }
    }

    pub async fn publish(&self, p: &PublishRequest<'_>, now: Millis) -> Result<Published, Refusal> {
        match &self.cluster {
            Some(c) => c.publish(self, p).await,
            None => self.hub.publish(p, now, STANDALONE_EPOCH).map_err(|code| hub_refusal(code, p.channel)),
        }
    }

    /// Several server-API publishes, one round trip per owning node (see
    /// `cluster::Runtime::publish_batch`); results in item order.
    pub async fn publish_batch(&self, items: &[PublishRequest<'_>], now: Millis) -> Vec<Result<Published, Refusal>> {
        match &self.cluster {
            Some(c) => c.publish_batch(self, items).await,
            None => items
                .iter()
                .map(|p| self.hub.publish(p, now, STANDALONE_EPOCH).map_err(|code| hub_refusal(code, p.channel)))
                .collect(),
        }
    }

    pub async fn subscribe(
        &self,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        sub: &LocalSubscriber,
        now: Millis,
    ) -> Result<(), Refusal> {
        match &self.cluster {
            Some(c) => c.subscribe(self, channel, ns, sub).await,
            None => self
                .hub
                .subscribe(channel, ns, sub, now)
                .map_err(|code| Refusal::new(code, format!("cannot subscribe to {channel}"))),
        }
    }

    /// Removes a local subscription; tells the remote owner when a presence member left
    /// and when this node's last subscriber on the channel left.
    pub fn unsubscribe(&self, channel: &ChannelName, conn: ConnId, now: Millis) -> bool {
        let out = self.hub.unsubscribe(channel, conn, now);
        if let Some(c) = &self.cluster {
            if out.member_elsewhere {
                c.presence_leave(self, channel, conn);
            }
            if out.release {
                c.release_interest(channel);
            }
        }
        out.removed
    }

    /// A local connection's pattern subscription goes live here, then on every other
    /// node: when this returns, the messages any node sequences reach it.
    pub async fn psubscribe(&self, pattern: &Pattern, sub: crate::hub::PatternSubscriber) {
        self.hub.add_pattern(pattern, sub);
        if let Some(c) = &self.cluster {
            c.add_pattern(pattern).await;
        }
    }

    /// Ends a local connection's pattern subscription; tells the owners of channels
    /// nobody here follows any more, and the other nodes when it was the last of its kind.
    pub fn punsubscribe(&self, pattern: &Pattern, conn: ConnId) {
        let out = self.hub.remove_pattern(conn, pattern);
        if let Some(c) = &self.cluster {
            for channel in &out.released {
                c.release_interest(channel);
            }
            if out.last {
                c.remove_pattern(pattern);
            }
        }
    }

    /// A channel's presence from its owner: counts and up to `limit` members, and for a
    /// registry channel (`#user:{id}`) when the user was last online.
    pub async fn presence(&self, channel: &ChannelName, limit: usize) -> Result<Presence, Refusal> {
        match &self.cluster {
            Some(c) => c.presence(self, channel, limit).await,
            None => Ok(local_presence(&self.hub, channel, limit)),
        }
    }

    /// A keep-latest channel's state from its owner.
    pub async fn state(&self, channel: &ChannelName, now: Millis) -> Result<State, Refusal> {
        match &self.cluster {
            Some(c) => c.state(self, channel).await,
            None => Ok(local_state(&self.hub, channel, now)),
        }
    }

    /// A typing notice, to the channel's owner (best effort, never stored).
    pub fn typing(
        &self,
        channel: &ChannelName,
        user: &Arc<str>,
        info: Option<&str>,
        now: Millis,
    ) -> Result<(), Refusal> {
        match &self.cluster {
            Some(c) => c.typing(self, channel, user, info),
            None => {
                self.hub.typing(channel, user, info, now);
                Ok(())
            }
        }
    }

    pub async fn history(
        &self,
        channel: &ChannelName,
        before: Option<Offset>,
        limit: u32,
        now: Millis,
    ) -> Result<History, Refusal> {
        match &self.cluster {
            Some(c) => c.history(self, channel, before, limit).await,
            None => Ok(local_history(&self.hub, channel, before, limit, now)),
        }
    }
}

/// The client-facing refusal for a hub error.
pub(crate) fn hub_refusal(code: ErrorCode, channel: &ChannelName) -> Refusal {
    let message = match code {
        ErrorCode::Conflict => "idempotency_key was already used with different data".to_owned(),
        ErrorCode::Unavailable => format!("{channel} is moving to another node; retry"),
        ErrorCode::AlreadySubscribed => format!("already subscribed to {channel}"),
        _ => format!("cannot complete the operation on {channel}"),
    };
    Refusal::new(code, message)
}

/// The local hub's keep-latest state of a channel.
pub(crate) fn local_state(hub: &Hub, channel: &ChannelName, now: Millis) -> State {
    match hub.state(channel, now) {
        Some((top, entries)) => State { top: Some(top), entries },
        None => State::default(),
    }
}

/// The local hub's presence of a channel (empty when nobody is in it).
pub(crate) fn local_presence(hub: &Hub, channel: &ChannelName, limit: usize) -> Presence {
    let view = hub.presence(channel, limit);
    let stats = view.as_ref().map(|v| v.stats).unwrap_or_default();
    // Last seen is for users who are offline now.
    let last_seen = channel.registry_user().filter(|_| stats.users == 0).and_then(|u| hub.last_seen(u));
    Presence { stats, members: view.map(|v| v.members).unwrap_or_default(), last_seen }
}

/// A page of the local hub's history, or the empty answer for a channel with no stream.
pub(crate) fn local_history(
    hub: &Hub,
    channel: &ChannelName,
    before: Option<Offset>,
    limit: u32,
    now: Millis,
) -> History {
    match hub.history(channel, before, limit as usize, now) {
        Some(p) => History {
            epoch: Some(p.epoch),
            oldest: p.oldest,
            newest: p.newest,
            next_before: p.next_before,
            messages: p.entries,
        },
        None => {
            History { epoch: None, oldest: Offset(1), newest: Offset::ZERO, next_before: None, messages: Vec::new() }
        }
    }
}
