//! etcd membership and slot claims: the cluster's shared, strongly consistent state.
//!
//! A node calls [`Membership::start`] once. From then on a background task keeps the
//! node's lease alive, keeps its [`MemberRecord`] registered, and follows everything under
//! the cluster prefix, publishing an [`Arc<View>`] on a `watch` channel each time the
//! members or slot claims change. [`Membership::claim`] writes a slot claim by
//! compare-and-swap. This module does I/O only: it **never decides ownership**. Which node
//! should own a slot, when to hand off, and when to stop acting as owner are the core's
//! decisions; the router feeds it views and deadlines from here and performs the claims it
//! asks for.
//!
//! ## Keys (values are JSON)
//! ```text
//! /{cluster}/nodes/{node_id}  -> MemberRecord  attached to the node's lease
//! /{cluster}/slots/{slot}     -> {"owner": id} attached to the owner's lease; slot in plain decimal
//! ```
//! `{cluster}` follows the namespace grammar (`a-z 0-9 _ -`), so the prefix `/{cluster}/`
//! can never overlap another cluster's. Keys under the prefix that this module does not
//! know are ignored; known keys whose key or value does not decode are logged at `warn` and
//! left out of the view (the `record` submodule holds these decoders, which are on the
//! fuzz list).
//!
//! ## Fencing
//! A claim is written by a `Txn` whose compare is either "the key is absent"
//! ([`ClaimExpect::Vacant`], after a crash) or "the key's mod_revision is E"
//! ([`ClaimExpect::Epoch`], a handoff from the holder of E). The revision of that `Txn` is
//! the key's new mod_revision and the slot's **fencing epoch**: etcd revisions only grow,
//! so a newer claim always carries a larger epoch, and receivers reject messages with an
//! older one. Because claims live on the owner's lease, they vanish when the lease
//! expires. The owner must stop acting before that can happen:
//! [`Membership::owner_deadline`] is `t_send(last successful keepalive) + TTL*0.99 - 1 s`
//! on the monotonic clock (etcd counts the TTL from when it *received* the keepalive,
//! which is later). While etcd is unreachable no keepalive succeeds, so the deadline
//! simply passes.
//!
//! ## Lease loss
//! If etcd reports the lease gone (keepalive TTL 0, or "lease not found" on a write), the
//! task grants a new lease and re-registers the record. Claims held under the old lease
//! are gone for good, which is correct: another node may already have claimed those slots.
//! [`Membership::owner_deadline`] is `None` until the new lease is in place.
//!
//! ## What it deliberately does not do
//! It does not choose owners, rebalance, or retry claims; it does not refuse a claim after
//! the deadline (the core knows whether it still acts as owner); it does not delete stale
//! claims of other nodes (their leases do that); and a timed-out claim is reported as an
//! error whose outcome is unknown: the next view tells.

mod lease;
mod record;
mod watcher;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use ringcast_core::{NameError, NamespaceName, NodeId, Slot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use record::Keys;

/// A node's role in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Owns slots and serves clients.
    Core,
    /// Serves clients only; never owns.
    Edge,
}

/// Value of `/{cluster}/nodes/{node_id}` (JSON), attached to the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub node_id: String,
    pub quic_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub role: Role,
    pub draining: bool,
    pub started_at_ms: u64,
}

/// A slot's current claim: the value of `/{cluster}/slots/{slot}` is JSON
/// `{"owner": node_id, "replica": node_id?}`, attached to the owner's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotClaim {
    pub owner: NodeId,
    /// The key's mod_revision: the slot's fencing epoch E.
    pub epoch: u64,
    /// The node holding the synchronous copy of the slot's durable channels.
    pub replica: Option<NodeId>,
}

/// A consistent snapshot of the cluster prefix: exactly the decodable members and claims
/// at etcd revision `revision` (and at every later revision up to the next view).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub revision: i64,
    pub members: BTreeMap<NodeId, MemberRecord>,
    pub claims: BTreeMap<Slot, SlotClaim>,
}

