//! Cluster mode: membership, the coordinator candidacy and the shard claims
//! on etcd, and the [`Fence`] the server admits requests through.
//!
//! The node joins (a lease and its key `/atp/<cluster>/nodes/<id>` → its
//! advertised address), campaigns for coordinator and claims the shards the
//! assignment gives it. When the lease is lost it steps down from every
//! shard at once (the ownership view sees it before the claims loop does)
//! and joins again for a new lease: the claims it then makes have new
//! create revisions, so its shards come back under higher epochs.
//!
//! The claims loop's ownership reaches the server through a relay that
//! first tells the shard layer each shard's serving epoch
//! ([`Node::set_epoch`]), so every batch admitted under an epoch is written
//! under it (or a later one), never under the epoch before.
//!
//! The locations and channels live in etcd too (`/atp/<cluster>/config/`):
//! the node follows them and applies them to its own catalog, publishes its
//! catalog as the cluster's first configuration when there is none (a former
//! single node's data directory), and its ConfigService writes to etcd
//! (`atp_server::cluster_catalog`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atp_cluster::store::Store;
use atp_cluster::{
    Assignment, Claims, ClusterKeys, Coordinator, EtcdStore, LeaseState, Member, Membership,
    Ownership, ShardState, system_clock,
};
use atp_server::forward::Forwarder;
use atp_server::{
    CatalogSync, ClusterApis, ClusterMover, ClusterReassigner, ClusterView, Fence,
    spawn_rebalancer, start_cluster_catalog,
};
use atp_shard::Node;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// How long connecting to etcd may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before joining again after a failed join.
const JOIN_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// The file in the data directory holding the node id when none is configured.
const NODE_ID_FILE: &str = "cluster-node-id";

/// A node's part in the cluster; dropping it stops its tasks (the lease
/// then expires and the claims go with it).
pub struct Cluster {
    member: Arc<Member<EtcdStore>>,
    store: EtcdStore,
    keys: ClusterKeys,
    _claims: Claims,
    _coordinator: Coordinator,
    _catalog_sync: CatalogSync,
    rejoin: JoinHandle<()>,
    relay: JoinHandle<()>,
    /// Placement on join, while this node is the coordinator.
    rebalancer: JoinHandle<()>,
    /// Where the ConfigService writes locations and channels and the
    /// AdminService reassigns a dead node's shards (etcd).
    pub apis: ClusterApis,
    /// What the server admits requests through.
    pub fence: Fence,
    /// This node's id.
    pub node_id: String,
}

impl Cluster {
    /// Connects to etcd and starts membership, candidacy and claims for
    /// `node` (id `node_id`, see [`node_id`]) reachable at `address`, and the
    /// configuration sync for `node` (it waits for the node to recover).
    /// Joining happens in the background (and again after a lost lease);
    /// until then every shard fails closed.
    pub async fn start(
        config: &Config,
        node: &Node,
        node_id: String,
        address: &str,
    ) -> anyhow::Result<Self> {
        let membership = config.membership_config(&node_id, address);
        let request_timeout_ms = membership.request_timeout_ms;
        let endpoints = config.etcd_endpoints();
        let store = EtcdStore::connect(&endpoints, CONNECT_TIMEOUT)
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        let member = Arc::new(
            Member::new(store.clone(), membership.clone()).context("starting membership")?,
        );
        let keys = ClusterKeys::new(config.cluster_name.clone());
        let claims = Claims::new(store.clone(), membership.clone(), member.lease_state())
            .context("starting the shard claims")?;
        let (catalog, catalog_sync) =
            start_cluster_catalog(store.clone(), &membership, node.clone());
        let coordinator = Coordinator::new(
            store.clone(),
            membership,
            config.initial_members,
            system_clock(),
            member.lease_state(),
            member.members(),
        )
        .context("starting the coordinator candidacy")?;
        // The server decides on the relayed ownership: epochs reach the
        // shard layer first.
        let (relayed, ownership) = watch::channel(Ownership::default());
        let relay = tokio::spawn(relay_epochs(node.clone(), claims.ownership(), relayed));
        let view = ClusterView {
            cluster: config.cluster_name.clone(),
            node_id: node_id.clone(),
            address: address.to_owned(),
            ownership: claims.view().relayed(ownership),
            shard_map: claims.shard_map(),
            members: member.members(),
            lease: member.lease_state(),
            moves: Arc::default(),
        };
        let fence = Fence::Cluster(Box::new(view));
        let rejoin = tokio::spawn(stay_joined(Arc::clone(&member)));
        let reassigner = ClusterReassigner::new(
            store.clone(),
            config.cluster_name.clone(),
            config.reassign_grace_ms,
            system_clock(),
        );
        let mover = ClusterMover::new(
            node.clone(),
            fence.clone(),
            Forwarder::default(),
            store.clone(),
            &config.cluster_name,
            request_timeout_ms,
        );
        // Fault tests strike between a move's install and its handover.
        let pause = std::env::var("ATP_TEST_HANDOFF_PAUSE_MS").ok().and_then(|ms| ms.parse().ok());
        let mover = mover.with_pause_before_handover(Duration::from_millis(pause.unwrap_or(0)));
        let pause =
            std::env::var("ATP_TEST_HANDOFF_STREAM_PAUSE_MS").ok().and_then(|ms| ms.parse().ok());
        let mover = mover.with_pause_in_stream(Duration::from_millis(pause.unwrap_or(0)));
        let apis =
            ClusterApis { catalog, reassigner: Arc::new(reassigner), mover: Arc::new(mover) };
        let rebalancer = spawn_rebalancer(
            store.clone(),
            fence.clone(),
            coordinator.leading(),
            Forwarder::default(),
            config.placement_parallel,
            request_timeout_ms,
        );
        Ok(Self {
            member,
            store,
            keys,
            _claims: claims,
            _coordinator: coordinator,
            _catalog_sync: catalog_sync,
            rejoin,
            relay,
            rebalancer,
            apis,
            fence,
            node_id,
        })
    }

