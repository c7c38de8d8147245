//! The scoreboard payload: one basketball game's full state, as a publisher of live
//! scores would send it on every update (no deltas on the publisher's side: the server
//! computes those).
//!
//! Every update is the whole state, about 360 bytes of JSON (up to 420 late in a game), with `seq` (the update's
//! number, the tick) and `ts` (its scheduled publish time, microseconds since the load
//! generator started) first, so a viewer can tell how old the state it holds is. Of one
//! update to the next only a few fields change: `seq`, `ts` and `clock` every tick, the
//! score and a player's line sometimes, the last play sometimes. Player lines are an
//! object keyed by player (not an array), so a merge patch names only the line that
//! changed (RFC 7396 replaces arrays whole).
//!
//! Deterministic: game `g` always plays the same game (its own splitmix64 stream).

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Milliseconds in a period (12 minutes).
const PERIOD_MS: u32 = 12 * 60 * 1000;
/// One in this many ticks scores (at 20 updates a second: every 15 s or so).
const SCORE_ONE_IN: u64 = 300;
/// One in this many ticks has another play (rebound, foul, ...): every 4 s or so.
const PLAY_ONE_IN: u64 = 80;

const TEAMS: [&str; 12] = [
    "Harbor Herons",
    "Ridgeview Rams",
    "Lakeside Lynx",
    "Granite Giants",
    "Northport Owls",
    "Cedar Comets",
    "Redwood Rangers",
    "Bay Sharks",
    "Iron Bears",
    "Maple Moose",
    "Sunset Suns",
    "Canyon Coyotes",
];
const PLAYERS: [&str; 6] = ["h1", "h2", "h3", "a1", "a2", "a3"];
const OTHER_PLAYS: [&str; 5] = ["rebound", "foul", "steal", "block", "timeout"];

/// The channel of game `g` in `namespace`.
#[must_use]
pub fn channel(namespace: &str, g: usize) -> String {
    format!("{namespace}:game-{g}")
}

/// The keep-latest key of game `g` (one key per game channel: the whole game state).
#[must_use]
pub fn key(g: usize) -> String {
    format!("game-{g}")
}

/// One team's line.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Side {
    pub team: &'static str,
    pub score: u32,
}

/// The last notable play (players `h*` are the home team's, `a*` the away team's).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Play {
    pub player: &'static str,
    pub play: &'static str,
}

/// A player's box-score line.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Line {
    pub pts: u32,
    pub reb: u32,
    pub ast: u32,
}

/// The full state of one game: the `data` of every update.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GameState {
    pub seq: u64,
    /// Scheduled publish time of this update, microseconds since the generator started.
    pub ts: u64,
    pub period: u32,
    /// Milliseconds left in the period.
    pub clock: u32,
    pub home: Side,
    pub away: Side,
    pub last: Play,
    /// Box score: each player's line.
    #[serde(rename = "box")]
    pub players: BTreeMap<&'static str, Line>,
}

/// A game in progress, advanced one update (tick) at a time.
#[derive(Debug, Clone)]
pub struct Game {
    state: GameState,
    rng: u64,
}

