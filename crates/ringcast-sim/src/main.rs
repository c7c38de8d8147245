//! `ringcast-sim`: runs the scale model's scenarios and writes their JSON, Markdown
//! tables and PNG charts. See the library docs (`ringcast_sim`) and `docs/scale.md`.

use anyhow::Context;
use clap::Parser;
use ringcast_sim::chart::{self, Axes, Series};
use ringcast_sim::membership::{Change, ChangeSpec};
use ringcast_sim::storm::StormSpec;
use ringcast_sim::{balance, cost, fanout, hot, membership, report, storm};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Scale model of a ringcast cluster, driven by ringcast-core's real state machines.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Smaller sweeps and samples (a minute or two instead of several).
    #[arg(long)]
    quick: bool,
    /// Where to write `<scenario>.json`, `report.md` and the charts.
    #[arg(long, default_value = "target/sim")]
    out: PathBuf,
    /// Scenarios to run, from a, b, c, d, e.
    #[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
    only: Vec<String>,
    /// A TTF font for the charts' text.
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
}

fn write_json<T: serde::Serialize>(out: &Path, name: &str, value: &T) -> anyhow::Result<()> {
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    chart::register_font(&args.font)?;
    let on = |s: &str| args.only.iter().any(|o| o == s);
    let mut md = String::new();
    let _ = writeln!(md, "# ringcast-sim report ({})\n", if args.quick { "quick" } else { "full" });
    let _ = writeln!(md, "## Cost model\n\n{}", report::cost(&cost::figures()));
    write_json(&args.out, "cost", &cost::figures())?;
    let total = Instant::now();

    if on("a") {
        let t = Instant::now();
        let spec = if args.quick { balance::BalanceSpec::quick() } else { balance::BalanceSpec::full() };
        let rows = balance::run(&spec)?;
        write_json(&args.out, "a-balance", &rows)?;
        let _ = writeln!(md, "## (a) Ring balance\n\n{}", report::balance(&rows));
        let series: Vec<Series> = spec
            .vnodes
            .iter()
            .map(|&v| {
                let pts =
                    rows.iter().filter(|r| r.vnodes == v).map(|r| (r.nodes as f64, r.load_max_over_mean)).collect();
                (format!("{v} vnodes"), pts)
            })
            .collect();
        chart::lines(
            &args.out.join("scale-balance.png"),
            Axes {
                title: "(a) busiest node's load / mean (1,024 slots, equal channels)",
                x: "nodes",
                y: "max / mean",
                log_x: true,
                log_y: false,
            },
            &series,
        )?;
        println!("a: {} points in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    }

    if on("b") {
        let t = Instant::now();
        let n = if args.quick { 30 } else { 100 };
        // Durable state per slot: 10 GB of history spread over 1,024 slots (assumption).
        let base = ChangeSpec {
            nodes: n,
            change: Change::Join { count: 1 },
            throttle: ringcast_core::ownership::DEFAULT_HANDOFFS_IN_FLIGHT,
            slot_state_bytes: 10e9 / 1024.0,
            gbit_per_s: cost::LINK_GBIT_PER_S,
            limit_ms: 120_000,
        };
        let mut specs = vec![
            base.clone(),
            ChangeSpec { change: Change::Drain, ..base.clone() },
            ChangeSpec { change: Change::Crash, ..base.clone() },
            ChangeSpec { change: Change::Join { count: n / 2 }, ..base.clone() },
            ChangeSpec { nodes: 3, ..base.clone() },
            ChangeSpec { nodes: 3, throttle: 128, ..base.clone() },
        ];
        if !args.quick {
            specs.push(ChangeSpec { change: Change::Join { count: n / 2 }, throttle: 4, ..base.clone() });
        }
        let rows: Vec<_> = specs.iter().map(membership::run).collect();
        let sizes: &[usize] = if args.quick { &[10, 100] } else { &[10, 100, 300, 1000] };
        let mut costs = Vec::new();
        for &n in sizes {
            let (fresh, kept) = membership::plan_cost(n, 3)?;
            costs.push((n, fresh, kept));
        }
        write_json(&args.out, "b-membership", &(&rows, &costs))?;
        let mut table = report::membership(&rows);
        table.push_str("\n| Members | `plan` ms per call (builds the ring) | `plan_with_ring` ms per call (kept ring) |\n|---|---|---|\n");
        for (n, fresh, kept) in &costs {
            let _ = writeln!(table, "| {n} | {fresh:.2} | {kept:.3} |");
        }
        let _ = writeln!(md, "## (b) Join, drain, crash\n\n{table}");
        let series: Vec<Series> = rows
            .iter()
            .filter(|r| r.spec.nodes == n)
            .map(|r| {
                (
                    format!("{} (throttle {})", r.label, r.spec.throttle),
                    r.cumulative.iter().map(|&(t, _, e)| (t as f64 / 1000.0, e as f64)).collect(),
                )
            })
            .collect();
        chart::lines(
            &args.out.join("scale-membership.png"),
            Axes {
                title: "(b) etcd watch events delivered since the change (cumulative)",
                x: "seconds after the change",
                y: "watch events",
                log_x: false,
                log_y: true,
            },
            &series,
        )?;
        println!("b: {} changes in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    }

    if on("c") {
        let t = Instant::now();
        let mut specs = Vec::new();
        for grace in [30_000, 0] {
            for jitter in [true, false] {
                specs.push(StormSpec::full(grace, jitter));
            }
        }
        specs.push(StormSpec { handshakes_per_second: 5000, ..StormSpec::full(30_000, true) });
        if args.quick {
            for s in &mut specs {
                s.sample_memberships = 20_000;
            }
        }
        let mut rows = Vec::new();
        for s in &specs {
            rows.push(storm::run(s)?);
        }
        write_json(&args.out, "c-storm", &rows)?;
        let _ = writeln!(md, "## (c) Reconnect storm\n\n{}", report::storm(&rows));
        let label = |r: &storm::StormOutcome| format!("{}, {}/s per node", r.label, r.spec.handshakes_per_second);
        let series: Vec<Series> = rows
            .iter()
            .map(|r| (label(r), r.timeline.iter().map(|s| (s.t as f64, s.presence_joins)).collect()))
            .collect();
        chart::lines(
            &args.out.join("scale-storm.png"),
            Axes {
                title: "(c) presence join messages reaching owners per second, 10M connections",
                x: "seconds after the outage began",
                y: "messages / s",
                log_x: false,
                log_y: false,
            },
            &series,
        )?;
        let series: Vec<Series> =
            rows.iter().map(|r| (label(r), r.timeline.iter().map(|s| (s.t as f64, s.pushes)).collect())).collect();
        chart::lines(
            &args.out.join("scale-storm-pushes.png"),
            Axes {
                title: "(c) join/leave pushes to clients per second",
                x: "seconds after the outage began",
                y: "pushes / s",
                log_x: false,
                log_y: true,
            },
            &series,
        )?;
        println!("c: {} storms in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    }

    if on("d") {
        let t = Instant::now();
        let nodes = [2, 5, 10, 20, 50, 100, 200, 500, 1000];
        let rows = fanout::run(2_000_000, &nodes, 4)?;
        let rates = [1.0, 10.0, 100.0, 1000.0, 10_000.0];
        let limits: Vec<(f64, f64, f64)> =
            rates.iter().map(|&r| (r, fanout::link_bottleneck_nodes(r), fanout::cpu_bottleneck_nodes(r))).collect();
        write_json(&args.out, "d-fanout", &(&rows, &limits))?;
        let mut table = report::fanout(&rows);
        table.push_str(
            "\n| Publishes/s | Nodes at which the owner's link is full | Nodes at which the owner's core is busy |\n|---|---|---|\n",
        );
        for (r, l, c) in &limits {
            let _ = writeln!(table, "| {r} | {l:.0} | {c:.0} |");
        }
        let _ = writeln!(md, "## (d) 2M-viewer channel\n\n{table}");
        let series: Vec<Series> = vec![
            (
                "interest: Deliver frames per publish".into(),
                rows.iter().map(|r| (r.nodes as f64, r.owner_frames_per_publish as f64)).collect(),
            ),
            (
                "naive: frames per subscriber".into(),
                rows.iter().map(|r| (r.nodes as f64, r.naive_frames_per_publish as f64)).collect(),
            ),
            (
                "viewers on the busiest node".into(),
                rows.iter().map(|r| (r.nodes as f64, r.max_local_viewers as f64)).collect(),
            ),
        ];
        chart::lines(
            &args.out.join("scale-fanout.png"),
            Axes {
                title: "(d) one publish to 2M viewers: frames the owner sends",
                x: "nodes",
                y: "frames per publish",
                log_x: true,
                log_y: true,
            },
            &series,
        )?;
        println!("d: {} cluster sizes in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    }

    if on("e") {
        let t = Instant::now();
        let rows = hot::run(if args.quick { 200_000 } else { 2_000_000 })?;
        let plain =
            rows.iter().find(|r| r.variant == "append" && r.history == 300).map_or(0.0, |r| r.best_ns_per_append);
        let bounds = hot::bounds(plain, &[0, 10, 100, 1000]);
        write_json(&args.out, "e-hot", &(&rows, &bounds))?;
        let _ = writeln!(md, "## (e) Hot channel\n\n{}", report::hot(&rows, &bounds));
        let mut variants: Vec<&str> = rows.iter().map(|r| r.variant.as_str()).collect();
        variants.dedup();
        let series: Vec<Series> = variants
            .iter()
            .map(|v| {
                (
                    (*v).to_string(),
                    rows.iter()
                        .filter(|r| r.variant == *v)
                        .map(|r| (r.history as f64 + 1.0, r.appends_per_s))
                        .collect(),
                )
            })
            .collect();
        chart::lines(
            &args.out.join("scale-hot.png"),
            Axes {
                title: "(e) ChannelLog appends per second, one core (measured)",
                x: "history size + 1",
                y: "appends / s",
                log_x: true,
                log_y: false,
            },
            &series,
        )?;
        println!("e: {} variants in {:.1} s", rows.len(), t.elapsed().as_secs_f64());
    }

    std::fs::write(args.out.join("report.md"), &md)?;
    println!(
        "all scenarios in {:.1} s; report: {}",
        total.elapsed().as_secs_f64(),
        args.out.join("report.md").display()
    );
    Ok(())
}
