//! A model of the reservation protocol (`docs/PROTOCOL.md`) across shards,
//! with an unreliable network and crashes.
//!
//! Several `ShardState`s exchange the protocol's messages — a Reserve's holds
//! and its finish on the home, the line ops of Commit/Release/Cancel/expiry,
//! ship notices — which sit in a "network" and are delivered in any order,
//! lost, or delivered twice at once. Durability follows the node: each step is
//! one batch on one shard, and its drained changes are durable before anything
//! depends on them (the actor answers only after its group commit). A crash
//! loses every message in flight and every Reserve in progress, rebuilds each
//! shard with `restore` from its last checkpoint (`dump`) overlaid with the
//! records drained since (the log), and runs `recover`; sometimes the
//! recovery's own writes are lost on some shards and it crashes again.
//!
//! A Reserve is acknowledged after one group commit (its holds'): the home
//! applies its finish and answers before that batch is durable, so the model
//! leaves the home unflushed for a step and a crash then loses the HELD
//! record, which recovery must rebuild from the holds. A Reserve left PENDING
//! past the (shortened) pending timeout is abandoned by its home's tick:
//! `Abort` of its version goes to the lines, and late holds are refused.
//!
//! After every step: positions equal the sums over holds and nothing promised
//! is oversold, on_hand moves only by shipments, and the durable ledger shows
//! every hold ending at most once. At every crash: checkpoint + log restores
//! the live state, and recovers like the full store; afterwards no
//! acknowledged reservation is lost or moved backwards, every reservation is
//! fully held or fully rolled back, and an unacknowledged Reserve is HELD
//! exactly when its holds were durable on every line shard. At the end, after
//! every TTL, no hold is still open.
//!
//! `ATP_PROPTEST_CASES` sets the number of cases (default 500; CI runs 10 000).

#[path = "protocol/checks.rs"]
mod checks;
mod common;
#[path = "protocol/world.rs"]
mod world;

use atp_core::hash::shard_of;
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;

use common::{LOCATIONS, SKUS};
use world::{Action, World};

/// Every reservation id of the test starts with this (the ledger check tells
/// holds from stock events by it).
pub const ID_PREFIX: &str = "r-";

fn action() -> impl Strategy<Value = Action> {
    let line = (0..SKUS.len() as u8, 0..2u8, 1..=3i64);
    prop_oneof![
        4 => (any::<u8>(), any::<bool>(), proptest::collection::vec(line.clone(), 1..=3), 0..3u8)
            .prop_map(|(id, market, lines, ttl)| Action::Reserve { id, market, lines, ttl }),
        1 => any::<u8>().prop_map(|id| Action::Retry { id }),
        2 => (any::<u8>(), proptest::collection::vec(line, 1..=3), prop::bool::weighted(0.2))
            .prop_map(|(id, lines, retry)| Action::Modify { id, lines, retry }),
        10 => (any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, twice)| Action::Deliver { pick, twice }),
        1 => any::<u8>().prop_map(|pick| Action::Drop { pick }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(id, partial)| Action::Commit { id, partial }),
        1 => any::<u8>().prop_map(|id| Action::Release { id }),
        1 => any::<u8>().prop_map(|id| Action::Cancel { id }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(id, line)| Action::Ship { id, line }),
        2 => (any::<u8>(), 0..8_000i64).prop_map(|(shard, by_ms)| Action::Tick { shard, by_ms }),
        1 => any::<u8>().prop_map(|shard| Action::Checkpoint { shard }),
        1 => prop::option::weighted(0.3, any::<u8>())
            .prop_map(|lose_recovery_on| Action::Crash { lose_recovery_on }),
    ]
}

/// The actions of a cluster run: those of one node, plus one node's crash,
/// answers lost between nodes, late duplicates and asking again.
fn cluster_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => action(),
        1 => any::<u8>().prop_map(|node| Action::CrashNode { node }),
        1 => any::<u8>().prop_map(|pick| Action::DeliverNoReply { pick }),
        1 => any::<u8>().prop_map(|pick| Action::Duplicate { pick }),
        1 => any::<u8>().prop_map(|pick| Action::Requery { pick }),
        1 => any::<u8>().prop_map(|node| Action::Sweep { node }),
    ]
}

/// The cluster's actions and planned moves of shards between nodes.
fn moving_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => cluster_action(),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(shard, to)| Action::MoveShard { shard, to }),
    ]
}

/// A cluster run: the shards split over `nodes` nodes, the actions, then
/// the heal and its checks.
fn run_cluster(
    stock: &[i64],
    nodes: u8,
    offset: u8,
    actions: &[Action],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let mut world = World::new(stock);
    world.split(nodes, offset);
    world.persist()?;
    for action in actions {
        world.step(action)?;
    }
    world.finish_cluster()
}

fn cases() -> u32 {
    std::env::var("ATP_PROPTEST_CASES")
        .ok()
        .map(|value| value.parse().expect("ATP_PROPTEST_CASES is a number of cases"))
        .unwrap_or(500)
}

#[test]
fn fixture_has_a_home_on_a_line_shard() {
    let world = World::new(&[5; SKUS.len() * LOCATIONS.len()]);
    let line_shards: Vec<u32> = SKUS.iter().map(|sku| shard_of(sku)).collect();
    let homes: Vec<u32> = world.ids.iter().map(|id| shard_of(id.as_str())).collect();
    assert!(homes.iter().any(|home| line_shards.contains(home)), "a home that also holds lines");
    assert!(homes.iter().any(|home| !line_shards.contains(home)), "a home that holds none");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn protocol_survives_reordering_loss_and_crashes(
        stock in proptest::collection::vec(0..=6i64, SKUS.len() * LOCATIONS.len()),
        actions in proptest::collection::vec(action(), 10..=40),
    ) {
        let mut world = World::new(&stock);
        world.persist()?;
        for action in &actions {
            world.step(action)?;
        }
        world.finish()?;
    }

    #[test]
    fn protocol_across_nodes_survives_node_loss_and_message_loss(
        stock in proptest::collection::vec(0..=6i64, SKUS.len() * LOCATIONS.len()),
        nodes in 2..=3u8,
        offset in any::<u8>(),
        actions in proptest::collection::vec(cluster_action(), 10..=40),
    ) {
        run_cluster(&stock, nodes, offset, &actions)?;
    }

    #[test]
    fn protocol_across_nodes_survives_planned_moves(
        stock in proptest::collection::vec(0..=6i64, SKUS.len() * LOCATIONS.len()),
        nodes in 2..=3u8,
        offset in any::<u8>(),
        actions in proptest::collection::vec(moving_action(), 10..=40),
    ) {
        run_cluster(&stock, nodes, offset, &actions)?;
    }
}
