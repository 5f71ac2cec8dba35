//! `atp.v1.AvailabilityService` over a [`Node`].

use atp_core::CoreError;
use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::reservation::{Reply, ReserveRequest};
use atp_core::shard::EventApplied;
use atp_proto::requests::{
    encode_list_token, parse_allocate, parse_availability_query, parse_commit, parse_extend,
    parse_get_reservations, parse_list_reservations, parse_modify, parse_reservation_id,
    parse_reserve, parse_reserve_batch, parse_stock_events, refuse_reserved_names, within_item,
};
use atp_proto::v1;
use atp_proto::v1::availability_service_server::AvailabilityService;
use atp_proto::{Reason, code_name, reason_of, rpc_status, status_of};
use atp_shard::{Node, NodeError};
use tonic::{Request, Response, Status};

use crate::error::node_status;
use crate::fence::{Fence, Route, Touched};
use crate::forward::{Forwarder, Incoming};
use crate::late_bind::Resolved;

/// Serves a request here, under the epoch and guard ([`Fence::enter`]) this
/// evaluates to, or returns the
/// answer of the one other node owning every shard it touches (one hop,
/// see [`crate::forward`]): `$rpc` names the client method to forward with.
macro_rules! here_or_forward {
    ($api:expr, $touched:expr, $incoming:expr, $rpc:ident) => {{ here_or_forward!($api, $touched, $incoming, $rpc, lines = Touched::default()) }};
    ($api:expr, $touched:expr, $incoming:expr, $rpc:ident, lines = $lines:expr) => {{
        let mut touched = $touched;
        touched.carrying($crate::fence::carried_epoch($incoming.metadata())?);
        // Counted on its shards, and on the shards of the lines it holds,
        // while served here: a planned move waits for it (and it waits for
        // a move), so a line op it sends never meets a shard moving away.
        let mut entering = $lines;
        for shard in touched.shards() {
            entering.shard(shard);
        }
        let entered = $api.fence.enter(&entering).await?;
        match $api.fence.route(&touched, $incoming.may_forward())? {
            Route::Here(epoch) => (epoch, entered),
            Route::Forward(peer) => {
                drop(entered);
                return $api
                    .forwarder
                    .forward(peer, $incoming, |mut client, request| async move {
                        client.$rpc(request).await
                    })
                    .await;
            }
        }
    }};
}

