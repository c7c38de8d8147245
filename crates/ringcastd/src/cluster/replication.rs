//! Durable namespaces: a synchronous replica per slot, and crash failover onto it.
//!
//! - **Bringing a replica up** ([`Runtime::ensure_replica`]): the owner pauses the slot's
//!   durable publishes, sends the slot's durable channels to the ring's next member
//!   (`ReplicaSync`), and once that node installed them, names it in the slot's claim by
//!   a compare-and-swap on its own epoch. The claim is the record everyone reads on a
//!   crash: only the node it names may continue the slot's durable channels.
//! - **Publishing** ([`Runtime::publish_durable`]): sequence without committing, send
//!   `Replicate` on the ordered stream to the replica, and only when `Replicated` comes
//!   back commit (ack, fan out, make visible to readers). No replica within 2 s:
//!   `insufficient_replicas` before anything is sequenced; a replica that does not
//!   answer in time: `unavailable` (the outcome is unknown; the client retries with its
//!   idempotency key, answered from the replicated dedup window).
//! - **Replica side**: `Replicate` and `ReplicaSync` are fenced by the slot epoch like
//!   `Deliver`; a copy out of step answers `Refused` and the owner re-syncs it.
//! - **Failover**: when an owner's lease expires, the replica its last claim named
//!   claims the vacant slot first (`ringcast_core::ownership`), turns its copies into
//!   the owner's logs in the same epochs ([`Hub::promote_slot`]) and brings up a new
//!   replica; gateways re-subscribe by offset.

use super::*;

/// How long a durable publish waits for a replica before `insufficient_replicas`.
pub const REPLICA_DEADLINE: Duration = Duration::from_secs(2);
/// How long bringing a replica up may take (the snapshot of a busy slot is large).
const REPLICA_SYNC_DEADLINE: Duration = Duration::from_secs(5);
/// How long the owner waits for `Replicated` before answering `unavailable`.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2);

impl Runtime {
    pub(super) fn is_durable(&self, channel: &ChannelName) -> bool {
        self.namespaces.get(channel.namespace()).is_some_and(|n| n.durable)
    }

    /// The replica this node brought up for `slot`, with the epoch its claim names it at.
    pub(super) fn ready_replica(&self, slot: Slot) -> Option<(NodeId, SlotEpoch)> {
        lock(&self.replicas).get(&slot).cloned()
    }

    /// Forgets `slot`'s replica (it failed or left); the next durable publish brings one up.
    pub(super) fn replica_failed(&self, slot: Slot) {
        lock(&self.replicas).remove(&slot);
    }

    /// Brings up (or confirms) `slot`'s replica on the ring's next member. One at a time
    /// per slot; durable publishes on the slot wait meanwhile.
    pub(super) async fn ensure_replica(self: &Arc<Self>, slot: Slot) -> Result<(NodeId, SlotEpoch), Refusal> {
        let _one = self.sync_locks[usize::from(slot.get())].lock().await;
        if let Some(r) = self.ready_replica(slot) {
            return Ok(r);
        }
        let table = self.table();
        let Route::Claimed { owner, mut epoch } = table.route(slot) else {
            return Err(Refusal::new(ErrorCode::Unavailable, "the slot is not claimed"));
        };
        if owner != self.me {
            return Err(Refusal::new(ErrorCode::Unavailable, "this node does not own the slot now"));
        }
        // The view may lag a claim this node just wrote; use the newer epoch.
        if let Some(e) = lock(&self.own_epochs).get(&slot) {
            epoch = epoch.max(*e);
        }
        let members = self.members();
        let Some(target) = table.replica_for(slot, &self.me).filter(|n| members.contains_key(*n)).cloned() else {
            return Err(Refusal::new(ErrorCode::InsufficientReplicas, "no other core node can hold a replica"));
        };
        self.hub.set_replica_paused(slot, true);
        let result = self.sync_replica(slot, epoch, &target).await;
        self.hub.set_replica_paused(slot, false);
        match &result {
            Ok((_, e)) => info!(%slot, replica = %target, epoch = e.0, "replica up"),
            Err(r) => warn!(%slot, replica = %target, error = %r.message, "could not bring the replica up"),
        }
        result
    }

