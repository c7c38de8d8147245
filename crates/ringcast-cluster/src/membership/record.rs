//! The etcd record decoders: keys and values under `/{cluster}/`, and how one etcd
//! event changes a [`View`].
//!
//! Everything read from etcd is untrusted input (another version, an operator with
//! `etcdctl`, a bug): decoding never panics, and a key or value that does not parse is
//! reported as a [`DecodeError`] so the caller can log it and skip the entry. A skipped
//! put also removes whatever the view held for that key, because the key's current value
//! is the malformed one.

use super::{MemberRecord, SlotClaim, View};
use ringcast_core::{NameError, NamespaceName, NodeId, Slot, SLOTS};
use serde::{Deserialize, Serialize};

/// Why a key or value under the cluster prefix was skipped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("key is not UTF-8")]
    KeyNotUtf8,
    #[error("node id in the key is invalid: {0}")]
    BadNodeId(NameError),
    #[error("slot {0:?} is not a canonical decimal below {SLOTS}")]
    BadSlot(String),
    #[error("value is not a valid record: {0}")]
    BadValue(serde_json::Error),
    #[error("record says node {record:?} but its key says {key:?}")]
    NodeIdMismatch { key: String, record: String },
    #[error("record carries an invalid address {0}")]
    BadAddress(std::net::SocketAddr),
    #[error("mod_revision {0} is not a valid epoch")]
    BadRevision(i64),
}

/// What a key under the prefix names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Node(NodeId),
    Slot(Slot),
    /// A key this module does not own (e.g. a future `/{cluster}/config`): ignored.
    Other,
}

/// The key layout of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `/{cluster}/`; the trailing `/` keeps cluster `a` from seeing cluster `ab`.
    prefix: String,
}

impl Keys {
    pub(crate) fn new(cluster: &NamespaceName) -> Keys {
        Keys { prefix: format!("/{cluster}/") }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn node(&self, id: &NodeId) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    pub(crate) fn slot(&self, slot: Slot) -> String {
        format!("{}slots/{slot}", self.prefix)
    }

    /// Parses a key read from etcd.
    pub(crate) fn parse(&self, key: &[u8]) -> Result<KeyKind, DecodeError> {
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::KeyNotUtf8)?;
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return Ok(KeyKind::Other);
        };
        if let Some(id) = rest.strip_prefix("nodes/") {
            return NodeId::new(id).map(KeyKind::Node).map_err(DecodeError::BadNodeId);
        }
        if let Some(n) = rest.strip_prefix("slots/") {
            return parse_slot(n).map(KeyKind::Slot).ok_or_else(|| DecodeError::BadSlot(n.to_owned()));
        }
        Ok(KeyKind::Other)
    }
}

/// A slot number in canonical decimal (`"7"`, never `"07"` or `"+7"`), so that two keys
/// can never name the same slot.
fn parse_slot(s: &str) -> Option<Slot> {
    let n: u16 = s.parse().ok()?;
    let slot = Slot::new(n)?;
    (slot.to_string() == s).then_some(slot)
}

/// The value of `/{cluster}/slots/{slot}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimValue {
    owner: String,
    /// The node holding the slot's synchronous replica (absent until one is up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica: Option<String>,
}

pub(crate) fn encode_member(record: &MemberRecord) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(record)
}

pub(crate) fn encode_claim(owner: &NodeId, replica: Option<&NodeId>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&ClaimValue { owner: owner.to_string(), replica: replica.map(ToString::to_string) })
}

/// Decodes a member record stored under `key_id`'s key.
pub(crate) fn decode_member(key_id: &NodeId, value: &[u8]) -> Result<MemberRecord, DecodeError> {
    let record: MemberRecord = serde_json::from_slice(value).map_err(DecodeError::BadValue)?;
    if record.node_id != key_id.as_str() {
        return Err(DecodeError::NodeIdMismatch { key: key_id.to_string(), record: record.node_id });
    }
    for addr in [record.quic_addr, record.client_addr] {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(DecodeError::BadAddress(addr));
        }
    }
    Ok(record)
}

