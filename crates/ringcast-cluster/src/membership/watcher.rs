//! The watch task: follows `/{cluster}/` and publishes views.
//!
//! List the prefix at revision R, then watch from R + 1 with progress notifications,
//! applying each response's events to the working view and publishing a new
//! [`Arc<View>`](super::View) only when members or claims changed. The watch is dropped
//! and the prefix listed again on `Compacted` (the start revision is gone), on a cancel,
//! error or end of the stream, and every `relist_interval` regardless: etcd has had watch
//! bugs that lose events silently, and a full list is cheap (at most 1024 slots plus the
//! members). Revisions are checked never to go backwards; if they do (etcd restored from
//! an old backup), this warns and keeps the newest list, which is the truth etcd now
//! holds. While etcd is unreachable the last view stays published.

use super::{record, Backoff, Inner, MembershipError, View};
use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest wait between attempts to re-list while etcd is unreachable.
const WATCH_BACKOFF_CAP: Duration = Duration::from_secs(2);

/// How one watch ended.
#[derive(Debug)]
pub(super) enum FollowEnd {
    Stopped,
    /// `relist_interval` elapsed.
    Relist,
    /// The start revision was compacted away.
    Compacted(i64),
    Failed(MembershipError),
}

pub(super) struct Watcher {
    inner: Arc<Inner>,
    /// The working view: the prefix as of `view.revision`.
    view: View,
    /// Highest revision etcd has shown us.
    high: i64,
    tx: watch::Sender<Arc<View>>,
}

impl Watcher {
    pub(super) fn new(inner: &Arc<Inner>) -> Watcher {
        let (tx, _) = watch::channel(Arc::new(View::default()));
        Watcher { inner: inner.clone(), view: View::default(), high: 0, tx }
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.tx.subscribe()
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::new(WATCH_BACKOFF_CAP);
        loop {
            match self.follow().await {
                FollowEnd::Stopped => return,
                FollowEnd::Relist => tracing::debug!(revision = self.view.revision, "periodic re-list"),
                FollowEnd::Compacted(compact_revision) => tracing::warn!(
                    compact_revision,
                    from = self.view.revision + 1,
                    "watch start revision was compacted; re-listing"
                ),
                FollowEnd::Failed(error) => {
                    if backoff.failed() {
                        tracing::warn!(%error, revision = self.view.revision, "watch broke; re-listing");
                    } else {
                        tracing::debug!(%error, "watch broke again");
                    }
                    if !backoff.wait(&self.inner.stop).await {
                        return;
                    }
                }
            }
            let stop = self.inner.stop.clone();
            loop {
                let listed = tokio::select! {
                    () = stop.cancelled() => return,
                    r = self.relist() => r,
                };
                match listed {
                    Ok(()) => break,
                    Err(error) => {
                        if backoff.failed() {
                            tracing::warn!(%error, "cannot list the cluster prefix; keeping the last view");
                        } else {
                            tracing::debug!(%error, "cannot list the cluster prefix");
                        }
                        if !backoff.wait(&self.inner.stop).await {
                            return;
                        }
                    }
                }
            }
            if let Some(failures) = backoff.succeeded() {
                tracing::info!(failures, revision = self.view.revision, "cluster prefix listed again");
            }
        }
    }

