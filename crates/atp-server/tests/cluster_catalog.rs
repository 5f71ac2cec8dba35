//! The ConfigService's cluster-mode writer and the configuration sync, in
//! process: in-memory nodes over one in-memory etcd (real time). Writes
//! through one node reach the other; checks run against etcd's
//! configuration; concurrent writers of one entry both succeed in some
//! order and the nodes converge; an unreachable etcd refuses the write and
//! changes nothing; the first node publishes its catalog, a later one takes
//! etcd's and pauses what only it had.

use std::time::Duration;

use atp_cluster::memory::MemoryEtcd;
use atp_cluster::store::Store;
use atp_cluster::{ClusterKeys, MembershipConfig, read_config};
use atp_core::catalog::{Channel, Lifecycle, Location, LocationKind};
use atp_core::ids::{ChannelId, LocationId};
use atp_proto::{Reason, reason_of};
use atp_server::{CatalogSync, CatalogWriter, ClusterCatalog, start_cluster_catalog};
use atp_shard::{Clock, Node, NodeConfig};
use tonic::Code;
use tonic_types::StatusExt;

/// How long a condition may take to hold.
const DEADLINE: Duration = Duration::from_secs(10);

fn membership(node: &str) -> MembershipConfig {
    MembershipConfig {
        request_timeout_ms: 1_000,
        retry_backoff_ms: 50,
        ..MembershipConfig::new("test", node, format!("{node}.local:7000"))
    }
}

struct Member {
    node: Node,
    writer: std::sync::Arc<ClusterCatalog<MemoryEtcd>>,
    _sync: CatalogSync,
}

fn member(etcd: &MemoryEtcd, name: &str, node: Node) -> Member {
    let (writer, sync) = start_cluster_catalog(etcd.clone(), &membership(name), node.clone());
    Member { node, writer, _sync: sync }
}

fn location(id: &str, name: &str, state: Lifecycle) -> Location {
    Location {
        id: LocationId::parse("location", id).expect("a valid id"),
        kind: LocationKind::Warehouse,
        name: name.into(),
        latitude: 0.0,
        longitude: 0.0,
        safety_stock: 0,
        daily_capacity: 0,
        shipping_cost: 0.0,
        state,
        fulfilment: Default::default(),
    }
}

fn channel(id: &str, locations: &[&str]) -> Channel {
    Channel {
        id: ChannelId::parse("channel", id).expect("a valid id"),
        name: format!("channel {id}"),
        locations: locations
            .iter()
            .map(|id| LocationId::parse("location", id).expect("a valid id"))
            .collect(),
        buffer: 0,
        cap: None,
        state: Lifecycle::Active,
        publish: Default::default(),
    }
}

