//! Channel capability patterns, as carried in client tokens.
//!
//! A pattern is a channel name in which `*` matches any run of characters (including
//! none and including `:`): `chat:*` grants every channel of the `chat` namespace,
//! `scores:nba:*` one league, `*` everything. Matching is linear-time (no backtracking
//! blow-up on hostile patterns).

use crate::name::{ChannelName, MAX_CHANNEL_BYTES};

/// A validated capability pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern(String);

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is longer than {MAX_CHANNEL_BYTES} bytes")]
    TooLong,
    #[error("character {0:?} is not allowed in a pattern")]
    InvalidChar(char),
}

impl ChannelPattern {
    pub fn new(s: &str) -> Result<ChannelPattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > MAX_CHANNEL_BYTES {
            return Err(PatternError::TooLong);
        }
        if let Some(c) = s.chars().find(|&c| !(c.is_ascii_graphic() && c != '>' && c != '#' && c != '"')) {
            return Err(PatternError::InvalidChar(c));
        }
        Ok(ChannelPattern(s.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern grants `channel`.
    #[must_use]
    pub fn matches(&self, channel: &ChannelName) -> bool {
        glob(self.0.as_bytes(), channel.as_str().as_bytes())
    }

    /// Whether the pattern grants every channel of the subscription `pattern`: it
    /// matches the pattern's text. Sound because a glob's literal characters never
    /// match `*` or `>` (they are not allowed in one), so the pattern's wildcards fall
    /// inside the glob's own `*` runs, which match whatever a wildcard stands for.
    #[must_use]
    pub fn covers(&self, pattern: &crate::pattern::Pattern) -> bool {
        glob(self.0.as_bytes(), pattern.as_str().as_bytes())
    }
}

/// Greedy glob with single-star backtracking: O(|p| * |s|) worst case, no recursion.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, c: &str) -> bool {
        let p = ChannelPattern::new(p).unwrap_or_else(|e| panic!("{e}"));
        let c = ChannelName::new(c).unwrap_or_else(|e| panic!("{e}"));
        p.matches(&c)
    }

    #[test]
    fn star_matches_any_run() {
        assert!(m("*", "anything:at:all"));
        assert!(m("chat:*", "chat:room1"));
        assert!(!m("chat:*", "chatter:room1"));
        assert!(m("scores:*:lakers", "scores:nba:lakers"));
        assert!(!m("scores:*:lakers", "scores:nba:celtics"));
        assert!(m("chat:room1", "chat:room1"));
        assert!(!m("chat:room1", "chat:room10"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn a_glob_covers_a_subscription_pattern_only_when_it_grants_all_it_matches() {
        let covers = |glob: &str, pattern: &str| {
            let g = ChannelPattern::new(glob).unwrap_or_else(|e| panic!("{e}"));
            g.covers(&crate::pattern::Pattern::new(pattern).unwrap_or_else(|e| panic!("{e}")))
        };
        assert!(covers("scores:*", "scores:>"));
        assert!(covers("scores:*", "scores:nba:*"));
        assert!(covers("*", "chat:>"));
        assert!(covers("scores:nba:*", "scores:nba:*"));
        assert!(!covers("scores:nba:*", "scores:>"));
        assert!(!covers("scores:nba:lakers", "scores:nba:*"));
        assert!(!covers("chat:*", "scores:>"));
    }

    #[test]
    fn hostile_patterns_stay_linear_and_bad_ones_are_refused() {
        let p = "*a".repeat(100);
        let c = "a".repeat(250);
        assert!(!m(&p[..255.min(p.len())], &format!("{c}b")));
        assert_eq!(ChannelPattern::new(""), Err(PatternError::Empty));
        assert_eq!(ChannelPattern::new("a b"), Err(PatternError::InvalidChar(' ')));
        assert_eq!(ChannelPattern::new("a>"), Err(PatternError::InvalidChar('>')));
    }
}
