//! A multi-SKU availability read and a batch of stock events in cluster
//! mode, split by owner.
//!
//! The SKUs this node serves are read here; those another node owns go to
//! it as one sub-request per owner through the [`Forwarder`] (one hop, all
//! at once, each bounded by the caller's deadline). A SKU that cannot be
//! read — its shard failing closed here, its owner unknown, unreachable or
//! not answering in time, or the request already forwarded once — gets a
//! per-SKU `error` (`FAILING_CLOSED` or `NOT_OWNER`, the status a call for
//! it alone would get) instead of failing the call. Answers come in the
//! order of the request's SKUs.
//!
//! Stock events ([`apply_split`]) likewise: after the whole batch is
//! validated here (an unknown location refuses the call, nothing applied),
//! each owner applies its SKUs' events; an event that cannot be applied
//! because its shard's owner cannot be reached is REJECTED on its own with
//! that status (`FAILING_CLOSED` or `NOT_OWNER`, retryable: the same event
//! id applies once).

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::events::StockEvent;
use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::reservation::ReserveRequest;
use atp_proto::requests::AvailabilityQuery;
use atp_proto::rpc_status;
use atp_proto::v1;
use atp_shard::Node;
use futures::future::join_all;
use tonic::{Code, Status};

use crate::availability::{batch_result, event_result, rejected_event, reserve_all};
use crate::error::node_status;
use crate::fence::{Fence, ShardRoute};
use crate::forward::{Forwarder, Incoming, Unreachable};

/// The SKUs of one request sent to one other node: their indexes in the
/// request, and each one's status if that node cannot be asked.
#[derive(Default)]
struct Part {
    indexes: Vec<usize>,
    skus: Vec<String>,
    refusals: Vec<Status>,
}

/// Answers `query` (parsed from `message`): one entry per SKU in request
/// order, each with its figures or its `error`. Fails the call only for an
/// invalid request (here or as the owner judged it) or a node not ready.
pub(crate) async fn read_split(
    node: &Node,
    fence: &Fence,
    forwarder: &Forwarder,
    incoming: &Incoming<v1::GetAvailabilityRequest>,
    message: &v1::GetAvailabilityRequest,
    query: &AvailabilityQuery,
) -> Result<Vec<v1::SkuAvailability>, Status> {
    let count = query.skus.len();
    let mut answers: Vec<Option<v1::SkuAvailability>> = vec![None; count];
    let mut local_indexes = Vec::new();
    let mut local_skus = Vec::new();
    let mut parts: BTreeMap<String, Part> = BTreeMap::new();
    for (index, sku) in query.skus.iter().enumerate() {
        let shard = shard_of(sku.as_str());
        match fence.route_shard(shard, incoming.may_forward()) {
            ShardRoute::Here => {
                local_indexes.push(index);
                local_skus.push(sku.clone());
            }
            ShardRoute::Forward(peer) => {
                let part = parts.entry(peer.address).or_default();
                part.indexes.push(index);
                part.skus.push(sku.to_string());
                part.refusals.push(peer.refusal);
            }
            ShardRoute::Refused(status) => {
                answers[index] = Some(unread(sku.to_string(), shard, &status));
            }
        }
    }
    let sends = parts.into_iter().map(|(address, part)| {
        let request = v1::GetAvailabilityRequest {
            skus: part.skus.clone(),
            location_ids: message.location_ids.clone(),
            channel_ids: message.channel_ids.clone(),
        };
        let sub_request = incoming.part(request);
        async move {
            let answer = forwarder
                .send(&address, sub_request, |mut client, request| async move {
                    client.get_availability(request).await
                })
                .await;
            (part, answer)
        }
    });
    let remote = join_all(sends);
    if !local_skus.is_empty() {
        let read = node
            .availability(&local_skus, &query.locations, &query.channels)
            .map_err(node_status)?;
        for (index, availability) in local_indexes.into_iter().zip(read) {
            let mut answer: v1::SkuAvailability = availability.into();
            // The epoch this node serves the SKU's shard under (the owner's
            // answers carry theirs).
            answer.epoch = fence.epoch(answer.shard);
            answers[index] = Some(answer);
        }
    }
    for (part, answer) in remote.await {
        match answer {
            Ok(Ok(response)) if response.get_ref().skus.len() == part.skus.len() => {
                for (index, sku) in part.indexes.into_iter().zip(response.into_inner().skus) {
                    answers[index] = Some(sku);
                }
            }
            // The owner judged the request invalid: so is the whole call.
            Ok(Err(status)) if status.code() == Code::InvalidArgument => return Err(status),
            Ok(Err(status)) => {
                for (index, sku) in part.indexes.into_iter().zip(part.skus) {
                    answers[index] = Some(unread(sku.clone(), shard_of(&sku), &status));
                }
            }
            // Unreachable, or a reply not one entry per SKU asked.
            Ok(Ok(_)) | Err(Unreachable) => {
                let unread_parts = part.indexes.into_iter().zip(part.skus).zip(part.refusals);
                for ((index, sku), refusal) in unread_parts {
                    answers[index] = Some(unread(sku.clone(), shard_of(&sku), &refusal));
                }
            }
        }
    }
    Ok(answers.into_iter().map(|answer| answer.expect("every sku gets an answer")).collect())
}

