//! Views, routes, claims, handoffs and drain: applying each membership view and
//! acting on the ownership plan.

use super::*;

impl Runtime {
    // ---------------------------------------------------------------------------------
    // Views, routes and claims.

    pub(super) async fn watch_views(
        self: Arc<Self>,
        mut views: watch::Receiver<Arc<View>>,
        claim_at: tokio::time::Instant,
    ) {
        let mut may_claim = false;
        loop {
            let view = views.borrow_and_update().clone();
            *lock(&self.latest) = (view, may_claim);
            self.reapply();
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(claim_at), if !may_claim => may_claim = true,
                changed = views.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Re-applies the latest view (after this process made a claim the view may
    /// already show).
    pub(super) fn reapply(self: &Arc<Self>) {
        let _serial = lock(&self.apply_lock);
        let (view, may_claim) = lock(&self.latest).clone();
        self.apply_view(&view, may_claim);
    }

    /// Builds the route table and plans from `view`. Only through [`Runtime::reapply`].
    pub(super) fn apply_view(self: &Arc<Self>, view: &View, may_claim: bool) {
        let members: Vec<MemberInfo> = view
            .members
            .iter()
            .map(|(id, r)| MemberInfo { id: id.clone(), core: r.role == Role::Core, draining: r.draining })
            .collect();
        let incarnation = self.membership.registered_revision().unwrap_or(u64::MAX);
        let claims: BTreeMap<Slot, Claim> = view
            .claims
            .iter()
            .filter(|(_, c)| c.owner != self.me || c.epoch > incarnation)
            .map(|(slot, c)| {
                (*slot, Claim { owner: c.owner.clone(), epoch: SlotEpoch(c.epoch), replica: c.replica.clone() })
            })
            .collect();
        let old_claims = self.claims.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Slots whose claim vanished (the owner's lease ended) remember the replica their
        // last claim named: it claims them first and continues their durable channels.
        let vacated = {
            let mut v = lock(&self.vacated);
            for (slot, c) in old_claims.iter() {
                if !claims.contains_key(slot) {
                    if let Some(r) = &c.replica {
                        v.insert(*slot, r.clone());
                    }
                }
            }
            // Our own claims from a lease that is gone (a previous process, right after a
            // restart) are vacant to us, but their replica is known from etcd: it, not this
            // node with nothing of the slot, continues them once that lease expires.
            for (slot, c) in &view.claims {
                if c.owner == self.me && c.epoch <= incarnation {
                    if let Some(r) = c.replica.as_ref().filter(|r| **r != self.me) {
                        v.insert(*slot, r.clone());
                    }
                }
            }
            v.retain(|slot, _| !claims.contains_key(slot));
            v.clone()
        };
        for (slot, c) in &claims {
            // Fencing: nothing about a slot older than its current claim is accepted here.
            self.fences[usize::from(slot.get())].fetch_max(c.epoch.0, Ordering::AcqRel);
        }
        // Channels whose owner changed other than by a handoff to us (a failover, after
        // the slot was vacant, or a handoff between other nodes): re-subscribe by offset
        // at the new owner, which may not know this node's interest.
        // Not slots this node has since claimed itself (a handoff it took over, whose
        // claim the view has not caught up with yet): those are ours.
        let moved: HashSet<Slot> = claims
            .iter()
            .filter(|(slot, c)| old_claims.get(slot).is_none_or(|o| o.owner != c.owner) && c.owner != self.me)
            .filter(|(slot, c)| !self.claimed_since(**slot, c.epoch))
            .map(|(slot, _)| *slot)
            .collect();
        // Slots another node now holds though we never handed them off (our lease was
        // lost: paused, or cut off from etcd): what we sequenced is stale. Our channels
        // become mirrors at their committed tops, and the resync below re-subscribes them
        // at the new owner, so local subscribers continue without a silent gap.
        // (Also after a lost lease made our old claims vacant to us first: any slot now
        // held elsewhere whose channels we still sequence.)
        let lost: Vec<Slot> = moved
            .iter()
            .copied()
            .filter(|slot| {
                !lock(&self.handing).contains(slot)
                    && !lock(&self.moved).contains_key(slot)
                    && self.hub.sequences_any(*slot)
            })
            .collect();
        for slot in &lost {
            debug!(%slot, owner = ?claims.get(slot).map(|c| &c.owner), "slot lost without a handoff; demoting");
            self.hub.demote_slot(*slot);
            lock(&self.replicas).remove(slot);
        }
        if !lost.is_empty() {
            warn!(slots = lost.len(), "slots were taken over by other nodes without a handoff (our lease was lost)");
        }
        let cv = ClusterView { members, claims, vacated };
        // Slots that went from vacant to ours: continue what we hold copies of. A slot
        // still sealed is its claim task's (or a take-over's) to install: promoting it here
        // too would race the task, and our mirrors of the slot would start over in new
        // epochs. So this promotes only claims whose task ended without promoting (an
        // error hid a claim that took effect), sealed from before the table names us:
        // a request reading the new table meanwhile is refused (retry) rather than
        // starting a durable channel over that the promotion would then replace.
        let claimed_from_vacant: Vec<(Slot, u64)> = cv
            .claims
            .iter()
            .filter(|(slot, c)| c.owner == self.me && !old_claims.contains_key(slot))
            .filter(|(slot, _)| !self.hub.slot_sealed(**slot))
            .map(|(slot, c)| (*slot, c.epoch.0))
            .collect();
        for (slot, _) in &claimed_from_vacant {
            self.hub.seal(*slot);
        }
        // The ring is built once per view (its cost grows with the members); planning
        // reuses it through the table.
        let table = Arc::new(RouteTable::new(&cv));
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table.clone();
        self.incarnation.store(incarnation, Ordering::Release);
        *self.claims.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(cv.claims.clone());
        self.drop_stale_replicas(&cv.claims);
        // Our replicas that left, or slots we no longer hold: their replica must be
        // brought up again (lazily, by the next durable publish, or now for slots with
        // durable channels).
        let lost_replicas: Vec<Slot> = {
            let mut replicas = lock(&self.replicas);
            let lost: Vec<Slot> = replicas
                .iter()
                .filter(|(slot, (node, _))| {
                    !view.members.contains_key(node)
                        || cv
                            .claims
                            .get(slot)
                            .is_none_or(|c| c.owner != self.me && !self.claimed_since(**slot, c.epoch))
                })
                .map(|(s, _)| *s)
                .collect();
            for s in &lost {
                replicas.remove(s);
            }
            lost
        };
        for slot in lost_replicas {
            if cv.claims.get(&slot).is_some_and(|c| c.owner == self.me)
                && self.hub.has_durable(slot, |c| self.is_durable(c))
            {
                let rt = self.clone();
                self.tracker.spawn(async move {
                    let _ = rt.ensure_replica(slot).await;
                });
            }
        }
        if !moved.is_empty() {
            let rt = self.clone();
            self.tracker.spawn(async move { rt.resync_slots(moved).await });
        }
        for (slot, epoch) in claimed_from_vacant {
            self.promote(slot, epoch);
            self.hub.unseal(slot);
        }
        self.table_changed.send_modify(|n| *n += 1);
        self.resolve_stuck();

        // Peers that left: their links and their interest go. A peer that came back as a
        // new process (new record) gets a new link: the old one talks to a dead process.
        let old = self.members();
        *self.members.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view.members.clone());
        for gone in old.keys().filter(|id| !view.members.contains_key(*id)) {
            lock(&self.links).remove(gone);
            self.hub.drop_peer(gone, self.now());
            self.hub.presence_node_gone(gone, self.now());
            info!(peer = %gone, "peer left the cluster");
        }
        for (id, record) in &view.members {
            let restarted =
                old.get(id).is_some_and(|o| o.started_at_ms != record.started_at_ms || o.quic_addr != record.quic_addr);
            if restarted {
                lock(&self.links).remove(id);
                self.hub.drop_peer(id, self.now());
                // The old process's clients are gone with it.
                self.hub.presence_node_gone(id, self.now());
                info!(peer = %id, "peer restarted; dropping its old link");
            }
        }
        // Every member must know this node's patterns to send it their channels: a new
        // (or restarted) member's link is dialled now, and sends them all when it is up.
        if self.hub.has_local_patterns() {
            for id in view.members.keys().filter(|id| **id != self.me) {
                self.link(id);
            }
        }

        *self.planned.write().unwrap_or_else(PoisonError::into_inner) = (Arc::new(cv), table, may_claim);
        self.replan();
    }

    /// Starts the claims and handoffs the latest view calls for, within the throttles.
    /// Runs on every view and whenever a claim or handoff finishes, so rounds follow
    /// each other without waiting for an unrelated view change.
    pub(super) fn replan(self: &Arc<Self>) {
        let (cv, table, may_claim) = self.planned.read().unwrap_or_else(PoisonError::into_inner).clone();
        let in_flight = lock(&self.handing).len();
        let p = match table.ring() {
            Some(ring) => plan_with_ring(&cv, ring, &self.me, in_flight, HANDOFFS_IN_FLIGHT),
            None => ringcast_core::ownership::Plan::default(),
        };
        for h in p.hand_off {
            // A slot awaiting its outcome, or handed off but not yet shown moved by
            // the view, must not be planned again. Nor one whose claim task has not
            // promoted it yet: its snapshot would miss the durable channels the replica
            // copies are about to continue (the task replans when it is done).
            if lock(&self.stuck).contains_key(&h.slot)
                || lock(&self.moved).contains_key(&h.slot)
                || lock(&self.claiming).contains(&h.slot)
            {
                continue;
            }
            if !lock(&self.handing).insert(h.slot) {
                continue;
            }
            let rt = self.clone();
            let span = info_span!(parent: None, "slot", slot = h.slot.get(), epoch = h.from_epoch.0);
            self.tracker.spawn(async move { rt.hand_off(h).await }.instrument(span));
        }

        let to_claim = if may_claim { p.claim } else { Vec::new() };
        for slot in to_claim {
            if lock(&self.claiming).len() >= CLAIMS_IN_FLIGHT || !lock(&self.claiming).insert(slot) {
                continue;
            }
            let rt = self.clone();
            // Sealed until the claim's outcome is known and its channels are promoted, as
            // a handoff's take-over is: the view may name us before this task promotes,
            // and then leaves the promotion to it (see `apply_view`).
            self.hub.seal(slot);
            self.tracker.spawn(async move {
                let claimed = match rt.membership.claim(slot, ClaimExpect::Vacant).await {
                    Ok(ringcast_cluster::membership::ClaimOutcome::Claimed { epoch }) => {
                        debug!(%slot, epoch, "claimed");
                        Some(epoch)
                    }
                    Ok(outcome) => {
                        debug!(%slot, ?outcome, "claim");
                        None
                    }
                    Err(e) => {
                        warn!(%slot, error = %e, "claim failed");
                        None
                    }
                };
                {
                    // Serialised with views: one that showed the slot ours while it was
                    // sealed did not promote it, so this does, whatever the outcome said
                    // (an error can hide a claim that took effect); and one applied
                    // meanwhile either sees the claim or was decided before it.
                    let _serial = lock(&rt.apply_lock);
                    if let Some(epoch) = claimed {
                        lock(&rt.own_epochs).insert(slot, SlotEpoch(epoch));
                        rt.fences[usize::from(slot.get())].fetch_max(epoch, Ordering::AcqRel);
                    }
                    let shown = || {
                        let claims = rt.claims.read().unwrap_or_else(PoisonError::into_inner);
                        claims.get(&slot).filter(|c| c.owner == rt.me).map(|c| c.epoch.0)
                    };
                    if let Some(epoch) = claimed.or_else(shown) {
                        rt.promote(slot, epoch);
                    }
                    rt.hub.unseal(slot);
                }
                lock(&rt.claiming).remove(&slot);
                rt.replan();
            });
        }
    }

    /// Old owner: seal, snapshot, send; on success the slot's channels become mirrors.
    pub(super) async fn hand_off(self: Arc<Self>, mut h: ringcast_core::ownership::Handoff) {
        // Not while the slot's replica is being rebuilt (that rewrites the claim), and on
        // the newest claim this node wrote, which the view may not show yet.
        let _one = self.sync_locks[usize::from(h.slot.get())].lock().await;
        h.from_epoch = self.owner_epoch(h.slot, h.from_epoch);
        let started = Instant::now();
        self.hub.seal(h.slot);
        let channels: Vec<ChannelSnapshotWire> =
            self.hub.snapshot_slot(h.slot, &self.me, self.now()).into_iter().map(snapshot_to_wire).collect();
        let count = channels.len();
        let frame = |req| PeerFrame::Handoff { req, slot: h.slot.get(), from_epoch: h.from_epoch.0, channels };
        // The answer can be lost (the link to a peer that just came back is re-dialled);
        // the view showing the target's claim on our epoch's successor is the same news.
        let outcome = tokio::select! {
            r = self.request(&h.to, frame, Instant::now() + HANDOFF_DEADLINE) => r,
            epoch = self.claim_shown(h.slot, &h.to, h.from_epoch) => {
                Ok(PeerFrame::HandedOff { req: 0, slot: h.slot.get(), epoch })
            }
        };
        match outcome {
            Ok(PeerFrame::HandedOff { epoch, .. }) => {
                self.hub.demote_slot(h.slot);
                lock(&self.replicas).remove(&h.slot);
                lock(&self.moved).insert(h.slot, epoch);
                self.resolve_stuck();
                self.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
                info!(to = %h.to, new_epoch = epoch, channels = count, ms = started.elapsed().as_millis() as u64, "slot handed off");
            }
            other => {
                warn!(to = %h.to, outcome = ?other, "handoff did not complete; the slot stays sealed until the view shows its holder");
                lock(&self.stuck).insert(h.slot, h.from_epoch.0);
                self.resolve_stuck();
            }
        }
        lock(&self.handing).remove(&h.slot);
        self.replan();
    }

    /// Whether this node wrote a claim on `slot` newer than `epoch` (the view lags it).
    /// Claims of a previous lease are void and not counted.
    pub(super) fn claimed_since(&self, slot: Slot, epoch: SlotEpoch) -> bool {
        let incarnation = self.membership.registered_revision().unwrap_or(u64::MAX);
        lock(&self.own_epochs).get(&slot).is_some_and(|e| *e > epoch && e.0 > incarnation)
    }

    /// Resolves once the route table shows `to` holding `slot` on a claim newer than
    /// `from` (a handoff that took effect); returns that claim's epoch.
    async fn claim_shown(&self, slot: Slot, to: &NodeId, from: SlotEpoch) -> u64 {
        let mut changed = self.table_changed.subscribe();
        loop {
            if let Route::Claimed { owner, epoch } = self.table().route(slot) {
                if &owner == to && epoch > from {
                    return epoch.0;
                }
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sealed slots with an unknown handoff outcome: unseal those the view shows we
    /// still hold at the same epoch; demote those someone else now holds.
    pub(super) fn resolve_stuck(&self) {
        let claims = self.claims.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Handed off: unseal once the view shows the new claim (or a later one).
        lock(&self.moved).retain(|slot, epoch| match claims.get(slot) {
            Some(c) if c.epoch.0 >= *epoch => {
                self.hub.unseal(*slot);
                false
            }
            _ => true,
        });
        lock(&self.stuck).retain(|slot, epoch| match claims.get(slot) {
            // Still ours (at the epoch we offered, or a later one we wrote ourselves, e.g.
            // naming a replica, which also made the target's CAS fail): serve it again.
            Some(c) if c.owner == self.me && c.epoch.0 >= *epoch => {
                self.hub.unseal(*slot);
                false
            }
            Some(c) if c.owner == self.me => true,
            // The view lags a claim of ours newer than the one it shows.
            Some(c) if self.claimed_since(*slot, c.epoch) => true,
            other => {
                debug!(%slot, holder = ?other.map(|c| &c.owner), "handoff outcome resolved: the slot is not ours; demoting");
                self.hub.demote_slot(*slot);
                self.hub.unseal(*slot);
                false
            }
        });
    }

    /// New owner: restore the channels, claim the slot on the old owner's epoch, answer.
    pub(super) async fn take_over(
        self: Arc<Self>,
        peer: NodeId,
        req: u64,
        slot: u16,
        from_epoch: u64,
        channels: Vec<ChannelSnapshotWire>,
    ) {
        let (slot, parsed) = match slot_snapshots(slot, channels) {
            Ok(x) => x,
            Err(r) => {
                self.refuse(&peer, req, &r, false);
                return;
            }
        };
        let count = parsed.len();
        // Claim first, sealed, and install only once the claim is ours: requests that
        // reach us meanwhile are refused (retry) rather than served from nothing, and a
        // failed claim leaves everything as it was.
        self.hub.seal(slot);
        match self.membership.claim(slot, ClaimExpect::Epoch(from_epoch)).await {
            Ok(ringcast_cluster::membership::ClaimOutcome::Claimed { epoch }) => {
                let namespaces = self.namespaces.clone();
                {
                    // Serialised with views: one applied meanwhile either sees this claim
                    // (and leaves the slot to us) or was decided before it, so a stale log
                    // it demotes here goes before this install, never after.
                    let _serial = lock(&self.apply_lock);
                    lock(&self.own_epochs).insert(slot, SlotEpoch(epoch));
                    self.fences[usize::from(slot.get())].fetch_max(epoch, Ordering::AcqRel);
                    // Copies this node held as the slot's replica are superseded.
                    lock(&self.replica_slots).remove(&slot);
                    self.hub.drop_replicas(slot);
                    self.hub.install(parsed, &self.me, |c| namespaces.get(c.namespace()).cloned(), self.now());
                    self.hub.unseal(slot);
                }
                info!(%slot, from = %peer, epoch, channels = count, "slot taken over");
                self.send(&peer, PeerFrame::HandedOff { req, slot: slot.get(), epoch });
                if self.hub.has_durable(slot, |c| self.is_durable(c)) {
                    let _ = self.ensure_replica(slot).await;
                }
            }
            other => {
                self.hub.unseal(slot);
                warn!(%slot, outcome = ?other, "takeover claim failed; the old owner keeps the slot");
                self.refuse(&peer, req, &Refusal::new(ErrorCode::Unavailable, "claim failed"), false);
            }
        }
    }

    /// Drains this node: marks it draining so the ring excludes it, then waits until it
    /// holds no slot (every one handed off) or `timeout` passes.
    pub async fn drain(&self, timeout: Duration) {
        if let Err(e) = self.membership.set_draining(true).await {
            warn!(error = %e, "could not mark this node draining; its slots move when its lease ends");
            return;
        }
        let until = Instant::now() + timeout;
        loop {
            let table = self.table();
            let held = table.claimed_counts().get(&self.me).copied().unwrap_or(0);
            if held > 0 && !table.has_owners() {
                warn!(held, "no other node can take slots (all draining); leaving them to lease expiry");
                return;
            }
            if held == 0 {
                info!("drained: every slot handed off");
                return;
            }
            if Instant::now() > until {
                warn!(held, "drain timed out with slots still held; they move when the lease ends");
                return;
            }
            self.table_change(until).await;
        }
    }

    /// Waits until the route table changes or `until` passes.
    pub(super) async fn table_change(&self, until: Instant) {
        let mut rx = self.table_changed.subscribe();
        let _ =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()).min(RETRY_PAUSE * 4), rx.changed())
                .await;
    }
}
