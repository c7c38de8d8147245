//! HTTP on the client port: the server API, health, metrics, the WebSocket upgrade and
//! the browser files of [`crate::web`].
//!
//! Every error this module answers, including malformed paths, queries and bodies, is
//! a JSON body `{"error": {"code", "message"}}` with the code's HTTP status (see
//! `proto/openapi.yaml`). Requests hyper itself refuses before routing (431 for too many
//! or too large headers, 400 for an unparsable request head) have empty bodies. Bodies
//! are read with an explicit size limit (`limits.max_frame_bytes`).

use crate::node::Node;
use crate::server::ConnPermit;
use crate::session;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::Either;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use ringcast_core::{ChannelName, ConnId, NamespaceOptions, Offset, Slot};
use ringcast_proto::client::{
    check_history_limit, check_idempotency_key, encode_history, encode_http_error, encode_presence, encode_snapshot,
    Ack, MAX_PRESENCE_MEMBERS,
};
use ringcast_proto::msgpack::{Encoding, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use ringcast_proto::ErrorCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

/// Most channels one broadcast may target.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;
/// Most items of one `POST /v1/publish/batch`.
pub const MAX_BATCH_ITEMS: usize = 1000;

type AppState = Arc<Node>;

/// The router for the client port.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/v1/publish", post(publish))
        .route("/v1/broadcast", post(broadcast))
        .route("/v1/publish/batch", post(publish_batch))
        .route("/v1/cluster", get(cluster_info))
        .route("/v1/admin/drain", post(admin_drain))
        .route("/v1/channels/{channel}", get(channel_info))
        .route("/v1/channels/{channel}/history", get(history))
        .route("/v1/channels/{channel}/presence", get(presence))
        .route("/v1/channels/{channel}/state", get(state))
        .route("/v1/users/{user}", get(user_info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(crate::web::scoreboard))
        .route("/ringcast.js", get(crate::web::ringcast_js))
        .route("/dashboard", get(crate::web::dashboard))
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint; see proto/openapi.yaml") })
        .method_not_allowed_fallback(|| async {
            error(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint")
        })
        .with_state(node)
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn error(code: ErrorCode, message: &str) -> Response {
    error_response(code, message)
}

/// An error answer: the code's HTTP status and the JSON error body.
pub(crate) fn error_response(code: ErrorCode, message: &str) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, encode_http_error(code, message))
}

struct ApiError(ErrorCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

fn api_err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError(code, message.into())
}

/// Constant-time comparison, so the API key cannot be guessed byte by byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

fn has_api_key(node: &Node, headers: &HeaderMap) -> bool {
    match (&node.config.api.key, bearer(headers)) {
        (Some(key), Some(given)) => same_secret(key.as_bytes(), given.as_bytes()),
        _ => false,
    }
}

fn require_api_key(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    if node.config.api.key.is_none() {
        return Err(api_err(ErrorCode::Unauthorized, "the server API is disabled: set api.key in the config"));
    }
    if !has_api_key(node, headers) {
        return Err(api_err(ErrorCode::Unauthorized, "missing or wrong API key (Authorization: Bearer KEY)"));
    }
    Ok(())
}

/// The `{channel}` of a request path.
fn channel_in_path(path: Result<Path<String>, PathRejection>) -> Result<ChannelName, ApiError> {
    let Path(raw) = path.map_err(|e| api_err(ErrorCode::InvalidChannel, format!("bad channel in path: {e}")))?;
    parse_channel(&raw)
}

fn parse_channel(raw: &str) -> Result<ChannelName, ApiError> {
    ChannelName::new(raw).map_err(|e| api_err(ErrorCode::InvalidChannel, format!("invalid channel: {e}")))
}

fn namespace<'n>(node: &'n Node, channel: &ChannelName) -> Result<&'n NamespaceOptions, ApiError> {
    node.namespace(channel).ok_or_else(|| {
        api_err(ErrorCode::UnknownNamespace, format!("namespace {:?} is not configured", channel.namespace()))
    })
}

