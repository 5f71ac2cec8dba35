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
    GetShardFactsResponse, HasLineRequest, HasLineResponse, InstallShardRequest,
    InstallShardResponse, NoteShippedRequest, NoteShippedResponse,
};
use atp_proto::{Reason, reason_of, status_of};
use atp_shard::{Node, PeerError, PeerFuture, Peers};
use atp_shard::{decode, decode_results, encode, encode_results};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::node_status;
use crate::fence::{Fence, ShardRoute, Touched};
use crate::forward::{Forwarder, Incoming, WIRE_HEADER, WIRE_VERSION};
use crate::handoff::{Entered, MAX_INSTALL_BYTES};

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

    /// Checks the wire version and that this node serves `shard` now,
    /// after waiting while the shard is being moved away; the request
    /// counts on the shard (a move waits for it) until the guard drops.
    async fn admit<T: Clone>(
        &self,
        request: Request<T>,
        shard: u32,
    ) -> Result<(T, Entered), Status> {
        let (_, message) = Incoming::split(request, false)?;
        let mut touched = Touched::default();
        touched.shard(shard);
        let entered = self.fence.enter(&touched).await?;
        self.fence.admit(&touched)?;
        Ok((message, entered))
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
        let (message, _entered) = self.admit(request, shard).await?;
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
        let _entered = self.admit(request, shard_of(notice.reservation.as_str())).await?;
        self.node.note_shipped(notice).await.map_err(node_status)?;
        Ok(Response::new(NoteShippedResponse {}))
    }

    async fn get_shard_facts(
        &self,
        request: Request<GetShardFactsRequest>,
    ) -> Result<Response<GetShardFactsResponse>, Status> {
        let shard = request.get_ref().shard;
        check_shard(shard)?;
        let (message, _entered) = self.admit(request, shard).await?;
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
        let _entered = self.admit(request, shard_of(incarnation.request.id.as_str())).await?;
        self.node.adopt(incarnation).await.map_err(node_status)?;
        Ok(Response::new(AdoptResponse {}))
    }

    async fn has_line(
        &self,
        request: Request<HasLineRequest>,
    ) -> Result<Response<HasLineResponse>, Status> {
        let line: ShipNotice =
            decode(&request.get_ref().line).map_err(|error| undecodable("line", error))?;
        let _entered = self.admit(request, shard_of(line.sku.as_str())).await?;
        let held = self.node.has_line(line).await.map_err(node_status)?;
        Ok(Response::new(HasLineResponse { held }))
    }

    async fn install_shard(
        &self,
        request: Request<Streaming<InstallShardRequest>>,
    ) -> Result<Response<InstallShardResponse>, Status> {
        let (metadata, _, mut chunks) = request.into_parts();
        Incoming::split(Request::from_parts(metadata, Default::default(), ()), false)?;
        let mut shard = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            check_shard(chunk.shard)?;
            if *shard.get_or_insert(chunk.shard) != chunk.shard {
                return Err(status_of(atp_core::CoreError::invalid(
                    "shard",
                    "every chunk of one InstallShard must name the same shard",
                )));
            }
            if bytes.len() + chunk.data.len() > MAX_INSTALL_BYTES {
                return Err(status_of(atp_core::CoreError::invalid(
                    "data",
                    format!("the checkpoint is over the limit of {MAX_INSTALL_BYTES} bytes"),
                )));
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let Some(shard) = shard else {
            return Err(status_of(atp_core::CoreError::invalid("shard", "no chunk was sent")));
        };
        if matches!(self.fence.route_shard(shard, false), ShardRoute::Here) {
            return Err(Reason::PreconditionFailed.plain(format!(
                "this node serves shard {shard} now: it cannot install another copy"
            )));
        }
        let checkpoint =
            atp_store::decode_checkpoint(&bytes).map_err(|error| undecodable("data", error))?;
        if checkpoint.shard != shard {
            return Err(undecodable("data", format!("a checkpoint of shard {}", checkpoint.shard)));
        }
        let records = checkpoint.records.len() as u64;
        let sequence = self.node.install_shard(checkpoint).await.map_err(node_status)?;
        tracing::info!(shard, records, sequence, "installed a shard handed over by its owner");
        Ok(Response::new(InstallShardResponse { records, sequence }))
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

/// Pause before asking again after a refusal at admission.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Whether the owner refused `status` before doing anything: the shard is
/// not (or not yet) served there.
fn refused_at_admission(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && matches!(reason_of(status), Some(Reason::NotOwner | Reason::FailingClosed))
}

/// `message` as a node-to-node request: the wire version and `deadline`.
fn peer_request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(WIRE_HEADER, WIRE_VERSION.parse().expect("an ascii value"));
    request.set_timeout(deadline);
    crate::telemetry::inject(request.metadata_mut());
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
        let peers = self.clone();
        Box::pin(async move {
            let until = tokio::time::Instant::now() + deadline;
            let count = ops.len();
            let ops = encode(&ops);
            // Refused at admission (the shard moved, or its new owner is
            // claiming it): nothing was applied; ask the owner the map names
            // now, within the deadline.
            let answer = loop {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                let attempt = match peers.owner(shard) {
                    Ok(mut client) => {
                        let request =
                            peer_request(ApplyLineOpsRequest { shard, ops: ops.clone() }, left);
                        tokio::time::timeout(left, client.apply_line_ops(request)).await
                    }
                    Err(error) if left > RETRY_PAUSE * 2 && !peers.is_local(shard) => {
                        tracing::debug!(%error, shard, "no owner to send line ops to yet; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                match attempt {
                    Ok(Err(status)) if refused_at_admission(&status) && left > RETRY_PAUSE * 2 => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Ok(Ok(answer)) => break answer.into_inner(),
                    Ok(Err(status)) => {
                        return Err(PeerError::Unavailable {
                            shard,
                            reason: format!("{:?}: {}", status.code(), status.message()),
                        });
                    }
                    Err(_) => {
                        return Err(PeerError::Unavailable {
                            shard,
                            reason: format!("no answer within {} ms", deadline.as_millis()),
                        });
                    }
                }
            };
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
