//! Pattern subscriptions: one subscription for every channel whose name matches.
//!
//! ## Grammar
//! ```text
//! pattern   = namespace ":" segments
//! segments  = *(segment ":") last
//! segment   = "*" / literal
//! last      = segment / ">"
//! literal   = 1*( ALPHA / DIGIT / "_" / "-" / "." / "@" / "=" / "," / ";" / "/" / "+" / "!" / "~" / "|" / "$" )
//! ```
//! A channel name is read as `:`-separated segments. `*` matches exactly one segment
//! (any text without `:`, even empty); `>`, only as the last segment, matches one or
//! more segments (everything after the `:` before it). Everything else matches itself.
//! `scores:nba:*` matches `scores:nba:lakers-celtics` but not `scores:nba:g1:events`;
//! `scores:>` matches every channel of the namespace. A pattern names its namespace
//! literally (so the namespace's options and the token's grants apply to all it
//! matches) and has at least one wildcard (otherwise it is a channel: `subscribe` to
//! it). Channels without a namespace (`default`) and server namespaces (`#user`) are
//! never matched.
//!
//! These are subscription patterns, distinct from the capability globs of tokens
//! ([`crate::caps`]): a token grants a pattern when one of its `subscribe` globs
//! matches the pattern's text ([`crate::caps::ChannelPattern::covers`]).

use crate::name::{ChannelName, NamespaceName, MAX_CHANNEL_BYTES};
use std::fmt;
use std::sync::Arc;

/// A validated subscription pattern. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Arc<str>);

/// Why a pattern was refused. The `Display` text is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternSyntaxError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is {0} bytes long; the limit is {MAX_CHANNEL_BYTES}")]
    TooLong(usize),
    #[error("a pattern starts with its namespace and ':' (e.g. \"scores:nba:*\")")]
    NoNamespace,
    #[error("namespace: {0}")]
    Namespace(crate::name::NameError),
    #[error("segment {0} is empty")]
    EmptySegment(usize),
    #[error("character {ch:?} in segment {segment} is not allowed")]
    InvalidChar { ch: char, segment: usize },
    #[error("'*' and '>' must be a whole segment (segment {0})")]
    PartialWildcard(usize),
    #[error("'>' may only be the last segment")]
    TailNotLast,
    #[error("a pattern needs a '*' or '>' segment; subscribe to the channel instead")]
    NoWildcard,
}

fn literal_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.@=,;/+!~|$".contains(&b)
}