/// Decodes a slot claim; `mod_revision` is the key's, which is the claim's epoch.
pub(crate) fn decode_claim(value: &[u8], mod_revision: i64) -> Result<SlotClaim, DecodeError> {
    let v: ClaimValue = serde_json::from_slice(value).map_err(DecodeError::BadValue)?;
    let owner = NodeId::new(&v.owner).map_err(DecodeError::BadNodeId)?;
    let replica = v.replica.as_deref().map(NodeId::new).transpose().map_err(DecodeError::BadNodeId)?;
    let epoch = u64::try_from(mod_revision).ok().filter(|e| *e > 0).ok_or(DecodeError::BadRevision(mod_revision))?;
    Ok(SlotClaim { owner, epoch, replica })
}

/// Applies a put of `key` = `value` at `mod_revision` to `view`.
pub(crate) fn apply_put(view: &mut View, keys: &Keys, key: &[u8], value: &[u8], mod_revision: i64) {
    let kind = match keys.parse(key) {
        Ok(k) => k,
        Err(error) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), %error, "skipping malformed etcd key");
            return;
        }
    };
    match kind {
        KeyKind::Node(id) => match decode_member(&id, value) {
            Ok(record) => {
                view.members.insert(id, record);
            }
            Err(error) => {
                tracing::warn!(node = %id, %error, "skipping malformed member record");
                view.members.remove(&id);
            }
        },
        KeyKind::Slot(slot) => match decode_claim(value, mod_revision) {
            Ok(claim) => {
                view.claims.insert(slot, claim);
            }
            Err(error) => {
                tracing::warn!(slot = slot.get(), %error, "skipping malformed slot claim");
                view.claims.remove(&slot);
            }
        },
        KeyKind::Other => tracing::debug!(key = %String::from_utf8_lossy(key), "ignoring foreign key"),
    }
}

