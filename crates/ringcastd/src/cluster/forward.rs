//! The gateway side: requests forwarded to owners, retried across slot moves.

use super::*;
use futures_util::StreamExt;

/// Channels re-subscribed at once when an owner's stream ends.
const RESYNC_CONCURRENCY: usize = 64;
/// How long a released interest is remembered, to be repeated to a slot's next owner
/// (longer than a handoff takes to show in every view).
const RELEASE_MEMORY: Duration = Duration::from_secs(30);
/// Released interests remembered at most (the oldest are forgotten first).
const RELEASE_MEMORY_ENTRIES: usize = 10_000;

/// One forwarding attempt: a boxed future so the retry loop can run it again on a new
/// route (and stay `Send`).
type Attempt<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Refusal>> + Send + 'a>>;

impl Runtime {
    // ---------------------------------------------------------------------------------
    // Gateway side.

    pub(super) fn register(&self, pending: Pending) -> u64 {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(req, pending);
        req
    }

    pub(super) async fn request(
        &self,
        owner: &NodeId,
        make: impl FnOnce(u64) -> PeerFrame,
        until: Instant,
    ) -> Result<PeerFrame, Refusal> {
        let (tx, rx) = oneshot::channel();
        let req = self.register(Pending::Reply(tx));
        if !self.send(owner, make(req)) {
            lock(&self.pending).remove(&req);
            return Err(Refusal::new(ErrorCode::Unavailable, format!("no link to {owner}; retry")));
        }
        match tokio::time::timeout(until.saturating_duration_since(Instant::now()), rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                lock(&self.pending).remove(&req);
                Err(Refusal::indeterminate(format!(
                    "{owner} did not answer in time; the outcome is unknown, retry with the same idempotency_key"
                )))
            }
        }
    }

    /// Runs `attempt` on the channel's current route until it succeeds, fails for a
    /// reason other than `unavailable`, or [`FORWARD_DEADLINE`] passes; between tries
    /// it waits for the route table to change (the slot moved, or was claimed).
    async fn forward<'a, T>(
        &self,
        router: &Router,
        channel: &ChannelName,
        mut attempt: impl FnMut(Target, Instant) -> Attempt<'a, T>,
    ) -> Result<T, Refusal> {
        let until = Instant::now() + FORWARD_DEADLINE;
        loop {
            let result = match router.target(channel) {
                Ok(target) => attempt(target, until).await,
                Err(r) => Err(r),
            };
            match result {
                Err(r) if r.retry && Instant::now() < until => self.table_change(until).await,
                other => return other,
            }
        }
    }

    pub(crate) async fn publish(&self, router: &Router, p: &PublishRequest<'_>) -> Result<Published, Refusal> {
        let PublishRequest { channel, data, idempotency_key, origin, key, .. } = *p;
        self.forward(router, channel, |target, until| {
            Box::pin(async move {
                match target {
                    Target::Local(_) if p.ns.durable => match self.hub_arc() {
                        Some(rt) => rt.publish_durable(p).await,
                        None => Err(Refusal::new(ErrorCode::Unavailable, "the node is shutting down")),
                    },
                    Target::Local(epoch) => {
                        self.hub.publish(p, self.now(), epoch).map_err(|code| crate::router::hub_refusal(code, channel))
                    }
                    Target::Remote { owner, epoch } => {
                        let frame = |req| PeerFrame::Publish {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: epoch.0,
                            channel: channel.as_str().to_owned(),
                            data: data.get().to_owned(),
                            idempotency_key: idempotency_key.map(str::to_owned),
                            client: origin == Origin::Client,
                            key: key.map(str::to_owned),
                        };
                        match self.request(&owner, frame, until).await? {
                            PeerFrame::Acked { epoch, offset, duplicate, .. } => {
                                let epoch =
                                    Epoch::new(epoch).ok_or_else(|| Refusal::new(ErrorCode::Internal, "epoch 0"))?;
                                Ok(Published {
                                    position: ringcast_core::StreamPosition { epoch, offset: Offset(offset) },
                                    duplicate,
                                })
                            }
                            PeerFrame::Refused { code, message, retry, .. } => {
                                Err(refusal_from_wire(&code, message, retry))
                            }
                            _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to publish")),
                        }
                    }
                }
            })
        })
        .await
    }

    pub(crate) async fn subscribe(
        &self,
        router: &Router,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        sub: &LocalSubscriber,
    ) -> Result<(), Refusal> {
        self.forward(router, channel, |target, until| {
            Box::pin(async move {
                match target {
                    Target::Local(_) => self
                        .hub
                        .subscribe(channel, ns, sub, self.now())
                        .map_err(|code| Refusal::new(code, format!("cannot subscribe to {channel}"))),
                    Target::Remote { owner, epoch } => {
                        let (done, rx) = oneshot::channel();
                        let req =
                            self.register(Pending::Subscribe { channel: channel.clone(), sub: sub.clone(), done });
                        // A presence member joins at the owner with the subscribe, so the
                        // owner answers for it from its reply on.
                        let member = sub.member.as_ref().map(|m| MemberWire {
                            conn: sub.conn.0,
                            user: m.user.to_string(),
                            info: m.info.as_deref().map(str::to_owned),
                        });
                        let frame = PeerFrame::Subscribe {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: epoch.0,
                            channel: channel.as_str().to_owned(),
                            since: sub.since.map(|s| SinceWire { epoch: s.epoch.map(Epoch::get), offset: s.offset.0 }),
                            snapshot: sub.snapshot,
                            member,
                        };
                        let sent = self.hub.send_subscribe(channel, &owner, frame);
                        let outcome = if sent {
                            match tokio::time::timeout(until.saturating_duration_since(Instant::now()), rx).await {
                                Ok(Ok(r)) => r,
                                _ => {
                                    Err(Refusal::new(ErrorCode::Unavailable, format!("{owner} did not answer in time")))
                                }
                            }
                        } else {
                            Err(Refusal::new(ErrorCode::Unavailable, format!("no link to {owner}")))
                        };
                        if lock(&self.pending).remove(&req).is_some() {
                            // No reply was taken for it (the reader resolves those).
                            self.abandon_subscribe(channel);
                            if sent && sub.member.is_some() {
                                // The owner may have served it after all: take the
                                // member back (a leave of an unknown one is a no-op).
                                self.send_presence(&owner, epoch, channel, Vec::new(), vec![sub.conn.0], false);
                            }
                        }
                        outcome
                    }
                }
            })
        })
        .await
    }

    pub(crate) async fn history(
        &self,
        router: &Router,
        channel: &ChannelName,
        before: Option<Offset>,
        limit: u32,
    ) -> Result<History, Refusal> {
        self.forward(router, channel, |target, until| {
            Box::pin(async move {
                match target {
                    Target::Local(_) => Ok(crate::router::local_history(&self.hub, channel, before, limit, self.now())),
                    Target::Remote { owner, epoch } => {
                        let frame = |req| PeerFrame::History {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: epoch.0,
                            channel: channel.as_str().to_owned(),
                            before: before.map(|o| o.0),
                            limit,
                        };
                        match self.request(&owner, frame, until).await? {
                            PeerFrame::HistoryPage { epoch, oldest, newest, next_before, messages, .. } => {
                                Ok(History {
                                    epoch: epoch.and_then(Epoch::new),
                                    oldest: Offset(oldest),
                                    newest: Offset(newest),
                                    next_before: next_before.map(Offset),
                                    messages: messages.into_iter().map(Utf8Bytes::from).collect(),
                                })
                            }
                            PeerFrame::Refused { code, message, retry, .. } => {
                                Err(refusal_from_wire(&code, message, retry))
                            }
                            _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to history")),
                        }
                    }
                }
            })
        })
        .await
    }

    /// Queues a `Presence` frame for `channel` on the owner's stream.
    pub(super) fn send_presence(
        &self,
        owner: &NodeId,
        epoch: SlotEpoch,
        channel: &ChannelName,
        joins: Vec<MemberWire>,
        leaves: Vec<u64>,
        sync: bool,
    ) {
        let frame = PeerFrame::Presence {
            slot: Slot::of(channel).get(),
            slot_epoch: epoch.0,
            channel: channel.as_str().to_owned(),
            joins,
            leaves,
            sync,
        };
        if !self.send(owner, frame) {
            // The owner learns this node's members again when the link or route changes.
            debug!(%channel, %owner, "presence update not sent; it is re-announced on resync");
        }
    }

    /// A local presence member of a remote channel left: tell the owner.
    pub(crate) fn presence_leave(&self, router: &Router, channel: &ChannelName, conn: ringcast_core::ConnId) {
        if let Ok(Target::Remote { owner, epoch }) = router.target(channel) {
            self.send_presence(&owner, epoch, channel, Vec::new(), vec![conn.0], false);
        }
    }

    /// Re-announces this node's presence members of `channel` to its owner `owner`
    /// (the complete list, replacing what the owner held for this node; in a presence
    /// namespace an empty list too, as the owner may have inherited members of ours that
    /// have left since).
    pub(super) fn announce_members(&self, owner: &NodeId, epoch: SlotEpoch, channel: &ChannelName) {
        let presence = self.namespaces.get(channel.namespace()).is_some_and(|ns| ns.presence);
        self.hub.announce_members(channel, |members| {
            if members.is_empty() && !presence {
                return;
            }
            let joins = members
                .into_iter()
                .map(|(conn, user, info)| MemberWire {
                    conn: conn.0,
                    user: user.to_string(),
                    info: info.as_deref().map(str::to_owned),
                })
                .collect();
            self.send_presence(owner, epoch, channel, joins, Vec::new(), true);
        });
    }

    /// A channel's presence from its owner.
    pub(crate) async fn presence(
        &self,
        router: &Router,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<crate::router::Presence, Refusal> {
        self.forward(router, channel, |target, until| {
            Box::pin(async move {
                match target {
                    Target::Local(_) => Ok(crate::router::local_presence(&self.hub, channel, limit)),
                    Target::Remote { owner, epoch } => {
                        let frame = |req| PeerFrame::PresenceQuery {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: epoch.0,
                            channel: channel.as_str().to_owned(),
                            limit: u32::try_from(limit).unwrap_or(u32::MAX),
                        };
                        match self.request(&owner, frame, until).await? {
                            PeerFrame::PresenceReply { clients, users, members, last_seen, .. } => {
                                Ok(crate::router::Presence {
                                    stats: ringcast_core::presence::PresenceStats {
                                        clients: usize::try_from(clients).unwrap_or(usize::MAX),
                                        users: usize::try_from(users).unwrap_or(usize::MAX),
                                    },
                                    members: members
                                        .into_iter()
                                        .take(limit)
                                        .filter_map(|m| {
                                            Some(ringcast_core::presence::Member {
                                                node: NodeId::new(&m.node).ok()?,
                                                conn: ringcast_core::ConnId(m.conn),
                                                user: m.user.into(),
                                                info: m.info.map(Into::into),
                                            })
                                        })
                                        .collect(),
                                    last_seen,
                                })
                            }
                            PeerFrame::Refused { code, message, retry, .. } => {
                                Err(refusal_from_wire(&code, message, retry))
                            }
                            _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to presence")),
                        }
                    }
                }
            })
        })
        .await
    }

    /// Server-API publishes, in one round trip per owning node: items whose slot this
    /// node holds run here, the others go to their owners as one `PublishBatch` each
    /// (sent concurrently), and an item refused for a slot move is retried alone with
    /// [`Runtime::publish`]. Results are in item order; items of one channel keep their
    /// order.
    pub(crate) async fn publish_batch(
        &self,
        router: &Router,
        items: &[PublishRequest<'_>],
    ) -> Vec<Result<Published, Refusal>> {
        let mut results: Vec<Option<Result<Published, Refusal>>> = vec![None; items.len()];
        let mut remote: BTreeMap<NodeId, Vec<(usize, ringcast_proto::cluster::BatchItemWire)>> = BTreeMap::new();
        let mut again = Vec::new();
        for (i, p) in items.iter().enumerate() {
            match router.target(p.channel) {
                Ok(Target::Local(epoch)) if !p.ns.durable => {
                    let r = self.hub.publish(p, self.now(), epoch);
                    results[i] = Some(r.map_err(|code| crate::router::hub_refusal(code, p.channel)));
                }
                Ok(Target::Remote { owner, epoch }) => {
                    remote.entry(owner).or_default().push((
                        i,
                        ringcast_proto::cluster::BatchItemWire {
                            slot: Slot::of(p.channel).get(),
                            slot_epoch: epoch.0,
                            channel: p.channel.as_str().to_owned(),
                            data: p.data.get().to_owned(),
                            idempotency_key: p.idempotency_key.map(str::to_owned),
                            key: p.key.map(str::to_owned),
                        },
                    ));
                }
                // Durable local items wait for the replica, and unroutable ones retry:
                // both one at a time below.
                Ok(Target::Local(_)) | Err(_) => again.push(i),
            }
        }
        let until = Instant::now() + FORWARD_DEADLINE;
        let replies = futures_util::future::join_all(remote.into_iter().map(|(owner, batch)| async move {
            let (indexes, wires): (Vec<usize>, Vec<_>) = batch.into_iter().unzip();
            let reply = self.request(&owner, |req| PeerFrame::PublishBatch { req, items: wires }, until).await;
            (indexes, reply)
        }))
        .await;
        for (indexes, reply) in replies {
            match reply {
                Ok(PeerFrame::PublishedBatch { results: got, .. }) if got.len() == indexes.len() => {
                    for (i, r) in indexes.into_iter().zip(got) {
                        match r {
                            ringcast_proto::cluster::BatchResultWire::Acked { epoch, offset, duplicate } => {
                                results[i] = Some(
                                    Epoch::new(epoch).ok_or_else(|| Refusal::new(ErrorCode::Internal, "epoch 0")).map(
                                        |epoch| Published {
                                            position: ringcast_core::StreamPosition { epoch, offset: Offset(offset) },
                                            duplicate,
                                        },
                                    ),
                                );
                            }
                            ringcast_proto::cluster::BatchResultWire::Refused { retry: true, .. } => again.push(i),
                            ringcast_proto::cluster::BatchResultWire::Refused { code, message, retry: false } => {
                                results[i] = Some(Err(refusal_from_wire(&code, message, false)));
                            }
                        }
                    }
                }
                // No link, or a refusal of the whole batch: each item on its own.
                Ok(PeerFrame::Refused { retry: true, .. }) | Err(Refusal { retry: true, .. }) => again.extend(indexes),
                Ok(PeerFrame::Refused { code, message, .. }) => {
                    for i in indexes {
                        results[i] = Some(Err(refusal_from_wire(&code, message.clone(), false)));
                    }
                }
                Err(r) => {
                    for i in indexes {
                        results[i] = Some(Err(r.clone()));
                    }
                }
                Ok(_) => {
                    for i in indexes {
                        results[i] = Some(Err(Refusal::new(ErrorCode::Internal, "unexpected reply to a batch")));
                    }
                }
            }
        }
        again.sort_unstable();
        for i in again {
            results[i] = Some(self.publish(router, &items[i]).await);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Refusal::new(ErrorCode::Internal, "batch item without a result"))))
            .collect()
    }

    /// A keep-latest channel's state from its owner.
    pub(crate) async fn state(&self, router: &Router, channel: &ChannelName) -> Result<crate::router::State, Refusal> {
        self.forward(router, channel, |target, until| {
            Box::pin(async move {
                match target {
                    Target::Local(_) => Ok(crate::router::local_state(&self.hub, channel, self.now())),
                    Target::Remote { owner, epoch } => {
                        let frame = |req| PeerFrame::State {
                            req,
                            slot: Slot::of(channel).get(),
                            slot_epoch: epoch.0,
                            channel: channel.as_str().to_owned(),
                        };
                        match self.request(&owner, frame, until).await? {
                            PeerFrame::StateReply { epoch, offset, entries, .. } => Ok(crate::router::State {
                                top: epoch
                                    .and_then(Epoch::new)
                                    .map(|epoch| ringcast_core::StreamPosition { epoch, offset: Offset(offset) }),
                                entries: entries.into_iter().map(Utf8Bytes::from).collect(),
                            }),
                            PeerFrame::Refused { code, message, retry, .. } => {
                                Err(refusal_from_wire(&code, message, retry))
                            }
                            _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to state")),
                        }
                    }
                }
            })
        })
        .await
    }

    /// A typing notice, to the channel's owner. Best effort: not retried.
    pub(crate) fn typing(
        &self,
        router: &Router,
        channel: &ChannelName,
        user: &Arc<str>,
        info: Option<&str>,
    ) -> Result<(), Refusal> {
        match router.target(channel)? {
            Target::Local(_) => {
                self.hub.typing(channel, user, info, self.now());
                Ok(())
            }
            Target::Remote { owner, epoch } => {
                let frame = PeerFrame::Typing {
                    slot: Slot::of(channel).get(),
                    slot_epoch: epoch.0,
                    channel: channel.as_str().to_owned(),
                    user: user.to_string(),
                    info: info.map(str::to_owned),
                };
                if self.send(&owner, frame) {
                    Ok(())
                } else {
                    Err(Refusal::new(ErrorCode::Unavailable, format!("no link to {owner}; retry")))
                }
            }
        }
    }

    /// This node's last subscriber on a remote channel left: tell the owner.
    ///
    /// The release is remembered for [`RELEASE_MEMORY`]: an owner that handed the slot off
    /// just before the `Unsubscribe` arrived has already passed this node's interest on
    /// with the channel, and nothing would correct it until the channel's next message
    /// (its occupancy would never read vacant). So when this node sees the slot move,
    /// it repeats the release to the new owner ([`Runtime::repeat_releases`]).
    ///
    /// A route that still names this node (it handed the slot off and its table has not
    /// caught up) or no owner sends nothing now; the repeat does, once the move shows.
    pub(crate) fn release_interest(&self, channel: &ChannelName) {
        if let Route::Claimed { owner, epoch } = self.table().route(Slot::of(channel)) {
            if owner != self.me {
                self.send(&owner, unsubscribe_frame(channel, epoch));
            }
        }
        let now = Instant::now();
        let mut released = lock(&self.released);
        while released.front().is_some_and(|(at, _)| now.duration_since(*at) > RELEASE_MEMORY)
            || released.len() >= RELEASE_MEMORY_ENTRIES
        {
            released.pop_front();
        }
        released.push_back((now, channel.clone()));
    }

    /// A subscribe sent to a remote owner ended without attaching its subscriber: stops
    /// counting it, and releases the owner's interest when nobody here follows the
    /// channel any more.
    pub(super) fn abandon_subscribe(&self, channel: &ChannelName) {
        if self.hub.subscribe_abandoned(channel) {
            self.release_interest(channel);
        }
    }

    /// The owner of `slots` changed: repeats to the new owner this node's recent
    /// releases of their channels that it has not followed again since.
    fn repeat_releases(&self, slots: &HashSet<Slot>) {
        let recent: Vec<ChannelName> = {
            let released = lock(&self.released);
            released
                .iter()
                .filter(|(at, c)| at.elapsed() <= RELEASE_MEMORY && slots.contains(&Slot::of(c)))
                .map(|(_, c)| c.clone())
                .collect()
        };
        let table = self.table();
        for channel in recent.into_iter().filter(|c| !self.hub.follows_remote(c)) {
            if let Route::Claimed { owner, epoch } = table.route(Slot::of(&channel)) {
                if owner != self.me {
                    debug!(%channel, %owner, "repeating a released interest to the slot's new owner");
                    self.send(&owner, unsubscribe_frame(&channel, epoch));
                    // The new owner inherited the old one's presence: none of those
                    // members are here any more (their leaves may have gone to the old
                    // owner after it handed off).
                    self.announce_members(&owner, epoch, &channel);
                }
            }
        }
    }
}

