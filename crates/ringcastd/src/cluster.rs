//! The node's cluster runtime: membership, peer links and forwarding.
//!
//! - **Membership** (`ringcast_cluster::membership`): this node's record on an etcd
//!   lease and the watched view. Each new view rebuilds the route table and runs the
//!   ownership planner; this node claims the vacant slots it is the desired owner of.
//! - **Links**: one QUIC connection and one ordered stream from this node to each peer
//!   it talks to, fed by a bounded queue ([`PEER_QUEUE_FRAMES`]) that producers never
//!   wait on. Everything for a peer (requests, replies, `Deliver`) goes in that order;
//!   `docs/cluster.md` explains why the subscribe protocol needs it.
//! - **Inbound**: a reader task per peer connection dispatches frames: owner-side
//!   requests run on the hub, replies complete pending requests, `Deliver` frames go
//!   through the fence check into the hub's mirrors.
//! - **Forwarding**: publish, subscribe and history on channels owned elsewhere become
//!   requests to the owner, retried across slot moves until [`FORWARD_DEADLINE`].
//!
//! - **Handoff**: when the planner says a slot this node holds belongs elsewhere (a node
//!   joined, or this node drains), the slot is sealed, its channels snapshotted and sent
//!   to the new owner, which restores them and claims the slot by compare-and-swap on
//!   our epoch; at most [`HANDOFFS_IN_FLIGHT`] at once. An outcome that is not known
//!   keeps the slot sealed until the membership view shows who holds it.
//!
//! Not here yet: replication and crash failover in the same epoch (the failover issue).

/// Handoffs one node runs at once (the round throttle of `docs/cluster.md`).
pub const HANDOFFS_IN_FLIGHT: usize = ringcast_core::ownership::DEFAULT_HANDOFFS_IN_FLIGHT;
/// How long an old owner waits for the new owner to take a slot.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(10);

use crate::hub::{Hub, PeerSink, Published};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::router::{History, Refusal, Router, Target};
use ringcast_cluster::membership::{ClaimExpect, MemberRecord, Membership, Role, View};
use ringcast_cluster::transport::{read_frame, write_frame, FrameCodecConfig, Transport};
use ringcast_core::ownership::{plan, Claim, ClusterView, MemberInfo, Route, RouteTable, SlotEpoch};
use ringcast_core::{ChannelName, ConnId, Epoch, Millis, NamespaceOptions, NodeId, NotRecoveredReason, Offset, Slot};
use ringcast_proto::client::{check_history_limit, check_idempotency_key, Since, SubscribeOutcome};
use ringcast_proto::cluster::{ChannelSnapshotWire, OutcomeWire, PeerFrame, SinceWire, FRAMES_VERSION};
use ringcast_proto::ErrorCode;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// Frames queued for one peer before the link counts as overloaded.
pub const PEER_QUEUE_FRAMES: usize = 65_536;
/// How long a forwarded operation keeps retrying across slot moves.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between retries while a slot is vacant or moving.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Slot claims in flight at once.
const CLAIMS_IN_FLIGHT: usize = 64;
/// How often mirrors are checked for gaps to fill.
const FILL_TICK: Duration = Duration::from_millis(250);
/// How long a gap may stay open before its messages are fetched from history.
const FILL_PATIENCE: Duration = Duration::from_millis(500);
/// Back-off bounds for re-dialling a peer.
const DIAL_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section below leaves its map consistent at every step.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a node joins a cluster (from the `[cluster]` config section and flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub name: String,
    pub role: Role,
    pub quic_listen: std::net::SocketAddr,
    pub advertise_quic: Option<std::net::SocketAddr>,
    pub client_addr: std::net::SocketAddr,
    pub ca_file: std::path::PathBuf,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub lease_ttl: Duration,
    pub keepalive: Duration,
    /// How long after joining this node waits before claiming vacant slots, so nodes
    /// started together divide the slots instead of the first one taking them all.
    pub claim_delay: Duration,
}

/// A request waiting for the owner's answer.
enum Pending {
    /// Publish and history: the reply frame itself.
    Reply(oneshot::Sender<PeerFrame>),
    /// A gap fill for a mirror: the history page is offered to the mirror.
    Fill { channel: ChannelName },
    /// Subscribe: attached by the reader task when `Subscribed` arrives.
    Subscribe {
        channel: ChannelName,
        conn: ConnId,
        outbox: Arc<Outbox>,
        reply_id: u64,
        done: oneshot::Sender<Result<(), Refusal>>,
    },
}

