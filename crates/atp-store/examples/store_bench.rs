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

    let store = FjallStore::open(&dir, StoreOptions::default()).expect("open the store");
    durable_commits(&store);
    fill(&store, total);
    drop(store);

    let started = Instant::now();
    let store = FjallStore::open(&dir, StoreOptions::default()).expect("reopen the store");
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