/// A SKU that could not be read: no figures, its status as `error`.
fn unread(sku: String, shard: u32, status: &Status) -> v1::SkuAvailability {
    v1::SkuAvailability {
        sku,
        shard,
        epoch: 0,
        locations: Vec::new(),
        channels: Vec::new(),
        error: Some(rpc_status(status)),
    }
}

/// Applies `events` (parsed from `message`): the ones whose shard is served
/// here on this node, the others at their owners, one sub-request per
/// owner. One result per event, in request order.
pub(crate) async fn apply_split(
    node: &Node,
    fence: &Fence,
    forwarder: &Forwarder,
    incoming: &Incoming<v1::ApplyStockEventsRequest>,
    message: &v1::ApplyStockEventsRequest,
    events: Vec<StockEvent>,
) -> Result<Vec<v1::StockEventResult>, Status> {
    node.check_events(&events).map_err(node_status)?;
    let count = events.len();
    let mut results: Vec<Option<v1::StockEventResult>> = vec![None; count];
    let mut local: Vec<(usize, StockEvent)> = Vec::new();
    let mut parts: BTreeMap<String, Vec<(usize, v1::StockEvent, Status)>> = BTreeMap::new();
    for (index, event) in events.into_iter().enumerate() {
        let shard = shard_of(event.sku.as_str());
        match fence.route_shard(shard, incoming.may_forward()) {
            ShardRoute::Here => local.push((index, event)),
            ShardRoute::Forward(peer) => parts.entry(peer.address).or_default().push((
                index,
                message.events[index].clone(),
                peer.refusal,
            )),
            ShardRoute::Refused(status) => {
                results[index] = Some(rejected_event(event.id.to_string(), &status, 0));
            }
        }
    }
    let sends = parts.into_iter().map(|(address, part)| {
        let request = v1::ApplyStockEventsRequest {
            events: part.iter().map(|(_, event, _)| event.clone()).collect(),
        };
        let sub_request = incoming.part(request);
        async move {
            let answer = forwarder
                .send(&address, sub_request, |mut client, request| async move {
                    client.apply_stock_events(request).await
                })
                .await;
            (part, answer)
        }
    });
    let remote = join_all(sends);
    if !local.is_empty() {
        let (indexes, events): (Vec<usize>, Vec<StockEvent>) = local.into_iter().unzip();
        let ids: Vec<(String, u64)> = events
            .iter()
            .map(|event| (event.id.to_string(), fence.epoch(shard_of(event.sku.as_str()))))
            .collect();
        let outcomes = node.apply_events(events).await.map_err(node_status)?;
        for ((index, (id, epoch)), outcome) in indexes.into_iter().zip(ids).zip(outcomes) {
            results[index] = Some(event_result(id, outcome, epoch));
        }
    }
    for (part, answer) in remote.await {
        match answer {
            Ok(Ok(response)) if response.get_ref().results.len() == part.len() => {
                for ((index, _, _), result) in part.into_iter().zip(response.into_inner().results) {
                    results[index] = Some(result);
                }
            }
            // The owner's refusal of its whole part (one status for each).
            Ok(Err(status)) => {
                for (index, event, _) in part {
                    results[index] = Some(rejected_event(event.event_id, &status, 0));
                }
            }
            // Unreachable, or a reply not one result per event sent.
            Ok(Ok(_)) | Err(Unreachable) => {
                for (index, event, refusal) in part {
                    results[index] = Some(rejected_event(event.event_id, &refusal, 0));
                }
            }
        }
    }
    Ok(results.into_iter().map(|result| result.expect("every event gets a result")).collect())
}