async fn read_body(node: &Node, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = node.config.limits.max_frame_bytes;
    http_body_util::Limited::new(body, limit).collect().await.map(|c| c.to_bytes()).map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            api_err(ErrorCode::MessageTooLarge, format!("request body is larger than {limit} bytes"))
        } else {
            api_err(ErrorCode::BadRequest, format!("cannot read the request body: {e}"))
        }
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| api_err(ErrorCode::BadRequest, format!("malformed JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The keep-latest key the message updates.
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    channels: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Publishes server-side (ignores `client_publish`). Shared by publish and broadcast.
async fn publish_one(
    node: &Node,
    channel: &ChannelName,
    data: &RawValue,
    (idempotency_key, key): (Option<&str>, Option<&str>),
) -> Result<serde_json::Value, ApiError> {
    let started = Instant::now();
    let ns = namespace(node, channel)?;
    if data.get().len() > ns.max_message_bytes {
        return Err(api_err(
            ErrorCode::MessageTooLarge,
            format!("data is {} bytes; namespace limit is {}", data.get().len(), ns.max_message_bytes),
        ));
    }
    let p = node
        .router
        .publish(
            &crate::hub::PublishRequest { channel, ns, data, idempotency_key, origin: crate::hub::Origin::Api, key },
            node.now(),
        )
        .await
        .map_err(|r| ApiError(r.code, r.message))?;
    node.metrics.publish(crate::metrics::Source::Http);
    node.metrics.publish_latency(started.elapsed());
    let ack =
        Ack { channel: channel.as_str(), epoch: p.position.epoch, offset: p.position.offset, duplicate: p.duplicate };
    Ok(serde_json::to_value(&ack).unwrap_or_default())
}

fn check_key(key: Option<&str>) -> Result<(), ApiError> {
    match key {
        Some(k) => check_idempotency_key(k).map_err(|m| api_err(ErrorCode::InvalidIdempotencyKey, m)),
        None => Ok(()),
    }
}

async fn publish(State(node): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let bytes = read_body(&node, body).await?;
    let b: PublishBody<'_> = parse_json(&bytes)?;
    check_key(b.idempotency_key.as_deref())?;
    if let Some(k) = &b.key {
        ringcast_core::latest::check_key(k).map_err(|m| api_err(ErrorCode::BadRequest, m))?;
    }
    let channel = parse_channel(&b.channel)?;
    let ack = publish_one(&node, &channel, b.data, (b.idempotency_key.as_deref(), b.key.as_deref())).await?;
    Ok(json(StatusCode::OK, ack.to_string()))
}

async fn broadcast(State(node): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let bytes = read_body(&node, body).await?;
    let b: BroadcastBody<'_> = parse_json(&bytes)?;
    check_key(b.idempotency_key.as_deref())?;
    if b.channels.is_empty() || b.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(api_err(ErrorCode::BadRequest, format!("channels must hold 1..={MAX_BROADCAST_CHANNELS} names")));
    }
    // Validate every name before publishing anything, so a typo publishes nothing.
    let channels = b.channels.iter().map(|c| parse_channel(c)).collect::<Result<Vec<_>, _>>()?;
    let mut results: Vec<serde_json::Value> = Vec::with_capacity(channels.len());
    for c in &channels {
        results.push(match publish_one(&node, c, b.data, (b.idempotency_key.as_deref(), None)).await {
            Ok(ack) => ack,
            Err(ApiError(code, message)) => {
                serde_json::json!({"channel": c.as_str(), "error": {"code": code.as_str(), "message": message}})
            }
        });
    }
    Ok(json(StatusCode::OK, serde_json::json!({ "results": results }).to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    items: Vec<PublishBody<'a>>,
}

/// Many server-API publishes in one call (a scoreboard's updates of one tick): every
/// item is checked first (a bad one publishes nothing, 400 naming its index), then they
/// go out in one round trip per owning node. The answer has one result per item, in
/// order: its `ack`, or `{channel, error}`. Items of one channel keep their order.
async fn publish_batch(State(node): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let bytes = read_body(&node, body).await?;
    let b: BatchBody<'_> = parse_json(&bytes)?;
    if b.items.is_empty() || b.items.len() > MAX_BATCH_ITEMS {
        return Err(api_err(ErrorCode::BadRequest, format!("items must hold 1..={MAX_BATCH_ITEMS} publishes")));
    }
    let mut checked = Vec::with_capacity(b.items.len());
    for (i, item) in b.items.iter().enumerate() {
        let at = |ApiError(code, message)| ApiError(code, format!("items[{i}]: {message}"));
        check_key(item.idempotency_key.as_deref()).map_err(at)?;
        if let Some(k) = &item.key {
            ringcast_core::latest::check_key(k).map_err(|m| at(api_err(ErrorCode::BadRequest, m)))?;
        }
        let channel = parse_channel(&item.channel).map_err(at)?;
        let ns = namespace(&node, &channel).map_err(at)?;
        if item.data.get().len() > ns.max_message_bytes {
            let message =
                format!("data is {} bytes; namespace limit is {}", item.data.get().len(), ns.max_message_bytes);
            return Err(at(api_err(ErrorCode::MessageTooLarge, message)));
        }
        checked.push((channel, ns));
    }
    let requests: Vec<crate::hub::PublishRequest<'_>> = b
        .items
        .iter()
        .zip(&checked)
        .map(|(item, (channel, ns))| crate::hub::PublishRequest {
            channel,
            ns,
            data: item.data,
            idempotency_key: item.idempotency_key.as_deref(),
            origin: crate::hub::Origin::Api,
            key: item.key.as_deref(),
        })
        .collect();
    let started = Instant::now();
    let outcomes = node.router.publish_batch(&requests, node.now()).await;
    let results: Vec<serde_json::Value> = requests
        .iter()
        .zip(outcomes)
        .map(|(p, r)| match r {
            Ok(p2) => {
                node.metrics.publish(crate::metrics::Source::Http);
                let ack = Ack {
                    channel: p.channel.as_str(),
                    epoch: p2.position.epoch,
                    offset: p2.position.offset,
                    duplicate: p2.duplicate,
                };
                serde_json::to_value(&ack).unwrap_or_default()
            }
            Err(r) => serde_json::json!({"channel": p.channel.as_str(), "error": {"code": r.code.as_str(), "message": r.message}}),
        })
        .collect();
    node.metrics.publish_latency(started.elapsed());
    Ok(json(StatusCode::OK, serde_json::json!({ "results": results }).to_string()))
}

/// Reads `before` and `limit` from a query string; anything else is an error.
fn parse_history_query(q: Option<&str>) -> Result<(Option<Offset>, u32), ApiError> {
    let (mut before, mut limit) = (None, None);
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v.parse().map_err(|_| {
            api_err(ErrorCode::BadRequest, format!("query parameter {k:?} must be a non-negative integer"))
        })?;
        match k {
            "before" => before = Some(Offset(n)),
            "limit" => limit = Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => {
                return Err(api_err(ErrorCode::BadRequest, format!("unknown query parameter {k:?}; use before, limit")))
            }
        }
    }
    let limit = check_history_limit(limit).map_err(|m| api_err(ErrorCode::BadRequest, m))?;
    Ok((before, limit))
}

/// History may be read with the API key, a client token allowed to subscribe, or
/// nothing at all on anonymous namespaces.
async fn history(
    State(node): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = channel_in_path(path)?;
    let (before, limit) = parse_history_query(query.as_deref())?;
    read_access(&node, &channel, &headers, |id, c| id.may_subscribe(c), "subscribe")?;
    let page =
        node.router.history(&channel, before, limit, node.now()).await.map_err(|r| ApiError(r.code, r.message))?;
    Ok(json(StatusCode::OK, encode_history(None, &session::history_reply(&channel, &page))))
}

/// A keep-latest channel's state: the newest message per key, in offset order, at the
/// position live messages continue from. Read like history: the API key, a client token
/// allowed to subscribe, or nothing on anonymous namespaces.
async fn state(
    State(node): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = channel_in_path(path)?;
    let ns = read_access(&node, &channel, &headers, |id, c| id.may_subscribe(c), "subscribe")?;
    if !ns.keep_latest {
        let message = format!("keep_latest is not enabled in namespace {:?}", channel.namespace());
        return Err(api_err(ErrorCode::NotEnabled, message));
    }
    let st = node.router.state(&channel, node.now()).await.map_err(|r| ApiError(r.code, r.message))?;
    let body = match st.top {
        Some(top) => encode_snapshot(&channel, top, &st.entries, true),
        None => serde_json::json!({"channel": channel.as_str(), "epoch": null, "offset": 0, "entries": []}).to_string(),
    };
    Ok(json(StatusCode::OK, body))
}

/// The namespace of a read (history, state, presence) after its access check: the API
/// key, a client token whose capability `allowed` accepts, or an anonymous namespace.
/// Without credentials an unknown namespace answers like a private one, so callers
/// cannot probe which namespaces exist.
fn read_access<'n>(
    node: &'n Node,
    channel: &ChannelName,
    headers: &HeaderMap,
    allowed: impl Fn(&ringcast_auth::Identity, &ChannelName) -> bool,
    capability: &str,
) -> Result<&'n NamespaceOptions, ApiError> {
    let api_key = has_api_key(node, headers);
    let ns = match node.namespace(channel) {
        Some(ns) => ns,
        None if api_key => {
            let message = format!("namespace {:?} is not configured", channel.namespace());
            return Err(api_err(ErrorCode::UnknownNamespace, message));
        }
        None => {
            return Err(api_err(ErrorCode::Unauthorized, "send the API key or a client token as Authorization: Bearer"))
        }
    };
    if !ns.anonymous && !api_key {
        let token = bearer(headers).ok_or_else(|| {
            api_err(ErrorCode::Unauthorized, "send the API key or a client token as Authorization: Bearer")
        })?;
        let id = node.verifier.verify(token).map_err(|e| api_err(e.code, "invalid token"))?;
        if !allowed(&id, channel) {
            return Err(api_err(ErrorCode::PermissionDenied, format!("no {capability} capability for {channel}")));
        }
    }
    Ok(ns)
}