/// Holds, commits, availability reads and stock events.
#[derive(Clone)]
pub struct AvailabilityApi {
    node: Node,
    fence: Fence,
    forwarder: Forwarder,
    watch: crate::watch_availability::WatchSettings,
    watch_streams: std::sync::Arc<tokio::sync::Semaphore>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AvailabilityApi {
    /// The service over `node`, serving every shard (a single node).
    pub fn new(node: Node) -> Self {
        Self::with_fence(node, Fence::SingleNode)
    }

    /// The service over `node`, serving only the shards `fence` admits.
    pub fn with_fence(node: Node, fence: Fence) -> Self {
        Self {
            node,
            fence,
            forwarder: Forwarder::default(),
            watch: crate::watch_availability::WatchSettings::default(),
            watch_streams: std::sync::Arc::new(tokio::sync::Semaphore::new(
                crate::watch_availability::MAX_WATCH_STREAMS,
            )),
            stopping: tokio::sync::watch::channel(false).1,
        }
    }

    /// WatchAvailability streams behave as `settings` say.
    pub fn with_watch(mut self, settings: crate::watch_availability::WatchSettings) -> Self {
        self.watch = settings;
        self
    }

    /// WatchAvailability streams end when `stopping` turns true (the
    /// server is shutting down).
    pub fn with_stopping(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The service forwarding through `forwarder` (shared with the
    /// AdminService, which reports its count).
    pub fn with_forwarder(mut self, forwarder: Forwarder) -> Self {
        self.forwarder = forwarder;
        self
    }

    /// Requests this service forwarded to other nodes since start.
    pub fn forwarded(&self) -> u64 {
        self.forwarder.forwarded()
    }

    /// Splits `request` (see [`Incoming::split`]).
    fn split<T: Clone>(&self, request: Request<T>) -> Result<(Incoming<T>, T), Status> {
        Incoming::split(request, matches!(self.fence, Fence::Cluster(_)))
    }

    fn default_ttl_ms(&self) -> i64 {
        self.node.config().default_ttl_ms
    }

    /// The configuration the node holds now.
    pub(crate) fn catalog(&self) -> std::sync::Arc<atp_core::catalog::Catalog> {
        self.node.catalog()
    }

    /// The node's clock now (ms since the Unix epoch).
    pub(crate) fn now_ms(&self) -> i64 {
        self.node.now_ms()
    }

    /// The epoch `shard` is served under here.
    pub(crate) fn fence_epoch(&self, shard: u32) -> u64 {
        self.fence.epoch(shard)
    }
}

/// The shards of reservation `id` (its home) and of `skus`.
fn touched<'a>(id: &str, skus: impl IntoIterator<Item = &'a str>) -> Touched {
    let mut touched = Touched::default();
    touched.key(id);
    for sku in skus {
        touched.key(sku);
    }
    touched
}

/// The shards of a request's lines (entered, not routed by: see
/// [`Fence::enter`]).
fn line_shards<'a>(skus: impl IntoIterator<Item = &'a str>) -> Touched {
    let mut lines = Touched::default();
    for sku in skus {
        lines.key(sku);
    }
    lines
}

#[tonic::async_trait]
impl AvailabilityService for AvailabilityApi {
    type WatchAvailabilityStream = crate::watch_availability::WatchStream;

