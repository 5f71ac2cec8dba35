//! A durable node: nothing is acknowledged (or shown) before its batch's
//! fsync, nothing is acknowledged for a batch whose fsync failed, and a node
//! started again on the same store finds everything it acknowledged.

use std::sync::Arc;
use std::time::Duration;

mod common;

use atp_core::ids::ChannelId;
use atp_core::reservation::{ReservationState, ReserveLine, ReserveRequest};
use atp_shard::{Clock, Node, NodeConfig, NodeError};
use atp_store::{FaultyStore, LedgerQuery, MemoryStore, Store};

use common::{loc, rid, sku};

const START_MS: i64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

fn reserve(id: &str, units: i64) -> ReserveRequest {
    ReserveRequest {
        id: rid(id),
        channel: ChannelId::parse("channel", "web").expect("valid"),
        lines: vec![ReserveLine { sku: sku("mug"), location: loc("dc-1"), quantity: units }],
        ttl_ms: 60_000,
        metadata: Default::default(),
    }
}

async fn open(store: Arc<dyn Store>) -> Node {
    let node = Node::open(NodeConfig::default(), Clock::starting_at(START_MS), store);
    assert!(!node.is_ready());
    node.recover().await.expect("recovers");
    assert!(node.is_ready());
    node
}

async fn configure(node: &Node, units: i64) {
    common::stock(node, &[("mug", units)]).await;
}

