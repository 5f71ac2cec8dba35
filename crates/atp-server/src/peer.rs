//! Node to node (cluster mode): `atp.internal.v1.PeerService`, the owner's
//! side of line ops, ship notices and recovery questions for its shards
//! ([`PeerApi`]), and the sender's side the node calls for shards it does
//! not serve ([`ClusterPeers`], an [`atp_shard::Peers`]).
//!
//! Both sides check ownership: the owner answers only for a shard it serves
//! now (else UNAVAILABLE `NOT_OWNER` or `FAILING_CLOSED`, and the sender
//! tries again later); the sender asks the owner the shard map names. Every
//! call carries the wire version (`x-atp-wire`), checked as for forwarded
//! requests.

use std::sync::Arc;
use std::time::Duration;

use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::shard::{Incarnation, LineOp, ShardFacts, ShipNotice};
use atp_proto::internal::peer_service_client::PeerServiceClient;
use atp_proto::internal::peer_service_server::PeerService;
use atp_proto::internal::{
    AdoptRequest, AdoptResponse, ApplyLineOpsRequest, ApplyLineOpsResponse, GetShardFactsRequest,
    GetShardFactsResponse, HasLineRequest, HasLineResponse, NoteShippedRequest,
    NoteShippedResponse,
};
use atp_proto::status_of;
use atp_shard::{Node, PeerError, PeerFuture, Peers};
use atp_shard::{decode, decode_results, encode, encode_results};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::node_status;
use crate::fence::{Fence, ShardRoute, Touched};
use crate::forward::{Forwarder, Incoming, WIRE_HEADER, WIRE_VERSION};

/// Most line ops in one `ApplyLineOps` call.
pub const MAX_OPS_PER_CALL: usize = 1024;

/// The owner's side of [`PeerService`].
#[derive(Clone)]
pub struct PeerApi {
    node: Node,
    fence: Fence,
}

impl PeerApi {
    /// The service over `node`, answering for the shards `fence` admits.
    pub fn new(node: Node, fence: Fence) -> Self {
        Self { node, fence }
    }

    /// Checks the wire version and that this node serves `shard` now.
    fn admit<T: Clone>(&self, request: Request<T>, shard: u32) -> Result<T, Status> {
        let (_, message) = Incoming::split(request, false)?;
        let mut touched = Touched::default();
        touched.shard(shard);
        self.fence.admit(&touched)?;
        Ok(message)
    }
}

fn undecodable(field: &str, error: String) -> Status {
    status_of(atp_core::CoreError::invalid(field, error))
}

