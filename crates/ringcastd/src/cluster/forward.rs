//! The gateway side: requests forwarded to owners, retried across slot moves.

use super::*;

impl Runtime {
    // ---------------------------------------------------------------------------------
    // Gateway side.

    pub(super) fn register(&self, pending: Pending) -> u64 {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(req, pending);
        req
    }

    pub(super) async fn request(
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