    /// The shards the assignment table in etcd gives this node, or None
    /// when there is no table yet (a new cluster: every shard this node's
    /// data directory holds is its own). Recovery treats only these as
    /// evidence (`docs/PROTOCOL.md`, "Across nodes").
    pub async fn assigned_shards(&self) -> anyhow::Result<Option<BTreeSet<u32>>> {
        let (value, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.store.get(&self.keys.assignment()))
                .await
                .context("reading the assignment table from etcd: no answer")?
                .context("reading the assignment table from etcd")?;
        let Some(value) = value else { return Ok(None) };
        let table = Assignment::decode(&value.value).context("decoding the assignment table")?;
        Ok(Some(table.shards_of(&self.node_id).collect()))
    }

    /// Leaves the cluster: revokes the lease, so the claims go at once.
    pub async fn leave(self) {
        self.rejoin.abort();
        self.relay.abort();
        self.rebalancer.abort();
        if let Err(error) = self.member.leave().await {
            tracing::warn!(error = %error, "could not leave the cluster; the lease will expire");
        }
    }
}

/// Passes each ownership the claims loop publishes on to `relayed`, after
/// telling `node` which shards it serves under which epoch: a request is
/// admitted under an epoch only once the shard's batches carry it, and a
/// shard not served runs none of its own deadlines. Step-downs pass at once
/// (the view also checks the lease itself).
async fn relay_epochs(
    node: Node,
    mut published: watch::Receiver<Ownership>,
    relayed: watch::Sender<Ownership>,
) {
    loop {
        let ownership = published.borrow_and_update().clone();
        for (shard, state) in (0u32..).zip(&ownership.shards) {
            let serving = match state {
                ShardState::Serving { epoch } => Some(u64::try_from(*epoch).unwrap_or(0)),
                _ => None,
            };
            node.set_serving(shard, serving);
        }
        relayed.send_replace(ownership);
        if published.changed().await.is_err() {
            return;
        }
    }
}

/// Joins, and joins again whenever the lease is lost.
async fn stay_joined(member: Arc<Member<EtcdStore>>) {
    let mut lease = member.lease_state();
    loop {
        match member.join().await {
            Ok(lease_id) => tracing::info!(lease_id, "joined the cluster; claiming shards"),
            Err(error) => {
                tracing::warn!(error = %error, "could not join the cluster; retrying");
                tokio::time::sleep(JOIN_RETRY_BACKOFF).await;
                continue;
            }
        }
        let lost = lease.wait_for(|state| matches!(state, LeaseState::Lost { .. })).await;
        if lost.is_err() {
            return;
        }
        tracing::warn!("lost the cluster lease: stepped down from every shard; joining again");
    }
}

/// The configured node id, else the one stored in the data directory
/// (written at the first start: `fresh` if given, else a new one). Called
/// once the store has opened the data directory.
pub fn node_id(config: &Config, fresh: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = known_node_id(config) {
        return Ok(id);
    }
    let path = config.data_dir.join(NODE_ID_FILE);
    let id = fresh.map_or_else(new_node_id, str::to_owned);
    write_node_id(&config.data_dir, &path, &id)?;
    tracing::info!(node_id = %id, path = %path.display(), "stored a new cluster node id");
    Ok(id)
}

/// The configured node id, else the one stored in the data directory, if
/// any; writes nothing.
pub fn known_node_id(config: &Config) -> Option<String> {
    if !config.node_id.is_empty() {
        return Some(config.node_id.clone());
    }
    let stored = std::fs::read_to_string(config.data_dir.join(NODE_ID_FILE)).ok()?;
    let stored = stored.trim();
    (!stored.is_empty()).then(|| stored.to_owned())
}

/// A new node id: the host name and a suffix from the time and the pid.
pub fn new_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().replace('/', "-"))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "atpd".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let suffix = format!("{:x}", (nanos as u64) ^ u64::from(std::process::id()));
    let host: String = host.chars().take(100).collect();
    format!("{host}-{suffix}")
}

fn write_node_id(data_dir: &Path, path: &Path, id: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    std::fs::write(path, format!("{id}\n"))
        .with_context(|| format!("storing the node id in {}", path.display()))
}
