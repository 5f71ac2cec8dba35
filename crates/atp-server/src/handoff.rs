//! Planned handoff (`docs/PROTOCOL.md`, "Planned handoff"): moving one live
//! shard to another node while serving.
//!
//! [`MoveGate`] is what requests pass through: a request served here enters
//! the shards it touches ([`Fence::enter`]) and counts as active on them
//! until it is answered; while a shard is being moved, new requests wait
//! (up to [`MOVE_WAIT`]) and then go where the shard is. [`ClusterMover`]
//! runs a move at the old owner: fence, drain, export, install at the new
//! owner (PeerService.InstallShard), the etcd transaction, and the wait for
//! the new owner's claim.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use atp_cluster::store::Store;
use atp_cluster::{
    ClusterKeys, HandOver, HandOverError, LeaseState, ShardState, assigned_owner, hand_over,
    placement_moves, rendezvous_owner,
};
use atp_core::hash::SHARD_COUNT;
use atp_proto::internal::InstallShardRequest;
use atp_proto::internal::peer_service_client::PeerServiceClient;
use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::{Reason, v1};
use atp_shard::Node;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Status};

use crate::fence::{ClusterView, Fence, Touched};
use crate::forward::{Forwarder, WIRE_HEADER, WIRE_VERSION};

/// How long a request waits for a shard being moved before it is refused.
pub const MOVE_WAIT: Duration = Duration::from_secs(2);
/// How long a move waits for the requests already admitted on its shard.
const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long the new owner may take to install the shard.
const INSTALL_DEADLINE: Duration = Duration::from_secs(20);
/// How long the new owner may take to claim the shard after the handover.
const CLAIM_WAIT: Duration = Duration::from_secs(5);
/// Pause between two questions to etcd when a handover's outcome is unknown.
const UNKNOWN_OUTCOME_RETRY: Duration = Duration::from_millis(200);
/// Bytes per InstallShard chunk.
pub const INSTALL_CHUNK_BYTES: usize = 1 << 20;
/// Largest checkpoint one InstallShard carries.
pub const MAX_INSTALL_BYTES: usize = 256 << 20;
/// How often a waiting move looks at the cluster again.
const POLL: Duration = Duration::from_millis(10);

/// The shards being moved away from this node, and the requests active on
/// each shard.
#[derive(Debug)]
pub struct MoveGate {
    moving: Vec<AtomicBool>,
    active: Vec<AtomicU32>,
    changes: watch::Sender<u64>,
}

impl Default for MoveGate {
    fn default() -> Self {
        Self {
            moving: (0..SHARD_COUNT).map(|_| AtomicBool::new(false)).collect(),
            active: (0..SHARD_COUNT).map(|_| AtomicU32::new(0)).collect(),
            changes: watch::channel(0).0,
        }
    }
}

impl MoveGate {
    /// Whether `shard` is being moved away now.
    pub fn is_moving(&self, shard: u32) -> bool {
        self.moving.get(shard as usize).is_some_and(|moving| moving.load(Ordering::SeqCst))
    }

