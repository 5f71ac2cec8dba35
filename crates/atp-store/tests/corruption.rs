//! Damage on disk: a write torn by a crash at every byte of the tail is
//! truncated to whole batches; a flipped byte anywhere else (an acknowledged
//! record, an earlier segment, a checkpoint, the catalog) refuses to open or
//! load, naming the file and offset.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use atp_store::fuzzing::encode_segment;
use atp_store::{LedgerQuery, LogOptions, LogStore, ShardBatch, SimDisk, Store, StoreError};
use common::{Model, assert_loads, entry, put};

fn options() -> LogOptions {
    LogOptions { segment_bytes: 400, ..LogOptions::default() }
}

/// A disk holding exactly `files`.
fn disk_with(files: &BTreeMap<String, Vec<u8>>) -> Arc<SimDisk> {
    let disk = Arc::new(SimDisk::new());
    for (path, content) in files {
        disk.set_file(path, content.clone());
    }
    disk
}

/// A group of batches over shards 0..4 (one ledger entry each), in `model`.
fn group(model: &mut Model, number: u64) -> Vec<ShardBatch> {
    (0..4u32)
        .filter(|shard| (number + u64::from(*shard)) % 4 != 3)
        .map(|shard| {
            let sequence = model.next(shard);
            let cause = format!("g{number}");
            let batch = ShardBatch {
                shard,
                epoch: 1,
                sequence,
                records: vec![put(&format!("k{}", number % 3), &cause), put("last", &cause)],
                ledger: vec![entry(sequence, i64::try_from(number).unwrap(), "S", "L1", &cause)],
            };
            model.apply(&batch);
            batch
        })
        .collect()
}

fn ledger_count(store: &dyn Store) -> usize {
    let query = LedgerQuery { sku: Some("S".into()), limit: 1000, ..LedgerQuery::default() };
    let page = store.query_ledger(&query).expect("a ledger query");
    assert!(page.next_page_token.is_empty());
    page.entries.len()
}

