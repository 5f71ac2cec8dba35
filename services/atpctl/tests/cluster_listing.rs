//! `atpctl reservations list --all` against three real `atpd` processes on
//! a real etcd: through any node, every reservation of the cluster once, in
//! (home shard, id) order. Skipped without an etcd binary (failed if `CI`
//! is set).

mod three_nodes;

use std::collections::BTreeMap;

use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_testkit::Atpd;
use three_nodes::{atpctl_json, shard_map, start_settled};

/// Reservations homed on each node.
const PER_NODE: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_list_shows_the_whole_cluster_through_any_node() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    // Every node serves its own shards once all 1024 are claimed.
    let nodes = start_settled(&etcd, "atpctl-list").await;
    let addresses: Vec<String> = nodes.iter().map(Atpd::endpoint).collect();
    let owners = shard_map(&atpctl_json(&addresses[0], &["cluster", "shards"]).await);

    // PER_NODE reservations homed on each node, each made through node 0.
    for node in &nodes {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
    }
    nodes[0].receive("mug", "dc-1", 100).await;
    let mut homed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in (0..).map(|n| format!("cart-{n}")) {
        let owner = &owners[&shard_of(&id)].0;
        let ids = homed.entry(owner.clone()).or_default();
        if ids.len() < PER_NODE {
            ids.push(id);
        }
        if homed.len() == 3 && homed.values().all(|ids| ids.len() == PER_NODE) {
            break;
        }
    }
    let mut expected: Vec<String> = homed.into_values().flatten().collect();
    let mut availability = nodes[0].availability();
    for id in &expected {
        let line =
            v1::ReservationLine { sku: "mug".into(), location_id: "dc-1".into(), quantity: 1 };
        let request = v1::ReserveRequest {
            reservation_id: id.clone(),
            channel_id: "web".into(),
            lines: vec![line],
            ttl_seconds: 600,
            metadata: None,
        };
        availability.reserve(request).await.expect("reserved");
    }
    expected.sort_by_key(|id| (shard_of(id), id.clone()));

    for addr in &addresses {
        let args = ["reservations", "list", "--all", "--page-size", "2"];
        let answer = atpctl_json(addr, &args).await;
        let listed: Vec<&str> = answer["reservations"]
            .as_array()
            .expect("reservations")
            .iter()
            .map(|reservation| reservation["reservation_id"].as_str().expect("an id"))
            .collect();
        assert_eq!(listed, expected, "through {addr}");
        assert_eq!(answer["next_page_token"], "", "{answer}");
    }
}
