//! The lease task: keeps our lease alive and moves the owner deadline forward.
//!
//! One keepalive stream at a time; one request in flight on it. Every `keepalive` period
//! it records the send time, sends, and waits up to one period for the answer. An answer
//! with TTL > 0 sets the deadline to `sent + TTL*0.99 - 1 s`. TTL 0 (or "lease not found"
//! when opening the stream) means the lease is gone: the deadline becomes `None`, and a
//! new lease is granted and our record re-put on it. Any other failure (stream error or
//! end, no answer in time) drops the stream and retries with capped backoff, leaving the
//! deadline where it was so that it passes if etcd stays away.

use super::{Backoff, Inner, MembershipError};
use std::sync::Arc;
use std::time::Instant;
use tokio::time::MissedTickBehavior;

/// How one keepalive session ended.
enum SessionEnd {
    Stopped,
    LeaseGone,
    Failed(MembershipError),
}

pub(super) async fn run(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.cfg.keepalive);
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        let lease = inner.lock().lease;
        let lease = match lease {
            Some(l) => l,
            None => {
                let registered = tokio::select! {
                    () = inner.stop.cancelled() => return,
                    r = inner.register() => r,
                };
                match registered {
                    Ok(l) => l,
                    Err(error) => {
                        if backoff.failed() {
                            tracing::warn!(%error, "cannot register again; retrying");
                        } else {
                            tracing::debug!(%error, "cannot register again; retrying");
                        }
                        if !backoff.wait(&inner.stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        match session(&inner, lease, &mut backoff).await {
            SessionEnd::Stopped => return,
            SessionEnd::LeaseGone => {
                {
                    let mut st = inner.lock();
                    // `leave` may have taken the lease meanwhile; only clear our own.
                    if st.lease == Some(lease) {
                        st.lease = None;
                        st.deadline = None;
                    }
                }
                tracing::warn!(lease, "lease is gone; claims under it are lost; registering again");
            }
            SessionEnd::Failed(error) => {
                if backoff.failed() {
                    tracing::warn!(lease, %error, "keepalive failed; retrying (the owner deadline is not extended)");
                } else {
                    tracing::debug!(lease, %error, "keepalive failed again");
                }
                if !backoff.wait(&inner.stop).await {
                    return;
                }
            }
        }
    }
}

async fn session(inner: &Inner, lease: i64, backoff: &mut Backoff) -> SessionEnd {
    let period = inner.cfg.keepalive;
    let mut client = inner.client.lease_client();
    // Opening the stream sends one keepalive whose answer etcd-client consumes (it only
    // reports TTL 0 as "lease not found"); the deadline comes from the next round trip,
    // which the interval's immediate first tick starts.
    let opened = tokio::select! {
        () = inner.stop.cancelled() => return SessionEnd::Stopped,
        r = inner.bounded("keepalive open", client.keep_alive(lease)) => r,
    };
    let (mut keeper, mut stream) = match opened {
        Ok(pair) => pair,
        Err(MembershipError::Etcd { source: etcd_client::Error::LeaseKeepAliveError(m), .. })
            if m.contains("lease not found") =>
        {
            return SessionEnd::LeaseGone
        }
        Err(e) => return SessionEnd::Failed(e),
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = inner.stop.cancelled() => return SessionEnd::Stopped,
            () = inner.lease_suspect.notified() => {}
            _ = tick.tick() => {}
        }
        let sent = Instant::now();
        if let Err(source) = keeper.keep_alive().await {
            return SessionEnd::Failed(MembershipError::Etcd { op: "keepalive send", source });
        }
        let answer = tokio::select! {
            () = inner.stop.cancelled() => return SessionEnd::Stopped,
            r = tokio::time::timeout(period, stream.message()) => r,
        };
        let resp = match answer {
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => {
                return SessionEnd::Failed(MembershipError::Protocol { op: "keepalive", detail: "stream ended".into() })
            }
            Ok(Err(source)) => return SessionEnd::Failed(MembershipError::Etcd { op: "keepalive", source }),
            Err(_) => return SessionEnd::Failed(MembershipError::Timeout { op: "keepalive", after: period }),
        };
        if resp.ttl() <= 0 {
            return SessionEnd::LeaseGone;
        }
        let mut st = inner.lock();
        if st.lease != Some(lease) {
            // `leave` took the lease; it is being revoked.
            return SessionEnd::Stopped;
        }
        st.deadline = super::deadline(sent, resp.ttl());
        drop(st);
        if let Some(failures) = backoff.succeeded() {
            tracing::info!(lease, failures, "keepalives succeed again");
        }
        tracing::trace!(lease, ttl = resp.ttl(), "keepalive");
    }
}
