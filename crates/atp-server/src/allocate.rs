//! Allocate: plans an order over its channel's locations (the pure planner
//! in [`atp_core::routing`]) and holds the plan as an ordinary reservation
//! under the order id, through the same Reserve path (and forwarding) as any
//! client's Reserve. A hold that loses a race for stock re-plans on fresh
//! figures, at most [`MAX_ATTEMPTS`] times.

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::capacity::{Counter, counter_sku, local_day};
use atp_core::catalog::{Catalog, Channel};
use atp_core::hash::shard_of;
use atp_core::ids::{
    ChannelId, LocationId, MAX_LINE_QUANTITY, MAX_LINES_PER_RESERVATION, MAX_SKUS_PER_QUERY, Sku,
};
use atp_core::routing::{
    ALLOCATE_LABEL, AllocateRequest, Candidate, FillRule, GeoPoint, Order, Plan, Planned, Rules,
    demand_of, haversine_km, plan,
};
use atp_proto::requests::{exclusion_name, routing_plan};
use atp_proto::v1;
use atp_proto::v1::availability_service_server::AvailabilityService;
use atp_proto::{Reason, reason_of, status_from_rpc, status_of};
use tonic::{Code, Request, Status};

use crate::availability::AvailabilityApi;

/// Plans made for one Allocate at most (the first and two re-plans after
/// lost races).
pub const MAX_ATTEMPTS: u32 = 3;

impl AvailabilityApi {
    /// Plans `request` and, unless it is a dry run, holds the plan.
    pub(crate) async fn allocate_order(
        &self,
        request: AllocateRequest,
    ) -> Result<v1::AllocateResponse, Status> {
        if let Some(target) = request.rebind.clone() {
            return self.rebind(request, target).await;
        }
        // A retry is recognised where it differs from a first call: its
        // Reserve finds the order id taken (ALREADY_EXISTS), or, when the
        // state moved since, it cannot plan or hold at all. Only then is
        // the order id read, so a first call pays no extra round trip.
        match self.plan_and_hold(&request).await {
            Err(status) if !request.dry_run => match self.replay(&request).await {
                Ok(Some(answer)) => Ok(answer),
                // The order id was taken by another request: say so; or
                // the first call is still in flight: the caller retries.
                Err(reread) if matches!(reread.code(), Code::AlreadyExists | Code::Unavailable) => {
                    Err(reread)
                }
                Ok(None) | Err(_) => Err(status),
            },
            answer => answer,
        }
    }

