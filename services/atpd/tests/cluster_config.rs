//! Cluster configuration with real parts: one real etcd, real `atpd`
//! processes. A location or channel upserted through one node is listed by
//! the others without a restart (also after an etcd restart broke every
//! watch); a bad upsert is refused naming the field and changes nothing
//! anywhere; a former single node's data directory becomes the first
//! member and its configuration the cluster's, and another former single
//! node that joins takes the cluster's (its own extra location kept,
//! PAUSED). Skipped without an etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use atp_cluster::testing::EtcdProcess;
use atp_cluster::{ClusterKeys, read_config};
use atp_proto::v1;
use common::{Atpd, eventually};
use futures::future::join_all;
use three_nodes::{DEADLINE, start, variables};
use tonic::Code;
use tonic_types::StatusExt;

fn location(id: &str, name: &str) -> v1::Location {
    v1::Location {
        location_id: id.into(),
        kind: v1::LocationKind::Store.into(),
        name: name.into(),
        latitude: 52.5,
        longitude: 13.4,
        safety_stock: 1,
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    }
}

fn channel(id: &str, locations: &[&str]) -> v1::Channel {
    v1::Channel {
        channel_id: id.into(),
        name: format!("channel {id}"),
        location_ids: locations.iter().map(|id| (*id).into()).collect(),
        buffer: 2,
        cap: Some(40),
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    }
}

async fn upsert_location(
    atpd: &Atpd,
    location: v1::Location,
) -> Result<v1::UpsertLocationResponse, tonic::Status> {
    let request = v1::UpsertLocationRequest { location: Some(location) };
    atpd.config().upsert_location(request).await.map(tonic::Response::into_inner)
}

async fn upsert_channel(
    atpd: &Atpd,
    channel: v1::Channel,
) -> Result<v1::UpsertChannelResponse, tonic::Status> {
    let request = v1::UpsertChannelRequest { channel: Some(channel) };
    atpd.config().upsert_channel(request).await.map(tonic::Response::into_inner)
}

async fn locations(atpd: &Atpd) -> Vec<v1::Location> {
    let reply = atpd.config().list_locations(v1::ListLocationsRequest {}).await;
    reply.expect("list locations").into_inner().locations
}

async fn channels(atpd: &Atpd) -> Vec<v1::Channel> {
    let reply = atpd.config().list_channels(v1::ListChannelsRequest {}).await;
    reply.expect("list channels").into_inner().channels
}

/// Waits until `atpd` lists `location` and `channel` exactly as given.
async fn wait_until_listed(atpd: &Atpd, location: &v1::Location, channel: &v1::Channel) -> bool {
    eventually(DEADLINE, || async {
        locations(atpd).await.contains(location) && channels(atpd).await.contains(channel)
    })
    .await
}

