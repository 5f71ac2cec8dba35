//! Node-level tests: shard actors, multi-shard coordination and expiry under
//! paused tokio time (no sleeping on the wall clock).

use std::time::Duration;

mod common;

use atp_core::error::CoreError;
use atp_core::hash::shard_of;
use atp_core::ids::ChannelId;
use atp_core::reservation::{ReservationState, ReserveLine, ReserveRequest};
use atp_shard::{Clock, Node, NodeConfig, NodeError};
use futures::future::join_all;

use common::{loc, rid, sku};

const START_MS: i64 = 1_700_000_000_000;

async fn node_with_stock(config: NodeConfig, stock: &[(&str, i64)]) -> Node {
    let node = Node::start(config, Clock::starting_at(START_MS));
    common::stock(&node, stock).await;
    node
}

fn reserve_request(id: &str, lines: &[(&str, i64)], ttl_ms: i64) -> ReserveRequest {
    ReserveRequest {
        id: rid(id),
        channel: ChannelId::parse("channel", "web").expect("valid"),
        lines: lines
            .iter()
            .map(|(s, quantity)| ReserveLine {
                sku: sku(s),
                location: loc("dc-1"),
                quantity: *quantity,
            })
            .collect(),
        ttl_ms,
        metadata: Default::default(),
    }
}

fn reserved(node: &Node, s: &str) -> i64 {
    let view = node.availability(&[sku(s)], &[loc("dc-1")], &[]).expect("availability");
    view[0].locations[0].reserved
}

/// Two SKUs on different shards.
fn two_shard_skus() -> (String, String) {
    let first = "sku-a".to_owned();
    let second = (0..)
        .map(|n| format!("sku-b{n}"))
        .find(|s| shard_of(s) != shard_of(&first))
        .expect("some sku lands elsewhere");
    (first, second)
}