    async fn sync_replica(
        self: &Arc<Self>,
        slot: Slot,
        mut epoch: SlotEpoch,
        target: &NodeId,
    ) -> Result<(NodeId, SlotEpoch), Refusal> {
        let channels: Vec<ChannelSnapshotWire> = self
            .hub
            .snapshot_durable(slot, |c| self.is_durable(c), self.now())
            .into_iter()
            .map(snapshot_to_wire)
            .collect();
        let frame = |req| PeerFrame::ReplicaSync { req, slot: slot.get(), slot_epoch: epoch.0, channels };
        match self.request(target, frame, Instant::now() + REPLICA_SYNC_DEADLINE).await {
            Ok(PeerFrame::ReplicaSynced { .. }) => {}
            Ok(other) => {
                return Err(Refusal::new(ErrorCode::InsufficientReplicas, format!("replica refused: {other:?}")));
            }
            Err(_) => return Err(Refusal::new(ErrorCode::InsufficientReplicas, format!("{target} did not answer"))),
        }
        // Name the replica in the claim (CAS on our epoch). If the view lags a claim of
        // ours, the outcome names the current one: retry on it.
        for _ in 0..3 {
            match self.membership.claim_with_replica(slot, ClaimExpect::Epoch(epoch.0), Some(target)).await {
                Ok(ringcast_cluster::membership::ClaimOutcome::Claimed { epoch: e }) => {
                    let e = SlotEpoch(e);
                    lock(&self.own_epochs).insert(slot, e);
                    lock(&self.replicas).insert(slot, (target.clone(), e));
                    self.fences[usize::from(slot.get())].fetch_max(e.0, Ordering::AcqRel);
                    // The replica holds everything sequenced so far: commit it.
                    self.hub.commit_slot(slot, e, self.now());
                    return Ok((target.clone(), e));
                }
                Ok(ringcast_cluster::membership::ClaimOutcome::Lost { current: Some(c) }) if c.owner == self.me => {
                    epoch = SlotEpoch(c.epoch);
                }
                Ok(outcome) => {
                    return Err(Refusal::new(ErrorCode::Unavailable, format!("the slot moved: {outcome:?}")));
                }
                Err(e) => return Err(Refusal::new(ErrorCode::CoordinationUnavailable, format!("etcd: {e}"))),
            }
        }
        Err(Refusal::new(ErrorCode::Unavailable, "the slot's claim kept changing"))
    }