fn corrupt_message(result: Result<(), StoreError>) -> String {
    match result {
        Err(StoreError::Corrupt(message)) => message,
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// Opens a store on `disk` and loads everything; the first error.
fn open_and_load(disk: &Arc<SimDisk>) -> Result<(), StoreError> {
    let store = LogStore::simulated(Arc::clone(disk), options())?;
    store.load_all()?;
    store.load_catalog()?;
    Ok(())
}

#[test]
fn a_tail_cut_at_any_byte_recovers_the_acknowledged_batches_and_whole_ones_after() {
    let disk = Arc::new(SimDisk::new());
    let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
    let mut model = Model::default();
    for number in 0..30 {
        store.commit(&group(&mut model, number)).unwrap();
    }
    let acknowledged = disk.files();
    assert!(acknowledged.keys().filter(|path| path.starts_with("log/")).count() >= 4);
    let mut after_final = model.clone();
    let final_group = group(&mut after_final, 30);
    store.commit(&final_group).unwrap();
    drop(store);
    let written = disk.files();
    let (path, full) = written.iter().rfind(|(path, _)| path.starts_with("log/")).unwrap();
    let acknowledged_end = acknowledged.get(path).map_or(0, Vec::len);
    // Where each batch of the final group ends in the file.
    let mut ends = Vec::new();
    let mut end = if acknowledged_end == 0 { 16 } else { acknowledged_end };
    for batch in &final_group {
        end += encode_segment(0, std::slice::from_ref(batch)).len() - 16;
        ends.push(end);
    }
    assert_eq!(*ends.last().unwrap(), full.len(), "the final group ends the file");
    // The model after each whole batch of the final group.
    let mut prefixes = vec![model.clone()];
    for batch in &final_group {
        let mut next = prefixes.last().unwrap().clone();
        next.apply(batch);
        prefixes.push(next);
    }
    let entries_before = 30 * 3;

    for cut in acknowledged_end..=full.len() {
        let mut files = written.clone();
        files.insert(path.clone(), full[..cut].to_vec());
        let disk = disk_with(&files);
        let whole = ends.iter().filter(|end| **end <= cut).count();
        let store = LogStore::simulated(Arc::clone(&disk), options())
            .unwrap_or_else(|error| panic!("cut at {cut}: {error}"));
        assert_loads(&store, &prefixes[whole]);
        assert_eq!(ledger_count(&store), entries_before + whole, "cut at {cut}");
        // The store goes on: new batches after the recovered ones survive too.
        let mut model = prefixes[whole].clone();
        store.commit(&group(&mut model, 31)).unwrap();
        drop(store);
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        assert_loads(&store, &model);
    }
}

#[test]
fn a_torn_segment_header_is_a_torn_tail_only_in_the_last_segment() {
    let disk = Arc::new(SimDisk::new());
    let mut model = Model::default();
    {
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        for number in 0..10 {
            store.commit(&group(&mut model, number)).unwrap();
        }
        store.rotate_log();
    }
    let files = disk.files();
    let last = files.keys().rfind(|path| path.starts_with("log/")).unwrap();
    let id: u64 = last[4..24].parse().unwrap();
    let next = format!("log/{:020}.log", id + 1);
    let header = encode_segment(id + 1, &[]);
    for cut in 0..header.len() {
        // The next segment's header, cut by a crash.
        let mut torn = files.clone();
        torn.insert(next.clone(), header[..cut].to_vec());
        let disk = disk_with(&torn);
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        assert_loads(&store, &model);
        let mut model = model.clone();
        store.commit(&group(&mut model, 10)).unwrap();
        drop(store);
        assert_loads(&LogStore::simulated(Arc::clone(&disk), options()).unwrap(), &model);

        // The same cut header followed by another segment is corruption.
        let mut torn = torn.clone();
        torn.insert(format!("log/{:020}.log", id + 2), encode_segment(id + 2, &[]));
        let message = corrupt_message(open_and_load(&disk_with(&torn)));
        assert!(message.contains(&next) && message.contains("offset 0"), "{message}");

        // A header that is not a prefix of the right one is damage, not a tear.
        if cut > 0 {
            let mut damaged = header[..cut].to_vec();
            damaged[cut - 1] ^= 0x20;
            let mut files = files.clone();
            files.insert(next.clone(), damaged);
            let message = corrupt_message(open_and_load(&disk_with(&files)));
            assert!(message.contains(&next) && message.contains("offset"), "{message}");
        }
    }
}

/// Where the record holding byte `at` starts, from a segment's record ends.
fn record_start(starts: &[usize], at: usize) -> usize {
    *starts.iter().rev().find(|start| **start <= at).expect("a byte after the header")
}

#[test]
fn a_flipped_byte_before_the_tail_is_corruption_naming_file_and_offset() {
    let disk = Arc::new(SimDisk::new());
    let mut model = Model::default();
    let mut starts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    {
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        for number in 0..20 {
            let before = disk.files();
            let group = group(&mut model, number);
            store.commit(&group).unwrap();
            let after = disk.files();
            let (path, content) = after
                .iter()
                .find(|(path, content)| {
                    path.starts_with("log/")
                        && before.get(*path).map(Vec::len) != Some(content.len())
                })
                .unwrap();
            let mut at = before.get(path).map_or(16, Vec::len);
            for batch in &group {
                starts.entry(path.clone()).or_default().push(at);
                at += encode_segment(0, std::slice::from_ref(batch)).len() - 16;
            }
            assert_eq!(at, content.len());
        }
        store.write_checkpoint(&model.checkpoint(1)).unwrap();
        store.save_catalog(b"the catalog").unwrap();
    }
    let files = disk.files();
    assert!(open_and_load(&disk_with(&files)).is_ok());
    let last_segment = starts.keys().next_back().unwrap().clone();
    let mut checked = 0;
    for (path, content) in &files {
        let mut end = content.len();
        if *path == last_segment {
            // A damaged last record of the last segment looks like a torn
            // write: it is truncated, by design.
            end = *starts[path].last().unwrap();
        }
        if path == "FORMAT" {
            continue;
        }
        for at in 0..end {
            let mut damaged = files.clone();
            damaged.get_mut(path).unwrap()[at] ^= 0x5A;
            let message = corrupt_message(open_and_load(&disk_with(&damaged)));
            assert!(message.contains(path.as_str()), "byte {at} of {path}: {message}");
            let offset = if path.starts_with("log/") {
                match at {
                    0..6 => 0,
                    6..8 => 6,
                    8..16 => 8,
                    _ => record_start(&starts[path], at),
                }
            } else {
                // A checkpoint or the catalog: the magic, the version, or
                // the checksum at the end.
                let sum_at = content.len() - 8;
                match at {
                    0..8 if path.starts_with("checkpoints/") => 0,
                    8..10 if path.starts_with("checkpoints/") => 8,
                    0..8 => 0,
                    _ => sum_at,
                }
            };
            assert!(
                message.contains(&format!("offset {offset}")),
                "byte {at} of {path}: expected offset {offset}: {message}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "{checked}");
}

#[test]
fn a_torn_tail_on_a_real_disk_is_truncated_and_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::default();
    let store = LogStore::open(dir.path(), options()).unwrap();
    for number in 0..12 {
        store.commit(&group(&mut model, number)).unwrap();
    }
    drop(store);
    let log = dir.path().join("log");
    let mut segments: Vec<_> =
        std::fs::read_dir(&log).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let last = segments.last().unwrap().clone();
    let acknowledged = std::fs::read(&last).unwrap();
    let mut with_final = model.clone();
    let final_group = group(&mut with_final, 12);
    let mut full = acknowledged.clone();
    full.extend_from_slice(&encode_segment(0, &final_group)[16..]);
    // Where each batch of the final group ends.
    let ends: Vec<usize> = (1..=final_group.len())
        .map(|count| acknowledged.len() + encode_segment(0, &final_group[..count]).len() - 16)
        .collect();

    for cut in (acknowledged.len()..full.len()).step_by(7).chain(ends.iter().copied()) {
        std::fs::write(&last, &full[..cut]).unwrap();
        let store = LogStore::open(dir.path(), options()).unwrap();
        let mut expected = model.clone();
        let whole = ends.iter().filter(|end| **end <= cut).count();
        final_group[..whole].iter().for_each(|batch| expected.apply(batch));
        assert_loads(&store, &expected);
        drop(store);
        let kept = std::fs::metadata(&last).unwrap().len() as usize;
        assert!(kept <= cut, "cut at {cut}: {kept} bytes kept");
    }

    // A header cut by a crash in a new last segment: removed, then written again.
    std::fs::write(&last, &full).unwrap();
    let next = last.with_file_name(format!("{:020}.log", segments.len() as u64 + 1));
    std::fs::write(&next, &encode_segment(segments.len() as u64 + 1, &[])[..5]).unwrap();
    let store = LogStore::open(dir.path(), options()).unwrap();
    assert!(!next.exists(), "the headerless segment is removed");
    assert_loads(&store, &with_final);
    store.rotate_log();
    let mut after = with_final.clone();
    store.commit(&group(&mut after, 13)).unwrap();
    drop(store);
    assert!(next.exists());
    assert_loads(&LogStore::open(dir.path(), options()).unwrap(), &after);
}

#[test]
fn compaction_never_trusts_a_checkpoint_it_has_not_verified() {
    let disk = Arc::new(SimDisk::new());
    let mut model = Model::default();
    {
        let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
        store.commit(&group(&mut model, 0)).unwrap();
        // Checkpoints of every shard as of the first group.
        for shard in 0..4 {
            store.write_checkpoint(&model.checkpoint(shard)).unwrap();
        }
        for number in 1..12 {
            store.commit(&group(&mut model, number)).unwrap();
        }
        // The other shards' checkpoints are current: only shard 1 pins the log.
        for shard in [0, 2, 3] {
            store.write_checkpoint(&model.checkpoint(shard)).unwrap();
        }
        store.rotate_log();
    }
    // Bit rot in checkpoint 1's sequence field (bytes 22..30) makes it claim
    // to cover batches it does not hold.
    let path = "checkpoints/0001.ckpt";
    disk.corrupt(path, 29, 0x7F);
    let store = LogStore::simulated(Arc::clone(&disk), options()).unwrap();
    store.query_ledger(&LedgerQuery { sku: Some("S".into()), ..LedgerQuery::default() }).unwrap();
    let segments = store.log_stats().segments;
    store.compact_log().unwrap();
    assert_eq!(store.log_stats().segments, segments, "segments deleted on a damaged checkpoint");
    let message = corrupt_message(store.load_all().map(|_| ()));
    assert!(message.contains(path), "{message}");
    // Once the checkpoint is rewritten (the log still holds everything), the
    // store loads again.
    store.write_checkpoint(&model.checkpoint(1)).unwrap();
    assert_loads(&store, &model);
}
