//! The scoreboard workload (`ringcast-bench scoreboard`, `scripts/bench --scoreboard`):
//! many viewers of a few live games, each game updated many times a second, a few
//! viewers on bad connections.
//!
//! Defaults are the numbers: 15,000 viewers, 50 games (channels
//! `scores:game-{g}`, one key `game-{g}` each, see [`game`]), 20 updates a second per
//! game, 1 % slow viewers. Viewer `i` watches game `i % games`, subscribed with
//! `"snapshot": true`, and with `"delta": true` when deltas are measured. The feed is one
//! `POST /v1/publish/batch` per tick carrying every game's full state ([`publisher`]),
//! open loop. The run measures, over a window after a warm-up:
//!
//! - deliveries (`message` frames received by viewers), total and per second;
//! - wire bytes received per viewer, per class (fast, slow), and per message;
//! - **staleness** per class ([`stats`]): the age of the newest state each viewer holds,
//!   sampled every [`SAMPLE_PERIOD`];
//! - messages per viewer and conflated `gap`s (slow viewers);
//! - the generator's and the server's CPU.
//!
//! Viewers that lose their connection join again, as clients would ([`viewer`]); slow
//! viewers' disconnects are an outcome, reported per class. The run is valid when every
//! viewer connected, no fast viewer was disconnected or saw a gap, no frame was malformed or refused, every batch was accepted, the feed kept its
//! schedule, every viewer ended with the publisher's last state of its game, and the
//! generator's core stayed below 85 % busy.
//!
//! What it deliberately does not do: start or pin the server (`scripts/bench` does), or
//! compute deltas itself (the server does; the viewers apply them, [`state`]).

pub mod frame;
pub mod game;
pub mod publisher;
pub mod report;
pub mod state;
pub mod stats;
pub mod viewer;

pub use report::{markdown, ScoreOutcome};

use crate::procfs;
use anyhow::bail;
use report::ClassReport;
use stats::{Staleness, Totals};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use viewer::{JoinError, Viewers};

/// Concurrent connection attempts (below `net.core.somaxconn`).
const CONNECT_CONCURRENCY: usize = 200;
/// Longest time to connect and subscribe everyone.
const CONNECT_WAIT: Duration = Duration::from_secs(180);
/// Staleness sampling period: not a multiple of a 50 ms tick, so samples fall at every
/// phase of it.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(97);
/// Longest wait after the last tick for every viewer to hold the last state.
const DRAIN_WAIT: Duration = Duration::from_secs(20);
/// The feed may fall at most this far behind its schedule in a valid run.
const MAX_FEED_LAG: Duration = Duration::from_millis(250);
/// File descriptors the process needs besides one per viewer.
const SPARE_FDS: u64 = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    pub addr: SocketAddr,
    /// The server's process id, for its CPU and memory from /proc.
    pub server_pid: Option<u32>,
    /// The server API key (`api.key`), for `POST /v1/publish/batch`.
    pub api_key: String,
    /// A namespace with `keep_latest = true` and `backpressure = "keep_latest"`.
    pub namespace: String,
    pub viewers: usize,
    pub games: usize,
    /// Updates per second per game.
    pub rate: f64,
    pub slow_fraction: f64,
    /// A slow viewer takes one frame off its socket per interval.
    pub slow_interval: Duration,
    /// `SO_RCVBUF` of slow viewers' sockets.
    pub slow_rcvbuf: u32,
    /// Viewers subscribe with `"delta": true`.
    pub delta: bool,
    pub warmup: Duration,
    pub measure: Duration,
    pub label: String,
}

