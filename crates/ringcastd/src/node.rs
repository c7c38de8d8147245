//! The node: shared state of one `ringcastd` process and its lifecycle.
//!
//! [`Node`] bundles what every task needs (config, hub, ring, verifier, metrics, the
//! draining flag, the shutdown token and task tracker). [`serve`] runs the node on a
//! bound listener until `drain` is cancelled. Then it drains: readiness turns false and
//! new upgrades are refused for `node.drain_delay` while existing sessions keep
//! working; then the shutdown token is cancelled, the listener stops, sessions are
//! closed with 1001, and tasks get `node.shutdown_grace` to finish.

use crate::cluster::{Runtime, Settings};
use crate::config::Config;
use crate::hub::{EpochSource, Hub};
use crate::metrics::Metrics;
use crate::router::Router;
use ringcast_auth::{AuthConfigError, Verifier};
use ringcast_core::{ChannelName, ConnId, Millis, NamespaceOptions, NodeId, TokenBucket};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Longest a draining cluster node waits for its slots to be handed off.
pub const DRAIN_SLOTS_TIMEOUT: Duration = Duration::from_secs(30);

/// How often history is expired and idle channels are forgotten.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Errors that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("node.id: {0}")]
    NodeId(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::StartError),
}

/// Shared state of one node.
pub struct Node {
    pub config: Config,
    pub node_id: NodeId,
    pub router: Router,
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    /// Backend hooks (`[hooks]`).
    pub hooks: crate::hooks::Hooks,
    /// The webhook sender (`[webhooks]`), when configured.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    pub metrics: Arc<Metrics>,
    /// Write direct-write connections' messages (`limits.direct_writes`), one per worker
    /// thread, each for a share of the connections.
    pub flushers: Box<[Arc<crate::outbox::Flusher>]>,
    /// Cancelled when the node should start draining (SIGTERM).
    pub drain: CancellationToken,
    /// Cancelled when sessions must close (after the drain delay).
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    namespaces: Arc<HashMap<String, NamespaceOptions>>,
    any_anonymous: bool,
    ready: AtomicBool,
    handshakes: Mutex<TokenBucket>,
    next_conn: AtomicU64,
    origin: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Node {
    /// Builds a node from a validated config; with a `[cluster]` section it also joins
    /// the cluster (`client_addr` is the bound client address, advertised to peers).
    /// `epoch_seed` should be random per process. Cancelling `drain` starts the graceful
    /// shutdown.
    pub async fn start(
        config: Config,
        epoch_seed: u64,
        drain: CancellationToken,
        client_addr: std::net::SocketAddr,
    ) -> Result<Arc<Node>, StartError> {
        let node_id = NodeId::new(&config.node.id).map_err(|e| StartError::NodeId(e.to_string()))?;
        let verifier = Verifier::from_config(&config.auth)?;
        let metrics = Arc::new(Metrics::default());
        let mut namespaces: HashMap<String, NamespaceOptions> =
            config.namespaces.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if config.registry.enabled {
            namespaces.insert(ringcast_core::name::USER_NAMESPACE.to_owned(), config.registry.namespace());
        }
        let namespaces = Arc::new(namespaces);
        let any_anonymous = namespaces.values().any(|n| n.anonymous);
        let origin = Instant::now();
        let handshakes = TokenBucket::new(
            config.limits.handshakes_per_second,
            config.limits.handshakes_per_second.max(1),
            Millis(0),
        );
        let hub = Arc::new(Hub::new(node_id.clone(), EpochSource::new(epoch_seed), metrics.clone()));
        let webhooks = crate::webhooks::Webhooks::new(&config.webhooks, &node_id, epoch_seed, metrics.clone());
        if let Some(w) = &webhooks {
            hub.set_webhooks(w.clone());
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let cluster = match &config.cluster {
            None => None,
            Some(cl) => {
                let settings = Settings {
                    endpoints: cl.membership.clone(),
                    name: cl.name.clone(),
                    role: cl.role,
                    quic_listen: cl.listen,
                    advertise_quic: cl.advertise,
                    client_addr: cl.advertise_client.unwrap_or(client_addr),
                    ca_file: cl.ca_file.clone(),
                    cert_file: cl.cert_file.clone(),
                    key_file: cl.key_file.clone(),
                    lease_ttl: cl.lease_ttl,
                    keepalive: cl.keepalive,
                    claim_delay: cl.claim_delay,
                    peer_queue: crate::cluster::PeerQueueBounds {
                        frames: cl.peer_queue_frames,
                        bytes: cl.peer_queue_bytes,
                    },
                };
                let rt = Runtime::start(
                    &settings,
                    node_id.clone(),
                    hub.clone(),
                    namespaces.clone(),
                    metrics.clone(),
                    tracker.clone(),
                    shutdown.clone(),
                )
                .await?;
                Some(rt)
            }
        };
        Ok(Arc::new(Node {
            router: Router::new(node_id.clone(), hub.clone(), cluster),
            hub,
            node_id,
            verifier,
            hooks: crate::hooks::Hooks::new(config.hooks.clone(), metrics.clone()),
            webhooks,
            flushers: (0..tokio::runtime::Handle::current().metrics().num_workers().max(1))
                .map(|_| {
                    let pacing = ringcast_core::pacing::Pacing {
                        min: config.limits.min_write_interval,
                        busy: config.limits.busy_write_interval,
                    };
                    Arc::new(crate::outbox::Flusher::new(metrics.clone(), pacing))
                })
                .collect(),
            metrics,
            drain,
            shutdown,
            tracker,
            namespaces,
            any_anonymous,
            ready: AtomicBool::new(false),
            handshakes: Mutex::new(handshakes),
            next_conn: AtomicU64::new(1),
            origin,
            config,
        }))
    }

    /// Monotonic time for the core.
    #[must_use]
    pub fn now(&self) -> Millis {
        Millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    #[must_use]
    pub fn namespace(&self, channel: &ChannelName) -> Option<&NamespaceOptions> {
        self.namespaces.get(channel.namespace())
    }

    /// The options of the namespace a pattern subscription covers.
    #[must_use]
    pub fn pattern_namespace(&self, pattern: &ringcast_core::Pattern) -> Option<&NamespaceOptions> {
        self.namespaces.get(pattern.namespace())
    }

    #[must_use]
    pub fn any_anonymous_namespace(&self) -> bool {
        self.any_anonymous
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.drain.is_cancelled()
    }

    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes a handshake token from the node-wide bucket.
    pub fn admit_handshake(&self) -> bool {
        let now = self.now();
        self.handshakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_take(now)
    }
}

/// Serves clients on `listener` until `node.drain` is cancelled, then drains and stops.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    {
        let node = node.clone();
        node.tracker.clone().spawn(async move {
            node.drain.cancelled().await;
            info!(delay_ms = node.config.node.drain_delay.as_millis() as u64, "draining: readyz now 503");
            if let Some(c) = node.router.cluster() {
                c.drain(DRAIN_SLOTS_TIMEOUT).await;
            }
            tokio::time::sleep(node.config.node.drain_delay).await;
            node.shutdown.cancel();
        });
    }
    if node.config.limits.direct_writes {
        for flusher in node.flushers.iter() {
            node.tracker.spawn(flusher.clone().run(node.shutdown.clone()));
        }
    }
    if let Some(w) = &node.webhooks {
        // Sends until shutdown, then what is still queued (the tracker's grace bounds it).
        node.tracker.spawn(w.clone().run(node.shutdown.clone()));
    }
    let sweeper = {
        let node = node.clone();
        node.tracker.clone().spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    biased;
                    () = node.shutdown.cancelled() => break,
                    _ = tick.tick() => { node.hub.sweep(node.now()); }
                }
            }
        })
    };
    node.ready.store(true, Ordering::Release);
    crate::server::accept_loop(node.clone(), listener).await;

    // Draining: the accept loop returned because shutdown was cancelled.
    node.ready.store(false, Ordering::Release);
    if let Some(c) = node.router.cluster() {
        c.leave().await;
    }
    info!(grace_ms = node.config.node.shutdown_grace.as_millis() as u64, "shutting down: closing sessions");
    node.tracker.close();
    if tokio::time::timeout(node.config.node.shutdown_grace, node.tracker.wait()).await.is_err() {
        warn!(open_tasks = node.tracker.len(), "shutdown grace expired; exiting with tasks still open");
    }
    let _ = sweeper.await;
    info!("shutdown complete");
}
