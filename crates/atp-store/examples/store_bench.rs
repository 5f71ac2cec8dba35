//! Measures the store on this machine: durable commits, and loading a node's
//! worth of shard state for recovery.
//!
//! ```text
//! cargo run --release -p atp-store --example store_bench -- [DIR] [RECORDS]
//! ```
//!
//! DIR (default: a temporary directory under /tmp) must be on the disk to
//! measure (not tmpfs). RECORDS (default 3,000,000) are spread over the 1024
//! shards as a third positions, a third holds and a third reservations.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use atp_core::hash::SHARD_COUNT;
use atp_core::ids::{LocationId, Sku};
use atp_core::ledger::{LedgerEntry, LedgerKind};
use atp_core::position::Deltas;
use atp_store::{FjallStore, ShardBatch, Store, StoreOptions};

/// Records per commit when filling the store.
const FILL_BATCH: usize = 65_536;

fn main() {
    let mut args = std::env::args().skip(1);
    let temporary = tempfile::tempdir().expect("create a temporary directory");
    let dir = args.next().map_or_else(|| temporary.path().to_owned(), PathBuf::from);
    let total: usize =
        args.next().map_or(3_000_000, |count| count.parse().expect("RECORDS is a number"));
    println!("store in {}", dir.display());

    let mut options = StoreOptions::default();
    if let Ok(mib) = std::env::var("ATP_MEMTABLE_MIB") {
        options.memtable_size_bytes =
            mib.parse::<u64>().expect("ATP_MEMTABLE_MIB is a number") << 20;
    }
    println!("{options:?}");
    if std::env::var_os("ATP_LOAD_ONLY").is_none() {
        let store = FjallStore::open(&dir, options.clone()).expect("open the store");
        durable_commits(&store);
        group_commits(&store);
        fill(&store, total);
    }

    let started = Instant::now();
    let store = FjallStore::open(&dir, options).expect("reopen the store");
    println!("reopen (journal replay): {:?}", started.elapsed());
    load(&store, total);
    // Again, with the blocks in the OS page cache and fjall's block cache.
    load(&store, total);
}

/// A value of `length` bytes that compresses about as badly as real ones.
fn value(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Half the bytes from a small alphabet, as in encoded ids and counters.
            if state & 1 == 0 { b'a' + (state >> 8) as u8 % 16 } else { (state >> 16) as u8 }
        })
        .collect()
}