    async fn plan_and_hold(
        &self,
        request: &AllocateRequest,
    ) -> Result<v1::AllocateResponse, Status> {
        let catalog = self.catalog();
        let channel = active_channel(&catalog, &request.channel)?;
        let demand = demand_of(&request.lines, &kit_components(&catalog));
        let units = demand.iter().fold(0i64, |sum, (_, units)| sum.saturating_add(*units));
        if units > MAX_LINE_QUANTITY || demand.len() > MAX_LINES_PER_RESERVATION {
            return Err(status_of(CoreError::invalid(
                "lines",
                format!(
                    "need {units} units of {} skus (kits expanded); an order may need at most \
                     {MAX_LINE_QUANTITY} units of at most {MAX_LINES_PER_RESERVATION} skus",
                    demand.len()
                ),
            )));
        }
        let skus: Vec<Sku> = demand.iter().map(|(sku, _)| sku.clone()).collect();
        let mut lost_race = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let figures = self.figures(&skus, &request.channel).await?;
            let counters = Counters::of(&catalog, channel, self.now_ms());
            let used = self.counted(&counters).await?;
            let own = BTreeMap::new();
            let (mut candidates, order) = network(&catalog, channel, &demand, &figures, &own);
            counters.apply(&used, &mut candidates);
            let planned = plan(&candidates, &request.destination, &order, &request.rules);
            let Some(chosen) = planned.plan.clone() else {
                return Err(no_plan(request, &candidates, &order, &skus));
            };
            let mut response = explained(planned, &skus, attempt);
            if request.dry_run {
                response.dry_run = true;
                response.epoch = self.home_epoch(request);
                return Ok(response);
            }
            match self.hold(request, &chosen, &skus, &counters).await {
                Ok(reserved) => {
                    response.reservation = reserved.reservation;
                    response.replayed = reserved.replayed;
                    response.epoch = reserved.epoch;
                    return Ok(response);
                }
                Err(status) if reason_of(&status) == Some(Reason::InsufficientStock) => {
                    lost_race = Some(status);
                }
                // ALREADY_EXISTS included: the caller looks for a replay.
                Err(status) => return Err(status),
            }
        }
        Err(lost_race.expect("every attempt lost a race"))
    }

    /// The answer to a retry: the order's reservation when this same request
    /// made it; ALREADY_EXISTS when another request (or a Reserve) did.
    async fn replay(
        &self,
        request: &AllocateRequest,
    ) -> Result<Option<v1::AllocateResponse>, Status> {
        let lookup = v1::GetReservationRequest { reservation_id: request.order_id.to_string() };
        let found = match AvailabilityService::get_reservation(self, Request::new(lookup)).await {
            Ok(found) => found.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(status),
        };
        let Some(reservation) = found.reservation else { return Ok(None) };
        let label =
            reservation.metadata.as_ref().and_then(|metadata| metadata.labels.get(ALLOCATE_LABEL));
        if label != Some(&format!("{:016x}", request.fingerprint)) {
            return Err(status_of(CoreError::AlreadyExists(format!(
                "order {} is already a reservation made by another request",
                request.order_id
            ))));
        }
        let plan = replayed_plan(&self.catalog(), request, &reservation);
        Ok(Some(v1::AllocateResponse {
            reservation: Some(reservation),
            plan: Some(plan),
            replayed: true,
            epoch: found.epoch,
            ..Default::default()
        }))
    }

    /// Every SKU's figures at the channel's locations, read through the
    /// service (so across the cluster); a SKU that cannot be read fails the call.
    pub(crate) async fn figures(
        &self,
        skus: &[Sku],
        channel: &ChannelId,
    ) -> Result<Vec<v1::SkuAvailability>, Status> {
        let query = v1::GetAvailabilityRequest {
            skus: skus.iter().map(ToString::to_string).collect(),
            location_ids: Vec::new(),
            channel_ids: vec![channel.to_string()],
        };
        let answer = AvailabilityService::get_availability(self, Request::new(query)).await?;
        let figures = answer.into_inner().skus;
        if let Some(error) = figures.iter().find_map(|figures| figures.error.clone()) {
            return Err(status_from_rpc(error));
        }
        Ok(figures)
    }

    /// Reserves the plan's lines under the order id.
    async fn hold(
        &self,
        request: &AllocateRequest,
        chosen: &Plan,
        skus: &[Sku],
        counters: &Counters,
    ) -> Result<v1::ReserveResponse, Status> {
        let mut lines = Vec::new();
        for shipment in &chosen.shipments {
            lines.extend(counters.lines(&shipment.location, shipment.total_units()));
            for (units, sku) in shipment.units.iter().zip(skus) {
                if *units > 0 {
                    lines.push(v1::ReservationLine {
                        sku: sku.to_string(),
                        location_id: shipment.location.to_string(),
                        quantity: *units,
                    });
                }
            }
        }
        let reserve = v1::ReserveRequest {
            reservation_id: request.order_id.to_string(),
            channel_id: request.channel.to_string(),
            lines,
            ttl_seconds: u32::try_from(request.ttl_ms / 1000).unwrap_or(u32::MAX),
            metadata: Some(v1::ReservationMetadata {
                order_id: request.metadata.order_id.clone(),
                labels: request.metadata.labels.clone().into_iter().collect(),
            }),
        };
        Ok(AvailabilityService::reserve(self, crate::reserved::own(reserve)).await?.into_inner())
    }

    /// Units held and committed on each counter (absent: none yet).
    pub(crate) async fn counted(&self, counters: &Counters) -> Result<BTreeMap<Sku, i64>, Status> {
        let mut used = BTreeMap::new();
        let skus: Vec<Sku> = counters.skus().cloned().collect();
        for chunk in skus.chunks(MAX_SKUS_PER_QUERY) {
            let query = v1::GetAvailabilityRequest {
                skus: chunk.iter().map(ToString::to_string).collect(),
                location_ids: Vec::new(),
                channel_ids: Vec::new(),
            };
            let answer = AvailabilityService::get_availability(self, Request::new(query)).await?;
            for figures in answer.into_inner().skus {
                if let Some(error) = figures.error {
                    return Err(status_from_rpc(error));
                }
                let counted: i64 =
                    figures.locations.iter().map(|at| at.reserved + at.committed).sum();
                if let Some(sku) = chunk.iter().find(|sku| sku.as_str() == figures.sku) {
                    used.insert(sku.clone(), counted);
                }
            }
        }
        Ok(used)
    }

    pub(crate) fn home_epoch(&self, request: &AllocateRequest) -> u64 {
        self.fence_epoch(shard_of(request.order_id.as_str()))
    }
}

