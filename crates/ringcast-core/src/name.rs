//! Validated names. Raw strings never cross module boundaries for these: parse once at
//! the edge, then carry the newtype.
//!
//! ## Channel grammar
//! ```text
//! channel   = [namespace ":"] rest          ; 1..=255 bytes in total
//! namespace = 1*64( a-z / 0-9 / "_" / "-" )
//! rest      = 1*( ALPHA / DIGIT / "_" / "-" / "." / ":" / "@" / "=" / "," / ";" / "/" / "+" / "!" / "~" / "|" / "$" )
//! ```
//! A channel without `:` belongs to the namespace `default`. The characters `*` and `>`
//! are reserved for pattern subscriptions, `#` for server-owned namespaces (such as
//! `#user:`), and whitespace, control characters and non-ASCII are never allowed, so a
//! channel name is safe in logs and metrics, and in URL paths once `/` is
//! percent-encoded (`%2F`).

use std::fmt;
use std::sync::Arc;

/// The reserved namespace of user registry channels (`#user:{id}`).
pub const USER_NAMESPACE: &str = "#user";
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_BYTES: usize = 255;
/// Longest namespace name, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 64;
/// Longest node id, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Why a name was rejected. The `Display` text is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("character {ch:?} at byte {at} is not allowed")]
    InvalidChar { ch: char, at: usize },
    #[error("the namespace part before ':' is empty")]
    EmptyNamespace,
    #[error("the part after the namespace is empty")]
    EmptyRest,
    #[error("namespaces starting with '#' are reserved for the server")]
    Reserved,
}

/// A valid channel name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// A valid namespace name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceName(Arc<str>);

/// A node's identity in the cluster (also its certificate name).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

/// A connection id, unique within one node for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

fn rest_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:@=,;/+!~|$".contains(&b)
}