/// Reads `limit` (members listed, 0..=1000, default 1000) from a query string.
fn parse_presence_query(q: Option<&str>) -> Result<usize, ApiError> {
    let mut limit = MAX_PRESENCE_MEMBERS;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("limit", v)) => {
                limit = v.parse::<usize>().ok().filter(|n| *n <= MAX_PRESENCE_MEMBERS).ok_or_else(|| {
                    api_err(ErrorCode::BadRequest, format!("limit must be 0..={MAX_PRESENCE_MEMBERS}"))
                })?;
            }
            _ => return Err(api_err(ErrorCode::BadRequest, format!("unknown query parameter {pair:?}; use limit"))),
        }
    }
    Ok(limit)
}

/// Who is in a presence channel: with the API key, a client token with a matching
/// `caps.presence` pattern, or nothing on anonymous namespaces. `limit=0` gives counts
/// only.
async fn presence(
    State(node): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = channel_in_path(path)?;
    let limit = parse_presence_query(query.as_deref())?;
    let ns = read_access(&node, &channel, &headers, |id, c| id.may_see_presence(c), "presence")?;
    if !ns.presence {
        let message = format!("presence is not enabled in namespace {:?}", channel.namespace());
        return Err(api_err(ErrorCode::NotEnabled, message));
    }
    let p = node.router.presence(&channel, limit).await.map_err(|r| ApiError(r.code, r.message))?;
    Ok(json(StatusCode::OK, encode_presence(None, &session::presence_reply(&channel, &p))))
}

