//! One load point: N subscriber connections, one open-loop publisher, measurement.
//!
//! Everything runs on one thread (a `current_thread` runtime and a `LocalSet`), so the
//! generator's CPU is one core that `scripts/bench` pins, and its own busy share is a
//! validity check. The publisher follows a fixed schedule (1 ms ticks; message `i` is
//! due at `start + i / rate`) whatever the server does, and latency is measured from
//! that scheduled time, not from when the write happened (no coordinated omission).
//!
//! With `rate == 0` nothing is published: the run measures idle memory after `settle`.
//!
//! Which channels each subscriber takes and where each publish goes is fixed before the
//! run ([`crate::layout`]): one channel for most workloads, many for workload (c). Loss is
//! counted against that layout (every live subscriber of a message's channel must receive
//! it), and a message arriving twice, out of its channel's order or on a channel the
//! connection did not subscribe to is an error.

use crate::layout::{self, Layout};
use crate::payload;
use crate::procfs;
use crate::proto::{self, Event, System};
use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Read buffer reserved per subscriber (grows when a burst needs it).
const READ_CHUNK_BYTES: usize = 4096;
/// Publisher tick.
const TICK: Duration = Duration::from_millis(1);
/// Longest wait after the last publish for every subscriber to receive it.
const DRAIN_WAIT: Duration = Duration::from_secs(15);
/// Highest latency the histograms hold, in microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Concurrent connection attempts (below `net.core.somaxconn`).
const CONNECT_CONCURRENCY: usize = 200;
/// Longest time to connect and subscribe everyone.
const CONNECT_WAIT: Duration = Duration::from_secs(120);
/// The generator's core may be at most this busy for a valid run.
pub const MAX_GENERATOR_CPU: f64 = 0.85;

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub system: System,
    /// Free-form configuration label (`1 thread`, `2 threads`), part of the row key.
    pub config: String,
    /// Workload id (`a`, `b`, `d`, `e`, `f`).
    pub workload: String,
    /// Where subscribers connect (and the publisher, unless `publish_addr`).
    pub addr: SocketAddr,
    /// Where the publisher connects (workload g: another node of a cluster).
    #[serde(default)]
    pub publish_addr: Option<SocketAddr>,
    pub server_pid: Option<u32>,
    /// Further server processes whose CPU counts with `server_pid`'s (workload g: the
    /// other nodes).
    #[serde(default)]
    pub other_server_pids: Vec<u32>,
    pub subscribers: usize,
    pub channels_per_conn: usize,
    /// Workload (c): how many channels there are; each subscriber takes
    /// `channels_per_conn` of them at random ([`Layout::many`]). 0: everyone on the
    /// first `channels_per_conn`, every publish on the first ([`Layout::single`]).
    #[serde(default)]
    pub channels: usize,
    /// Workload (c): the Zipf exponent of the publishes' channels (0: uniform).
    #[serde(default)]
    pub zipf: f64,
    /// Publishes per second, in all (0: idle-memory run).
    pub rate: f64,
    pub payload: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Idle runs: how long to wait before reading the server's memory.
    pub settle: Duration,
    /// Share of subscribers that stop reading once publishing starts (workload f).
    pub stall_fraction: f64,
    /// Count send syscalls of the server with `perf stat` over the window.
    pub perf: bool,
    pub repetition: u32,
    /// When message 0 is due, in ms since the Unix epoch; `None`: 50 ms after the
    /// subscribers are ready. Two generators given times half a period apart publish
    /// through the same seconds without their sends meeting (workload g measures a
    /// cluster and a single node at once this way).
    #[serde(default)]
    pub start_at_unix_ms: Option<u64>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub spec: Spec,
    pub connected: usize,
    pub connect_failures: usize,
    pub stalled: usize,
    pub published: u64,
    pub offered_deliveries_per_s: f64,
    pub achieved_deliveries_per_s: f64,
    /// Deliveries expected by live subscribers (one per message of each of their
    /// channels) but not received by the end of the drain wait.
    pub lost: u64,
    pub disconnects: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub server_cpu: Option<f64>,
    pub server_cpu_s_per_million: Option<f64>,
    /// Of the server's CPU time in the measure window, the share in user space (the
    /// rest is the kernel's, mostly the sends): tells the server's own work from the
    /// system calls it makes. `/proc`'s accounting is in ticks of 10 ms.
    #[serde(default)]
    pub server_user_share: Option<f64>,
    pub generator_cpu: f64,
    /// Share of each CPU's time in the measure window that the hypervisor gave to
    /// someone else (steal), in CPU order: a noisy neighbour shows here, and moves every
    /// run measured in that window alike.
    #[serde(default)]
    pub steal_share_by_cpu: Vec<f64>,
    pub latency_us: Quantiles,
    /// Per publish: time until the last live subscriber had it.
    pub completion_us: Quantiles,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub rss_per_conn_kib: Option<f64>,
    pub wire_bytes_per_delivery: Option<f64>,
    /// Server send-side syscalls (write, writev, sendto, sendmsg) per delivery.
    pub send_syscalls_per_delivery: Option<f64>,
    /// Per delivery in the window, how often the generator's thread went to sleep
    /// (voluntary context switches). A sleep ends with data, woken inside one of the
    /// server's sends (on loopback the sender runs the receiver's wake-up), or with the
    /// publisher's 1 ms tick: so this bounds how often the server's sends had to wake an
    /// idle reader, which makes them dearer.
    #[serde(default)]
    pub generator_sleeps_per_delivery: Option<f64>,
    /// Per delivery in the window, the server's voluntary context switches (all
    /// threads; every node's in workload g).
    #[serde(default)]
    pub server_sleeps_per_delivery: Option<f64>,
    pub valid: bool,
    pub invalid_because: Vec<String>,
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Quantiles {
        Quantiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// State shared by the tasks of one run (one thread, so `Rc<RefCell<_>>`).
struct Shared {
    base: Instant,
    /// Sequence numbers whose scheduled time falls in the window: `[lo, hi)`.
    window_seq: (u64, u64),
    /// Receive-time window is open.
    counting: bool,
    window_deliveries: u64,
    window_bytes: u64,
    latency: Histogram<u64>,
    /// Per sequence number: how many live subscribers have it, and the latest arrival.
    arrivals: Vec<(u32, u64)>,
    /// Per sequence number, the index of its channel.
    schedule: Rc<[u32]>,
    /// Per channel, its live (connected and not stalling) subscribers.
    fan: Vec<u32>,
    ready: usize,
    connect_failures: usize,
    disconnects: u64,
    errors: u64,
    first_error: Option<String>,
    /// Messages received by live subscribers, in all.
    received: u64,
    total: u64,
    /// Scheduled send time of message `seq`, ns since `base`: `start_ns + seq * period`.
    start_ns: u64,
    period_ns: f64,
}

impl Shared {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("histogram bounds")
}

fn now_ns(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `read` of the server `pid` plus that of `spec`'s other server processes (workload g's
/// other nodes); `None` when any of them cannot be read.
fn over_servers<T: std::ops::Add<Output = T>>(
    pid: Option<&str>,
    spec: &Spec,
    read: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let first = read(pid?)?;
    spec.other_server_pids.iter().try_fold(first, |sum, p| Some(sum + read(&p.to_string())?))
}

/// Runs one load point to completion.
pub fn run(spec: Spec) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_local(spec))
}

