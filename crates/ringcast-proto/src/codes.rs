//! Stable error and close codes: everything a client can see go wrong.
//!
//! The string names are API: they never change meaning. The tables in
//! `proto/client.md` list the same codes; `tests/codes_doc.rs` fails if they drift.

/// An error a client can receive, in a WebSocket `error` reply or an HTTP error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownCommand,
    NotConnected,
    AlreadyConnected,
    Unauthorized,
    TokenExpired,
    PermissionDenied,
    InvalidChannel,
    UnknownNamespace,
    InvalidPosition,
    InvalidIdempotencyKey,
    MessageTooLarge,
    TooManyChannels,
    AlreadySubscribed,
    NotSubscribed,
    NotEnabled,
    RateLimited,
    Conflict,
    NotFound,
    MethodNotAllowed,
    Unavailable,
    InsufficientReplicas,
    CoordinationUnavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownCommand,
        ErrorCode::NotConnected,
        ErrorCode::AlreadyConnected,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidChannel,
        ErrorCode::UnknownNamespace,
        ErrorCode::InvalidPosition,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooManyChannels,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::NotEnabled,
        ErrorCode::RateLimited,
        ErrorCode::Conflict,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Unavailable,
        ErrorCode::InsufficientReplicas,
        ErrorCode::CoordinationUnavailable,
        ErrorCode::Internal,
    ];

    /// The stable wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::AlreadyConnected => "already_connected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::UnknownNamespace => "unknown_namespace",
            ErrorCode::InvalidPosition => "invalid_position",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NotEnabled => "not_enabled",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InsufficientReplicas => "insufficient_replicas",
            ErrorCode::CoordinationUnavailable => "coordination_unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the HTTP API answers with for this code.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::UnknownCommand
            | ErrorCode::InvalidChannel
            | ErrorCode::InvalidPosition
            | ErrorCode::InvalidIdempotencyKey
            | ErrorCode::NotConnected
            | ErrorCode::AlreadyConnected
            | ErrorCode::AlreadySubscribed
            | ErrorCode::NotSubscribed
            | ErrorCode::NotEnabled
            | ErrorCode::TooManyChannels => 400,
            ErrorCode::Unauthorized | ErrorCode::TokenExpired => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound | ErrorCode::UnknownNamespace => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable | ErrorCode::InsufficientReplicas | ErrorCode::CoordinationUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closed a WebSocket connection. Codes 4000-4999 are ringcast's own;
/// the close frame's reason text is the name below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client asked to close.
    Normal,
    /// 1001: the node is shutting down or draining; reconnect (to any node) and resume.
    GoingAway,
    /// 1002: the peer broke RFC 6455 framing.
    ProtocolError,
    /// 1003: a binary frame was sent; this protocol uses text frames.
    UnsupportedData,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload,
    /// 1009: a frame or message was larger than `limits.max_frame_bytes`.
    MessageTooBig,
    /// 4001: `connect` failed authentication. Get a valid token before reconnecting.
    Unauthorized,
    /// 4002: the session's token expired without a `refresh`. Get a new token, reconnect.
    TokenExpired,
    /// 4003: no `connect` command arrived within `connect_timeout`.
    ConnectTimeout,
    /// 4008: the client read too slowly and its send queue overflowed. Resume with `since`.
    SlowConsumer,
    /// 4009: the client kept sending commands above its rate limit.
    RateLimited,
    /// 4010: the client did not answer pings within the heartbeat timeout.
    HeartbeatTimeout,
}

impl CloseCode {
    /// Every code, in documentation order.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::ConnectTimeout,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
        CloseCode::HeartbeatTimeout,
    ];

    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::Unauthorized => 4001,
            CloseCode::TokenExpired => 4002,
            CloseCode::ConnectTimeout => 4003,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4009,
            CloseCode::HeartbeatTimeout => 4010,
        }
    }

    /// The reason text sent in the close frame.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away: reconnect",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::ConnectTimeout => "connect_timeout",
            CloseCode::SlowConsumer => "slow_consumer: resume with since",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
        }
    }

    /// Whether a client should reconnect on its own after this close.
    #[must_use]
    pub fn reconnect(self) -> bool {
        matches!(self, CloseCode::GoingAway | CloseCode::SlowConsumer | CloseCode::HeartbeatTimeout)
    }
}
