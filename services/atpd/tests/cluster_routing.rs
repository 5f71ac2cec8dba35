//! The SDK routes by the shard map (issue 11), with real parts: one real
//! etcd, three real `atpd` processes. `WatchShardMap` on any node streams
//! the map etcd holds (every shard's owner and epoch) and streams it again
//! when it changes (a SIGKILLed node's claims go); an SDK client given one
//! node's endpoint sends each reservation straight to its home's owner, so
//! no node forwards, while the same calls without routing are forwarded.
//! On a single node the map routes nothing, and an open stream does not
//! hold a SIGTERM's shutdown up. Skipped without an etcd binary (failed if
//! `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::time::Duration;

use atp_client::{Client, Reserve};
use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_testkit::Atpd;
use three_nodes::{Cluster, DEADLINE, probe_ids};

/// Reservations homed on each node per run.
const PER_NODE: usize = 10;

/// Requests every node forwarded since it started.
async fn forwarded(cluster: &Cluster) -> Vec<u64> {
    let mut counts = Vec::new();
    for node in &cluster.nodes {
        let reply = node.admin().get_cluster(v1::GetClusterRequest {}).await.expect("GetCluster");
        counts.push(reply.into_inner().forwarded_requests);
    }
    counts
}

/// Reserves one unit of `sku` for `PER_NODE` ids homed on each node's
/// shards (ids `{prefix}-…`), through `client`.
async fn reserve_everywhere(client: &Client, cluster: &Cluster, sku: &str, prefix: &str) {
    let claims = cluster.wait_until_consistent(&probe_ids()).await;
    for owner in &cluster.ids {
        let ids = (0..)
            .map(|n| format!("{prefix}-{owner}-{n}"))
            .filter(|id| claims[&shard_of(id)].0 == *owner)
            .take(PER_NODE);
        for id in ids {
            let reserve = Reserve::new(id.as_str(), "web").line(sku, "dc-1", 1);
            client.reserve(reserve).await.unwrap_or_else(|error| panic!("reserve {id}: {error}"));
        }
    }
}

#[tokio::test]
async fn the_sdk_sends_each_reservation_to_its_owner_and_follows_the_map() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let mut cluster = Cluster::start(&etcd, "routing").await;
    let claims = cluster.wait_until_consistent(&probe_ids()).await;
    for node in &cluster.nodes {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
    }
    cluster.nodes[0].receive("sku-routed", "dc-1", 1000).await;

    // Any node streams the map etcd holds.
    let mut stream = cluster.nodes[1]
        .admin()
        .watch_shard_map(v1::WatchShardMapRequest {})
        .await
        .expect("WatchShardMap")
        .into_inner();
    let first = stream.message().await.expect("a map").expect("not ended").map.expect("map");
    assert!(first.cluster_mode);
    assert_eq!(first.shards.len(), 1024);
    for shard in &first.shards {
        let (owner, epoch) = &claims[&shard.shard];
        assert_eq!((&shard.owner, shard.epoch), (owner, *epoch as u64), "shard {}", shard.shard);
    }
    for id in &cluster.ids {
        let member = first.members.iter().find(|member| member.node_id == *id);
        assert!(member.is_some_and(|member| !member.address.is_empty()), "{id} has an address");
    }

    // Routed through node 0's endpoint only: nobody forwards.
    let routed = Client::builder([cluster.nodes[0].endpoint()]).build().expect("client");
    assert!(routed.wait_for_shard_map(DEADLINE).await, "the client got no shard map");
    assert!(routed.is_routed(), "a cluster's map routes");
    let before = forwarded(&cluster).await;
    reserve_everywhere(&routed, &cluster, "sku-routed", "routed").await;
    let after = forwarded(&cluster).await;
    assert_eq!(before, after, "routed calls were forwarded");

    // The control: the same calls unrouted are forwarded by node 0.
    let unrouted = Client::builder([cluster.nodes[0].endpoint()])
        .route_by_shard_map(false)
        .build()
        .expect("client");
    reserve_everywhere(&unrouted, &cluster, "sku-routed", "unrouted").await;
    let control = forwarded(&cluster).await;
    assert!(
        control[0] >= after[0] + 2 * PER_NODE as u64,
        "node 0 forwarded {} -> {} calls homed elsewhere",
        after[0],
        control[0]
    );

    // Any node shows any shard: node 0 forwards GetShard to the owner.
    for (index, owner) in cluster.ids.iter().enumerate() {
        let shard = (0..1024).find(|shard| claims[shard].0 == *owner).expect("a shard");
        let target = Some(v1::get_shard_request::Target::Shard(shard));
        let reply = cluster.nodes[0]
            .admin()
            .get_shard(v1::GetShardRequest { target })
            .await
            .unwrap_or_else(|status| panic!("GetShard {shard} via node 0: {status:?}"));
        let info = reply.into_inner().shard.expect("a shard");
        assert_eq!((&info.node, info.epoch), (owner, claims[&shard].1 as u64), "node {index}");
    }

    // The stream follows etcd: node 2's claims go with it.
    let gone = cluster.ids[2].clone();
    cluster.nodes[2].kill();
    let followed = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(message)) = stream.message().await {
            let map = message.map.expect("a map");
            if map.shards.iter().all(|shard| shard.owner != gone || shard.epoch == 0) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(followed, "the stream never showed node {gone}'s claims gone");
}

#[tokio::test]
async fn a_single_node_map_routes_nothing_and_an_open_stream_does_not_hold_shutdown() {
    let mut atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    atpd.receive("sku-single", "dc-1", 5).await;
    let client = Client::new(atpd.endpoint()).expect("client");
    assert!(client.wait_for_shard_map(DEADLINE).await, "the single node sent no map");
    assert!(!client.is_routed(), "a single node's map routes nothing");
    let held = client.reserve(Reserve::new("single-1", "web").line("sku-single", "dc-1", 2)).await;
    assert!(held.is_ok(), "{held:?}");

    let mut stream = atpd
        .admin()
        .watch_shard_map(v1::WatchShardMapRequest {})
        .await
        .expect("WatchShardMap")
        .into_inner();
    let map = stream.message().await.expect("a map").expect("not ended").map.expect("map");
    assert!(!map.cluster_mode);
    assert!(map.shards.iter().all(|shard| shard.epoch == 1), "epoch 1 everywhere");
    // The default shutdown grace is 10 s: an open stream must not use it up.
    atpd.terminate();
    let exited = atpd.wait_for_exit(Duration::from_secs(5)).await;
    assert!(exited.is_some_and(|status| status.success()), "{exited:?}; log:\n{}", atpd.log());
    assert!(matches!(stream.message().await, Ok(None) | Err(_)), "the stream ended");
}
