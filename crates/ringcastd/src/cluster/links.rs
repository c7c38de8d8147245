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

    /// The sender of `peer`'s link, dialling it if there is none.
    pub(super) fn link(self: &Arc<Self>, peer: &NodeId) -> mpsc::Sender<PeerFrame> {
        let mut links = lock(&self.links);
        if let Some(tx) = links.get(peer).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES);
        links.insert(peer.clone(), tx.clone());
        let rt = self.clone();
        let peer = peer.clone();
        self.tracker.spawn(rt.write_link(peer.clone(), rx).instrument(info_span!("link", node = %peer)));
        tx
    }

    /// Dials `peer` and writes its queue to one ordered stream, re-dialling on failure.
    /// Frames lost with a broken stream are recovered by offset: gateways fill gaps from
    /// history, and requests time out and are retried by clients.
    pub(super) async fn write_link(self: Arc<Self>, peer: NodeId, mut rx: mpsc::Receiver<PeerFrame>) {
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
                Ok::<_, String>((conn, send))
            };
            let (_conn, mut send) = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
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
                let frame = tokio::select! {
                    biased;
                    () = self.shutdown.cancelled() => return,
                    f = rx.recv() => match f {
                        Some(f) => f,
                        None => return,
                    },
                };
                if let Err(e) = write_frame(&mut send, &frame, self.codec).await {
                    warn!(error = %e, "link broke; re-dialling");
                    break;
                }
            }
        }
    }

    /// Queues a frame for `peer`; false when its link cannot take it.
    pub(super) fn send(&self, peer: &NodeId, frame: PeerFrame) -> bool {
        // Invariant: `self` is always held in an Arc (built by `start`).
        let tx = {
            let links = lock(&self.links);
            links.get(peer).filter(|tx| !tx.is_closed()).cloned()
        };
        let tx = match tx {
            Some(tx) => tx,
            None => match self.hub_arc() {
                Some(rt) => rt.link(peer),
                None => return false,
            },
        };
        tx.try_send(frame).is_ok()
    }

    pub(super) fn hub_arc(&self) -> Option<Arc<Runtime>> {
        self.self_ref.get().and_then(std::sync::Weak::upgrade)
    }

    pub(super) fn my_epoch(&self, channel: &ChannelName) -> SlotEpoch {
        match self.table().route(Slot::of(channel)) {
            Route::Claimed { epoch, .. } => epoch,
            _ => SlotEpoch(0),
        }
    }
}
