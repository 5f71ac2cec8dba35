//! Which shards this node may serve a request for: every shard a request
//! touches is checked before anything runs, so a request never runs partly.
//!
//! A single node serves every shard under epoch 1 ([`Fence::SingleNode`]).
//! In cluster mode ([`Fence::Cluster`]) each shard goes through
//! [`OwnershipView::admit`]; a refusal becomes a status through
//! [`refusal_status`]: `FAILING_CLOSED` or `NOT_OWNER` (both UNAVAILABLE),
//! or `STALE_EPOCH` (ABORTED) when the request carried, in [`EPOCH_HEADER`],
//! an epoch of its first shard that is not the current one (on a single
//! node: any epoch but 1).
//! [`Fence::route`] also says when a request another node serves whole may
//! be forwarded to it (see `crate::forward`). GetAvailability alone is
//! split by owner instead, routing each SKU's shard with
//! [`Fence::route_shard`] (see `crate::fan_out`).

use std::collections::BTreeSet;

use atp_cluster::{LeaseState, Members, OwnershipView, Refusal, ShardMap, ShardState};
use atp_core::CoreError;
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_proto::{Reason, status_of, v1};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic_types::ErrorDetails;

use crate::SINGLE_NODE_EPOCH;

/// The cluster state a node in cluster mode decides on.
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// The cluster's name.
    pub cluster: String,
    /// This node's id.
    pub node_id: String,
    /// This node's advertised address.
    pub address: String,
    /// Its ownership of every shard.
    pub ownership: OwnershipView,
    /// The shard map it mirrors (owners and epochs).
    pub shard_map: watch::Receiver<ShardMap>,
    /// The member list it mirrors (id → address).
    pub members: watch::Receiver<Members>,
    /// Whether this node holds its lease now.
    pub lease: watch::Receiver<LeaseState>,
    /// The shards being moved away from this node (planned handoff) and
    /// the requests active on each.
    pub moves: std::sync::Arc<crate::handoff::MoveGate>,
}

/// How a node decides whether it serves a shard.
#[derive(Clone, Debug, Default)]
pub enum Fence {
    /// One node serves all shards under epoch 1.
    #[default]
    SingleNode,
    /// The node serves the shards it holds claims for, under their epochs.
    Cluster(Box<ClusterView>),
}

pub use atp_proto::EPOCH_HEADER;

/// The epoch a request carries in [`EPOCH_HEADER`], if any; a value that is
/// not a positive decimal number is INVALID_ARGUMENT.
pub fn carried_epoch(metadata: &MetadataMap) -> Result<Option<i64>, Status> {
    let Some(value) = metadata.get(EPOCH_HEADER) else { return Ok(None) };
    let epoch = value.to_str().ok().and_then(|text| text.trim().parse::<i64>().ok());
    match epoch {
        Some(epoch) if epoch > 0 => Ok(Some(epoch)),
        _ => Err(status_of(CoreError::invalid(EPOCH_HEADER, "must be a positive decimal epoch"))),
    }
}

/// The shards a request touches: its reservation ids' homes and its SKUs'
/// shards. The first key added is the one whose epoch the reply carries,
/// and the one a carried epoch is checked against.
#[derive(Debug, Default)]
pub struct Touched {
    first: Option<u32>,
    shards: BTreeSet<u32>,
    carried: Option<i64>,
}

impl Touched {
    /// Adds the shard of `key` (a reservation id or a SKU).
    pub fn key(&mut self, key: &str) -> &mut Self {
        self.shard(shard_of(key))
    }

    /// The epoch the request carries for its first shard (see [`carried_epoch`]).
    pub fn carrying(&mut self, epoch: Option<i64>) -> &mut Self {
        self.carried = epoch;
        self
    }

    /// The shards added, in order.
    pub fn shards(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards.iter().copied()
    }

    /// Adds `shard`.
    pub fn shard(&mut self, shard: u32) -> &mut Self {
        self.first.get_or_insert(shard);
        self.shards.insert(shard);
        self
    }
}

/// Where a request is served.
#[derive(Debug)]
pub enum Route {
    /// Here, under this epoch (the first shard's).
    Here(u64),
    /// By the one other node that owns every shard the request touches.
    Forward(Peer),
}

