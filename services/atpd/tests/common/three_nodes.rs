//! Three real `atpd` processes on one real etcd, for the cluster tests in
//! separate test binaries (include it with `#[path]`). The same harness as
//! `cluster.rs`, which keeps its own copy for now.

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::BTreeMap;
use std::time::Duration;

use atp_cluster::store::Store;
use atp_cluster::testing::EtcdProcess;
use atp_cluster::{ClusterKeys, EtcdStore, SHARD_COUNT};
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_server::forward::FORWARDED_HEADER;
use atp_testkit::{Atpd, POLL_INTERVAL, eventually};
use futures::future::join_all;
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A reservation id homed on every shard: `ids[shard]`.
pub fn probe_ids() -> Vec<String> {
    let mut ids = vec![String::new(); SHARD_COUNT as usize];
    let mut missing = SHARD_COUNT;
    for n in 0.. {
        let id = format!("probe-{n}");
        let slot = &mut ids[shard_of(&id) as usize];
        if slot.is_empty() {
            *slot = id;
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    ids
}

/// `message` marked as forwarded by another node: the node answers it
/// itself, never forwarding it again.
pub fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("ascii"));
    request
}

/// For every shard, the owner `atpd` names for it (its own id when it
/// serves it, `None` when failing closed): a GetReservation of an unknown
/// id homed there, marked forwarded.
async fn owners_seen(atpd: &Atpd, ids: &[String], own_id: &str) -> Vec<Option<String>> {
    let client = atpd.availability();
    join_all(ids.iter().map(|id| {
        let mut client = client.clone();
        async move {
            let request = forwarded(v1::GetReservationRequest { reservation_id: id.clone() });
            let status = client.get_reservation(request).await.expect_err("an unknown id");
            match (status.code(), status.get_details_error_info()) {
                (Code::NotFound, _) => Some(own_id.to_owned()),
                (Code::Unavailable, Some(info)) if info.reason == "NOT_OWNER" => {
                    Some(info.metadata["owner"].clone())
                }
                (Code::Unavailable, Some(info)) if info.reason == "FAILING_CLOSED" => None,
                _ => panic!("unexpected answer for {id}: {status:?}"),
            }
        }
    }))
    .await
}

/// Every claim in etcd: shard → (node id, epoch).
pub async fn claims(store: &EtcdStore, keys: &ClusterKeys) -> BTreeMap<u32, (String, i64)> {
    let snapshot = store.get_prefix(&keys.claims_prefix()).await.expect("read the claims");
    snapshot
        .kvs
        .iter()
        .filter_map(|kv| {
            let shard = keys.shard_of_claim(&kv.key)?;
            Some((shard, (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision)))
        })
        .collect()
}

/// The member list in etcd: address → node id.
async fn members(store: &EtcdStore, keys: &ClusterKeys) -> BTreeMap<String, String> {
    let snapshot = store.get_prefix(&keys.nodes_prefix()).await.expect("read the members");
    snapshot
        .kvs
        .iter()
        .map(|kv| {
            let id = kv.key.trim_start_matches(&keys.nodes_prefix()).to_owned();
            (String::from_utf8_lossy(&kv.value).into_owned(), id)
        })
        .collect()
}

/// Three nodes on one etcd, each on its own data directory.
pub struct Cluster {
    pub nodes: Vec<Atpd>,
    /// The nodes' ids, in the order of `nodes`.
    pub ids: Vec<String>,
    pub data: Vec<tempfile::TempDir>,
    pub store: EtcdStore,
    pub keys: ClusterKeys,
}

impl Cluster {
    /// Starts three nodes as `name` (short leases: a dead node's claims go
    /// within about two seconds); returns once all 1024 shards are claimed.
    pub async fn start(etcd: &EtcdProcess, name: &str) -> Self {
        let data: Vec<tempfile::TempDir> =
            (0..3).map(|_| tempfile::tempdir().expect("a data directory")).collect();
        let endpoint = etcd.endpoint();
        let variables = [
            ("ATP_ETCD_ENDPOINTS", endpoint.as_str()),
            ("ATP_CLUSTER_NAME", name),
            ("ATP_INITIAL_MEMBERS", "3"),
            ("ATP_LEASE_TTL_MS", "2000"),
            ("ATP_KEEPALIVE_INTERVAL_MS", "300"),
            ("ATP_LEASE_SAFETY_MARGIN_MS", "500"),
        ];
        let nodes = join_all(data.iter().map(|dir| Atpd::start_in(dir.path(), &variables))).await;
        let store = etcd.store().await;
        let keys = ClusterKeys::new(name);
        let claimed = eventually(DEADLINE, || async {
            claims(&store, &keys).await.len() == SHARD_COUNT as usize
        })
        .await;
        assert!(claimed, "not every shard was claimed; node 0's log:\n{}", nodes[0].log());
        let members = members(&store, &keys).await;
        let ids = nodes
            .iter()
            .map(|node| members.get(&node.address.to_string()).expect("a member").clone())
            .collect();
        Self { nodes, ids, data, store, keys }
    }

    /// Waits until every node answers for every shard as etcd's claims
    /// say (all 1024 claimed); returns those claims.
    pub async fn wait_until_consistent(&self, probes: &[String]) -> BTreeMap<u32, (String, i64)> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let claims = claims(&self.store, &self.keys).await;
            if claims.len() == SHARD_COUNT as usize && self.agree(&claims, probes).await {
                return claims;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the nodes' answers never matched the claims {claims:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn agree(&self, claims: &BTreeMap<u32, (String, i64)>, probes: &[String]) -> bool {
        for (node, id) in self.nodes.iter().zip(&self.ids) {
            let seen = owners_seen(node, probes, id).await;
            let agrees = (0..SHARD_COUNT)
                .zip(&seen)
                .all(|(shard, owner)| owner.as_ref() == Some(&claims[&shard].0));
            if !agrees {
                return false;
            }
        }
        true
    }
}