/// How to reach etcd and how long leases last.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Cluster name (namespace grammar); every key lives under `/{cluster}/`.
    pub cluster: String,
    /// Lease TTL, whole seconds (default 6 s). Shorter detects crashes sooner and makes
    /// a slow etcd cause false failovers sooner.
    pub ttl: Duration,
    /// Keepalive period (default 2 s); must leave the deadline `TTL*0.99 - 1 s` ahead of
    /// the next keepalive, so it must be shorter than that.
    pub keepalive: Duration,
    /// Full re-list period (default 30 s), a guard against watch bugs.
    pub relist_interval: Duration,
    /// Bound on connecting to etcd (default 5 s). Each etcd request is bounded by the TTL:
    /// an answer later than that is useless to a lease holder.
    pub connect_timeout: Duration,
}

impl MembershipConfig {
    /// A config with the documented defaults.
    #[must_use]
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> MembershipConfig {
        MembershipConfig {
            endpoints,
            cluster: cluster.into(),
            ttl: Duration::from_secs(6),
            keepalive: Duration::from_secs(2),
            relist_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The compare of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimExpect {
    /// The slot key is absent (create_revision == 0): after its owner's lease expired.
    Vacant,
    /// The slot key's mod_revision is this epoch: taking over from its holder.
    /// `Epoch(0)` never matches (0 is no epoch).
    Epoch(u64),
}

/// What a claim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// We own the slot at this epoch (the claim's revision).
    Claimed { epoch: u64 },
    /// The compare failed; `current` is the claim that stands (`None` if the slot is
    /// vacant, or holds a value that does not decode).
    Lost { current: Option<SlotClaim> },
}

/// Why a membership call failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership config: {0}")]
    Config(String),
    #[error("invalid cluster name {name:?}: {source}")]
    InvalidCluster { name: String, source: NameError },
    #[error("invalid node id {id:?}: {source}")]
    InvalidNodeId { id: String, source: NameError },
    #[error("etcd {op} failed: {source}")]
    Etcd { op: &'static str, source: etcd_client::Error },
    /// The request may or may not have been applied.
    #[error("etcd {op} timed out after {after:?}; its outcome is unknown")]
    Timeout { op: &'static str, after: Duration },
    #[error("no lease is held (it was lost and is being re-granted)")]
    NoLease,
    #[error("membership has stopped")]
    Stopped,
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("etcd answered {op} unexpectedly: {detail}")]
    Protocol { op: &'static str, detail: String },
}

impl MembershipError {
    /// True when etcd says our lease no longer exists.
    fn is_lease_not_found(&self) -> bool {
        // etcd's text for ErrGRPCLeaseNotFound (code NotFound), stable across 3.x.
        matches!(self, MembershipError::Etcd { source: etcd_client::Error::GRpcStatus(s), .. }
            if s.message().contains("requested lease not found"))
    }
}

/// A cheap, cloneable handle. Dropping every clone stops the background task without
/// revoking the lease (it then expires after the TTL); [`Membership::leave`] revokes it.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
    _stop_on_drop: Arc<DropGuard>,
}

/// What the handle and the background tasks share.
struct Inner {
    cfg: MembershipConfig,
    keys: Keys,
    me: NodeId,
    client: Client,
    /// Cancelled by shutdown, `leave`, or dropping the last handle.
    stop: CancellationToken,
    tracker: TaskTracker,
    state: Mutex<State>,
    /// Serialises writes of our record, so a re-registration after lease loss can never
    /// overwrite a newer `set_draining` with an older copy.
    record_write: tokio::sync::Mutex<()>,
    /// Woken when a write finds our lease gone, so the lease task checks at once.
    lease_suspect: Notify,
    span: tracing::Span,
}

#[derive(Debug)]
struct State {
    record: MemberRecord,
    lease: Option<i64>,
    deadline: Option<Instant>,
    /// The etcd revision of our record's put on the current lease.
    registered: Option<u64>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Membership")
            .field("cluster", &self.inner.cfg.cluster)
            .field("node", &self.inner.me)
            .field("lease", &st.lease)
            .field("deadline", &st.deadline)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Connects, grants a lease, puts our [`MemberRecord`] on it, lists the prefix,
    /// starts the background task (keepalive + watch + periodic re-list), and returns the
    /// handle plus a watch channel of views. The task stops when `shutdown` is cancelled,
    /// on [`Membership::leave`], or when every handle is dropped. Only `leave` revokes the
    /// lease: the other two stop the keepalives, so our record and claims vanish one TTL
    /// later, exactly as after a crash. A graceful shutdown therefore calls `leave`.
    pub async fn start(
        cfg: MembershipConfig,
        me: MemberRecord,
        shutdown: CancellationToken,
    ) -> Result<(Membership, watch::Receiver<Arc<View>>), MembershipError> {
        let cluster = NamespaceName::new(&cfg.cluster)
            .map_err(|source| MembershipError::InvalidCluster { name: cfg.cluster.clone(), source })?;
        let node = NodeId::new(&me.node_id)
            .map_err(|source| MembershipError::InvalidNodeId { id: me.node_id.clone(), source })?;
        validate(&cfg, &me)?;
        let span = tracing::info_span!("membership", cluster = %cluster, node = %node);
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.connect_timeout)
            .with_keep_alive(HTTP2_PING_INTERVAL, cfg.connect_timeout)
            .with_keep_alive_while_idle(false);
        let client = bounded("connect", cfg.connect_timeout, Client::connect(cfg.endpoints.clone(), Some(opts)))
            .instrument(span.clone())
            .await?;
        let stop = shutdown.child_token();
        let inner = Arc::new(Inner {
            keys: Keys::new(&cluster),
            me: node,
            client,
            stop: stop.clone(),
            tracker: TaskTracker::new(),
            state: Mutex::new(State { record: me, lease: None, deadline: None, registered: None }),
            record_write: tokio::sync::Mutex::new(()),
            lease_suspect: Notify::new(),
            span: span.clone(),
            cfg,
        });
        let lease = inner.register().instrument(span.clone()).await?;
        let mut watcher = watcher::Watcher::new(&inner);
        if let Err(e) = watcher.relist().instrument(span.clone()).await {
            inner.revoke_quietly(lease).await;
            return Err(e);
        }
        let views = watcher.subscribe();
        inner.tracker.spawn(lease::run(inner.clone()).instrument(span.clone()));
        inner.tracker.spawn(watcher.run().instrument(span.clone()));
        inner.tracker.close();
        span.in_scope(|| tracing::info!(lease, "joined the cluster"));
        Ok((Membership { inner, _stop_on_drop: Arc::new(stop.drop_guard()) }, views))
    }

    /// Self-fencing deadline: when the last successful keepalive was *sent* + TTL (from
    /// its response) * 0.99 - 1 s, monotonic. `None` when no lease is held.
    #[must_use]
    pub fn owner_deadline(&self) -> Option<Instant> {
        self.inner.lock().deadline
    }

    /// The etcd revision at which our record was put on the current lease. Every claim
    /// made under this lease has a later revision; a claim in our name with an earlier one
    /// was made under a lease that is gone (a previous process, or this one before its
    /// lease expired) and is void. `None` while no lease is held.
    #[must_use]
    pub fn registered_revision(&self) -> Option<u64> {
        let st = self.inner.lock();
        st.lease.and(st.registered)
    }

    /// Our current lease id, if one is held.
    #[must_use]
    pub fn lease_id(&self) -> Option<i64> {
        self.inner.lock().lease
    }

    /// Sets our record's `draining` flag and re-puts it on our lease. The flag is kept
    /// even when this fails with [`MembershipError::NoLease`]: the re-registration that
    /// follows lease loss writes it.
    pub async fn set_draining(&self, draining: bool) -> Result<(), MembershipError> {
        self.inner.ensure_running()?;
        self.inner.lock().record.draining = draining;
        self.inner.write_record().instrument(self.inner.span.clone()).await?;
        tracing::info!(parent: &self.inner.span, draining, "member record updated");
        Ok(())
    }

    /// Claims `slot` by compare-and-swap, putting `{"owner": me}` on our lease. On success
    /// the epoch is the Txn's revision. A [`MembershipError::Timeout`] leaves the outcome
    /// unknown; the view will show it.
    pub async fn claim(&self, slot: Slot, expect: ClaimExpect) -> Result<ClaimOutcome, MembershipError> {
        self.claim_with_replica(slot, expect, None).await
    }

    /// [`Membership::claim`] naming the slot's replica in the claim. An owner records a
    /// new replica with `ClaimExpect::Epoch(its own epoch)`: the write moves the slot's
    /// fencing epoch forward, and everyone sees which node may continue the slot's
    /// durable channels if the owner is lost.
    pub async fn claim_with_replica(
        &self,
        slot: Slot,
        expect: ClaimExpect,
        replica: Option<&NodeId>,
    ) -> Result<ClaimOutcome, MembershipError> {
        self.inner.ensure_running()?;
        let lease = self.inner.lock().lease.ok_or(MembershipError::NoLease)?;
        let key = self.inner.keys.slot(slot);
        let cmp = match expect {
            ClaimExpect::Vacant => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            // Epoch(0) would match an absent key; -1 matches nothing.
            ClaimExpect::Epoch(e) => {
                let e = i64::try_from(e).ok().filter(|e| *e > 0).unwrap_or(-1);
                Compare::mod_revision(key.clone(), CompareOp::Equal, e)
            }
        };
        let value = record::encode_claim(&self.inner.me, replica)?;
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.inner.client.kv_client();
        let resp = match self.inner.bounded("claim", kv.txn(txn)).await {
            Err(e) if e.is_lease_not_found() => {
                self.inner.lease_suspect.notify_one();
                return Err(MembershipError::NoLease);
            }
            r => r?,
        };
        let span = tracing::info_span!(parent: &self.inner.span, "slot", slot = slot.get());
        if resp.succeeded() {
            let revision = resp.header().map_or(0, |h| h.revision());
            let epoch = u64::try_from(revision)
                .ok()
                .filter(|e| *e > 0)
                .ok_or(MembershipError::Protocol { op: "claim", detail: format!("txn revision {revision}") })?;
            span.in_scope(|| tracing::info!(epoch, ?expect, "claimed"));
            return Ok(ClaimOutcome::Claimed { epoch });
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => {
                g.kvs().first().and_then(|kv| match record::decode_claim(kv.value(), kv.mod_revision()) {
                    Ok(c) => Some(c),
                    Err(error) => {
                        span.in_scope(|| tracing::warn!(%error, "current claim does not decode"));
                        None
                    }
                })
            }
            _ => None,
        });
        span.in_scope(|| tracing::debug!(?expect, ?current, "claim lost"));
        Ok(ClaimOutcome::Lost { current })
    }

