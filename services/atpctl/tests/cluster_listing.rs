//! `atpctl reservations list --all` against three real `atpd` processes on
//! a real etcd: through any node, every reservation of the cluster once, in
//! (home shard, id) order. Skipped without an etcd binary (failed if `CI`
//! is set).

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_testkit::{Atpd, eventually};
use serde_json::Value;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
const DEADLINE: Duration = Duration::from_secs(20);
/// Reservations homed on each node.
const PER_NODE: usize = 4;

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

/// shard → (owner, serving here) from `cluster shards --json`.
fn shard_map(answer: &Value) -> BTreeMap<u32, (String, bool)> {
    let shards = answer["shards"].as_array().map(Vec::as_slice).unwrap_or_default();
    shards
        .iter()
        .filter_map(|shard| {
            let number = u32::try_from(shard["shard"].as_u64()?).ok()?;
            let owner = shard["owner"].as_str()?.to_owned();
            Some((number, (owner, shard["view"] == "serving")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_list_shows_the_whole_cluster_through_any_node() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let endpoint = etcd.endpoint();
    let variables = [
        ("ATP_ETCD_ENDPOINTS", endpoint.as_str()),
        ("ATP_CLUSTER_NAME", "atpctl-list"),
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

    // Every node serves its own shards once all 1024 are claimed.
    let settled = eventually(DEADLINE, || {
        let addresses = addresses.clone();
        async move {
            for addr in &addresses {
                let answer = atpctl_json(addr, &["cluster", "shards"]).await;
                let node = answer["node_id"].as_str().unwrap_or_default().to_owned();
                let map = shard_map(&answer);
                let agrees = map.values().all(|(owner, serving)| *serving == (*owner == node));
                if map.len() != 1024 || !agrees {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(settled, "the shards never settled; node 0's log:\n{}", nodes[0].log());
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