/// A user's presence from the registry (lazy: computed when asked): online, the
/// number of connections and the nodes holding them, and when last seen (API key).
async fn user_info(
    State(node): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let Path(user) = path.map_err(|e| api_err(ErrorCode::BadRequest, format!("bad user in path: {e}")))?;
    if !node.config.registry.enabled {
        return Err(api_err(ErrorCode::NotEnabled, "the user registry is disabled (registry.enabled = false)"));
    }
    let channel = ChannelName::user(&user)
        .map_err(|e| api_err(ErrorCode::BadRequest, format!("user id cannot have a registry channel: {e}")))?;
    let p = node.router.presence(&channel, MAX_PRESENCE_MEMBERS).await.map_err(|r| ApiError(r.code, r.message))?;
    let mut nodes: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for m in &p.members {
        *nodes.entry(m.node.as_str()).or_insert(0) += 1;
    }
    let body = serde_json::json!({
        "user": user,
        "online": p.stats.clients > 0,
        "connections": p.stats.clients,
        "nodes": nodes.iter().map(|(n, c)| serde_json::json!({"node": n, "connections": c})).collect::<Vec<_>>(),
        "last_seen": p.last_seen,
    });
    Ok(json(StatusCode::OK, body.to_string()))
}

/// Where a channel lives and what this node holds for it (operators; API key).
async fn channel_info(
    State(node): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let channel = channel_in_path(path)?;
    let slot = Slot::of(&channel);
    let info = node.hub.info(&channel);
    let body = serde_json::json!({
        "channel": channel.as_str(),
        "namespace": channel.namespace(),
        "namespace_configured": node.namespace(&channel).is_some(),
        "slot": slot.get(),
        "owner": route_owner(&node, &channel),
        "epoch": info.top.map(|t| t.epoch.to_string()),
        "offset": info.top.map(|t| t.offset.0),
        "history_len": info.history_len,
        "local_subscribers": info.local_subscribers,
    });
    Ok(json(StatusCode::OK, body.to_string()))
}

/// The node that serves a channel now (its slot's claim holder), if any.
fn route_owner(node: &Node, channel: &ChannelName) -> Option<String> {
    match node.router.route(channel) {
        ringcast_core::ownership::Route::Claimed { owner, .. } => Some(owner.to_string()),
        _ => None,
    }
}

