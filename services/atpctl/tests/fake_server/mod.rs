//! A small in-memory stand-in for `atpd`, enough to drive every atpctl command end to end.
//!
//! It is not the real semantics (no ATP arithmetic beyond on_hand, no expiry); it
//! answers in the shapes the real server does, including `google.rpc.BadRequest`
//! details (an event at an unknown location refuses the whole ApplyStockEvents
//! call; an event id reused with another payload is one REJECTED result), and
//! records what it was sent (the size of each stock-event call).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use atp_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use atp_proto::v1::availability_service_server::{AvailabilityService, AvailabilityServiceServer};
use atp_proto::v1::config_service_server::{ConfigService, ConfigServiceServer};
use atp_proto::v1::get_shard_request::Target;
use atp_proto::v1::stock_event::Kind;
use atp_proto::v1::*;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

type Reply<T> = Result<Response<T>, Status>;

const NOW_MS: i64 = 1_700_000_000_000;

#[derive(Default)]
pub struct State {
    pub locations: BTreeMap<String, Location>,
    pub channels: BTreeMap<String, Channel>,
    pub reservations: BTreeMap<String, Reservation>,
    /// on_hand by (sku, location).
    pub on_hand: BTreeMap<(String, String), i64>,
    /// Events applied so far, by id, to answer retries.
    pub events: BTreeMap<String, StockEvent>,
    /// Number of events in each ApplyStockEvents call, in order.
    pub batch_sizes: Vec<usize>,
    /// GetAvailability's `demand_per_hour` by (sku, channel); 0 when absent.
    pub demand_per_hour: BTreeMap<(String, String), f64>,
}

#[derive(Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no test thread panicked while holding the state")
    }

    /// Serves on a fresh port of 127.0.0.1; returns `http://127.0.0.1:PORT`.
    pub async fn start(&self) -> String {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let router = tonic::transport::Server::builder()
            .add_service(AvailabilityServiceServer::new(self.clone()))
            .add_service(ConfigServiceServer::new(self.clone()))
            .add_service(AdminServiceServer::new(self.clone()));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        format!("http://{addr}")
    }

    fn find(&self, id: &str) -> Result<Reservation, Status> {
        self.state()
            .reservations
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("reservation {id} not found")))
    }

    fn set_state(&self, id: &str, state: ReservationState) -> Result<Reservation, Status> {
        let mut reservation = self.find(id)?;
        reservation.state = state as i32;
        self.state().reservations.insert(id.to_owned(), reservation.clone());
        Ok(reservation)
    }

    fn position(&self, sku: &str, location: &str) -> LocationAvailability {
        let on_hand =
            self.state().on_hand.get(&(sku.to_owned(), location.to_owned())).copied().unwrap_or(0);
        LocationAvailability {
            location_id: location.to_owned(),
            on_hand,
            atp: on_hand,
            ..Default::default()
        }
    }

    fn apply_one(&self, event: StockEvent) -> StockEventResult {
        let mut result =
            StockEventResult { event_id: event.event_id.clone(), epoch: 1, ..Default::default() };
        let mut state = self.state();
        match state.events.get(&event.event_id) {
            Some(seen) if *seen == event => result.outcome = StockEventOutcome::Duplicate as i32,
            Some(_) => {
                result.outcome = StockEventOutcome::Rejected as i32;
                result.error_code = Code::AlreadyExists as i32;
                result.error_message =
                    format!("event {} reused with another payload", event.event_id);
                return result;
            }
            None => {
                let key = (event.sku.clone(), event.location_id.clone());
                let on_hand = state.on_hand.entry(key).or_insert(0);
                match &event.kind {
                    Some(Kind::Counted(count)) => *on_hand = count.on_hand,
                    Some(Kind::Received(received)) => *on_hand += received.quantity,
                    _ => {}
                }
                state.events.insert(event.event_id.clone(), event.clone());
                result.outcome = StockEventOutcome::Applied as i32;
            }
        }
        drop(state);
        result.position = Some(self.position(&event.sku, &event.location_id));
        result
    }
}

fn excluded_location(id: &str, reason: &str) -> ExcludedLocation {
    ExcludedLocation { location_id: id.to_owned(), reason: reason.to_owned() }
}