/// The cluster side of one node.
pub struct Runtime {
    me: NodeId,
    hub: Arc<Hub>,
    namespaces: Arc<HashMap<String, NamespaceOptions>>,
    metrics: Arc<Metrics>,
    membership: Membership,
    transport: Transport,
    table: RwLock<Arc<RouteTable>>,
    members: RwLock<Arc<BTreeMap<NodeId, MemberRecord>>>,
    links: Mutex<HashMap<NodeId, mpsc::Sender<PeerFrame>>>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_req: AtomicU64,
    /// Newest slot epoch seen per slot in a `Deliver` (the fence against zombies).
    fences: Vec<AtomicU64>,
    claiming: Mutex<HashSet<Slot>>,
    /// Slots being handed off by this node.
    handing: Mutex<HashSet<Slot>>,
    /// Sealed slots whose handoff outcome is unknown, with the epoch we held them at.
    stuck: Mutex<HashMap<Slot, u64>>,
    /// Slots handed off whose new claim our view has not shown yet (kept sealed).
    moved: Mutex<HashMap<Slot, u64>>,
    /// The claims of the latest view.
    claims: RwLock<Arc<BTreeMap<Slot, Claim>>>,
    /// Claims this process made, `(slot, epoch)`. A claim in our name that is not here
    /// belongs to a previous incarnation of this node (a quick restart) and is treated
    /// as vacant until its lease expires: this process holds none of its state.
    mine: Mutex<HashSet<(Slot, u64)>>,
    /// The latest raw view and whether claiming has begun; applied (always the newest,
    /// one application at a time) on each view and when `mine` changes.
    latest: Mutex<(Arc<View>, bool)>,
    apply_lock: Mutex<()>,
    /// The latest view as the planner sees it, and whether claiming has begun.
    planned: RwLock<(Arc<ClusterView>, bool)>,
    codec: FrameCodecConfig,
    origin: Instant,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    table_changed: watch::Sender<u64>,
    /// A weak handle on ourselves, for spawning link writers from `&self`.
    self_ref: std::sync::OnceLock<std::sync::Weak<Runtime>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("me", &self.me).finish_non_exhaustive()
    }
}

/// Why the cluster runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The messages embed their cause, so none is exposed as `source` (printed twice).
    #[error("cluster TLS: {0}")]
    Tls(ringcast_cluster::tls::TlsError),
    #[error("cluster transport: {0}")]
    Transport(ringcast_cluster::transport::TransportError),
    #[error("membership: {0}")]
    Membership(ringcast_cluster::membership::MembershipError),
    #[error("cluster.listen: {0}")]
    Bind(String),
    #[error(
        "the certificate names node {cert:?} but this node is {node:?}; issue one with `ringcast ca issue {node}`"
    )]
    IdentityMismatch { cert: String, node: String },
}