/// The daily capacity counters of a channel's locations that have a limit,
/// on each location's local day now.
pub(crate) struct Counters {
    /// location → (limit, counter) for shipments and for units.
    limits: BTreeMap<LocationId, [Option<(i64, Sku)>; 2]>,
}

impl Counters {
    pub(crate) fn of(catalog: &Catalog, channel: &Channel, now_ms: i64) -> Self {
        let mut limits = BTreeMap::new();
        for id in &channel.locations {
            let Some(location) = catalog.locations.get(id) else { continue };
            let day = local_day(&location.fulfilment.time_zone, now_ms);
            // An id too long for a counter is refused by configuration.
            let counter = |kind, limit: i64| {
                (limit > 0).then(|| counter_sku(kind, id, &day).map(|sku| (limit, sku))).flatten()
            };
            let pair = [
                counter(Counter::Orders, location.daily_capacity),
                counter(Counter::Units, location.fulfilment.daily_units),
            ];
            if pair.iter().any(Option::is_some) {
                limits.insert(id.clone(), pair);
            }
        }
        Self { limits }
    }

    fn skus(&self) -> impl Iterator<Item = &Sku> {
        self.limits.values().flatten().flatten().map(|(_, sku)| sku)
    }

    /// Each candidate's capacity left today.
    pub(crate) fn apply(&self, used: &BTreeMap<Sku, i64>, candidates: &mut [Candidate]) {
        for candidate in candidates {
            let Some([orders, units]) = self.limits.get(&candidate.location) else { continue };
            let left = |counter: &Option<(i64, Sku)>| {
                counter.as_ref().map(|(limit, sku)| limit - used.get(sku).copied().unwrap_or(0))
            };
            candidate.orders_left = left(orders);
            candidate.units_left = left(units);
        }
    }

    /// The counter lines a shipment of `units` from `location` holds.
    pub(crate) fn lines(&self, location: &LocationId, units: i64) -> Vec<v1::ReservationLine> {
        let Some([orders, unit_counter]) = self.limits.get(location) else { return Vec::new() };
        let line = |sku: &Sku, quantity| v1::ReservationLine {
            sku: sku.to_string(),
            location_id: location.to_string(),
            quantity,
        };
        let mut lines = Vec::new();
        if let Some((_, sku)) = orders {
            lines.push(line(sku, 1));
        }
        if let Some((_, sku)) = unit_counter {
            lines.push(line(sku, units));
        }
        lines
    }
}

/// Every kit's components, for [`demand_of`].
pub(crate) fn kit_components(catalog: &Catalog) -> BTreeMap<Sku, Vec<(Sku, i64)>> {
    catalog.kits.iter().map(|(sku, kit)| (sku.clone(), kit.components.clone())).collect()
}