/// Where one shard of a request that is split by owner is answered.
#[derive(Debug)]
pub enum ShardRoute {
    /// Here (a single node, or a shard this node serves now).
    Here,
    /// By another node, whose address is known.
    Forward(Peer),
    /// Nowhere: failing closed here, its owner unknown or without an
    /// address, or the request may not be forwarded. The shard's status.
    Refused(Status),
}

/// The node a request may be forwarded to.
#[derive(Debug)]
pub struct Peer {
    /// Its advertised address (`host:port`).
    pub address: String,
    /// What this node answers if the owner cannot be reached: the
    /// `NOT_OWNER` status admission gave.
    pub refusal: Status,
}

impl Fence {
    /// Admits a request touching `touched`: `Ok(epoch)` (the first shard's
    /// epoch; 1 on a single node) when this node serves every shard, else
    /// the status of the first refused one. Nothing is done before this.
    pub fn admit(&self, touched: &Touched) -> Result<u64, Status> {
        match self.route(touched, false)? {
            Route::Here(epoch) => Ok(epoch),
            Route::Forward(peer) => Err(peer.refusal),
        }
    }

    /// Where a request touching `touched` is served: here, or (when
    /// `may_forward`) by the one other node whose address is known and that
    /// owns every shard it touches. A request spanning nodes, or whose owner
    /// has no address, is refused with the first refused shard's status.
    pub fn route(&self, touched: &Touched, may_forward: bool) -> Result<Route, Status> {
        let Fence::Cluster(cluster) = self else {
            return match (touched.carried, touched.first) {
                (Some(carried), Some(shard)) if carried != SINGLE_NODE_EPOCH as i64 => {
                    let refusal =
                        Refusal::StaleEpoch { owner: None, epoch: Some(SINGLE_NODE_EPOCH as i64) };
                    Err(refusal_status(&refusal, shard, &Members::default()))
                }
                _ => Ok(Route::Here(SINGLE_NODE_EPOCH)),
            };
        };
        let now = Instant::now();
        let mut epoch = SINGLE_NODE_EPOCH;
        let mut served_here = false;
        let mut owners = BTreeSet::new();
        let mut first_refused = None;
        for &shard in &touched.shards {
            let carried = if Some(shard) == touched.first { touched.carried } else { None };
            match cluster.ownership.admit(shard, carried, now) {
                Ok(current) => {
                    served_here = true;
                    if Some(shard) == touched.first {
                        epoch = u64::try_from(current).unwrap_or(SINGLE_NODE_EPOCH);
                    }
                }
                Err(Refusal::FailingClosed) => {
                    let members = cluster.members.borrow();
                    return Err(refusal_status(&Refusal::FailingClosed, shard, &members));
                }
                Err(refusal) => {
                    let owner = match &refusal {
                        Refusal::NotOwner { owner, .. } | Refusal::StaleEpoch { owner, .. } => {
                            owner.clone()
                        }
                        Refusal::FailingClosed => None,
                    };
                    owners.insert(owner);
                    first_refused.get_or_insert((refusal, shard));
                }
            }
        }
        let Some((refusal, shard)) = first_refused else { return Ok(Route::Here(epoch)) };
        let members = cluster.members.borrow();
        if served_here || owners.len() > 1 {
            return Err(not_owner_status(&refusal, shard, &members, true));
        }
        let refusal_status = not_owner_status(&refusal, shard, &members, false);
        let owner = owners.into_iter().next().flatten().unwrap_or_default();
        let address = members.nodes.get(&owner).cloned().unwrap_or_default();
        if !may_forward || address.is_empty() || owner == cluster.node_id {
            return Err(refusal_status);
        }
        Ok(Route::Forward(Peer { address, refusal: refusal_status }))
    }

    /// Where `shard` is answered when a request is split by owner (a
    /// multi-SKU read): here, by its owner (when `may_forward` and its
    /// address is known), or refused with its status.
    pub fn route_shard(&self, shard: u32, may_forward: bool) -> ShardRoute {
        let Fence::Cluster(cluster) = self else { return ShardRoute::Here };
        let refusal = match cluster.ownership.admit(shard, None, Instant::now()) {
            Ok(_) => return ShardRoute::Here,
            Err(refusal) => refusal,
        };
        let members = cluster.members.borrow();
        let status = refusal_status(&refusal, shard, &members);
        let owner = match &refusal {
            Refusal::NotOwner { owner, .. } | Refusal::StaleEpoch { owner, .. } => owner.clone(),
            Refusal::FailingClosed => None,
        };
        let Some(owner) = owner else { return ShardRoute::Refused(status) };
        let address = members.nodes.get(&owner).cloned().unwrap_or_default();
        if !may_forward || address.is_empty() || owner == cluster.node_id {
            return ShardRoute::Refused(status);
        }
        ShardRoute::Forward(Peer { address, refusal: status })
    }