    /// Leaves the cluster: stops the background task, then revokes the lease, which
    /// deletes our record and every claim on it. Later calls on any clone fail with
    /// [`MembershipError::Stopped`]; calling `leave` again is a no-op.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        let inner = &self.inner;
        inner.stop.cancel();
        inner.tracker.wait().await;
        let lease = {
            let mut st = inner.lock();
            st.deadline = None;
            st.lease.take()
        };
        let Some(lease) = lease else { return Ok(()) };
        let mut c = inner.client.lease_client();
        inner.bounded("lease revoke", c.revoke(lease)).instrument(inner.span.clone()).await?;
        tracing::info!(parent: &inner.span, lease, "left the cluster");
        Ok(())
    }
}

fn validate(cfg: &MembershipConfig, me: &MemberRecord) -> Result<(), MembershipError> {
    let bad = |m: &str| Err(MembershipError::Config(m.to_owned()));
    if cfg.endpoints.is_empty() {
        return bad("no etcd endpoints");
    }
    if cfg.ttl < Duration::from_secs(1) || cfg.ttl.subsec_nanos() != 0 {
        return bad("ttl must be a whole number of seconds, at least 1");
    }
    if cfg.keepalive.is_zero() || cfg.ttl.mul_f64(0.99).saturating_sub(Duration::from_secs(1)) <= cfg.keepalive {
        return bad("keepalive must be positive and shorter than ttl*0.99 - 1s, or the owner deadline lapses");
    }
    if cfg.relist_interval.is_zero() || cfg.connect_timeout.is_zero() {
        return bad("relist_interval and connect_timeout must be positive");
    }
    for addr in [me.quic_addr, me.client_addr] {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(MembershipError::Config(format!("advertised address {addr} is not reachable by peers")));
        }
    }
    Ok(())
}