async fn connect(spec: &Spec, addr: SocketAddr, channels: &[String]) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    if spec.system == System::Ringcast {
        s.write_all(&proto::ws_upgrade(&addr.to_string())).await?;
        loop {
            if s.read_buf(&mut buf).await? == 0 {
                bail!("closed during the WebSocket handshake");
            }
            if let Some((end, ok)) = proto::ws_upgrade_reply(&buf) {
                if !ok {
                    bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..end]).lines().next().unwrap_or(""));
                }
                buf.drain(..end);
                break;
            }
        }
    }
    let hello =
        if channels.is_empty() { proto::publisher_hello(spec.system) } else { proto::subscribe(spec.system, channels) };
    s.write_all(&hello).await?;
    let mut need = proto::ready_count(spec.system, channels.len());
    while need > 0 {
        let mut pos = 0;
        while let Some((n, ev)) = proto::parse(spec.system, &buf[pos..])? {
            pos += n;
            match ev {
                Event::Ready => need -= 1,
                Event::Error(e) => bail!("subscribe refused: {e}"),
                Event::Closed => bail!("closed while subscribing"),
                Event::Ping(pong) => s.write_all(&pong).await?,
                Event::Message(_) | Event::Other => {}
            }
            if need == 0 {
                break;
            }
        }
        buf.drain(..pos);
        if need > 0 && s.read_buf(&mut buf).await? == 0 {
            bail!("closed while subscribing");
        }
    }
    Ok((s, buf))
}

