//! WatchAvailability across a cluster (issue 13): real etcd, three real
//! `atpd`. 100 watchers of one channel spread over the three nodes while
//! the checkout load runs and 10 shards move between nodes; one watcher's
//! stream is cut and resumed through another node. At the end every
//! watcher's view equals GetAvailability for every SKU, no watcher ever
//! received a version older than one it held, and the resumed watcher got
//! no snapshot and no RESYNC. The lag from a durable change to a watcher's
//! receipt is printed (p50/p99).
//!
//! The benchmark (docs/BENCHMARKS.md) is this test with
//! `ATP_WATCH_BENCH_RATE=<checkout steps/s>` (open loop instead of 8
//! closed-loop clients) and `ATP_WATCH_BENCH_SECONDS` (the load's length;
//! the moves are spread over it), run with release binaries.

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_client::WatchView;
use atp_cluster::testing::EtcdProcess;
use atp_loadgen::stats::unix_ms;
use atp_loadgen::{Config, Mode, Scenario, run_until, setup};
use atp_proto::v1;
use common::{Atpd, eventually};
use three_nodes::{Cluster, probe_ids};
use tonic::Request;

const WATCHERS: usize = 100;
const MOVES: u32 = 10;
const DEADLINE: Duration = Duration::from_secs(60);

/// One watcher's state, shared with the task reading its stream.
#[derive(Default)]
struct Watcher {
    view: WatchView,
    /// Updates older than the figure held (must stay 0).
    stale: usize,
    /// Events seen since the last (re)open, in order.
    events: Vec<v1::WatchEvent>,
    /// ms from a change's durability to its receipt, live updates only.
    lags: Vec<i64>,
}

/// Reads `request`'s stream from `node` into `watcher` until it ends.
fn follow(
    node: &Atpd,
    request: v1::WatchAvailabilityRequest,
    watcher: Arc<Mutex<Watcher>>,
) -> tokio::task::JoinHandle<()> {
    let mut client = node.availability();
    tokio::spawn(async move {
        let mut stream = client.watch_availability(request).await.expect("watch").into_inner();
        while let Ok(Some(message)) = stream.message().await {
            let now = unix_ms();
            let mut held = watcher.lock().expect("not poisoned");
            let applied = held.view.apply(&message);
            held.stale += applied.stale;
            held.events.push(message.event());
            if message.event() == v1::WatchEvent::Update {
                let lags = message.updates.iter().map(|update| now - update.changed_at_ms);
                held.lags.extend(lags);
            }
        }
    })
}

/// The channel's (atp, published) of every SKU, through `node`.
async fn truth(node: &Atpd, channel: &str, skus: &[String]) -> HashMap<String, (i64, i64)> {
    let request = v1::GetAvailabilityRequest {
        skus: skus.to_vec(),
        channel_ids: vec![channel.to_owned()],
        ..Default::default()
    };
    let reply = node.availability().get_availability(request).await.expect("availability");
    reply
        .into_inner()
        .skus
        .into_iter()
        .map(|sku| {
            let figures = sku.channels.first().map_or((0, 0), |c| (c.atp, c.published));
            (sku.sku, figures)
        })
        .collect()
}

