//! `demo scores`: the built-in demo publisher that feeds the scoreboard page at `/`.
//!
//! It plays a few made-up games on `scores:nba` and `scores:nhl` (one keep-latest `key`
//! per game) and publishes each change with the server API (`POST /v1/publish/batch`,
//! one batch per tick). The first tick publishes every game, so a page opened later
//! gets them all in its snapshot. The game model is a small deterministic state machine
//! driven by a seeded generator, so tests can predict what is published.

use crate::exit::{note, CliError};
use crate::node::NodeApi;
use crate::output::Report;
use serde_json::{json, Value};
use std::time::Duration;

/// Most games one run plays (the teams below).
pub const MAX_GAMES: usize = 8;

/// (channel, home, away, points per score) of each game, in order.
const GAMES: [(&str, &str, &str, u32); MAX_GAMES] = [
    ("scores:nba", "Lakers", "Celtics", 3),
    ("scores:nba", "Bulls", "Knicks", 3),
    ("scores:nhl", "Bruins", "Rangers", 1),
    ("scores:nba", "Heat", "Suns", 3),
    ("scores:nhl", "Oilers", "Flames", 1),
    ("scores:nba", "Warriors", "Nuggets", 3),
    ("scores:nhl", "Kings", "Sharks", 1),
    ("scores:nba", "Spurs", "Jazz", 3),
];

/// One game's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Game {
    pub channel: &'static str,
    pub key: String,
    pub home: &'static str,
    pub away: &'static str,
    pub home_score: u32,
    pub away_score: u32,
    /// Ticks played; the clock is derived from it.
    pub ticks: u32,
    max_points: u32,
}

impl Game {
    /// The message data the scoreboard page reads.
    pub fn data(&self) -> Value {
        let period = self.ticks / 60 + 1;
        let left = 59 - self.ticks % 60;
        json!({
            "home": self.home, "away": self.away,
            "home_score": self.home_score, "away_score": self.away_score,
            "period": format!("P{period}"), "clock": format!("{}:{:02}", left / 5, (left % 5) * 12),
        })
    }
}

/// The demo's games and its random source (xorshift64*, seeded).
#[derive(Debug)]
pub struct Demo {
    pub games: Vec<Game>,
    state: u64,
}

impl Demo {
    /// `games` games (1..=[`MAX_GAMES`]).
    pub fn new(games: usize, seed: u64) -> Result<Demo, CliError> {
        if !(1..=MAX_GAMES).contains(&games) {
            return Err(CliError::Usage(format!("--games must be 1..={MAX_GAMES}")));
        }
        let games = GAMES[..games]
            .iter()
            .enumerate()
            .map(|(i, (channel, home, away, pts))| Game {
                channel,
                key: format!("game-{}", i + 1),
                home,
                away,
                home_score: 0,
                away_score: 0,
                ticks: 0,
                max_points: *pts,
            })
            .collect();
        Ok(Demo { games, state: seed | 1 })
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// One tick: one game scores (for one team, 1..=its max points). Returns its index.
    pub fn tick(&mut self) -> usize {
        let i = usize::try_from(self.next() % self.games.len() as u64).unwrap_or(0);
        let home = self.next().is_multiple_of(2);
        let roll = self.next();
        let g = &mut self.games[i];
        let points = u32::try_from(roll % u64::from(g.max_points)).unwrap_or(0) + 1;
        if home {
            g.home_score += points;
        } else {
            g.away_score += points;
        }
        g.ticks += 1;
        i
    }
}

fn item(g: &Game) -> Value {
    json!({"channel": g.channel, "key": g.key, "data": g.data()})
}

async fn publish(api: &NodeApi, items: Vec<Value>) -> Result<usize, CliError> {
    let answer = api.post("/v1/publish/batch", &json!({ "items": items })).await?;
    let results = answer["results"].as_array().map(Vec::as_slice).unwrap_or_default();
    if let Some(failed) = results.iter().find(|r| r.get("error").is_some()) {
        return Err(CliError::Failed(format!("a demo publish was refused: {failed}")));
    }
    Ok(results.len())
}

/// Plays `games` games: publishes them all, then one update every `interval`, for
/// `ticks` updates (0: until interrupted).
pub async fn scores(
    api: &NodeApi,
    games: usize,
    interval: Duration,
    ticks: u64,
    seed: u64,
) -> Result<Report, CliError> {
    let mut demo = Demo::new(games, seed)?;
    let mut published = publish(api, demo.games.iter().map(item).collect()).await?;
    note(&format!("demo: {} games on scores:nba and scores:nhl; open http://{}/", demo.games.len(), api.addr));
    let mut done = 0;
    while ticks == 0 || done < ticks {
        tokio::time::sleep(interval).await;
        let i = demo.tick();
        published += publish(api, vec![item(&demo.games[i])]).await?;
        done += 1;
    }
    let human = format!("published {published} updates of {} games", demo.games.len());
    Ok(Report { human, json: json!({"published": published, "games": demo.games.len()}) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn games_score_deterministically_and_within_their_rules() {
        let play = |seed| {
            let mut d = Demo::new(4, seed).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..200 {
                let before: u32 = d.games.iter().map(|g| g.home_score + g.away_score).sum();
                let i = d.tick();
                let after: u32 = d.games.iter().map(|g| g.home_score + g.away_score).sum();
                assert!((1..=d.games[i].max_points).contains(&(after - before)));
            }
            d.games
        };
        assert_eq!(play(7), play(7));
        assert_ne!(play(7), play(8));
        let games = play(7);
        assert!(games.iter().all(|g| g.ticks > 10), "every game gets updates: {games:?}");
        assert_eq!(games[0].data()["home"], "Lakers");
        assert!(Demo::new(0, 1).is_err() && Demo::new(MAX_GAMES + 1, 1).is_err());
    }
}