/// Every line from `location` as one shipment, at a flat-earth distance
/// (good enough for a fake) and the location's cost.
fn single_shipment(
    location: &Location,
    destination: &Destination,
    lines: &[OrderLine],
) -> RoutingPlan {
    let latitude = (location.latitude - destination.latitude).abs();
    let longitude = (location.longitude - destination.longitude).abs()
        * destination.latitude.to_radians().cos();
    let km = latitude.hypot(longitude) * 111.195;
    let units: i64 = lines.iter().map(|line| line.quantity).sum();
    let cost = location.cost.map_or(0, |cost| {
        cost.per_shipment + (km * cost.per_km as f64).round() as i64 + units * cost.per_unit
    });
    RoutingPlan {
        shipments: vec![PlannedShipment {
            location_id: location.location_id.clone(),
            distance_km: km,
            cost,
            lines: lines.to_vec(),
            units,
            ..Default::default()
        }],
        cost,
        units,
        max_distance_km: km,
        total_distance_km: km,
        backordered: Vec::new(),
    }
}

fn invalid(message: &str, violations: Vec<FieldViolation>) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request(violations),
    )
}

#[tonic::async_trait]
impl AvailabilityService for Fake {
    type WatchAvailabilityStream = tonic::Streaming<atp_proto::v1::WatchAvailabilityResponse>;

    async fn watch_availability(
        &self,
        _request: Request<atp_proto::v1::WatchAvailabilityRequest>,
    ) -> Reply<Self::WatchAvailabilityStream> {
        Err(Status::unimplemented("the fake server has no WatchAvailability"))
    }

    /// One shipment from the channel's cheapest location that has every
    /// line on hand (the others as alternatives); no splitting, no capacity.
    async fn allocate(&self, request: Request<AllocateRequest>) -> Reply<AllocateResponse> {
        let request = request.into_inner();
        let Some(channel) = self.state().channels.get(&request.channel_id).cloned() else {
            return Err(invalid(
                "invalid argument",
                vec![FieldViolation::new(
                    "channel_id",
                    format!("unknown channel {}", request.channel_id),
                )],
            ));
        };
        let destination = request.destination.clone().unwrap_or_default();
        let mut plans = Vec::new();
        let mut excluded = Vec::new();
        for id in &channel.location_ids {
            let location = self.state().locations.get(id).cloned().unwrap_or_default();
            let ships_there = location.ships_to.is_empty()
                || location.ships_to.contains(&destination.country)
                || location.ships_to.contains(&destination.region);
            let in_stock = request
                .lines
                .iter()
                .all(|line| self.position(&line.sku, id).on_hand >= line.quantity);
            match (ships_there, in_stock) {
                (false, _) => excluded.push(excluded_location(id, "DOES_NOT_SHIP_THERE")),
                (true, false) => excluded.push(excluded_location(id, "NO_STOCK")),
                (true, true) => {
                    plans.push(single_shipment(&location, &destination, &request.lines))
                }
            }
        }
        plans.sort_by_key(|plan| plan.cost);
        if plans.is_empty() {
            return Err(Status::failed_precondition("the fake finds no location with every line"));
        }
        let plan = plans.remove(0);
        let mut response = AllocateResponse {
            plan: Some(plan.clone()),
            alternatives: plans,
            excluded,
            work: 3,
            exact: true,
            dry_run: request.dry_run,
            attempts: 1,
            epoch: 1,
            ..Default::default()
        };
        if request.dry_run {
            return Ok(Response::new(response));
        }
        if let Ok(reservation) = self.find(&request.order_id) {
            response.reservation = Some(reservation);
            response.replayed = true;
            return Ok(Response::new(response));
        }
        let ttl_ms =
            i64::from(if request.ttl_seconds == 0 { 900 } else { request.ttl_seconds }) * 1000;
        let location_id = plan.shipments[0].location_id.clone();
        let reservation = Reservation {
            reservation_id: request.order_id.clone(),
            channel_id: request.channel_id,
            state: ReservationState::Held as i32,
            lines: request
                .lines
                .into_iter()
                .map(|line| ReservationLineState {
                    sku: line.sku,
                    location_id: location_id.clone(),
                    quantity: line.quantity,
                    ..Default::default()
                })
                .collect(),
            created_at_ms: NOW_MS,
            expires_at_ms: NOW_MS + ttl_ms,
            ..Default::default()
        };
        self.state().reservations.insert(request.order_id, reservation.clone());
        response.reservation = Some(reservation);
        Ok(Response::new(response))
    }

    async fn get_reservations(
        &self,
        _request: Request<GetReservationsRequest>,
    ) -> Reply<GetReservationsResponse> {
        Err(Status::unimplemented("the fake server has no GetReservations"))
    }

    async fn list_reservations(
        &self,
        _request: Request<ListReservationsRequest>,
    ) -> Reply<ListReservationsResponse> {
        Err(Status::unimplemented("the fake server has no ListReservations"))
    }

