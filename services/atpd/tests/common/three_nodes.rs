//! Three real `atpd` processes on one real etcd: the one harness of the
//! cluster test binaries (include it with `#[path]`, next to `mod common;`).
//! Nodes start with short leases (a dead node's claims go within about two
//! seconds), each on its own data directory; conditions are polled against
//! deadlines, never slept out.

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atp_cluster::store::{Snapshot, Store};
use atp_cluster::testing::EtcdProcess;
use atp_cluster::testing::epochs::{Summary, check_cluster};
use atp_cluster::{ClusterKeys, EtcdStore, SHARD_COUNT};
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_server::forward::{FORWARDED_HEADER, MAX_HOPS};
use atp_testkit::{Atpd, POLL_INTERVAL, eventually};
use futures::future::join_all;
use tonic::{Code, Request};
use tonic_types::{ErrorInfo, StatusExt};

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What a node answers for one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Serving,
    NotOwner { owner: String, address: String },
    FailingClosed,
}

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

/// `message` marked as forwarded its last allowed hop: the node answers it
/// itself, never forwarding it again.
pub fn forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let hops = MAX_HOPS.to_string();
    request.metadata_mut().insert(FORWARDED_HEADER, hops.parse().expect("ascii"));
    request
}

/// What `atpd` answers for every shard itself: a GetReservation of an
/// unknown id homed there, marked forwarded (NOT_FOUND means the shard is
/// served).
pub async fn answers(atpd: &Atpd, ids: &[String]) -> Vec<Answer> {
    let client = atpd.availability();
    join_all(ids.iter().map(|id| {
        let mut client = client.clone();
        async move {
            let request = forwarded(v1::GetReservationRequest { reservation_id: id.clone() });
            let status = client.get_reservation(request).await.expect_err("an unknown id");
            match (status.code(), status.get_details_error_info()) {
                (Code::NotFound, _) => Answer::Serving,
                (Code::Unavailable, Some(info)) if info.reason == "NOT_OWNER" => Answer::NotOwner {
                    owner: info.metadata["owner"].clone(),
                    address: info.metadata["owner_address"].clone(),
                },
                (Code::Unavailable, Some(info)) if info.reason == "FAILING_CLOSED" => {
                    // The SDK reads it as its typed error (retried).
                    let typed = atp_client::Error::from_status(&status);
                    assert!(matches!(typed, atp_client::Error::FailingClosed { .. }), "{typed:?}");
                    Answer::FailingClosed
                }
                _ => panic!("unexpected answer for {id}: {status:?}"),
            }
        }
    }))
    .await
}

/// What `atpd` answers for every shard itself, as [`answers`] does, but
/// each call bounded by `timeout` and `None` for no answer (unreachable,
/// timed out) or an unexpected one: for nodes in the middle of a fault.
pub async fn answers_within(atpd: &Atpd, ids: &[String], timeout: Duration) -> Vec<Option<Answer>> {
    let client = atpd.availability();
    join_all(ids.iter().map(|id| {
        let mut client = client.clone();
        async move {
            let mut request = forwarded(v1::GetReservationRequest { reservation_id: id.clone() });
            request.set_timeout(timeout);
            let status = client.get_reservation(request).await.err()?;
            let text = |info: &ErrorInfo, key: &str| info.metadata.get(key).cloned();
            match (status.code(), status.get_details_error_info()) {
                (Code::NotFound, _) => Some(Answer::Serving),
                (Code::Unavailable, Some(info)) if info.reason == "NOT_OWNER" => {
                    Some(Answer::NotOwner {
                        owner: text(&info, "owner").unwrap_or_default(),
                        address: text(&info, "owner_address").unwrap_or_default(),
                    })
                }
                (Code::Unavailable, Some(info)) if info.reason == "FAILING_CLOSED" => {
                    Some(Answer::FailingClosed)
                }
                _ => None,
            }
        }
    }))
    .await
}

/// Claims in etcd: shard → (node id, epoch).
pub type Claims = BTreeMap<u32, (String, i64)>;

/// Every claim in etcd.
pub async fn claims(store: &EtcdStore, keys: &ClusterKeys) -> Claims {
    let snapshot = store.get_prefix(&keys.claims_prefix()).await.expect("read the claims");
    claims_in(&snapshot, keys)
}

/// The claims in `snapshot`, a read of the claims prefix.
pub fn claims_in(snapshot: &Snapshot, keys: &ClusterKeys) -> Claims {
    snapshot
        .kvs
        .iter()
        .filter_map(|kv| {
            let shard = keys.shard_of_claim(&kv.key)?;
            Some((shard, (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision)))
        })
        .collect()
}

