//! `members`, `ring`, `owner`, `drain`, `health`: the cluster as one node sees it.

use crate::exit::CliError;
use crate::node::{path_segment, NodeApi};
use crate::output::Report;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Members, their addresses, roles and slot counts.
pub async fn members(api: &NodeApi) -> Result<Report, CliError> {
    let v = api.get("/v1/cluster").await?;
    let mut human = format!("{:<16} {:<6} {:<22} {:<22} {:>5} DRAINING\n", "NODE", "ROLE", "CLIENT", "QUIC", "SLOTS");
    for m in v["members"].as_array().into_iter().flatten() {
        let id = m["node_id"].as_str().unwrap_or("?");
        let _ = writeln!(
            human,
            "{:<16} {:<6} {:<22} {:<22} {:>5} {}",
            id,
            m["role"].as_str().unwrap_or("?"),
            m["client_addr"].as_str().unwrap_or("-"),
            m["quic_addr"].as_str().unwrap_or("-"),
            v["slots"][id].as_u64().unwrap_or(0),
            m["draining"].as_bool().unwrap_or(false),
        );
    }
    let _ = write!(human, "vacant slots: {}", v["vacant"]);
    Ok(Report { human, json: v })
}

/// Slots per node, with the balance (max over mean).
pub async fn ring(api: &NodeApi) -> Result<Report, CliError> {
    let v = api.get("/v1/cluster").await?;
    let slots: Vec<(String, u64)> = v["slots"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let total: u64 = slots.iter().map(|(_, n)| n).sum();
    let mean = if slots.is_empty() { 0.0 } else { total as f64 / slots.len() as f64 };
    let max = slots.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let mut human = String::new();
    for (node, n) in &slots {
        let bar = "#".repeat(usize::try_from(n / 16).unwrap_or(0));
        let _ = writeln!(human, "{node:<16} {n:>5}  {bar}");
    }
    let balance = if mean > 0.0 { max as f64 / mean } else { 0.0 };
    let _ = write!(human, "{total} slots claimed, {} vacant, max/mean {balance:.2}", v["vacant"]);
    Ok(Report { human, json: json!({"slots": v["slots"], "vacant": v["vacant"], "max_over_mean": balance}) })
}

/// The node that owns a channel, and its slot.
pub async fn owner(api: &NodeApi, channel: &str) -> Result<Report, CliError> {
    let v = api.get(&format!("/v1/channels/{}", path_segment(channel))).await?;
    let owner = v["owner"].as_str().unwrap_or("(vacant)");
    let human = format!("{channel}: slot {} owned by {owner}", v["slot"]);
    Ok(Report { human, json: v })
}

/// Drains `node_id`: asks it to drain and, with `wait`, waits until it holds no slot.
pub async fn drain(api: &NodeApi, node_id: &str, wait: Duration) -> Result<Report, CliError> {
    let view = api.get("/v1/cluster").await?;
    let member = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["node_id"] == node_id)
        .ok_or_else(|| CliError::Usage(format!("{node_id} is not a member (see `ringcast members`)")))?;
    let addr =
        member["client_addr"].as_str().ok_or_else(|| CliError::Failed(format!("{node_id} has no client address")))?;
    let started = Instant::now();
    api.at(addr).post("/v1/admin/drain", &json!({})).await?;
    if wait.is_zero() {
        return Ok(Report {
            human: format!("{node_id}: draining"),
            json: json!({"node": node_id, "status": "draining"}),
        });
    }
    let held = |v: &Value| v["slots"][node_id].as_u64().unwrap_or(0);
    loop {
        // Ask a node that stays: the drained one exits when it is done.
        let v = api.get("/v1/cluster").await;
        if let Ok(v) = &v {
            if held(v) == 0 {
                let secs = started.elapsed().as_secs_f64();
                return Ok(Report {
                    human: format!("{node_id}: drained in {secs:.1}s (every slot handed off)"),
                    json: json!({"node": node_id, "status": "drained", "seconds": secs}),
                });
            }
        }
        if started.elapsed() > wait {
            let left = v.as_ref().map(held).unwrap_or(0);
            return Err(CliError::Failed(format!("{node_id} still holds {left} slot(s) after {wait:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node answers `GET path` with a 2xx status (the readiness check).
pub async fn health(api: &NodeApi, path: &str) -> Result<Report, CliError> {
    if !path.starts_with('/') {
        return Err(CliError::Usage(format!("--path {path:?} must start with /")));
    }
    let v = api.get(path).await?;
    Ok(Report {
        human: format!("{} {path}: ready", api.addr),
        json: json!({"node": api.addr, "ready": true, "body": v}),
    })
}
