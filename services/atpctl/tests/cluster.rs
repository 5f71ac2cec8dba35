//! `atpctl cluster members` and `atpctl cluster shards` against real
//! `atpd` processes: a single node answers a one-member map; three nodes on
//! a real etcd show the same shard map through any of them. The cluster
//! part is skipped without an etcd binary (failed if `CI` is set).

mod three_nodes;

use std::collections::BTreeMap;

use atp_cluster::testing::EtcdProcess;
use atp_testkit::Atpd;
use three_nodes::{atpctl_json, shard_map, start_settled};

#[tokio::test]
async fn a_single_node_answers_a_one_member_map() {
    let atpd = Atpd::start(&[("ATP_NODE_NAME", "solo")]).await;
    let addr = atpd.endpoint();
    let members = atpctl_json(&addr, &["cluster", "members"]).await;
    assert_eq!(members["cluster_mode"], false);
    let listed = members["members"].as_array().expect("members");
    assert_eq!(listed.len(), 1, "{members}");
    assert_eq!(listed[0]["node_id"], "solo");
    let shards = shard_map(&atpctl_json(&addr, &["cluster", "shards"]).await);
    assert_eq!(shards.len(), 1024);
    assert!(shards.values().all(|shard| *shard == ("solo".to_owned(), 1, "serving".to_owned())));
    let mine = atpctl_json(&addr, &["cluster", "shards", "--node", "other"]).await;
    assert!(shard_map(&mine).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_show_the_same_map_through_any_of_them() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    // Every node serves its own shards once all 1024 are claimed.
    let nodes = start_settled(&etcd, "atpctl").await;
    let addresses: Vec<String> = nodes.iter().map(Atpd::endpoint).collect();
    let mut maps = Vec::new();
    for addr in &addresses {
        let answer = atpctl_json(addr, &["cluster", "shards"]).await;
        let owners: BTreeMap<u32, (String, u64)> = shard_map(&answer)
            .into_iter()
            .map(|(shard, (owner, epoch, _))| (shard, (owner, epoch)))
            .collect();
        maps.push(owners);
    }
    assert!(maps.windows(2).all(|pair| pair[0] == pair[1]), "the nodes show different maps");

    let members = atpctl_json(&addresses[0], &["cluster", "members"]).await;
    let listed = members["members"].as_array().expect("members");
    assert_eq!(listed.len(), 3, "{members}");
    assert!(listed.iter().all(|member| member["lease_state"] == "held"), "{members}");
    let shards: u64 = listed.iter().map(|member| member["shards"].as_u64().expect("a count")).sum();
    assert_eq!(shards, 1024, "every shard counted once: {members}");
    assert!(listed.iter().all(|member| member["shards"].as_u64() > Some(0)), "{members}");
    let node = listed[1]["node_id"].as_str().expect("a node id").to_owned();
    let filtered = atpctl_json(&addresses[2], &["cluster", "shards", "--node", &node]).await;
    let filtered = shard_map(&filtered);
    assert!(!filtered.is_empty() && filtered.values().all(|(owner, _, _)| *owner == node));
}