/// The channel, if it exists and takes holds.
pub(crate) fn active_channel<'a>(
    catalog: &'a Catalog,
    id: &ChannelId,
) -> Result<&'a Channel, Status> {
    let Some(channel) = catalog.channels.get(id) else {
        return Err(status_of(CoreError::invalid("channel_id", format!("unknown channel {id}"))));
    };
    if !channel.state.is_active() {
        return Err(status_of(CoreError::NotActive {
            kind: "channel",
            id: id.to_string(),
            state: channel.state,
            operation: "take holds",
        }));
    }
    Ok(channel)
}

/// Units a reservation being rebound holds, by (sku, location).
pub(crate) type Own = BTreeMap<(String, String), i64>;

/// The channel's locations as candidates with each item's ATP, and the
/// order with each item's channel limit; units in `own` (a rebound
/// reservation's) count as available to it.
pub(crate) fn network(
    catalog: &Catalog,
    channel: &Channel,
    demand: &[(Sku, i64)],
    figures: &[v1::SkuAvailability],
    own: &Own,
) -> (Vec<Candidate>, Order) {
    let owned = |sku: &Sku, location: &str| {
        own.get(&(sku.to_string(), location.to_owned())).copied().unwrap_or(0)
    };
    let of_sku = |sku: &Sku| figures.iter().find(|figures| figures.sku == sku.as_str());
    let limit = demand
        .iter()
        .map(|(sku, _)| {
            of_sku(sku)
                .and_then(|figures| {
                    figures.channels.iter().find(|shown| shown.channel_id == channel.id.as_str())
                })
                .map_or(0, |shown| shown.atp)
                + own
                    .iter()
                    .filter(|((s, _), _)| s == sku.as_str())
                    .map(|(_, units)| units)
                    .sum::<i64>()
        })
        .collect();
    let order = Order { demand: demand.iter().map(|(_, units)| *units).collect(), limit };
    let mut candidates = Vec::with_capacity(channel.locations.len());
    for id in &channel.locations {
        let Some(location) = catalog.locations.get(id) else { continue };
        let atp = demand
            .iter()
            .map(|(sku, _)| {
                of_sku(sku)
                    .and_then(|figures| {
                        figures.locations.iter().find(|at| at.location_id == id.as_str())
                    })
                    .map_or(0, |at| at.atp)
                    + owned(sku, id.as_str())
            })
            .collect();
        candidates.push(Candidate {
            location: id.clone(),
            point: GeoPoint { latitude: location.latitude, longitude: location.longitude },
            active: location.state.is_active(),
            ships_to: location.fulfilment.ships_to.clone(),
            cost: location.fulfilment.cost,
            priority: location.fulfilment.priority,
            // Set from the counters (`Counters::apply`) when limited.
            orders_left: None,
            units_left: None,
            atp,
        });
    }
    (candidates, order)
}

/// The answer's plan, alternatives and explanation.
pub(crate) fn explained(planned: Planned, skus: &[Sku], attempts: u32) -> v1::AllocateResponse {
    v1::AllocateResponse {
        plan: planned.plan.as_ref().map(|chosen| routing_plan(chosen, skus)),
        alternatives: planned.alternatives.iter().map(|other| routing_plan(other, skus)).collect(),
        excluded: planned
            .excluded
            .iter()
            .map(|(location, why)| v1::ExcludedLocation {
                location_id: location.to_string(),
                reason: exclusion_name(*why).to_owned(),
            })
            .collect(),
        work: planned.work,
        exact: planned.exact,
        attempts,
        ..Default::default()
    }
}

