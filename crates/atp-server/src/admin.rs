//! `atp.v1.AdminService` over a [`Node`]: shards, the ledger, the cluster
//! view and (cluster mode) the reassignment of a dead node's shards.

use atp_core::error::FieldViolation;
use atp_core::hash::SHARD_COUNT;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{Semaphore, watch};

use atp_proto::requests::{
    encode_page_token, parse_ledger_query, parse_reassign_shards, parse_shard_target,
};
use atp_proto::status_of;
use atp_proto::v1;
use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::v1::admin_service_server::AdminService;
use atp_shard::{Node, ShardInfo};
use tonic::{Request, Response, Status};

use crate::SINGLE_NODE_EPOCH;
use crate::error::node_status;
use crate::fence::{Fence, ShardRoute};
use crate::forward::{Forwarder, Incoming};
use crate::handoff::{MAX_DRAIN_PARALLEL, ShardMover};
use crate::reassign::{ShardReassigner, not_a_cluster_status};

/// How long a forwarded MoveShard or DrainNode may take (within the
/// caller's deadline).
const LONG_FORWARD: std::time::Duration = std::time::Duration::from_secs(600);
/// Moves a drain makes at once when the request does not say.
pub const DEFAULT_DRAIN_PARALLEL: usize = 4;

/// Most WatchShardMap streams one node serves at once.
pub const MAX_SHARD_MAP_STREAMS: usize = 1024;

/// The operator's view of the node.
#[derive(Clone)]
pub struct AdminApi {
    node: Node,
    fence: Fence,
    /// Cluster mode: runs ReassignShards (None: a single node refuses it).
    reassigner: Option<Arc<dyn ShardReassigner>>,
    /// Cluster mode: runs MoveShard at the owner (None: a single node refuses it).
    mover: Option<Arc<dyn ShardMover>>,
    /// The AvailabilityService's forwarder, whose count GetCluster reports.
    forwarder: Forwarder,
    /// Permits for open WatchShardMap streams.
    streams: Arc<Semaphore>,
    /// Turns true when the server stops: open streams end.
    stopping: watch::Receiver<bool>,
}

/// The stream WatchShardMap answers with.
pub type ShardMapStream =
    Pin<Box<dyn Stream<Item = Result<v1::WatchShardMapResponse, Status>> + Send>>;

impl AdminApi {
    /// The service over `node` (a single node).
    pub fn new(node: Node) -> Self {
        Self::with_fence(node, Fence::SingleNode)
    }

    /// The service over `node`, showing the cluster through `fence`.
    pub fn with_fence(node: Node, fence: Fence) -> Self {
        Self {
            node,
            fence,
            reassigner: None,
            mover: None,
            forwarder: Forwarder::default(),
            streams: Arc::new(Semaphore::new(MAX_SHARD_MAP_STREAMS)),
            stopping: watch::channel(false).1,
        }
    }

    /// GetCluster reports the requests `forwarder` passed on.
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = forwarder;
        self
    }

    /// WatchShardMap streams end when `stopping` turns true (the server
    /// stops: an open stream must not hold its shutdown up).
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// A shard as this node shows it: in cluster mode `node` is the
    /// cluster's id of this node (the configured name otherwise).
    fn shard_message(&self, info: ShardInfo) -> v1::ShardInfo {
        let mut message = shard_info_message(info);
        if let Fence::Cluster(cluster) = &self.fence {
            message.node = cluster.node_id.clone();
        }
        message
    }

    fn cluster_message(&self) -> v1::GetClusterResponse {
        let mut message = self.fence.cluster_message(&self.node.config().node_name);
        message.forwarded_requests = self.forwarder.forwarded();
        if let Fence::Cluster(cluster) = &self.fence {
            message.moving_shards = cluster.moves.moving();
        }
        message
    }

    /// The service over `node` in cluster mode: ReassignShards goes through
    /// `reassigner`.
    pub fn with_reassigner(mut self, reassigner: Arc<dyn ShardReassigner>) -> Self {
        self.reassigner = Some(reassigner);
        self
    }

    /// The service over `node` in cluster mode: MoveShard goes through `mover`.
    pub fn with_mover(mut self, mover: Arc<dyn ShardMover>) -> Self {
        self.mover = Some(mover);
        self
    }
}

