//! Reopening a [`LogStore`]: what was committed loads back, checkpoints plus
//! the log after them equal the whole log, compaction deletes only covered
//! segments, a directory of another data format is refused, and a ledger
//! query after a crash sees every acknowledged entry.

mod common;

use std::path::Path;
use std::sync::Arc;

use atp_core::ledger::LedgerEntry;
use atp_store::{
    LedgerQuery, LogOptions, LogStore, MemoryStore, RealDisk, ShardBatch, SimDisk, Store,
    StoreError,
};
use common::{Model, assert_loads, batch, delete, entry, put};

fn open(dir: &Path) -> LogStore<RealDisk> {
    LogStore::open(dir, LogOptions::default()).expect("open the store")
}

/// (at_ms, sequence) of each entry, to compare pages briefly.
fn times(entries: &[LedgerEntry]) -> Vec<(i64, u64)> {
    entries.iter().map(|entry| (entry.at_ms, entry.sequence)).collect()
}

fn query() -> LedgerQuery {
    LedgerQuery::default()
}

fn small_segments() -> LogOptions {
    LogOptions { segment_bytes: 300, ..LogOptions::default() }
}

/// Commits `groups` groups of a few batches over shards 0..5 (keys overwritten
/// and deleted), recording them in `model`.
fn commit_groups(store: &dyn Store, model: &mut Model, groups: u64) {
    for group in 0..groups {
        let batches: Vec<ShardBatch> = (0..5u32)
            .filter(|shard| (group + u64::from(*shard)) % 3 != 0)
            .map(|shard| {
                let mut writes = vec![put(&format!("k{}", group % 7), &format!("v{group}"))];
                if group % 4 == 0 {
                    writes.push(delete(&format!("k{}", (group + 3) % 7)));
                }
                let batch = batch(shard, 1 + group / 10, model.next(shard), writes);
                model.apply(&batch);
                batch
            })
            .collect();
        store.commit(&batches).unwrap();
    }
}

#[test]
fn what_was_committed_is_loaded_after_reopening_a_real_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    {
        let store = LogStore::open(dir.path(), small_segments()).unwrap();
        commit_groups(&store, &mut model, 40);
        store.save_catalog(b"catalog").unwrap();
        assert!(store.log_stats().segments > 3, "{:?}", store.log_stats());
    }
    let store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert_loads(&store, &model);
    assert_eq!(store.load_catalog().unwrap(), Some(b"catalog".to_vec()));
    // And it goes on from there.
    commit_groups(&store, &mut model, 10);
    drop(store);
    assert_loads(&LogStore::open(dir.path(), small_segments()).unwrap(), &model);
}

#[test]
fn what_was_committed_is_loaded_after_a_crash_of_a_simulated_disk() {
    let disk = Arc::new(SimDisk::new());
    let mut model = Model::default();
    {
        let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
        commit_groups(&store, &mut model, 40);
    }
    disk.crash(atp_store::CrashMode::DropUnsynced);
    let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
    assert_loads(&store, &model);
}

#[test]
fn checkpoints_plus_the_log_after_them_equal_the_whole_log() {
    let disk = Arc::new(SimDisk::new());
    let mut model = Model::default();
    let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
    commit_groups(&store, &mut model, 20);
    // Checkpoints of some shards mid-way, then more batches after them.
    for shard in [0, 2, 3] {
        store.write_checkpoint(&model.checkpoint(shard)).unwrap();
    }
    commit_groups(&store, &mut model, 20);
    store.write_checkpoint(&model.checkpoint(3)).unwrap();
    assert_loads(&store, &model);
    drop(store);
    let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
    assert_loads(&store, &model);

    // A checkpoint is trusted over the log it covers: one holding a record
    // the log never wrote shows it (so the checkpoint really is read).
    let mut marked = model.checkpoint(1);
    marked.records.push((b"zz-from-checkpoint".to_vec(), b"1".to_vec()));
    store.write_checkpoint(&marked).unwrap();
    let all = store.load_all().unwrap();
    assert_eq!(all[1].records.last().unwrap().0, b"zz-from-checkpoint");
}

#[test]
fn compaction_deletes_only_segments_that_checkpoints_cover() {
    let disk = Arc::new(SimDisk::new());
    let store = LogStore::simulated(Arc::clone(&disk), LogOptions::default()).unwrap();
    let mut model = Model::default();
    let commit = |store: &MemoryStore, model: &mut Model, shard: u32, tag: &str| {
        let batch = ShardBatch {
            shard,
            epoch: 1,
            sequence: model.next(shard),
            records: vec![put("k", tag)],
            ledger: vec![entry(model.next(shard), 1, "S", "L1", tag)],
        };
        model.apply(&batch);
        store.commit(&[batch]).unwrap();
    };
    // Segment 1: shard 1 twice. Segment 2: shard 2. Segment 3: shard 1.
    commit(&store, &mut model, 1, "a");
    commit(&store, &mut model, 1, "b");
    let covers_first_batch_only = model.checkpoint(1);
    let mut first_of_shard_1 = covers_first_batch_only.clone();
    first_of_shard_1.sequence = 1;
    store.rotate_log();
    commit(&store, &mut model, 2, "c");
    store.rotate_log();
    commit(&store, &mut model, 1, "d");
    let indexed = |store: &MemoryStore| {
        // A query waits for the indexer to pass everything durable.
        store.query_ledger(&LedgerQuery { sku: Some("S".into()), ..query() }).unwrap();
    };
    indexed(&store);
    assert_eq!(store.log_stats().segments, 3);
    assert_eq!(store.compact_log().unwrap(), 0, "no checkpoints: nothing is covered");

    // Shard 1's checkpoint of batch 1 does not cover its batch 2 in segment 1.
    store.write_checkpoint(&first_of_shard_1).unwrap();
    assert_eq!(store.compact_log().unwrap(), 0);

    // Covering shard 1 frees segment 1 (shard 2, idle there, does not pin
    // it); segment 2 stays: shard 2 has no checkpoint.
    store.write_checkpoint(&model.checkpoint(1)).unwrap();
    assert_eq!(store.compact_log().unwrap(), 1);
    let segments = |disk: &SimDisk| -> Vec<String> {
        disk.files().into_keys().filter(|name| name.starts_with("log/")).collect()
    };
    assert_eq!(segments(&disk), ["log/00000000000000000002.log", "log/00000000000000000003.log"]);
    assert_loads(&store, &model);

    // Covering shard 2 frees segment 2; segment 3 is the current one.
    store.write_checkpoint(&model.checkpoint(2)).unwrap();
    assert_eq!(store.compact_log().unwrap(), 1);
    assert_eq!(segments(&disk), ["log/00000000000000000003.log"]);
    assert_eq!(store.compact_log().unwrap(), 0);
    assert_loads(&store, &model);
    // The ledger of the deleted segments outlives them.
    let page = store.query_ledger(&LedgerQuery { sku: Some("S".into()), ..query() }).unwrap();
    assert_eq!(page.entries.len(), 4);
    drop(store);
    let store = LogStore::simulated(Arc::clone(&disk), LogOptions::default()).unwrap();
    assert_loads(&store, &model);
}

