//! Requests of many items in cluster mode, split by owner: a multi-SKU
//! availability read, a batch of stock events, ReserveBatch and
//! GetReservations. One router ([`route`]) and one sender ([`ask_owners`])
//! serve all four.
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
//! id applies once). ReserveBatch and GetReservations go by each item's
//! home shard the same way.

use std::collections::BTreeMap;
use std::future::Future;

use atp_core::CoreError;
use atp_core::events::StockEvent;
use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::reservation::ReserveRequest;
use atp_proto::requests::AvailabilityQuery;
use atp_proto::rpc_status;
use atp_proto::v1;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_shard::Node;
use futures::future::join_all;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::availability::{batch_result, event_result, rejected_event, reserve_all};
use crate::error::node_status;
use crate::fence::{Fence, ShardRoute, Touched};
use crate::forward::{Forwarder, Incoming, Unreachable};

/// One item sent to another node: its index in the request, its message,
/// and the status it gets if that node cannot be asked.
type Sent<W> = (usize, W, Status);

/// A request's items by where they are served.
struct Routed<T, W> {
    /// Served here: (index, item).
    here: Vec<(usize, T)>,
    /// For other nodes, by address.
    elsewhere: BTreeMap<String, Vec<Sent<W>>>,
    /// Served nowhere now: (index, status).
    refused: Vec<(usize, Status)>,
}

/// Routes each item (its index in the request, its shard, what is served
/// here, what is sent) by its shard: here, to its owner (when `may_forward`
/// and the owner's address is known), or refused with its shard's status.
fn route<T, W>(
    fence: &Fence,
    may_forward: bool,
    items: impl IntoIterator<Item = (usize, u32, T, W)>,
) -> Routed<T, W> {
    let mut routed = Routed { here: Vec::new(), elsewhere: BTreeMap::new(), refused: Vec::new() };
    for (index, shard, here, sent) in items {
        match fence.route_shard(shard, may_forward) {
            ShardRoute::Here => routed.here.push((index, here)),
            ShardRoute::Forward(peer) => {
                routed.elsewhere.entry(peer.address).or_default().push((index, sent, peer.refusal))
            }
            ShardRoute::Refused(status) => routed.refused.push((index, status)),
        }
    }
    routed
}

/// What another node answered for its part of a request.
enum PartAnswer<A> {
    /// One answer per item sent, in order.
    Answered(Vec<A>),
    /// Its refusal of the whole part.
    Refused(Status),
    /// Not reached, no answer within the deadline, or a reply that is not
    /// one answer per item.
    Unreachable,
}

/// Sends each node its part as one sub-request of `incoming` (its message
/// built by `request`, sent by `call`, its answers read by `answers`), all
/// at once, one hop, within the caller's deadline.
async fn ask_owners<In, Req, Resp, W, A, Call, Fut>(
    forwarder: &Forwarder,
    incoming: &Incoming<In>,
    parts: BTreeMap<String, Vec<Sent<W>>>,
    request: impl Fn(Vec<W>) -> Req,
    call: Call,
    answers: impl Fn(Resp) -> Vec<A>,
) -> Vec<(Vec<Sent<W>>, PartAnswer<A>)>
where
    W: Clone,
    Call: Fn(AvailabilityServiceClient<Channel>, Request<Req>) -> Fut + Copy,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let answers = &answers;
    let sends = parts.into_iter().map(|(address, part)| {
        let message = request(part.iter().map(|(_, item, _)| item.clone()).collect());
        let sub_request = incoming.part(message);
        async move {
            let answer = match forwarder.send(&address, sub_request, call).await {
                Ok(Ok(response)) => {
                    let answers = answers(response.into_inner());
                    if answers.len() == part.len() {
                        PartAnswer::Answered(answers)
                    } else {
                        PartAnswer::Unreachable
                    }
                }
                Ok(Err(status)) => PartAnswer::Refused(status),
                Err(Unreachable) => PartAnswer::Unreachable,
            };
            (part, answer)
        }
    });
    join_all(sends).await
}