    async fn watch_availability(
        &self,
        request: Request<v1::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let permit =
            std::sync::Arc::clone(&self.watch_streams).try_acquire_owned().map_err(|_| {
                atp_proto::status::overloaded(format!(
                    "this node serves {} watch streams already; retry later or ask another node",
                    crate::watch_availability::MAX_WATCH_STREAMS
                ))
            })?;
        let (incoming, message) = self.split(request)?;
        let query = crate::watch_availability::parse_watch(
            &message,
            &self.catalog(),
            incoming.is_forwarded(),
        )
        .map_err(status_of)?;
        let query = std::sync::Arc::new(query);
        let (out, mut receiver) = tokio::sync::mpsc::channel(4);
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            if stopping.wait_for(|stopping| *stopping).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        if incoming.is_forwarded() {
            // Another node's merger: only the shards served here.
            let resume = query.resume_marks();
            let source = crate::watch_availability::local_source(
                self.node.clone(),
                query,
                resume,
                out,
                std::time::Duration::from_millis(self.watch.flush_interval_ms),
            );
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = source => {}
                    () = stopped => {}
                }
            });
        } else {
            let merged = crate::watch_availability::merge(
                self.node.clone(),
                self.fence.clone(),
                self.forwarder.clone(),
                self.watch,
                message,
                query,
                out,
            );
            // In this request's span: the sources on other nodes carry its trace.
            tokio::spawn(tracing::Instrument::in_current_span(async move {
                let _permit = permit;
                tokio::select! {
                    () = merged => {}
                    () = stopped => {}
                }
            }));
        }
        let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let own = crate::reserved::is_own(&request);
        let (mut incoming, mut message) = self.split(request)?;
        if !own && !incoming.is_forwarded() {
            let skus = message.lines.iter().map(|line| line.sku.as_str());
            refuse_reserved_names("lines", skus, message.metadata.as_ref()).map_err(status_of)?;
        }
        // Rewrites only within the line limit (parsing refuses the rest).
        let within = message.lines.len() <= atp_core::ids::MAX_LINES_PER_RESERVATION;
        if within && !self.catalog().kits.is_empty() {
            // A kit's line holds its components.
            crate::kits::expand_lines(&mut message.lines, &self.catalog())?;
            incoming.replace_message(&message);
        }
        if within && message.lines.iter().any(|line| line.location_id.is_empty()) {
            match self.bind_late(message).await? {
                Resolved::Replay(first) => return Ok(Response::new(*first)),
                Resolved::Bound(bound) => {
                    incoming.replace_message(&bound);
                    message = bound;
                }
            }
        }
        let request = parse_reserve(message, self.default_ttl_ms()).map_err(status_of)?;
        // Served by the home's owner; lines on other nodes are held there
        // through the PeerService (docs/PROTOCOL.md, "Across nodes").
        let touched = touched(request.id.as_str(), []);
        let lines = line_shards(request.lines.iter().map(|line| line.sku.as_str()));
        let (epoch, _entered) = here_or_forward!(self, touched, incoming, reserve, lines = lines);
        let reply = self.node.reserve(request).await.map_err(node_status)?;
        Ok(Response::new(reserved(reply, epoch)))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let commit = parse_commit(message).map_err(status_of)?;
        let touched = touched(commit.id.as_str(), []);
        let (epoch, _entered) = here_or_forward!(self, touched, incoming, commit);
        let reply = self.node.commit(commit.id, commit.lines).await.map_err(node_status)?;
        let (reservation, replayed, current) = reply_fields(reply);
        Ok(Response::new(v1::CommitResponse { reservation, epoch, replayed, current }))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let id = parse_reservation_id(&message.reservation_id).map_err(status_of)?;
        let (epoch, _entered) = here_or_forward!(self, touched(id.as_str(), []), incoming, release);
        let reply = self.node.release(id).await.map_err(node_status)?;
        let (reservation, replayed, current) = reply_fields(reply);
        Ok(Response::new(v1::ReleaseResponse { reservation, epoch, replayed, current }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let id = parse_reservation_id(&message.reservation_id).map_err(status_of)?;
        let (epoch, _entered) = here_or_forward!(self, touched(id.as_str(), []), incoming, cancel);
        let reply = self.node.cancel(id).await.map_err(node_status)?;
        let (reservation, replayed, current) = reply_fields(reply);
        Ok(Response::new(v1::CancelResponse { reservation, epoch, replayed, current }))
    }

    async fn extend_reservation(
        &self,
        request: Request<v1::ExtendReservationRequest>,
    ) -> Result<Response<v1::ExtendReservationResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let extend = parse_extend(message, self.default_ttl_ms()).map_err(status_of)?;
        let touched = touched(extend.id.as_str(), []);
        let (epoch, _entered) = here_or_forward!(self, touched, incoming, extend_reservation);
        let reply = self
            .node
            .extend(extend.id, extend.ttl_ms, extend.request_id)
            .await
            .map_err(node_status)?;
        let (reservation, replayed, current) = reply_fields(reply);
        Ok(Response::new(v1::ExtendReservationResponse { reservation, epoch, replayed, current }))
    }

    async fn modify_reservation(
        &self,
        request: Request<v1::ModifyReservationRequest>,
    ) -> Result<Response<v1::ModifyReservationResponse>, Status> {
        let own = crate::reserved::is_own(&request);
        let (mut incoming, mut message) = self.split(request)?;
        if !own && !incoming.is_forwarded() {
            let skus = message.lines.iter().map(|line| line.sku.as_str());
            refuse_reserved_names("lines", skus, None).map_err(status_of)?;
        }
        let within = message.lines.len() <= atp_core::ids::MAX_LINES_PER_RESERVATION;
        if within && !self.catalog().kits.is_empty() {
            crate::kits::expand_lines(&mut message.lines, &self.catalog())?;
            incoming.replace_message(&message);
        }
        let modify = parse_modify(message).map_err(status_of)?;
        let touched = touched(modify.id.as_str(), []);
        let lines = line_shards(modify.lines.iter().map(|line| line.sku.as_str()));
        let (epoch, _entered) =
            here_or_forward!(self, touched, incoming, modify_reservation, lines = lines);
        let reply = self
            .node
            .modify(modify.id, modify.request_id, modify.lines)
            .await
            .map_err(node_status)?;
        let (reservation, replayed, current) = reply_fields(reply);
        Ok(Response::new(v1::ModifyReservationResponse { reservation, epoch, replayed, current }))
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::GetReservationResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let id = parse_reservation_id(&message.reservation_id).map_err(status_of)?;
        let (epoch, _entered) =
            here_or_forward!(self, touched(id.as_str(), []), incoming, get_reservation);
        let view = self.node.get_reservation(id).await.map_err(node_status)?;
        Ok(Response::new(v1::GetReservationResponse { reservation: Some(view.into()), epoch }))
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::GetAvailabilityResponse>, Status> {
        let catalog = self.catalog();
        if !catalog.kits.is_empty() {
            let (kits, read) = crate::kits::split_kits(&request.get_ref().skus, &catalog);
            if !kits.is_empty() {
                // Components are never kits, so this reads no kit again.
                let asked = request.get_ref().skus.clone();
                let mut components = request.into_inner();
                components.skus = read;
                let figures = self.get_availability(Request::new(components)).await?;
                let figures = figures.into_inner().skus;
                let skus = asked
                    .iter()
                    .filter_map(|sku| match kits.iter().find(|kit| kit.sku.as_str() == sku) {
                        Some(kit) => Some(crate::kits::kit_figures(kit, &figures)),
                        None => figures.iter().find(|figures| &figures.sku == sku).cloned(),
                    })
                    .collect();
                return Ok(Response::new(v1::GetAvailabilityResponse { skus }));
            }
        }
        let (incoming, message) = self.split(request)?;
        if matches!(self.fence, Fence::Cluster(_)) {
            // Split by owner: one SKU that cannot be read does not fail the rest.
            let query = parse_availability_query(message.clone()).map_err(status_of)?;
            let skus = crate::fan_out::read_split(
                &self.node,
                &self.fence,
                &self.forwarder,
                &incoming,
                &message,
                &query,
            )
            .await?;
            return Ok(Response::new(v1::GetAvailabilityResponse { skus }));
        }
        let query = parse_availability_query(message).map_err(status_of)?;
        let skus = self
            .node
            .availability(&query.skus, &query.locations, &query.channels)
            .map_err(node_status)?;
        Ok(Response::new(v1::GetAvailabilityResponse {
            skus: skus.into_iter().map(Into::into).collect(),
        }))
    }

    async fn apply_stock_events(
        &self,
        request: Request<v1::ApplyStockEventsRequest>,
    ) -> Result<Response<v1::ApplyStockEventsResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        if matches!(self.fence, Fence::Cluster(_)) {
            // Split by owner: an event whose shard cannot be reached is
            // rejected on its own; the others are applied.
            let events = parse_stock_events(message.clone()).map_err(status_of)?;
            let results = crate::fan_out::apply_split(
                &self.node,
                &self.fence,
                &self.forwarder,
                &incoming,
                &message,
                events,
            )
            .await?;
            return Ok(Response::new(v1::ApplyStockEventsResponse { results }));
        }
        let events = parse_stock_events(message).map_err(status_of)?;
        let mut touched = Touched::default();
        for event in &events {
            touched.key(event.sku.as_str());
        }
        let (_, _entered) = here_or_forward!(self, touched, incoming, apply_stock_events);
        let event_ids: Vec<(String, u64)> = events
            .iter()
            .map(|event| (event.id.to_string(), self.fence.epoch(shard_of(event.sku.as_str()))))
            .collect();
        let outcomes = self.node.apply_events(events).await.map_err(node_status)?;
        let results = event_ids
            .into_iter()
            .zip(outcomes)
            .map(|((event_id, epoch), outcome)| event_result(event_id, outcome, epoch))
            .collect();
        Ok(Response::new(v1::ApplyStockEventsResponse { results }))
    }

    async fn reserve_batch(
        &self,
        request: Request<v1::ReserveBatchRequest>,
    ) -> Result<Response<v1::ReserveBatchResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        if matches!(self.fence, Fence::Cluster(_)) {
            // Split by the owner of each item's home.
            let items =
                parse_reserve_batch(message.clone(), self.default_ttl_ms()).map_err(status_of)?;
            let results = crate::fan_out::reserve_split(
                &self.node,
                &self.fence,
                &self.forwarder,
                &incoming,
                &message,
                items,
            )
            .await?;
            return Ok(Response::new(v1::ReserveBatchResponse { results }));
        }
        let items = parse_reserve_batch(message, self.default_ttl_ms()).map_err(status_of)?;
        let items = items.into_iter().enumerate().collect();
        let mut results = reserve_all(&self.node, items, |_| crate::SINGLE_NODE_EPOCH).await?;
        results.sort_by_key(|(index, _)| *index);
        let results = results.into_iter().map(|(_, result)| result).collect();
        Ok(Response::new(v1::ReserveBatchResponse { results }))
    }

    async fn get_reservations(
        &self,
        request: Request<v1::GetReservationsRequest>,
    ) -> Result<Response<v1::GetReservationsResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        let ids = parse_get_reservations(message).map_err(status_of)?;
        if matches!(self.fence, Fence::Cluster(_)) {
            // Split by the owner of each id's home.
            let (results, epoch) = crate::fan_out::read_reservations_split(
                &self.node,
                &self.fence,
                &self.forwarder,
                &incoming,
                ids,
            )
            .await?;
            return Ok(Response::new(v1::GetReservationsResponse { results, epoch }));
        }
        let epoch = crate::SINGLE_NODE_EPOCH;
        let answers = self.node.get_reservations(ids).await.map_err(node_status)?;
        let results = answers
            .into_iter()
            .map(|answer| {
                let outcome = match answer {
                    Ok(view) => v1::get_reservation_result::Outcome::Reservation(view.into()),
                    Err(error) => {
                        v1::get_reservation_result::Outcome::Error(rpc_status(&node_status(error)))
                    }
                };
                v1::GetReservationResult { outcome: Some(outcome) }
            })
            .collect();
        Ok(Response::new(v1::GetReservationsResponse { results, epoch }))
    }

    async fn allocate(
        &self,
        request: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateResponse>, Status> {
        // Served where it arrives: the availability read and the Reserve it
        // makes go through this service, so to the owners of their shards.
        let message = request.into_inner();
        let order = parse_allocate(message, self.default_ttl_ms()).map_err(status_of)?;
        Ok(Response::new(self.allocate_order(order).await?))
    }

    async fn list_reservations(
        &self,
        request: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        let (incoming, message) = self.split(request)?;
        if matches!(self.fence, Fence::Cluster(_)) {
            // The whole cluster's listing: every owner's page, merged.
            let query = parse_list_reservations(message.clone()).map_err(status_of)?;
            let response = crate::listing::list_split(
                &self.node,
                &self.fence,
                &self.forwarder,
                &incoming,
                &message,
                query,
            )
            .await?;
            return Ok(Response::new(response));
        }
        let query = parse_list_reservations(message).map_err(status_of)?;
        let page = self
            .node
            .list_reservations(query.filter, query.from, query.page_size)
            .await
            .map_err(node_status)?;
        Ok(Response::new(v1::ListReservationsResponse {
            reservations: page.reservations.into_iter().map(Into::into).collect(),
            next_page_token: page.next.as_ref().map(encode_list_token).unwrap_or_default(),
            epoch: crate::SINGLE_NODE_EPOCH,
        }))
    }
}

