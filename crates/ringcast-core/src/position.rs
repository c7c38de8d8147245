//! Stream positions: `(epoch, offset)`.
//!
//! `offset` counts sequenced messages in a channel, starting at 1 for the first message;
//! offset 0 names the empty stream. `epoch` identifies one continuous history of a
//! channel: it changes only when continuity cannot be proved (state was lost), so a
//! client holding `(epoch, offset)` can always tell whether it missed something.
//!
//! On the wire the epoch is a decimal string (JavaScript numbers cannot hold every
//! `u64`), the offset a JSON number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Identifier of one continuous history of a channel. Never 0 for a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(u64);

/// Position of a message within an epoch. Invariant: offsets within an epoch are
/// gapless and strictly increasing; `Offset::ZERO` means "before the first message".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// A stream position: the last message a reader holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: Epoch,
    pub offset: Offset,
}

/// Why a position could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("epoch must be a non-empty decimal string of a non-zero 64-bit integer")]
    BadEpoch,
}

impl Epoch {
    /// A live epoch. Returns `None` for 0, which is reserved for "no epoch".
    #[must_use]
    pub fn new(raw: u64) -> Option<Epoch> {
        (raw != 0).then_some(Epoch(raw))
    }

    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

impl Offset {
    pub const ZERO: Offset = Offset(0);

    #[must_use]
    pub fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Epoch {
    type Err = PositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only plain ASCII digits: no sign, no whitespace, no leading '+'.
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PositionError::BadEpoch);
        }
        s.parse::<u64>().ok().and_then(Epoch::new).ok_or(PositionError::BadEpoch)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Offset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_parses_only_plain_nonzero_decimals() {
        assert_eq!("42".parse::<Epoch>(), Ok(Epoch(42)));
        assert_eq!("18446744073709551615".parse::<Epoch>(), Ok(Epoch(u64::MAX)));
        for bad in ["", "0", "-1", "+1", " 1", "1.0", "abc", "18446744073709551616", "0x10"] {
            assert!(bad.parse::<Epoch>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn epoch_is_a_string_on_the_wire() {
        let pos = StreamPosition { epoch: Epoch(7), offset: Offset(3) };
        let json = serde_json::to_string(&pos).unwrap_or_default();
        assert_eq!(json, r#"{"epoch":"7","offset":3}"#);
        let back: StreamPosition =
            serde_json::from_str(&json).unwrap_or(StreamPosition { epoch: Epoch(1), offset: Offset(0) });
        assert_eq!(back, pos);
        assert!(serde_json::from_str::<StreamPosition>(r#"{"epoch":7,"offset":3}"#).is_err());
        assert!(serde_json::from_str::<StreamPosition>(r#"{"epoch":"7","offset":-1}"#).is_err());
    }
}