/// Starts draining this node, exactly like SIGTERM: not ready, slots handed off (in a
/// cluster), sessions closed with 1001, then the process exits (operators; API key).
async fn admin_drain(State(node): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    tracing::info!("drain requested over the admin API");
    node.drain.cancel();
    Ok(json(StatusCode::ACCEPTED, serde_json::json!({"node": node.node_id.as_str(), "status": "draining"}).to_string()))
}

/// Reads the query of `/v1/cluster`: `slots=owners` asks for every slot's holder.
fn parse_cluster_query(q: Option<&str>) -> Result<bool, ApiError> {
    let mut owners = false;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair {
            "slots=owners" => owners = true,
            _ => {
                return Err(api_err(
                    ErrorCode::BadRequest,
                    format!("unknown query parameter {pair:?}; use slots=owners"),
                ))
            }
        }
    }
    Ok(owners)
}

/// Members and slot ownership as this node sees them (operators; API key). With
/// `?slots=owners`, also `slot_owners`: the holder of each slot by slot number (`null`
/// while vacant), which the dashboard draws as a ring.
async fn cluster_info(
    State(node): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_api_key(&node, &headers)?;
    let with_owners = parse_cluster_query(query.as_deref())?;
    let me = node.node_id.as_str();
    let body = match node.router.cluster() {
        None => {
            let mut body = serde_json::json!({
                "node": me,
                "mode": "standalone",
                "members": [{"node_id": me, "role": "core", "draining": false, "client_addr": null, "quic_addr": null}],
                "slots": {me: usize::from(ringcast_core::SLOTS)},
                "vacant": 0,
            });
            if with_owners {
                body["slot_owners"] = serde_json::json!(vec![me; usize::from(ringcast_core::SLOTS)]);
            }
            body
        }
        Some(c) => {
            let table = c.table();
            // From the same table as the counts, so the two agree.
            let owners: Option<Vec<Option<String>>> = with_owners.then(|| {
                Slot::all()
                    .map(|s| match table.route(s) {
                        ringcast_core::ownership::Route::Claimed { owner, .. } => Some(owner.to_string()),
                        _ => None,
                    })
                    .collect()
            });
            let counts = table.claimed_counts();
            let claimed: usize = counts.values().sum();
            let members: Vec<serde_json::Value> = c
                .members()
                .values()
                .map(|r| {
                    serde_json::json!({
                        "node_id": r.node_id,
                        "role": r.role,
                        "draining": r.draining,
                        "client_addr": r.client_addr.to_string(),
                        "quic_addr": r.quic_addr.to_string(),
                    })
                })
                .collect();
            let slots: serde_json::Map<String, serde_json::Value> =
                counts.into_iter().map(|(n, k)| (n.to_string(), serde_json::json!(k))).collect();
            let mut body = serde_json::json!({
                "node": me,
                "mode": "cluster",
                "members": members,
                "slots": slots,
                "vacant": usize::from(ringcast_core::SLOTS) - claimed,
            });
            if let Some(owners) = owners {
                body["slot_owners"] = serde_json::json!(owners);
            }
            body
        }
    };
    Ok(json(StatusCode::OK, body.to_string()))
}

/// Lets pages of other nodes read a public operational endpoint (the dashboard reads
/// every member's `/metrics` and `/readyz`). These endpoints need no credentials, so
/// the header opens nothing that a non-browser client could not already read.
fn public(mut r: Response) -> Response {
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

async fn healthz(State(node): State<AppState>) -> Response {
    public(json(StatusCode::OK, serde_json::json!({"status": "ok", "node": node.node_id.as_str()}).to_string()))
}

async fn readyz(State(node): State<AppState>) -> Response {
    public(if node.is_ready() {
        json(StatusCode::OK, r#"{"status":"ready"}"#.into())
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#.into())
    })
}

async fn metrics(State(node): State<AppState>) -> Response {
    public(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))],
            node.metrics.render(),
        )
            .into_response(),
    )
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A `Sec-WebSocket-Key` must be base64 of 16 bytes: 22 alphabet chars then `==`.
fn valid_ws_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn reject_handshake(node: &Node, code: ErrorCode, message: &str) -> Response {
    node.metrics.handshakes_rejected.fetch_add(1, Ordering::Relaxed);
    node.metrics.error(code);
    error(code, message)
}