#[test]
fn compaction_waits_for_the_indexer() {
    let store = LogStore::simulated(
        Arc::new(SimDisk::new()),
        // The indexer only runs when a query asks (a day between rounds).
        LogOptions { index_interval_ms: 86_400_000, ..LogOptions::default() },
    )
    .unwrap();
    let mut model = Model::default();
    commit_groups(&store, &mut model, 1);
    store.rotate_log();
    commit_groups(&store, &mut model, 1);
    for shard in 0..5 {
        store.write_checkpoint(&model.checkpoint(shard)).unwrap();
    }
    let before = store.log_stats();
    assert!(before.indexed.segment < 2, "{before:?}");
    assert_eq!(store.compact_log().unwrap(), 0, "segment 1 is not indexed yet");
    store.query_ledger(&LedgerQuery { sku: Some("S".into()), ..query() }).unwrap();
    assert_eq!(store.compact_log().unwrap(), 1);
}

#[test]
fn a_non_empty_directory_without_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal"), b"fjall data").unwrap();
    match LogStore::open(dir.path(), LogOptions::default()) {
        Err(StoreError::Format(message)) => {
            assert!(message.contains("data format 1"), "{message}");
            assert!(message.contains("data format 2"), "{message}");
        }
        Err(other) => panic!("expected a format error, got {other:?}"),
        Ok(_) => panic!("a version-1 directory was opened"),
    }
    assert!(!dir.path().join("FORMAT").exists(), "nothing was written into it");

    std::fs::write(dir.path().join("FORMAT"), b"atp-data-format 3\n").unwrap();
    match LogStore::open(dir.path(), LogOptions::default()) {
        Err(StoreError::Format(message)) => assert!(message.contains("format 3"), "{message}"),
        other => panic!("expected a format error, got {:?}", other.map(|_| ())),
    }

    let empty = tempfile::tempdir().unwrap();
    drop(open(empty.path()));
    assert_eq!(std::fs::read(empty.path().join("FORMAT")).unwrap(), b"atp-data-format 2\n");
    drop(open(empty.path()));
}

fn ledger_batches(model: &mut Model, groups: u64) -> Vec<Vec<ShardBatch>> {
    (0..groups)
        .map(|group| {
            (0..3u32)
                .map(|shard| {
                    let sequence = model.next(shard);
                    let at_ms = i64::try_from(group).unwrap();
                    let cause = format!("g{group}");
                    let batch = ShardBatch {
                        shard,
                        epoch: 1,
                        sequence,
                        records: vec![put("k", &cause)],
                        ledger: vec![entry(sequence, at_ms, "S", "L1", &cause)],
                    };
                    model.apply(&batch);
                    batch
                })
                .collect()
        })
        .collect()
}

fn every_entry(store: &dyn Store) -> Vec<(i64, u64)> {
    let mut seen = Vec::new();
    let mut token = Vec::new();
    loop {
        let query =
            LedgerQuery { sku: Some("S".into()), limit: 1000, page_token: token, ..query() };
        let page = store.query_ledger(&query).unwrap();
        seen.extend(times(&page.entries));
        token = page.next_page_token;
        if token.is_empty() {
            return seen;
        }
    }
}

#[test]
fn a_ledger_query_after_a_crash_sees_every_acknowledged_entry() {
    let mut model = Model::default();
    let groups = ledger_batches(&mut model, 300);
    let expected: Vec<(i64, u64)> = groups
        .iter()
        .flatten()
        .flat_map(|batch| times(&batch.ledger))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .flat_map(|time| std::iter::repeat_n(time, 3))
        .collect();

    // Simulated: the in-memory index dies with the store; the log rebuilds it.
    let disk = Arc::new(SimDisk::new());
    {
        let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
        for group in &groups {
            store.commit(group).unwrap();
        }
    }
    disk.crash(atp_store::CrashMode::DropUnsynced);
    let store = LogStore::simulated(Arc::clone(&disk), small_segments()).unwrap();
    assert_eq!(every_entry(&store), expected);

    // Real: the fjall index was never synced; whatever of it survived, the
    // indexer resumes from its cursor.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), small_segments()).unwrap();
        for group in &groups {
            store.commit(group).unwrap();
        }
    }
    let store = LogStore::open(dir.path(), small_segments()).unwrap();
    assert_eq!(every_entry(&store), expected);
    assert_loads(&store, &model);
}
