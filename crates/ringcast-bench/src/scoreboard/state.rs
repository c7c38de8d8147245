//! How a viewer rebuilds a game's state from the frames it receives: a full frame
//! replaces it, a delta frame is an RFC 7396 merge patch onto the state of the message
//! at `base`, which must be the last message this viewer received for the key.
//!
//! Thousands of viewers of one game receive the same bytes (the server encodes each
//! frame once per base), so the generator parses and applies each distinct frame once
//! and shares the result: [`Cache`] memoises `(game, offset, base)` to the state it
//! produces. Each viewer still checks that the delta's `base` is the offset it holds,
//! and a cache miss (an entry pruned, or a base nobody else had) computes the state from
//! the viewer's own. Without this, parsing 300k frames a second would need more than
//! the generator's one core.

use super::frame::{Body, Message};
use super::game;
use serde_json::Value;
use std::collections::HashMap;
use std::rc::Rc;

/// Offsets of a game kept in the cache behind its newest (at 20 updates a second,
/// 50 s): a viewer further behind misses and computes its own state.
const KEEP_OFFSETS: u64 = 1000;
/// The `base` under which full frames are cached.
const FULL: u64 = u64::MAX;

/// A game state, parsed, with its stamp.
#[derive(Debug, PartialEq)]
pub struct Applied {
    pub value: Value,
    pub seq: u64,
    /// Scheduled publish time of the update, microseconds since the generator started.
    pub ts_us: u64,
}

impl Applied {
    fn new(value: Value) -> Result<Applied, String> {
        let (seq, ts_us) = game::stamp(&value).ok_or("a state without `seq` and `ts`")?;
        Ok(Applied { value, seq, ts_us })
    }
}

/// What one viewer holds for its game's key: the offset of the last message it received
/// for the key, and the state rebuilt from it.
#[derive(Debug, Clone)]
pub struct Held {
    pub offset: u64,
    pub applied: Rc<Applied>,
}

#[derive(Debug, Default)]
struct GameCache {
    entries: HashMap<(u64, u64), Rc<Applied>>,
    pruned_at: u64,
}

/// The memo of distinct frames, per game (see the module docs).
#[derive(Debug)]
pub struct Cache {
    games: Vec<GameCache>,
    /// Frames parsed (cache misses).
    pub parsed: u64,
    /// Frames answered from the cache.
    pub shared: u64,
}

impl Cache {
    #[must_use]
    pub fn new(games: usize) -> Cache {
        Cache { games: (0..games).map(|_| GameCache::default()).collect(), parsed: 0, shared: 0 }
    }

    /// The state a viewer of `game` holding `held` has after message `m`.
    pub fn apply(&mut self, game: usize, held: Option<&Held>, m: &Message<'_>) -> Result<Held, String> {
        let base = match m.body {
            Body::Full(_) => FULL,
            Body::Delta { base, .. } => {
                let holds = held.map(|h| h.offset);
                if holds != Some(base) {
                    return Err(format!(
                        "delta at offset {} on base {base}, but this viewer holds offset {}",
                        m.offset,
                        holds.map_or_else(|| "none".to_owned(), |o| o.to_string())
                    ));
                }
                base
            }
        };
        let g = self.games.get_mut(game).ok_or_else(|| format!("no game {game}"))?;
        if let Some(a) = g.entries.get(&(m.offset, base)) {
            self.shared += 1;
            return Ok(Held { offset: m.offset, applied: a.clone() });
        }
        let applied = match (m.body, held) {
            (Body::Full(data), _) => {
                Applied::new(serde_json::from_str(data).map_err(|e| format!("state at offset {}: {e}", m.offset))?)?
            }
            (Body::Delta { patch, .. }, Some(h)) => {
                let patch: Value =
                    serde_json::from_str(patch).map_err(|e| format!("patch at offset {}: {e}", m.offset))?;
                let mut value = h.applied.value.clone();
                ringcast_core::delta::apply(&mut value, &patch);
                Applied::new(value)?
            }
            (Body::Delta { .. }, None) => return Err("a delta without a base state".into()),
        };
        self.parsed += 1;
        let applied = Rc::new(applied);
        if m.offset > g.pruned_at + KEEP_OFFSETS {
            g.entries.retain(|(o, _), _| o + KEEP_OFFSETS >= m.offset);
            g.pruned_at = m.offset;
        }
        g.entries.insert((m.offset, base), applied.clone());
        Ok(Held { offset: m.offset, applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(offset: u64, data: &str) -> Message<'_> {
        Message { offset, key: "game-0", body: Body::Full(data) }
    }

    fn delta(offset: u64, base: u64, patch: &str) -> Message<'_> {
        Message { offset, key: "game-0", body: Body::Delta { base, patch } }
    }

    fn ok(c: &mut Cache, held: Option<&Held>, m: &Message<'_>) -> Held {
        c.apply(0, held, m).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn full_then_deltas_rebuild_the_state_and_viewers_share_it() {
        let mut c = Cache::new(1);
        let a = ok(&mut c, None, &full(10, r#"{"seq":1,"ts":100,"home":{"score":2},"clock":9}"#));
        let a2 = ok(&mut c, None, &full(10, r#"{"seq":1,"ts":100,"home":{"score":2},"clock":9}"#));
        assert!(Rc::ptr_eq(&a.applied, &a2.applied));
        let patch = r#"{"seq":2,"ts":150,"home":{"score":5},"clock":null}"#;
        let b = ok(&mut c, Some(&a), &delta(11, 10, patch));
        let b2 = ok(&mut c, Some(&a2), &delta(11, 10, patch));
        assert!(Rc::ptr_eq(&b.applied, &b2.applied));
        assert_eq!(b.offset, 11);
        assert_eq!((b.applied.seq, b.applied.ts_us), (2, 150));
        assert_eq!(b.applied.value, serde_json::json!({"seq":2,"ts":150,"home":{"score":5}}));
        assert_eq!((c.parsed, c.shared), (2, 2));
    }

    #[test]
    fn a_delta_must_be_on_the_offset_the_viewer_holds() {
        let mut c = Cache::new(1);
        let a = ok(&mut c, None, &full(10, r#"{"seq":1,"ts":100}"#));
        let e = c.apply(0, Some(&a), &delta(13, 12, r#"{"seq":3}"#)).err();
        assert!(e.is_some_and(|e| e.contains("base 12") && e.contains("holds offset 10")));
        assert!(c.apply(0, None, &delta(13, 12, "{}")).is_err_and(|e| e.contains("holds offset none")));
        assert!(c.apply(0, None, &full(14, r#"{"no":"stamp"}"#)).is_err());
        assert!(c.apply(0, None, &full(15, "{")).is_err());
        assert!(c.apply(7, None, &full(16, r#"{"seq":1,"ts":1}"#)).is_err());
    }

    #[test]
    fn old_offsets_are_pruned_and_a_miss_is_computed_from_the_viewers_own_state() {
        let mut c = Cache::new(1);
        let old = ok(&mut c, None, &full(1, r#"{"seq":1,"ts":1,"x":1}"#));
        ok(&mut c, None, &full(KEEP_OFFSETS + 5, r#"{"seq":9,"ts":9}"#));
        assert!(!c.games[0].entries.contains_key(&(1, FULL)));
        let next = ok(&mut c, Some(&old), &delta(2, 1, r#"{"seq":2,"ts":2}"#));
        assert_eq!(next.applied.value, serde_json::json!({"seq":2,"ts":2,"x":1}));
    }
}