fn seen(watcher: &Watcher, skus: &[String]) -> HashMap<String, (i64, i64)> {
    skus.iter()
        .map(|sku| {
            let figure = watcher.view.figures().get(sku).map_or((0, 0), |f| (f.atp, f.published));
            (sku.clone(), figure)
        })
        .collect()
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_watchers_match_get_availability_through_load_moves_and_a_cut() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Cluster::start(&etcd, "watch").await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;
    let endpoints: Vec<String> = cluster.nodes.iter().map(Atpd::endpoint).collect();
    let bench_rate: Option<f64> =
        std::env::var("ATP_WATCH_BENCH_RATE").ok().and_then(|rate| rate.parse().ok());
    let bench_seconds: u64 = std::env::var("ATP_WATCH_BENCH_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(20);
    let config = Config {
        endpoint: endpoints.join(","),
        scenario: Scenario::Checkout,
        mode: if bench_rate.is_some() { Mode::Open } else { Mode::Closed },
        rate: bench_rate.unwrap_or(1_000.0),
        clients: if bench_rate.is_some() { 200 } else { 8 },
        connections: 1,
        skus: 200,
        locations: 2,
        stock: 100_000,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(600),
        request_timeout: Duration::from_secs(2),
        seed: Some(13),
        ..Config::default()
    };
    let setup = setup(&config).await.expect("setup through every node");
    let request =
        v1::WatchAvailabilityRequest { channel_id: setup.channel.clone(), ..Default::default() };

    // 100 watchers, spread over the nodes, each synced before the load.
    let watchers: Vec<Arc<Mutex<Watcher>>> =
        (0..WATCHERS).map(|_| Arc::new(Mutex::new(Watcher::default()))).collect();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = watchers
        .iter()
        .enumerate()
        .map(|(n, watcher)| follow(&cluster.nodes[n % 3], request.clone(), Arc::clone(watcher)))
        .collect();
    let all_synced = eventually(DEADLINE, || async {
        watchers.iter().all(|watcher| watcher.lock().expect("not poisoned").view.is_synced())
    })
    .await;
    assert!(all_synced, "every watcher got its snapshot");

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (config, setup, stop) = (config.clone(), setup.clone(), Arc::clone(&stop));
        tokio::spawn(async move { run_until(&config, &setup, stop).await })
    };

    // 10 shards move, one after the other, each to the next node. Halfway,
    // watcher 0's stream is cut and resumed through the next node.
    let mut moved = 0;
    let started = tokio::time::Instant::now();
    for (shard, (owner, _)) in claims.iter().step_by(97).take(MOVES as usize) {
        if bench_rate.is_some() {
            // Pacing the benchmark's moves over its length (not waiting
            // for anything).
            let at = Duration::from_secs(bench_seconds) * moved / MOVES;
            tokio::time::sleep_until(started + at).await;
        }
        let from = cluster.ids.iter().position(|id| id == owner).expect("a member");
        let to = cluster.ids[(from + 1) % 3].clone();
        let mut admin = cluster.nodes[(from + 2) % 3].admin();
        let mut move_request =
            Request::new(v1::MoveShardRequest { shard: *shard, to_node: to.clone() });
        move_request.set_timeout(Duration::from_secs(60));
        admin.move_shard(move_request).await.unwrap_or_else(|status| {
            panic!("moving shard {shard} from {owner} to {to}: {status:?}")
        });
        moved += 1;
        if moved == MOVES / 2 {
            tasks[0].abort();
            let _ = (&mut tasks[0]).await;
            let resume = {
                let mut held = watchers[0].lock().expect("not poisoned");
                held.events.clear();
                held.view.resume(request.clone())
            };
            assert!(resume.resume, "the cut watcher resumes from its marks");
            tasks[0] = follow(&cluster.nodes[1], resume, Arc::clone(&watchers[0]));
        }
    }
    if bench_rate.is_some() {
        tokio::time::sleep_until(started + Duration::from_secs(bench_seconds)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let report = load.await.expect("the load task").expect("the load ran");
    eprintln!(
        "load: {} steps, {:.0} steps/s, errors {:?}",
        report.steps, report.steps_per_s, report.errors
    );

    // Every watcher's view equals GetAvailability for every SKU. The truth
    // is read again each round: figures still move after the load stops
    // (a Reserve the load gave up on is rolled back when its pending
    // timeout passes).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (want, matched) = loop {
        let want = truth(&cluster.nodes[0], &setup.channel, &setup.skus).await;
        let matched = watchers
            .iter()
            .all(|watcher| seen(&watcher.lock().expect("not poisoned"), &setup.skus) == want);
        if matched || tokio::time::Instant::now() >= deadline {
            break (want, matched);
        }
        tokio::time::sleep(common::POLL_INTERVAL).await;
    };
    assert_eq!(want.len(), setup.skus.len());
    let differing = watchers
        .iter()
        .filter(|watcher| seen(&watcher.lock().expect("not poisoned"), &setup.skus) != want)
        .count();
    assert!(matched, "{differing} watchers differ from GetAvailability");
    for (n, watcher) in watchers.iter().enumerate() {
        let held = watcher.lock().expect("not poisoned");
        assert_eq!(held.stale, 0, "watcher {n} received a version older than one it held");
    }
    {
        let resumed = watchers[0].lock().expect("not poisoned");
        let restarted = resumed
            .events
            .iter()
            .any(|event| matches!(event, v1::WatchEvent::Snapshot | v1::WatchEvent::Resync));
        assert!(
            !restarted,
            "the resumed stream sent no snapshot and no RESYNC: {:?}",
            resumed.events
        );
        assert!(resumed.events.contains(&v1::WatchEvent::Synced), "the resume caught up");
    }
    let mut lags: Vec<i64> = watchers
        .iter()
        .flat_map(|watcher| watcher.lock().expect("not poisoned").lags.clone())
        .collect();
    lags.sort_unstable();
    eprintln!(
        "lag from durable change to receipt over {} updates: p50 {} ms, p99 {} ms, max {} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    );
    assert!(!lags.is_empty(), "live updates reached the watchers");
    for task in tasks {
        task.abort();
    }
}
