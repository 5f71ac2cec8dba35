//! Late binding (issue 12): a Reserve line without a location is held at
//! one concrete location of the channel, chosen when the Reserve arrives —
//! the ACTIVE channel location with the most ATP of the SKU (ties: lower
//! priority number, then id). The request is rewritten with the chosen
//! locations and goes on as an ordinary Reserve, so every position stays
//! exact. A retry of the same late-bound request finds the reservation it
//! made (by the fingerprint kept as the label `atp.late_bound`) and gets the
//! first answer, whatever the figures say now.

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::ids::MAX_LABELS_PER_RESERVATION;
use atp_proto::v1;
use atp_proto::v1::availability_service_server::AvailabilityService;
use atp_proto::{status_from_rpc, status_of};
use tonic::{Code, Request, Status};
use xxhash_rust::xxh3::Xxh3;

use crate::availability::AvailabilityApi;

/// The label a late-bound reservation keeps its request's fingerprint under.
pub const LATE_BOUND_LABEL: &str = "atp.late_bound";

/// A late-bound Reserve, resolved.
pub(crate) enum Resolved {
    /// The same request was served before: its first answer.
    Replay(Box<v1::ReserveResponse>),
    /// The request with every line's location chosen.
    Bound(v1::ReserveRequest),
}

impl AvailabilityApi {
    /// Chooses a location for each line of `message` that names none.
    pub(crate) async fn bind_late(&self, message: v1::ReserveRequest) -> Result<Resolved, Status> {
        let labels = message.metadata.as_ref().map_or(0, |metadata| metadata.labels.len());
        if labels >= MAX_LABELS_PER_RESERVATION {
            return Err(status_of(CoreError::invalid(
                "metadata.labels",
                format!(
                    "has {labels}; a late-bound Reserve keeps one of the \
                     {MAX_LABELS_PER_RESERVATION} for itself"
                ),
            )));
        }
        let fingerprint = format!("{:016x}", fingerprint(&message));
        if let Some(first) = self.late_bound_before(&message.reservation_id, &fingerprint).await? {
            return Ok(Resolved::Replay(Box::new(first)));
        }
        let catalog = self.catalog();
        let channel = catalog.channels.iter().find(|(id, _)| id.as_str() == message.channel_id);
        let Some((_, channel)) = channel else {
            let unknown = format!("unknown channel {}", message.channel_id);
            return Err(status_of(CoreError::invalid("channel_id", unknown)));
        };
        let late: Vec<String> = message
            .lines
            .iter()
            .filter(|line| line.location_id.is_empty())
            .map(|line| line.sku.clone())
            .collect();
        let query = v1::GetAvailabilityRequest {
            skus: late.clone(),
            location_ids: Vec::new(),
            channel_ids: Vec::new(),
        };
        let figures = AvailabilityService::get_availability(self, Request::new(query))
            .await?
            .into_inner()
            .skus;
        if let Some(error) = figures.iter().find_map(|figures| figures.error.clone()) {
            return Err(status_from_rpc(error));
        }
        // ATP per (sku, location) among the channel's active locations.
        let mut atp: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for sku in &figures {
            for at in &sku.locations {
                atp.insert((sku.sku.as_str(), at.location_id.as_str()), at.atp);
            }
        }
        let mut bound = message.clone();
        for index in 0..bound.lines.len() {
            if !bound.lines[index].location_id.is_empty() {
                continue;
            }
            let sku = bound.lines[index].sku.clone();
            let taken = |location: &str| {
                bound.lines.iter().any(|line| line.sku == sku && line.location_id == location)
            };
            let best = channel
                .locations
                .iter()
                .filter_map(|id| catalog.locations.get(id).map(|location| (id, location)))
                .filter(|(id, location)| location.state.is_active() && !taken(id.as_str()))
                .map(|(id, location)| {
                    let units = atp.get(&(sku.as_str(), id.as_str())).copied().unwrap_or(0);
                    (std::cmp::Reverse(units), location.fulfilment.priority, id.clone())
                })
                .min();
            let Some((_, _, chosen)) = best else {
                return Err(status_of(CoreError::InsufficientStock {
                    sku,
                    location: format!("channel:{} (no active location left to bind)", channel.id),
                    requested: bound.lines[index].quantity,
                    available: 0,
                }));
            };
            bound.lines[index].location_id = chosen.to_string();
        }
        let metadata = bound.metadata.get_or_insert_with(Default::default);
        metadata.labels.insert(LATE_BOUND_LABEL.to_owned(), fingerprint);
        Ok(Resolved::Bound(bound))
    }

    /// The first answer to this late-bound request, if it made the reservation.
    async fn late_bound_before(
        &self,
        id: &str,
        fingerprint: &str,
    ) -> Result<Option<v1::ReserveResponse>, Status> {
        let lookup = v1::GetReservationRequest { reservation_id: id.to_owned() };
        let found = match AvailabilityService::get_reservation(self, Request::new(lookup)).await {
            Ok(found) => found.into_inner(),
            Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                return Ok(None);
            }
            Err(status) => return Err(status),
        };
        let Some(reservation) = found.reservation else { return Ok(None) };
        let same = reservation
            .metadata
            .as_ref()
            .and_then(|metadata| metadata.labels.get(LATE_BOUND_LABEL))
            .is_some_and(|label| label == fingerprint);
        if !same {
            return Ok(None);
        }
        Ok(Some(v1::ReserveResponse {
            reservation: Some(reservation.clone()),
            epoch: found.epoch,
            replayed: true,
            current: Some(reservation),
        }))
    }
}

/// A hash of the Reserve as the caller sent it.
fn fingerprint(message: &v1::ReserveRequest) -> u64 {
    let mut hash = Xxh3::new();
    let mut text = |value: &str| {
        hash.update(&(value.len() as u64).to_le_bytes());
        hash.update(value.as_bytes());
    };
    text(&message.reservation_id);
    text(&message.channel_id);
    for line in &message.lines {
        text(&line.sku);
        text(&line.location_id);
        text(&line.quantity.to_string());
    }
    text(&message.ttl_seconds.to_string());
    if let Some(metadata) = &message.metadata {
        text(&metadata.order_id);
        let labels: BTreeMap<&String, &String> = metadata.labels.iter().collect();
        for (key, value) in labels {
            text(key);
            text(value);
        }
    }
    hash.digest()
}
