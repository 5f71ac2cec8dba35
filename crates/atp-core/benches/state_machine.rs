//! Reserve + release pairs per second on one core: the shard state machine
//! alone, without the actors, gRPC or the disk.
//!
//! Each pair is what the node does for a one-line reservation whose line
//! lives on another shard than the reservation's home: on the home
//! `begin_reserve`, on the line's shard `apply_line_op(Hold)`, on the home
//! `finish_reserve(held)`, then `release` on the home and its line ops
//! applied on the line's shard. (The node's `ReserveRequest::check` against
//! the catalog, before `begin_reserve`, is not part of it.)
//!
//! - `transitions`: the pairs alone. Both shards' changes are still drained
//!   every [`PAIRS_PER_BATCH`] pairs, as the node does after each batch, but
//!   outside the timed part, so the shards' touched sets and ledger outbox
//!   stay bounded.
//! - `transitions+drain`: the same with the drains timed: the encoding of the
//!   records (postcard) that a real batch pays before the store writes them.
//!
//! Reservation ids are distinct, spelled like random UUIDs, and built with
//! their requests outside the timed part. The clock moves [`CLOCK_STEP_MS`]
//! per pair so that ended records age out through the shard's memory budget
//! as on a node (about 1,000 kept per shard) instead of piling up for the
//! whole run.
//!
//! ```sh
//! cargo bench -p atp-core --bench state_machine
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use atp_core::catalog::{Catalog, Channel, Location, LocationKind};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_core::reservation::{ReserveLine, ReserveRequest};
use atp_core::shard::{Begin, ShardSettings, ShardState};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Pairs between two drains of the shards' changes (a batch of the node).
const PAIRS_PER_BATCH: u64 = 256;
/// Simulated time between two pairs, ms: with the default budget an ended
/// record is forgotten once 60 s old, so about 1,000 stay on the home.
const CLOCK_STEP_MS: i64 = 60;
/// TTL of the holds (the load generator's default), ms.
const HOLD_TTL_MS: i64 = 600_000;
/// Units received at the one position: never short, since every hold is released.
const STOCK_UNITS: i64 = 1_000_000;
/// When the clock starts, ms since the epoch.
const START_MS: i64 = 1_700_000_000_000;
/// The reservations' home shard (the home never checks that an id hashes to it).
const HOME_SHARD: u32 = 0;
const SKU: &str = "sku-bench-0001";
const LOCATION: &str = "loc-bench-1";
const CHANNEL: &str = "web";

/// Two shards, the catalog, the clock and the next reservation number.
struct Pairs {
    catalog: Catalog,
    home: ShardState,
    line: ShardState,
    channel: ChannelId,
    sku: Sku,
    location: LocationId,
    now_ms: i64,
    next_id: u64,
    since_drain: u64,
}

impl Pairs {
    fn new() -> Self {
        let location = LocationId::parse("location", LOCATION).expect("a valid location id");
        let channel = ChannelId::parse("channel", CHANNEL).expect("a valid channel id");
        let sku = Sku::parse("sku", SKU).expect("a valid sku");
        let mut catalog = Catalog::default();
        catalog
            .upsert_location(Location {
                id: location.clone(),
                kind: LocationKind::Warehouse,
                name: LOCATION.to_owned(),
                latitude: 0.0,
                longitude: 0.0,
                safety_stock: 0,
                daily_capacity: 0,
                shipping_cost: 1.0,
                state: atp_core::catalog::Lifecycle::Active,
                fulfilment: Default::default(),
            })
            .expect("a valid location");
        catalog
            .upsert_channel(Channel {
                id: channel.clone(),
                name: CHANNEL.to_owned(),
                locations: vec![location.clone()],
                buffer: 0,
                cap: None,
                state: atp_core::catalog::Lifecycle::Active,
                publish: Default::default(),
            })
            .expect("a valid channel");
        let line_shard = shard_of(SKU);
        assert_ne!(line_shard, HOME_SHARD, "the line lives on another shard than the home");
        let home = ShardState::new(HOME_SHARD, 1, ShardSettings::default());
        let mut line = ShardState::new(line_shard, 1, ShardSettings::default());
        let received = StockEvent {
            id: EventId::parse("event", "recv-bench-1").expect("a valid event id"),
            sku: sku.clone(),
            location: location.clone(),
            kind: StockEventKind::Received { quantity: STOCK_UNITS },
        };
        line.apply_event(&received, &catalog, START_MS).expect("stock is received");
        let mut pairs = Self {
            catalog,
            home,
            line,
            channel,
            sku,
            location,
            now_ms: START_MS,
            next_id: 0,
            since_drain: 0,
        };
        pairs.drain();
        pairs
    }

