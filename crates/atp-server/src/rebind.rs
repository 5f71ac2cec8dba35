//! Rebind (issue 12): an Allocate naming a HELD reservation moves its holds
//! to the plan's locations with one ModifyReservation keyed by the order id.
//! The change holds max(old, new) per position while in flight and settles
//! on the new lines, so once answered each unit is held once; a retry of
//! the same rebind is the same ModifyReservation key, answered as a replay.

use atp_core::CoreError;
use atp_core::ids::{ReservationId, Sku};
use atp_core::routing::{AllocateRequest, demand_of, plan};
use atp_proto::v1;
use atp_proto::v1::availability_service_server::AvailabilityService;
use atp_proto::{Reason, reason_of, status_of};
use std::collections::BTreeMap;
use tonic::{Code, Request, Status};

use crate::allocate::{
    Counters, MAX_ATTEMPTS, Own, active_channel, explained, network, no_plan, replayed_plan,
};
use crate::availability::AvailabilityApi;

impl AvailabilityApi {
    /// Plans the lines of reservation `target` and moves its holds there.
    pub(crate) async fn rebind(
        &self,
        mut request: AllocateRequest,
        target: ReservationId,
    ) -> Result<v1::AllocateResponse, Status> {
        let reservation = self.held(&target).await?;
        if reservation.channel_id != request.channel.as_str() {
            return Err(status_of(CoreError::invalid(
                "channel_id",
                format!("must be the reservation's channel {}", reservation.channel_id),
            )));
        }
        let mut own = Own::new();
        let mut lines = Vec::new();
        for line in &reservation.lines {
            *own.entry((line.sku.clone(), line.location_id.clone())).or_default() += line.quantity;
            let sku = Sku::parse("sku", &line.sku).map_err(|v| status_of(v.into()))?;
            lines.push((sku, line.quantity));
        }
        request.lines = lines;
        let catalog = self.catalog();
        let channel = active_channel(&catalog, &request.channel)?;
        let demand = demand_of(&request.lines, &BTreeMap::new());
        let skus: Vec<Sku> = demand.iter().map(|(sku, _)| sku.clone()).collect();
        let mut lost_race = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let figures = self.figures(&skus, &request.channel).await?;
            let counters = Counters::of(&catalog, channel, self.now_ms());
            let used = self.counted(&counters).await?;
            let (mut candidates, order) = network(&catalog, channel, &demand, &figures, &own);
            counters.apply(&used, &mut candidates);
            let planned = plan(&candidates, &request.destination, &order, &request.rules);
            let Some(chosen) = planned.plan.clone() else {
                return Err(no_plan(&request, &candidates, &order, &skus));
            };
            if !chosen.is_complete() {
                // A rebind moves the whole reservation or nothing.
                return Err(no_plan(
                    &AllocateRequest { rules: Default::default(), ..request.clone() },
                    &candidates,
                    &order,
                    &skus,
                ));
            }
            let mut response = explained(planned, &skus, attempt);
            if request.dry_run {
                response.dry_run = true;
                response.epoch = self.home_epoch(&request);
                return Ok(response);
            }
            let mut lines = Vec::new();
            for shipment in &chosen.shipments {
                lines.extend(counters.lines(&shipment.location, shipment.total_units()));
                for (units, sku) in shipment.units.iter().zip(&skus) {
                    if *units > 0 {
                        lines.push(v1::ReservationLine {
                            sku: sku.to_string(),
                            location_id: shipment.location.to_string(),
                            quantity: *units,
                        });
                    }
                }
            }
            let modify = v1::ModifyReservationRequest {
                reservation_id: target.to_string(),
                // Keyed by the whole rebind request: another request under
                // the same order id is another move, never taken for a retry.
                request_id: format!("rebind-{:016x}", request.fingerprint),
                lines,
            };
            match AvailabilityService::modify_reservation(self, crate::reserved::own(modify)).await
            {
                Ok(moved) => {
                    let moved = moved.into_inner();
                    response.reservation = moved.reservation;
                    response.replayed = moved.replayed;
                    response.epoch = moved.epoch;
                    return Ok(response);
                }
                Err(status) if reason_of(&status) == Some(Reason::InsufficientStock) => {
                    lost_race = Some(status);
                }
                Err(status) if status.code() == Code::AlreadyExists => {
                    // This rebind's key moved it before (the figures moved
                    // since, so the plan did too): the first move stands.
                    let current = self.held(&target).await?;
                    let plan = replayed_plan(&catalog, &request, &current);
                    return Ok(v1::AllocateResponse {
                        reservation: Some(current),
                        plan: Some(plan),
                        replayed: true,
                        attempts: attempt,
                        epoch: self.home_epoch(&request),
                        ..Default::default()
                    });
                }
                Err(status) => return Err(status),
            }
        }
        Err(lost_race.expect("every attempt lost a race"))
    }

    /// Reservation `id`, which must be HELD.
    async fn held(&self, id: &ReservationId) -> Result<v1::Reservation, Status> {
        let lookup = v1::GetReservationRequest { reservation_id: id.to_string() };
        let found = AvailabilityService::get_reservation(self, Request::new(lookup)).await?;
        let reservation = found.into_inner().reservation.unwrap_or_default();
        if reservation.state() != v1::ReservationState::Held {
            return Err(status_of(CoreError::FailedPrecondition(format!(
                "reservation {id} is {:?}; only a HELD reservation can be rebound",
                reservation.state()
            ))));
        }
        Ok(reservation)
    }
}
