//! Every RPC of `atp.v1` by its own name, with the generated request and
//! reply messages: for what the plain methods of [`Client`] do not cover.
//! Each goes through the client's deadline, retries and typed errors.
//!
//! Adding an RPC is one line in the list below.

use atp_proto::v1;
use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::config_service_client::ConfigServiceClient;
use tonic_health::pb::health_client::HealthClient;

use crate::{Client, Error};

/// The RPCs of a [`Client`]; see [`Client::rpc`].
#[derive(Clone, Copy, Debug)]
pub struct Rpc<'client> {
    client: &'client Client,
}

impl<'client> Rpc<'client> {
    pub(crate) fn new(client: &'client Client) -> Self {
        Self { client }
    }
}

/// `unary!(service client, method, request, reply, doc)`: one method that
/// sends `request` to `service`'s `method`.
macro_rules! unary {
    ($(($service:ident, $method:ident, $request:ty, $reply:ty, $doc:literal)),* $(,)?) => {
        impl Rpc<'_> {
            $(
                #[doc = $doc]
                pub async fn $method(self, request: $request) -> Result<$reply, Error> {
                    self.client
                        .unary(request, |channel, request| async move {
                            $service::new(channel).$method(request).await
                        })
                        .await
                }
            )*
        }
    };
}

unary! {
    (AvailabilityServiceClient, reserve, v1::ReserveRequest, v1::ReserveResponse,
        "AvailabilityService.Reserve: hold every line or none."),
    (AvailabilityServiceClient, commit, v1::CommitRequest, v1::CommitResponse,
        "AvailabilityService.Commit: a held reservation becomes an order."),
    (AvailabilityServiceClient, release, v1::ReleaseRequest, v1::ReleaseResponse,
        "AvailabilityService.Release: free a held reservation."),
    (AvailabilityServiceClient, cancel, v1::CancelRequest, v1::CancelResponse,
        "AvailabilityService.Cancel: free a committed reservation's unshipped units."),
    (AvailabilityServiceClient, extend_reservation, v1::ExtendReservationRequest,
        v1::ExtendReservationResponse, "AvailabilityService.ExtendReservation."),
    (AvailabilityServiceClient, modify_reservation, v1::ModifyReservationRequest,
        v1::ModifyReservationResponse,
        "AvailabilityService.ModifyReservation: change a held reservation's lines, keyed by a request id."),
    (AvailabilityServiceClient, get_reservation, v1::GetReservationRequest,
        v1::GetReservationResponse, "AvailabilityService.GetReservation."),
    (AvailabilityServiceClient, get_availability, v1::GetAvailabilityRequest,
        v1::GetAvailabilityResponse, "AvailabilityService.GetAvailability."),
    (AvailabilityServiceClient, apply_stock_events, v1::ApplyStockEventsRequest,
        v1::ApplyStockEventsResponse,
        "AvailabilityService.ApplyStockEvents: one result per event (rejections are results, not errors)."),
    (AvailabilityServiceClient, reserve_batch, v1::ReserveBatchRequest, v1::ReserveBatchResponse,
        "AvailabilityService.ReserveBatch: one result per Reserve; see also `Client::reserve_many`."),
    (AvailabilityServiceClient, get_reservations, v1::GetReservationsRequest,
        v1::GetReservationsResponse, "AvailabilityService.GetReservations: 1..=100 ids, one result each."),
    (AvailabilityServiceClient, list_reservations, v1::ListReservationsRequest,
        v1::ListReservationsResponse, "AvailabilityService.ListReservations: one page, filtered."),
    (AvailabilityServiceClient, allocate, v1::AllocateRequest, v1::AllocateResponse,
        "AvailabilityService.Allocate: plan an order over its channel's locations and hold the plan under the order id; see also `Client::allocate`."),
    (ConfigServiceClient, upsert_location, v1::UpsertLocationRequest, v1::UpsertLocationResponse,
        "ConfigService.UpsertLocation."),
    (ConfigServiceClient, upsert_channel, v1::UpsertChannelRequest, v1::UpsertChannelResponse,
        "ConfigService.UpsertChannel."),
    (ConfigServiceClient, list_locations, v1::ListLocationsRequest, v1::ListLocationsResponse,
        "ConfigService.ListLocations."),
    (ConfigServiceClient, list_channels, v1::ListChannelsRequest, v1::ListChannelsResponse,
        "ConfigService.ListChannels."),
    (ConfigServiceClient, upsert_kit, v1::UpsertKitRequest, v1::UpsertKitResponse,
        "ConfigService.UpsertKit."),
    (ConfigServiceClient, list_kits, v1::ListKitsRequest, v1::ListKitsResponse,
        "ConfigService.ListKits."),
    (AdminServiceClient, list_shards, v1::ListShardsRequest, v1::ListShardsResponse,
        "AdminService.ListShards."),
    (AdminServiceClient, get_shard, v1::GetShardRequest, v1::GetShardResponse,
        "AdminService.GetShard."),
    (AdminServiceClient, query_ledger, v1::QueryLedgerRequest, v1::QueryLedgerResponse,
        "AdminService.QueryLedger: one page of the ledger."),
    (AdminServiceClient, get_cluster, v1::GetClusterRequest, v1::GetClusterResponse,
        "AdminService.GetCluster: the members and the shard map as the node sees them."),
    (AdminServiceClient, reassign_shards, v1::ReassignShardsRequest, v1::ReassignShardsResponse,
        "AdminService.ReassignShards: move a dead node's shards to live nodes, accepting the loss."),
    (AdminServiceClient, move_shard, v1::MoveShardRequest, v1::MoveShardResponse,
        "AdminService.MoveShard: move one live shard to another live node while serving."),
    (AdminServiceClient, drain_node, v1::DrainNodeRequest, v1::DrainNodeResponse,
        "AdminService.DrainNode: move every shard of a node to the others while serving."),
    (HealthClient, check, tonic_health::pb::HealthCheckRequest,
        tonic_health::pb::HealthCheckResponse, "grpc.health.v1.Health.Check."),
}