fn reserved(node: &Node) -> i64 {
    let availability = node.availability(&[sku("mug")], &[], &[]).expect("availability");
    availability[0].locations.iter().map(|l| l.reserved).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_unavailable_until_it_has_recovered() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let node = Node::open(NodeConfig::default(), Clock::starting_at(START_MS), store);
    assert_eq!(node.reserve(reserve("r-1", 1)).await, Err(NodeError::Recovering));
    assert_eq!(node.availability(&[sku("mug")], &[], &[]).err(), Some(NodeError::Recovering));
    node.recover().await.expect("recovers");
    configure(&node, 5).await;
    node.reserve(reserve("r-1", 1)).await.expect("serves once recovered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_and_no_read_before_the_fsync_completes() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let node = open(Arc::clone(&store) as Arc<dyn Store>).await;
    configure(&node, 10).await;
    let commits_before = store.commit_count();

    let hold = store.hold_commits();
    let pending = tokio::spawn({
        let node = node.clone();
        async move { node.reserve(reserve("r-slow", 4)).await }
    });
    // The Reserve's first durable batch is now in "fsync": nothing may show.
    assert!(store.wait_for_waiting_commits(1, WAIT), "the reserve never reached the store");
    assert!(!pending.is_finished(), "answered before its batch was durable");
    assert_eq!(reserved(&node), 0, "a read showed a hold that is not durable yet");
    hold.release();

    let view = pending.await.expect("task").expect("reserved").reservation;
    assert_eq!(view.state, ReservationState::Held);
    assert_eq!(reserved(&node), 4);
    assert!(store.commit_count() > commits_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_never_retried() {
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(FaultyStore::new(Arc::clone(&memory)));
    let node = open(Arc::clone(&store) as Arc<dyn Store>).await;
    configure(&node, 10).await;
    let mut failure = node.failure();
    assert!(failure.borrow().is_none());

    store.fail_next_commits(1);
    let refused = node.reserve(reserve("r-lost", 3)).await;
    assert!(matches!(refused, Err(NodeError::StorageFailed(_))), "{refused:?}");
    assert_eq!(reserved(&node), 0, "the failed batch must not show");
    failure.wait_for(Option::is_some).await.expect("the node reports its failure");
    // Everything after it is refused too: memory may be ahead of the disk.
    let after = node.reserve(reserve("r-after", 1)).await;
    assert!(matches!(after, Err(NodeError::StorageFailed(_))), "{after:?}");
    assert_eq!(store.failed_commit_count(), 1, "the failed write was retried");
    node.shutdown();

    // A restart on what the disk holds knows nothing of either.
    let restarted = open(memory as Arc<dyn Store>).await;
    assert!(restarted.get_reservation(rid("r-lost")).await.is_err());
    assert!(restarted.get_reservation(rid("r-after")).await.is_err());
    assert_eq!(reserved(&restarted), 0);
    restarted.reserve(reserve("r-again", 10)).await.expect("all 10 units are still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_finds_what_it_acknowledged() {
    let store = Arc::new(MemoryStore::new());
    let node = open(Arc::clone(&store) as Arc<dyn Store>).await;
    configure(&node, 10).await;
    node.reserve(reserve("r-held", 2)).await.expect("held");
    node.reserve(reserve("r-committed", 3)).await.expect("held");
    node.commit(rid("r-committed"), vec![]).await.expect("committed");
    node.reserve(reserve("r-released", 1)).await.expect("held");
    node.release(rid("r-released")).await.expect("released");
    node.shutdown();

    let node = open(Arc::clone(&store) as Arc<dyn Store>).await;
    assert_eq!(node.locations().len(), 1, "configuration survives");
    assert_eq!(node.channels().len(), 1);
    let state = |id: &'static str| {
        let node = node.clone();
        async move { node.get_reservation(rid(id)).await.expect("found").state }
    };
    assert_eq!(state("r-held").await, ReservationState::Held);
    assert_eq!(state("r-committed").await, ReservationState::Committed);
    assert_eq!(state("r-released").await, ReservationState::Released);
    let position = node.availability(&[sku("mug")], &[], &[]).expect("read");
    let position = &position[0].locations[0];
    assert_eq!((position.on_hand, position.reserved, position.committed), (10, 2, 3));
    // A retry of an acknowledged Reserve gets the first answer, not a new hold.
    node.reserve(reserve("r-held", 2)).await.expect("replayed");
    assert_eq!(reserved(&node), 2);

    // The durable ledger has every change, by cause.
    let query = LedgerQuery { cause: Some("r-committed".into()), ..LedgerQuery::default() };
    let page = node.query_ledger(query).await.expect("ledger");
    let kinds: Vec<_> = page.entries.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, vec!["reserve", "commit"]);
}

#[tokio::test(start_paused = true)]
async fn the_durable_ledger_forgets_entries_past_its_retention() {
    let config = NodeConfig {
        ledger_retention_ms: 60_000,
        ledger_sweep_interval_ms: 1_000,
        ..NodeConfig::default()
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let node = Node::open(config, Clock::starting_at(START_MS), store);
    node.recover().await.expect("recovers");
    configure(&node, 10).await;
    let by_sku = || LedgerQuery { sku: Some("mug".into()), ..LedgerQuery::default() };
    assert_eq!(node.query_ledger(by_sku()).await.expect("ledger").entries.len(), 1);

    // Past the retention, the sweep (every second) deletes the receipt's entry.
    tokio::time::advance(Duration::from_secs(61)).await;
    node.reserve(reserve("r-new", 1)).await.expect("reserved");
    // The sweep runs on the store's blocking threads, in real time: after
    // each simulated second, wait (up to a real deadline) for it to land
    // before moving the clock on (at most 30 s, so the reserve's own entry
    // stays inside the retention).
    let mut kinds = Vec::new();
    'sweep: for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            let page = node.query_ledger(by_sku()).await.expect("ledger");
            kinds = page.entries.iter().map(|e| e.kind.name()).collect::<Vec<_>>();
            if kinds == ["reserve"] {
                break 'sweep;
            }
            if std::time::Instant::now() > deadline {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(kinds, vec!["reserve"], "only the entry inside the retention is left");
}

/// Cluster mode: the epoch set for a shard is stamped on its durable
/// batches (the write log shows it, before the reply) and on its admin view;
/// a lower one is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_carry_the_epoch_set_for_their_shard_and_are_logged() {
    let dir = tempfile::tempdir().expect("a directory");
    let path = dir.path().join("writes.log");
    let write_log = atp_shard::WriteLogConfig { node_id: "node-a".to_owned(), path: path.clone() };
    let config = NodeConfig { write_log: Some(write_log), ..NodeConfig::default() };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let node = Node::open(config, Clock::starting_at(START_MS), store);
    node.recover().await.expect("recovers");
    let shard = atp_core::hash::shard_of("mug");
    assert_eq!(node.epoch(shard), atp_shard::SINGLE_NODE_EPOCH);
    configure(&node, 10).await;
    node.set_epoch(shard, 40);
    node.set_epoch(shard, 39);
    node.reserve(reserve("r-1", 1)).await.expect("holds");
    assert_eq!(node.shard_info(shard).await.expect("info").epoch, 40);
    // The reply came after the line: the log already shows the batch.
    let lines: Vec<(u32, u64, String)> = std::fs::read_to_string(&path)
        .expect("the write log")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 5, "{line}");
            (fields[0].parse().expect("shard"), fields[1].parse().expect("epoch"), fields[2].into())
        })
        .collect();
    let mine: Vec<u64> =
        lines.iter().filter(|(logged, ..)| *logged == shard).map(|(_, epoch, _)| *epoch).collect();
    assert_eq!(mine.first(), Some(&1), "the stock before the epoch was set: {lines:?}");
    assert_eq!(mine.last(), Some(&40), "{lines:?}");
    assert!(lines.iter().all(|(.., node)| node == "node-a"), "{lines:?}");
}