    /// The next `count` requests, each under a fresh id.
    fn requests(&mut self, count: u64) -> Vec<ReserveRequest> {
        (0..count)
            .map(|_| {
                self.next_id += 1;
                let id = uuid_like(self.next_id);
                ReserveRequest {
                    id: ReservationId::parse("reservation", &id).expect("a valid reservation id"),
                    channel: self.channel.clone(),
                    lines: vec![ReserveLine {
                        sku: self.sku.clone(),
                        location: self.location.clone(),
                        quantity: 1,
                    }],
                    ttl_ms: HOLD_TTL_MS,
                    metadata: Default::default(),
                }
            })
            .collect()
    }

    /// One reserve + release, as the node runs it.
    fn pair(&mut self, request: &ReserveRequest) {
        let now = self.now_ms;
        let begin = self.home.begin_reserve(request, now).expect("a fresh id begins");
        let Begin::Started { holds, version } = begin else {
            panic!("a fresh id is never a replay");
        };
        for (_, op) in &holds {
            self.line.apply_line_op(op, &self.catalog, now).expect("stock is never short");
        }
        let answer = self.home.finish_reserve(&request.id, version, true, now);
        assert!(answer.is_some(), "a held reservation answers");
        let (view, releases) = self.home.release(&request.id, now).expect("a hold releases");
        black_box(view);
        for (_, op) in &releases {
            self.line.apply_line_op(op, &self.catalog, now).expect("a release never fails");
        }
        self.now_ms += CLOCK_STEP_MS;
    }

    /// Both shards' changes as store records, as after a node's batch.
    fn drain(&mut self) {
        black_box(self.home.drain_changes());
        black_box(self.line.drain_changes());
        self.since_drain = 0;
    }

    /// Runs `iterations` pairs in runs that end at a batch boundary; returns
    /// the time of the pairs, plus that of the drains if `time_drains`.
    fn run(&mut self, iterations: u64, time_drains: bool) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut done = 0;
        while done < iterations {
            let count = (PAIRS_PER_BATCH - self.since_drain).min(iterations - done);
            let requests = self.requests(count);
            let start = Instant::now();
            for request in &requests {
                self.pair(request);
            }
            self.since_drain += count;
            let full = self.since_drain == PAIRS_PER_BATCH;
            if full && time_drains {
                self.drain();
            }
            elapsed += start.elapsed();
            if full && !time_drains {
                self.drain();
            }
            done += count;
        }
        elapsed
    }
}

/// A distinct 36-byte id spelled like a random UUID: ids that differ in
/// their first bytes, as clients' UUIDs do, so the maps' key comparisons
/// cost what they cost on a node (a counter behind a long shared prefix
/// would make every comparison scan it).
fn uuid_like(number: u64) -> String {
    let high = splitmix64(number);
    let low = splitmix64(high);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// SplitMix64: distinct inputs give distinct outputs (it is a bijection).
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn reserve_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("reserve_release_pair");
    group.throughput(Throughput::Elements(1));
    for (name, time_drains) in [("transitions", false), ("transitions+drain", true)] {
        let mut pairs = Pairs::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| pairs.run(iterations, time_drains))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = reserve_release
}
criterion_main!(benches);