/// Reserves the parsed `items` of a ReserveBatch (from `message`): those
/// whose home this node serves here, the others at their homes' owners,
/// one sub-request per owner. An item whose owner cannot be reached gets
/// its own error (`NOT_OWNER` or `FAILING_CLOSED`); so does an item whose
/// home's owner refused its whole part. One result per item, in order.
pub(crate) async fn reserve_split(
    node: &Node,
    fence: &Fence,
    forwarder: &Forwarder,
    incoming: &Incoming<v1::ReserveBatchRequest>,
    message: &v1::ReserveBatchRequest,
    items: Vec<Result<ReserveRequest, CoreError>>,
) -> Result<Vec<v1::ReserveBatchResult>, Status> {
    let count = items.len();
    let mut results: Vec<Option<v1::ReserveBatchResult>> = vec![None; count];
    let mut local = Vec::new();
    let mut parts: BTreeMap<String, Vec<(usize, v1::ReserveRequest, Status)>> = BTreeMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let Ok(request) = &item else {
            local.push((index, item));
            continue;
        };
        match fence.route_shard(shard_of(request.id.as_str()), incoming.may_forward()) {
            ShardRoute::Here => local.push((index, item)),
            ShardRoute::Forward(peer) => parts.entry(peer.address).or_default().push((
                index,
                message.reservations[index].clone(),
                peer.refusal,
            )),
            ShardRoute::Refused(status) => results[index] = Some(batch_result(Err(status))),
        }
    }
    let sends = parts.into_iter().map(|(address, part)| {
        let request = v1::ReserveBatchRequest {
            reservations: part.iter().map(|(_, request, _)| request.clone()).collect(),
        };
        let sub_request = incoming.part(request);
        async move {
            let answer = forwarder
                .send(&address, sub_request, |mut client, request| async move {
                    client.reserve_batch(request).await
                })
                .await;
            (part, answer)
        }
    });
    let remote = join_all(sends);
    if !local.is_empty() {
        let epoch_of = |id: &ReservationId| fence.epoch(shard_of(id.as_str()));
        for (index, result) in reserve_all(node, local, epoch_of).await? {
            results[index] = Some(result);
        }
    }
    for (part, answer) in remote.await {
        match answer {
            Ok(Ok(response)) if response.get_ref().results.len() == part.len() => {
                for ((index, _, _), result) in part.into_iter().zip(response.into_inner().results) {
                    results[index] = Some(result);
                }
            }
            Ok(Err(status)) => {
                for (index, _, _) in part {
                    results[index] = Some(batch_result(Err(status.clone())));
                }
            }
            Ok(Ok(_)) | Err(Unreachable) => {
                for (index, _, refusal) in part {
                    results[index] = Some(batch_result(Err(refusal)));
                }
            }
        }
    }
    Ok(results.into_iter().map(|result| result.expect("every item gets a result")).collect())
}

/// Reads `ids` (GetReservations): those homed on shards served here, the
/// others at their homes' owners, one sub-request per owner. An id whose
/// owner cannot be reached gets its own error. One result per id, in
/// order; the reply's epoch is the first id's home's, as answered.
pub(crate) async fn read_reservations_split(
    node: &Node,
    fence: &Fence,
    forwarder: &Forwarder,
    incoming: &Incoming<v1::GetReservationsRequest>,
    ids: Vec<ReservationId>,
) -> Result<(Vec<v1::GetReservationResult>, u64), Status> {
    let count = ids.len();
    let mut results: Vec<Option<v1::GetReservationResult>> = vec![None; count];
    let mut epochs: Vec<u64> = vec![0; count];
    let mut local: Vec<(usize, ReservationId)> = Vec::new();
    let mut parts: BTreeMap<String, Vec<(usize, String, Status)>> = BTreeMap::new();
    let failed = |status: &Status| v1::GetReservationResult {
        outcome: Some(v1::get_reservation_result::Outcome::Error(rpc_status(status))),
    };
    for (index, id) in ids.into_iter().enumerate() {
        let home = shard_of(id.as_str());
        match fence.route_shard(home, incoming.may_forward()) {
            ShardRoute::Here => {
                epochs[index] = fence.epoch(home);
                local.push((index, id));
            }
            ShardRoute::Forward(peer) => {
                parts.entry(peer.address).or_default().push((index, id.to_string(), peer.refusal))
            }
            ShardRoute::Refused(status) => results[index] = Some(failed(&status)),
        }
    }
    let sends = parts.into_iter().map(|(address, part)| {
        let request = v1::GetReservationsRequest {
            reservation_ids: part.iter().map(|(_, id, _)| id.clone()).collect(),
        };
        let sub_request = incoming.part(request);
        async move {
            let answer = forwarder
                .send(&address, sub_request, |mut client, request| async move {
                    client.get_reservations(request).await
                })
                .await;
            (part, answer)
        }
    });
    let remote = join_all(sends);
    if !local.is_empty() {
        let (indexes, ids): (Vec<usize>, Vec<ReservationId>) = local.into_iter().unzip();
        let answers = node.get_reservations(ids).await.map_err(node_status)?;
        for (index, answer) in indexes.into_iter().zip(answers) {
            let outcome = match answer {
                Ok(view) => v1::get_reservation_result::Outcome::Reservation(view.into()),
                Err(error) => {
                    v1::get_reservation_result::Outcome::Error(rpc_status(&node_status(error)))
                }
            };
            results[index] = Some(v1::GetReservationResult { outcome: Some(outcome) });
        }
    }
    for (part, answer) in remote.await {
        match answer {
            Ok(Ok(response)) if response.get_ref().results.len() == part.len() => {
                let response = response.into_inner();
                for ((index, _, _), result) in part.into_iter().zip(response.results) {
                    epochs[index] = response.epoch;
                    results[index] = Some(result);
                }
            }
            Ok(Err(status)) => {
                for (index, _, _) in part {
                    results[index] = Some(failed(&status));
                }
            }
            Ok(Ok(_)) | Err(Unreachable) => {
                for (index, _, refusal) in part {
                    results[index] = Some(failed(&refusal));
                }
            }
        }
    }
    let epoch = epochs.first().copied().unwrap_or_default();
    let results =
        results.into_iter().map(|result| result.expect("every id gets a result")).collect();
    Ok((results, epoch))
}
