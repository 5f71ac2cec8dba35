//! One node simulated with a seeded scheduler: shard state machines driven by
//! random stock receipts, reserves and expiries, their batches group-committed
//! through a [`LogStore`] on a [`SimDisk`], checkpoints and log compaction,
//! fsync failures, torn writes and crashes. After every crash the recovered
//! store must hold every acknowledged batch, nothing partial, and at most a
//! prefix of whole batches of the one unacknowledged group.
//!
//! A failure names its seed; `ATP_SIM_SEED=<seed>` replays just that one.

use std::collections::BTreeMap;
use std::sync::Arc;

use atp_core::catalog::{Catalog, Channel, Location, LocationKind};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_core::reservation::{ReserveLine, ReserveRequest};
use atp_core::shard::{Begin, LineOp, ShardSettings, ShardState, recover};
use atp_store::{
    Checkpoint, CrashMode, LedgerQuery, LogOptions, LogStore, ShardBatch, SimDisk, Store,
};

const SEEDS: u64 = 200;
const STEPS: usize = 180;
const SKUS: [&str; 6] = ["sku-a", "sku-b", "sku-c", "sku-d", "sku-e", "sku-f"];
const LOCATIONS: [&str; 2] = ["loc-a", "loc-b"];
const START_MS: i64 = 1_700_000_000_000;

/// A seeded generator (fastrand's: the same sequence on every machine).
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0.u64(..bound)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for id in LOCATIONS {
        let location = Location {
            id: LocationId::parse("location", id).unwrap(),
            kind: LocationKind::Warehouse,
            name: id.to_owned(),
            latitude: 0.0,
            longitude: 0.0,
            safety_stock: 0,
            daily_capacity: 0,
            shipping_cost: 1.0,
            state: atp_core::catalog::Lifecycle::Active,
            fulfilment: Default::default(),
        };
        catalog.upsert_location(location).unwrap();
    }
    let web = Channel {
        id: ChannelId::parse("channel", "web").unwrap(),
        name: "web".to_owned(),
        locations: LOCATIONS.iter().map(|id| LocationId::parse("location", id).unwrap()).collect(),
        buffer: 0,
        cap: None,
        state: atp_core::catalog::Lifecycle::Active,
        publish: Default::default(),
    };
    catalog.upsert_channel(web).unwrap();
    catalog
}

fn settings() -> ShardSettings {
    ShardSettings { retention_ms: 120_000, ..ShardSettings::default() }
}

type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// What the store acknowledged, per shard: its last sequence and records,
/// and per SKU the ledger entries.
#[derive(Clone, Default)]
struct Acknowledged {
    shards: BTreeMap<u32, (u64, Records)>,
    ledger: BTreeMap<String, usize>,
}

impl Acknowledged {
    fn apply(&mut self, batch: &ShardBatch) {
        let (sequence, records) = self.shards.entry(batch.shard).or_default();
        assert_eq!(batch.sequence, *sequence + 1);
        *sequence = batch.sequence;
        for (key, value) in &batch.records {
            match value {
                Some(value) => records.insert(key.clone(), value.clone()),
                None => records.remove(key),
            };
        }
        for entry in &batch.ledger {
            *self.ledger.entry(entry.sku.to_string()).or_default() += 1;
        }
    }
}

struct Node {
    rng: Rng,
    catalog: Catalog,
    disk: Arc<SimDisk>,
    store: Option<LogStore<Arc<SimDisk>>>,
    shards: BTreeMap<u32, ShardState>,
    acknowledged: Acknowledged,
    now: i64,
    next_id: u64,
    crashes: usize,
    /// Set once a segment was deleted: the simulated store's ledger index
    /// lives in memory and is rebuilt from the log that is left, so from
    /// then on its entry counts are not checked.
    compacted: bool,
    ledger_checks: usize,
}

fn options() -> LogOptions {
    LogOptions { segment_bytes: 2048, ..LogOptions::default() }
}

impl Node {
    fn new(seed: u64) -> Self {
        let disk = Arc::new(SimDisk::new());
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        Self {
            rng: Rng::new(seed),
            catalog: catalog(),
            disk,
            store: Some(store),
            shards: BTreeMap::new(),
            acknowledged: Acknowledged::default(),
            now: START_MS,
            next_id: 0,
            crashes: 0,
            compacted: false,
            ledger_checks: 0,
        }
    }

    fn store(&self) -> &LogStore<Arc<SimDisk>> {
        self.store.as_ref().expect("the store is open")
    }

    fn shard(&mut self, shard: u32) -> &mut ShardState {
        let now = self.now;
        self.shards.entry(shard).or_insert_with(|| {
            let mut state = ShardState::new(shard, 1, settings());
            assert!(state.tick(now).is_empty());
            state
        })
    }

    fn deliver(&mut self, ops: Vec<(u32, LineOp)>) {
        let (catalog, now) = (self.catalog.clone(), self.now);
        for (shard, op) in ops {
            self.shard(shard).apply_line_op(&op, &catalog, now).expect("only holds can fail");
        }
    }

