//! The benchmark's load generator (`crates/ringcast-bench`) against a real node: its
//! loss and order accounting holds for the many-channel layout of workload (c), so a
//! benchmark row marked valid really had every subscriber receive every message of its
//! channels. The null fan-out floor (`ringcast-bench floor`) serves the same generator.

use anyhow::{Context, Result};
use ringcast_bench::load::{self, Spec};
use ringcast_bench::proto::System;
use ringcast_tests::{base_config, Ringcastd};
use std::time::Duration;

fn spec(addr: std::net::SocketAddr, channels: usize, zipf: f64) -> Spec {
    Spec {
        system: System::Ringcast,
        config: "test".into(),
        workload: "c".into(),
        addr,
        publish_addr: None,
        server_pid: None,
        other_server_pids: vec![],
        subscribers: 60,
        channels_per_conn: 3,
        channels,
        zipf,
        rate: 100.0,
        payload: 100,
        warmup: Duration::from_millis(500),
        measure: Duration::from_secs(1),
        settle: Duration::ZERO,
        stall_fraction: 0.0,
        perf: false,
        repetition: 1,
        start_at_unix_ms: None,
    }
}

/// `load::run` builds its own single-threaded runtime, so it runs on a thread of its own.
async fn run(spec: Spec) -> Result<load::Outcome> {
    tokio::task::spawn_blocking(move || load::run(spec)).await.context("generator thread")?
}

#[tokio::test]
async fn many_channels_uniform_and_zipf_are_delivered_in_full_and_in_order() -> Result<()> {
    // The publisher is one connection: no per-connection command rate.
    let node = Ringcastd::start(&base_config(
        "[limits]\ncommands_per_second = 0\n\n[namespaces.bench]\nanonymous = true\nclient_publish_rate = 0\n",
    ))?;
    // Not `valid`: that also asks the (debug-built) generator to stay below 85 % of a
    // core, which says nothing about the accounting checked here.
    let clean = |o: &load::Outcome| (o.connected, o.connect_failures, o.lost, o.errors, o.disconnects);
    for zipf in [0.0, 1.0] {
        let o = run(spec(node.addr, 20, zipf)).await?;
        assert_eq!(clean(&o), (60, 0, 0, 0, 0), "zipf {zipf}: first error {:?}", o.first_error);
        assert_eq!(o.published, 150);
        // 60 connections x 3 of 20 channels: 9 subscribers per channel on average, so
        // about 900 deliveries/s offered; what a message's channel has decides it.
        assert!((300.0..=2_000.0).contains(&o.offered_deliveries_per_s), "zipf {zipf}: {}", o.offered_deliveries_per_s);
        assert!(o.latency_us.count > 0 && o.completion_us.count > 0, "zipf {zipf}: {o:?}");
    }
    // The single-channel layout: everyone gets every message.
    let o = run(spec(node.addr, 0, 0.0)).await?;
    assert_eq!(clean(&o), (60, 0, 0, 0, 0), "first error {:?}", o.first_error);
    assert!((o.offered_deliveries_per_s - 100.0 * 60.0).abs() < 1e-6, "{}", o.offered_deliveries_per_s);
    Ok(())
}

#[tokio::test]
async fn the_null_fan_out_floor_serves_the_generator_every_message_once_and_in_order() -> Result<()> {
    // The floor is a blocking, one-thread server: it gets a thread of its own (the
    // test process ends it).
    let listener = ringcast_bench::floor::listen(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || ringcast_bench::floor::serve(&listener, &mut std::io::sink()));
    let clean = |o: &load::Outcome| (o.connected, o.connect_failures, o.lost, o.errors, o.disconnects);
    // Many channels (each connection on 3 of 20), then everyone on one; the second run
    // also shows that subscribers of an earlier publisher are still written to and
    // dropped once they are gone, without disturbing the new run.
    for (channels, zipf) in [(20, 1.0), (0, 0.0)] {
        let o = run(Spec { system: System::Floor, ..spec(addr, channels, zipf) }).await?;
        assert_eq!(clean(&o), (60, 0, 0, 0, 0), "{channels} channels: first error {:?}", o.first_error);
        assert_eq!(o.published, 150);
        assert!(o.latency_us.count > 0 && o.completion_us.count > 0, "{o:?}");
        // The push is Redis's, byte for byte: 139 bytes for a 100-byte payload on
        // "bench:c0" (bytes and deliveries are counted in the same window, give or take
        // a read at its edges).
        if channels == 0 {
            let bytes = o.wire_bytes_per_delivery.unwrap_or_default();
            assert!((135.0..=143.0).contains(&bytes), "{bytes} bytes per delivery");
        }
    }
    Ok(())
}

fn unix_ms_from_now(offset_ms: i64) -> Result<u64> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let now_ms = i64::try_from(now.as_millis())?;
    Ok(u64::try_from(now_ms + offset_ms)?)
}

/// Workload (g) runs two generators at once, their first messages due at given
/// wall-clock times: a run does not publish before its time, and a time that passed
/// while the subscribers connected is an error, not a run in another window.
#[tokio::test]
async fn a_generator_publishes_from_its_start_time_and_refuses_one_that_passed() -> Result<()> {
    let node = Ringcastd::start(&base_config(
        "[limits]\ncommands_per_second = 0\n\n[namespaces.bench]\nanonymous = true\nclient_publish_rate = 0\n",
    ))?;
    let at = |offset_ms| -> Result<Spec> {
        let mut spec = spec(node.addr, 0, 0.0);
        spec.subscribers = 5;
        spec.channels_per_conn = 1;
        spec.start_at_unix_ms = Some(unix_ms_from_now(offset_ms)?);
        Ok(spec)
    };

    let began = std::time::Instant::now();
    let o = run(at(2_500)?).await?;
    // Message 0 is due 2.5 s from now, the window ends warmup + measure (1.5 s) later.
    assert!(began.elapsed() >= Duration::from_millis(4_000), "finished after {:?}", began.elapsed());
    assert_eq!((o.connected, o.lost, o.errors, o.disconnects), (5, 0, 0, 0), "first error {:?}", o.first_error);
    assert_eq!(o.published, 150);

    let err = run(at(-1_000)?).await.err().map(|e| format!("{e:#}"));
    assert!(
        err.as_deref().is_some_and(|e| e.contains("passed before the subscribers were ready")),
        "a start time in the past: {err:?}"
    );
    Ok(())
}