/// A subscriber's read loop: parse pushes, check each channel's order, record latency.
/// `mine`: the indices of the subscriber's channels.
async fn subscriber(
    system: System,
    mut s: TcpStream,
    mut buf: Vec<u8>,
    shared: Rc<RefCell<Shared>>,
    stalls: bool,
    mine: Vec<u32>,
) {
    if stalls {
        // Hold the connection and never read again (workload f): the server's queue
        // and socket buffers for it fill up.
        let _hold = s;
        std::future::pending::<()>().await;
        return;
    }
    let base = shared.borrow().base;
    // Per channel of `mine`, the last sequence number received on it.
    let mut last: Vec<Option<u64>> = vec![None; mine.len()];
    let mut pongs: Vec<u8> = Vec::new();
    loop {
        let now = now_ns(base);
        let mut pos = 0;
        {
            let mut sh = shared.borrow_mut();
            let sh = &mut *sh;
            loop {
                let (n, ev) = match proto::parse(system, &buf[pos..]) {
                    Ok(Some(x)) => x,
                    Ok(None) => break,
                    Err(e) => {
                        sh.error(e.to_string());
                        sh.disconnects += 1;
                        return;
                    }
                };
                pos += n;
                match ev {
                    Event::Message(p) => {
                        let Some((ts, seq)) = payload::decode(p) else {
                            sh.error("payload without a header".into());
                            continue;
                        };
                        let channel = usize::try_from(seq).ok().and_then(|i| sh.schedule.get(i).copied());
                        let Some(k) = channel.and_then(|c| mine.iter().position(|&m| m == c)) else {
                            sh.error(format!("message {seq} on a channel the connection did not subscribe to"));
                            continue;
                        };
                        if let Some(before) = last[k].filter(|&l| seq <= l) {
                            sh.error(format!("message {seq} after {before} on its channel: repeated or out of order"));
                            continue;
                        }
                        last[k] = Some(seq);
                        sh.received += 1;
                        let lat_us = now.saturating_sub(ts) / 1000;
                        if seq >= sh.window_seq.0 && seq < sh.window_seq.1 {
                            let _ = sh.latency.record(lat_us.clamp(1, MAX_LATENCY_US));
                        }
                        if sh.counting {
                            sh.window_deliveries += 1;
                        }
                        if let Some(a) = usize::try_from(seq).ok().and_then(|i| sh.arrivals.get_mut(i)) {
                            a.0 += 1;
                            a.1 = a.1.max(now);
                        }
                    }
                    Event::Ping(p) => pongs.extend_from_slice(&p),
                    Event::Error(e) => sh.error(e),
                    Event::Closed => {
                        sh.disconnects += 1;
                        return;
                    }
                    Event::Ready | Event::Other => {}
                }
            }
        }
        buf.drain(..pos);
        if !pongs.is_empty() {
            if s.write_all(&pongs).await.is_err() {
                shared.borrow_mut().disconnects += 1;
                return;
            }
            pongs.clear();
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                shared.borrow_mut().disconnects += 1;
                return;
            }
            Ok(n) => {
                let mut sh = shared.borrow_mut();
                if sh.counting {
                    sh.window_bytes += n as u64;
                }
            }
        }
    }
}

/// Drains whatever the server answers the publisher (acks, `:N`), counting errors.
async fn publisher_reader(system: System, mut r: tokio::net::tcp::OwnedReadHalf, shared: Rc<RefCell<Shared>>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        while let Ok(Some((n, ev))) = proto::parse(system, &buf[pos..]) {
            pos += n;
            if let Event::Error(e) = ev {
                shared.borrow_mut().error(format!("publisher: {e}"));
            }
        }
        buf.drain(..pos);
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
    }
}

