//! Reserve throughput of the node alone (no gRPC): CLIENTS tasks each
//! reserving one unit of a random SKU, one at a time, for SECONDS, on a
//! durable node over a log store in DIR. Also prints the heap allocations
//! per Reserve during the run (the system allocator, counted), which
//! includes this program's own per-Reserve work (the id, the line, the
//! latency sample: about 4).
//!
//! ```text
//! cargo run --release -p atp-shard --example node_bench -- [CLIENTS] [SECONDS] [DIR]
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atp_core::catalog::{Channel, Location, LocationKind};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_core::reservation::{ReserveLine, ReserveRequest};
use atp_shard::{Clock, Node, NodeConfig};
use atp_store::{LogOptions, LogStore};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SKUS: usize = 10_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(50, |n| n.parse().expect("CLIENTS"));
    let seconds: u64 = args.next().map_or(10, |n| n.parse().expect("SECONDS"));
    let temporary = tempfile::tempdir().expect("temporary directory");
    let dir = args.next().map_or_else(|| temporary.path().to_owned(), PathBuf::from);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let store = LogStore::open(&dir, LogOptions::default()).expect("open");
        let node = Node::open(NodeConfig::default(), Clock::system(), Arc::new(store));
        node.recover().await.expect("recover");
        let location = LocationId::parse("location", "dc-1").expect("valid");
        node.upsert_location(Location {
            id: location.clone(),
            kind: LocationKind::Warehouse,
            name: String::new(),
            latitude: 0.0,
            longitude: 0.0,
            safety_stock: 0,
            daily_capacity: 0,
            shipping_cost: 1.0,
            state: atp_core::catalog::Lifecycle::Active,
            fulfilment: Default::default(),
        })
        .await
        .expect("location");
        let channel = ChannelId::parse("channel", "web").expect("valid");
        node.upsert_channel(Channel {
            id: channel.clone(),
            name: String::new(),
            locations: vec![location.clone()],
            buffer: 0,
            cap: None,
            state: atp_core::catalog::Lifecycle::Active,
            publish: Default::default(),
        })
        .await
        .expect("channel");
        let sku = |i: usize| Sku::parse("sku", &format!("sku-{i:05}")).expect("valid");
        for chunk in (0..SKUS).collect::<Vec<_>>().chunks(1000) {
            let events = chunk
                .iter()
                .map(|i| StockEvent {
                    id: EventId::parse("event_id", &format!("recv-{i}")).expect("valid"),
                    sku: sku(*i),
                    location: location.clone(),
                    kind: StockEventKind::Received { quantity: 1_000_000 },
                })
                .collect();
            node.apply_events(events).await.expect("stock");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let region = Region::new(ALLOCATOR);
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let (node, stop, channel, location) =
                    (node.clone(), Arc::clone(&stop), channel.clone(), location.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let request = ReserveRequest {
                            id: ReservationId::parse("id", &format!("r-{client}-{n}")).expect("valid"),
                            channel: channel.clone(),
                            lines: vec![ReserveLine {
                                sku: sku((client * 7919 + n * 104_729) % SKUS),
                                location: location.clone(),
                                quantity: 1,
                            }],
                            ttl_ms: 600_000,
                            metadata: Default::default(),
                        };
                        let sent = Instant::now();
                        node.reserve(request).await.expect("reserved");
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let allocations = region.change().allocations;
        let mut all: Vec<Duration> = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("task"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
        let stats = node.committer_stats().expect("durable");
        let commits = stats.commits.load(Ordering::Relaxed);
        let batches = stats.batches.load(Ordering::Relaxed);
        println!(
            "clients={clients} reserves={} ops/s={:.0} p50={:.2}ms p99={:.2}ms p99.9={:.2}ms fsyncs={commits} shard-batches/fsync={:.1} allocations/reserve={:.1}",
            all.len(),
            all.len() as f64 / elapsed,
            at(0.5),
            at(0.99),
            at(0.999),
            batches as f64 / commits.max(1) as f64,
            allocations as f64 / all.len().max(1) as f64
        );
        node.shutdown();
    });
}