    fn receive(&mut self) {
        self.next_id += 1;
        let event = StockEvent {
            id: EventId::parse("event", &format!("e-{}", self.next_id)).unwrap(),
            sku: Sku::parse("sku", self.rng.pick(&SKUS)).unwrap(),
            location: LocationId::parse("location", self.rng.pick(&LOCATIONS)).unwrap(),
            kind: StockEventKind::Received { quantity: 1 + self.rng.below(5) as i64 },
        };
        let (catalog, now) = (self.catalog.clone(), self.now);
        let shard = shard_of(event.sku.as_str());
        self.shard(shard).apply_event(&event, &catalog, now).expect("a receipt applies");
    }

    fn reserve(&mut self) {
        self.next_id += 1;
        let first = self.rng.below(SKUS.len() as u64) as usize;
        let count = 1 + self.rng.below(2) as usize;
        let lines = (0..count)
            .map(|i| ReserveLine {
                sku: Sku::parse("sku", SKUS[(first + i) % SKUS.len()]).unwrap(),
                location: LocationId::parse("location", self.rng.pick(&LOCATIONS)).unwrap(),
                quantity: 1 + self.rng.below(3) as i64,
            })
            .collect();
        let request = ReserveRequest {
            id: ReservationId::parse("reservation", &format!("r-{}", self.next_id)).unwrap(),
            channel: ChannelId::parse("channel", "web").unwrap(),
            lines,
            ttl_ms: 1_000 + self.rng.below(20_000) as i64,
            metadata: Default::default(),
        };
        request.check(&self.catalog).expect("a valid request");
        let (catalog, now) = (self.catalog.clone(), self.now);
        let home = shard_of(request.id.as_str());
        let Ok(Begin::Started { holds, version }) = self.shard(home).begin_reserve(&request, now)
        else {
            return;
        };
        let mut held = Vec::new();
        let mut failed = false;
        for (shard, op) in holds {
            match self.shard(shard).apply_line_op(&op, &catalog, now) {
                Ok(()) => held.push((shard, LineOp::Abort { id: request.id.clone(), version })),
                Err(_) => failed = true,
            }
        }
        if failed {
            self.deliver(held);
        }
        self.shard(home).finish_reserve(&request.id, version, !failed, now);
    }

    fn tick(&mut self) {
        let now = self.now;
        let ops: Vec<_> = self.shards.values_mut().flat_map(|state| state.tick(now)).collect();
        self.deliver(ops);
    }

    /// Every shard's drained changes as one group, in shard order.
    fn drain(&mut self) -> Vec<ShardBatch> {
        let mut group = Vec::new();
        for (shard, state) in &mut self.shards {
            let changes = state.drain_changes();
            if changes.is_empty() {
                continue;
            }
            let sequence = self.acknowledged.shards.get(shard).map_or(0, |(s, _)| *s) + 1;
            group.push(ShardBatch {
                shard: *shard,
                epoch: 1,
                sequence,
                records: changes.records,
                ledger: changes.ledger,
            });
        }
        group
    }

    /// A group commit. `Err` (the store failed) means the node must crash.
    fn group_commit(&mut self) -> Result<(), Vec<ShardBatch>> {
        let group = self.drain();
        if group.is_empty() {
            return Ok(());
        }
        match self.store().commit(&group) {
            Ok(()) => {
                group.iter().for_each(|batch| self.acknowledged.apply(batch));
                Ok(())
            }
            Err(_) => Err(group),
        }
    }

    /// A group whose write a crash cuts at a random byte: never acknowledged.
    fn torn_commit(&mut self) -> Vec<ShardBatch> {
        let group = self.drain();
        if group.is_empty() {
            return group;
        }
        let before = self.disk.files();
        if self.store().commit(&group).is_err() {
            return group;
        }
        let after = self.disk.files();
        let (path, content) = after
            .iter()
            .rfind(|(path, content)| {
                path.starts_with("log/") && before.get(*path).map(Vec::len) != Some(content.len())
            })
            .expect("the commit grew a segment");
        let start = before.get(path).map_or(0, Vec::len);
        let cut = start + self.rng.below((content.len() - start + 1) as u64) as usize;
        self.disk.set_file(path, content[..cut].to_vec());
        group
    }