impl Game {
    /// Game `g` at tip-off (`seq` 0, `ts` 0).
    #[must_use]
    pub fn new(g: usize) -> Game {
        let home = TEAMS[g % TEAMS.len()];
        let away = TEAMS[(g * 5 + 7) % TEAMS.len()];
        let away = if away == home { TEAMS[(g + 1) % TEAMS.len()] } else { away };
        Game {
            state: GameState {
                seq: 0,
                ts: 0,
                period: 1,
                clock: PERIOD_MS,
                home: Side { team: home, score: 0 },
                away: Side { team: away, score: 0 },
                last: Play { player: "h1", play: "tip-off" },
                players: PLAYERS.iter().map(|p| (*p, Line::default())).collect(),
            },
            rng: (g as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5C0E_B0A2_D000_0001,
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> &GameState {
        &self.state
    }

    /// Advances the game by one update `tick_ms` long, numbered `seq` and scheduled at
    /// `ts_us`: the clock runs, and sometimes someone scores or makes another play.
    pub fn advance(&mut self, seq: u64, ts_us: u64, tick_ms: u32) {
        let s = &mut self.state;
        s.seq = seq;
        s.ts = ts_us;
        if s.clock > tick_ms {
            s.clock -= tick_ms;
        } else {
            s.period += 1;
            s.clock = PERIOD_MS;
        }
        let roll = splitmix64(&mut self.rng);
        let player = PLAYERS[(roll >> 8) as usize % PLAYERS.len()];
        if roll.is_multiple_of(SCORE_ONE_IN) {
            let points = 1 + (roll >> 16) as u32 % 3;
            let team = if player.starts_with('h') { &mut s.home } else { &mut s.away };
            team.score += points;
            s.players.entry(player).or_default().pts += points;
            if points > 1 && (roll >> 24) % 5 < 3 {
                // An assist by the next player of the same team.
                let at = PLAYERS.iter().position(|p| *p == player).unwrap_or(0);
                let team = at / 3 * 3;
                s.players.entry(PLAYERS[team + (at + 1) % 3]).or_default().ast += 1;
            }
            s.last = Play { player, play: ["free throw", "layup", "3pt shot"][points as usize - 1] };
        } else if roll % PLAY_ONE_IN == 1 {
            let play = OTHER_PLAYS[(roll >> 16) as usize % OTHER_PLAYS.len()];
            if play == "rebound" {
                s.players.entry(player).or_default().reb += 1;
            }
            s.last = Play { player, play };
        }
    }

    /// The state as the JSON text of a publish's `data`.
    #[must_use]
    pub fn encode(&self) -> String {
        // Plain structs, string keys, no failing Serialize impl: cannot fail.
        serde_json::to_string(&self.state).unwrap_or_default()
    }
}

/// The `(seq, ts)` of a state a viewer holds, `None` when it is not a game state.
#[must_use]
pub fn stamp(state: &Value) -> Option<(u64, u64)> {
    Some((state.get("seq")?.as_u64()?, state.get("ts")?.as_u64()?))
}

/// One step of splitmix64.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(g: &Game) -> Value {
        serde_json::from_str(&g.encode()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_update_is_a_full_state_of_300_to_420_bytes_stamped_first() {
        // A whole game (four periods) at 20 updates a second.
        let mut g = Game::new(17);
        for seq in 1..=4 * u64::from(PERIOD_MS / 50) {
            g.advance(seq, seq * 50_000, 50);
            let text = g.encode();
            assert!((300..=420).contains(&text.len()), "{} bytes: {text}", text.len());
            if seq == 500 {
                // Where a 25 s bench run ends.
                assert!((340..=380).contains(&text.len()), "{} bytes: {text}", text.len());
            }
            assert!(text.starts_with(&format!("{{\"seq\":{seq},\"ts\":{},", seq * 50_000)), "{text}");
        }
        assert_eq!(stamp(&parsed(&g)), Some((57_600, 2_880_000_000)));
    }

    #[test]
    fn each_tick_changes_the_clock_and_sometimes_the_score_and_the_last_play() {
        let mut g = Game::new(3);
        let (mut scores, mut plays) = (0, 0);
        for seq in 1..=6000 {
            let before = g.state().clone();
            g.advance(seq, seq, 50);
            let after = g.state();
            assert_ne!(before.clock, after.clock);
            scores += usize::from(before.home.score + before.away.score != after.home.score + after.away.score);
            plays += usize::from(before.last != after.last);
            assert_eq!(before.home.team, after.home.team);
        }
        // About 6000/300 scores and 6000/80 other plays: only "sometimes".
        assert!((5..=60).contains(&scores), "{scores} scores");
        assert!((30..=200).contains(&plays), "{plays} last-play changes");
    }

    #[test]
    fn games_are_deterministic_and_distinct() {
        let (mut a, mut b, mut c) = (Game::new(5), Game::new(5), Game::new(6));
        for seq in 1..=500 {
            a.advance(seq, seq, 50);
            b.advance(seq, seq, 50);
            c.advance(seq, seq, 50);
        }
        assert_eq!(a.encode(), b.encode());
        assert_ne!(a.state().home.team, c.state().home.team);
        assert_ne!(a.state().home.team, a.state().away.team);
        assert_eq!(channel("scores", 5), "scores:game-5");
        assert_eq!(key(5), "game-5");
    }

    #[test]
    fn the_clock_rolls_into_the_next_period() {
        let mut g = Game::new(0);
        for seq in 1..=(PERIOD_MS / 50) as u64 {
            g.advance(seq, seq, 50);
        }
        assert_eq!((g.state().period, g.state().clock), (2, PERIOD_MS));
    }
}
