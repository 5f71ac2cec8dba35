//! Measures recovery: a store holding POSITIONS positions (and as many
//! received-event memos) and HOLDS open holds (each a reservation record on
//! its home shard plus a line hold on its SKU's shard), then the real
//! `Node::open` + `Node::recover` over it, as atpd does at start, and the
//! process's resident memory before and after.
//!
//! ```text
//! cargo run --release -p atp-shard --example recovery_bench -- [DIR] [POSITIONS] [HOLDS] [checkpoint|log]
//! ```
//!
//! DIR (default: a temporary directory under /tmp) must be on the disk to
//! measure. Defaults: 1,000,000 positions (250,000 SKUs at 4 locations) and
//! 1,000,000 holds of one unit each. The fill writes everything to the log
//! in batches of 100,000 operations, then (`checkpoint`, the default) a
//! checkpoint of every shard, as a running node's checkpointer would; `log`
//! leaves it all in the log. A DIR that already holds a store is recovered
//! as it is (run it twice to time a warm page cache).
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use atp_core::catalog::{Catalog, Channel, Location, LocationKind};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_core::reservation::{ReserveLine, ReserveRequest};
use atp_core::shard::{Begin, ShardSettings, ShardState};
use atp_shard::{Clock, Node, NodeConfig};
use atp_store::{Checkpoint, LogOptions, LogStore, ShardBatch, Store};

const LOCATIONS: usize = 4;
const START_MS: i64 = 1_800_000_000_000;

fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    let ids: Vec<LocationId> = (0..LOCATIONS)
        .map(|i| LocationId::parse("location", &format!("dc-{i}")).expect("valid"))
        .collect();
    for id in &ids {
        catalog
            .upsert_location(Location {
                id: id.clone(),
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
            .expect("valid location");
    }
    catalog
        .upsert_channel(Channel {
            id: ChannelId::parse("channel", "web").expect("valid"),
            name: String::new(),
            locations: ids,
            buffer: 0,
            cap: None,
            state: atp_core::catalog::Lifecycle::Active,
            publish: Default::default(),
        })
        .expect("valid channel");
    catalog
}

fn fill(store: &dyn Store, positions: usize, holds: usize, checkpoint: bool) {
    let started = Instant::now();
    let catalog = catalog();
    store.save_catalog(&atp_core::catalog_codec::encode_catalog(&catalog)).expect("saved");
    let settings = ShardSettings::default();
    let mut shards: BTreeMap<u32, ShardState> = (0..SHARD_COUNT)
        .map(|shard| (shard, ShardState::new(shard, 1, settings.clone())))
        .collect();
    let skus = positions.div_ceil(LOCATIONS);
    let location = |i: usize| LocationId::parse("location", &format!("dc-{i}")).expect("valid");
    let sku = |i: usize| Sku::parse("sku", &format!("sku-{i:07}")).expect("valid");
    let mut sequences = vec![0u64; SHARD_COUNT as usize];
    let mut flush = |shards: &mut BTreeMap<u32, ShardState>| {
        let batches: Vec<ShardBatch> = shards
            .values_mut()
            .filter(|state| state.has_changes())
            .map(|state| {
                let changes = state.drain_changes();
                let sequence = &mut sequences[state.shard() as usize];
                *sequence += 1;
                ShardBatch {
                    shard: state.shard(),
                    epoch: 1,
                    sequence: *sequence,
                    records: changes.records,
                    ledger: changes.ledger,
                }
            })
            .collect();
        store.commit(&batches).expect("commit");
    };
    for n in 0..positions {
        let (s, l) = (n / LOCATIONS, n % LOCATIONS);
        let event = StockEvent {
            id: EventId::parse("event_id", &format!("recv-{n}")).expect("valid"),
            sku: sku(s),
            location: location(l),
            kind: StockEventKind::Received { quantity: 1_000 },
        };
        let shard = shard_of(event.sku.as_str());
        shards
            .get_mut(&shard)
            .expect("shard")
            .apply_event(&event, &catalog, START_MS)
            .expect("applies");
        if n % 100_000 == 99_999 {
            flush(&mut shards);
        }
    }
    flush(&mut shards);
    let channel = ChannelId::parse("channel", "web").expect("valid");
    for n in 0..holds {
        let request = ReserveRequest {
            id: ReservationId::parse("reservation_id", &format!("order-{n}")).expect("valid"),
            channel: channel.clone(),
            lines: vec![ReserveLine {
                sku: sku(n % skus),
                location: location(n % LOCATIONS),
                quantity: 1,
            }],
            ttl_ms: 24 * 60 * 60 * 1000,
            metadata: Default::default(),
        };
        let home = shard_of(request.id.as_str());
        let begun =
            shards.get_mut(&home).expect("home").begin_reserve(&request, START_MS).expect("begins");
        let Begin::Started { holds, version } = begun else { panic!("a new id starts") };
        let (line, hold) = holds.into_iter().next().expect("one line, one hold");
        shards
            .get_mut(&line)
            .expect("line")
            .apply_line_op(&hold, &catalog, START_MS)
            .expect("holds");
        shards
            .get_mut(&home)
            .expect("home")
            .finish_reserve(&request.id, version, true, START_MS)
            .expect("held");
        if n % 100_000 == 99_999 {
            flush(&mut shards);
        }
    }
    flush(&mut shards);
    if checkpoint {
        store.rotate_log();
        for state in shards.values() {
            let sequence = sequences[state.shard() as usize];
            let records = state.dump().into_iter().collect();
            let checkpoint = Checkpoint { shard: state.shard(), epoch: 1, sequence, records };
            store.write_checkpoint(&checkpoint).expect("checkpoint");
        }
        // The indexer must pass the segments before they may go.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        while store.log_stats().indexed < store.log_stats().durable && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let deleted = store.compact_log().expect("compacts");
        println!("checkpointed every shard; {deleted} log segments deleted");
    }
    println!("{:?}", store.log_stats());
    println!(
        "filled {positions} positions and {holds} holds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let temporary = tempfile::tempdir().expect("create a temporary directory");
    let dir = args.next().map_or_else(|| temporary.path().to_owned(), PathBuf::from);
    let positions: usize =
        args.next().map_or(1_000_000, |n| n.parse().expect("POSITIONS is a number"));
    let holds: usize = args.next().map_or(1_000_000, |n| n.parse().expect("HOLDS is a number"));
    let checkpoint = args.next().is_none_or(|mode| mode != "log");
    let fresh = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
    println!("store in {}", dir.display());
    if fresh {
        let store = LogStore::open(&dir, LogOptions::default()).expect("open");
        fill(&store, positions, holds, checkpoint);
    }
    let rss_before = rss_kib();

    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let opened = Instant::now();
        let store = LogStore::open(&dir, LogOptions::default()).expect("open");
        let open_time = opened.elapsed();
        // Recovery expires nothing: the clock is well before the holds' TTL.
        let node = Node::open(NodeConfig::default(), Clock::starting_at(START_MS + 1_000), Arc::new(store));
        let stats = node.recover().await.expect("recovers");
        println!(
            "store open {:.2} s; recovery {:.2} s (read {:.2} s, read+decode {:.2} s, cross-shard {:.2} s): {} positions, {} open holds, {} reservations, {:?}",
            open_time.as_secs_f64(),
            stats.elapsed.as_secs_f64(),
            stats.read.as_secs_f64(),
            stats.load.as_secs_f64(),
            stats.cross_shard.as_secs_f64(),
            stats.positions,
            stats.open_holds,
            stats.reservations,
            stats.report,
        );
        let rss_after = rss_kib();
        let items = (stats.positions + stats.open_holds).max(1);
        println!(
            "rss before open {} MiB, after recovery {} MiB: {:.0} bytes per position + open hold",
            rss_before / 1024,
            rss_after / 1024,
            (rss_after.saturating_sub(rss_before) * 1024) as f64 / items as f64,
        );
        node.shutdown();
    });
}

/// The process's resident set size (KiB), from /proc.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}