/// A shard as the admin API shows it.
pub fn shard_info_message(info: ShardInfo) -> v1::ShardInfo {
    v1::ShardInfo {
        shard: info.shard,
        epoch: info.epoch,
        sku_count: info.stats.sku_count,
        position_count: info.stats.position_count,
        open_holds: info.stats.open_holds,
        reservation_count: info.stats.reservation_count,
        mailbox_depth: info.mailbox_depth,
        mailbox_capacity: info.mailbox_capacity,
        last_applied_sequence: info.stats.last_applied_sequence,
        node: info.node,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_shards(
        &self,
        request: Request<v1::ListShardsRequest>,
    ) -> Result<Response<v1::ListShardsResponse>, Status> {
        let include_empty = request.into_inner().include_empty;
        let shards = self.node.list_shards(include_empty).await.map_err(node_status)?;
        Ok(Response::new(v1::ListShardsResponse {
            shards: shards.into_iter().map(|info| self.shard_message(info)).collect(),
            shard_count: SHARD_COUNT,
        }))
    }

    async fn get_shard(
        &self,
        request: Request<v1::GetShardRequest>,
    ) -> Result<Response<v1::GetShardResponse>, Status> {
        // Another node's shard is shown by its owner (one hop); a shard
        // nobody serves (failing closed here, owner unknown or unreachable)
        // as this node holds it.
        let (incoming, message) =
            Incoming::split(request, matches!(self.fence, Fence::Cluster(_)))?;
        let shard = parse_shard_target(message).map_err(status_of)?;
        if let ShardRoute::Forward(peer) = self.fence.route_shard(shard, incoming.may_forward()) {
            let sent = self.forwarder.send_with(
                &peer.address,
                incoming,
                AdminServiceClient::new,
                |mut client, request| async move { client.get_shard(request).await },
            );
            // An owner that cannot be asked: this node's view, as before.
            if let Ok(answer) = sent.await {
                return answer;
            }
        }
        let info = self.node.shard_info(shard).await.map_err(node_status)?;
        Ok(Response::new(v1::GetShardResponse { shard: Some(self.shard_message(info)) }))
    }

    async fn move_shard(
        &self,
        request: Request<v1::MoveShardRequest>,
    ) -> Result<Response<v1::MoveShardResponse>, Status> {
        let Some(mover) = &self.mover else { return Err(not_a_cluster_status()) };
        let (incoming, message) = Incoming::split(request, true)?;
        if message.shard >= SHARD_COUNT {
            return Err(status_of(
                FieldViolation::new(
                    "shard",
                    format!("is {}; must be 0..{SHARD_COUNT}", message.shard),
                )
                .into(),
            ));
        }
        let to = message.to_node.trim();
        if to.is_empty() || to.len() > 200 {
            return Err(status_of(
                FieldViolation::new("to_node", "must be a member's node id (1..=200 characters)")
                    .into(),
            ));
        }
        // The owner runs the move: forwarded there (one hop) when it is not this node.
        match self.fence.route_shard(message.shard, incoming.may_forward()) {
            ShardRoute::Here => {}
            ShardRoute::Forward(peer) => {
                let sent = self.forwarder.send_with_up_to(
                    LONG_FORWARD,
                    &peer.address,
                    incoming,
                    AdminServiceClient::new,
                    |mut client, request| async move { client.move_shard(request).await },
                );
                return sent.await.unwrap_or(Err(peer.refusal));
            }
            ShardRoute::Refused(status) => return Err(status),
        }
        // On its own task: a caller that goes away does not cut a move short.
        let (mover, shard, to) = (Arc::clone(mover), message.shard, to.to_owned());
        // In this request's span: the install carries its trace context.
        let moved = tokio::spawn(tracing::Instrument::in_current_span(async move {
            mover.move_shard(shard, &to).await
        }));
        Ok(Response::new(moved.await.map_err(|error| {
            atp_proto::Reason::FailingClosed.plain(format!("the move stopped: {error}"))
        })??))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let (Some(mover), Fence::Cluster(cluster)) = (&self.mover, &self.fence) else {
            return Err(not_a_cluster_status());
        };
        let (incoming, message) = Incoming::split(request, true)?;
        let node = message.node_id.trim();
        if node.is_empty() || node.len() > 200 {
            return Err(status_of(
                FieldViolation::new("node_id", "must be a member's node id (1..=200 characters)")
                    .into(),
            ));
        }
        let parallel = match message.max_parallel {
            0 => DEFAULT_DRAIN_PARALLEL,
            n if n as usize <= MAX_DRAIN_PARALLEL => n as usize,
            n => {
                return Err(status_of(
                    FieldViolation::new(
                        "max_parallel",
                        format!(
                            "is {n}; must be 1..={MAX_DRAIN_PARALLEL} (0: {DEFAULT_DRAIN_PARALLEL})"
                        ),
                    )
                    .into(),
                ));
            }
        };
        if node != cluster.node_id {
            // The drained node runs its drain: forwarded there (one hop).
            let address = cluster.members.borrow().nodes.get(node).cloned().unwrap_or_default();
            if address.is_empty() {
                return Err(atp_proto::Reason::PreconditionFailed.plain(format!(
                    "{node:?} is not a live member of the cluster; nothing changed"
                )));
            }
            let sent = self.forwarder.send_with_up_to(
                LONG_FORWARD,
                &address,
                incoming,
                AdminServiceClient::new,
                |mut client, request| async move { client.drain_node(request).await },
            );
            return sent.await.unwrap_or_else(|_| {
                Err(atp_proto::Reason::FailingClosed.plain(format!(
                    "node {node:?} at {address} did not answer the drain; ask it again (moves \
                     done stay done)"
                )))
            });
        }
        let mover = Arc::clone(mover);
        let drained = tokio::spawn(tracing::Instrument::in_current_span(async move {
            mover.drain(parallel).await
        }));
        Ok(Response::new(drained.await.map_err(|error| {
            atp_proto::Reason::FailingClosed.plain(format!("the drain stopped: {error}"))
        })??))
    }

    async fn get_cluster(
        &self,
        _request: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::GetClusterResponse>, Status> {
        Ok(Response::new(self.cluster_message()))
    }

    type WatchShardMapStream = ShardMapStream;

    async fn watch_shard_map(
        &self,
        _request: Request<v1::WatchShardMapRequest>,
    ) -> Result<Response<ShardMapStream>, Status> {
        let permit = Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            atp_proto::status::overloaded(format!(
                "this node serves {MAX_SHARD_MAP_STREAMS} WatchShardMap streams already; retry later or ask another node"
            ))
        })?;
        let changes = self.fence.map_changes();
        let state = (self.clone(), changes, true, permit);
        let stream =
            futures::stream::unfold(state, |(api, mut changes, first, permit)| async move {
                if !first {
                    let mut stopping = api.stopping.clone();
                    // A closed signal (no server owns it) never fires.
                    let stopped = async move {
                        if stopping.wait_for(|stopping| *stopping).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    match &mut changes {
                        Some((map, members)) => {
                            let changed = async {
                                tokio::select! {
                                    changed = map.changed() => changed.is_ok(),
                                    changed = members.changed() => changed.is_ok(),
                                }
                            };
                            tokio::select! {
                                alive = changed => if !alive { return None },
                                () = stopped => return None,
                            }
                        }
                        None => {
                            stopped.await;
                            return None;
                        }
                    }
                }
                if let Some((map, members)) = &mut changes {
                    map.mark_unchanged();
                    members.mark_unchanged();
                }
                let message = v1::WatchShardMapResponse { map: Some(api.cluster_message()) };
                Some((Ok(message), (api, changes, false, permit)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn reassign_shards(
        &self,
        request: Request<v1::ReassignShardsRequest>,
    ) -> Result<Response<v1::ReassignShardsResponse>, Status> {
        let request = parse_reassign_shards(request.into_inner()).map_err(status_of)?;
        let Some(reassigner) = &self.reassigner else { return Err(not_a_cluster_status()) };
        let reassigned = reassigner.reassign(request).await?;
        let moves = reassigned
            .moves
            .into_iter()
            .map(|(shard, (from_node, to_node))| v1::ShardMove { shard, from_node, to_node })
            .collect();
        Ok(Response::new(v1::ReassignShardsResponse {
            moves,
            revision: reassigned.revision,
            audit_key: reassigned.audit_key,
        }))
    }

    async fn query_ledger(
        &self,
        request: Request<v1::QueryLedgerRequest>,
    ) -> Result<Response<v1::QueryLedgerResponse>, Status> {
        let query = parse_ledger_query(request.into_inner()).map_err(status_of)?;
        let query = atp_store::LedgerQuery {
            sku: query.sku.map(|sku| sku.as_str().to_owned()),
            location: query.location.map(|location| location.as_str().to_owned()),
            cause: query.cause,
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            limit: query.limit,
            page_token: query.page_token,
        };
        let page = self.node.query_ledger(query).await.map_err(node_status)?;
        Ok(Response::new(v1::QueryLedgerResponse {
            entries: page.entries.into_iter().map(Into::into).collect(),
            epoch: SINGLE_NODE_EPOCH,
            next_page_token: encode_page_token(&page.next_page_token),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use atp_shard::{Clock, NodeConfig};
    use futures::StreamExt;

    use super::*;

    /// An AdminApi no server owns (its stop signal closed) keeps a single
    /// node's map stream open: one map, then nothing, not an end.
    #[tokio::test]
    async fn a_stream_without_a_server_stays_open_after_its_map() {
        let node = Node::start(NodeConfig::default(), Clock::system());
        let api = AdminApi::new(node);
        let request = Request::new(v1::WatchShardMapRequest {});
        let mut stream = api.watch_shard_map(request).await.expect("a stream").into_inner();
        let first = stream.next().await.expect("a map").expect("ok");
        assert!(!first.map.expect("the map").cluster_mode);
        tokio::time::pause();
        let next = tokio::time::timeout(Duration::from_secs(3600), stream.next()).await;
        assert!(next.is_err(), "the stream ended or sent again: {next:?}");
    }
}
