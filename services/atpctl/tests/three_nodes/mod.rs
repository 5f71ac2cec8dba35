//! Three real `atpd` processes on one real etcd, seen through the real
//! `atpctl`: shared by the cluster test binaries (`mod three_nodes;`).

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use atp_cluster::testing::EtcdProcess;
use atp_testkit::{Atpd, eventually};
use serde_json::Value;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `atpctl --addr ADDR --json ARGS…` and reads its JSON answer.
pub async fn atpctl_json(addr: &str, args: &[&str]) -> Value {
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
pub fn shard_map(answer: &Value) -> BTreeMap<u32, (String, u64, String)> {
    answer["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .map(|shard| {
            let number = shard["shard"].as_u64().expect("shard");
            (
                u32::try_from(number).expect("a shard number"),
                (
                    shard["owner"].as_str().expect("owner").to_owned(),
                    shard["epoch"].as_u64().expect("epoch"),
                    shard["view"].as_str().expect("view").to_owned(),
                ),
            )
        })
        .collect()
}

/// Starts three nodes as `cluster` on `etcd` (short leases), one after
/// another; returns them once all 1024 shards are claimed and every node
/// serves its own shards and no other, as `atpctl cluster shards` shows.
pub async fn start_settled(etcd: &EtcdProcess, cluster: &str) -> Vec<Atpd> {
    let endpoint = etcd.endpoint();
    let variables = [
        ("ATP_ETCD_ENDPOINTS", endpoint.as_str()),
        ("ATP_CLUSTER_NAME", cluster),
        ("ATP_INITIAL_MEMBERS", "3"),
        ("ATP_LEASE_TTL_MS", "2000"),
        ("ATP_KEEPALIVE_INTERVAL_MS", "300"),
        ("ATP_LEASE_SAFETY_MARGIN_MS", "500"),
    ];
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Atpd::start(&variables).await);
    }
    let addresses: Vec<String> = nodes.iter().map(Atpd::endpoint).collect();
    let settled = eventually(DEADLINE, || {
        let addresses = addresses.clone();
        async move {
            for addr in &addresses {
                let answer = atpctl_json(addr, &["cluster", "shards"]).await;
                let node = answer["node_id"].as_str().unwrap_or_default().to_owned();
                let map = shard_map(&answer);
                let agrees = map.values().all(|(owner, epoch, view)| {
                    *epoch > 0 && (view == "serving") == (*owner == node)
                });
                if map.len() != 1024 || !agrees {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(settled, "the shards never settled; node 0's log:\n{}", nodes[0].log());
    nodes
}