/// The open-loop publisher: message `i` is due at `start + i * period`, on channel
/// `names[schedule[i]]`; every tick writes every due message in one write (pipelined).
async fn publisher(
    system: System,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    shared: Rc<RefCell<Shared>>,
    size: usize,
    names: Vec<String>,
) -> anyhow::Result<()> {
    let (base, total, start_ns, period_ns, schedule) = {
        let sh = shared.borrow();
        (sh.base, sh.total, sh.start_ns, sh.period_ns, sh.schedule.clone())
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut out, mut p) = (0u64, Vec::new(), Vec::new());
    while sent < total {
        tick.tick().await;
        let elapsed = now_ns(base).saturating_sub(start_ns) as f64;
        let due = ((elapsed / period_ns).floor() as u64 + 1).min(total);
        out.clear();
        while sent < due {
            let ts = start_ns + (sent as f64 * period_ns) as u64;
            payload::encode(&mut p, ts, sent, size);
            let channel = usize::try_from(sent).ok().and_then(|i| schedule.get(i)).and_then(|&c| names.get(c as usize));
            let Some(channel) = channel else { bail!("message {sent} has no channel") };
            proto::publish(system, &mut out, channel, &p, sent + 2);
            sent += 1;
        }
        if !out.is_empty() {
            w.write_all(&out).await.context("publisher write")?;
        }
    }
    Ok(())
}