    fn checkpoint_and_compact(&mut self) {
        let candidates: Vec<u32> = self.acknowledged.shards.keys().copied().collect();
        if candidates.is_empty() {
            return;
        }
        let shard = self.rng.pick(&candidates);
        let (sequence, records) = &self.acknowledged.shards[&shard];
        let checkpoint = Checkpoint {
            shard,
            epoch: 1,
            sequence: *sequence,
            records: records.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        self.store().write_checkpoint(&checkpoint).unwrap();
        if self.rng.below(2) == 0 {
            self.store().rotate_log();
        }
        // Let the indexer catch up first, so compaction does not depend on
        // thread timing and a seed replays exactly.
        let query = LedgerQuery { sku: Some(SKUS[0].into()), ..LedgerQuery::default() };
        self.store().query_ledger(&query).unwrap();
        if self.store().compact_log().unwrap() > 0 {
            self.compacted = true;
        }
    }

    /// Crashes, reopens, checks what was recovered against what was
    /// acknowledged (plus whole batches of `unacknowledged`), and recovers.
    fn crash(&mut self, unacknowledged: Vec<ShardBatch>) {
        self.crashes += 1;
        self.store = None;
        let mode = match self.rng.below(3) {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::Tear { keep: self.rng.below(200) as usize },
            _ => CrashMode::KeepUnsynced,
        };
        self.disk.crash(mode);
        let store = LogStore::simulated(Arc::clone(&self.disk), options()).expect("reopens");
        let loaded = store.load_all().expect("loads");
        // The batches of the unacknowledged group that survived: a prefix.
        let survived: Vec<bool> = unacknowledged
            .iter()
            .map(|batch| loaded[batch.shard as usize].sequence == batch.sequence)
            .collect();
        let whole = survived.iter().take_while(|survived| **survived).count();
        assert!(
            survived[whole..].iter().all(|survived| !survived),
            "batches of the cut group survived out of order: {survived:?}"
        );
        for batch in &unacknowledged[..whole] {
            self.acknowledged.apply(batch);
        }
        for (index, shard) in loaded.iter().enumerate() {
            let (sequence, records) =
                self.acknowledged.shards.get(&(index as u32)).cloned().unwrap_or_default();
            assert_eq!(shard.sequence, sequence, "shard {index}: sequence");
            let loaded_records: Records = shard.records.iter().cloned().collect();
            assert!(loaded_records == records, "shard {index}: records differ");
        }
        self.check_ledger(&store);

        // Restore every shard, check it dumps what was stored, recover.
        self.shards.clear();
        for shard in loaded.into_iter().filter(|shard| shard.sequence > 0) {
            let state = ShardState::restore(shard.shard, shard.epoch, settings(), shard.records)
                .expect("restores");
            let (_, records) = &self.acknowledged.shards[&shard.shard];
            // All but the meta record: a restore moves the operation
            // sequence past the dead process's (`RESTART_GAP`).
            let without_meta = |mut records: Records| {
                records.remove(&b"m"[..]);
                records
            };
            assert!(
                without_meta(state.dump()) == without_meta(records.clone()),
                "shard {}: dump after restore",
                shard.shard
            );
            self.shards.insert(shard.shard, state);
        }
        recover(&mut self.shards, &self.catalog, self.now);
        self.store = Some(store);
    }

    fn check_ledger(&mut self, store: &LogStore<Arc<SimDisk>>) {
        if self.compacted {
            return;
        }
        self.ledger_checks += 1;
        for sku in SKUS {
            let mut token = Vec::new();
            let mut count = 0;
            loop {
                let query = LedgerQuery {
                    sku: Some(sku.into()),
                    limit: 1000,
                    page_token: token,
                    ..LedgerQuery::default()
                };
                let page = store.query_ledger(&query).unwrap();
                count += page.entries.len();
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            let expected = self.acknowledged.ledger.get(sku).copied().unwrap_or(0);
            assert_eq!(count, expected, "ledger entries of {sku}");
        }
    }

    fn step(&mut self) {
        self.now += self.rng.below(1_500) as i64;
        match self.rng.below(100) {
            0..30 => self.receive(),
            30..55 => self.reserve(),
            55..62 => self.tick(),
            62..82 => {
                if let Err(group) = self.group_commit() {
                    self.crash(group);
                }
            }
            82..88 => self.checkpoint_and_compact(),
            88..92 => self.disk.fail_next_syncs(1),
            92..96 => {
                let group = self.torn_commit();
                self.crash(group);
            }
            _ => self.crash(Vec::new()),
        }
    }
}

fn run(seed: u64) -> (usize, usize) {
    let mut node = Node::new(seed);
    for _ in 0..STEPS {
        node.step();
    }
    let group = node.torn_commit();
    node.crash(group);
    (node.crashes, node.ledger_checks)
}

#[test]
fn crashes_lose_nothing_acknowledged_and_keep_nothing_partial() {
    let seeds: Vec<u64> = match std::env::var("ATP_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("ATP_SIM_SEED is a number")],
        Err(_) => (1..=SEEDS).collect(),
    };
    let (mut crashes, mut ledger_checks) = (0, 0);
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| run(seed));
        match outcome {
            Ok((count, checks)) => {
                crashes += count;
                ledger_checks += checks;
            }
            Err(panic) => {
                panic!("seed {seed} failed (replay: ATP_SIM_SEED={seed}): {panic:?}")
            }
        }
    }
    eprintln!("{crashes} crashes, {ledger_checks} with the ledger counted");
    assert!(crashes > 0 && ledger_checks > 0);
}
