//! Planned handoffs cut short (issue 11): real etcd, three real `atpd`.
//! Each node's mover waits 3 s before ending the install stream
//! (`ATP_TEST_HANDOFF_STREAM_PAUSE_MS`) and 3 s between the new owner's
//! install and the etcd handover (`ATP_TEST_HANDOFF_PAUSE_MS`); both test
//! hooks log when they start, and the test strikes in those windows:
//!
//! 1. the old owner is SIGKILLed during the stream: the new owner installs
//!    nothing, the shard stays with the old owner and comes back when it
//!    restarts on its data directory;
//! 2. the new owner is SIGKILLed before it could claim: the handover still
//!    happens, the shard waits unclaimed, and the new owner serves it from
//!    the installed copy once restarted;
//! 3. etcd is SIGSTOPped past every lease deadline, then resumed: the shard
//!    ends with one owner, whichever the transaction's fate made it.
//!
//! After each: every node agrees with etcd's claims, the reservation held
//! on the shard before reads back HELD through every node with its units
//! still reserved, and the epoch checker passes over the whole run.

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::BTreeMap;
use std::time::Duration;

use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use common::{Atpd, eventually};
use three_nodes::{Cluster, DEADLINE, claims, probe_ids, start};
use tonic::Request;

/// The pause each node's mover makes between install and handover.
const PAUSE_MS: &str = "3000";
/// Units the reservation holds.
const HELD: i64 = 2;

/// A SKU and a reservation id both on one shard `owner` owns: the shard.
fn on_one_shard(claims: &BTreeMap<u32, (String, i64)>, owner: &str) -> (u32, String, String) {
    let sku = (0..)
        .map(|n| format!("sku-{n}"))
        .find(|sku| claims[&shard_of(sku)].0 == owner)
        .expect("a sku");
    let shard = shard_of(&sku);
    let id = (0..).map(|n| format!("order-{n}")).find(|id| shard_of(id) == shard).expect("an id");
    (shard, sku, id)
}

/// Asks node `via` to move `shard` to `to`, in the background.
fn move_in_background(
    via: &Atpd,
    shard: u32,
    to: &str,
) -> tokio::task::JoinHandle<Result<v1::MoveShardResponse, tonic::Status>> {
    let mut admin = via.admin();
    let request = v1::MoveShardRequest { shard, to_node: to.to_owned() };
    tokio::spawn(async move {
        let mut request = Request::new(request);
        request.set_timeout(Duration::from_secs(60));
        admin.move_shard(request).await.map(tonic::Response::into_inner)
    })
}

/// Waits until node `index` logs that its mover paused after the install.
async fn paused_after_install(cluster: &Cluster, index: usize, shard: u32) {
    paused_at(cluster, index, shard, "pausing before the handover").await;
}

/// Waits until node `index` logs `what` of its move of `shard`.
async fn paused_at(cluster: &Cluster, index: usize, shard: u32, what: &str) {
    let marker = format!("shard={shard}");
    let paused = eventually(DEADLINE, || async {
        cluster.nodes[index].log().lines().any(|line| line.contains(what) && line.contains(&marker))
    })
    .await;
    assert!(
        paused,
        "node {index} never logged {what:?} of shard {shard}:\n{}",
        cluster.nodes[index].log()
    );
}