/// Polls until `read` gives all 1024 claims, `agree` holds for them and a
/// second `read` is unchanged (answers that agree with claims replaced
/// meanwhile, an old lease expiring and the node claiming anew, prove
/// nothing); returns them, or at `deadline` the last claims read.
pub async fn until_consistent(
    deadline: Duration,
    read: impl AsyncFn() -> Claims,
    agree: impl AsyncFn(&Claims) -> bool,
) -> Result<Claims, Claims> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let seen = read().await;
        if seen.len() == SHARD_COUNT as usize && agree(&seen).await && read().await == seen {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= until {
            return Err(seen);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether node `id` answering `answer` for a shard `owner` claims agrees
/// with that claim: it serves its own shards and names the owner of others.
pub fn agrees(answer: &Answer, owner: &str, id: &str) -> bool {
    match answer {
        Answer::Serving => owner == id,
        Answer::NotOwner { owner: named, .. } => owner != id && named == owner,
        Answer::FailingClosed => false,
    }
}

/// The epoch checker over the nodes' write `logs` and the claim history of
/// `cluster` in the etcd at `endpoint`: no shard was ever written by two
/// nodes at once, nor under an epoch that was not its claim's.
pub async fn epoch_check(endpoint: &str, cluster: &str, logs: &[PathBuf]) -> Summary {
    match check_cluster(endpoint, cluster, logs).await {
        Ok(summary) => summary,
        Err(violations) => panic!("the epoch check failed: {violations}"),
    }
}

/// The member list in etcd: address → node id.
pub async fn members(store: &EtcdStore, keys: &ClusterKeys) -> BTreeMap<String, String> {
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

/// The cluster-mode variables for `cluster` on the etcd at `endpoint`,
/// waiting for `initial_members`: short leases so a dead or stopped node's
/// claims go within about two seconds.
pub fn variables(endpoint: String, cluster: &str, initial_members: u32) -> Vec<(String, String)> {
    [
        ("ATP_ETCD_ENDPOINTS", endpoint),
        ("ATP_CLUSTER_NAME", cluster.to_owned()),
        ("ATP_INITIAL_MEMBERS", initial_members.to_string()),
        ("ATP_LEASE_TTL_MS", "2000".to_owned()),
        ("ATP_KEEPALIVE_INTERVAL_MS", "300".to_owned()),
        ("ATP_LEASE_SAFETY_MARGIN_MS", "500".to_owned()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// Starts a node on `data` with `variables`.
pub async fn start(data: &Path, variables: &[(String, String)]) -> Atpd {
    let variables: Vec<(&str, &str)> =
        variables.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    Atpd::start_in(data, &variables).await
}

/// Three nodes on one etcd, each on its own data directory.
pub struct Cluster {
    pub name: String,
    pub nodes: Vec<Atpd>,
    /// The nodes' ids, in the order of `nodes`.
    pub ids: Vec<String>,
    pub data: Vec<tempfile::TempDir>,
    /// Every node's variables (restart a node with [`start`] on them).
    pub variables: Vec<(String, String)>,
    pub store: EtcdStore,
    pub keys: ClusterKeys,
}

impl Cluster {
    /// Starts three nodes as `name`; returns once all 1024 shards are claimed.
    pub async fn start(etcd: &EtcdProcess, name: &str) -> Self {
        Self::start_with(etcd, name, &[]).await
    }

    /// [`Cluster::start`] with `extra` variables on every node.
    pub async fn start_with(etcd: &EtcdProcess, name: &str, extra: &[(&str, &str)]) -> Self {
        let data: Vec<tempfile::TempDir> =
            (0..3).map(|_| tempfile::tempdir().expect("a data directory")).collect();
        let mut variables = variables(etcd.endpoint(), name, 3);
        variables.extend(extra.iter().map(|(name, value)| (name.to_string(), value.to_string())));
        let nodes = join_all(data.iter().map(|dir| start(dir.path(), &variables))).await;
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
        Self { name: name.to_owned(), nodes, ids, data, variables, store, keys }
    }

    /// Every node's write log, in the order of `nodes`.
    pub fn write_logs(&self) -> Vec<PathBuf> {
        self.data.iter().map(|dir| dir.path().join("writes.log")).collect()
    }

    /// The epoch checker over every node's write log and etcd's claim
    /// history: no shard was ever written by two nodes at once.
    pub async fn check_epochs(&self, etcd: &EtcdProcess) -> Summary {
        epoch_check(&etcd.endpoint(), &self.name, &self.write_logs()).await
    }

    /// Waits until every node answers for every shard as etcd's claims
    /// say (all 1024 claimed, read before and after the answers, and
    /// unchanged); returns those claims.
    pub async fn wait_until_consistent(&self, probes: &[String]) -> Claims {
        let read = async || claims(&self.store, &self.keys).await;
        match until_consistent(DEADLINE, read, async |seen| self.agree(seen, probes).await).await {
            Ok(claims) => claims,
            Err(seen) => panic!("the nodes' answers never matched the claims {seen:?}"),
        }
    }

    /// Whether every node serves exactly the shards `claims` give it and
    /// names the owner of the others.
    pub async fn agree(&self, claims: &Claims, probes: &[String]) -> bool {
        for (node, id) in self.nodes.iter().zip(&self.ids) {
            let seen = answers(node, probes).await;
            let agree = (0..SHARD_COUNT)
                .zip(&seen)
                .all(|(shard, answer)| agrees(answer, &claims[&shard].0, id));
            if !agree {
                return false;
            }
        }
        true
    }
}