    /// The shards being moved away now.
    pub fn moving(&self) -> Vec<u32> {
        (0..SHARD_COUNT).filter(|shard| self.is_moving(*shard)).collect()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Starts moving `shard`: false if it is moving already.
    fn begin(&self, shard: u32) -> bool {
        let began = !self.moving[shard as usize].swap(true, Ordering::SeqCst);
        self.changed();
        began
    }

    fn end(&self, shard: u32) {
        self.moving[shard as usize].store(false, Ordering::SeqCst);
        self.changed();
    }

    /// Waits until no request is active on `shard`, up to `limit`.
    async fn drained(&self, shard: u32, limit: Duration) -> bool {
        let mut changes = self.changes.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            if self.active[shard as usize].load(Ordering::SeqCst) == 0 {
                return true;
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return self.active[shard as usize].load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Counts a request on `shards` once none of them is moving (waiting up
    /// to [`MOVE_WAIT`]); the first still moving after that, if any.
    async fn enter(self: &Arc<Self>, mut shards: Vec<u32>) -> Result<Entered, u32> {
        let mut changes = self.changes.subscribe();
        let deadline = Instant::now() + MOVE_WAIT;
        loop {
            // Counted first, then checked: a move that begins after the
            // check sees the count and drains it.
            for shard in &shards {
                self.active[*shard as usize].fetch_add(1, Ordering::SeqCst);
            }
            let entered = Entered { gate: Some(Arc::clone(self)), shards };
            let Some(moving) = entered.shards.iter().copied().find(|shard| self.is_moving(*shard))
            else {
                return Ok(entered);
            };
            shards = entered.leave();
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) && self.is_moving(moving) {
                return Err(moving);
            }
        }
    }
}

/// A request counted on its shards until dropped (see [`Fence::enter`]).
#[derive(Debug, Default)]
pub struct Entered {
    gate: Option<Arc<MoveGate>>,
    shards: Vec<u32>,
}

impl Entered {
    fn leave(mut self) -> Vec<u32> {
        self.release();
        std::mem::take(&mut self.shards)
    }

    fn release(&mut self) {
        let Some(gate) = self.gate.take() else { return };
        let mut moving = false;
        for shard in &self.shards {
            gate.active[*shard as usize].fetch_sub(1, Ordering::SeqCst);
            moving |= gate.is_moving(*shard);
        }
        if moving {
            gate.changed();
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.release();
    }
}

impl Fence {
    /// Whether `shard` is being moved away from this node now.
    pub fn is_moving(&self, shard: u32) -> bool {
        matches!(self, Fence::Cluster(cluster) if cluster.moves.is_moving(shard))
    }

    /// Enters the shards `touched` names for a request about to be routed:
    /// waits while any of them is being moved away (up to [`MOVE_WAIT`],
    /// then UNAVAILABLE), and counts the request on them until the returned
    /// guard drops, so a move waits for it. A single node has nothing to wait for.
    pub async fn enter(&self, touched: &Touched) -> Result<Entered, Status> {
        let Fence::Cluster(cluster) = self else { return Ok(Entered::default()) };
        let shards: Vec<u32> = touched.shards().collect();
        let deadline = Instant::now() + MOVE_WAIT;
        // A shard just handed to this node is assigned here before it is
        // claimed: while the lease is held, its requests wait for the claim.
        while let Some(shard) = shards.iter().copied().find(|shard| claim_pending(cluster, *shard))
        {
            if Instant::now() >= deadline {
                tracing::debug!(shard, "a shard assigned here was not claimed in time");
                break;
            }
            tokio::time::sleep(POLL / 2).await;
        }
        cluster.moves.enter(shards).await.map_err(|shard| {
            Reason::FailingClosed.plain(format!(
                "shard {shard} is being moved to another node and did not finish within {} ms; \
                 retry",
                MOVE_WAIT.as_millis()
            ))
        })
    }
}

/// Whether `shard` is assigned to this node and not served yet while its
/// lease is held: a claim on its way (after a handoff or a restart).
fn claim_pending(cluster: &ClusterView, shard: u32) -> bool {
    let now = Instant::now();
    let held =
        matches!(&*cluster.lease.borrow(), LeaseState::Held { deadline, .. } if now < *deadline);
    held && cluster.ownership.state_at(shard, now) == ShardState::FailingClosed
}

/// Most moves a drain makes at once.
pub const MAX_DRAIN_PARALLEL: usize = 16;

/// Runs AdminService.MoveShard at the shard's owner and DrainNode at the
/// node drained.
#[tonic::async_trait]
pub trait ShardMover: Send + Sync + 'static {
    /// Moves `shard`, served here, to the live member `to`.
    async fn move_shard(&self, shard: u32, to: &str) -> Result<v1::MoveShardResponse, Status>;

    /// Moves every shard served here to the other live members
    /// (rendezvous hashing over them), `parallel` at a time.
    async fn drain(&self, parallel: usize) -> Result<v1::DrainNodeResponse, Status>;
}

/// [`ShardMover`] over etcd.
pub struct ClusterMover<S> {
    node: Node,
    fence: Fence,
    forwarder: Forwarder,
    store: S,
    keys: ClusterKeys,
    request_timeout_ms: u64,
    pause_before_handover: Duration,
    pause_in_stream: Duration,
}

impl<S: Store> ClusterMover<S> {
    /// Fault tests only: waits this long before ending the install stream
    /// (every chunk sent), so a test can strike during the stream (logged).
    pub fn with_pause_in_stream(mut self, pause: Duration) -> Self {
        self.pause_in_stream = pause;
        self
    }

    /// Fault tests only: waits this long between the new owner's install
    /// and the etcd handover, so a test can strike then (logged).
    pub fn with_pause_before_handover(mut self, pause: Duration) -> Self {
        self.pause_before_handover = pause;
        self
    }

    /// A mover for `node` (cluster mode, `fence`), reaching other nodes
    /// through `forwarder` and etcd through `store`.
    pub fn new(
        node: Node,
        fence: Fence,
        forwarder: Forwarder,
        store: S,
        cluster: &str,
        request_timeout_ms: u64,
    ) -> Self {
        Self {
            node,
            fence,
            forwarder,
            store,
            keys: ClusterKeys::new(cluster),
            request_timeout_ms,
            pause_before_handover: Duration::ZERO,
            pause_in_stream: Duration::ZERO,
        }
    }

    fn cluster(&self) -> Result<&ClusterView, Status> {
        match &self.fence {
            Fence::Cluster(cluster) => Ok(cluster),
            Fence::SingleNode => Err(crate::reassign::not_a_cluster_status()),
        }
    }

    /// Streams `checkpoint` to `address` (PeerService.InstallShard).
    async fn install(
        &self,
        address: &str,
        shard: u32,
        bytes: Vec<u8>,
    ) -> Result<atp_proto::internal::InstallShardResponse, Status> {
        let channel = self.forwarder.channel(address).ok_or_else(|| {
            Reason::FailingClosed
                .plain(format!("the new owner's address {address:?} is not usable"))
        })?;
        let chunks: Vec<InstallShardRequest> = bytes
            .chunks(INSTALL_CHUNK_BYTES)
            .map(|data| InstallShardRequest { shard, data: data.to_vec() })
            .collect();
        let pause = self.pause_in_stream;
        let end = futures::stream::once(async move {
            if !pause.is_zero() {
                tracing::warn!(
                    shard,
                    pause_ms = pause.as_millis() as u64,
                    "handoff: streaming; pausing before the stream ends (test hook)"
                );
                tokio::time::sleep(pause).await;
            }
        })
        .filter_map(|()| std::future::ready(None));
        let mut request = Request::new(futures::stream::iter(chunks).chain(end));
        request.metadata_mut().insert(WIRE_HEADER, WIRE_VERSION.parse().expect("an ascii value"));
        request.set_timeout(INSTALL_DEADLINE);
        crate::telemetry::inject(request.metadata_mut());
        let mut client = PeerServiceClient::new(channel);
        let call = client.install_shard(request);
        match tokio::time::timeout(INSTALL_DEADLINE, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => Err(Reason::FailingClosed.plain(format!(
                "the new owner did not install shard {shard}: {:?}: {}; the shard stays here",
                status.code(),
                status.message()
            ))),
            Err(_) => Err(Reason::FailingClosed.plain(format!(
                "the new owner did not install shard {shard} within {} s; the shard stays here",
                INSTALL_DEADLINE.as_secs()
            ))),
        }
    }

    /// Whether the handover happened when etcd did not confirm it: asks
    /// for the claim until etcd answers. Until then the shard stays fenced
    /// and frozen here, whatever the wait: served by nobody is safe, served
    /// here while the new owner claims it is not. (A lost lease meanwhile
    /// fails it closed here anyway.)
    async fn handed_over_after_all(&self, shard: u32, to: &str) -> bool {
        let started = Instant::now();
        loop {
            // The table, not the claim: a claim also goes with its lease.
            match assigned_owner(&self.store, &self.keys, shard, self.request_timeout_ms).await {
                Ok(Some(owner)) => return owner == to,
                Ok(None) => tracing::warn!(shard, "no readable assignment table; asking again"),
                Err(error) => {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    tracing::warn!(shard, %error, waited_ms, "the handover's outcome is unknown; asking etcd again");
                }
            }
            tokio::time::sleep(UNKNOWN_OUTCOME_RETRY).await;
        }
    }

    /// Waits until this node no longer serves `shard` and `to` claims it;
    /// the new owner's epoch, if seen in time.
    async fn claimed_by(&self, cluster: &ClusterView, shard: u32, to: &str) -> Option<i64> {
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut map = cluster.shard_map.clone();
        loop {
            let here = cluster.ownership.state_at(shard, Instant::now());
            let claim = map.borrow_and_update().claim(shard).cloned();
            if !matches!(here, ShardState::Serving { .. })
                && let Some(claim) = claim.filter(|claim| claim.node == to)
            {
                return Some(claim.epoch);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let _ = tokio::time::timeout(POLL, map.changed()).await;
        }
    }
}

/// Ends a move on every path: the shard's requests go on (here or, after a
/// handover, where it is now) and its deadlines run again if still served here.
struct Moving<'a> {
    gate: &'a MoveGate,
    node: &'a Node,
    shard: u32,
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.node.end_export(self.shard);
        self.gate.end(self.shard);
    }
}

#[tonic::async_trait]
impl<S: Store> ShardMover for ClusterMover<S> {
    async fn drain(&self, parallel: usize) -> Result<v1::DrainNodeResponse, Status> {
        let started = Instant::now();
        let cluster = self.cluster()?;
        let others: Vec<String> = cluster
            .members
            .borrow()
            .nodes
            .keys()
            .filter(|node| **node != cluster.node_id)
            .cloned()
            .collect();
        if others.is_empty() {
            return Err(Reason::PreconditionFailed
                .plain("no other live member to move the shards to; nothing changed"));
        }
        // Marked draining (bound to this node's lease): placement gives it nothing.
        let lease_id = match &*cluster.lease.borrow() {
            LeaseState::Held { lease_id, .. } => *lease_id,
            _ => 0,
        };
        let limit = Duration::from_millis(self.request_timeout_ms);
        let key = self.keys.draining(&cluster.node_id);
        let mark = self.store.put(&key, b"", lease_id);
        if !matches!(tokio::time::timeout(limit, mark).await, Ok(Ok(_))) {
            tracing::warn!("could not mark this node draining in etcd; draining anyway");
        }
        let serving: Vec<u32> = cluster.ownership.serving_at(started).into_keys().collect();
        tracing::info!(shards = serving.len(), to = ?others, parallel, "draining this node");
        let moves = serving.into_iter().map(|shard| {
            let to = rendezvous_owner(shard, others.iter().map(String::as_str))
                .expect("at least one other member")
                .to_owned();
            async move { (shard, self.move_shard(shard, &to).await) }
        });
        let mut outcomes: Vec<(u32, Result<v1::MoveShardResponse, Status>)> =
            futures::stream::iter(moves)
                .buffer_unordered(parallel.clamp(1, MAX_DRAIN_PARALLEL))
                .collect()
                .await;
        outcomes.sort_by_key(|(shard, _)| *shard);
        let mut answer = v1::DrainNodeResponse::default();
        for (shard, outcome) in outcomes {
            match outcome {
                Ok(moved) => answer.moves.push(moved),
                Err(status) => answer
                    .failures
                    .push(v1::DrainFailure { shard, message: status.message().to_owned() }),
            }
        }
        answer.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            moved = answer.moves.len(),
            failed = answer.failures.len(),
            elapsed_ms = answer.elapsed_ms,
            "drained this node"
        );
        Ok(answer)
    }

    async fn move_shard(&self, shard: u32, to: &str) -> Result<v1::MoveShardResponse, Status> {
        let started = Instant::now();
        let cluster = self.cluster()?;
        let ShardState::Serving { epoch } = cluster.ownership.state_at(shard, started) else {
            return Err(Reason::FailingClosed
                .plain(format!("shard {shard} is not served by this node now; retry")));
        };
        if to == cluster.node_id {
            return Err(Reason::PreconditionFailed
                .plain(format!("node {to:?} owns shard {shard} already; nothing changed")));
        }
        let address = cluster.members.borrow().nodes.get(to).cloned().unwrap_or_default();
        if address.is_empty() {
            return Err(Reason::PreconditionFailed
                .plain(format!("{to:?} is not a live member of the cluster; nothing changed")));
        }
        let gate = &cluster.moves;
        if !gate.begin(shard) {
            return Err(Reason::PreconditionFailed
                .plain(format!("shard {shard} is being moved already; nothing changed")));
        }
        let moving = Moving { gate, node: &self.node, shard };
        if !gate.drained(shard, DRAIN_WAIT).await {
            return Err(Reason::FailingClosed.plain(format!(
                "shard {shard} stayed busy for {} ms; it stays here, retry",
                DRAIN_WAIT.as_millis()
            )));
        }
        let drained_at = started.elapsed();
        let checkpoint = self.node.export_shard(shard).await.map_err(crate::error::node_status)?;
        let exported_at = started.elapsed();
        let records = checkpoint.records.len() as u64;
        let bytes = atp_store::encode_checkpoint(&checkpoint);
        if bytes.len() > MAX_INSTALL_BYTES {
            return Err(Reason::PreconditionFailed.plain(format!(
                "shard {shard}'s checkpoint is {} bytes, over the {MAX_INSTALL_BYTES} a move carries; it stays here",
                bytes.len()
            )));
        }
        let installed = self.install(&address, shard, bytes).await?;
        let installed_at = started.elapsed();
        if !self.pause_before_handover.is_zero() {
            tracing::warn!(
                shard,
                to,
                sequence = installed.sequence,
                pause_ms = self.pause_before_handover.as_millis() as u64,
                "handoff: installed at the new owner; pausing before the handover (test hook)"
            );
            tokio::time::sleep(self.pause_before_handover).await;
        }
        let request = HandOver {
            shard,
            from: cluster.node_id.clone(),
            epoch,
            to: to.to_owned(),
            request_timeout_ms: self.request_timeout_ms,
        };
        match hand_over(&self.store, &self.keys, &request).await {
            Ok(_) => {}
            Err(HandOverError::Refused(reason)) => {
                return Err(Reason::FailingClosed
                    .plain(format!("etcd refused the handover ({reason}); the shard stays here")));
            }
            Err(error @ HandOverError::Unknown { .. }) => {
                tracing::warn!(shard, %error, "handover not confirmed; reading the claim");
                if !self.handed_over_after_all(shard, to).await {
                    return Err(
                        Reason::FailingClosed.plain(format!("{error}; the shard stays here"))
                    );
                }
            }
        }
        let handed_over_at = started.elapsed();
        let to_epoch = self.claimed_by(cluster, shard, to).await.unwrap_or_default();
        drop(moving);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let ms = |at: Duration| at.as_millis() as u64;
        tracing::info!(
            shard,
            to,
            from_epoch = epoch,
            to_epoch,
            records,
            elapsed_ms,
            drained_ms = ms(drained_at),
            exported_ms = ms(exported_at),
            installed_ms = ms(installed_at),
            handed_over_ms = ms(handed_over_at),
            "moved a shard (times from the fence)"
        );
        Ok(v1::MoveShardResponse {
            shard,
            from_node: cluster.node_id.clone(),
            to_node: to.to_owned(),
            from_epoch: epoch,
            to_epoch,
            records,
            elapsed_ms,
        })
    }
}

/// How long the member list must stay unchanged before placement acts.
const PLACEMENT_SETTLE: Duration = Duration::from_secs(1);
/// How often placement looks again without a change (a draining mark, a
/// move that failed).
const PLACEMENT_RECHECK: Duration = Duration::from_secs(5);
/// How long one placement move may take.
const PLACEMENT_MOVE_DEADLINE: Duration = Duration::from_secs(60);

/// Placement on join (issue 11): while this node is the coordinator,
/// whenever the set of live members that are not draining differs from
/// the one last placed, gives the nodes that joined it the shards
/// rendezvous hashing over that set places on them
/// ([`atp_cluster::placement_moves`]: nothing else moves), `parallel` at a
/// time, each through its owner's MoveShard. The first set a new coordinator sees counts as placed;
/// a round with a failed move is tried again. `parallel` 0: never.
pub fn spawn_rebalancer<S: Store>(
    store: S,
    fence: Fence,
    leading: watch::Receiver<bool>,
    forwarder: Forwarder,
    parallel: usize,
    request_timeout_ms: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Fence::Cluster(cluster) = fence else { return };
        if parallel == 0 {
            return;
        }
        let keys = ClusterKeys::new(&cluster.cluster);
        let (mut members, mut leading) = (cluster.members.clone(), leading);
        let mut placed: Option<BTreeSet<String>> = None;
        loop {
            tokio::select! {
                changed = members.changed() => if changed.is_err() { return },
                changed = leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(PLACEMENT_RECHECK) => {}
            }
            if !*leading.borrow() {
                placed = None;
                continue;
            }
            tokio::time::sleep(PLACEMENT_SETTLE).await;
            let live = members.borrow().nodes.clone();
            let limit = Duration::from_millis(request_timeout_ms);
            let prefix = keys.draining_prefix();
            let draining = match tokio::time::timeout(limit, store.get_prefix(&prefix)).await {
                Ok(Ok(snapshot)) => snapshot
                    .kvs
                    .into_iter()
                    .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_owned))
                    .collect::<BTreeSet<String>>(),
                _ => continue,
            };
            let eligible: BTreeSet<String> =
                live.keys().filter(|node| !draining.contains(*node)).cloned().collect();
            if placed.as_ref() == Some(&eligible) {
                continue;
            }
            if placed.is_none() {
                placed = Some(eligible);
                continue;
            }
            let Some(table) = cluster.shard_map.borrow().assignment.clone() else { continue };
            let nodes: BTreeSet<&str> = eligible.iter().map(String::as_str).collect();
            let before = placed.as_ref().expect("placed once");
            let joined: BTreeSet<&str> =
                nodes.iter().copied().filter(|node| !before.contains(*node)).collect();
            let moves = placement_moves(&table, &nodes, &joined);
            tracing::info!(moves = moves.len(), members = ?eligible, "placement: moving shards to their rendezvous owners");
            let sends = moves.into_iter().map(|(shard, from, to)| {
                let address = live.get(&from).cloned().unwrap_or_default();
                let channel = forwarder.channel(&address);
                async move {
                    let Some(channel) = channel else { return Err(shard) };
                    let mut request = Request::new(v1::MoveShardRequest { shard, to_node: to });
                    request.set_timeout(PLACEMENT_MOVE_DEADLINE);
                    crate::telemetry::inject(request.metadata_mut());
                    let mut client = AdminServiceClient::new(channel);
                    client.move_shard(request).await.map(drop).map_err(|status| {
                        tracing::warn!(shard, from, error = %status.message(), "placement: a move failed");
                        shard
                    })
                }
            });
            let failed = futures::stream::iter(sends)
                .buffer_unordered(parallel.min(MAX_DRAIN_PARALLEL))
                .filter(|outcome| std::future::ready(outcome.is_err()))
                .count()
                .await;
            tracing::info!(failed, "placement: round done");
            if failed == 0 {
                placed = Some(eligible);
            }
        }
    })
}