/// Why no plan exists: the first SKU the best partial plan leaves short
/// (INSUFFICIENT_STOCK), or the work budget when even a partial plan was
/// not found.
pub(crate) fn no_plan(
    request: &AllocateRequest,
    candidates: &[Candidate],
    order: &Order,
    skus: &[Sku],
) -> Status {
    let partial = Rules { fill: FillRule::Partial, ..request.rules };
    let planned = plan(candidates, &request.destination, order, &partial);
    let best = planned.plan;
    // Past the exact size the budget may run out before a complete plan is
    // found: when the candidates hold enough of every item, say so rather
    // than blame the stock.
    let enough = (0..skus.len()).all(|item| {
        let eligible = candidates.iter().filter(|candidate| {
            !planned.excluded.iter().any(|(location, _)| *location == candidate.location)
        });
        let held = eligible.fold(0i64, |sum, candidate| {
            sum.saturating_add(candidate.atp.get(item).copied().unwrap_or(0).max(0))
        });
        held >= order.demand[item].min(order.limit.get(item).copied().unwrap_or(i64::MAX))
    });
    let filled = |item: usize| -> i64 {
        best.as_ref().map_or(0, |best| best.shipments.iter().map(|s| s.units[item]).sum())
    };
    let short = (0..skus.len()).find(|item| filled(*item) < order.demand[*item]);
    let short = short.filter(|_| planned.exact || !enough);
    let full: Vec<&str> = candidates
        .iter()
        .filter(|candidate| {
            let used_up = |left: Option<i64>| left.is_some_and(|left| left <= 0);
            used_up(candidate.orders_left) || used_up(candidate.units_left)
        })
        .map(|candidate| candidate.location.as_str())
        .collect();
    let full = if full.is_empty() {
        String::new()
    } else {
        format!("; no capacity left today at {}", full.join(", "))
    };
    match short {
        Some(item) => status_of(CoreError::InsufficientStock {
            sku: skus[item].to_string(),
            location: format!(
                "channel:{} within {} shipment(s){full}",
                request.channel, request.rules.max_shipments
            ),
            requested: order.demand[item],
            available: filled(item),
        }),
        None => status_of(CoreError::FailedPrecondition(format!(
            "no complete plan found within the work budget of {} plans (the candidates hold \
             enough of every item); raise work_budget or max_shipments",
            request.rules.work_budget
        ))),
    }
}

/// A replayed order's plan: its reservation's lines grouped by location,
/// with today's distances and costs.
pub(crate) fn replayed_plan(
    catalog: &Catalog,
    request: &AllocateRequest,
    reservation: &v1::Reservation,
) -> v1::RoutingPlan {
    let mut shipments: Vec<v1::PlannedShipment> = Vec::new();
    for line in &reservation.lines {
        let at = match shipments.iter().position(|s| s.location_id == line.location_id) {
            Some(at) => at,
            None => {
                shipments.push(v1::PlannedShipment {
                    location_id: line.location_id.clone(),
                    ..Default::default()
                });
                shipments.len() - 1
            }
        };
        shipments[at].lines.push(v1::OrderLine { sku: line.sku.clone(), quantity: line.quantity });
        shipments[at].units += line.quantity;
    }
    for shipment in &mut shipments {
        let location = catalog
            .locations
            .iter()
            .find(|(id, _)| id.as_str() == shipment.location_id)
            .map(|(_, location)| location);
        if let Some(location) = location {
            let point = GeoPoint { latitude: location.latitude, longitude: location.longitude };
            shipment.distance_km = haversine_km(point, request.destination.point);
            shipment.cost = location.fulfilment.cost.shipment(shipment.distance_km, shipment.units);
        }
    }
    let extra = i64::try_from(shipments.len().saturating_sub(1)).unwrap_or(i64::MAX);
    v1::RoutingPlan {
        cost: shipments.iter().map(|s| s.cost).sum::<i64>() + request.rules.split_penalty * extra,
        units: shipments.iter().map(|s| s.units).sum(),
        max_distance_km: shipments.iter().map(|s| s.distance_km).fold(0.0, f64::max),
        total_distance_km: shipments.iter().map(|s| s.distance_km).sum(),
        shipments,
        backordered: Vec::new(),
    }
}