impl Runtime {
    /// `peer`'s stream to this node ended (its link broke, or its queue for us
    /// overflowed and it dropped what it held): every channel this node mirrors from
    /// `peer` is subscribed again from the position it delivered up to, so frames lost
    /// with the stream are replayed (or, beyond the owner's history, announced to local
    /// subscribers as a `gap`), and the owner's interest is registered again.
    pub(super) async fn resync_from(self: Arc<Self>, peer: NodeId) {
        let table = self.table();
        self.resync_where(|c| matches!(table.route(Slot::of(c)), Route::Claimed { owner, .. } if owner == peer)).await;
    }

    /// The owner of `slots` changed (a failover, or a handoff elsewhere): re-subscribe
    /// their mirrored channels at the new owner.
    pub(super) async fn resync_slots(self: Arc<Self>, slots: HashSet<Slot>) {
        self.repeat_releases(&slots);
        self.resync_where(|c| slots.contains(&Slot::of(c))).await;
    }

    async fn resync_where(self: &Arc<Self>, select: impl Fn(&ChannelName) -> bool) {
        let channels: Vec<_> = self.hub.mirrored_channels().into_iter().filter(|(c, _)| select(c)).collect();
        if channels.is_empty() {
            return;
        }
        info!(channels = channels.len(), "resyncing mirrored channels by offset");
        futures_util::stream::iter(channels)
            .for_each_concurrent(RESYNC_CONCURRENCY, |(channel, position)| {
                let rt = self.clone();
                async move { rt.resync(&channel, position).await }
            })
            .await;
    }

