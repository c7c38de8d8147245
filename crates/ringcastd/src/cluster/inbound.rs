//! Inbound peer links: accepting them and dispatching their frames.

use super::*;
use ringcast_auth::MAX_INFO_BYTES;
use ringcast_proto::client::MAX_PRESENCE_MEMBERS;
use ringcast_proto::cluster::{BatchItemWire, BatchResultWire};

/// Most items one `PublishBatch` may carry (the HTTP API sends at most this many).
const MAX_BATCH_ITEMS: usize = crate::http::MAX_BATCH_ITEMS;

/// A forwarded publish that passed [`Runtime::check_publish`].
struct CheckedPublish {
    channel: ChannelName,
    ns: NamespaceOptions,
    data: Box<RawValue>,
    idempotency_key: Option<String>,
    key: Option<String>,
}

impl CheckedPublish {
    fn request(&self, origin: Origin) -> PublishRequest<'_> {
        PublishRequest {
            channel: &self.channel,
            ns: &self.ns,
            data: &self.data,
            idempotency_key: self.idempotency_key.as_deref(),
            origin,
            key: self.key.as_deref(),
        }
    }
}

/// Most clients one `Presence` frame may announce or retire (a node's members of one
/// channel; beyond this the frame is refused as malformed).
const MAX_PRESENCE_BATCH: usize = 100_000;
/// Longest user id a peer may announce (tokens allow 256 bytes).
pub(super) const MAX_USER_BYTES: usize = 256;

impl Runtime {
    // ---------------------------------------------------------------------------------
    // Inbound frames.

