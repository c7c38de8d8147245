//! Injected time.
//!
//! The core never reads a clock. Drivers convert their monotonic clock into [`Millis`]
//! (milliseconds since an arbitrary origin fixed for the life of the process) and pass it
//! into every call that depends on time, so tests can drive time explicitly.

use std::time::Duration;

/// A monotonic timestamp in milliseconds since a driver-chosen origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + d`, saturating at the far future.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Millis {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(ms))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Parses a duration written as `<integer><unit>` with unit `ms`, `s`, `m` or `h`
/// (for example `250ms`, `30s`, `2m`). Used by configuration files.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration like \"250ms\", \"30s\", \"2m\" or \"1h\""))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?} has no unit: write for example \"30s\" (units: ms, s, m, h)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{s:?} is too large"))
}

/// Serde adapter for human durations (`"30s"`), for configuration structs.
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", d.as_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "30", "s", "-1s", "1.5s", "3d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(Millis(u64::MAX).saturating_add(Duration::from_secs(1)), Millis(u64::MAX));
        assert_eq!(Millis(5).since(Millis(10)), Duration::ZERO);
    }
}