/// Runs the workload against a running ringcastd (one thread: a `current_thread`
/// runtime, so the generator's CPU is the one core the script pins it to).
pub fn run(spec: ScoreSpec) -> anyhow::Result<ScoreOutcome> {
    if spec.viewers == 0 || spec.games == 0 || !(spec.rate > 0.0 && spec.rate <= 1000.0) {
        bail!("need viewers and games above zero and a rate in (0, 1000] updates per second");
    }
    if !(0.0..=1.0).contains(&spec.slow_fraction) {
        bail!("--slow-fraction must be within 0..=1");
    }
    if let Some(limit) = procfs::open_files_limit() {
        let need = spec.viewers as u64 + SPARE_FDS;
        if limit < need {
            bail!(
                "{} viewers need about {need} file descriptors, but the limit is {limit}: raise it (ulimit -n)",
                spec.viewers
            );
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_local(spec))
}

fn slow_every(fraction: f64) -> usize {
    if fraction > 0.0 {
        ((1.0 / fraction).round() as usize).max(1)
    } else {
        usize::MAX
    }
}

fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

async fn run_local(spec: ScoreSpec) -> anyhow::Result<ScoreOutcome> {
    let base = Instant::now();
    let pid = spec.server_pid.map(|p| p.to_string());
    let every = slow_every(spec.slow_fraction);
    let v = Rc::new(RefCell::new(Viewers::new(spec.viewers, spec.games, every)));
    let slow_viewers = v.borrow().recs.iter().filter(|r| r.slow).count();

    // Tick 0 first, so that every channel has a state for the viewers' snapshots.
    let feed_stats = Rc::new(RefCell::new(publisher::FeedStats::default()));
    let (r, mut w) = publisher::connect(spec.addr).await?;
    tokio::task::spawn_local(publisher::read_responses(r, feed_stats.clone()));
    let mut feed = publisher::Feed::new(&spec.namespace, spec.games);
    publisher::publish_first(&mut feed, &mut w, spec.addr, &spec.api_key, micros_since(base), &feed_stats).await?;

    // One viewer alone first: a refused subscribe (no delta support, wrong namespace)
    // fails the run here with the server's answer instead of 15,000 times.
    let connect_started = Instant::now();
    let channel0 = game::channel(&spec.namespace, 0);
    let slow_rcvbuf = spec.slow_rcvbuf;
    let rcvbuf = move |i: usize| viewer::is_slow(i, every).then_some(slow_rcvbuf);
    match viewer::join(spec.addr, &channel0, spec.delta, rcvbuf(0)).await {
        Ok((s, buf)) => {
            v.borrow_mut().ready += 1;
            spawn_reader(&v, &spec, 0, s, buf);
        }
        Err(JoinError::Refused(e)) if spec.delta => bail!(
            "the server refused a subscribe with \"delta\": true ({e}). This ringcastd does not support deltas \
             yet, or namespace {:?} is not configured with `delta = true`",
            spec.namespace
        ),
        Err(e) => bail!("viewer 0 could not join {channel0}: {e}"),
    }
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 1..spec.viewers {
        let (gate, v, spec) = (gate.clone(), v.clone(), spec.clone());
        tokio::task::spawn_local(async move {
            let permit = gate.acquire().await;
            let channel = game::channel(&spec.namespace, i % spec.games);
            match viewer::join(spec.addr, &channel, spec.delta, rcvbuf(i)).await {
                Ok((s, buf)) => {
                    drop(permit);
                    v.borrow_mut().ready += 1;
                    spawn_reader(&v, &spec, i, s, buf);
                }
                Err(e) => {
                    let mut v = v.borrow_mut();
                    v.connect_failures += 1;
                    v.error(format!("viewer {i}: {e}"));
                }
            }
        });
    }
    let deadline = Instant::now() + CONNECT_WAIT;
    while {
        let v = v.borrow();
        v.ready + v.connect_failures < spec.viewers
    } && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_started.elapsed().as_secs_f64();
    if v.borrow().ready == 0 {
        bail!("no viewer connected: {}", v.borrow().first_error.clone().unwrap_or_default());
    }

    // The feed, open loop from `start`.
    let period = Duration::from_secs_f64(1.0 / spec.rate);
    let ticks = (spec.rate * (spec.warmup + spec.measure).as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let schedule = publisher::Schedule { base, start, period, ticks };
    let feed_task = tokio::task::spawn_local(publisher::run(
        feed,
        w,
        spec.addr,
        spec.api_key.clone(),
        schedule,
        feed_stats.clone(),
    ));

    // The window: totals before and after, staleness sampled in between.
    tokio::time::sleep_until((start + spec.warmup).into()).await;
    let totals = |v: &Viewers| (Totals::of(&v.recs, false), Totals::of(&v.recs, true));
    let before = totals(&v.borrow());
    let server_cpu0 = pid.as_deref().and_then(procfs::cpu_seconds);
    let self_cpu0 = procfs::cpu_seconds("self").unwrap_or(0.0);
    let t0 = Instant::now();
    let (mut fast_age, mut slow_age) = (Staleness::new()?, Staleness::new()?);
    let window_end = start + spec.warmup + spec.measure;
    let mut next = t0;
    loop {
        next += SAMPLE_PERIOD;
        if next >= window_end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        stats::sample(&v.borrow().recs, micros_since(base), &mut fast_age, &mut slow_age);
    }
    tokio::time::sleep_until(window_end.into()).await;
    let secs = t0.elapsed().as_secs_f64();
    let after = totals(&v.borrow());
    let generator_cpu = (procfs::cpu_seconds("self").unwrap_or(0.0) - self_cpu0) / secs;
    let server_cpu = server_cpu0.zip(pid.as_deref().and_then(procfs::cpu_seconds)).map(|(a, b)| (b - a) / secs);
    let server_rss_kib = pid.as_deref().and_then(procfs::rss_kib);

    // Drain: slow viewers read at full speed; everyone should end on the last tick.
    let (feed, _feed_writer) = match feed_task.await {
        Ok(r) => r?,
        Err(e) => bail!("publisher task: {e}"),
    };
    v.borrow_mut().draining = true;
    let deadline = Instant::now() + DRAIN_WAIT;
    while Instant::now() < deadline
        && (v.borrow().recs.iter().any(|r| r.held_seq < ticks) || {
            let fs = feed_stats.borrow();
            fs.answered < fs.batches && fs.first_error.is_none()
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let finals = feed.finals();
    let converged = |slow: bool| {
        let v = v.borrow();
        let matches = |(i, h): (usize, &Option<state::Held>)| {
            v.recs[i].slow == slow && h.as_ref().is_some_and(|h| h.applied.value == finals[i % spec.games])
        };
        v.held.iter().enumerate().filter(|&x| matches(x)).count() as u64
    };
    let (fast_converged, slow_converged) = (converged(false), converged(true));

    let class = |window: Totals, run: Totals, staleness: &Staleness, converged: u64| {
        let per_viewer = |x: u64| if window.viewers > 0 { x as f64 / window.viewers as f64 / secs } else { 0.0 };
        ClassReport {
            window,
            messages_per_viewer_per_s: per_viewer(window.messages),
            wire_bytes_per_viewer_per_s: per_viewer(window.wire_bytes),
            wire_bytes_per_message: window.wire_bytes as f64 / window.messages.max(1) as f64,
            staleness: staleness.summary(),
            converged,
            disconnects: run.disconnects,
            reconnects: run.reconnects,
        }
    };
    let run_totals = (Totals::of(&v.borrow().recs, false), Totals::of(&v.borrow().recs, true));
    let fast = class(after.0.since(&before.0), run_totals.0, &fast_age, fast_converged);
    let slow = class(after.1.since(&before.1), run_totals.1, &slow_age, slow_converged);
    let deliveries = fast.window.messages + slow.window.messages;
    let fs = feed_stats.borrow();
    let vs = v.borrow();
    let mut invalid = Vec::new();
    if vs.connect_failures > 0 || vs.ready < spec.viewers {
        invalid.push(format!("{} of {} viewers connected", vs.ready, spec.viewers));
    }
    let (fast_all, slow_all) = (Totals::of(&vs.recs, false), Totals::of(&vs.recs, true));
    if fast_all.disconnects > 0 {
        invalid.push(format!("fast viewers lost their connection {} times", fast_all.disconnects));
    }
    if fast_all.conflated_gaps + fast_all.other_gaps > 0 {
        invalid.push(format!("fast viewers saw {} gaps", fast_all.conflated_gaps + fast_all.other_gaps));
    }
    if slow_all.other_gaps > 0 {
        invalid.push(format!("slow viewers saw {} gaps that were not conflation", slow_all.other_gaps));
    }
    if vs.errors > 0 {
        invalid.push(format!("{} errors", vs.errors));
    }
    if fs.failed > 0 || fs.answered < fs.batches {
        invalid.push(format!(
            "{} of {} batches refused or unanswered",
            fs.failed + fs.batches - fs.answered,
            fs.batches
        ));
    }
    if fs.max_lag > MAX_FEED_LAG {
        invalid.push(format!("the feed fell {} ms behind its schedule", fs.max_lag.as_millis()));
    }
    if fast_converged < fast_all.viewers || slow_converged < slow_all.viewers {
        // The furthest behind, to tell "did not get there" from "got a different state".
        let behind = vs.recs.iter().enumerate().min_by_key(|(_, r)| r.held_seq);
        let behind = behind.map_or_else(String::new, |(i, r)| {
            format!(" (viewer {i} holds seq {} of {ticks}, {} connection(s) lost)", r.held_seq, r.disconnects)
        });
        invalid.push(format!(
            "final state reached by {fast_converged} of {} fast and {slow_converged} of {} slow viewers{behind}",
            fast_all.viewers, slow_all.viewers
        ));
    }
    if generator_cpu > crate::load::MAX_GENERATOR_CPU {
        invalid.push(format!("load generator {:.0} % busy", generator_cpu * 100.0));
    }
    let first_error = vs.first_error.clone().or_else(|| fs.first_error.clone());
    Ok(ScoreOutcome {
        label: spec.label.clone(),
        delta: spec.delta,
        viewers: spec.viewers,
        slow_viewers,
        games: spec.games,
        rate: spec.rate,
        warmup_s: spec.warmup.as_secs_f64(),
        measure_s: spec.measure.as_secs_f64(),
        connected: vs.ready,
        connect_failures: vs.connect_failures,
        connect_s,
        batches: fs.batches,
        batches_answered: fs.answered,
        batch_errors: fs.failed,
        publisher_max_lag_ms: fs.max_lag.as_secs_f64() * 1000.0,
        offered_deliveries_per_s: vs.ready as f64 * spec.rate,
        deliveries,
        deliveries_per_s: deliveries as f64 / secs,
        fast,
        slow,
        frames_parsed: vs.cache.parsed,
        frames_shared: vs.cache.shared,
        generator_cpu,
        server_cpu,
        server_rss_kib,
        errors: vs.errors,
        first_error,
        valid: invalid.is_empty(),
        invalid_because: invalid,
    })
}

/// Starts viewer `i`'s task (reading fast or slow, rejoining after a disconnect).
fn spawn_reader(v: &Rc<RefCell<Viewers>>, spec: &ScoreSpec, i: usize, s: tokio::net::TcpStream, buf: Vec<u8>) {
    let slow = v.borrow().recs[i].slow;
    let conn = viewer::Conn {
        addr: spec.addr,
        channel: game::channel(&spec.namespace, i % spec.games),
        delta: spec.delta,
        rcvbuf: slow.then_some(spec.slow_rcvbuf),
        slow_interval: slow.then_some(spec.slow_interval),
    };
    tokio::task::spawn_local(viewer::watch(v.clone(), i, conn, s, buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_fraction_to_block_size() {
        assert_eq!(slow_every(0.01), 100);
        assert_eq!(slow_every(0.0), usize::MAX);
        assert_eq!(slow_every(1.0), 1);
        assert_eq!(slow_every(0.3), 3);
    }
}