    /// `shard`'s epoch as this node serves it now (1 on a single node, or
    /// when not served: only for replies already admitted).
    pub fn epoch(&self, shard: u32) -> u64 {
        let Fence::Cluster(cluster) = self else { return SINGLE_NODE_EPOCH };
        match cluster.ownership.state_at(shard, Instant::now()) {
            ShardState::Serving { epoch } => u64::try_from(epoch).unwrap_or(SINGLE_NODE_EPOCH),
            _ => SINGLE_NODE_EPOCH,
        }
    }

    /// Admits a request that reads every shard this node holds (a listing):
    /// refused while any shard assigned here is failing closed.
    pub fn admit_local(&self) -> Result<(), Status> {
        let Fence::Cluster(cluster) = self else { return Ok(()) };
        let now = Instant::now();
        for shard in 0..SHARD_COUNT {
            if cluster.ownership.state_at(shard, now) == ShardState::FailingClosed {
                let members = cluster.members.borrow();
                return Err(refusal_status(&Refusal::FailingClosed, shard, &members));
            }
        }
        Ok(())
    }
}

/// The status of a refused `shard`. `members` gives the owner's address.
pub fn refusal_status(refusal: &Refusal, shard: u32, members: &Members) -> Status {
    not_owner_status(refusal, shard, members, false)
}

/// [`refusal_status`]; `spans_nodes` says the request touches shards of
/// more than one node (cross-node requests are not built).
fn not_owner_status(refusal: &Refusal, shard: u32, members: &Members, spans_nodes: bool) -> Status {
    match refusal {
        Refusal::FailingClosed => Reason::FailingClosed.status(
            format!("shard {shard} is assigned to this node but not served now; retry later"),
            [("shard", shard.to_string())],
            ErrorDetails::new(),
        ),
        // The owner of the first shard says it is stale: whatever else
        // the request touches, nothing runs. (A node that does not own the
        // shard forwards the request to its owner, which checks it.)
        Refusal::StaleEpoch { owner, epoch } => {
            let owner = owner.clone().unwrap_or_default();
            let address = members.nodes.get(&owner).cloned().unwrap_or_default();
            let epoch = epoch.map(|epoch| epoch.to_string()).unwrap_or_default();
            Reason::StaleEpoch.status(
                format!(
                    "stale epoch: shard {shard} is served by node {owner:?} at {address:?} under \
                     epoch {epoch}; read the shard's owner and epoch again"
                ),
                [
                    ("shard", shard.to_string()),
                    ("owner", owner),
                    ("owner_address", address),
                    ("epoch", epoch),
                ],
                ErrorDetails::new(),
            )
        }
        Refusal::NotOwner { owner, epoch } => {
            let owner = owner.clone().unwrap_or_default();
            let address = members.nodes.get(&owner).cloned().unwrap_or_default();
            let epoch = epoch.map(|epoch| epoch.to_string()).unwrap_or_default();
            let message = if spans_nodes {
                format!(
                    "the request spans nodes (cross-node requests are not built): shard {shard} \
                     is owned by node {owner:?} at {address:?}"
                )
            } else {
                format!("shard {shard} is owned by node {owner:?} at {address:?}; send it there")
            };
            Reason::NotOwner.status(
                message,
                [
                    ("shard", shard.to_string()),
                    ("owner", owner),
                    ("owner_address", address),
                    ("epoch", epoch),
                ],
                ErrorDetails::new(),
            )
        }
    }
}

impl Fence {
    /// Receivers that change with the shard map and the member list
    /// (cluster mode; None on a single node, whose map never changes).
    pub fn map_changes(&self) -> Option<(watch::Receiver<ShardMap>, watch::Receiver<Members>)> {
        match self {
            Fence::Cluster(cluster) => Some((cluster.shard_map.clone(), cluster.members.clone())),
            Fence::SingleNode => None,
        }
    }

