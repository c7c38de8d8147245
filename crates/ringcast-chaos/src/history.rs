//! The recorded history: one JSON object per line, written while a scenario runs and
//! read back by the offline [`checker`](crate::checker).
//!
//! Every observation the checker needs is an [`Event`]: publish operations (one
//! `pub_invoke` per attempt, one `pub_complete` per operation, Jepsen-style `ok`, `fail`
//! or `info`), subscriber observations (`subscribed` replies, `deliver`, `gap`,
//! `disconnect`), the nemesis's fault log (`fault`, `heal`, `owners` snapshots), the final
//! history read of every channel after the heal-and-drain phase, and panics found in node
//! logs. Times are milliseconds since the run started (monotonic clock).
//!
//! The recorder is deliberately simple: a mutex around a buffered file. Every writer is a
//! harness task doing at most a few hundred events per second, so contention is not a
//! concern, and a single file keeps the global order in which events were observed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A stream position as the client protocol carries it (epoch is a decimal string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub epoch: String,
    pub offset: u64,
}

/// How a publish operation ended, after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged with a position.
    Ok,
    /// Definitely not sequenced (every attempt got a definite refusal).
    Fail,
    /// Indeterminate: some attempt timed out or lost its connection.
    Info,
}

/// One message of a channel's final history read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub offset: u64,
    /// The publish's idempotency key carried in `data.k` (`None`: not ours).
    pub payload: Option<String>,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The run's parameters the checker needs.
    Meta {
        scenario: String,
        nodes: usize,
        /// Namespaces whose channels are held to the durable invariants (I1, I8).
        durable_namespaces: Vec<String>,
        /// Whether the build accepted `durable = true` (false: the durable namespace runs
        /// best-effort today, and durable violations are expected).
        durable_enforced: bool,
        /// How long after a heal a fault still counts as active for I8.
        fault_grace_ms: u64,
    },
    /// One attempt of a publish.
    PubInvoke { t: u64, publisher: String, key: String, channel: String, attempt: u32, node: String },
    /// How a publish operation (all its attempts) ended.
    PubComplete {
        t: u64,
        publisher: String,
        key: String,
        channel: String,
        result: Outcome,
        /// When the last attempt was sent.
        invoked: u64,
        attempts: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pos: Option<Pos>,
        #[serde(default)]
        duplicate: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A `subscribed` reply, or a `resubscribed` push (the stream restarted in a new
    /// epoch: `recovered: false` from the position the subscriber had).
    Subscribed {
        t: u64,
        sub: String,
        channel: String,
        node: String,
        /// The position the subscriber resumed from (`None`: a fresh subscription).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Pos>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        pos: Pos,
        /// Time from the disconnect to this reply, for resumed subscriptions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_ms: Option<u64>,
    },
    /// A `message` push.
    Deliver {
        t: u64,
        sub: String,
        channel: String,
        node: String,
        pos: Pos,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<String>,
    },
    /// A `gap` push (announced loss).
    Gap { t: u64, sub: String, channel: String, node: String, epoch: String, from: u64, to: u64, reason: String },
    /// A subscriber lost its connection.
    Disconnect { t: u64, sub: String, node: String, why: String },
    /// The nemesis started a fault. `faulted` is how many nodes it takes out of service.
    Fault { t: u64, id: u64, kind: String, nodes: Vec<String>, faulted: u32, detail: String },
    /// The nemesis ended fault `id`.
    Heal { t: u64, id: u64 },
    /// Channel owners as the cluster reported them just before a fault.
    Owners { t: u64, owners: BTreeMap<String, String> },
    /// A channel's history after the heal-and-drain phase, oldest first.
    FinalRead {
        t: u64,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        entries: Vec<Entry>,
        /// Whether the read got everything (false: a page failed; the channel is unchecked).
        complete: bool,
    },
    /// A line with a panic in a node's log.
    Panic { t: u64, node: String, line: String },
}

/// Appends events to a JSON-lines file; cheap to clone.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    out: Arc<Mutex<BufWriter<std::fs::File>>>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let f = std::fs::File::create(path)?;
        Ok(Recorder { start: Instant::now(), out: Arc::new(Mutex::new(BufWriter::new(f))) })
    }

    /// Milliseconds since the recorder was created.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, ev: &Event) {
        // Serialising our own types cannot fail; a poisoned lock only means another
        // writer panicked, and the line is still worth writing.
        let Ok(line) = serde_json::to_string(ev) else { return };
        let mut out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(out, "{line}");
    }

    pub fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = out.flush();
    }
}

/// Reads a history file; a line that does not parse is an error naming its number.
pub fn read(path: &Path) -> anyhow::Result<Vec<Event>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push(ev);
    }
    Ok(out)
}