    /// Accepts peer links; each handshake runs in its own task so a slow or hostile
    /// peer cannot hold up the others.
    pub(super) async fn accept_loop(self: Arc<Self>) {
        loop {
            let inbound = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                n = self.transport.accept_inbound() => match n {
                    Some(i) => i,
                    None => return,
                },
            };
            let rt = self.clone();
            self.tracker.spawn(async move {
                match inbound.handshake().await {
                    Ok((peer, conn)) => {
                        let span = info_span!("peer", node = %peer);
                        rt.read_connection(peer, conn).instrument(span).await;
                    }
                    Err(e) => warn!(error = %e, "peer link refused"),
                }
            });
        }
    }

    pub(super) async fn read_connection(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) {
        // The certificate proves the node id; etcd must also list it as a member. A node
        // that has just registered may reach us before our view shows it: wait a little.
        let deadline = Instant::now() + MEMBER_GRACE;
        while !self.members().contains_key(&peer) {
            if Instant::now() > deadline {
                warn!("refusing a link from a node that is not a registered member");
                conn.close(ringcast_cluster::transport::CLOSE_BAD_IDENTITY, b"not a registered member");
                return;
            }
            self.table_change(deadline).await;
        }
        loop {
            let recv = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                r = conn.accept_uni() => match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Whatever the peer had queued for us may be lost: resync what
                        // we follow from it by offset.
                        debug!(error = %e, "peer connection ended");
                        if !self.shutdown.is_cancelled() {
                            self.clone().resync_from(peer).await;
                        }
                        return;
                    }
                },
            };
            let rt = self.clone();
            let peer = peer.clone();
            self.tracker.spawn(async move { rt.read_stream(peer, recv).await });
        }
    }

    pub(super) async fn read_stream(self: Arc<Self>, peer: NodeId, mut recv: quinn::RecvStream) {
        match read_frame::<PeerFrame>(&mut recv, self.codec).await {
            Ok(Some(PeerFrame::Hello { node, version })) if node == peer.as_str() && version == FRAMES_VERSION => {}
            other => {
                warn!(?other, "stream did not start with a matching Hello; resetting it");
                let _ = recv.stop(ringcast_cluster::transport::RESET_PROTOCOL_ERROR);
                return;
            }
        }
        loop {
            let frame = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                f = read_frame::<PeerFrame>(&mut recv, self.codec) => f,
            };
            match frame {
                Ok(Some(f)) => self.on_frame(&peer, f),
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "bad frame from peer; resetting the stream");
                    ringcast_cluster::transport::reset_on_error(&mut recv, &e);
                    return;
                }
            }
        }
    }

    pub(super) fn refuse(&self, peer: &NodeId, req: u64, r: &Refusal, retry: bool) {
        let frame = PeerFrame::Refused { req, code: r.code.as_str().to_owned(), message: r.message.clone(), retry };
        self.send(peer, frame);
    }

    /// Checks that this node owns `slot` for a request routed under `epoch`.
    pub(super) fn serve_slot(&self, slot: u16, epoch: u64) -> Result<(), (Refusal, bool)> {
        let slot = Slot::new(slot).ok_or((Refusal::new(ErrorCode::BadRequest, "slot out of range"), false))?;
        match self.table().route(slot) {
            Route::Claimed { owner, epoch: mine } if owner == self.me && epoch <= mine.0 => {
                self.check_owner().map_err(|r| (r, false))
            }
            _ => Err((Refusal::new(ErrorCode::Unavailable, "this node does not own the slot now"), true)),
        }
    }

    /// Checks that this node owns `slot` for a presence update routed under `epoch`:
    /// as [`Runtime::serve_slot`], or by a claim of ours (this lease's, at `epoch` or
    /// newer) that the route table has not shown yet. The sender saw our claim first;
    /// its members' leaves, dropped here, would not be sent again (see
    /// `Hub::presence_update`).
    fn serve_presence(&self, slot: u16, epoch: u64) -> Result<(), Refusal> {
        let Err((refusal, _)) = self.serve_slot(slot, epoch) else { return Ok(()) };
        let Some(slot) = Slot::new(slot) else { return Err(refusal) };
        let shown = match self.table().route(slot) {
            Route::Claimed { epoch, .. } => epoch,
            _ => SlotEpoch(0),
        };
        let covers = lock(&self.own_epochs).get(&slot).is_some_and(|e| e.0 >= epoch);
        if covers && self.claimed_since(slot, shown) {
            self.check_owner()
        } else {
            Err(refusal)
        }
    }

    pub(super) fn parse_channel(&self, raw: &str, slot: u16) -> Result<(ChannelName, NamespaceOptions), Refusal> {
        let channel = ChannelName::new(raw).map_err(|e| Refusal::new(ErrorCode::InvalidChannel, e.to_string()))?;
        if Slot::of(&channel).get() != slot {
            return Err(Refusal::new(ErrorCode::BadRequest, "channel does not belong to the slot named"));
        }
        let ns = self
            .namespaces
            .get(channel.namespace())
            .cloned()
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownNamespace, "namespace not configured on the owner"))?;
        Ok((channel, ns))
    }

    /// Checks a forwarded publish like any peer input: the slot is ours, the channel,
    /// data, idempotency key and keep-latest key are valid.
    fn check_publish(&self, item: BatchItemWire) -> Result<CheckedPublish, (Refusal, bool)> {
        let BatchItemWire { slot, slot_epoch, channel, data, idempotency_key, key } = item;
        self.serve_slot(slot, slot_epoch)?;
        let (channel, ns) = self.parse_channel(&channel, slot).map_err(|r| (r, false))?;
        let bad = |code, m: String| (Refusal::new(code, m), false);
        let data: Box<RawValue> =
            serde_json::from_str(&data).map_err(|e| bad(ErrorCode::BadRequest, format!("data: {e}")))?;
        if data.get().len() > ns.max_message_bytes {
            return Err(bad(ErrorCode::MessageTooLarge, "data too large".into()));
        }
        if let Some(k) = &idempotency_key {
            check_idempotency_key(k).map_err(|m| bad(ErrorCode::InvalidIdempotencyKey, m))?;
        }
        if let Some(k) = key.as_deref().filter(|k| !k.is_empty()) {
            ringcast_core::latest::check_key(k).map_err(|m| bad(ErrorCode::BadRequest, m))?;
        }
        Ok(CheckedPublish { channel, ns, data, idempotency_key, key })
    }

    /// Owner: sequences a checked publish (a durable one waits for the replica).
    async fn serve_publish(self: &Arc<Self>, c: &CheckedPublish, origin: Origin) -> Result<Published, (Refusal, bool)> {
        if !c.ns.durable {
            return self.serve_publish_now(c, origin);
        }
        self.publish_durable(&c.request(origin)).await.map_err(|r| {
            let retry = r.retry;
            (r, retry)
        })
    }

    /// Owner: sequences a checked best-effort publish at once.
    fn serve_publish_now(&self, c: &CheckedPublish, origin: Origin) -> Result<Published, (Refusal, bool)> {
        let epoch = self.my_epoch(&c.channel);
        self.hub
            .publish(&c.request(origin), self.now(), epoch)
            .map_err(|code| (crate::router::hub_refusal(code, &c.channel), code == ErrorCode::Unavailable))
    }

    pub(super) fn on_frame(self: &Arc<Self>, peer: &NodeId, frame: PeerFrame) {
        match frame {
            PeerFrame::Hello { .. } => warn!("duplicate Hello ignored"),
            PeerFrame::Publish { req, slot, slot_epoch, channel, data, idempotency_key, client, key } => {
                let item = BatchItemWire { slot, slot_epoch, channel, data, idempotency_key, key };
                let origin = if client { Origin::Client } else { Origin::Api };
                let rt = self.clone();
                let peer = peer.clone();
                let answer = move |result: Result<Published, (Refusal, bool)>| match result {
                    Ok(p) => {
                        let frame = PeerFrame::Acked {
                            req,
                            epoch: p.position.epoch.get(),
                            offset: p.position.offset.0,
                            duplicate: p.duplicate,
                        };
                        rt.send(&peer, frame);
                    }
                    Err((r, retry)) => rt.refuse(&peer, req, &r, retry),
                };
                match self.check_publish(item) {
                    Err(e) => answer(Err(e)),
                    // Waits for the replica: off the reader task.
                    Ok(checked) if checked.ns.durable => {
                        let rt = self.clone();
                        self.tracker.spawn(async move { answer(rt.serve_publish(&checked, origin).await) });
                    }
                    // On the reader task, so its `Deliver`s are queued before the `Acked`.
                    Ok(checked) => answer(self.serve_publish_now(&checked, origin)),
                }
            }
            PeerFrame::PublishBatch { req, items } => {
                let rt = self.clone();
                let peer = peer.clone();
                self.tracker.spawn(async move {
                    let mut results = Vec::with_capacity(items.len());
                    for item in items.into_iter().take(MAX_BATCH_ITEMS) {
                        let result = match rt.check_publish(item) {
                            Ok(checked) => rt.serve_publish(&checked, Origin::Api).await,
                            Err(e) => Err(e),
                        };
                        results.push(match result {
                            Ok(p) => BatchResultWire::Acked {
                                epoch: p.position.epoch.get(),
                                offset: p.position.offset.0,
                                duplicate: p.duplicate,
                            },
                            Err((r, retry)) => {
                                BatchResultWire::Refused { code: r.code.as_str().to_owned(), message: r.message, retry }
                            }
                        });
                    }
                    rt.send(&peer, PeerFrame::PublishedBatch { req, results });
                });
            }
            PeerFrame::Subscribe { req, slot, slot_epoch, channel, since, snapshot, member } => {
                let checked = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)));
                match checked {
                    Ok((channel, ns)) => {
                        let since =
                            since.map(|s| Since { epoch: s.epoch.and_then(Epoch::new), offset: Offset(s.offset) });
                        let now = self.now();
                        let member = member.filter(member_fits).map(member_from_wire);
                        if !self.hub.serve_peer_subscribe(&channel, &ns, peer, req, (since, snapshot), member, now) {
                            self.metrics.peer_drops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            PeerFrame::Unsubscribe { channel, .. } => {
                if let Ok(channel) = ChannelName::new(&channel) {
                    self.hub.drop_interest(&channel, peer, self.now());
                }
            }
            PeerFrame::History { req, slot, slot_epoch, channel, before, limit } => {
                let result = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)))
                    .and_then(|(channel, _)| {
                        let limit = check_history_limit(Some(limit))
                            .map_err(|m| (Refusal::new(ErrorCode::BadRequest, m), false))?;
                        Ok(crate::router::local_history(&self.hub, &channel, before.map(Offset), limit, self.now()))
                    });
                match result {
                    Ok(h) => {
                        let frame = PeerFrame::HistoryPage {
                            req,
                            epoch: h.epoch.map(Epoch::get),
                            oldest: h.oldest.0,
                            newest: h.newest.0,
                            next_before: h.next_before.map(|o| o.0),
                            messages: h.messages.iter().map(|m| m.as_str().to_owned()).collect(),
                        };
                        self.send(peer, frame);
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            PeerFrame::Deliver { slot, slot_epoch, channel, epoch, offset, frame, delta } => {
                self.on_deliver(peer, slot, slot_epoch, &channel, (epoch, offset), frame, delta);
            }
            PeerFrame::Handoff { req, slot, from_epoch, channels } => {
                let rt = self.clone();
                let peer = peer.clone();
                self.tracker.spawn(async move { rt.take_over(peer, req, slot, from_epoch, channels).await });
            }
            PeerFrame::Replicate {
                req,
                slot,
                slot_epoch,
                channel,
                epoch,
                offset,
                frame,
                idempotency_key,
                digest,
                key,
            } => {
                let idem = (idempotency_key.as_deref(), digest);
                self.on_replicate(peer, req, slot, slot_epoch, &channel, epoch, offset, frame, idem, key.as_deref());
            }
            PeerFrame::ReplicaSync { req, slot, slot_epoch, channels } => {
                self.on_replica_sync(peer, req, slot, slot_epoch, channels);
            }
            PeerFrame::Presence { slot, slot_epoch, channel, joins, leaves, sync } => {
                // Not the owner (any more): the node re-announces when it sees the move.
                // Not shown the owner yet, though we claimed the slot: served.
                let Ok((channel, ns)) =
                    self.serve_presence(slot, slot_epoch).and_then(|()| self.parse_channel(&channel, slot))
                else {
                    debug!(%peer, "presence update for a slot not served here dropped");
                    return;
                };
                if joins.len() > MAX_PRESENCE_BATCH || leaves.len() > MAX_PRESENCE_BATCH {
                    warn!(%peer, %channel, "oversized presence update dropped");
                    return;
                }
                let joins = joins.into_iter().filter(member_fits).map(member_from_wire).collect();
                let leaves: Vec<ringcast_core::ConnId> = leaves.into_iter().map(ringcast_core::ConnId).collect();
                self.hub.presence_update(&channel, &ns, peer, joins, &leaves, sync, self.now());
            }
            PeerFrame::Typing { slot, slot_epoch, channel, user, info } => {
                let served = self.serve_slot(slot, slot_epoch).map_err(|(r, _)| r);
                if let Ok((channel, _)) = served.and_then(|()| self.parse_channel(&channel, slot)) {
                    if user.len() <= MAX_USER_BYTES && info.as_ref().is_none_or(|i| i.len() <= MAX_INFO_BYTES) {
                        self.hub.typing(&channel, &Arc::from(user), info.as_deref(), self.now());
                    }
                }
            }
            PeerFrame::Ephemeral { slot, slot_epoch, channel, frame, join_leave } => {
                if self.fence(slot, slot_epoch).is_err() {
                    return;
                }
                if let Ok(channel) = ChannelName::new(&channel) {
                    self.hub.deliver_ephemeral(&channel, Utf8Bytes::from(frame), join_leave);
                }
            }
            PeerFrame::Patterns { req, reset, add, remove } => {
                let parse = |raw: Vec<String>| -> Vec<Pattern> {
                    raw.into_iter()
                        .filter_map(|p| match Pattern::new(&p) {
                            Ok(p) => Some(p),
                            Err(e) => {
                                warn!(pattern = %p, error = %e, "invalid pattern from a peer ignored");
                                None
                            }
                        })
                        .collect()
                };
                self.hub.peer_patterns(peer, reset, parse(add), &parse(remove));
                if req != 0 {
                    self.send(peer, PeerFrame::PatternsAck { req });
                }
            }
            PeerFrame::PresenceQuery { req, slot, slot_epoch, channel, limit } => {
                let result = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)));
                match result {
                    Ok((channel, _)) => {
                        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_PRESENCE_MEMBERS);
                        let p = crate::router::local_presence(&self.hub, &channel, limit);
                        let frame = PeerFrame::PresenceReply {
                            req,
                            clients: p.stats.clients as u64,
                            users: p.stats.users as u64,
                            members: p.members.into_iter().map(present_to_wire).collect(),
                            last_seen: p.last_seen,
                        };
                        self.send(peer, frame);
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            PeerFrame::State { req, slot, slot_epoch, channel } => {
                let result = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)));
                match result {
                    Ok((channel, _)) => {
                        let (epoch, offset, entries) = match self.hub.state(&channel, self.now()) {
                            Some((top, entries)) => (
                                Some(top.epoch.get()),
                                top.offset.0,
                                entries.iter().map(|f| f.as_str().to_owned()).collect(),
                            ),
                            None => (None, 0, Vec::new()),
                        };
                        self.send(peer, PeerFrame::StateReply { req, epoch, offset, entries });
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            reply @ (PeerFrame::Acked { .. }
            | PeerFrame::HistoryPage { .. }
            | PeerFrame::Refused { .. }
            | PeerFrame::Subscribed { .. }
            | PeerFrame::HandedOff { .. }
            | PeerFrame::Replicated { .. }
            | PeerFrame::ReplicaSynced { .. }
            | PeerFrame::PresenceReply { .. }
            | PeerFrame::StateReply { .. }
            | PeerFrame::PatternsAck { .. }
            | PeerFrame::PublishedBatch { .. }) => self.on_reply(reply),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_deliver(
        &self,
        peer: &NodeId,
        slot: u16,
        slot_epoch: u64,
        channel: &str,
        (epoch, offset): (u64, u64),
        frame: String,
        delta: Option<DeltaWire>,
    ) {
        // Fencing: never accept a message from an owner older than one already seen.
        if let Err(r) = self.fence(slot, slot_epoch) {
            debug!(slot, slot_epoch, reason = %r.message, "Deliver dropped");
            return;
        }
        let (Ok(channel), Some(epoch)) = (ChannelName::new(channel), Epoch::new(epoch)) else {
            warn!("malformed Deliver dropped");
            return;
        };
        let position = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
        // A delta's base is an earlier offset of the stream; anything else is dropped (the
        // full frame still goes out).
        let alt = delta
            .filter(|d| d.base > 0 && d.base < offset)
            .map(|d| ringcast_core::send_queue::Alt { base: Offset(d.base), frame: Utf8Bytes::from(d.frame) });
        let msg = crate::hub::Msg { frame: Utf8Bytes::from(frame), alt };
        if !self.hub.deliver_remote(&channel, position, msg, self.now()) {
            let frame = PeerFrame::Unsubscribe { slot, slot_epoch, channel: channel.as_str().to_owned() };
            self.send(peer, frame);
        }
    }

    pub(super) fn on_reply(&self, reply: PeerFrame) {
        let req = match &reply {
            PeerFrame::Acked { req, .. }
            | PeerFrame::HistoryPage { req, .. }
            | PeerFrame::Refused { req, .. }
            | PeerFrame::Subscribed { req, .. }
            | PeerFrame::HandedOff { req, .. }
            | PeerFrame::Replicated { req, .. }
            | PeerFrame::ReplicaSynced { req, .. }
            | PeerFrame::PresenceReply { req, .. }
            | PeerFrame::StateReply { req, .. }
            | PeerFrame::PatternsAck { req }
            | PeerFrame::PublishedBatch { req, .. } => *req,
            _ => return,
        };
        let Some(pending) = lock(&self.pending).remove(&req) else {
            debug!(req, "reply to a request that already gave up");
            return;
        };
        match pending {
            Pending::Reply(tx) => {
                let _ = tx.send(reply);
            }
            Pending::Fill { channel } => {
                if let PeerFrame::HistoryPage { epoch, oldest, messages, .. } = reply {
                    let parsed = messages
                        .into_iter()
                        .filter_map(|m| message_position(&m).map(|p| (p, Utf8Bytes::from(m))))
                        .collect();
                    self.hub.offer_fill(&channel, epoch.and_then(Epoch::new), Offset(oldest), parsed, self.now());
                }
            }
            Pending::Subscribe { channel, sub, done } => {
                let answer = match reply {
                    PeerFrame::Subscribed { epoch, offset, outcome, replay, snapshot, .. } => match Epoch::new(epoch) {
                        Some(epoch) => Ok((epoch, offset, outcome, replay, snapshot)),
                        None => Err(Refusal::new(ErrorCode::Internal, "owner answered with epoch 0")),
                    },
                    PeerFrame::Refused { code, message, retry, .. } => Err(refusal_from_wire(&code, message, retry)),
                    _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to subscribe")),
                };
                let result = match answer {
                    Ok((epoch, offset, outcome, replay, snapshot)) => {
                        let top = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
                        let outcome = outcome_from_wire(outcome, replay.len());
                        let replay = replay.into_iter().map(Utf8Bytes::from).collect();
                        self.hub
                            .attach_remote(&channel, &sub, top, outcome, replay, snapshot)
                            .map_err(|code| Refusal::new(code, format!("cannot subscribe to {channel}")))
                    }
                    Err(refusal) => {
                        self.abandon_subscribe(&channel);
                        Err(refusal)
                    }
                };
                let _ = done.send(result);
            }
        }
    }
}

/// Whether a presence member from a peer is within the bounds a client's token has.
fn member_fits(m: &MemberWire) -> bool {
    m.user.len() <= MAX_USER_BYTES && m.info.as_ref().is_none_or(|i| i.len() <= MAX_INFO_BYTES)
}

fn member_from_wire(m: MemberWire) -> (ringcast_core::ConnId, Arc<str>, Option<Arc<str>>) {
    (ringcast_core::ConnId(m.conn), Arc::from(m.user), m.info.map(Arc::from))
}
