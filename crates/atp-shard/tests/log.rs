//! The node over its log: checkpoints let segments go and recovery uses
//! them; a full disk refuses writes but keeps reads; a panicking shard fails
//! the node; a ledger query after a restart sees every acknowledged entry.

use std::sync::Arc;
use std::time::Duration;

mod common;

use atp_core::ids::ChannelId;
use atp_core::reservation::{ReservationState, ReserveLine, ReserveRequest};
use atp_shard::{Clock, Node, NodeConfig, NodeError};
use atp_store::{LedgerQuery, LogOptions, LogStore, MemoryStore, SimDisk, Store};

use common::{loc, rid, sku};

const START_MS: i64 = 1_700_000_000_000;

fn reserve(id: &str, item: &str, units: i64) -> ReserveRequest {
    ReserveRequest {
        id: rid(id),
        channel: ChannelId::parse("channel", "web").expect("valid"),
        lines: vec![ReserveLine { sku: sku(item), location: loc("dc-1"), quantity: units }],
        ttl_ms: 600_000,
        metadata: Default::default(),
    }
}

async fn open(store: Arc<dyn Store>) -> Node {
    let node = Node::open(NodeConfig::default(), Clock::starting_at(START_MS), store);
    node.recover().await.expect("recovers");
    node
}

fn small_segments(disk: &Arc<SimDisk>) -> MemoryStore {
    let options = LogOptions { segment_bytes: 4096, ..LogOptions::default() };
    LogStore::simulated(Arc::clone(disk), options).expect("opens")
}

fn held(node: &Node, item: &str) -> i64 {
    let availability = node.availability(&[sku(item)], &[], &[]).expect("availability");
    availability[0].locations.iter().map(|l| l.reserved).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_let_segments_go_and_recovery_starts_from_them() {
    // On a real disk: the fjall ledger index must outlive deleted segments.
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = LogOptions { segment_bytes: 4096, ..LogOptions::default() };
    let store: Arc<dyn Store> =
        Arc::new(LogStore::open(dir.path(), options.clone()).expect("opens"));
    let node = open(Arc::clone(&store)).await;
    let items: Vec<String> = (0..40).map(|i| format!("item-{i}")).collect();
    let stock: Vec<(&str, i64)> = items.iter().map(|item| (item.as_str(), 100)).collect();
    common::stock(&node, &stock).await;
    for (n, item) in items.iter().enumerate() {
        node.reserve(reserve(&format!("r-{n}"), item, 2)).await.expect("held");
    }
    let before = store.log_stats();
    assert!(before.segments > 2, "small segments roll over: {before:?}");

    let first = node.checkpoint_now().await.expect("checkpoints");
    assert!(first.checkpoints > 0);
    // The indexer must pass the old segments before they may go.
    let query = LedgerQuery { sku: Some("item-0".to_owned()), ..LedgerQuery::default() };
    node.query_ledger(query.clone()).await.expect("indexed");
    let round = node.checkpoint_now().await.expect("checkpoints again");
    let after = store.log_stats();
    let deleted = first.segments_deleted + round.segments_deleted;
    assert!(deleted > 0, "covered segments are deleted: {round:?} {after:?}");
    assert!(after.segments < before.segments);

    // More work after the checkpoints lands in the log tail.
    node.release(rid("r-0")).await.expect("released");
    node.shutdown();
    drop(node);
    drop(store);

    let restarted = open(Arc::new(LogStore::open(dir.path(), options).expect("reopens"))).await;
    assert_eq!(held(&restarted, "item-0"), 0, "the release in the tail was replayed");
    for item in &items[1..] {
        assert_eq!(held(&restarted, item), 2, "{item}'s hold survives from the checkpoint");
    }
    let view = restarted.get_reservation(rid("r-7")).await.expect("found");
    assert_eq!(view.state, ReservationState::Held);
    let ledger = restarted.query_ledger(query).await.expect("ledger outlives the log");
    assert!(ledger.entries.len() >= 3, "receive, reserve and release: {:?}", ledger.entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_keeps_reads_without_failing_the_node() {
    let disk = Arc::new(SimDisk::new());
    let store: Arc<dyn Store> = Arc::new(small_segments(&disk));
    let node = open(store).await;
    common::stock(&node, &[("mug", 10)]).await;
    node.reserve(reserve("r-1", "mug", 1)).await.expect("held");

    disk.set_space_left(Some(0));
    let refused = node.reserve(reserve("r-2", "mug", 1)).await;
    assert!(matches!(refused, Err(NodeError::DiskFull(_))), "{refused:?}");
    let again = node.reserve(reserve("r-3", "mug", 1)).await;
    assert!(matches!(again, Err(NodeError::DiskFull(_))), "later writes too: {again:?}");
    assert_eq!(held(&node, "mug"), 1, "reads go on and show only durable state");
    assert!(node.failure().borrow().is_none(), "a full disk does not fail the node");
    node.shutdown();
    drop(node);

    // Space is freed and the node restarts: what was acknowledged is there,
    // the refused writes are not.
    disk.set_space_left(None);
    let restarted = open(Arc::new(small_segments(&disk))).await;
    assert_eq!(held(&restarted, "mug"), 1);
    assert!(restarted.get_reservation(rid("r-2")).await.is_err());
    restarted.reserve(reserve("r-4", "mug", 1)).await.expect("writes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_restart_serves_reads_instead_of_crash_looping() {
    let disk = Arc::new(SimDisk::new());
    let node = open(Arc::new(small_segments(&disk))).await;
    common::stock(&node, &[("mug", 10)]).await;
    let mut request = reserve("r-1", "mug", 1);
    request.ttl_ms = 1_000;
    node.reserve(request).await.expect("held");
    node.shutdown();
    drop(node);

    // Restart after the hold's TTL: recovery must write the expiry, and cannot.
    disk.set_space_left(Some(0));
    let store: Arc<dyn Store> = Arc::new(small_segments(&disk));
    let node = Node::open(NodeConfig::default(), Clock::starting_at(START_MS + 60_000), store);
    node.recover().await.expect("recovery does not fail on a full disk");
    assert!(node.availability(&[sku("mug")], &[], &[]).is_ok(), "reads are served");
    let refused = node.reserve(reserve("r-2", "mug", 1)).await;
    assert!(matches!(refused, Err(NodeError::DiskFull(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_fails_the_node() {
    let node = open(Arc::new(MemoryStore::new())).await;
    common::stock(&node, &[("mug", 10)]).await;
    let mut failure = node.failure();
    assert!(failure.borrow().is_none());
    node.panic_shard(atp_core::hash::shard_of("mug")).await;
    let reason = tokio::time::timeout(Duration::from_secs(10), failure.wait_for(Option::is_some))
        .await
        .expect("the failure is reported")
        .expect("the node is alive")
        .clone();
    assert!(reason.is_some_and(|reason| reason.contains("panicked")));
}