/// Puts each item's result into `results`: the owner's answer, or for a
/// refused part the owner's status (`refused`), or for an unreachable one
/// the item's own refusal (`unreachable`).
fn place<W, A>(
    results: &mut [Option<A>],
    answered: Vec<(Vec<Sent<W>>, PartAnswer<A>)>,
    refused: impl Fn(&W, &Status) -> A,
) {
    for (part, answer) in answered {
        match answer {
            PartAnswer::Answered(answers) => {
                for ((index, _, _), answer) in part.into_iter().zip(answers) {
                    results[index] = Some(answer);
                }
            }
            PartAnswer::Refused(status) => {
                for (index, item, _) in part {
                    results[index] = Some(refused(&item, &status));
                }
            }
            PartAnswer::Unreachable => {
                for (index, item, refusal) in part {
                    results[index] = Some(refused(&item, &refusal));
                }
            }
        }
    }
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
    let mut answers: Vec<Option<v1::SkuAvailability>> = vec![None; query.skus.len()];
    let items = query
        .skus
        .iter()
        .enumerate()
        .map(|(index, sku)| (index, shard_of(sku.as_str()), sku.clone(), sku.to_string()));
    let routed = route(fence, incoming.may_forward(), items);
    for (index, status) in routed.refused {
        answers[index] = Some(unread(query.skus[index].to_string(), &status));
    }
    let remote = ask_owners(
        forwarder,
        incoming,
        routed.elsewhere,
        |skus| v1::GetAvailabilityRequest {
            skus,
            location_ids: message.location_ids.clone(),
            channel_ids: message.channel_ids.clone(),
        },
        |mut client, request| async move { client.get_availability(request).await },
        |response| response.skus,
    );
    if !routed.here.is_empty() {
        let (indexes, skus): (Vec<usize>, Vec<_>) = routed.here.into_iter().unzip();
        let read =
            node.availability(&skus, &query.locations, &query.channels).map_err(node_status)?;
        for (index, availability) in indexes.into_iter().zip(read) {
            let mut answer: v1::SkuAvailability = availability.into();
            // The epoch this node serves the SKU's shard under (the owner's
            // answers carry theirs).
            answer.epoch = fence.epoch(answer.shard);
            answers[index] = Some(answer);
        }
    }
    let remote = remote.await;
    // An owner that judged the request invalid: so is the whole call.
    if let Some(status) = remote.iter().find_map(|(_, answer)| match answer {
        PartAnswer::Refused(status) if status.code() == Code::InvalidArgument => Some(status),
        _ => None,
    }) {
        return Err(status.clone());
    }
    place(&mut answers, remote, |sku, status| unread(sku.clone(), status));
    Ok(answers.into_iter().map(|answer| answer.expect("every sku gets an answer")).collect())
}