fn perf_start(pid: u32, secs: f64) -> Option<tokio::process::Child> {
    tokio::process::Command::new("perf")
        .args(["stat", "-x", ",", "-e"])
        .arg("syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg")
        .args(["-p", &pid.to_string(), "--", "sleep", &format!("{secs:.3}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .ok()
}

/// Sums the counts of `perf stat -x,` output.
fn perf_sum(text: &str) -> Option<u64> {
    let counts: Vec<u64> = text.lines().filter_map(|l| l.split(',').next()?.trim().parse().ok()).collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// The [`Instant`] of a wall-clock time given in ms since the Unix epoch; an error when
/// that time has passed (the subscribers took longer to connect than the caller allowed).
fn instant_of_unix_ms(at: u64) -> anyhow::Result<Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let ahead = Duration::from_millis(at).checked_sub(now).with_context(|| {
        format!("--start-at {at} passed before the subscribers were ready (now {})", now.as_millis())
    })?;
    Ok(Instant::now() + ahead)
}

async fn run_local(spec: Spec) -> anyhow::Result<Outcome> {
    let base = Instant::now();
    let pid = spec.server_pid.map(|p| p.to_string());
    let rss_before = pid.as_deref().and_then(procfs::rss_kib);
    let total = (spec.rate * (spec.warmup + spec.measure).as_secs_f64()).round() as u64;
    let window = if spec.rate > 0.0 { ((spec.rate * spec.warmup.as_secs_f64()).ceil() as u64, total) } else { (0, 0) };
    let messages = usize::try_from(total).context("too many messages")?;
    let layout = if spec.channels > 0 {
        Layout::many(spec.subscribers, spec.channels, spec.channels_per_conn, messages, spec.zipf, layout::SEED)
    } else {
        Layout::single(spec.subscribers, spec.channels_per_conn, messages)
    };
    let shared = Rc::new(RefCell::new(Shared {
        base,
        window_seq: window,
        counting: false,
        window_deliveries: 0,
        window_bytes: 0,
        latency: histogram()?,
        arrivals: vec![(0, 0); messages],
        schedule: layout.schedule.clone().into(),
        fan: vec![0; layout.names.len()],
        ready: 0,
        connect_failures: 0,
        disconnects: 0,
        errors: 0,
        first_error: None,
        received: 0,
        total,
        start_ns: 0,
        period_ns: if spec.rate > 0.0 { 1e9 / spec.rate } else { 0.0 },
    }));

    // Subscribers, connected in waves.
    let stall_every = if spec.stall_fraction > 0.0 { (1.0 / spec.stall_fraction).round() as usize } else { usize::MAX };
    let gate = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let spec_rc = Rc::new(spec.clone());
    let mut stalled = 0;
    for i in 0..spec.subscribers {
        let stalls = i % stall_every == stall_every - 1;
        stalled += usize::from(stalls);
        let (gate, shared, spec) = (gate.clone(), shared.clone(), spec_rc.clone());
        let (channels, mine) = (layout.names_of(i), layout.subscriptions[i].clone());
        tokio::task::spawn_local(async move {
            let permit = gate.acquire().await;
            match connect(&spec, spec.addr, &channels).await {
                Ok((s, buf)) => {
                    {
                        let mut sh = shared.borrow_mut();
                        sh.ready += 1;
                        if !stalls {
                            for &c in &mine {
                                sh.fan[c as usize] += 1;
                            }
                        }
                    }
                    drop(permit);
                    subscriber(spec.system, s, buf, shared, stalls, mine).await;
                }
                Err(e) => {
                    let mut sh = shared.borrow_mut();
                    sh.connect_failures += 1;
                    if sh.first_error.is_none() {
                        sh.first_error = Some(format!("subscriber: {e:#}"));
                    }
                }
            }
        });
    }
    let connect_deadline = Instant::now() + CONNECT_WAIT;
    loop {
        let (ready, failed) = {
            let sh = shared.borrow();
            (sh.ready, sh.connect_failures)
        };
        if ready + failed == spec.subscribers || Instant::now() > connect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the live subscribers should receive: every message, once per subscriber of
    // its channel.
    let expected: u64 = {
        let sh = shared.borrow();
        sh.schedule.iter().map(|&c| u64::from(sh.fan[c as usize])).sum()
    };

    let mut perf_out = None;
    let (server_cpu, server_times, generator_cpu, rss_after);
    let mut steal_share = Vec::new();
    // Voluntary context switches in the window: (generator, servers).
    let mut switches: (Option<u64>, Option<u64>) = (None, None);
    if spec.rate <= 0.0 {
        tokio::time::sleep(spec.settle).await;
        rss_after = pid.as_deref().and_then(procfs::rss_kib);
        server_cpu = None;
        server_times = None;
        generator_cpu = 0.0;
    } else {
        let (stream, buf) = connect(&spec, spec.publish_addr.unwrap_or(spec.addr), &[]).await.context("publisher")?;
        if !buf.is_empty() {
            bail!("unexpected bytes before publishing");
        }
        let (r, w) = stream.into_split();
        tokio::task::spawn_local(publisher_reader(spec.system, r, shared.clone()));
        let start = match spec.start_at_unix_ms {
            None => Instant::now() + Duration::from_millis(50),
            Some(at) => instant_of_unix_ms(at)?,
        };
        shared.borrow_mut().start_ns = u64::try_from((start - base).as_nanos()).unwrap_or(0);
        tokio::time::sleep_until(start.into()).await;
        let pub_task =
            tokio::task::spawn_local(publisher(spec.system, w, shared.clone(), spec.payload, layout.names.clone()));
        tokio::time::sleep_until((start + spec.warmup).into()).await;
        // Every server process's CPU and sleeps: one node, or all the nodes of a cluster.
        let servers_cpu = || over_servers(pid.as_deref(), &spec, procfs::cpu_times);
        let servers_switches = || over_servers(pid.as_deref(), &spec, procfs::voluntary_switches);
        let cpu0 = servers_cpu();
        let switches0 = (procfs::voluntary_switches("self"), servers_switches());
        let self0 = procfs::cpu_seconds("self").unwrap_or(0.0);
        let steal0 = procfs::steal_seconds_by_cpu();
        let t0 = Instant::now();
        let perf_child = match (spec.perf, spec.server_pid) {
            (true, Some(p)) => perf_start(p, spec.measure.as_secs_f64()),
            _ => None,
        };
        shared.borrow_mut().counting = true;
        tokio::time::sleep_until((start + spec.warmup + spec.measure).into()).await;
        shared.borrow_mut().counting = false;
        let secs = t0.elapsed().as_secs_f64();
        let cpu1 = servers_cpu();
        let switches1 = (procfs::voluntary_switches("self"), servers_switches());
        let self1 = procfs::cpu_seconds("self").unwrap_or(0.0);
        let grew = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
        switches = (grew(switches0.0, switches1.0), grew(switches0.1, switches1.1));
        steal_share = procfs::steal_seconds_by_cpu().iter().zip(&steal0).map(|(b, a)| (b - a) / secs).collect();
        server_times = cpu0.zip(cpu1).map(|(a, b)| b - a);
        server_cpu = server_times.map(|t| t.total() / secs);
        generator_cpu = (self1 - self0) / secs;
        rss_after = pid.as_deref().and_then(procfs::rss_kib);
        if let Some(child) = perf_child {
            if let Ok(out) = child.wait_with_output().await {
                perf_out = perf_sum(&String::from_utf8_lossy(&out.stderr));
            }
        }
        match pub_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.borrow_mut().error(format!("{e:#}")),
            Err(e) => shared.borrow_mut().error(format!("publisher task: {e}")),
        }
        // Drain: wait until every live subscriber has every message of its channels.
        let deadline = Instant::now() + DRAIN_WAIT;
        while shared.borrow().received < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let sh = shared.borrow();
    let measure = spec.measure.as_secs_f64();
    let achieved = sh.window_deliveries as f64 / measure;
    // Every live subscriber of a message's channel should have it: count what is
    // missing (a message received twice is an error, so it cannot hide a loss).
    let lost = expected.saturating_sub(sh.received);
    let mut completion = histogram()?;
    let start_ns = sh.start_ns;
    for (seq, (count, last)) in sh.arrivals.iter().enumerate().take(window.1 as usize).skip(window.0 as usize) {
        let fan = sh.schedule.get(seq).map_or(0, |&c| sh.fan[c as usize]);
        if *count >= fan && fan > 0 {
            let scheduled = start_ns + (seq as f64 * sh.period_ns) as u64;
            let _ = completion.record((last.saturating_sub(scheduled) / 1000).clamp(1, MAX_LATENCY_US));
        }
    }
    let deliveries_window = sh.window_deliveries.max(1) as f64;
    let mut invalid = Vec::new();
    if sh.connect_failures > 0 {
        invalid.push(format!("{} connect failures", sh.connect_failures));
    }
    if spec.rate > 0.0 {
        if lost > 0 {
            invalid.push(format!("{lost} deliveries lost"));
        }
        if sh.disconnects > 0 {
            invalid.push(format!("{} disconnects", sh.disconnects));
        }
        if sh.errors > 0 {
            invalid.push(format!("{} errors", sh.errors));
        }
        if generator_cpu > MAX_GENERATOR_CPU {
            invalid.push(format!("load generator {:.0}% busy", generator_cpu * 100.0));
        }
    }
    let rss_per_conn = rss_before
        .zip(rss_after)
        .filter(|_| sh.ready > 0)
        .map(|(a, b)| (b.saturating_sub(a)) as f64 / (sh.ready + usize::from(spec.rate > 0.0)) as f64);
    Ok(Outcome {
        connected: sh.ready,
        connect_failures: sh.connect_failures,
        stalled,
        published: total,
        offered_deliveries_per_s: if total > 0 { spec.rate * expected as f64 / total as f64 } else { 0.0 },
        achieved_deliveries_per_s: achieved,
        lost,
        disconnects: sh.disconnects,
        errors: sh.errors,
        first_error: sh.first_error.clone(),
        server_cpu,
        server_cpu_s_per_million: server_cpu.filter(|_| achieved > 0.0).map(|c| c * 1e6 / achieved),
        server_user_share: server_times.filter(|t| t.total() > 0.0).map(|t| t.user / t.total()),
        generator_cpu,
        steal_share_by_cpu: steal_share,
        latency_us: Quantiles::of(&sh.latency),
        completion_us: Quantiles::of(&completion),
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        rss_per_conn_kib: rss_per_conn,
        wire_bytes_per_delivery: (spec.rate > 0.0).then(|| sh.window_bytes as f64 / deliveries_window),
        send_syscalls_per_delivery: perf_out.map(|n| n as f64 / deliveries_window),
        generator_sleeps_per_delivery: switches.0.filter(|_| achieved > 0.0).map(|n| n as f64 / deliveries_window),
        server_sleeps_per_delivery: switches.1.filter(|_| achieved > 0.0).map(|n| n as f64 / deliveries_window),
        valid: invalid.is_empty(),
        invalid_because: invalid,
        spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_summed() {
        let text = "12,,syscalls:sys_enter_write,100.00,,\n<not counted>,,x\n30,,syscalls:sys_enter_sendto,1,,\n";
        assert_eq!(perf_sum(text), Some(42));
        assert_eq!(perf_sum("nothing"), None);
    }
}