impl Pattern {
    pub fn new(s: &str) -> Result<Pattern, PatternSyntaxError> {
        if s.is_empty() {
            return Err(PatternSyntaxError::Empty);
        }
        if s.len() > MAX_CHANNEL_BYTES {
            return Err(PatternSyntaxError::TooLong(s.len()));
        }
        let Some((ns, rest)) = s.split_once(':') else { return Err(PatternSyntaxError::NoNamespace) };
        NamespaceName::new(ns).map_err(PatternSyntaxError::Namespace)?;
        let segments: Vec<&str> = rest.split(':').collect();
        let mut wildcard = false;
        for (i, seg) in segments.iter().enumerate() {
            let n = i + 1;
            match *seg {
                "*" => wildcard = true,
                ">" if n == segments.len() => wildcard = true,
                ">" => return Err(PatternSyntaxError::TailNotLast),
                "" => return Err(PatternSyntaxError::EmptySegment(n)),
                lit => {
                    if lit.contains(['*', '>']) {
                        return Err(PatternSyntaxError::PartialWildcard(n));
                    }
                    if let Some(ch) = lit.chars().find(|&c| !c.is_ascii() || !literal_char_ok(c as u8)) {
                        return Err(PatternSyntaxError::InvalidChar { ch, segment: n });
                    }
                }
            }
        }
        if !wildcard {
            return Err(PatternSyntaxError::NoWildcard);
        }
        Ok(Pattern(s.into()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace every channel it matches belongs to.
    #[must_use]
    pub fn namespace(&self) -> &str {
        // Invariant: `new` checked that the pattern has a ':'.
        self.0.split_once(':').map_or(&*self.0, |(ns, _)| ns)
    }

    /// Whether `channel` is one of the pattern's channels. Linear in the name's length.
    #[must_use]
    pub fn matches(&self, channel: &ChannelName) -> bool {
        let name = channel.as_str();
        // The namespace must be written out: `x` (namespace `default`) never matches.
        let (Some((pns, prest)), Some((cns, crest))) = (self.0.split_once(':'), name.split_once(':')) else {
            return false;
        };
        if pns != cns {
            return false;
        }
        let mut channel_segments = crest.split(':');
        let mut pattern_segments = prest.split(':').peekable();
        while let Some(p) = pattern_segments.next() {
            if p == ">" && pattern_segments.peek().is_none() {
                // One or more segments left.
                return channel_segments.next().is_some();
            }
            match channel_segments.next() {
                Some(c) if p == "*" || p == c => {}
                _ => return false,
            }
        }
        channel_segments.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn m(pattern: &str, channel: &str) -> bool {
        p(pattern).matches(&ChannelName::new(channel).unwrap_or_else(|e| panic!("{channel}: {e}")))
    }

    #[test]
    fn star_is_one_segment_and_tail_is_one_or_more() {
        assert!(m("scores:nba:*", "scores:nba:lakers"));
        assert!(!m("scores:nba:*", "scores:nba:lakers:events"));
        assert!(!m("scores:nba:*", "scores:nba"));
        assert!(!m("scores:nba:*", "scores:nfl:jets"));
        assert!(m("scores:*:lakers", "scores:nba:lakers"));
        assert!(m("scores:>", "scores:nba"));
        assert!(m("scores:>", "scores:nba:lakers:events"));
        assert!(m("scores:nba:>", "scores:nba:lakers"));
        assert!(!m("scores:nba:>", "scores:nba"));
        assert!(m("scores:*:>", "scores:a:b:c"));
        assert!(!m("scores:*:>", "scores:a"));
        // `*` takes any one segment, an empty one too.
        assert!(m("scores:*:x", "scores::x"));
        // Namespaces are compared whole and must be written out.
        assert!(!m("score:>", "scores:nba"));
        assert!(!m("default:>", "lobby"));
        assert!(!m("scores:>", "#user:alice"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        let e = |s: &str| Pattern::new(s).err();
        assert_eq!(e(""), Some(PatternSyntaxError::Empty));
        assert_eq!(e("*"), Some(PatternSyntaxError::NoNamespace));
        assert!(matches!(e("*:x"), Some(PatternSyntaxError::Namespace(_))));
        assert!(matches!(e("#user:*"), Some(PatternSyntaxError::Namespace(_))));
        assert_eq!(e("scores:nba"), Some(PatternSyntaxError::NoWildcard));
        assert_eq!(e("scores:nba*"), Some(PatternSyntaxError::PartialWildcard(1)));
        assert_eq!(e("scores:a>"), Some(PatternSyntaxError::PartialWildcard(1)));
        assert_eq!(e("scores:>:x"), Some(PatternSyntaxError::TailNotLast));
        assert_eq!(e("scores::*"), Some(PatternSyntaxError::EmptySegment(1)));
        assert_eq!(e("scores:*:"), Some(PatternSyntaxError::EmptySegment(2)));
        assert_eq!(e("scores:a b:*"), Some(PatternSyntaxError::InvalidChar { ch: ' ', segment: 1 }));
        assert_eq!(e(&format!("scores:{}:*", "a".repeat(300))), Some(PatternSyntaxError::TooLong(309)));
        assert_eq!(p("scores:nba:*").namespace(), "scores");
    }

    /// A channel built from segments, and a pattern made from the same segments with
    /// some replaced by wildcards, always match; changing one literal breaks it.
    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,6}"
    }

    proptest! {
        #[test]
        fn wildcards_stand_for_the_segments_they_replace(
            segs in proptest::collection::vec(segment(), 1..6),
            stars in proptest::collection::vec(any::<bool>(), 6),
            tail_at in 0usize..6,
        ) {
            let channel = ChannelName::new(&format!("ns:{}", segs.join(":"))).unwrap_or_else(|e| panic!("{e}"));
            let mut parts: Vec<String> = segs.iter().zip(&stars).map(|(s, &w)| if w { "*".into() } else { s.clone() }).collect();
            let tail = tail_at < parts.len();
            if tail {
                parts.truncate(tail_at + 1);
                parts[tail_at] = ">".into();
            }
            if let Ok(pattern) = Pattern::new(&format!("ns:{}", parts.join(":"))) {
                prop_assert!(pattern.matches(&channel), "{pattern} vs {channel}");
                // One literal segment changed: no longer a match.
                if let Some(i) = parts.iter().position(|s| s != "*" && s != ">") {
                    let mut other = segs.clone();
                    other[i].push('x');
                    let c2 = ChannelName::new(&format!("ns:{}", other.join(":"))).unwrap_or_else(|e| panic!("{e}"));
                    prop_assert!(!pattern.matches(&c2), "{pattern} vs {c2}");
                }
                // One segment more: only a tail still matches.
                let longer = ChannelName::new(&format!("{channel}:more")).unwrap_or_else(|e| panic!("{e}"));
                prop_assert_eq!(pattern.matches(&longer), tail);
            }
        }
    }
}