fn namespace_char_ok(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

fn first_bad(s: &str, ok: impl Fn(u8) -> bool, base: usize) -> Result<(), NameError> {
    match s.char_indices().find(|&(_, c)| !c.is_ascii() || !ok(c as u8)) {
        Some((at, ch)) => Err(NameError::InvalidChar { ch, at: at + base }),
        None => Ok(()),
    }
}

impl NamespaceName {
    /// The namespace of channels without a `:`.
    pub const DEFAULT: &'static str = "default";

    pub fn new(s: &str) -> Result<NamespaceName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAMESPACE_BYTES {
            return Err(NameError::TooLong { len: s.len(), max: MAX_NAMESPACE_BYTES });
        }
        if s.starts_with('#') {
            return Err(NameError::Reserved);
        }
        first_bad(s, namespace_char_ok, 0)?;
        Ok(NamespaceName(s.into()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ChannelName {
    pub fn new(s: &str) -> Result<ChannelName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_CHANNEL_BYTES {
            return Err(NameError::TooLong { len: s.len(), max: MAX_CHANNEL_BYTES });
        }
        match s.find(':') {
            Some(0) => return Err(NameError::EmptyNamespace),
            Some(i) => {
                let ns = &s[..i];
                if ns.starts_with('#') && ns != USER_NAMESPACE {
                    return Err(NameError::Reserved);
                }
                let ns = ns.strip_prefix('#').unwrap_or(ns);
                if ns.len() > MAX_NAMESPACE_BYTES {
                    return Err(NameError::TooLong { len: ns.len(), max: MAX_NAMESPACE_BYTES });
                }
                first_bad(ns, namespace_char_ok, 0)?;
                if i + 1 == s.len() {
                    return Err(NameError::EmptyRest);
                }
                first_bad(&s[i + 1..], rest_char_ok, i + 1)?;
            }
            None => first_bad(s, rest_char_ok, 0)?,
        }
        Ok(ChannelName(s.into()))
    }

    /// The registry channel of user `id` (`#user:{id}`): direct messages to the user,
    /// and the owner's record of which nodes hold the user's connections.
    pub fn user(id: &str) -> Result<ChannelName, NameError> {
        ChannelName::new(&format!("{USER_NAMESPACE}:{id}"))
    }

    /// Whether the channel is in a server-owned namespace (`#user:`): clients cannot
    /// name it in commands; the server subscribes their own one for them.
    #[must_use]
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('#')
    }

    /// The user of a registry channel (`alice` for `#user:alice`).
    #[must_use]
    pub fn registry_user(&self) -> Option<&str> {
        self.0.strip_prefix(USER_NAMESPACE).and_then(|r| r.strip_prefix(':'))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace part (`default` when the name has no `:`).
    #[must_use]
    pub fn namespace(&self) -> &str {
        match self.0.find(':') {
            Some(i) => &self.0[..i],
            None => NamespaceName::DEFAULT,
        }
    }
}

impl NodeId {
    /// Node ids are DNS host names, so every valid id can be a certificate name (the
    /// cluster's TLS identity) and an etcd key segment: dot-separated labels of 1..=63
    /// lowercase letters, digits and `-`, each starting with a letter and not ending
    /// with `-`; at most 64 bytes in all.
    pub fn new(s: &str) -> Result<NodeId, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NODE_ID_BYTES {
            return Err(NameError::TooLong { len: s.len(), max: MAX_NODE_ID_BYTES });
        }
        first_bad(s, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.', 0)?;
        let mut at = 0;
        for label in s.split('.') {
            let bad = label.is_empty()
                || label.len() > 63
                || !label.starts_with(|c: char| c.is_ascii_lowercase())
                || label.ends_with('-');
            if bad {
                let ch = label.chars().next().unwrap_or('.');
                return Err(NameError::InvalidChar { ch, at });
            }
            at += label.len() + 1;
        }
        Ok(NodeId(s.into()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! str_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
str_impls!(ChannelName);
str_impls!(NamespaceName);
str_impls!(NodeId);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_grammar() {
        for ok in ["scores:nba:lakers", "chat", "a", "chat:room-1.general", "x:a@b=c,d;e/f+g!h~i|j$k"] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
        let c = ChannelName::new("scores:nba:lakers").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.namespace(), "scores");
        let d = ChannelName::new("lobby").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.namespace(), "default");
    }

    #[test]
    fn rejects_each_bad_shape_with_a_reason() {
        assert_eq!(ChannelName::new(""), Err(NameError::Empty));
        assert_eq!(ChannelName::new(":x"), Err(NameError::EmptyNamespace));
        assert_eq!(ChannelName::new("chat:"), Err(NameError::EmptyRest));
        assert_eq!(ChannelName::new("#admin:1"), Err(NameError::Reserved));
        let user = ChannelName::user("alice@example.com").expect("registry channel");
        assert_eq!((user.as_str(), user.namespace()), ("#user:alice@example.com", "#user"));
        assert!(user.is_reserved() && !ChannelName::new("chat:x").expect("valid").is_reserved());
        assert_eq!(user.registry_user(), Some("alice@example.com"));
        assert!(ChannelName::user("a b").is_err() && ChannelName::user("").is_err());
        assert_eq!(ChannelName::new("chat:a b"), Err(NameError::InvalidChar { ch: ' ', at: 6 }));
        assert_eq!(ChannelName::new("chat:a*"), Err(NameError::InvalidChar { ch: '*', at: 6 }));
        assert_eq!(ChannelName::new("chat:>"), Err(NameError::InvalidChar { ch: '>', at: 5 }));
        assert_eq!(ChannelName::new("Chat:x"), Err(NameError::InvalidChar { ch: 'C', at: 0 }));
        assert_eq!(ChannelName::new("chat:\u{7}"), Err(NameError::InvalidChar { ch: '\u{7}', at: 5 }));
        assert_eq!(ChannelName::new("chat:é"), Err(NameError::InvalidChar { ch: 'é', at: 5 }));
        let long = "a".repeat(256);
        assert_eq!(ChannelName::new(&long), Err(NameError::TooLong { len: 256, max: 255 }));
        assert!(ChannelName::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn node_ids_and_namespaces() {
        assert!(NodeId::new("node-1.eu").is_ok());
        assert!(NodeId::new("standalone").is_ok());
        for bad in ["Node", "", "123", "0x1f", "a..b", "-a", "a-", "a.", "node_1", &"a".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
        assert!(NamespaceName::new("scores").is_ok());
        assert!(NamespaceName::new("a:b").is_err());
        assert_eq!(NamespaceName::new("#user"), Err(NameError::Reserved));
    }

    proptest! {
        #[test]
        fn valid_names_round_trip_and_never_panic(s in "\\PC{0,300}") {
            if let Ok(c) = ChannelName::new(&s) {
                prop_assert_eq!(c.as_str(), s.as_str());
                prop_assert!(c.as_str().len() <= MAX_CHANNEL_BYTES);
                prop_assert!(c.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