fn check_shard(shard: u32) -> Result<(), Status> {
    if shard >= atp_core::hash::SHARD_COUNT {
        return Err(status_of(atp_core::CoreError::invalid(
            "shard",
            format!("must be < {}", atp_core::hash::SHARD_COUNT),
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn apply_line_ops(
        &self,
        request: Request<ApplyLineOpsRequest>,
    ) -> Result<Response<ApplyLineOpsResponse>, Status> {
        let shard = request.get_ref().shard;
        check_shard(shard)?;
        let message = self.admit(request, shard)?;
        let ops: Vec<LineOp> = decode(&message.ops).map_err(|error| undecodable("ops", error))?;
        if ops.len() > MAX_OPS_PER_CALL {
            return Err(status_of(atp_core::CoreError::invalid(
                "ops",
                format!("has {}; the limit is {MAX_OPS_PER_CALL}", ops.len()),
            )));
        }
        if let Some(op) = ops.iter().find(|op| op_shard(op).is_some_and(|of| of != shard)) {
            return Err(status_of(atp_core::CoreError::invalid(
                "ops",
                format!("an op for another shard than {shard}: {op:?}"),
            )));
        }
        let results = self.node.apply_line_ops(shard, ops).await.map_err(node_status)?;
        Ok(Response::new(ApplyLineOpsResponse {
            results: encode_results(&results),
            epoch: self.fence.epoch(shard),
        }))
    }

    async fn note_shipped(
        &self,
        request: Request<NoteShippedRequest>,
    ) -> Result<Response<NoteShippedResponse>, Status> {
        let notice: ShipNotice =
            decode(&request.get_ref().notice).map_err(|error| undecodable("notice", error))?;
        self.admit(request, shard_of(notice.reservation.as_str()))?;
        self.node.note_shipped(notice).await.map_err(node_status)?;
        Ok(Response::new(NoteShippedResponse {}))
    }

    async fn get_shard_facts(
        &self,
        request: Request<GetShardFactsRequest>,
    ) -> Result<Response<GetShardFactsResponse>, Status> {
        let shard = request.get_ref().shard;
        check_shard(shard)?;
        let message = self.admit(request, shard)?;
        let id = ReservationId::parse("reservation_id", &message.reservation_id)
            .map_err(|violation| status_of(violation.into()))?;
        let facts = self.node.shard_facts(shard, id).await.map_err(node_status)?;
        Ok(Response::new(GetShardFactsResponse { facts: encode(&facts) }))
    }

    async fn adopt(
        &self,
        request: Request<AdoptRequest>,
    ) -> Result<Response<AdoptResponse>, Status> {
        let incarnation: Incarnation = decode(&request.get_ref().incarnation)
            .map_err(|error| undecodable("incarnation", error))?;
        self.admit(request, shard_of(incarnation.request.id.as_str()))?;
        self.node.adopt(incarnation).await.map_err(node_status)?;
        Ok(Response::new(AdoptResponse {}))
    }

    async fn has_line(
        &self,
        request: Request<HasLineRequest>,
    ) -> Result<Response<HasLineResponse>, Status> {
        let line: ShipNotice =
            decode(&request.get_ref().line).map_err(|error| undecodable("line", error))?;
        self.admit(request, shard_of(line.sku.as_str()))?;
        let held = self.node.has_line(line).await.map_err(node_status)?;
        Ok(Response::new(HasLineResponse { held }))
    }
}

/// The SKU shard an op's lines name, when it names any (a Hold's lines).
fn op_shard(op: &LineOp) -> Option<u32> {
    match op {
        LineOp::Hold { lines, .. } => lines.first().map(|line| shard_of(line.sku.as_str())),
        _ => None,
    }
}

/// The sender's side: asks each shard's owner as the shard map names it.
#[derive(Clone)]
pub struct ClusterPeers {
    fence: Fence,
    forwarder: Forwarder,
}

impl ClusterPeers {
    /// Peers as `fence` (cluster mode) sees them, reached through `forwarder`'s channels.
    pub fn new(fence: Fence, forwarder: Forwarder) -> Arc<Self> {
        Arc::new(Self { fence, forwarder })
    }

    /// A client of `shard`'s owner, or why there is none.
    fn owner(&self, shard: u32) -> Result<PeerServiceClient<Channel>, PeerError> {
        let unavailable = |reason: String| PeerError::Unavailable { shard, reason };
        match self.fence.route_shard(shard, true) {
            ShardRoute::Forward(peer) => {
                let channel = self
                    .forwarder
                    .channel(&peer.address)
                    .ok_or_else(|| unavailable(format!("bad owner address {}", peer.address)))?;
                Ok(PeerServiceClient::new(channel))
            }
            ShardRoute::Here => Err(unavailable("served here".into())),
            ShardRoute::Refused(status) => Err(unavailable(status.message().to_owned())),
        }
    }
}

/// `message` as a node-to-node request: the wire version and `deadline`.
fn peer_request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(WIRE_HEADER, WIRE_VERSION.parse().expect("an ascii value"));
    request.set_timeout(deadline);
    request
}

/// Runs `call` within `deadline`; any failure is [`PeerError::Unavailable`].
async fn within<T>(
    shard: u32,
    deadline: Duration,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(PeerError::Unavailable {
            shard,
            reason: format!("{:?}: {}", status.code(), status.message()),
        }),
        Err(_) => Err(PeerError::Unavailable {
            shard,
            reason: format!("no answer within {} ms", deadline.as_millis()),
        }),
    }
}

impl Peers for ClusterPeers {
    fn is_local(&self, shard: u32) -> bool {
        matches!(self.fence.route_shard(shard, false), ShardRoute::Here)
    }

    fn line_ops(
        &self,
        shard: u32,
        ops: Vec<LineOp>,
        deadline: Duration,
    ) -> PeerFuture<Vec<Result<(), atp_core::CoreError>>> {
        let owner = self.owner(shard);
        Box::pin(async move {
            let mut client = owner?;
            let count = ops.len();
            let request = peer_request(ApplyLineOpsRequest { shard, ops: encode(&ops) }, deadline);
            let answer = within(shard, deadline, client.apply_line_ops(request)).await?;
            let results = decode_results(&answer.results)
                .map_err(|reason| PeerError::Unavailable { shard, reason })?;
            if results.len() != count {
                return Err(PeerError::Unavailable {
                    shard,
                    reason: format!("{} results for {count} ops", results.len()),
                });
            }
            Ok(results)
        })
    }

    fn notice(&self, notice: ShipNotice, deadline: Duration) -> PeerFuture<()> {
        let home = shard_of(notice.reservation.as_str());
        let owner = self.owner(home);
        Box::pin(async move {
            let mut client = owner?;
            let request = peer_request(NoteShippedRequest { notice: encode(&notice) }, deadline);
            within(home, deadline, client.note_shipped(request)).await.map(drop)
        })
    }

    fn facts(&self, shard: u32, id: ReservationId, deadline: Duration) -> PeerFuture<ShardFacts> {
        let owner = self.owner(shard);
        Box::pin(async move {
            let mut client = owner?;
            let message = GetShardFactsRequest { shard, reservation_id: id.to_string() };
            let answer =
                within(shard, deadline, client.get_shard_facts(peer_request(message, deadline)))
                    .await?;
            decode(&answer.facts).map_err(|reason| PeerError::Unavailable { shard, reason })
        })
    }

    fn adopt(&self, incarnation: Incarnation, deadline: Duration) -> PeerFuture<()> {
        let home = shard_of(incarnation.request.id.as_str());
        let owner = self.owner(home);
        Box::pin(async move {
            let mut client = owner?;
            let message = AdoptRequest { incarnation: encode(&incarnation) };
            within(home, deadline, client.adopt(peer_request(message, deadline))).await.map(drop)
        })
    }

    fn has_line(&self, line: ShipNotice, deadline: Duration) -> PeerFuture<bool> {
        let shard = shard_of(line.sku.as_str());
        let owner = self.owner(shard);
        Box::pin(async move {
            let mut client = owner?;
            let message = HasLineRequest { line: encode(&line) };
            let answer =
                within(shard, deadline, client.has_line(peer_request(message, deadline))).await?;
            Ok(answer.held)
        })
    }
}
