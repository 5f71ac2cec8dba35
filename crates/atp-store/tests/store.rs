//! The store contract, run against a [`LogStore`] on a real directory (fjall
//! ledger index) and on a simulated disk ([`MemoryStore`]). Reopening,
//! checkpoints and compaction are in `reopen.rs`.

mod common;

use std::path::Path;

use atp_core::ledger::LedgerEntry;
use atp_store::{
    LedgerQuery, LogOptions, LogStore, MAX_LEDGER_PAGE, MemoryStore, RealDisk, ShardBatch, Store,
    StoreError,
};
use common::{batch, delete, entry, put};

fn open(dir: &Path) -> LogStore<RealDisk> {
    LogStore::open(dir, LogOptions::default()).expect("open the store")
}

fn loaded(store: &dyn Store, shard: u32) -> Vec<(String, String)> {
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 test data");
    let shard = store.load_all().expect("load_all").swap_remove(shard as usize);
    shard.records.into_iter().map(|(key, value)| (text(key), text(value))).collect()
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
}

fn ledger(shard: u32, sequence: u64, entries: Vec<LedgerEntry>) -> ShardBatch {
    ShardBatch { shard, epoch: 1, sequence, records: Vec::new(), ledger: entries }
}

/// (at_ms, sequence) of each entry, to compare pages briefly.
fn times(entries: &[LedgerEntry]) -> Vec<(i64, u64)> {
    entries.iter().map(|entry| (entry.at_ms, entry.sequence)).collect()
}

fn query() -> LedgerQuery {
    LedgerQuery::default()
}

// The contract, for any store.

fn records_are_written_overwritten_and_deleted(store: &dyn Store) {
    store.commit(&[batch(7, 1, 1, vec![put("a", "1"), put("b", "2"), put("c", "3")])]).unwrap();
    store.commit(&[batch(7, 1, 2, vec![delete("a"), put("c", "33"), delete("missing")])]).unwrap();
    assert_eq!(loaded(store, 7), pairs(&[("b", "2"), ("c", "33")]));
    assert_eq!(store.load_all().unwrap()[7].sequence, 2);
}

fn the_last_write_of_a_key_in_one_commit_wins(store: &dyn Store) {
    store
        .commit(&[
            batch(3, 1, 1, vec![put("k", "first"), delete("gone"), put("gone", "back")]),
            batch(3, 1, 2, vec![put("k", "second"), put("x", "1"), delete("x")]),
        ])
        .unwrap();
    assert_eq!(loaded(store, 3), pairs(&[("gone", "back"), ("k", "second")]));
}

fn records_of_other_shards_are_not_returned(store: &dyn Store) {
    for shard in [0, 1, 2, 255, 256, 1023] {
        store.commit(&[batch(shard, 1, 1, vec![put("k", &shard.to_string())])]).unwrap();
    }
    store.commit(&[batch(1, 1, 2, vec![put("\u{ff}\u{ff}", "last")])]).unwrap();
    assert_eq!(loaded(store, 1), pairs(&[("k", "1"), ("\u{ff}\u{ff}", "last")]));
    assert_eq!(loaded(store, 256), pairs(&[("k", "256")]));
    assert_eq!(loaded(store, 1023), pairs(&[("k", "1023")]));
    assert!(loaded(store, 3).is_empty());
    let all = store.load_all().unwrap();
    assert_eq!(all.len(), 1024);
    assert!(all.iter().enumerate().all(|(index, shard)| shard.shard as usize == index));
}

fn the_highest_epoch_is_loaded(store: &dyn Store) {
    store.commit(&[batch(9, 3, 1, vec![put("a", "1")])]).unwrap();
    store.commit(&[batch(9, 7, 2, vec![put("b", "2")])]).unwrap();
    let all = store.load_all().unwrap();
    assert_eq!((all[9].shard, all[9].epoch, all[9].sequence, all[9].records.len()), (9, 7, 2, 2));
    assert_eq!(all[10].epoch, 0);
}

