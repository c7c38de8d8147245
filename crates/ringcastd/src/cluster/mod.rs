//! The node's cluster runtime: membership, peer links and forwarding.
//!
//! - **Membership** (`ringcast_cluster::membership`): this node's record on an etcd
//!   lease and the watched view. Each new view rebuilds the route table and runs the
//!   ownership planner; this node claims the vacant slots it is the desired owner of.
//! - **Links**: one QUIC connection and one ordered stream from this node to each peer
//!   it talks to, fed by a queue bounded in frames and bytes ([`PeerQueueBounds`]) that
//!   producers never wait on. A queue that overflows (a stalled or slow peer) is dropped
//!   and its connection closed; the peer resyncs by offset when it sees the connection
//!   end, so one slow node costs bounded memory and never delays the others.
//!   Everything for a peer (requests, replies, `Deliver`) goes in that order;
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
//! Layout: this file holds the runtime's state and start-up; `views` applies
//! membership views (routes, claims, handoffs, drain), `links` the outbound streams
//! and gap fills, `inbound` the frames peers send, `forward` the gateway side.
//!
//! - **Replication** (`replication`): durable namespaces keep a synchronous replica per
//!   slot; a crashed owner's replica claims the slot and continues in the same epochs.

/// Handoffs one node runs at once (the round throttle of `docs/cluster.md`).
pub const HANDOFFS_IN_FLIGHT: usize = ringcast_core::ownership::DEFAULT_HANDOFFS_IN_FLIGHT;
/// How long an inbound link from a node missing from our view may wait for it to appear.
const MEMBER_GRACE: Duration = Duration::from_secs(5);
/// How long an old owner waits for the new owner to take a slot.
const HANDOFF_DEADLINE: Duration = Duration::from_secs(10);

mod forward;
mod inbound;
mod links;
mod replication;
mod views;

pub use links::PeerQueueBounds;

use crate::hub::{DurableAppend, Hub, LocalSubscriber, Origin, PeerSink, PublishRequest, Published};
use crate::metrics::Metrics;
use crate::router::{History, Refusal, Router, Target};
use ringcast_cluster::membership::{ClaimExpect, MemberRecord, Membership, Role, View};
use ringcast_cluster::transport::{read_frame, write_frame, FrameCodecConfig, Transport};
use ringcast_core::ownership::{plan_with_ring, Claim, ClusterView, MemberInfo, Route, RouteTable, SlotEpoch};
use ringcast_core::{ChannelName, Epoch, Millis, NamespaceOptions, NodeId, NotRecoveredReason, Offset, Pattern, Slot};
use ringcast_proto::client::{check_history_limit, check_idempotency_key, Since, SubscribeOutcome};
use ringcast_proto::cluster::{
    ChannelSnapshotWire, DeltaWire, MemberWire, OutcomeWire, PeerFrame, PresentWire, SinceWire, FRAMES_VERSION,
};
use ringcast_proto::ErrorCode;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long a forwarded operation keeps retrying across slot moves.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(5);
/// How long a `psubscribe` waits for the other members to acknowledge its pattern.
const PATTERN_SYNC_DEADLINE: Duration = Duration::from_secs(3);
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
    /// Bounds of each peer's outbound queue.
    pub peer_queue: PeerQueueBounds,
}

