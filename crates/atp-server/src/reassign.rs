//! `AdminService.ReassignShards` in cluster mode: the operator's explicit,
//! audited move of a dead node's shards to live nodes
//! ([`atp_cluster::reassign`], one etcd transaction with its audit entry).
//!
//! The handler parses the request; a single node refuses it ("not a
//! cluster"); in cluster mode a [`ShardReassigner`] runs it with the node's
//! grace period and clock, and [`reassign_status`] maps every refusal to a
//! status (one exhaustive match).

use std::collections::BTreeMap;

use atp_cluster::{Clock, ReassignError, ReassignRequest, Reassigned, Store, reassign};
use atp_core::FieldViolation;
use atp_core::hash::SHARD_COUNT;
use atp_proto::requests::{ReassignShards, ReassignTarget};
use atp_proto::{Reason, status_of};
use tonic::Status;

/// How long each etcd call of a reassignment may take.
pub const REASSIGN_ETCD_TIMEOUT_MS: u64 = 5_000;

/// Runs a parsed ReassignShards in cluster mode.
#[tonic::async_trait]
pub trait ShardReassigner: Send + Sync + 'static {
    /// Moves the target's shards, or says why not (nothing changed then).
    async fn reassign(&self, request: ReassignShards) -> Result<Reassigned, Status>;
}

/// The etcd-backed [`ShardReassigner`] of one node.
pub struct ClusterReassigner<S: Store> {
    store: S,
    cluster: String,
    grace_ms: u64,
    clock: Clock,
}

impl<S: Store> ClusterReassigner<S> {
    /// Reassigns in `cluster` through `store`, refusing nodes seen down for
    /// less than `grace_ms` (measured on `clock`, ms since the Unix epoch).
    pub fn new(store: S, cluster: impl Into<String>, grace_ms: u64, clock: Clock) -> Self {
        Self { store, cluster: cluster.into(), grace_ms, clock }
    }
}

#[tonic::async_trait]
impl<S: Store> ShardReassigner for ClusterReassigner<S> {
    async fn reassign(&self, request: ReassignShards) -> Result<Reassigned, Status> {
        let target = match &request.target {
            ReassignTarget::Shard(shard) => atp_cluster::ReassignTarget::Shard(*shard),
            ReassignTarget::Node(node) => atp_cluster::ReassignTarget::Node(node.clone()),
        };
        let cluster_request = ReassignRequest {
            cluster: self.cluster.clone(),
            target,
            accept_loss: request.accept_loss,
            grace_ms: self.grace_ms,
            operator: request.operator.clone(),
            now_unix_ms: (self.clock)(),
            request_timeout_ms: REASSIGN_ETCD_TIMEOUT_MS,
        };
        match reassign(&self.store, &cluster_request).await {
            Ok(reassigned) => {
                tracing::warn!(
                    operator = %request.operator,
                    target = %target_name(&request.target),
                    revision = reassigned.revision,
                    audit = %reassigned.audit_key,
                    moves = %moves_text(&reassigned.moves),
                    "shard reassign --accept-loss: moved a dead node's shards"
                );
                Ok(reassigned)
            }
            Err(error) => {
                tracing::warn!(
                    operator = %request.operator,
                    target = %target_name(&request.target),
                    error = %error,
                    "shard reassign refused; nothing changed"
                );
                Err(reassign_status(error))
            }
        }
    }
}

/// `shard 17` or `node n-2`.
pub fn target_name(target: &ReassignTarget) -> String {
    match target {
        ReassignTarget::Shard(shard) => format!("shard {shard}"),
        ReassignTarget::Node(node) => format!("node {node}"),
    }
}

/// `17 n-2->n-1, 18 n-2->n-3`.
fn moves_text(moves: &BTreeMap<u32, (String, String)>) -> String {
    let moves: Vec<String> =
        moves.iter().map(|(shard, (from, to))| format!("{shard} {from}->{to}")).collect();
    moves.join(", ")
}

/// The refusal a single node answers.
pub fn not_a_cluster_status() -> Status {
    Reason::PreconditionFailed.plain(
        "not a cluster: this node runs without etcd (etcd_endpoints unset), every shard is its own",
    )
}

/// The status of a refused reassignment. Nothing was written in any case
/// but a store error on the write itself, whose outcome is unknown (the
/// message says how to find out).
pub fn reassign_status(error: ReassignError) -> Status {
    let message = error.to_string();
    match error {
        ReassignError::LossNotAccepted => Reason::PreconditionFailed.plain(
            "accept_loss must be true: reassigning a dead node's shards loses what only that \
             node made durable (their stock, holds and reservations); nothing changed",
        ),
        ReassignError::UnknownShard(shard) => status_of(
            FieldViolation::new("shard", format!("is {shard}; must be 0..{SHARD_COUNT}")).into(),
        ),
        ReassignError::WithinGrace { node, down_ms, grace_ms } => {
            Reason::PreconditionFailed.plain(format!(
                "node {node} is down for {down_ms} ms, less than the grace period of \
                 {grace_ms} ms (reassign_grace_ms): retry in {} ms if it does not come back; \
                 nothing changed",
                grace_ms.saturating_sub(down_ms)
            ))
        }
        ReassignError::NodeAlive(_)
        | ReassignError::NotMarkedDown(_)
        | ReassignError::StillClaimed { .. }
        | ReassignError::NoShards(_)
        | ReassignError::NoLiveNodes
        | ReassignError::NoTable
        | ReassignError::BadTable(_)
        | ReassignError::Conflict => {
            Reason::PreconditionFailed.plain(format!("{message}; nothing changed"))
        }
        ReassignError::Store { operation, source } => Reason::FailingClosed.plain(format!(
            "the cluster store (etcd) is unreachable: failed to {operation}: {source}; if this \
             was the write, check `atpctl cluster shards` before retrying"
        )),
    }
}

#[cfg(test)]
mod tests {
    use atp_cluster::StoreError;
    use std::time::Duration;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn each_refusal_has_its_code_and_says_why() {
        let accept = reassign_status(ReassignError::LossNotAccepted);
        assert_eq!(accept.code(), Code::FailedPrecondition);
        assert!(accept.message().contains("accept_loss"), "{}", accept.message());

        let shard = reassign_status(ReassignError::UnknownShard(5000));
        assert_eq!(shard.code(), Code::InvalidArgument);
        let bad_request = shard.get_details_bad_request().expect("field violations");
        assert_eq!(bad_request.field_violations[0].field, "shard");

        let grace = ReassignError::WithinGrace { node: "n-2".into(), down_ms: 400, grace_ms: 1000 };
        let grace = reassign_status(grace);
        assert_eq!(grace.code(), Code::FailedPrecondition);
        assert!(grace.message().contains("retry in 600 ms"), "{}", grace.message());

        for refused in [
            ReassignError::NodeAlive("n-2".into()),
            ReassignError::NotMarkedDown("n-2".into()),
            ReassignError::StillClaimed { shard: 3, node: "n-2".into() },
            ReassignError::Conflict,
        ] {
            assert_eq!(reassign_status(refused).code(), Code::FailedPrecondition);
        }
        let unreachable = ReassignError::Store {
            operation: "read the assignment",
            source: StoreError::Timeout(Duration::from_secs(5)),
        };
        assert_eq!(reassign_status(unreachable).code(), Code::Unavailable);
        assert_eq!(not_a_cluster_status().code(), Code::FailedPrecondition);
    }
}
