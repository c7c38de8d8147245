//! Outbound peer links (one ordered stream per peer), sending, and gap fills.

use super::*;

impl Runtime {
    /// Every [`FILL_TICK`], asks owners for the messages behind gaps that stayed open
    /// for [`FILL_PATIENCE`] (frames lost with a broken stream, or interleaving owners).
    pub(super) async fn fill_gaps(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FILL_TICK);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (channel, fill) in self.hub.due_fills(self.now(), FILL_PATIENCE) {
                let Route::Claimed { owner, epoch } = self.table().route(Slot::of(&channel)) else { continue };
                let missing = fill.before.0.saturating_sub(fill.after.0).saturating_sub(1);
                let limit =
                    u32::try_from(missing).unwrap_or(u32::MAX).clamp(1, ringcast_proto::client::MAX_HISTORY_LIMIT);
                let req = self.register(Pending::Fill { channel: channel.clone() });
                let frame = PeerFrame::History {
                    req,
                    slot: Slot::of(&channel).get(),
                    slot_epoch: epoch.0,
                    channel: channel.as_str().to_owned(),
                    before: Some(fill.before.0),
                    limit,
                };
                debug!(%channel, after = fill.after.0, before = fill.before.0, "filling a gap");
                if !self.send(&owner, frame) {
                    lock(&self.pending).remove(&req);
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Outbound links.

    /// `peer`'s link, dialling it if there is none.
    pub(super) fn link(self: &Arc<Self>, peer: &NodeId) -> Link {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(peer).filter(|l| !l.is_closed()) {
            return link.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(LinkState {
            frames: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            overflowed: CancellationToken::new(),
        });
        let link = Link { tx, state: state.clone() };
        links.insert(peer.clone(), link.clone());
        let rt = self.clone();
        let peer = peer.clone();
        self.tracker.spawn(rt.write_link(peer.clone(), state, rx).instrument(info_span!("link", node = %peer)));
        link
    }

    /// Dials `peer` and writes its queue to one ordered stream, re-dialling on failure.
    /// Frames lost with a broken stream are recovered by offset: gateways fill gaps from
    /// history and resync when the stream ends, and requests time out and are retried.
    /// When the queue overflows, the connection is closed (`CLOSE_OVERLOADED`) and what
    /// was queued is dropped with the task.
    pub(super) async fn write_link(
        self: Arc<Self>,
        peer: NodeId,
        link: Arc<LinkState>,
        mut rx: mpsc::UnboundedReceiver<(PeerFrame, usize)>,
    ) {
        let mut backoff = DIAL_BACKOFF.0;
        loop {
            let Some(addr) = self.members().get(&peer).map(|r| r.quic_addr) else {
                debug!("peer is not a member; closing its link");
                return;
            };
            let stream = async {
                let conn = self.transport.connect(addr, &peer).await.map_err(|e| e.to_string())?;
                let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
                let hello = PeerFrame::Hello { node: self.me.to_string(), version: FRAMES_VERSION };
                write_frame(&mut send, &hello, self.codec).await.map_err(|e| e.to_string())?;
                // Whatever the peer held of our patterns (a previous link, or a previous
                // process of ours) is replaced by what we have now; later changes follow
                // on this stream.
                let patterns =
                    PeerFrame::Patterns { req: 0, reset: true, add: self.hub.local_patterns(), remove: Vec::new() };
                write_frame(&mut send, &patterns, self.codec).await.map_err(|e| e.to_string())?;
                Ok::<_, String>((conn, send))
            };
            let (conn, mut send) = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = link.overflowed.cancelled() => return,
                r = stream => match r {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(error = %e, "dial failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(DIAL_BACKOFF.1);
                        continue;
                    }
                },
            };
            backoff = DIAL_BACKOFF.0;
            info!(%addr, "link up");
            loop {
                let (frame, size) = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    () = link.overflowed.cancelled() => {
                        conn.close(ringcast_cluster::transport::CLOSE_OVERLOADED, b"queue overflowed; resync");
                        return;
                    }
                    f = rx.recv() => match f {
                        Some(f) => f,
                        None => return,
                    },
                };
                let written = tokio::select! {
                    biased;
                    // A write blocked on a peer that does not read is abandoned at once.
                    () = link.overflowed.cancelled() => {
                        conn.close(ringcast_cluster::transport::CLOSE_OVERLOADED, b"queue overflowed; resync");
                        return;
                    }
                    r = write_frame(&mut send, &frame, self.codec) => r,
                };
                link.sent(size);
                if let Err(e) = written {
                    warn!(error = %e, "link broke; re-dialling");
                    break;
                }
            }
        }
    }

    /// A local connection subscribed to `pattern`: every other member adds it (it may
    /// have it already, for another connection; the round trip is what counts). Returns
    /// once each has acknowledged, so the messages they sequence from then on reach the
    /// subscriber, or after [`PATTERN_SYNC_DEADLINE`] (logged) when one does not answer;
    /// a member that missed it gets the whole set when its link comes up again.
    pub(crate) async fn add_pattern(&self, pattern: &Pattern) {
        let until = Instant::now() + PATTERN_SYNC_DEADLINE;
        let members = self.members();
        let acks = members.keys().filter(|id| **id != self.me).map(|peer| async move {
            let frame =
                |req| PeerFrame::Patterns { req, reset: false, add: vec![pattern.as_str().to_owned()], remove: vec![] };
            if let Err(r) = self.request(peer, frame, until).await {
                warn!(%peer, %pattern, reason = %r.message, "a peer did not acknowledge a pattern subscription");
            }
        });
        futures_util::future::join_all(acks).await;
    }

    /// This node's last subscription to `pattern` ended: every other member drops it.
    pub(crate) fn remove_pattern(&self, pattern: &Pattern) {
        let members = self.members();
        for peer in members.keys().filter(|id| **id != self.me) {
            let frame = PeerFrame::Patterns {
                req: 0,
                reset: false,
                add: Vec::new(),
                remove: vec![pattern.as_str().to_owned()],
            };
            if !self.send(peer, frame) {
                debug!(%peer, "pattern removal not queued; the peer gets the whole set when the link returns");
            }
        }
    }

    /// Queues a frame for `peer`; false when its link cannot take it. A frame that does
    /// not fit the link's bounds (`cluster.peer_queue_*`) breaks the link: the queue is
    /// dropped, the connection closed, and the next frame dials a fresh one, while the
    /// peer resyncs by offset. Other peers' links are untouched.
    pub(super) fn send(&self, peer: &NodeId, frame: PeerFrame) -> bool {
        let link = {
            let links = lock(&self.links);
            links.get(peer).filter(|l| !l.is_closed()).cloned()
        };
        let link = match link {
            Some(l) => l,
            // Invariant: `self` is always held in an Arc (built by `start`).
            None => match self.hub_arc() {
                Some(rt) => rt.link(peer),
                None => return false,
            },
        };
        let size = frame.size_hint();
        if !link.state.reserve(size, self.peer_queue) {
            self.break_link(peer, &link);
            return false;
        }
        if link.tx.send((frame, size)).is_err() {
            link.state.sent(size);
            return false;
        }
        true
    }

    /// Drops an overflowed link: its writer closes the connection and exits.
    fn break_link(&self, peer: &NodeId, link: &Link) {
        let mut links = lock(&self.links);
        if links.get(peer).is_some_and(|l| Arc::ptr_eq(&l.state, &link.state)) {
            links.remove(peer);
            drop(links);
            link.state.overflowed.cancel();
            self.metrics.peer_overflows.fetch_add(1, Ordering::Relaxed);
            warn!(
                node = %peer,
                frames = link.state.frames.load(Ordering::Relaxed),
                bytes = link.state.bytes.load(Ordering::Relaxed),
                "peer link queue overflowed; dropping it (the peer resyncs by offset)"
            );
        }
    }

    pub(super) fn hub_arc(&self) -> Option<Arc<Runtime>> {
        self.self_ref.get().and_then(std::sync::Weak::upgrade)
    }

    pub(super) fn my_epoch(&self, channel: &ChannelName) -> SlotEpoch {
        self.my_slot_epoch(Slot::of(channel))
    }

    /// [`Runtime::my_epoch`] for a slot.
    pub(super) fn my_slot_epoch(&self, slot: Slot) -> SlotEpoch {
        match self.table().route(slot) {
            Route::Claimed { epoch, .. } => self.owner_epoch(slot, epoch),
            _ => SlotEpoch(0),
        }
    }

    /// The epoch this node, as `slot`'s owner, stamps its frames with: the view's, or a
    /// newer claim this node wrote that the view does not show yet (naming a replica
    /// moves the epoch on; frames stamped with the older one would be fenced off by
    /// nodes that already saw the newer).
    pub(crate) fn owner_epoch(&self, slot: Slot, table_epoch: SlotEpoch) -> SlotEpoch {
        lock(&self.own_epochs).get(&slot).map_or(table_epoch, |e| (*e).max(table_epoch))
    }
}

/// Bounds of one peer's outbound queue (`cluster.peer_queue_frames`, `..._bytes`).
#[derive(Debug, Clone, Copy)]
pub struct PeerQueueBounds {
    pub frames: usize,
    pub bytes: usize,
}

/// One peer's outbound queue: producers (who never wait) hold the sender; dropping the
/// last sender (the peer left) ends the writer task.
#[derive(Debug, Clone)]
pub(super) struct Link {
    tx: mpsc::UnboundedSender<(PeerFrame, usize)>,
    state: Arc<LinkState>,
}

impl Link {
    fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.state.overflowed.is_cancelled()
    }
}

/// What producers and the writer share: the queue's usage and its overflow signal.
#[derive(Debug)]
pub(super) struct LinkState {
    /// Frames and bytes queued and not yet written (bounded by `reserve`).
    frames: AtomicUsize,
    bytes: AtomicUsize,
    /// Cancelled when the queue overflowed: the writer closes the connection and exits.
    overflowed: CancellationToken,
}

impl LinkState {
    /// Counts a frame of `size` bytes in, unless that would exceed `bounds`. A frame
    /// always fits an empty queue (a large handoff snapshot must get through).
    fn reserve(&self, size: usize, bounds: PeerQueueBounds) -> bool {
        let frames = self.frames.fetch_add(1, Ordering::AcqRel);
        let bytes = self.bytes.fetch_add(size, Ordering::AcqRel);
        if frames > 0 && (frames + 1 > bounds.frames || bytes + size > bounds.bytes) {
            self.sent(size);
            return false;
        }
        true
    }

    /// Counts a frame out (written, or dropped).
    fn sent(&self, size: usize) {
        self.frames.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(size, Ordering::AcqRel);
    }
}
