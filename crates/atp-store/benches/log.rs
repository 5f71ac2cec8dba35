//! Log records (shard batches) per second at group sizes 1, 16 and 256: one
//! `Store::commit` of N batches is one write and one fdatasync, as the
//! node's group commit does.
//!
//! - `real_disk`: [`LogStore::open`] on a fresh directory under
//!   `$ATP_BENCH_DIR` (default: the system's temp dir; it must be a real
//!   disk, not tmpfs, or the fdatasync costs nothing);
//! - `memory`: [`MemoryStore`] on a [`SimDisk`](atp_store::SimDisk), no real
//!   write or fsync: the CPU cost of the log alone (encoding, checksums,
//!   bookkeeping).
//!
//! Each batch is what a hold writes: its line-hold record and the SKU's
//! positions record (about 60 bytes of value each) and one ledger entry,
//! each batch of a group from another shard, every shard's sequence
//! gap-free. Only the `commit` call is timed; building the groups is not.
//! Both stores run their ledger indexer thread as in the node (it reads the
//! log and indexes the entries, on the other core). A store that has taken
//! [`BATCHES_PER_STORE`] batches is replaced by a fresh one, untimed, so the
//! bench's disk and memory use stay bounded.
//!
//! ```sh
//! cargo bench -p atp-store --bench log
//! ```

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use atp_core::hash::SHARD_COUNT;
use atp_core::ids::{LocationId, Sku};
use atp_core::ledger::{LedgerEntry, LedgerKind};
use atp_core::position::Deltas;
use atp_store::{LogOptions, LogStore, MemoryStore, ShardBatch, Store};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

/// Batches per `commit` call.
const GROUP_SIZES: [usize; 3] = [1, 16, 256];
/// Batches a store takes before it is replaced (about 300 MB of log).
const BATCHES_PER_STORE: u64 = 1_000_000;
/// Bytes of each record's value: a line hold, a SKU's positions.
const VALUE_BYTES: usize = 60;
/// The environment variable naming where the real-disk stores go.
const BENCH_DIR_VARIABLE: &str = "ATP_BENCH_DIR";

/// Opens a fresh store of one kind.
type Open = fn() -> Opened;

/// An open store, and the directory it lives in (removed after it closes).
struct Opened {
    store: Box<dyn Store>,
    _dir: Option<TempDir>,
}

fn bench_dir() -> PathBuf {
    std::env::var_os(BENCH_DIR_VARIABLE).map_or_else(std::env::temp_dir, PathBuf::from)
}

fn open_real_disk() -> Opened {
    let dir = tempfile::Builder::new()
        .prefix("atp-log-bench-")
        .tempdir_in(bench_dir())
        .expect("a fresh directory for the bench's store");
    let store = LogStore::open(dir.path(), LogOptions::default()).expect("a fresh store opens");
    Opened { store: Box::new(store), _dir: Some(dir) }
}

fn open_memory() -> Opened {
    Opened { store: Box::new(MemoryStore::new()), _dir: None }
}

/// A store and the shard batches to commit to it.
struct Log {
    open: Open,
    opened: Option<Opened>,
    /// Batches the current store has taken.
    taken: u64,
    /// Per shard: the last batch sequence and the last ledger sequence.
    sequences: Vec<(u64, u64)>,
    next_shard: usize,
    next_hold: u64,
    sku: Sku,
    location: LocationId,
}

impl Log {
    fn new(open: Open) -> Self {
        Self {
            open,
            opened: None,
            taken: 0,
            sequences: vec![(0, 0); SHARD_COUNT as usize],
            next_shard: 0,
            next_hold: 0,
            sku: Sku::parse("sku", "sku-bench-0001").expect("a valid sku"),
            location: LocationId::parse("location", "loc-bench-1").expect("a valid location"),
        }
    }

    /// The store to commit `size` batches to: a fresh one once the current
    /// one has taken its share.
    fn store(&mut self, size: usize) -> &dyn Store {
        if self.taken + size as u64 > BATCHES_PER_STORE {
            // Close the old store (its indexer stops, its files go) first.
            self.opened = None;
        }
        if self.opened.is_none() {
            self.taken = 0;
            self.sequences.fill((0, 0));
            self.opened = Some((self.open)());
        }
        self.taken += size as u64;
        &*self.opened.as_ref().expect("opened above").store
    }

    /// The next batch: one hold of one unit on the next shard.
    fn batch(&mut self) -> ShardBatch {
        let shard = self.next_shard;
        self.next_shard = (self.next_shard + 1) % self.sequences.len();
        self.next_hold += 1;
        let (sequence, ledger_sequence) = &mut self.sequences[shard];
        *sequence += 1;
        *ledger_sequence += 1;
        let hold = format!("res-{:032x}", self.next_hold);
        let mut hold_key = b"h".to_vec();
        hold_key.extend_from_slice(hold.as_bytes());
        let mut positions_key = b"p".to_vec();
        positions_key.extend_from_slice(self.sku.as_str().as_bytes());
        let at_ms = 1_700_000_000_000 + self.next_hold as i64;
        let entry = LedgerEntry {
            sequence: *ledger_sequence,
            at_ms,
            sku: self.sku.clone(),
            location: self.location.clone(),
            cause: hold.into(),
            kind: LedgerKind::Reserve,
            deltas: Deltas { reserved: 1, ..Deltas::default() },
            on_hand: 1_000_000,
            reserved: 1,
            committed: 0,
            unavailable: 0,
            incoming: 0,
        };
        ShardBatch {
            shard: u32::try_from(shard).expect("fewer shards than u32::MAX"),
            epoch: 1,
            sequence: *sequence,
            records: vec![
                (hold_key, Some(vec![0x5a; VALUE_BYTES])),
                (positions_key, Some(vec![0xa5; VALUE_BYTES])),
            ],
            ledger: vec![entry],
        }
    }

    /// Commits `iterations` groups of `size` batches; returns the time of
    /// the commit calls alone.
    fn run(&mut self, iterations: u64, size: usize) -> Duration {
        let mut elapsed = Duration::ZERO;
        for _ in 0..iterations {
            let group: Vec<ShardBatch> = (0..size).map(|_| self.batch()).collect();
            let store = self.store(size);
            let start = Instant::now();
            store.commit(black_box(&group)).expect("the bench's commit succeeds");
            elapsed += start.elapsed();
        }
        elapsed
    }
}

fn commit_groups(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_commit");
    let stores: [(&str, Open); 2] = [("real_disk", open_real_disk), ("memory", open_memory)];
    for (name, open) in stores {
        for size in GROUP_SIZES {
            let mut log = Log::new(open);
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter_custom(|iterations| log.run(iterations, size));
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = commit_groups
}
criterion_main!(benches);