/// The reservation reads back HELD through every node, and the SKU shows
/// its units reserved (through the owner, wherever asked).
async fn nothing_lost(cluster: &Cluster, id: &str, sku: &str) {
    for node in &cluster.nodes {
        let mut availability = node.availability();
        let read = availability
            .get_reservation(v1::GetReservationRequest { reservation_id: id.to_owned() })
            .await
            .unwrap_or_else(|status| panic!("reading {id} through {}: {status:?}", node.address))
            .into_inner()
            .reservation
            .expect("a reservation");
        assert_eq!(read.state(), v1::ReservationState::Held, "{read:?}");
        let request = v1::GetAvailabilityRequest {
            skus: vec![sku.to_owned()],
            location_ids: vec!["dc-1".into()],
            ..Default::default()
        };
        let seen = availability.get_availability(request).await.expect("availability").into_inner();
        let reserved: i64 = seen.skus[0].locations.iter().map(|location| location.reserved).sum();
        assert_eq!(reserved, HELD, "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_cut_short_leaves_one_owner_and_loses_nothing() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let mut cluster = Cluster::start_with(
        &etcd,
        "handoff",
        &[("ATP_TEST_HANDOFF_PAUSE_MS", PAUSE_MS), ("ATP_TEST_HANDOFF_STREAM_PAUSE_MS", PAUSE_MS)],
    )
    .await;
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;
    let a = 0;
    let (shard, sku, id) = on_one_shard(&before, &cluster.ids[a]);
    cluster.nodes[a].configure_web(&["dc-1"], &["dc-1"]).await;
    cluster.nodes[a].receive(&sku, "dc-1", 10).await;
    let request = v1::ReserveRequest {
        reservation_id: id.clone(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.clone(),
            location_id: "dc-1".into(),
            quantity: HELD,
        }],
        ttl_seconds: 0,
        metadata: None,
    };
    cluster.nodes[a].availability().reserve(request).await.expect("held");

    // 1. The old owner dies during the stream (every chunk sent, the end not).
    let b = 1;
    let moving = move_in_background(&cluster.nodes[2], shard, &cluster.ids[b]);
    paused_at(&cluster, a, shard, "pausing before the stream ends").await;
    cluster.nodes[a].kill();
    assert!(moving.await.expect("the call").is_err(), "a move whose owner died reported success");
    let marker = format!("shard={shard}");
    let partial = cluster.nodes[b]
        .log()
        .lines()
        .any(|line| line.contains("installed a shard") && line.contains(&marker));
    assert!(!partial, "the new owner installed shard {shard} from a stream cut short");
    cluster.nodes[a] = start(cluster.data[a].path(), &cluster.variables).await;
    let after = cluster.wait_until_consistent(&probes).await;
    assert_eq!(after[&shard].0, cluster.ids[a], "the shard left its owner without a handover");
    assert!(after[&shard].1 > before[&shard].1);
    nothing_lost(&cluster, &id, &sku).await;
    eprintln!(
        "1. old owner killed during the stream: shard {shard} back on {} under epoch {}",
        after[&shard].0, after[&shard].1
    );

    // 2. The new owner dies after the install, before it could claim.
    let moving = move_in_background(&cluster.nodes[a], shard, &cluster.ids[b]);
    paused_after_install(&cluster, a, shard).await;
    cluster.nodes[b].kill();
    let moved = moving.await.expect("the call").expect("the handover itself succeeds");
    assert_eq!(moved.to_epoch, 0, "the dead new owner cannot have claimed: {moved:?}");
    let unclaimed = !claims(&cluster.store, &cluster.keys).await.contains_key(&shard);
    assert!(unclaimed, "somebody claimed shard {shard} while its new owner was dead");
    cluster.nodes[b] = start(cluster.data[b].path(), &cluster.variables).await;
    let after = cluster.wait_until_consistent(&probes).await;
    assert_eq!(after[&shard].0, cluster.ids[b], "the restarted new owner did not claim it");
    nothing_lost(&cluster, &id, &sku).await;
    eprintln!(
        "2. new owner killed before claiming: shard {shard} on {} under epoch {}",
        after[&shard].0, after[&shard].1
    );

    // 3. etcd stops mid-move, past every lease deadline, then resumes.
    let c = 2;
    let moving = move_in_background(&cluster.nodes[a], shard, &cluster.ids[c]);
    paused_after_install(&cluster, b, shard).await;
    etcd.pause();
    // The pause ends 3 s after the install: the handover then meets a
    // stopped etcd, and every lease deadline (2 s) passes meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.resume();
    let answer = moving.await.expect("the call");
    let after = cluster.wait_until_consistent(&probes).await;
    let owner = &after[&shard].0;
    assert!(owner == &cluster.ids[b] || owner == &cluster.ids[c], "shard {shard} on {owner}");
    nothing_lost(&cluster, &id, &sku).await;
    eprintln!("3. etcd stopped mid-move: the move answered {answer:?}; shard {shard} on {owner}");

    let summary = cluster.check_epochs(&etcd).await;
    eprintln!("epoch check passed: {summary:?}");
}