/// Validates an RFC 6455 upgrade request and hands the connection to a session.
async fn ws_upgrade(State(node): State<AppState>, mut req: Request<Body>) -> Response {
    if !node.is_ready() {
        return reject_handshake(&node, ErrorCode::Unavailable, "node is not ready; try another node");
    }
    let h = req.headers();
    if !header_has_token(h, header::UPGRADE, "websocket") || !header_has_token(h, header::CONNECTION, "upgrade") {
        return reject_handshake(&node, ErrorCode::BadRequest, "expected a WebSocket upgrade request");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        // RFC 6455 section 4.4: 426 with the supported version.
        let mut r = reject_handshake(&node, ErrorCode::BadRequest, "only WebSocket version 13 is supported");
        *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).map(|k| k.as_bytes().to_vec()).filter(|k| valid_ws_key(k)) else {
        return reject_handshake(&node, ErrorCode::BadRequest, "missing or malformed Sec-WebSocket-Key");
    };
    // Several Sec-WebSocket-Protocol headers are one list (RFC 7230 section 3.2.2).
    let offered: Vec<&str> = h.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok()).collect();
    let offered = (!offered.is_empty()).then(|| offered.join(","));
    let Some((encoding, subprotocol)) = Encoding::negotiate(offered.as_deref()) else {
        return reject_handshake(
            &node,
            ErrorCode::BadRequest,
            &format!("no supported subprotocol offered; ringcast speaks {SUBPROTOCOL_JSON} and {SUBPROTOCOL_MSGPACK}"),
        );
    };
    let allowed = &node.config.auth.allowed_origins;
    if let Some(origin) = h.get(header::ORIGIN) {
        let ok = allowed.is_empty()
            || allowed.iter().any(|a| a == "*" || origin.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(a)));
        if !ok {
            return reject_handshake(&node, ErrorCode::PermissionDenied, "origin not allowed");
        }
    }
    if !node.admit_handshake() {
        let mut r = reject_handshake(&node, ErrorCode::RateLimited, "too many new connections; retry shortly");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let permit = req.extensions().get::<ConnPermit>().cloned();
    let conn = node.next_conn_id();
    let session_node = node.clone();
    // Two tasks, so that a session without direct writes is not sized for the other kind.
    // Each builds its session's future before awaiting it, so the task holds the session
    // and nothing of the upgrade (hyper's parts and result were 176 bytes of every task).
    if session::direct_writes(&node, encoding) {
        node.tracker.spawn(async move {
            let _permit = permit;
            let session = match on_upgrade.await {
                Ok(upgraded) => direct_session(session_node, upgraded, conn, encoding),
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            session.await;
        });
    } else {
        node.tracker.spawn(async move {
            let _permit = permit;
            let session = match on_upgrade.await {
                Ok(upgraded) => session::run(session_node, TokioIo::new(upgraded), conn, encoding),
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            session.await;
        });
    }
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(&key));
    if let Some(p) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response.body(Body::empty()).unwrap_or_else(|_| error(ErrorCode::Internal, "cannot build the upgrade response"))
}

/// The session of a direct-write connection: the session and the fan-out share the
/// socket. The listener serves plain TCP, so the upgraded connection is that socket; any
/// other stream gets a session without direct writes, boxed so that it does not size
/// every task.
fn direct_session(
    node: Arc<Node>,
    upgraded: hyper::upgrade::Upgraded,
    conn: ConnId,
    encoding: Encoding,
) -> Either<impl Future<Output = ()>, Pin<Box<dyn Future<Output = ()> + Send>>> {
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => Either::Left(session::run_tcp(node, parts.io.into_inner(), parts.read_buf, conn, encoding)),
        Err(upgraded) => Either::Right(Box::pin(session::run(node, TokioIo::new(upgraded), conn, encoding))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_keys_and_queries() {
        assert!(valid_ws_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_ws_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_ws_key(b"dGhlIHNhbXBsZSBub25jZ!=="));
        assert!(matches!(parse_history_query(Some("before=10&limit=5")), Ok((Some(Offset(10)), 5))));
        assert!(matches!(parse_history_query(None), Ok((None, 100))));
        assert!(parse_history_query(Some("limit=0")).is_err());
        assert!(parse_history_query(Some("limit=-1")).is_err());
        assert!(parse_history_query(Some("page=2")).is_err());
        assert!(matches!(parse_cluster_query(None), Ok(false)));
        assert!(matches!(parse_cluster_query(Some("slots=owners")), Ok(true)));
        assert!(parse_cluster_query(Some("slots=all")).is_err());
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd") && !same_secret(b"ab", b"abc"));
    }
}