#[tokio::test(start_paused = true)]
async fn holds_expire_at_their_ttl_without_any_call() {
    let node = node_with_stock(NodeConfig::default(), &[("tee", 10)]).await;
    let view =
        node.reserve(reserve_request("r-1", &[("tee", 4)], 5_000)).await.expect("held").reservation;
    assert_eq!(view.state, ReservationState::Held);
    assert_eq!(view.expires_at_ms, START_MS + 5_000);
    assert_eq!(reserved(&node, "tee"), 4);

    // Paused time: this advances tokio's clock once every task is idle.
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(reserved(&node, "tee"), 4, "still held just before the ttl");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let view = node.get_reservation(rid("r-1")).await.expect("found");
    assert_eq!(view.state, ReservationState::Expired);
    assert_eq!(reserved(&node, "tee"), 0, "expiry freed the units");
    let error = node.commit(rid("r-1"), Vec::new()).await.expect_err("expired");
    assert!(matches!(
        error,
        NodeError::Core(CoreError::WrongState { state: ReservationState::Expired, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn extend_moves_the_expiry() {
    let node = node_with_stock(NodeConfig::default(), &[("tee", 10)]).await;
    node.reserve(reserve_request("r-1", &[("tee", 1)], 5_000)).await.expect("held");
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let view = node.extend(rid("r-1"), 10_000, None).await.expect("extended").reservation;
    assert_eq!(view.expires_at_ms, START_MS + 14_000);
    tokio::time::sleep(Duration::from_millis(9_000)).await;
    assert_eq!(
        node.get_reservation(rid("r-1")).await.expect("found").state,
        ReservationState::Held
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        node.get_reservation(rid("r-1")).await.expect("found").state,
        ReservationState::Expired
    );
}

#[tokio::test(start_paused = true)]
async fn a_multi_shard_reserve_short_on_one_line_holds_nothing() {
    let (a, b) = two_shard_skus();
    let node = node_with_stock(NodeConfig::default(), &[(&a, 10), (&b, 1)]).await;
    let home = shard_of("r-multi");
    assert!(home != shard_of(&a) || home != shard_of(&b));
    let error = node
        .reserve(reserve_request("r-multi", &[(&a, 5), (&b, 2)], 60_000))
        .await
        .expect_err("b lacks stock");
    assert!(matches!(error, NodeError::Core(CoreError::InsufficientStock { .. })), "{error:?}");
    assert_eq!(reserved(&node, &a), 0);
    assert_eq!(reserved(&node, &b), 0);
    assert!(matches!(
        node.get_reservation(rid("r-multi")).await,
        Err(NodeError::Core(CoreError::NotFound(_)))
    ));
    // A refused Reserve stores nothing: the same id is judged afresh.
    let view = node
        .reserve(reserve_request("r-multi", &[(&a, 5), (&b, 1)], 60_000))
        .await
        .expect("now it fits")
        .reservation;
    assert_eq!(view.lines.len(), 2);
    assert_eq!((reserved(&node, &a), reserved(&node, &b)), (5, 1));
    // Commit spans both shards too, and frees the remainder.
    let view = node
        .commit(
            rid("r-multi"),
            vec![atp_core::reservation::CommitLine {
                sku: sku(&a),
                location: loc("dc-1"),
                quantity: 3,
            }],
        )
        .await
        .expect("committed")
        .reservation;
    assert_eq!(view.state, ReservationState::Committed);
    let positions = node.availability(&[sku(&a), sku(&b)], &[loc("dc-1")], &[]).expect("read");
    assert_eq!((positions[0].locations[0].reserved, positions[0].locations[0].committed), (0, 3));
    assert_eq!((positions[1].locations[0].reserved, positions[1].locations[0].committed), (0, 1));
}

#[tokio::test]
async fn a_full_mailbox_is_overloaded_at_once() {
    let config = NodeConfig { mailbox_capacity: 1, ..NodeConfig::default() };
    let node = Node::start(config, Clock::starting_at(START_MS));
    // All calls are polled before the single-threaded runtime lets the actor
    // run, so the second and later find the mailbox full.
    let calls = (0..20).map(|_| node.get_reservation(rid("same-home")));
    let outcomes = join_all(calls).await;
    let overloaded =
        outcomes.iter().filter(|o| matches!(o, Err(NodeError::Overloaded { .. }))).count();
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Err(NodeError::Core(CoreError::NotFound(_)))))
        .count();
    assert_eq!(answered + overloaded, 20);
    assert!(overloaded >= 1, "a full mailbox must refuse at once");
    assert!(answered >= 1);
}

#[tokio::test]
async fn shard_info_counts_holds_and_skus() {
    let node = node_with_stock(NodeConfig::default(), &[("tee", 10)]).await;
    node.reserve(reserve_request("r-1", &[("tee", 2)], 60_000)).await.expect("held");
    let info = node.shard_info(shard_of("tee")).await.expect("info");
    assert_eq!(info.stats.sku_count, 1);
    assert_eq!(info.stats.open_holds, 1);
    assert!(info.stats.last_applied_sequence >= 2);
    let listed = node.list_shards(false).await.expect("list");
    assert!(listed.iter().any(|s| s.shard == shard_of("tee")));
    assert!(listed.iter().any(|s| s.shard == shard_of("r-1")), "the home shard has the record");
    let ledger = node.ledger(sku("tee"), None, 10).await.expect("ledger");
    let kinds: Vec<_> = ledger.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds, ["received", "reserve"]);
    assert_eq!(&*ledger[1].cause, "r-1");
}

/// Peers of a cluster node that serves every shard itself (nothing goes out).
struct AllLocal;

impl atp_shard::Peers for AllLocal {
    fn is_local(&self, _shard: u32) -> bool {
        true
    }
    fn line_ops(
        &self,
        shard: u32,
        _ops: Vec<atp_core::shard::LineOp>,
        _deadline: Duration,
    ) -> atp_shard::PeerFuture<Vec<Result<(), CoreError>>> {
        Box::pin(async move { Err(nowhere(shard)) })
    }
    fn notice(
        &self,
        notice: atp_core::shard::ShipNotice,
        _deadline: Duration,
    ) -> atp_shard::PeerFuture<()> {
        Box::pin(async move { Err(nowhere(shard_of(notice.reservation.as_str()))) })
    }
    fn facts(
        &self,
        shard: u32,
        _id: atp_core::ids::ReservationId,
        _deadline: Duration,
    ) -> atp_shard::PeerFuture<atp_core::shard::ShardFacts> {
        Box::pin(async move { Err(nowhere(shard)) })
    }
    fn adopt(
        &self,
        incarnation: atp_core::shard::Incarnation,
        _deadline: Duration,
    ) -> atp_shard::PeerFuture<()> {
        Box::pin(async move { Err(nowhere(shard_of(incarnation.request.id.as_str()))) })
    }
    fn has_line(
        &self,
        line: atp_core::shard::ShipNotice,
        _deadline: Duration,
    ) -> atp_shard::PeerFuture<bool> {
        Box::pin(async move { Err(nowhere(shard_of(line.sku.as_str()))) })
    }
}

fn nowhere(shard: u32) -> atp_shard::PeerError {
    atp_shard::PeerError::Unavailable { shard, reason: "no other node in this test".into() }
}

/// A cluster node writes a shard only under an epoch it holds: while it
/// does not serve the shard (a claim not yet made, a lost lease, a shard
/// moved away) the shard's own deadlines wait, and they catch up at once
/// when it serves it again.
#[tokio::test(start_paused = true)]
async fn a_cluster_node_runs_no_deadlines_of_a_shard_it_does_not_serve() {
    let node = node_with_stock(NodeConfig::default(), &[("tee", 10)]).await;
    node.set_peers(std::sync::Arc::new(AllLocal));
    let home = shard_of("r-1");
    let line = shard_of("tee");
    for shard in [home, line] {
        node.set_serving(shard, Some(7));
    }
    node.reserve(reserve_request("r-1", &[("tee", 4)], 5_000)).await.expect("held");
    assert_eq!(node.epoch(home), 7);

    node.set_serving(home, None);
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    assert_eq!(
        node.get_reservation(rid("r-1")).await.expect("found").state,
        ReservationState::Held,
        "no expiry on a shard not served"
    );
    assert_eq!(reserved(&node, "tee"), 4);

    node.set_serving(home, Some(9));
    assert_eq!(node.epoch(home), 9);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        node.get_reservation(rid("r-1")).await.expect("found").state,
        ReservationState::Expired,
        "served again: the overdue expiry ran at once"
    );
    assert_eq!(reserved(&node, "tee"), 0);
}