/// Runs every well-formed item's Reserve on the node together (one message
/// per shard per step, see [`Node::reserve_batch`]) and answers one result
/// per item, in request order. Items sharing an id run one after another in
/// request order (as a client's retries would), so a repeat gets the first
/// answer or ALREADY_EXISTS, never a race with itself.
/// Reserves the parsed `items` (each with its index in the request; an
/// item that failed parsing gets its own error), answering each with the
/// epoch `epoch_of` its home. One result per item, with its index.
pub(crate) async fn reserve_all(
    node: &Node,
    items: Vec<(usize, Result<ReserveRequest, CoreError>)>,
    epoch_of: impl Fn(&ReservationId) -> u64,
) -> Result<Vec<(usize, v1::ReserveBatchResult)>, Status> {
    let mut outcomes: Vec<(usize, Result<v1::ReserveResponse, Status>)> =
        Vec::with_capacity(items.len());
    let mut indexes = Vec::with_capacity(items.len());
    let mut requests = Vec::with_capacity(items.len());
    for (index, item) in items {
        match item {
            Err(error) => outcomes.push((index, Err(status_of(error)))),
            Ok(request) => {
                indexes.push(index);
                requests.push(request);
            }
        }
    }
    let epochs: Vec<u64> = requests.iter().map(|request| epoch_of(&request.id)).collect();
    let answers = node.reserve_batch(requests).await.map_err(node_status)?;
    for ((index, epoch), answer) in indexes.into_iter().zip(epochs).zip(answers) {
        outcomes.push((
            index,
            answer.map(|reply| reserved(reply, epoch)).map_err(|error| item_status(error, index)),
        ));
    }
    Ok(outcomes.into_iter().map(|(index, outcome)| (index, batch_result(outcome))).collect())
}