/// The field names of an INVALID_ARGUMENT's `BadRequest`.
fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad = status.get_details_bad_request().expect("a BadRequest");
    bad.field_violations.into_iter().map(|violation| violation.field).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_through_one_node_reaches_the_others_without_restart() {
    let Some(mut etcd) = EtcdProcess::start_or_skip().await else { return };
    let data: Vec<tempfile::TempDir> =
        (0..3).map(|_| tempfile::tempdir().expect("a data directory")).collect();
    let variables = variables(etcd.endpoint(), "config", 3);
    let nodes = join_all(data.iter().map(|dir| start(dir.path(), &variables))).await;

    // Through node 1: a location, then a channel over it. Node 1 lists
    // both as soon as it answers (it applied them before answering).
    // (Compared as the upserts echo them: the lists show the same form.)
    let written = upsert_location(&nodes[0], location("store-1", "Store 1")).await;
    let written = written.expect("upsert location");
    assert!(written.changed);
    let store_1 = written.location.expect("the location as stored");
    let written = upsert_channel(&nodes[0], channel("web", &["store-1"])).await;
    let written = written.expect("upsert channel");
    assert!(written.changed);
    let web = written.channel.expect("the channel as stored");
    assert!(locations(&nodes[0]).await.contains(&store_1), "read-your-write on node 1");
    assert!(channels(&nodes[0]).await.contains(&web), "read-your-write on node 1");

    // Nodes 2 and 3 list them, without a restart.
    for (index, node) in nodes.iter().enumerate().skip(1) {
        let seen = wait_until_listed(node, &store_1, &web).await;
        assert!(seen, "node {} never listed the new configuration:\n{}", index + 1, node.log());
    }
    // The same upsert through node 3 changes nothing.
    let again = upsert_location(&nodes[2], location("store-1", "Store 1")).await;
    let again = again.expect("the same upsert");
    assert!(!again.changed, "an identical location is not a change");

    // Bad upserts through node 2: refused naming the field, nothing written.
    let store = etcd.store().await;
    let keys = ClusterKeys::new("config");
    let before = read_config(&store, &keys).await.expect("read the configuration");
    let unknown = upsert_channel(&nodes[1], channel("app", &["store-1", "nowhere"]))
        .await
        .expect_err("a channel over an unknown location");
    assert_eq!(bad_fields(&unknown), ["channel.location_ids[1]"]);
    let mut bad_location = location("store-2", "Store 2");
    bad_location.latitude = 91.0;
    let refused = upsert_location(&nodes[1], bad_location).await.expect_err("latitude 91");
    assert_eq!(bad_fields(&refused), ["location.latitude"]);
    let after = read_config(&store, &keys).await.expect("read the configuration");
    assert_eq!(after.locations, before.locations, "nothing written to etcd");
    assert_eq!(after.channels, before.channels, "nothing written to etcd");

    // A good upsert through node 2 after the bad ones: once every node has
    // it, none has anything of the bad ones (changes arrive in order).
    let written = upsert_location(&nodes[1], location("store-3", "Store 3")).await;
    let store_3 = written.expect("upsert location").location.expect("the location as stored");
    let written = upsert_channel(&nodes[1], channel("web", &["store-1", "store-3"])).await;
    let written = written.expect("upsert channel");
    assert!(written.changed, "the channel's locations changed");
    let web_3 = written.channel.expect("the channel as stored");
    for (index, node) in nodes.iter().enumerate() {
        let seen = wait_until_listed(node, &store_3, &web_3).await;
        assert!(seen, "node {} never listed store-3:\n{}", index + 1, node.log());
        let ids: Vec<String> =
            locations(node).await.into_iter().map(|location| location.location_id).collect();
        assert_eq!(ids, ["store-1", "store-3"], "node {}", index + 1);
        let ids: Vec<String> =
            channels(node).await.into_iter().map(|channel| channel.channel_id).collect();
        assert_eq!(ids, ["web"], "node {}", index + 1);
    }

    // etcd restarts (every watch breaks): a change through node 3 still
    // reaches every node, through the resumed watches.
    etcd.restart().await;
    let store_4 = location("store-4", "Store 4");
    let until = tokio::time::Instant::now() + DEADLINE;
    let store_4 = loop {
        match upsert_location(&nodes[2], store_4.clone()).await {
            Ok(reply) => break reply.location.expect("the location as stored"),
            // etcd still coming back: the write is refused; retry.
            Err(status) if status.code() == Code::Unavailable => {
                assert!(tokio::time::Instant::now() < until, "still refused: {status:?}");
                tokio::time::sleep(common::POLL_INTERVAL).await;
            }
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    };
    for (index, node) in nodes.iter().enumerate() {
        let seen =
            eventually(DEADLINE, || async { locations(node).await.contains(&store_4) }).await;
        assert!(seen, "node {} never listed store-4 after the restart:\n{}", index + 1, node.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_nodes_data_directory_becomes_the_first_member() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let first_dir = tempfile::tempdir().expect("a data directory");

    // A single node with its configuration and some stock.
    let mut single = Atpd::start_in(first_dir.path(), &[]).await;
    single.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    single.receive("sku-1", "dc-1", 7).await;
    let configured_locations = locations(&single).await;
    let configured_channels = channels(&single).await;
    single.terminate();
    let status = single.wait_for_exit(DEADLINE).await.expect("the single node stops");
    assert!(status.success(), "{status:?}");

    // Restarted on its data directory as the first member of a new cluster:
    // it publishes its configuration to etcd and still has its stock.
    let variables = variables(etcd.endpoint(), "migrated", 1);
    let first = start(first_dir.path(), &variables).await;
    let store = etcd.store().await;
    let keys = ClusterKeys::new("migrated");
    let published = eventually(DEADLINE, || async {
        read_config(&store, &keys).await.is_ok_and(|config| config.initialized)
    })
    .await;
    assert!(published, "the configuration never reached etcd:\n{}", first.log());
    let config = read_config(&store, &keys).await.expect("read the configuration");
    let ids: Vec<&str> = config.locations.keys().map(String::as_str).collect();
    assert_eq!(ids, ["dc-1", "dc-2"]);
    let ids: Vec<&str> = config.channels.keys().map(String::as_str).collect();
    assert_eq!(ids, ["web"]);
    let on_hand = eventually(DEADLINE, || async {
        let request =
            v1::GetAvailabilityRequest { skus: vec!["sku-1".into()], ..Default::default() };
        let Ok(reply) = first.availability().get_availability(request).await else { return false };
        let reply = reply.into_inner();
        let Some(sku) = reply.skus.first() else { return false };
        sku.error.is_none()
            && sku
                .locations
                .iter()
                .any(|location| location.location_id == "dc-1" && location.on_hand == 7)
            && sku.channels.iter().any(|channel| channel.channel_id == "web" && channel.atp == 7)
    })
    .await;
    assert!(on_hand, "the first member lost its stock or channel:\n{}", first.log());

    // A second former single node joins, with its own idea of dc-1 and a
    // location etcd does not have: etcd wins, and its own location is
    // kept but PAUSED.
    let second_dir = tempfile::tempdir().expect("a data directory");
    let mut other = Atpd::start_in(second_dir.path(), &[]).await;
    let mut renamed = location("dc-1", "another dc-1");
    renamed.kind = v1::LocationKind::Warehouse.into();
    upsert_location(&other, renamed).await.expect("upsert location");
    upsert_location(&other, location("legacy", "Legacy")).await.expect("upsert location");
    other.terminate();
    let status = other.wait_for_exit(DEADLINE).await.expect("the other single node stops");
    assert!(status.success(), "{status:?}");
    let second = start(second_dir.path(), &variables).await;
    let expected: Vec<(String, i32)> = configured_locations
        .iter()
        .map(|location| (location.location_id.clone(), location.state))
        .chain([("legacy".to_owned(), v1::LifecycleState::Paused.into())])
        .collect();
    let same = eventually(DEADLINE, || async {
        let listed = locations(&second).await;
        let cluster_names = configured_locations.iter().all(|location| listed.contains(location));
        let states: Vec<(String, i32)> =
            listed.into_iter().map(|location| (location.location_id, location.state)).collect();
        cluster_names && states == expected && channels(&second).await == configured_channels
    })
    .await;
    assert!(same, "the second node never took the cluster's configuration:\n{}", second.log());
    assert_eq!(locations(&first).await, configured_locations, "etcd's is the first node's");

    // Checked against etcd's configuration, not the node's own: `legacy`
    // is the second node's only.
    let refused = upsert_channel(&second, channel("app", &["legacy"]))
        .await
        .expect_err("a channel over a location the cluster does not have");
    assert_eq!(bad_fields(&refused), ["channel.location_ids[0]"]);
}