impl Runtime {
    /// Joins the cluster: binds QUIC, registers in etcd, starts the view, accept and
    /// claim tasks. The hub is connected to the peer links.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        settings: &Settings,
        me: NodeId,
        hub: Arc<Hub>,
        namespaces: Arc<HashMap<String, NamespaceOptions>>,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Runtime>, StartError> {
        let tls = ringcast_cluster::tls::ClusterTls::load(&settings.ca_file, &settings.cert_file, &settings.key_file)
            .map_err(StartError::Tls)?;
        if tls.node_id() != &me {
            return Err(StartError::IdentityMismatch { cert: tls.node_id().to_string(), node: me.to_string() });
        }
        let transport = Transport::bind(settings.quic_listen, &tls).map_err(StartError::Transport)?;
        let quic_addr = match settings.advertise_quic {
            Some(a) => a,
            None => transport.local_addr().map_err(|e| StartError::Bind(e.to_string()))?,
        };
        let record = MemberRecord {
            node_id: me.to_string(),
            quic_addr,
            client_addr: settings.client_addr,
            role: settings.role,
            draining: false,
            started_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        let cfg = ringcast_cluster::membership::MembershipConfig {
            endpoints: settings.endpoints.clone(),
            cluster: settings.name.clone(),
            ttl: settings.lease_ttl,
            keepalive: settings.keepalive,
            relist_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        };
        let (membership, views) =
            Membership::start(cfg, record, shutdown.clone()).await.map_err(StartError::Membership)?;
        let (table_changed, _) = watch::channel(0);
        let rt = Arc::new(Runtime {
            me,
            hub: hub.clone(),
            namespaces,
            metrics,
            membership,
            transport,
            table: RwLock::new(Arc::new(RouteTable::new(&ClusterView::default()))),
            members: RwLock::new(Arc::new(BTreeMap::new())),
            links: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            fences: Slot::all().map(|_| AtomicU64::new(0)).collect(),
            claiming: Mutex::new(HashSet::new()),
            handing: Mutex::new(HashSet::new()),
            stuck: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            claims: RwLock::new(Arc::new(BTreeMap::new())),
            mine: Mutex::new(HashSet::new()),
            latest: Mutex::new((Arc::new(View::default()), false)),
            apply_lock: Mutex::new(()),
            planned: RwLock::new((Arc::new(ClusterView::default()), false)),
            codec: FrameCodecConfig::default(),
            origin: Instant::now(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
            table_changed,
            self_ref: std::sync::OnceLock::new(),
        });
        let _ = rt.self_ref.set(Arc::downgrade(&rt));
        hub.set_peers(rt.clone());
        let claim_at = tokio::time::Instant::now() + settings.claim_delay;
        tracker.spawn(rt.clone().watch_views(views, claim_at).instrument(info_span!("membership")));
        tracker.spawn(rt.clone().accept_loop().instrument(info_span!("accept")));
        tracker.spawn(rt.clone().fill_gaps().instrument(info_span!("fill")));
        info!(node = %rt.me, quic = %quic_addr, "joined the cluster");
        Ok(rt)
    }

    fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The current route table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The current members.
    pub fn members(&self) -> Arc<BTreeMap<NodeId, MemberRecord>> {
        self.members.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn quic_addr(&self) -> Option<std::net::SocketAddr> {
        self.transport.local_addr().ok()
    }

    /// Refuses to act as an owner once the lease may have expired (self-fencing).
    pub(crate) fn check_owner(&self) -> Result<(), Refusal> {
        match self.membership.owner_deadline() {
            Some(deadline) if Instant::now() < deadline => Ok(()),
            _ => Err(Refusal::new(
                ErrorCode::Unavailable,
                "this node cannot confirm its lease with etcd; retry on another node",
            )),
        }
    }

    /// Leaves the cluster: revokes the lease so peers see it go at once.
    pub async fn leave(&self) {
        if let Err(e) = self.membership.leave().await {
            warn!(error = %e, "could not revoke the lease; peers will notice when it expires");
        }
        self.transport.close().await;
    }

    // ---------------------------------------------------------------------------------
    // Views, routes and claims.

    async fn watch_views(self: Arc<Self>, mut views: watch::Receiver<Arc<View>>, claim_at: tokio::time::Instant) {
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
    fn reapply(self: &Arc<Self>) {
        let _serial = lock(&self.apply_lock);
        let (view, may_claim) = lock(&self.latest).clone();
        self.apply_view(&view, may_claim);
    }

    /// Builds the route table and plans from `view`. Only through [`Runtime::reapply`].
    fn apply_view(self: &Arc<Self>, view: &View, may_claim: bool) {
        let members: Vec<MemberInfo> = view
            .members
            .iter()
            .map(|(id, r)| MemberInfo { id: id.clone(), core: r.role == Role::Core, draining: r.draining })
            .collect();
        let claims: BTreeMap<Slot, Claim> = {
            let mine = lock(&self.mine);
            view.claims
                .iter()
                .filter(|(slot, c)| c.owner != self.me || mine.contains(&(**slot, c.epoch)))
                .map(|(slot, c)| (*slot, Claim { owner: c.owner.clone(), epoch: SlotEpoch(c.epoch) }))
                .collect()
        };
        let cv = ClusterView { members, claims };
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(RouteTable::new(&cv));
        *self.claims.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(cv.claims.clone());
        self.table_changed.send_modify(|n| *n += 1);
        self.resolve_stuck();

        // Peers that left: their links and their interest go.
        let old = self.members();
        *self.members.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view.members.clone());
        for gone in old.keys().filter(|id| !view.members.contains_key(*id)) {
            lock(&self.links).remove(gone);
            self.hub.drop_peer(gone);
            info!(peer = %gone, "peer left the cluster");
        }

        *self.planned.write().unwrap_or_else(PoisonError::into_inner) = (Arc::new(cv), may_claim);
        self.replan();
    }

    /// Starts the claims and handoffs the latest view calls for, within the throttles.
    /// Runs on every view and whenever a claim or handoff finishes, so rounds follow
    /// each other without waiting for an unrelated view change.
    fn replan(self: &Arc<Self>) {
        let (cv, may_claim) = self.planned.read().unwrap_or_else(PoisonError::into_inner).clone();
        let in_flight = lock(&self.handing).len();
        let p = plan(&cv, &self.me, in_flight, HANDOFFS_IN_FLIGHT);
        for h in p.hand_off {
            // A slot awaiting its outcome, or handed off but not yet shown moved by
            // the view, must not be planned again.
            if lock(&self.stuck).contains_key(&h.slot) || lock(&self.moved).contains_key(&h.slot) {
                continue;
            }
            if !lock(&self.handing).insert(h.slot) {
                continue;
            }
            let rt = self.clone();
            let span = info_span!("slot", slot = h.slot.get(), epoch = h.from_epoch.0);
            self.tracker.spawn(async move { rt.hand_off(h).await }.instrument(span));
        }

        let to_claim = if may_claim { p.claim } else { Vec::new() };
        for slot in to_claim {
            if lock(&self.claiming).len() >= CLAIMS_IN_FLIGHT || !lock(&self.claiming).insert(slot) {
                continue;
            }
            let rt = self.clone();
            self.tracker.spawn(async move {
                match rt.membership.claim(slot, ClaimExpect::Vacant).await {
                    Ok(ringcast_cluster::membership::ClaimOutcome::Claimed { epoch }) => {
                        lock(&rt.mine).insert((slot, epoch));
                        debug!(%slot, epoch, "claimed");
                        rt.reapply();
                    }
                    Ok(outcome) => debug!(%slot, ?outcome, "claim"),
                    Err(e) => warn!(%slot, error = %e, "claim failed"),
                }
                lock(&rt.claiming).remove(&slot);
                rt.replan();
            });
        }
    }

    /// Old owner: seal, snapshot, send; on success the slot's channels become mirrors.
    async fn hand_off(self: Arc<Self>, h: ringcast_core::ownership::Handoff) {
        let started = Instant::now();
        self.hub.set_sealed(h.slot, true);
        let channels: Vec<ChannelSnapshotWire> =
            self.hub.snapshot_slot(h.slot, &self.me, self.now()).into_iter().map(snapshot_to_wire).collect();
        let count = channels.len();
        let frame = |req| PeerFrame::Handoff { req, slot: h.slot.get(), from_epoch: h.from_epoch.0, channels };
        match self.request(&h.to, frame, Instant::now() + HANDOFF_DEADLINE).await {
            Ok(PeerFrame::HandedOff { epoch, .. }) => {
                self.hub.demote_slot(h.slot);
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

    /// Sealed slots with an unknown handoff outcome: unseal those the view shows we
    /// still hold at the same epoch; demote those someone else now holds.
    fn resolve_stuck(&self) {
        let claims = self.claims.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Handed off: unseal once the view shows the new claim (or a later one).
        lock(&self.moved).retain(|slot, epoch| match claims.get(slot) {
            Some(c) if c.epoch.0 >= *epoch => {
                self.hub.set_sealed(*slot, false);
                false
            }
            _ => true,
        });
        lock(&self.stuck).retain(|slot, epoch| match claims.get(slot) {
            Some(c) if c.owner == self.me && c.epoch.0 == *epoch => {
                self.hub.set_sealed(*slot, false);
                false
            }
            Some(c) if c.owner == self.me => true,
            _ => {
                self.hub.demote_slot(*slot);
                self.hub.set_sealed(*slot, false);
                false
            }
        });
    }

    /// New owner: restore the channels, claim the slot on the old owner's epoch, answer.
    async fn take_over(
        self: Arc<Self>,
        peer: NodeId,
        req: u64,
        slot: u16,
        from_epoch: u64,
        channels: Vec<ChannelSnapshotWire>,
    ) {
        let Some(slot) = Slot::new(slot) else {
            self.refuse(&peer, req, &Refusal::new(ErrorCode::BadRequest, "slot out of range"), false);
            return;
        };
        let mut parsed = Vec::with_capacity(channels.len());
        for w in channels {
            match snapshot_from_wire(w, slot) {
                Some(h) => parsed.push(h),
                None => {
                    self.refuse(&peer, req, &Refusal::new(ErrorCode::BadRequest, "malformed channel snapshot"), false);
                    return;
                }
            }
        }
        let count = parsed.len();
        // Claim first, sealed, and install only once the claim is ours: requests that
        // reach us meanwhile are refused (retry) rather than served from nothing, and a
        // failed claim leaves everything as it was.
        self.hub.set_sealed(slot, true);
        match self.membership.claim(slot, ClaimExpect::Epoch(from_epoch)).await {
            Ok(ringcast_cluster::membership::ClaimOutcome::Claimed { epoch }) => {
                lock(&self.mine).insert((slot, epoch));
                self.reapply();
                let namespaces = self.namespaces.clone();
                self.hub.install(parsed, &self.me, |c| namespaces.get(c.namespace()).cloned(), self.now());
                self.hub.set_sealed(slot, false);
                info!(%slot, from = %peer, epoch, channels = count, "slot taken over");
                self.send(&peer, PeerFrame::HandedOff { req, slot: slot.get(), epoch });
            }
            other => {
                self.hub.set_sealed(slot, false);
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
    async fn table_change(&self, until: Instant) {
        let mut rx = self.table_changed.subscribe();
        let _ =
            tokio::time::timeout(until.saturating_duration_since(Instant::now()).min(RETRY_PAUSE * 4), rx.changed())
                .await;
    }

    /// Every [`FILL_TICK`], asks owners for the messages behind gaps that stayed open
    /// for [`FILL_PATIENCE`] (frames lost with a broken stream, or interleaving owners).
    async fn fill_gaps(self: Arc<Self>) {
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
    fn link(self: &Arc<Self>, peer: &NodeId) -> mpsc::Sender<PeerFrame> {
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
    async fn write_link(self: Arc<Self>, peer: NodeId, mut rx: mpsc::Receiver<PeerFrame>) {
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

    // ---------------------------------------------------------------------------------
    // Inbound frames.

    /// Accepts peer links; each handshake runs in its own task so a slow or hostile
    /// peer cannot hold up the others.
    async fn accept_loop(self: Arc<Self>) {
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

    async fn read_connection(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) {
        if !self.members().contains_key(&peer) {
            // Its certificate is valid, but it has not registered: not a member (yet).
            debug!("connection from a node that is not a member; it will retry");
        }
        loop {
            let recv = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                r = conn.accept_uni() => match r {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            let rt = self.clone();
            let peer = peer.clone();
            self.tracker.spawn(async move { rt.read_stream(peer, recv).await });
        }
    }

    async fn read_stream(self: Arc<Self>, peer: NodeId, mut recv: quinn::RecvStream) {
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

    fn refuse(&self, peer: &NodeId, req: u64, r: &Refusal, retry: bool) {
        let frame = PeerFrame::Refused { req, code: r.code.as_str().to_owned(), message: r.message.clone(), retry };
        self.send(peer, frame);
    }

    /// Checks that this node owns `slot` for a request routed under `epoch`.
    fn serve_slot(&self, slot: u16, epoch: u64) -> Result<(), (Refusal, bool)> {
        let slot = Slot::new(slot).ok_or((Refusal::new(ErrorCode::BadRequest, "slot out of range"), false))?;
        match self.table().route(slot) {
            Route::Claimed { owner, epoch: mine } if owner == self.me && epoch <= mine.0 => {
                self.check_owner().map_err(|r| (r, true))
            }
            _ => Err((Refusal::new(ErrorCode::Unavailable, "this node does not own the slot now"), true)),
        }
    }

    fn parse_channel(&self, raw: &str, slot: u16) -> Result<(ChannelName, NamespaceOptions), Refusal> {
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

    fn on_frame(self: &Arc<Self>, peer: &NodeId, frame: PeerFrame) {
        match frame {
            PeerFrame::Hello { .. } => warn!("duplicate Hello ignored"),
            PeerFrame::Publish { req, slot, slot_epoch, channel, data, idempotency_key } => {
                let result = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)))
                    .and_then(|(channel, ns)| {
                        let data: Box<RawValue> = serde_json::from_str(&data)
                            .map_err(|e| (Refusal::new(ErrorCode::BadRequest, format!("data: {e}")), false))?;
                        if data.get().len() > ns.max_message_bytes {
                            return Err((Refusal::new(ErrorCode::MessageTooLarge, "data too large"), false));
                        }
                        if let Some(k) = &idempotency_key {
                            check_idempotency_key(k)
                                .map_err(|m| (Refusal::new(ErrorCode::InvalidIdempotencyKey, m), false))?;
                        }
                        let epoch = self.my_epoch(&channel);
                        self.hub.publish(&channel, &ns, &data, idempotency_key.as_deref(), self.now(), epoch).map_err(
                            |code| (crate::router::hub_refusal(code, &channel), code == ErrorCode::Unavailable),
                        )
                    });
                match result {
                    Ok(p) => {
                        let frame = PeerFrame::Acked {
                            req,
                            epoch: p.position.epoch.get(),
                            offset: p.position.offset.0,
                            duplicate: p.duplicate,
                        };
                        self.send(peer, frame);
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            PeerFrame::Subscribe { req, slot, slot_epoch, channel, since, interest } => {
                let checked = self
                    .serve_slot(slot, slot_epoch)
                    .and_then(|()| self.parse_channel(&channel, slot).map_err(|r| (r, false)));
                match checked {
                    Ok((channel, ns)) => {
                        let since =
                            since.map(|s| Since { epoch: s.epoch.and_then(Epoch::new), offset: Offset(s.offset) });
                        if !self.hub.serve_peer_subscribe(&channel, &ns, peer, req, since, interest, self.now()) {
                            self.metrics.peer_drops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err((r, retry)) => self.refuse(peer, req, &r, retry),
                }
            }
            PeerFrame::Unsubscribe { channel, .. } => {
                if let Ok(channel) = ChannelName::new(&channel) {
                    self.hub.drop_interest(&channel, peer);
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
            PeerFrame::Deliver { slot, slot_epoch, channel, epoch, offset, frame } => {
                self.on_deliver(peer, slot, slot_epoch, &channel, epoch, offset, frame);
            }
            PeerFrame::Handoff { req, slot, from_epoch, channels } => {
                let rt = self.clone();
                let peer = peer.clone();
                self.tracker.spawn(async move { rt.take_over(peer, req, slot, from_epoch, channels).await });
            }
            reply @ (PeerFrame::Acked { .. }
            | PeerFrame::HistoryPage { .. }
            | PeerFrame::Refused { .. }
            | PeerFrame::Subscribed { .. }
            | PeerFrame::HandedOff { .. }) => self.on_reply(reply),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_deliver(
        &self,
        peer: &NodeId,
        slot: u16,
        slot_epoch: u64,
        channel: &str,
        epoch: u64,
        offset: u64,
        frame: String,
    ) {
        let Some(fence) = self.fences.get(usize::from(slot)) else {
            warn!(slot, "Deliver for a slot out of range dropped");
            return;
        };
        // Fencing: never accept a message from an owner older than one already seen.
        if fence.fetch_max(slot_epoch, Ordering::AcqRel) > slot_epoch {
            self.metrics.fenced_frames.fetch_add(1, Ordering::Relaxed);
            debug!(slot, slot_epoch, "stale Deliver fenced off");
            return;
        }
        let (Ok(channel), Some(epoch)) = (ChannelName::new(channel), Epoch::new(epoch)) else {
            warn!("malformed Deliver dropped");
            return;
        };
        let position = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
        if !self.hub.deliver_remote(&channel, position, Utf8Bytes::from(frame), self.now()) {
            let frame = PeerFrame::Unsubscribe { slot, slot_epoch, channel: channel.as_str().to_owned() };
            self.send(peer, frame);
        }
    }

    fn on_reply(&self, reply: PeerFrame) {
        let req = match &reply {
            PeerFrame::Acked { req, .. }
            | PeerFrame::HistoryPage { req, .. }
            | PeerFrame::Refused { req, .. }
            | PeerFrame::Subscribed { req, .. }
            | PeerFrame::HandedOff { req, .. } => *req,
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
                if let PeerFrame::HistoryPage { messages, .. } = reply {
                    let parsed = messages
                        .into_iter()
                        .filter_map(|m| message_position(&m).map(|p| (p, Utf8Bytes::from(m))))
                        .collect();
                    self.hub.offer_fill(&channel, parsed, self.now());
                }
            }
            Pending::Subscribe { channel, conn, outbox, reply_id, done } => {
                let result = match reply {
                    PeerFrame::Subscribed { epoch, offset, outcome, replay, .. } => match Epoch::new(epoch) {
                        Some(epoch) => {
                            let top = ringcast_core::StreamPosition { epoch, offset: Offset(offset) };
                            let outcome = outcome_from_wire(outcome, replay.len());
                            let replay = replay.into_iter().map(Utf8Bytes::from).collect();
                            self.hub
                                .attach_remote(&channel, conn, &outbox, reply_id, top, outcome, replay)
                                .map_err(|code| Refusal::new(code, format!("cannot subscribe to {channel}")))
                        }
                        None => Err(Refusal::new(ErrorCode::Internal, "owner answered with epoch 0")),
                    },
                    PeerFrame::Refused { code, message, retry, .. } => Err(refusal_from_wire(&code, message, retry)),
                    _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to subscribe")),
                };
                let _ = done.send(result);
            }
        }
    }

    /// Queues a frame for `peer`; false when its link cannot take it.
    fn send(&self, peer: &NodeId, frame: PeerFrame) -> bool {
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

    fn hub_arc(&self) -> Option<Arc<Runtime>> {
        self.self_ref.get().and_then(std::sync::Weak::upgrade)
    }

    fn my_epoch(&self, channel: &ChannelName) -> SlotEpoch {
        match self.table().route(Slot::of(channel)) {
            Route::Claimed { epoch, .. } => epoch,
            _ => SlotEpoch(0),
        }
    }

    // ---------------------------------------------------------------------------------
    // Gateway side.

    fn register(&self, pending: Pending) -> u64 {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(req, pending);
        req
    }

    async fn request(
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
                Err(Refusal::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{owner} did not answer in time; the outcome is unknown, retry with the same idempotency_key"
                    ),
                ))
            }
        }
    }

    pub(crate) async fn publish(
        &self,
        router: &Router,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<Published, Refusal> {
        let until = Instant::now() + FORWARD_DEADLINE;
        loop {
            let attempt = match router.target(channel) {
                Ok(Target::Local(epoch)) => {
                    return self
                        .hub
                        .publish(channel, ns, data, idempotency_key, self.now(), epoch)
                        .map_err(|code| crate::router::hub_refusal(code, channel));
                }
                Ok(Target::Remote { owner, epoch }) => {
                    let frame = |req| PeerFrame::Publish {
                        req,
                        slot: Slot::of(channel).get(),
                        slot_epoch: epoch.0,
                        channel: channel.as_str().to_owned(),
                        data: data.get().to_owned(),
                        idempotency_key: idempotency_key.map(str::to_owned),
                    };
                    match self.request(&owner, frame, until).await? {
                        PeerFrame::Acked { epoch, offset, duplicate, .. } => {
                            let epoch =
                                Epoch::new(epoch).ok_or_else(|| Refusal::new(ErrorCode::Internal, "epoch 0"))?;
                            return Ok(Published {
                                position: ringcast_core::StreamPosition { epoch, offset: Offset(offset) },
                                duplicate,
                            });
                        }
                        PeerFrame::Refused { code, message, retry, .. } => {
                            Err(refusal_from_wire(&code, message, retry))
                        }
                        _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to publish")),
                    }
                }
                Err(r) => Err(r),
            };
            match attempt {
                Err(r) if r.code == ErrorCode::Unavailable && Instant::now() < until => self.table_change(until).await,
                other => return other,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn subscribe(
        &self,
        router: &Router,
        channel: &ChannelName,
        ns: &NamespaceOptions,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        since: Option<Since>,
        reply_id: u64,
    ) -> Result<(), Refusal> {
        let until = Instant::now() + FORWARD_DEADLINE;
        loop {
            let attempt = match router.target(channel) {
                Ok(Target::Local(_)) => {
                    return self
                        .hub
                        .subscribe(channel, ns, conn, outbox, since, reply_id, self.now())
                        .map_err(|code| Refusal::new(code, format!("cannot subscribe to {channel}")));
                }
                Ok(Target::Remote { owner, epoch }) => {
                    let (done, rx) = oneshot::channel();
                    let req = self.register(Pending::Subscribe {
                        channel: channel.clone(),
                        conn,
                        outbox: outbox.clone(),
                        reply_id,
                        done,
                    });
                    let (interest, sent) = self.hub.send_subscribe(channel, &owner, |interest| PeerFrame::Subscribe {
                        req,
                        slot: Slot::of(channel).get(),
                        slot_epoch: epoch.0,
                        channel: channel.as_str().to_owned(),
                        since: since.map(|s| SinceWire { epoch: s.epoch.map(Epoch::get), offset: s.offset.0 }),
                        interest,
                    });
                    let outcome = if sent {
                        match tokio::time::timeout(until.saturating_duration_since(Instant::now()), rx).await {
                            Ok(Ok(r)) => r,
                            _ => Err(Refusal::new(ErrorCode::Unavailable, format!("{owner} did not answer in time"))),
                        }
                    } else {
                        Err(Refusal::new(ErrorCode::Unavailable, format!("no link to {owner}")))
                    };
                    lock(&self.pending).remove(&req);
                    if outcome.is_err() && interest {
                        self.hub.release_remote_interest(channel);
                    }
                    outcome
                }
                Err(r) => Err(r),
            };
            match attempt {
                Err(r) if r.code == ErrorCode::Unavailable && Instant::now() < until => self.table_change(until).await,
                other => return other,
            }
        }
    }

    pub(crate) async fn history(
        &self,
        router: &Router,
        channel: &ChannelName,
        before: Option<Offset>,
        limit: u32,
    ) -> Result<History, Refusal> {
        let until = Instant::now() + FORWARD_DEADLINE;
        loop {
            let attempt = match router.target(channel) {
                Ok(Target::Local(_)) => {
                    return Ok(crate::router::local_history(&self.hub, channel, before, limit, self.now()));
                }
                Ok(Target::Remote { owner, epoch }) => {
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
                            return Ok(History {
                                epoch: epoch.and_then(Epoch::new),
                                oldest: Offset(oldest),
                                newest: Offset(newest),
                                next_before: next_before.map(Offset),
                                messages: messages.into_iter().map(Utf8Bytes::from).collect(),
                            });
                        }
                        PeerFrame::Refused { code, message, retry, .. } => {
                            Err(refusal_from_wire(&code, message, retry))
                        }
                        _ => Err(Refusal::new(ErrorCode::Internal, "unexpected reply to history")),
                    }
                }
                Err(r) => Err(r),
            };
            match attempt {
                Err(r) if r.code == ErrorCode::Unavailable && Instant::now() < until => self.table_change(until).await,
                other => return other,
            }
        }
    }

    /// This node's last subscriber on a remote channel left: tell the owner.
    pub(crate) fn release_interest(&self, router: &Router, channel: &ChannelName) {
        if let Ok(Target::Remote { owner, epoch }) = router.target(channel) {
            let frame = PeerFrame::Unsubscribe {
                slot: Slot::of(channel).get(),
                slot_epoch: epoch.0,
                channel: channel.as_str().to_owned(),
            };
            self.send(&owner, frame);
        }
    }
}

impl PeerSink for Runtime {
    fn send(&self, node: &NodeId, frame: PeerFrame) -> bool {
        Runtime::send(self, node, frame)
    }
}

fn snapshot_to_wire(h: crate::hub::ChannelHandoff) -> ChannelSnapshotWire {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ChannelSnapshotWire {
        channel: h.channel.as_str().to_owned(),
        epoch: h.log.epoch.get(),
        top: h.log.top.0,
        history: h.log.history.into_iter().map(|(o, age, f)| (o.0, ms(age), f.as_str().to_owned())).collect(),
        dedup: h.log.dedup.into_iter().map(|d| (d.key, d.digest, d.position.offset.0, ms(d.age))).collect(),
        interest: h.interest.iter().map(ToString::to_string).collect(),
    }
}

/// A handed-off channel from the wire, checked like any peer input.
fn snapshot_from_wire(w: ChannelSnapshotWire, slot: Slot) -> Option<crate::hub::ChannelHandoff> {
    let channel = ChannelName::new(&w.channel).ok().filter(|c| Slot::of(c) == slot)?;
    let epoch = Epoch::new(w.epoch)?;
    let history =
        w.history.into_iter().map(|(o, age, f)| (Offset(o), Duration::from_millis(age), Utf8Bytes::from(f))).collect();
    let dedup = w
        .dedup
        .into_iter()
        .map(|(key, digest, offset, age)| ringcast_core::dedup::DedupEntry {
            key,
            digest,
            position: ringcast_core::StreamPosition { epoch, offset: Offset(offset) },
            age: Duration::from_millis(age),
        })
        .collect();
    let interest = w.interest.iter().filter_map(|n| NodeId::new(n).ok()).collect();
    Some(crate::hub::ChannelHandoff {
        channel,
        log: ringcast_core::log::LogSnapshot { epoch, top: Offset(w.top), history, dedup },
        interest,
    })
}

/// The position of an encoded `message` push frame.
fn message_position(frame: &str) -> Option<ringcast_core::StreamPosition> {
    #[derive(serde::Deserialize)]
    struct Head {
        epoch: Epoch,
        offset: Offset,
    }
    let h: Head = serde_json::from_str(frame).ok()?;
    Some(ringcast_core::StreamPosition { epoch: h.epoch, offset: h.offset })
}

fn outcome_from_wire(o: OutcomeWire, replayed: usize) -> SubscribeOutcome {
    match o {
        OutcomeWire::Fresh => SubscribeOutcome::Fresh,
        OutcomeWire::Recovered => SubscribeOutcome::Recovered { replayed },
        OutcomeWire::NotRecovered { reason, oldest, newest } => SubscribeOutcome::NotRecovered {
            reason: match reason.as_str() {
                "position_expired" => NotRecoveredReason::PositionExpired,
                "position_ahead" => NotRecoveredReason::PositionAhead,
                _ => NotRecoveredReason::EpochChanged,
            },
            oldest: Offset(oldest),
            newest: Offset(newest),
        },
    }
}

fn refusal_from_wire(code: &str, message: String, retry: bool) -> Refusal {
    let code = ErrorCode::ALL.iter().copied().find(|c| c.as_str() == code).unwrap_or(ErrorCode::Internal);
    // A retryable refusal is reported as `unavailable` so the caller's loop re-routes.
    Refusal::new(if retry { ErrorCode::Unavailable } else { code }, message)
}