/// One ReserveBatch item's result.
pub(crate) fn batch_result(outcome: Result<v1::ReserveResponse, Status>) -> v1::ReserveBatchResult {
    let outcome = match outcome {
        Ok(response) => v1::reserve_batch_result::Outcome::Reserved(response),
        Err(status) => v1::reserve_batch_result::Outcome::Error(rpc_status(&status)),
    };
    v1::ReserveBatchResult { outcome: Some(outcome) }
}

fn reserved(reply: Reply, epoch: u64) -> v1::ReserveResponse {
    let (reservation, replayed, current) = reply_fields(reply);
    v1::ReserveResponse { reservation, epoch, replayed, current }
}

/// A reply's `reservation`, `replayed` and `current` fields.
pub(crate) fn reply_fields(
    reply: Reply,
) -> (Option<v1::Reservation>, bool, Option<v1::Reservation>) {
    let replayed = reply.is_replay();
    (Some(reply.reservation.into()), replayed, reply.current.map(Into::into))
}

/// An item's node error as the status a unary Reserve would get, with the
/// fields of the node's own checks (unknown channel or location) named from
/// the batch's root.
fn item_status(error: NodeError, index: usize) -> Status {
    match error {
        NodeError::Core(error) => status_of(within_item(error, index)),
        other => node_status(other),
    }
}

