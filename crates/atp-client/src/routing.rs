//! Routing by the shard map: a background task keeps one
//! `AdminService.WatchShardMap` stream open to a configured endpoint and
//! installs every map it sends ([`Transport::install`]); each call then goes
//! to its first key's shard owner with the epoch the map gives
//! (`x-atp-epoch`). The map is a hint: a call the owner refuses as
//! `NOT_OWNER` or `STALE_EPOCH` (the map was behind a move), or that cannot
//! reach the owner, is sent again at once to a configured endpoint without
//! the epoch, and that node forwards it; an owner that could not be reached
//! or did not answer within the deadline is routed around for 2 s (so one
//! attempt may take up to twice the deadline). A broken stream stops routing until a new one
//! sends a map; a node without WatchShardMap is asked again every 5 s (the
//! next configured endpoint may have it).

use std::time::Duration;

use atp_proto::v1;
use atp_proto::v1::admin_service_client::AdminServiceClient;
use tokio::task::JoinHandle;

use crate::Error;
use crate::transport::Transport;

/// First pause before opening the stream again after it broke.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts to open the stream.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The running router; dropping the last clone of the client stops it.
#[derive(Debug)]
pub(crate) struct Router {
    task: JoinHandle<()>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Router {
    /// Starts following the shard map for `transport` (inside a Tokio
    /// runtime).
    pub(crate) fn start(transport: Transport) -> Self {
        Self { task: tokio::spawn(follow(transport)) }
    }
}

/// Opens the stream, installs every map, and opens it again (to the next
/// configured endpoint) when it breaks.
async fn follow(transport: Transport) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut admin = AdminServiceClient::new(transport.channel());
        match admin.watch_shard_map(v1::WatchShardMapRequest {}).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    if let Some(map) = &message.map {
                        transport.install(map);
                        backoff = FIRST_BACKOFF;
                    }
                }
            }
            // A node without WatchShardMap (older, e.g. mid rolling
            // upgrade): ask the next endpoint, at the slowest pace.
            Err(status) if status.code() == tonic::Code::Unimplemented => backoff = MAX_BACKOFF,
            Err(_) => {}
        }
        transport.forget_routes();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether a routed call's failure means "send it to any node instead":
/// the owner refused it before running it (the map was behind), or could
/// not be reached ([`unreachable`]).
pub(crate) fn reroute(error: &Error) -> bool {
    matches!(error.reason(), Some(atp_proto::Reason::NotOwner | atp_proto::Reason::StaleEpoch))
        || unreachable(error)
}

/// A failure that says the owner could not be reached or did not answer in
/// time (no atp reason): it is routed around for a while. (Resending is
/// safe: every atp call carries its own id or only reads.)
pub(crate) fn unreachable(error: &Error) -> bool {
    matches!(error, Error::Unavailable { .. } | Error::DeadlineExceeded { .. })
        && error.reason().is_none()
}

/// The key a request is routed by: its first reservation id (its home
/// shard; an Allocate's order id, which is its reservation's id) or its
/// first SKU. None: sent to any node.
pub trait RouteKey {
    /// The routing key, if the request has one.
    fn route_key(&self) -> Option<&str> {
        None
    }
}

/// `keyed!(Type => |request| key)`; `keyed!(Type)` has no key.
macro_rules! keyed {
    ($($request:ty $(=> |$r:ident| $key:expr)?),* $(,)?) => {
        $(
            impl RouteKey for $request {
                $(fn route_key(&self) -> Option<&str> {
                    let $r = self;
                    $key
                })?
            }
        )*
    };
}

keyed! {
    v1::ReserveRequest => |r| Some(r.reservation_id.as_str()),
    v1::CommitRequest => |r| Some(r.reservation_id.as_str()),
    v1::ReleaseRequest => |r| Some(r.reservation_id.as_str()),
    v1::CancelRequest => |r| Some(r.reservation_id.as_str()),
    v1::ExtendReservationRequest => |r| Some(r.reservation_id.as_str()),
    v1::ModifyReservationRequest => |r| Some(r.reservation_id.as_str()),
    v1::GetReservationRequest => |r| Some(r.reservation_id.as_str()),
    v1::GetAvailabilityRequest => |r| r.skus.first().map(String::as_str),
    v1::ApplyStockEventsRequest => |r| r.events.first().map(|event| event.sku.as_str()),
    v1::ReserveBatchRequest => |r| r.reservations.first().map(|first| first.reservation_id.as_str()),
    v1::GetReservationsRequest => |r| r.reservation_ids.first().map(String::as_str),
    // The order id is the id of the reservation Allocate makes: its home shard.
    v1::AllocateRequest => |r| Some(r.order_id.as_str()),
    v1::ListReservationsRequest,
    v1::UpsertLocationRequest,
    v1::UpsertChannelRequest,
    v1::ListLocationsRequest,
    v1::ListChannelsRequest,
    v1::UpsertKitRequest,
    v1::ListKitsRequest,
    v1::ListShardsRequest,
    v1::GetShardRequest,
    v1::QueryLedgerRequest,
    v1::GetClusterRequest,
    v1::ReassignShardsRequest,
    v1::MoveShardRequest,
    v1::DrainNodeRequest,
    tonic_health::pb::HealthCheckRequest,
}