    async fn reserve(&self, request: Request<ReserveRequest>) -> Reply<ReserveResponse> {
        let request = request.into_inner();
        let violations: Vec<FieldViolation> = request
            .lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.quantity <= 0)
            .map(|(index, _)| {
                FieldViolation::new(format!("lines[{index}].quantity"), "must be 1..=1000000")
            })
            .collect();
        if !violations.is_empty() {
            return Err(invalid("invalid argument", violations));
        }
        let ttl_ms =
            i64::from(if request.ttl_seconds == 0 { 900 } else { request.ttl_seconds }) * 1000;
        let reservation = Reservation {
            reservation_id: request.reservation_id.clone(),
            channel_id: request.channel_id,
            state: ReservationState::Held as i32,
            lines: request
                .lines
                .into_iter()
                .map(|line| ReservationLineState {
                    sku: line.sku,
                    location_id: line.location_id,
                    quantity: line.quantity,
                    committed: 0,
                    shipped: 0,
                })
                .collect(),
            created_at_ms: NOW_MS,
            expires_at_ms: NOW_MS + ttl_ms,
            ended_at_ms: 0,
            ..Default::default()
        };
        self.state().reservations.insert(request.reservation_id, reservation.clone());
        Ok(Response::new(ReserveResponse {
            reservation: Some(reservation),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn commit(&self, request: Request<CommitRequest>) -> Reply<CommitResponse> {
        let request = request.into_inner();
        let mut reservation =
            self.set_state(&request.reservation_id, ReservationState::Committed)?;
        for line in &mut reservation.lines {
            let named = request.lines.iter().find(|commit| commit.sku == line.sku);
            line.committed = named.map_or(line.quantity, |commit| commit.quantity);
        }
        self.state().reservations.insert(request.reservation_id, reservation.clone());
        Ok(Response::new(CommitResponse {
            reservation: Some(reservation),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Reply<ReleaseResponse> {
        let reservation =
            self.set_state(&request.into_inner().reservation_id, ReservationState::Released)?;
        Ok(Response::new(ReleaseResponse {
            reservation: Some(reservation),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Reply<CancelResponse> {
        let reservation =
            self.set_state(&request.into_inner().reservation_id, ReservationState::Cancelled)?;
        Ok(Response::new(CancelResponse {
            reservation: Some(reservation),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn extend_reservation(
        &self,
        request: Request<ExtendReservationRequest>,
    ) -> Reply<ExtendReservationResponse> {
        let request = request.into_inner();
        let mut reservation = self.find(&request.reservation_id)?;
        reservation.expires_at_ms = NOW_MS + i64::from(request.ttl_seconds) * 1000;
        self.state().reservations.insert(request.reservation_id, reservation.clone());
        Ok(Response::new(ExtendReservationResponse {
            reservation: Some(reservation),
            epoch: 1,
            ..Default::default()
        }))
    }

    async fn modify_reservation(
        &self,
        _request: Request<atp_proto::v1::ModifyReservationRequest>,
    ) -> Reply<atp_proto::v1::ModifyReservationResponse> {
        Err(Status::unimplemented("the fake server does not change reservations"))
    }

    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Reply<GetReservationResponse> {
        let reservation = self.find(&request.into_inner().reservation_id)?;
        Ok(Response::new(GetReservationResponse { reservation: Some(reservation), epoch: 1 }))
    }

    async fn get_availability(
        &self,
        request: Request<GetAvailabilityRequest>,
    ) -> Reply<GetAvailabilityResponse> {
        let request = request.into_inner();
        let locations: Vec<String> = self.state().locations.keys().cloned().collect();
        let channels: Vec<Channel> = self.state().channels.values().cloned().collect();
        let skus = request
            .skus
            .into_iter()
            .map(|sku| {
                let positions: Vec<LocationAvailability> =
                    locations.iter().map(|location| self.position(&sku, location)).collect();
                let channels = channels
                    .iter()
                    .map(|channel| ChannelAvailability {
                        channel_id: channel.channel_id.clone(),
                        atp: positions
                            .iter()
                            .filter(|p| channel.location_ids.contains(&p.location_id))
                            .map(|p| p.atp)
                            .sum::<i64>()
                            .saturating_sub(channel.buffer)
                            .max(0),
                        demand_per_hour: self
                            .state()
                            .demand_per_hour
                            .get(&(sku.clone(), channel.channel_id.clone()))
                            .copied()
                            .unwrap_or(0.0),
                        ..Default::default()
                    })
                    .collect();
                SkuAvailability {
                    sku,
                    shard: 7,
                    epoch: 1,
                    locations: positions,
                    channels,
                    error: None,
                }
            })
            .collect();
        Ok(Response::new(GetAvailabilityResponse { skus }))
    }

    async fn apply_stock_events(
        &self,
        request: Request<ApplyStockEventsRequest>,
    ) -> Reply<ApplyStockEventsResponse> {
        let events = request.into_inner().events;
        if events.len() > 1000 {
            return Err(invalid(
                "too many events",
                vec![FieldViolation::new("events", "at most 1000")],
            ));
        }
        self.state().batch_sizes.push(events.len());
        // Like atpd: an event at an unknown location refuses the whole call, naming it.
        let violations: Vec<FieldViolation> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| !self.state().locations.contains_key(&event.location_id))
            .map(|(index, event)| {
                FieldViolation::new(
                    format!("events[{index}].location_id"),
                    format!("unknown location {}", event.location_id),
                )
            })
            .collect();
        if !violations.is_empty() {
            return Err(invalid("invalid argument", violations));
        }
        let results = events.into_iter().map(|event| self.apply_one(event)).collect();
        Ok(Response::new(ApplyStockEventsResponse { results }))
    }

    /// atpctl has no batch command.
    async fn reserve_batch(
        &self,
        _request: Request<atp_proto::v1::ReserveBatchRequest>,
    ) -> Reply<atp_proto::v1::ReserveBatchResponse> {
        Err(Status::unimplemented("the fake serves no ReserveBatch"))
    }
}

#[tonic::async_trait]
impl ConfigService for Fake {
    async fn upsert_kit(
        &self,
        _request: Request<atp_proto::v1::UpsertKitRequest>,
    ) -> Reply<atp_proto::v1::UpsertKitResponse> {
        Err(Status::unimplemented("the fake server has no kits"))
    }

    async fn list_kits(
        &self,
        _request: Request<atp_proto::v1::ListKitsRequest>,
    ) -> Reply<atp_proto::v1::ListKitsResponse> {
        Err(Status::unimplemented("the fake server has no kits"))
    }

    async fn upsert_location(
        &self,
        request: Request<UpsertLocationRequest>,
    ) -> Reply<UpsertLocationResponse> {
        let location = request.into_inner().location.unwrap_or_default();
        let previous =
            self.state().locations.insert(location.location_id.clone(), location.clone());
        let changed = previous.as_ref() != Some(&location);
        Ok(Response::new(UpsertLocationResponse { location: Some(location), changed }))
    }

    async fn upsert_channel(
        &self,
        request: Request<UpsertChannelRequest>,
    ) -> Reply<UpsertChannelResponse> {
        let channel = request.into_inner().channel.unwrap_or_default();
        let violations: Vec<FieldViolation> = channel
            .location_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| !self.state().locations.contains_key(*id))
            .map(|(index, id)| {
                FieldViolation::new(
                    format!("channel.location_ids[{index}]"),
                    format!("unknown location {id}"),
                )
            })
            .collect();
        if !violations.is_empty() {
            return Err(invalid("invalid argument", violations));
        }
        let previous = self.state().channels.insert(channel.channel_id.clone(), channel.clone());
        let changed = previous.as_ref() != Some(&channel);
        Ok(Response::new(UpsertChannelResponse { channel: Some(channel), changed }))
    }

    async fn list_locations(
        &self,
        _: Request<ListLocationsRequest>,
    ) -> Reply<ListLocationsResponse> {
        let locations = self.state().locations.values().cloned().collect();
        Ok(Response::new(ListLocationsResponse { locations }))
    }

    async fn list_channels(&self, _: Request<ListChannelsRequest>) -> Reply<ListChannelsResponse> {
        let channels = self.state().channels.values().cloned().collect();
        Ok(Response::new(ListChannelsResponse { channels }))
    }
}

fn shard_info(shard: u32) -> ShardInfo {
    ShardInfo {
        shard,
        epoch: 1,
        sku_count: 2,
        mailbox_capacity: 1024,
        node: "node-1".into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AdminService for Fake {
    type WatchShardMapStream = tonic::codegen::BoxStream<WatchShardMapResponse>;

    /// Like a server from before the RPC: the SDK then never routes.
    async fn watch_shard_map(
        &self,
        _request: Request<WatchShardMapRequest>,
    ) -> Reply<Self::WatchShardMapStream> {
        Err(Status::unimplemented("this fake serves no shard map"))
    }

    async fn list_shards(&self, request: Request<ListShardsRequest>) -> Reply<ListShardsResponse> {
        let shards = if request.into_inner().include_empty {
            (0..3).map(shard_info).collect()
        } else {
            vec![shard_info(7)]
        };
        Ok(Response::new(ListShardsResponse { shards, shard_count: 1024 }))
    }

    async fn get_shard(&self, request: Request<GetShardRequest>) -> Reply<GetShardResponse> {
        let shard = match request.into_inner().target {
            Some(Target::Shard(number)) if number < 1024 => number,
            Some(Target::Shard(number)) => {
                return Err(invalid(
                    "invalid argument",
                    vec![FieldViolation::new("shard", format!("{number} is not below 1024"))],
                ));
            }
            Some(Target::Sku(_)) => 7,
            None => return Err(Status::invalid_argument("no target")),
        };
        Ok(Response::new(GetShardResponse { shard: Some(shard_info(shard)) }))
    }

    async fn get_cluster(
        &self,
        _request: Request<atp_proto::v1::GetClusterRequest>,
    ) -> Reply<atp_proto::v1::GetClusterResponse> {
        Err(Status::unimplemented("the fake server has no cluster view"))
    }

    /// One move for a shard (from `node-3`), two for a node; refused
    /// without accept_loss.
    async fn reassign_shards(
        &self,
        request: Request<atp_proto::v1::ReassignShardsRequest>,
    ) -> Reply<atp_proto::v1::ReassignShardsResponse> {
        use atp_proto::v1::ShardMove;
        use atp_proto::v1::reassign_shards_request::Target;
        let request = request.into_inner();
        if !request.accept_loss {
            return Err(Status::failed_precondition("accept_loss must be true"));
        }
        let shard_move = |shard: u32, from: &str, to: &str| ShardMove {
            shard,
            from_node: from.into(),
            to_node: to.into(),
        };
        let moves = match request.target {
            Some(Target::Shard(shard)) => vec![shard_move(shard, "node-3", "node-1")],
            Some(Target::NodeId(node)) => {
                vec![shard_move(5, &node, "node-1"), shard_move(9, &node, "node-2")]
            }
            None => return Err(Status::invalid_argument("no target")),
        };
        Ok(Response::new(atp_proto::v1::ReassignShardsResponse {
            moves,
            revision: 42,
            audit_key: format!("/atp/atp/audit/{:020} by {}", 41, request.operator),
        }))
    }

    async fn move_shard(
        &self,
        request: Request<atp_proto::v1::MoveShardRequest>,
    ) -> Reply<atp_proto::v1::MoveShardResponse> {
        let request = request.into_inner();
        if request.to_node == "node-1" {
            return Err(Status::failed_precondition("node \"node-1\" owns shard already"));
        }
        Ok(Response::new(atp_proto::v1::MoveShardResponse {
            shard: request.shard,
            from_node: "node-1".into(),
            to_node: request.to_node,
            from_epoch: 7,
            to_epoch: 42,
            records: 3,
            elapsed_ms: 120,
        }))
    }

    async fn drain_node(
        &self,
        request: Request<atp_proto::v1::DrainNodeRequest>,
    ) -> Reply<atp_proto::v1::DrainNodeResponse> {
        let request = request.into_inner();
        let moved = |shard: u32, to: &str| atp_proto::v1::MoveShardResponse {
            shard,
            from_node: request.node_id.clone(),
            to_node: to.into(),
            from_epoch: 7,
            to_epoch: 42,
            records: 1,
            elapsed_ms: 90,
        };
        Ok(Response::new(atp_proto::v1::DrainNodeResponse {
            moves: vec![moved(4, "node-1"), moved(6, "node-2")],
            failures: vec![atp_proto::v1::DrainFailure {
                shard: 5,
                message: format!("stayed busy ({} at a time)", request.max_parallel),
            }],
            elapsed_ms: 300,
        }))
    }

    async fn query_ledger(
        &self,
        request: Request<QueryLedgerRequest>,
    ) -> Reply<QueryLedgerResponse> {
        let sku = request.into_inner().sku;
        let entries = self
            .state()
            .events
            .values()
            .filter(|event| event.sku == sku)
            .enumerate()
            .map(|(index, event)| LedgerEntry {
                sequence: index as u64 + 1,
                at_ms: NOW_MS,
                sku: event.sku.clone(),
                location_id: event.location_id.clone(),
                cause_id: event.event_id.clone(),
                kind: "counted".into(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(QueryLedgerResponse { entries, epoch: 1, next_page_token: String::new() }))
    }
}
