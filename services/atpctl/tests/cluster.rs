//! `atpctl cluster members` and `atpctl cluster shards` against real
//! `atpd` processes: a single node answers a one-member map; three nodes on
//! a real etcd show the same shard map through any of them. The cluster
//! part is skipped without an etcd binary (failed if `CI` is set).

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use atp_cluster::testing::EtcdProcess;
use atp_testkit::{Atpd, eventually};
use serde_json::Value;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `atpctl --addr ADDR --json ARGS…` and reads its JSON answer.
async fn atpctl_json(addr: &str, args: &[&str]) -> Value {
    let output: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_atpctl"))
        .arg("--addr")
        .arg(addr)
        .arg("--json")
        .args(args)
        .env_remove("ATP_ADDR")
        .output()
        .await
        .expect("run the atpctl binary");
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

/// shard → (owner, epoch, view) from `cluster shards --json`.
fn shard_map(answer: &Value) -> BTreeMap<u64, (String, u64, String)> {
    answer["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|shard| {
            (
                shard["shard"].as_u64().expect("shard"),
                (
                    shard["owner"].as_str().expect("owner").to_owned(),
                    shard["epoch"].as_u64().expect("epoch"),
                    shard["view"].as_str().expect("view").to_owned(),
                ),
            )
        })
        .collect()
}

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
    let endpoint = etcd.endpoint();
    let variables = [
        ("ATP_ETCD_ENDPOINTS", endpoint.as_str()),
        ("ATP_CLUSTER_NAME", "atpctl"),
        ("ATP_INITIAL_MEMBERS", "3"),
        ("ATP_LEASE_TTL_MS", "2000"),
        ("ATP_KEEPALIVE_INTERVAL_MS", "300"),
        ("ATP_LEASE_SAFETY_MARGIN_MS", "500"),
    ];
    let nodes = start_three(&variables).await;
    let addresses: Vec<String> = nodes.iter().map(Atpd::endpoint).collect();

    // Every node serves its own shards once all 1024 are claimed.
    let mut maps = Vec::new();
    let settled = eventually(DEADLINE, || {
        let addresses = addresses.clone();
        async move {
            let mut seen = Vec::new();
            for addr in &addresses {
                let answer = atpctl_json(addr, &["cluster", "shards"]).await;
                seen.push((
                    answer["node_id"].as_str().unwrap_or_default().to_owned(),
                    shard_map(&answer),
                ));
            }
            seen.iter().all(|(node, map)| {
                map.len() == 1024
                    && map.values().all(|(owner, epoch, view)| {
                        *epoch > 0 && (view == "serving") == (owner == node)
                    })
            })
        }
    })
    .await;
    assert!(settled, "the shards never settled; node 0's log:\n{}", nodes[0].log());
    for addr in &addresses {
        let answer = atpctl_json(addr, &["cluster", "shards"]).await;
        let owners: BTreeMap<u64, (String, u64)> = shard_map(&answer)
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
    let node = listed[1]["node_id"].as_str().expect("a node id").to_owned();
    let filtered = atpctl_json(&addresses[2], &["cluster", "shards", "--node", &node]).await;
    let filtered = shard_map(&filtered);
    assert!(!filtered.is_empty() && filtered.values().all(|(owner, _, _)| *owner == node));
}

/// Starts three nodes with `variables`, one after another.
async fn start_three(variables: &[(&str, &str)]) -> Vec<Atpd> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Atpd::start(variables).await);
    }
    nodes
}