    /// Owner: a publish on a durable channel (see the module docs).
    pub(super) async fn publish_durable(self: &Arc<Self>, p: &PublishRequest<'_>) -> Result<Published, Refusal> {
        let channel = p.channel;
        let slot = Slot::of(channel);
        let until = Instant::now() + REPLICA_DEADLINE;
        loop {
            self.check_owner()?;
            let (replica, replica_epoch) = match self.ready_replica(slot) {
                Some(r) => r,
                None => {
                    let left = until.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, self.ensure_replica(slot)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(r)) if r.code == ErrorCode::InsufficientReplicas => return Err(r),
                        Ok(Err(r)) => return Err(r),
                        Err(_) => {
                            return Err(Refusal::new(
                                ErrorCode::InsufficientReplicas,
                                "no replica could be brought up in time",
                            ))
                        }
                    }
                }
            };
            let (tx, rx) = oneshot::channel();
            let req = self.register(Pending::Reply(tx));
            let appended = self.hub.publish_durable(p, self.now(), (&replica, replica_epoch), req);
            let (position, duplicate, sent) = match appended {
                Err(code) => {
                    lock(&self.pending).remove(&req);
                    return Err(crate::router::hub_refusal(code, channel));
                }
                Ok(DurableAppend::Committed(p)) => {
                    lock(&self.pending).remove(&req);
                    return Ok(p);
                }
                Ok(DurableAppend::Paused) => {
                    lock(&self.pending).remove(&req);
                    if Instant::now() >= until {
                        return Err(Refusal::new(
                            ErrorCode::InsufficientReplicas,
                            "the slot's replica is being replaced",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(DurableAppend::Pending { position, duplicate, sent }) => (position, duplicate, sent),
            };
            if duplicate || !sent {
                lock(&self.pending).remove(&req);
                if !sent {
                    // The replica's link is gone: bring a replica up again; its snapshot
                    // holds this message, and the sync commits it.
                    self.replica_failed(slot);
                    let rt = self.clone();
                    self.tracker.spawn(async move {
                        let _ = rt.ensure_replica(slot).await;
                    });
                }
                return self.wait_committed(channel, position, duplicate, Instant::now() + REPLICATE_TIMEOUT).await;
            }
            let reply = tokio::time::timeout(REPLICATE_TIMEOUT, rx).await;
            lock(&self.pending).remove(&req);
            return match reply {
                Ok(Ok(PeerFrame::Replicated { offset, .. })) => {
                    let epoch = self.my_epoch(channel);
                    // The channel may have been handed off meanwhile: the snapshot carried
                    // the message and the new owner holds it as committed.
                    self.hub.commit(channel, Offset(offset), epoch, self.now());
                    Ok(Published { position, duplicate: false })
                }
                Ok(Ok(other)) => {
                    debug!(%channel, ?other, "replica refused; re-syncing it");
                    self.replica_failed(slot);
                    self.ensure_replica(slot).await?;
                    self.wait_committed(channel, position, false, Instant::now() + REPLICATE_TIMEOUT).await
                }
                _ => {
                    self.replica_failed(slot);
                    Err(Refusal::indeterminate(
                        "the replica did not confirm in time; the outcome is unknown, retry with the same idempotency_key",
                    ))
                }
            };
        }
    }

    /// Waits until `position` of `channel` is committed here.
    async fn wait_committed(
        &self,
        channel: &ChannelName,
        position: ringcast_core::StreamPosition,
        duplicate: bool,
        until: Instant,
    ) -> Result<Published, Refusal> {
        loop {
            match self.hub.committed(channel) {
                Some(c) if c.epoch == position.epoch && c.offset >= position.offset => {
                    return Ok(Published { position, duplicate });
                }
                Some(c) if c.epoch != position.epoch => break,
                _ => {}
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(Refusal::indeterminate(
            "the message is not confirmed by a replica yet; the outcome is unknown, retry with the same idempotency_key",
        ))
    }

    /// Replica: a `Replicate` frame.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_replicate(
        &self,
        peer: &NodeId,
        req: u64,
        slot: u16,
        slot_epoch: u64,
        channel: &str,
        epoch: u64,
        offset: u64,
        frame: String,
        (idempotency_key, digest): (Option<&str>, u64),
        state_key: Option<&str>,
    ) {
        if let Err(r) = self.fence(slot, slot_epoch) {
            self.refuse(peer, req, &r, false);
            return;
        }
        let parsed = self.parse_channel(channel, slot).and_then(|(c, ns)| {
            let epoch = Epoch::new(epoch).ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "epoch 0"))?;
            if let Some(k) = state_key.filter(|k| !k.is_empty()) {
                ringcast_core::latest::check_key(k).map_err(|m| Refusal::new(ErrorCode::BadRequest, m))?;
            }
            Ok((c, ns, epoch))
        });
        let (channel, ns, epoch) = match parsed {
            Ok(x) => x,
            Err(r) => {
                self.refuse(peer, req, &r, false);
                return;
            }
        };
        if let Some(s) = Slot::new(slot) {
            self.note_replica(s, slot_epoch);
        }
        let position = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
        let frame = Utf8Bytes::from(frame);
        match self.hub.replicate(&channel, &ns, position, (idempotency_key, digest), state_key, frame, self.now()) {
            Ok(()) => {
                self.send(peer, PeerFrame::Replicated { req, offset });
            }
            Err(e) => {
                self.refuse(peer, req, &Refusal::new(ErrorCode::Conflict, format!("replica out of step: {e}")), false)
            }
        }
    }

    /// Replica: a `ReplicaSync` frame.
    pub(super) fn on_replica_sync(
        &self,
        peer: &NodeId,
        req: u64,
        slot: u16,
        slot_epoch: u64,
        channels: Vec<ChannelSnapshotWire>,
    ) {
        if let Err(r) = self.fence(slot, slot_epoch) {
            self.refuse(peer, req, &r, false);
            return;
        }
        let (s, parsed) = match slot_snapshots(slot, channels) {
            Ok(x) => x,
            Err(r) => {
                self.refuse(peer, req, &r, false);
                return;
            }
        };
        let count = parsed.len();
        let namespaces = self.namespaces.clone();
        self.hub.install_replica(s, parsed, |c| namespaces.get(c.namespace()).cloned(), self.now());
        self.note_replica(s, slot_epoch);
        debug!(slot, from = %peer, channels = count, "replica installed");
        self.send(peer, PeerFrame::ReplicaSynced { req, slot });
    }

    /// Fencing for frames about `slot` from its owner: refuses an epoch older than the
    /// newest this node has seen for the slot.
    pub(super) fn fence(&self, slot: u16, slot_epoch: u64) -> Result<(), Refusal> {
        let fence = self
            .fences
            .get(usize::from(slot))
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "slot out of range"))?;
        if fence.fetch_max(slot_epoch, Ordering::AcqRel) > slot_epoch {
            self.metrics.fenced_frames.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::new(ErrorCode::Unavailable, "stale slot epoch: another node owns the slot now"));
        }
        Ok(())
    }

    /// Replica: remembers the newest slot epoch its copies of `slot` were written under.
    fn note_replica(&self, slot: Slot, slot_epoch: u64) {
        let mut held = lock(&self.replica_slots);
        let e = held.entry(slot).or_insert(slot_epoch);
        *e = (*e).max(slot_epoch);
    }

    /// After a view: drops replica copies whose slot's claim now names another replica
    /// (written after our copy was installed); keeps those of vacated slots that name us.
    pub(super) fn drop_stale_replicas(&self, claims: &BTreeMap<Slot, Claim>) {
        let stale: Vec<Slot> = lock(&self.replica_slots)
            .iter()
            .filter(|(slot, held)| {
                claims
                    .get(slot)
                    .is_some_and(|c| c.owner != self.me && c.replica.as_ref() != Some(&self.me) && c.epoch.0 > **held)
            })
            .map(|(s, _)| *s)
            .collect();
        for slot in stale {
            lock(&self.replica_slots).remove(&slot);
            self.hub.drop_replicas(slot);
            debug!(%slot, "replica copies dropped: the slot's claim names another replica");
        }
    }

    /// After claiming a vacant slot: continue the durable channels this node holds copies
    /// of in their epochs, then bring a new replica up for them.
    pub(super) fn promote(self: &Arc<Self>, slot: Slot, epoch: u64) {
        let namespaces = self.namespaces.clone();
        let ns_of = |c: &ChannelName| namespaces.get(c.namespace()).cloned();
        let n = if lock(&self.replica_slots).remove(&slot).is_some() {
            self.hub.promote_slot(slot, &self.me, ns_of, self.now())
        } else {
            0
        };
        // Channels followed from the lost owner without a copy here restart.
        let restarted = self.hub.adopt_mirrors(slot, ns_of, self.now());
        if restarted > 0 {
            info!(%slot, channels = restarted, "channels of a lost owner restart here in new epochs");
        }
        if n == 0 {
            return;
        }
        self.metrics.promotions.fetch_add(1, Ordering::Relaxed);
        info!(%slot, epoch, channels = n, "slot failed over: durable channels continue in their epochs");
        let rt = self.clone();
        self.tracker.spawn(async move {
            let _ = rt.ensure_replica(slot).await;
        });
    }
}