/// HTTP/2 ping period on the etcd connection. The pings find a silently dead connection
/// (a partition leaves no RST) so that the client reconnects; etcd's default
/// `--grpc-keepalive-min-time` is 5 s and clients pinging more often are sent away.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(6);

/// Runs an etcd request with a time bound.
async fn bounded<T>(
    op: &'static str,
    after: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MembershipError> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(MembershipError::Etcd { op, source }),
        Err(_) => Err(MembershipError::Timeout { op, after }),
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain data, consistent after every statement: a panic elsewhere
        // cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure_running(&self) -> Result<(), MembershipError> {
        if self.stop.is_cancelled() {
            Err(MembershipError::Stopped)
        } else {
            Ok(())
        }
    }

    /// An etcd request bounded by the TTL.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, MembershipError> {
        bounded(op, self.cfg.ttl, fut).await
    }

    /// Grants a fresh lease, puts our record on it, and makes it current.
    async fn register(&self) -> Result<i64, MembershipError> {
        let mut leases = self.client.lease_client();
        let sent = Instant::now();
        let ttl_secs = i64::try_from(self.cfg.ttl.as_secs()).unwrap_or(i64::MAX);
        let grant = self.bounded("lease grant", leases.grant(ttl_secs, None)).await?;
        if grant.ttl() <= 0 || !grant.error().is_empty() {
            return Err(MembershipError::Protocol {
                op: "lease grant",
                detail: format!("ttl {} error {:?}", grant.ttl(), grant.error()),
            });
        }
        let id = grant.id();
        let write = self.record_write.lock().await;
        let record = self.lock().record.clone();
        let value = record::encode_member(&record)?;
        let mut kv = self.client.kv_client();
        let put = kv.put(self.keys.node(&self.me), value, Some(PutOptions::new().with_lease(id).with_prev_key()));
        let resp = match self.bounded("register", put).await {
            Ok(r) => r,
            Err(e) => {
                drop(write);
                self.revoke_quietly(id).await;
                return Err(e);
            }
        };
        if let Some(prev) = resp.prev_key().filter(|p| p.lease() != 0) {
            tracing::warn!(prev_lease = prev.lease(), "replaced a member record under another lease");
        }
        let revision = resp.header().map(|h| h.revision()).and_then(|r| u64::try_from(r).ok());
        let mut st = self.lock();
        st.lease = Some(id);
        st.deadline = deadline(sent, grant.ttl());
        st.registered = revision;
        drop(st);
        tracing::info!(lease = id, ttl = grant.ttl(), "registered member record");
        Ok(id)
    }

    /// Re-puts our record on the current lease.
    async fn write_record(&self) -> Result<(), MembershipError> {
        let _w = self.record_write.lock().await;
        let (record, lease) = {
            let st = self.lock();
            (st.record.clone(), st.lease)
        };
        let lease = lease.ok_or(MembershipError::NoLease)?;
        let value = record::encode_member(&record)?;
        let mut kv = self.client.kv_client();
        let put = kv.put(self.keys.node(&self.me), value, Some(PutOptions::new().with_lease(lease)));
        match self.bounded("put record", put).await {
            Err(e) if e.is_lease_not_found() => {
                self.lease_suspect.notify_one();
                Err(MembershipError::NoLease)
            }
            r => r.map(|_| ()),
        }
    }

    /// Best-effort revoke of a lease we are abandoning (it expires anyway).
    async fn revoke_quietly(&self, lease: i64) {
        let mut c = self.client.lease_client();
        if let Err(error) = self.bounded("lease revoke", c.revoke(lease)).await {
            tracing::warn!(lease, %error, "could not revoke an abandoned lease; it will expire");
        }
    }
}