fn durable_commits(store: &FjallStore) {
    let mut latencies = Vec::with_capacity(1000);
    let started = Instant::now();
    for commit in 0..1000u64 {
        let shard = u32::try_from(commit % u64::from(SHARD_COUNT)).expect("fits");
        let records = (0..64u64)
            .map(|i| {
                (format!("bench/{commit}/{i}").into_bytes(), Some(value(commit * 64 + i, 200)))
            })
            .collect();
        let batch = ShardBatch { shard, epoch: 1, records, ledger: Vec::new() };
        let one = Instant::now();
        store.commit(&[batch]).expect("commit");
        latencies.push(one.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "1000 durable commits of 64 × 200 B records: {elapsed:?} total, mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
        elapsed / 1000,
        latencies[500],
        latencies[990],
        latencies[999]
    );
}

/// Group commits as a busy node makes them: 256 shard batches of 3 records
/// (150 B) and 2 ledger entries each, one fsync per commit.
fn group_commits(store: &FjallStore) {
    let commits: u64 = std::env::var("ATP_GROUP_COMMITS")
        .map_or(200, |count| count.parse().expect("ATP_GROUP_COMMITS is a number"));
    let location = LocationId::parse("location", "warehouse-01").expect("valid");
    let mut sequence = 0;
    let mut latencies = Vec::new();
    let started = Instant::now();
    for commit in 0..commits {
        let batches: Vec<ShardBatch> = (0..256u32)
            .map(|i| {
                let shard = (i * 4 + u32::try_from(commit % 4).expect("fits")) % SHARD_COUNT;
                let records = (0..3u64)
                    .map(|r| {
                        let key = format!("g/{commit}/{i}/{r}").into_bytes();
                        (key, Some(value(commit * 1000 + u64::from(i) * 3 + r, 150)))
                    })
                    .collect();
                let sku = Sku::parse("sku", &format!("sku-{commit}-{i}")).expect("valid");
                let ledger = (0..2)
                    .map(|_| {
                        sequence += 1;
                        LedgerEntry {
                            sequence,
                            at_ms: 1_700_000_000_000 + i64::try_from(commit).expect("fits"),
                            sku: sku.clone(),
                            location: location.clone(),
                            cause: format!("reservation-{commit}-{i}"),
                            kind: LedgerKind::Reserve,
                            deltas: Deltas { reserved: 1, ..Deltas::default() },
                            on_hand: 100,
                            reserved: 1,
                            committed: 0,
                            unavailable: 0,
                            incoming: 0,
                        }
                    })
                    .collect();
                ShardBatch { shard, epoch: 1, records, ledger }
            })
            .collect();
        let one = Instant::now();
        store.commit(&batches).expect("commit");
        latencies.push(one.elapsed());
    }
    let elapsed: Duration = latencies.iter().sum();
    latencies.sort();
    let count = latencies.len();
    let slow = latencies.iter().filter(|latency| **latency > Duration::from_millis(20)).count();
    println!(
        "{count} group commits of 256 batches × (3 records + 2 ledger entries): {elapsed:?} in \
         commit ({:?} wall with building), mean {:?}, p50 {:?}, p99 {:?}, max {:?}, {slow} over \
         20 ms; {:.0} shard batches/s",
        started.elapsed(),
        elapsed / u32::try_from(count).expect("fits"),
        latencies[count / 2],
        latencies[count * 99 / 100],
        latencies[count - 1],
        rate(count * 256, elapsed)
    );
}

fn fill(store: &FjallStore, total: usize) {
    let started = Instant::now();
    let mut batches: Vec<ShardBatch> = Vec::new();
    let mut pending = 0;
    let mut written_bytes = 0;
    for n in 0..total {
        let (kind, length) = match n % 3 {
            0 => ("p", 120),
            1 => ("h", 150),
            _ => ("r", 190),
        };
        let shard = u32::try_from(n % SHARD_COUNT as usize).expect("fits");
        let key = format!("{kind}/sku-{n:08}/loc-{:02}", n % 17).into_bytes();
        let value = value(n as u64, length);
        written_bytes += key.len() + value.len();
        let index = usize::try_from(shard).expect("fits");
        if batches.is_empty() {
            batches = (0..SHARD_COUNT)
                .map(|shard| ShardBatch { shard, epoch: 1, ..ShardBatch::default() })
                .collect();
        }
        batches[index].records.push((key, Some(value)));
        pending += 1;
        if pending == FILL_BATCH || n + 1 == total {
            store.commit(&batches).expect("commit");
            batches.clear();
            pending = 0;
        }
    }
    println!("fill: {total} records ({} MB) in {:?}", written_bytes / 1_000_000, started.elapsed());
}

fn load(store: &FjallStore, total: usize) {
    let started = Instant::now();
    let one = store.load_shard(17).expect("load a shard");
    let one_elapsed = started.elapsed();
    println!("load_shard(17): {} records in {one_elapsed:?}", one.len());

    let started = Instant::now();
    let mut count = 0;
    for shard in 0..SHARD_COUNT {
        count += store.load_shard(shard).expect("load a shard").len();
    }
    let by_shard = started.elapsed();
    println!("load_shard × {SHARD_COUNT}: {count} records in {by_shard:?}");

    let started = Instant::now();
    let all = store.load_all().expect("load everything");
    let count: usize = all.iter().map(|shard| shard.records.len()).sum();
    let load_all = started.elapsed();
    println!("load_all: {count} records in {load_all:?} ({:.0} records/s)", rate(count, load_all));
    assert!(count >= total, "every record loaded");
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}