    /// Re-subscribes one mirrored channel from `position` on its current owner, retrying
    /// across slot moves until [`FORWARD_DEADLINE`].
    async fn resync(&self, channel: &ChannelName, position: ringcast_core::StreamPosition) {
        let until = Instant::now() + FORWARD_DEADLINE;
        loop {
            let retry = match self.table().route(Slot::of(channel)) {
                // This node owns the channel now: the handoff installed it (with our own
                // presence members).
                Route::Claimed { owner, .. } if owner == self.me => return,
                Route::Claimed { owner, epoch } => {
                    let epoch_of_route = epoch;
                    let frame = |req| PeerFrame::Subscribe {
                        req,
                        slot: Slot::of(channel).get(),
                        slot_epoch: epoch.0,
                        channel: channel.as_str().to_owned(),
                        since: Some(SinceWire { epoch: Some(position.epoch.get()), offset: position.offset.0 }),
                        snapshot: false,
                        member: None,
                    };
                    match self.request(&owner, frame, until).await {
                        Ok(PeerFrame::Subscribed { epoch, offset, outcome, replay, .. }) => {
                            let Some(epoch) = Epoch::new(epoch) else { return };
                            let top = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
                            let lost_before = match outcome {
                                OutcomeWire::NotRecovered { reason, oldest, .. } if reason == "position_expired" => {
                                    Some(Offset(oldest))
                                }
                                _ => None,
                            };
                            let replay = replay
                                .into_iter()
                                .filter_map(|m| message_position(&m).map(|p| (p, Utf8Bytes::from(m))))
                                .collect();
                            let unfollowed = self.hub.resynced(channel, top, lost_before, replay, self.now());
                            self.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
                            if unfollowed {
                                self.send(&owner, unsubscribe_frame(channel, epoch_of_route));
                            }
                            // The owner may not know our presence members (a new owner,
                            // or frames lost with the stream): announce them all.
                            self.announce_members(&owner, epoch_of_route, channel);
                            return;
                        }
                        Ok(PeerFrame::Refused { retry, code, message, .. }) => {
                            debug!(%channel, code, message, "resync refused");
                            retry
                        }
                        Ok(_) => return,
                        Err(_) => true,
                    }
                }
                Route::Vacant { .. } | Route::NoOwner => true,
            };
            if !retry || Instant::now() >= until {
                warn!(%channel, "could not resync the channel; its subscribers rely on gap fills");
                return;
            }
            self.table_change(until).await;
        }
    }
}

/// Tells `channel`'s owner (claimed at `epoch`) that this node has no subscribers left.
fn unsubscribe_frame(channel: &ChannelName, epoch: SlotEpoch) -> PeerFrame {
    PeerFrame::Unsubscribe { slot: Slot::of(channel).get(), slot_epoch: epoch.0, channel: channel.as_str().to_owned() }
}