    /// Lists the whole prefix and replaces the working view with it.
    pub(super) async fn relist(&mut self) -> Result<(), MembershipError> {
        let inner = self.inner.clone();
        let keys = &inner.keys;
        let mut kv = inner.client.kv_client();
        let resp = inner.bounded("list", kv.get(keys.prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if revision <= 0 {
            return Err(MembershipError::Protocol { op: "list", detail: format!("header revision {revision}") });
        }
        self.observe(revision, "list");
        let mut view = View { revision, ..View::default() };
        for kv in resp.kvs() {
            record::apply_put(&mut view, keys, kv.key(), kv.value(), kv.mod_revision());
        }
        if revision == self.view.revision && (view.members != self.view.members || view.claims != self.view.claims) {
            tracing::warn!(
                revision,
                "re-list differs from the watched view at the same revision: the watch lost events"
            );
        }
        self.view = view;
        self.publish();
        Ok(())
    }

    /// Watches from the working view's revision + 1 until something calls for a re-list.
    pub(super) async fn follow(&mut self) -> FollowEnd {
        let inner = self.inner.clone();
        let opts = WatchOptions::new().with_prefix().with_start_revision(self.view.revision + 1).with_progress_notify();
        let mut client = inner.client.watch_client();
        let created = tokio::select! {
            () = inner.stop.cancelled() => return FollowEnd::Stopped,
            r = inner.bounded("watch", client.watch(inner.keys.prefix(), Some(opts))) => r,
        };
        let mut stream = match created {
            Ok(s) => s,
            Err(e) => return FollowEnd::Failed(e),
        };
        let relist_at = tokio::time::sleep(inner.cfg.relist_interval);
        tokio::pin!(relist_at);
        loop {
            let msg = tokio::select! {
                biased;
                () = inner.stop.cancelled() => return FollowEnd::Stopped,
                () = &mut relist_at => return FollowEnd::Relist,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    return FollowEnd::Failed(MembershipError::Protocol { op: "watch", detail: "stream ended".into() })
                }
                Err(source) => return FollowEnd::Failed(MembershipError::Etcd { op: "watch", source }),
            };
            if resp.compact_revision() > 0 {
                return FollowEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                let detail = format!("watch canceled: {:?}", resp.cancel_reason());
                return FollowEnd::Failed(MembershipError::Protocol { op: "watch", detail });
            }
            self.apply(&resp);
        }
    }

    /// Applies one watch response (events, or a progress notification with none).
    fn apply(&mut self, resp: &WatchResponse) {
        let inner = self.inner.clone();
        let keys = &inner.keys;
        let mut revision = resp.header().map_or(0, |h| h.revision());
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            if kv.mod_revision() <= self.view.revision {
                tracing::warn!(
                    event = kv.mod_revision(),
                    view = self.view.revision,
                    "watch delivered an event at or before the view's revision"
                );
            }
            match ev.event_type() {
                EventType::Put => record::apply_put(&mut self.view, keys, kv.key(), kv.value(), kv.mod_revision()),
                EventType::Delete => record::apply_delete(&mut self.view, keys, kv.key()),
            }
        }
        if revision > 0 {
            self.observe(revision, "watch");
            self.view.revision = self.view.revision.max(revision);
        }
        if !resp.events().is_empty() {
            self.publish();
        }
    }

    /// Checks that etcd's revision never goes backwards.
    fn observe(&mut self, revision: i64, source: &'static str) {
        if revision < self.high {
            tracing::warn!(revision, seen = self.high, source, "etcd revision went backwards (restored from backup?)");
        }
        self.high = self.high.max(revision);
    }

    /// Publishes the working view if its members or claims changed.
    fn publish(&self) {
        let new = &self.view;
        let changed = self.tx.send_if_modified(|cur| {
            if cur.members == new.members && cur.claims == new.claims {
                return false;
            }
            *cur = Arc::new(new.clone());
            true
        });
        if changed {
            tracing::debug!(revision = new.revision, members = new.members.len(), claims = new.claims.len(), "view");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberRecord, Membership, MembershipConfig, Role};
    use ringcast_tests::EtcdServer;
    use tokio_util::sync::CancellationToken;

    /// A watch that starts below the compaction point ends with `Compacted`, and the
    /// re-list that follows yields the current state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_start_revision_ends_the_watch_and_relist_recovers() -> anyhow::Result<()> {
        let etcd = EtcdServer::start()?;
        let mut cfg = MembershipConfig::new(vec![etcd.endpoint()], "compact");
        cfg.ttl = Duration::from_secs(2);
        cfg.keepalive = Duration::from_millis(300);
        let me = MemberRecord {
            node_id: "a".into(),
            quic_addr: ([127, 0, 0, 1], 1).into(),
            client_addr: ([127, 0, 0, 1], 2).into(),
            role: Role::Core,
            draining: false,
            started_at_ms: 0,
        };
        let (m, _views) = Membership::start(cfg, me, CancellationToken::new()).await?;
        let mut w = Watcher::new(&m.inner);
        w.relist().await?;
        let listed_at = w.view.revision;

        let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await?;
        for i in 0..20 {
            c.put(format!("/compact/slots/{i}"), r#"{"owner":"a"}"#, None).await?;
            c.delete(format!("/compact/slots/{i}"), None).await?;
        }
        c.put("/compact/slots/7", r#"{"owner":"a"}"#, None).await?;
        let now = c.get("x", None).await?.header().map_or(0, |h| h.revision());
        c.compact(now, None).await?;

        match w.follow().await {
            FollowEnd::Compacted(at) => assert!(at > listed_at, "compacted at {at}, listed at {listed_at}"),
            other => panic!("expected Compacted, got {other:?}"),
        }
        w.relist().await?;
        assert!(w.view.revision >= now);
        let slots: Vec<u16> = w.view.claims.keys().map(|s| s.get()).collect();
        assert_eq!(slots, vec![7]);
        assert!(w.tx.borrow().claims.len() == 1, "the re-listed view was published");
        m.leave().await?;
        Ok(())
    }
}