/// Polls `condition` until it holds (panics naming `what` after [`DEADLINE`]).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn has_location(node: &Node, wanted: &Location) -> bool {
    node.locations().iter().any(|location| location == wanted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_node_reaches_the_other_and_is_checked_against_etcd() {
    let etcd = MemoryEtcd::new();
    let a = member(&etcd, "a", Node::start(NodeConfig::default(), Clock::system()));
    let b = member(&etcd, "b", Node::start(NodeConfig::default(), Clock::system()));

    let dc = location("dc-1", "dc one", Lifecycle::Active);
    assert!(a.writer.upsert_location(dc.clone()).await.expect("upsert"), "a change");
    assert!(has_location(&a.node, &dc), "applied on the writer before it answered");
    wait_until("b to apply dc-1", || has_location(&b.node, &dc)).await;
    assert!(!b.writer.upsert_location(dc.clone()).await.expect("upsert"), "identical: no change");

    // A channel over an unknown location, and bad numbers: refused, nothing written.
    let before = read_config(&etcd, &ClusterKeys::new("test")).await.expect("read");
    let refused =
        b.writer.upsert_channel(channel("web", &["dc-1", "dc-9"])).await.expect_err("dc-9");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .expect("a BadRequest")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect();
    assert_eq!(fields, ["channel.location_ids[1]"]);
    let mut bad = location("dc-2", "dc two", Lifecycle::Active);
    bad.shipping_cost = -1.0;
    let refused = a.writer.upsert_location(bad).await.expect_err("a negative cost");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let after = read_config(&etcd, &ClusterKeys::new("test")).await.expect("read");
    assert_eq!(after.revision, before.revision, "nothing written");

    // RETIRED is final in the cluster, whichever node is asked.
    let retired = location("dc-1", "dc one", Lifecycle::Retired);
    assert!(a.writer.upsert_location(retired.clone()).await.expect("retire"));
    let refused = b.writer.upsert_location(dc.clone()).await.expect_err("out of RETIRED");
    assert_eq!(reason_of(&refused), Some(Reason::NotActive), "{refused:?}");
    wait_until("b to apply the retirement", || has_location(&b.node, &retired)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_entry_both_succeed_and_the_nodes_converge() {
    let etcd = MemoryEtcd::new();
    let a = member(&etcd, "a", Node::start(NodeConfig::default(), Clock::system()));
    let b = member(&etcd, "b", Node::start(NodeConfig::default(), Clock::system()));
    for round in 0..20 {
        let from_a = location("dc-1", &format!("a {round}"), Lifecycle::Active);
        let from_b = location("dc-1", &format!("b {round}"), Lifecycle::Active);
        let (by_a, by_b) = tokio::join!(
            a.writer.upsert_location(from_a.clone()),
            b.writer.upsert_location(from_b.clone())
        );
        assert!(by_a.expect("a's write") && by_b.expect("b's write"), "both changed it");
        let config = read_config(&etcd, &ClusterKeys::new("test")).await.expect("read");
        let stored = atp_proto::catalog_entries::decode_location(&config.locations["dc-1"].value)
            .expect("decodes");
        assert!(stored == from_a || stored == from_b, "{stored:?}");
        wait_until("both nodes to hold etcd's dc-1", || {
            has_location(&a.node, &stored) && has_location(&b.node, &stored)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_refuses_the_write_and_nothing_changes() {
    let etcd = MemoryEtcd::new();
    let a = member(&etcd, "a", Node::start(NodeConfig::default(), Clock::system()));
    let dc = location("dc-1", "dc one", Lifecycle::Active);
    a.writer.upsert_location(dc.clone()).await.expect("upsert");

    etcd.pause();
    let renamed = location("dc-1", "renamed", Lifecycle::Active);
    let refused = a.writer.upsert_location(renamed).await.expect_err("etcd is away");
    assert_eq!(reason_of(&refused), Some(Reason::FailingClosed), "{refused:?}");
    assert_eq!(a.node.locations(), std::slice::from_ref(&dc), "nothing changed here");
    etcd.resume();
    let config = read_config(&etcd, &ClusterKeys::new("test")).await.expect("read");
    let stored = atp_proto::catalog_entries::decode_location(&config.locations["dc-1"].value)
        .expect("decodes");
    assert_eq!(stored, dc, "nothing changed in etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_publishes_and_a_later_one_takes_etcds_configuration() {
    let etcd = MemoryEtcd::new();
    let first = Node::start(NodeConfig::default(), Clock::system());
    let dc = location("dc-1", "dc one", Lifecycle::Active);
    first.upsert_location(dc.clone()).await.expect("local upsert");
    first.upsert_channel(channel("web", &["dc-1"])).await.expect("local upsert");
    let a = member(&etcd, "a", first);
    let keys = ClusterKeys::new("test");
    let until = tokio::time::Instant::now() + DEADLINE;
    let config = loop {
        let config = read_config(&etcd, &keys).await.expect("read");
        if config.initialized {
            break config;
        }
        assert!(tokio::time::Instant::now() < until, "a never published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(config.locations.keys().collect::<Vec<_>>(), ["dc-1"]);
    assert_eq!(config.channels.keys().collect::<Vec<_>>(), ["web"]);
    let (marker, _) = etcd.get(&keys.config_initialized()).await.expect("read the marker");
    assert_eq!(marker.expect("the marker").value, b"a");

    // A second node with its own dc-1 and a location only it has.
    let second = Node::start(NodeConfig::default(), Clock::system());
    second.upsert_location(location("dc-1", "my dc one", Lifecycle::Active)).await.expect("local");
    let own = location("dc-7", "mine", Lifecycle::Active);
    second.upsert_location(own.clone()).await.expect("local upsert");
    let b = member(&etcd, "b", second);
    let paused = Location { state: Lifecycle::Paused, ..own };
    wait_until("b to take etcd's configuration", || {
        b.node.locations() == [dc.clone(), paused.clone()]
            && b.node.channels() == [channel("web", &["dc-1"])]
    })
    .await;
    let config = read_config(&etcd, &keys).await.expect("read");
    assert_eq!(config.locations.keys().collect::<Vec<_>>(), ["dc-1"], "b published nothing");
    assert_eq!(a.node.locations(), [dc]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_larger_than_one_transaction_is_published_whole() {
    let etcd = MemoryEtcd::new();
    let first = Node::start(NodeConfig::default(), Clock::system());
    let ids: Vec<String> = (0..300).map(|n| format!("dc-{n:03}")).collect();
    for id in &ids {
        first.upsert_location(location(id, id, Lifecycle::Active)).await.expect("local upsert");
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    first.upsert_channel(channel("web", &id_refs)).await.expect("local upsert");
    let a = member(&etcd, "a", first);
    let b = member(&etcd, "b", Node::start(NodeConfig::default(), Clock::system()));
    wait_until("b to hold all 300 locations and the channel", || {
        b.node.locations().len() == 300 && b.node.channels() == a.node.channels()
    })
    .await;
    assert_eq!(b.node.locations(), a.node.locations());
}