/// A SKU that could not be read: no figures, its status as `error`.
fn unread(sku: String, status: &Status) -> v1::SkuAvailability {
    v1::SkuAvailability {
        shard: shard_of(&sku),
        sku,
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
    let mut results: Vec<Option<v1::StockEventResult>> = vec![None; events.len()];
    let items =
        events.into_iter().zip(&message.events).enumerate().map(|(index, (event, sent))| {
            (index, shard_of(event.sku.as_str()), event, sent.clone())
        });
    let routed = route(fence, incoming.may_forward(), items);
    for (index, status) in routed.refused {
        results[index] = Some(rejected_event(message.events[index].event_id.clone(), &status, 0));
    }
    let remote = ask_owners(
        forwarder,
        incoming,
        routed.elsewhere,
        |events| v1::ApplyStockEventsRequest { events },
        |mut client, request| async move { client.apply_stock_events(request).await },
        |response| response.results,
    );
    if !routed.here.is_empty() {
        let (indexes, events): (Vec<usize>, Vec<StockEvent>) = routed.here.into_iter().unzip();
        let ids: Vec<(String, u64)> = events
            .iter()
            .map(|event| (event.id.to_string(), fence.epoch(shard_of(event.sku.as_str()))))
            .collect();
        let outcomes = node.apply_events(events).await.map_err(node_status)?;
        for ((index, (id, epoch)), outcome) in indexes.into_iter().zip(ids).zip(outcomes) {
            results[index] = Some(event_result(id, outcome, epoch));
        }
    }
    place(&mut results, remote.await, |event, status| {
        rejected_event(event.event_id.clone(), status, 0)
    });
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
    let mut results: Vec<Option<v1::ReserveBatchResult>> = vec![None; items.len()];
    // An item that failed parsing is answered here (its own error).
    let (parsed, invalid): (Vec<_>, Vec<_>) =
        items.into_iter().enumerate().partition(|(_, item)| item.is_ok());
    // Every shard the items touch is entered before routing: a shard being
    // moved away is waited for, then routed where it is now.
    let mut touched = Touched::default();
    for request in parsed.iter().filter_map(|(_, item)| item.as_ref().ok()) {
        touched.key(request.id.as_str());
        for line in &request.lines {
            touched.key(line.sku.as_str());
        }
    }
    let _entered = fence.enter(&touched).await?;
    let items = parsed.into_iter().filter_map(|(index, item)| {
        let request = item.ok()?;
        let shard = shard_of(request.id.as_str());
        Some((index, shard, Ok(request), message.reservations[index].clone()))
    });
    let mut routed = route(fence, incoming.may_forward(), items);
    routed.here.extend(invalid);
    for (index, status) in routed.refused {
        results[index] = Some(batch_result(Err(status)));
    }
    let remote = ask_owners(
        forwarder,
        incoming,
        routed.elsewhere,
        |reservations| v1::ReserveBatchRequest { reservations },
        |mut client, request| async move { client.reserve_batch(request).await },
        |response| response.results,
    );
    if !routed.here.is_empty() {
        let epoch_of = |id: &ReservationId| fence.epoch(shard_of(id.as_str()));
        for (index, result) in reserve_all(node, routed.here, epoch_of).await? {
            results[index] = Some(result);
        }
    }
    place(&mut results, remote.await, |_, status| batch_result(Err(status.clone())));
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
    let mut results: Vec<Option<(v1::GetReservationResult, u64)>> = vec![None; ids.len()];
    let failed = |status: &Status| {
        let outcome = v1::get_reservation_result::Outcome::Error(rpc_status(status));
        (v1::GetReservationResult { outcome: Some(outcome) }, 0)
    };
    let items = ids
        .into_iter()
        .enumerate()
        .map(|(index, id)| (index, shard_of(id.as_str()), id.clone(), id.to_string()));
    let routed = route(fence, incoming.may_forward(), items);
    for (index, status) in routed.refused {
        results[index] = Some(failed(&status));
    }
    let remote = ask_owners(
        forwarder,
        incoming,
        routed.elsewhere,
        |reservation_ids| v1::GetReservationsRequest { reservation_ids },
        |mut client, request| async move { client.get_reservations(request).await },
        |response| {
            let epoch = response.epoch;
            response.results.into_iter().map(|result| (result, epoch)).collect()
        },
    );
    if !routed.here.is_empty() {
        let (indexes, ids): (Vec<usize>, Vec<ReservationId>) = routed.here.into_iter().unzip();
        let epochs: Vec<u64> = ids.iter().map(|id| fence.epoch(shard_of(id.as_str()))).collect();
        let answers = node.get_reservations(ids).await.map_err(node_status)?;
        for ((index, epoch), answer) in indexes.into_iter().zip(epochs).zip(answers) {
            let outcome = match answer {
                Ok(view) => v1::get_reservation_result::Outcome::Reservation(view.into()),
                Err(error) => {
                    v1::get_reservation_result::Outcome::Error(rpc_status(&node_status(error)))
                }
            };
            results[index] = Some((v1::GetReservationResult { outcome: Some(outcome) }, epoch));
        }
    }
    place(&mut results, remote.await, |_, status| failed(status));
    let results: Vec<(v1::GetReservationResult, u64)> =
        results.into_iter().map(|result| result.expect("every id gets a result")).collect();
    let epoch = results.first().map_or(0, |(_, epoch)| *epoch);
    Ok((results.into_iter().map(|(result, _)| result).collect(), epoch))
}