    /// The cluster as this node sees it; a single node answers a one-member
    /// map serving every shard under epoch 1.
    pub fn cluster_message(&self, node_name: &str) -> v1::GetClusterResponse {
        let Fence::Cluster(cluster) = self else {
            return single_node_cluster(node_name);
        };
        let now = Instant::now();
        let lease = match &*cluster.lease.borrow() {
            LeaseState::Held { deadline, .. } if now < *deadline => "held",
            LeaseState::Held { .. } | LeaseState::Lost { .. } => "lost",
            LeaseState::Idle => "idle",
        };
        let mut members: Vec<v1::ClusterMember> = cluster
            .members
            .borrow()
            .nodes
            .iter()
            .map(|(id, address)| {
                let answering = *id == cluster.node_id;
                v1::ClusterMember {
                    node_id: id.clone(),
                    address: address.clone(),
                    lease_state: if answering { lease } else { "held" }.to_owned(),
                    answering,
                }
            })
            .collect();
        if !members.iter().any(|member| member.answering) {
            members.push(v1::ClusterMember {
                node_id: cluster.node_id.clone(),
                address: cluster.address.clone(),
                lease_state: lease.to_owned(),
                answering: true,
            });
        }
        let map = cluster.shard_map.borrow();
        let shards = (0..SHARD_COUNT)
            .map(|shard| {
                let (owner, epoch) = match map.claim(shard) {
                    Some(claim) => (claim.node.clone(), u64::try_from(claim.epoch).unwrap_or(0)),
                    None => {
                        let assigned = map
                            .assignment
                            .as_ref()
                            .map(|assignment| assignment.owner(shard).to_owned())
                            .unwrap_or_default();
                        (assigned, 0)
                    }
                };
                let view = match cluster.ownership.state_at(shard, now) {
                    ShardState::Serving { .. } => v1::ShardView::Serving,
                    ShardState::FailingClosed => v1::ShardView::FailingClosed,
                    ShardState::NotOwned { .. } => v1::ShardView::NotOwned,
                };
                v1::ClusterShard { shard, owner, epoch, view: view.into() }
            })
            .collect();
        v1::GetClusterResponse {
            cluster_mode: true,
            cluster: cluster.cluster.clone(),
            node_id: cluster.node_id.clone(),
            members,
            shards,
            shard_map_revision: map.revision,
            shard_map_confirmed: map.confirmed,
            forwarded_requests: 0,
            moving_shards: Vec::new(),
        }
    }
}

fn single_node_cluster(node_name: &str) -> v1::GetClusterResponse {
    v1::GetClusterResponse {
        cluster_mode: false,
        cluster: String::new(),
        node_id: node_name.to_owned(),
        members: vec![v1::ClusterMember {
            node_id: node_name.to_owned(),
            address: String::new(),
            lease_state: "held".to_owned(),
            answering: true,
        }],
        shards: (0..SHARD_COUNT)
            .map(|shard| v1::ClusterShard {
                shard,
                owner: node_name.to_owned(),
                epoch: SINGLE_NODE_EPOCH,
                view: v1::ShardView::Serving.into(),
            })
            .collect(),
        shard_map_revision: 0,
        shard_map_confirmed: true,
        forwarded_requests: 0,
        moving_shards: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn carrying(value: &str) -> Result<Option<i64>, Status> {
        let mut metadata = MetadataMap::new();
        metadata.insert(EPOCH_HEADER, value.parse().expect("ascii"));
        carried_epoch(&metadata)
    }

    #[test]
    fn the_epoch_header_is_a_positive_decimal() {
        assert_eq!(carried_epoch(&MetadataMap::new()).expect("none"), None);
        assert_eq!(carrying("42").expect("valid"), Some(42));
        for bad in ["", "0", "-3", "x", "1.5"] {
            let refused = carrying(bad).expect_err(bad);
            assert_eq!(refused.code(), Code::InvalidArgument, "{bad:?}: {refused:?}");
        }
    }

    #[test]
    fn a_single_node_serves_epoch_one_only() {
        let mut touched = Touched::default();
        touched.key("order-1").key("sku-1");
        assert!(matches!(Fence::SingleNode.admit(&touched), Ok(SINGLE_NODE_EPOCH)));
        touched.carrying(Some(1));
        assert!(matches!(Fence::SingleNode.admit(&touched), Ok(SINGLE_NODE_EPOCH)));
        touched.carrying(Some(2));
        let refused = Fence::SingleNode.admit(&touched).expect_err("stale");
        assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
        let info = refused.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "STALE_EPOCH");
        assert_eq!(info.metadata["shard"], shard_of("order-1").to_string());
        assert_eq!(info.metadata["epoch"], "1");
    }
}