/// A request waiting for the owner's answer.
enum Pending {
    /// Publish and history: the reply frame itself.
    Reply(oneshot::Sender<PeerFrame>),
    /// A gap fill for a mirror: the history page is offered to the mirror.
    Fill { channel: ChannelName },
    /// Subscribe: attached by the reader task when `Subscribed` arrives.
    Subscribe { channel: ChannelName, sub: LocalSubscriber, done: oneshot::Sender<Result<(), Refusal>> },
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
    links: Mutex<HashMap<NodeId, links::Link>>,
    peer_queue: PeerQueueBounds,
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
    /// Vacant slots whose last claim (as this node saw it) named a replica.
    vacated: Mutex<BTreeMap<Slot, NodeId>>,
    /// Owner: each slot's replica once brought up, with the claim epoch naming it.
    replicas: Mutex<HashMap<Slot, (NodeId, SlotEpoch)>>,
    /// Owner: the epoch of the newest claim this node wrote per slot (the view may lag).
    own_epochs: Mutex<HashMap<Slot, SlotEpoch>>,
    /// One replica bring-up at a time per slot.
    sync_locks: Vec<tokio::sync::Mutex<()>>,
    /// Replica: slots this node holds copies of, with the newest slot epoch seen for them.
    replica_slots: Mutex<HashMap<Slot, u64>>,
    /// Gateway: channels whose interest this node released lately (`forward.rs`,
    /// `repeat_releases`).
    released: Mutex<VecDeque<(Instant, ChannelName)>>,
    /// The etcd revision of our record's registration on the lease the current route
    /// table was built under (`u64::MAX` without a lease). A claim in our name with an
    /// older revision was made under a lease that is gone (a previous process after a
    /// quick restart, or this one before its lease expired during a pause) and is treated
    /// as vacant: this node must not act on it. Claims made under the current lease are
    /// all newer.
    incarnation: AtomicU64,
    /// The latest raw view and whether claiming has begun; applied (always the newest,
    /// one application at a time) on each view and when a handoff completes.
    latest: Mutex<(Arc<View>, bool)>,
    apply_lock: Mutex<()>,
    /// The latest view as the planner sees it, and whether claiming has begun.
    planned: RwLock<(Arc<ClusterView>, Arc<RouteTable>, bool)>,
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
            peer_queue: settings.peer_queue,
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            fences: Slot::all().map(|_| AtomicU64::new(0)).collect(),
            claiming: Mutex::new(HashSet::new()),
            handing: Mutex::new(HashSet::new()),
            stuck: Mutex::new(HashMap::new()),
            moved: Mutex::new(HashMap::new()),
            claims: RwLock::new(Arc::new(BTreeMap::new())),
            vacated: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(HashMap::new()),
            own_epochs: Mutex::new(HashMap::new()),
            sync_locks: Slot::all().map(|_| tokio::sync::Mutex::new(())).collect(),
            replica_slots: Mutex::new(HashMap::new()),
            released: Mutex::new(VecDeque::new()),
            incarnation: AtomicU64::new(u64::MAX),
            latest: Mutex::new((Arc::new(View::default()), false)),
            apply_lock: Mutex::new(()),
            planned: RwLock::new((
                Arc::new(ClusterView::default()),
                Arc::new(RouteTable::new(&ClusterView::default())),
                false,
            )),
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
    /// Also refuses while the route table predates the current lease: after a pause long
    /// enough to lose the lease, the node registers again and, until its next view is
    /// applied, its table still shows claims that died with the old lease.
    pub(crate) fn check_owner(&self) -> Result<(), Refusal> {
        let fresh = self.membership.registered_revision() == Some(self.incarnation.load(Ordering::Acquire));
        match self.membership.owner_deadline() {
            Some(deadline) if fresh && Instant::now() < deadline => Ok(()),
            // Fail fast: waiting would not help while etcd is unreachable.
            _ => Err(Refusal::new(
                ErrorCode::CoordinationUnavailable,
                "the channel's owner cannot confirm its ownership with etcd; retry later",
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
}

impl PeerSink for Runtime {
    fn send(&self, node: &NodeId, frame: PeerFrame) -> bool {
        Runtime::send(self, node, frame)
    }

    fn slot_epoch(&self, slot: Slot) -> SlotEpoch {
        self.my_slot_epoch(slot)
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
        latest: h.log.latest.into_iter().map(|(k, o, age, f)| (k, o.0, ms(age), f.as_str().to_owned())).collect(),
        occupied: h.occupied.unwrap_or(false),
        leaving: h
            .leaving
            .into_iter()
            .map(|l| (l.user.to_string(), l.info.map(|i| i.to_string()), ms(l.ago)))
            .collect(),
        members: h.members.into_iter().map(present_to_wire).collect(),
    }
}

/// A presence client as peers exchange it (presence answers, handoffs).
fn present_to_wire(m: ringcast_core::presence::Member) -> PresentWire {
    PresentWire {
        node: m.node.to_string(),
        conn: m.conn.0,
        user: m.user.to_string(),
        info: m.info.as_deref().map(str::to_owned),
    }
}

/// A slot number and its channels' snapshots from the wire, checked like any peer input.
fn slot_snapshots(
    slot: u16,
    channels: Vec<ChannelSnapshotWire>,
) -> Result<(Slot, Vec<crate::hub::ChannelHandoff>), Refusal> {
    let slot = Slot::new(slot).ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "slot out of range"))?;
    let parsed = channels
        .into_iter()
        .map(|w| snapshot_from_wire(w, slot))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "malformed channel snapshot"))?;
    Ok((slot, parsed))
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
    // Keys and offsets are checked again by `LatestState::import`.
    let latest = w
        .latest
        .into_iter()
        .map(|(k, o, age, f)| (k, Offset(o), Duration::from_millis(age), Utf8Bytes::from(f)))
        .collect();
    // An empty user is no user (anonymous clients have no leaves); the frame size
    // bounds how many there are.
    let leaving = w
        .leaving
        .into_iter()
        .filter(|(user, _, _)| !user.is_empty())
        .map(|(user, info, ago)| ringcast_core::presence::LeavingUser {
            user: user.into(),
            info: info.map(Into::into),
            ago: Duration::from_millis(ago),
        })
        .collect();
    // Members are checked like a node's own announcements (`Presence`).
    let members = w
        .members
        .into_iter()
        .filter_map(|m| {
            let node = NodeId::new(&m.node).ok()?;
            let fits = m.user.len() <= inbound::MAX_USER_BYTES
                && m.info.as_ref().is_none_or(|i| i.len() <= ringcast_auth::MAX_INFO_BYTES);
            fits.then(|| ringcast_core::presence::Member {
                node,
                conn: ringcast_core::ConnId(m.conn),
                user: m.user.into(),
                info: m.info.map(Into::into),
            })
        })
        .collect();
    Some(crate::hub::ChannelHandoff {
        channel,
        log: ringcast_core::log::LogSnapshot { epoch, top: Offset(w.top), history, dedup, latest },
        interest,
        occupied: Some(w.occupied),
        leaving,
        members,
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
    // A retryable refusal is reported as `unavailable` so the caller's loop re-routes; an
    // `unavailable` that is not retryable (an unknown outcome) stays final.
    Refusal { code: if retry { ErrorCode::Unavailable } else { code }, message, retry }
}