/// Applies a delete of `key` to `view`.
pub(crate) fn apply_delete(view: &mut View, keys: &Keys, key: &[u8]) {
    match keys.parse(key) {
        Ok(KeyKind::Node(id)) => {
            view.members.remove(&id);
        }
        Ok(KeyKind::Slot(slot)) => {
            view.claims.remove(&slot);
        }
        Ok(KeyKind::Other) | Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Role;
    use proptest::prelude::*;

    fn keys() -> Keys {
        Keys::new(&NamespaceName::new("c1").unwrap_or_else(|e| panic!("{e}")))
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn record(node: &str) -> MemberRecord {
        MemberRecord {
            node_id: node.into(),
            quic_addr: ([127, 0, 0, 1], 7401).into(),
            client_addr: ([127, 0, 0, 1], 7400).into(),
            role: Role::Core,
            draining: false,
            started_at_ms: 1,
        }
    }

    #[test]
    fn keys_round_trip_and_reject_bad_shapes() {
        let k = keys();
        assert_eq!(k.node(&id("n-1.eu")), "/c1/nodes/n-1.eu");
        assert_eq!(k.slot(Slot::new(7).unwrap_or_else(|| panic!())), "/c1/slots/7");
        assert_eq!(k.parse(b"/c1/nodes/n-1.eu").ok(), Some(KeyKind::Node(id("n-1.eu"))));
        assert_eq!(k.parse(b"/c1/slots/1023").ok(), Some(KeyKind::Slot(Slot::new(1023).unwrap_or_else(|| panic!()))));
        for bad in ["/c1/slots/1024", "/c1/slots/07", "/c1/slots/+7", "/c1/slots/-1", "/c1/slots/", "/c1/slots/x"] {
            assert!(matches!(k.parse(bad.as_bytes()), Err(DecodeError::BadSlot(_))), "{bad}");
        }
        assert!(matches!(k.parse(b"/c1/nodes/Bad Name"), Err(DecodeError::BadNodeId(_))));
        assert!(matches!(k.parse(b"/c1/nodes/"), Err(DecodeError::BadNodeId(_))));
        assert!(matches!(k.parse(b"/c1/\xff"), Err(DecodeError::KeyNotUtf8)));
        assert_eq!(k.parse(b"/c1/config").ok(), Some(KeyKind::Other));
        assert_eq!(k.parse(b"/c10/nodes/a").ok(), Some(KeyKind::Other));
    }

    #[test]
    fn values_decode_strictly() {
        let r = record("a");
        let bytes = encode_member(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode_member(&id("a"), &bytes).ok(), Some(r.clone()));
        assert!(matches!(decode_member(&id("b"), &bytes), Err(DecodeError::NodeIdMismatch { .. })));
        let mut extra: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        extra["cert"] = "x".into();
        assert!(decode_member(&id("a"), extra.to_string().as_bytes()).is_err());
        let mut zero = r;
        zero.quic_addr = ([0, 0, 0, 0], 7401).into();
        let zero = encode_member(&zero).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(decode_member(&id("a"), &zero), Err(DecodeError::BadAddress(_))));
        assert!(decode_member(&id("a"), b"{").is_err());
        assert!(decode_member(&id("a"), b"").is_err());

        let claim = encode_claim(&id("a"), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode_claim(&claim, 9).ok(), Some(SlotClaim { owner: id("a"), epoch: 9, replica: None }));
        let claim = encode_claim(&id("a"), Some(&id("b"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode_claim(&claim, 9).ok(), Some(SlotClaim { owner: id("a"), epoch: 9, replica: Some(id("b")) }));
        assert!(decode_claim(br#"{"owner":"a","replica":"B C"}"#, 9).is_err());
        assert!(matches!(decode_claim(&claim, 0), Err(DecodeError::BadRevision(0))));
        assert!(decode_claim(br#"{"owner":"a","prev_epoch":3}"#, 9).is_err());
        assert!(decode_claim(br#"{"owner":"A B"}"#, 9).is_err());
        assert!(decode_claim(br#"{"owner":7}"#, 9).is_err());
    }

    #[test]
    fn a_malformed_put_removes_the_previous_entry() {
        let k = keys();
        let mut v = View::default();
        let good = encode_member(&record("a")).unwrap_or_else(|e| panic!("{e}"));
        apply_put(&mut v, &k, b"/c1/nodes/a", &good, 2);
        apply_put(&mut v, &k, b"/c1/slots/3", br#"{"owner":"a"}"#, 3);
        assert_eq!(v.members.len(), 1);
        assert_eq!(v.claims.len(), 1);
        apply_put(&mut v, &k, b"/c1/nodes/a", b"garbage", 4);
        apply_put(&mut v, &k, b"/c1/slots/3", b"garbage", 5);
        assert!(v.members.is_empty() && v.claims.is_empty());
        apply_put(&mut v, &k, b"/c1/slots/3", br#"{"owner":"a"}"#, 6);
        apply_delete(&mut v, &k, b"/c1/slots/3");
        apply_delete(&mut v, &k, b"/c1/slots/nope");
        assert!(v.claims.is_empty());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(key in proptest::collection::vec(any::<u8>(), 0..40),
                                value in proptest::collection::vec(any::<u8>(), 0..200),
                                rev in any::<i64>()) {
            let k = keys();
            let mut v = View::default();
            let mut full = b"/c1/".to_vec();
            full.extend_from_slice(&key);
            apply_put(&mut v, &k, &full, &value, rev);
            apply_put(&mut v, &k, b"/c1/slots/5", &value, rev);
            apply_put(&mut v, &k, b"/c1/nodes/a", &value, rev);
            apply_delete(&mut v, &k, &full);
        }
    }
}