/// One event's result: applied, duplicate, or rejected with the code the
/// error would have had as a whole call.
pub(crate) fn event_result(
    event_id: String,
    outcome: Result<EventApplied, NodeError>,
    epoch: u64,
) -> v1::StockEventResult {
    match outcome {
        Ok(applied) => {
            let outcome = if applied.duplicate {
                v1::StockEventOutcome::Duplicate
            } else {
                v1::StockEventOutcome::Applied
            };
            v1::StockEventResult {
                event_id,
                outcome: outcome.into(),
                error_code: 0,
                error_message: String::new(),
                position: Some(applied.position.into()),
                epoch,
                error_code_name: String::new(),
                error_reason: String::new(),
            }
        }
        Err(error) => rejected_event(event_id, &node_status(error), epoch),
    }
}

/// A REJECTED result for `event_id`, refused with `status`.
pub(crate) fn rejected_event(
    event_id: String,
    status: &Status,
    epoch: u64,
) -> v1::StockEventResult {
    v1::StockEventResult {
        event_id,
        outcome: v1::StockEventOutcome::Rejected.into(),
        error_code: status.code().into(),
        error_message: status.message().to_owned(),
        position: None,
        epoch,
        error_code_name: code_name(status.code()).to_owned(),
        error_reason: reason_of(status).map(Reason::name).unwrap_or_default().to_owned(),
    }
}