/// `sent + ttl*0.99 - 1 s`, never earlier than `sent`.
fn deadline(sent: Instant, ttl_secs: i64) -> Option<Instant> {
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).ok()?);
    Some(sent + ttl.mul_f64(0.99).saturating_sub(Duration::from_secs(1)))
}

/// Capped exponential backoff for retries against etcd, counting failures so that an
/// outage logs one `warn` when it starts and one `info` when it ends, not one per retry.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    cap: Duration,
    failures: u32,
}

/// First retry delay after a failure.
const BACKOFF_BASE: Duration = Duration::from_millis(100);

impl Backoff {
    /// Caps at `cap`, the keepalive period for the lease task, so that a recovered etcd
    /// is used before the deadline lapses.
    fn new(cap: Duration) -> Backoff {
        Backoff { next: BACKOFF_BASE.min(cap), cap, failures: 0 }
    }

    /// Records a failure; true when it is the first since the last success.
    fn failed(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures == 1
    }

    /// Records a success; returns how many failures it ends, if any.
    fn succeeded(&mut self) -> Option<u32> {
        self.next = BACKOFF_BASE.min(self.cap);
        let ended = std::mem::take(&mut self.failures);
        (ended > 0).then_some(ended)
    }

    /// Sleeps for the current delay (or until `stop`); returns false when stopped.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}