fn a_gap_in_a_shards_sequence_is_corruption(store: &dyn Store) {
    store.commit(&[batch(4, 1, 1, vec![put("a", "1")])]).unwrap();
    store.commit(&[batch(4, 1, 3, vec![put("a", "3")])]).unwrap();
    match store.load_all() {
        Err(StoreError::Corrupt(message)) => {
            assert!(message.contains("shard 4 jumps from batch 1 to 3"), "{message}")
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

fn one_commit_writes_many_shards(store: &dyn Store) {
    let batches: Vec<ShardBatch> = (0..1024)
        .map(|shard| ShardBatch {
            shard,
            epoch: 2,
            sequence: 1,
            records: vec![put("position", &format!("p{shard}"))],
            ledger: vec![entry(1, 5, &format!("sku-{shard}"), "L1", "r1")],
        })
        .collect();
    store.commit(&batches).unwrap();
    let all = store.load_all().unwrap();
    assert!(all.iter().all(|shard| shard.records.len() == 1 && shard.epoch == 2));
    let page = store
        .query_ledger(&LedgerQuery { cause: Some("r1".into()), limit: 1000, ..query() })
        .unwrap();
    assert_eq!(page.entries.len(), 1000);
    let next =
        LedgerQuery { cause: Some("r1".into()), page_token: page.next_page_token, ..query() };
    assert_eq!(store.query_ledger(&next).unwrap().entries.len(), 24);
}

fn the_catalog_round_trips(store: &dyn Store) {
    assert_eq!(store.load_catalog().unwrap(), None);
    store.save_catalog(b"one").unwrap();
    store.save_catalog(b"two").unwrap();
    assert_eq!(store.load_catalog().unwrap(), Some(b"two".to_vec()));
    store.save_catalog(b"").unwrap();
    assert_eq!(store.load_catalog().unwrap(), Some(Vec::new()));
}

/// Entries of three shards over three skus, two locations and several causes.
fn small_ledger(store: &dyn Store) {
    store
        .commit(&[
            ledger(
                1,
                1,
                vec![
                    entry(1, 100, "A", "L1", "r1"),
                    entry(2, 200, "A", "L2", "r1"),
                    entry(3, 300, "B", "L1", "e1"),
                ],
            ),
            ledger(2, 1, vec![entry(1, 100, "A", "L1", "r2"), entry(2, 250, "C", "L2", "r1")]),
        ])
        .unwrap();
    store.commit(&[ledger(3, 1, vec![entry(1, 50, "A", "L1", "r3")])]).unwrap();
}

fn ledger_queries_by_each_filter(store: &dyn Store) {
    small_ledger(store);
    let run = |query: LedgerQuery| {
        let page = store.query_ledger(&query).unwrap();
        assert!(page.next_page_token.is_empty());
        page.entries
    };
    let by_sku = run(LedgerQuery { sku: Some("A".into()), ..query() });
    // Oldest first; ties (100) by shard then sequence.
    assert_eq!(times(&by_sku), [(50, 1), (100, 1), (100, 1), (200, 2)]);
    assert_eq!(&*by_sku[1].cause, "r1");
    assert_eq!(&*by_sku[2].cause, "r2");
    let by_location = run(LedgerQuery { location: Some("L2".into()), ..query() });
    assert_eq!(times(&by_location), [(200, 2), (250, 2)]);
    let by_cause = run(LedgerQuery { cause: Some("r1".into()), ..query() });
    assert_eq!(times(&by_cause), [(100, 1), (200, 2), (250, 2)]);
    let sku_at_location =
        run(LedgerQuery { sku: Some("A".into()), location: Some("L1".into()), ..query() });
    assert_eq!(times(&sku_at_location), [(50, 1), (100, 1), (100, 1)]);
    let cause_of_sku = run(LedgerQuery {
        cause: Some("r1".into()),
        sku: Some("A".into()),
        location: Some("L2".into()),
        ..query()
    });
    assert_eq!(times(&cause_of_sku), [(200, 2)]);
    assert!(run(LedgerQuery { sku: Some("nothing".into()), ..query() }).is_empty());
    assert!(
        run(LedgerQuery { sku: Some("A".into()), location: Some("L9".into()), ..query() })
            .is_empty()
    );
    // A value that is a prefix of another matches only itself.
    store.commit(&[ledger(5, 1, vec![entry(1, 1, "AB", "L1", "r11")])]).unwrap();
    assert_eq!(run(LedgerQuery { sku: Some("A".into()), ..query() }).len(), 4);
    assert_eq!(run(LedgerQuery { cause: Some("r1".into()), ..query() }).len(), 3);
    // Entries round-trip whole.
    assert_eq!(by_cause[0], entry(1, 100, "A", "L1", "r1"));
}

fn ledger_queries_by_time_range(store: &dyn Store) {
    small_ledger(store);
    let run = |from_ms, to_ms| {
        let query = LedgerQuery { sku: Some("A".into()), from_ms, to_ms, ..query() };
        times(&store.query_ledger(&query).unwrap().entries)
    };
    assert_eq!(run(Some(100), None), [(100, 1), (100, 1), (200, 2)]);
    assert_eq!(run(None, Some(100)), [(50, 1)]);
    assert_eq!(run(Some(100), Some(200)), [(100, 1), (100, 1)]);
    assert_eq!(run(Some(101), Some(200)), []);
    assert_eq!(run(Some(300), Some(100)), []);
    assert_eq!(run(Some(i64::MIN), Some(i64::MAX)).len(), 4);
    let by_location =
        LedgerQuery { location: Some("L1".into()), from_ms: Some(60), to_ms: Some(301), ..query() };
    assert_eq!(
        times(&store.query_ledger(&by_location).unwrap().entries),
        [(100, 1), (100, 1), (300, 3)]
    );
}

/// 2,500 entries of sku "P" over shards 10 to 13 (caused by "c{shard}"), with ties in time.
fn many_entries(store: &dyn Store) -> Vec<(i64, u32, u64)> {
    let mut expected = Vec::new();
    for chunk in 0..25u64 {
        let batches: Vec<ShardBatch> = (10..14u32)
            .map(|shard| {
                let entries: Vec<LedgerEntry> = (0..25u64)
                    .map(|i| {
                        let sequence = chunk * 25 + i + 1;
                        let at_ms = i64::try_from(sequence / 3).unwrap();
                        expected.push((at_ms, shard, sequence));
                        entry(sequence, at_ms, "P", "L1", &format!("c{shard}"))
                    })
                    .collect();
                ledger(shard, chunk + 1, entries)
            })
            .collect();
        store.commit(&batches).unwrap();
    }
    expected.sort();
    expected
}

fn paging_returns_every_entry_once_in_order(store: &dyn Store) {
    let expected = many_entries(store);
    assert_eq!(expected.len(), 2500);
    let mut seen = Vec::new();
    let mut token = Vec::new();
    let mut pages = Vec::new();
    loop {
        let query =
            LedgerQuery { sku: Some("P".into()), limit: 1000, page_token: token, ..query() };
        let page = store.query_ledger(&query).unwrap();
        pages.push(page.entries.len());
        seen.extend(page.entries.iter().map(|entry| {
            let shard: u32 = entry.cause[1..].parse().unwrap();
            (entry.at_ms, shard, entry.sequence)
        }));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [1000, 1000, 500]);
    assert_eq!(seen, expected);

    // A page that ends exactly at the last entry says there is no more.
    let before = |page_token| LedgerQuery {
        sku: Some("P".into()),
        limit: 1000,
        to_ms: Some(167),
        page_token,
        ..query()
    };
    let first = store.query_ledger(&before(Vec::new())).unwrap();
    assert_eq!(first.entries.len(), 1000);
    let second = store.query_ledger(&before(first.next_page_token)).unwrap();
    assert_eq!(second.entries.len(), 1000);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.entries.last().unwrap().at_ms, 166);

    // Paging by a secondary filter.
    let by_cause =
        LedgerQuery { cause: Some("c12".into()), sku: Some("P".into()), limit: 400, ..query() };
    let page = store.query_ledger(&by_cause).unwrap();
    assert_eq!(page.entries.len(), 400);
    let next =
        store.query_ledger(&LedgerQuery { page_token: page.next_page_token, ..by_cause }).unwrap();
    assert_eq!(next.entries.len(), 225);
    assert!(next.next_page_token.is_empty());
}

fn limits_are_defaulted_and_capped(store: &dyn Store) {
    many_entries(store);
    let page = |limit| {
        let query = LedgerQuery { sku: Some("P".into()), limit, ..query() };
        store.query_ledger(&query).unwrap().entries.len()
    };
    assert_eq!(page(0), 100);
    assert_eq!(page(5000), MAX_LEDGER_PAGE);
    assert_eq!(page(1), 1);
}

fn bad_queries_are_refused(store: &dyn Store) {
    small_ledger(store);
    let refused = |query: LedgerQuery| match store.query_ledger(&query) {
        Err(StoreError::InvalidQuery { field, .. }) => field,
        other => panic!("expected an invalid query, got {other:?}"),
    };
    assert_eq!(refused(query()), "sku");
    assert_eq!(refused(LedgerQuery { from_ms: Some(1), ..query() }), "sku");
    for token in [&b"junk"[..], b"\x01short", &[0; 19], &[1; 20]] {
        let query = LedgerQuery { sku: Some("A".into()), page_token: token.to_vec(), ..query() };
        assert_eq!(refused(query), "page_token", "{token:?}");
    }
}

fn the_sweep_removes_old_entries_from_every_index(store: &dyn Store) {
    small_ledger(store);
    many_entries(store);
    // Before 150: (50), (100) ×2 of the small ledger and 4 × 449 of the many.
    assert_eq!(store.sweep_ledger(150).unwrap(), 3 + 4 * 449);
    assert_eq!(store.sweep_ledger(150).unwrap(), 0, "a second sweep finds nothing");
    let all = |query: LedgerQuery| {
        let page = store.query_ledger(&LedgerQuery { limit: 1000, ..query }).unwrap();
        assert!(page.entries.iter().all(|entry| entry.at_ms >= 150));
        times(&page.entries)
    };
    assert_eq!(all(LedgerQuery { sku: Some("A".into()), ..query() }), [(200, 2)]);
    assert_eq!(all(LedgerQuery { location: Some("L2".into()), ..query() }), [(200, 2), (250, 2)]);
    assert_eq!(all(LedgerQuery { cause: Some("r1".into()), ..query() }), [(200, 2), (250, 2)]);
    assert!(all(LedgerQuery { cause: Some("r2".into()), ..query() }).is_empty());
    assert_eq!(all(LedgerQuery { cause: Some("c10".into()), ..query() }).len(), 625 - 449);
    assert_eq!(store.sweep_ledger(i64::MAX).unwrap(), 3 + 4 * (625 - 449));
    assert!(all(LedgerQuery { location: Some("L1".into()), ..query() }).is_empty());
}

macro_rules! for_both_stores {
    ($($test:ident),* $(,)?) => {
        mod simulated {
            $(
                #[test]
                fn $test() {
                    super::$test(&atp_store::MemoryStore::new());
                }
            )*
        }
        mod real_disk {
            $(
                #[test]
                fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$test(&super::open(dir.path()));
                }
            )*
        }
    };
}

for_both_stores!(
    records_are_written_overwritten_and_deleted,
    the_last_write_of_a_key_in_one_commit_wins,
    records_of_other_shards_are_not_returned,
    the_highest_epoch_is_loaded,
    a_gap_in_a_shards_sequence_is_corruption,
    one_commit_writes_many_shards,
    the_catalog_round_trips,
    ledger_queries_by_each_filter,
    ledger_queries_by_time_range,
    paging_returns_every_entry_once_in_order,
    limits_are_defaulted_and_capped,
    bad_queries_are_refused,
    the_sweep_removes_old_entries_from_every_index,
);

#[test]
fn a_query_scans_a_bounded_number_of_index_entries() {
    let store = MemoryStore::new();
    let scan_limit = atp_store::MAX_LEDGER_SCAN;
    let entries: Vec<LedgerEntry> = (1..=scan_limit as u64 + 1)
        .map(|sequence| entry(sequence, i64::try_from(sequence).unwrap(), "S", "L1", "e"))
        .chain(std::iter::once(entry(scan_limit as u64 + 2, i64::MAX, "S", "L2", "e")))
        .collect();
    store.commit(&[ledger(0, 1, entries)]).unwrap();
    let at_l2 = LedgerQuery { sku: Some("S".into()), location: Some("L2".into()), ..query() };
    let first = store.query_ledger(&at_l2).unwrap();
    assert!(first.entries.is_empty());
    assert!(!first.next_page_token.is_empty());
    let second =
        store.query_ledger(&LedgerQuery { page_token: first.next_page_token, ..at_l2 }).unwrap();
    assert_eq!(times(&second.entries), [(i64::MAX, scan_limit as u64 + 2)]);
}
