//! What the SDK's tests share: a real `atpd` set up through the SDK, and a
//! fault proxy in front of it that counts attempts and loses replies.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_client::proto as v1;
use atp_client::{Client, RetryPolicy};
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::availability_service_server::{AvailabilityService, AvailabilityServiceServer};
use atp_testkit::Atpd;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A retry policy with short waits, so a test spends its time on calls.
pub fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_min: Duration::from_millis(2),
        backoff_max: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

/// An SDK client of `endpoint` with `policy` and a deadline generous for a
/// debug build on a busy machine.
pub fn client(endpoint: &str, policy: RetryPolicy) -> Client {
    Client::builder([endpoint])
        .deadline(Duration::from_secs(30))
        .retry(policy)
        .build()
        .expect("a valid client")
}

/// Location `id` in lifecycle `state`.
pub fn location(id: &str, state: v1::LifecycleState) -> v1::Location {
    v1::Location {
        location_id: id.into(),
        kind: v1::LocationKind::Warehouse.into(),
        name: format!("warehouse {id}"),
        state: state.into(),
        ..Default::default()
    }
}

/// Locations dc-1 and dc-2 in channel `web`, and `stock` units of each SKU
/// of `skus` received at dc-1. Through the SDK, so setup uses it too.
pub async fn configure(client: &Client, skus: &[&str], stock: i64) {
    for id in ["dc-1", "dc-2"] {
        let request =
            v1::UpsertLocationRequest { location: Some(location(id, v1::LifecycleState::Active)) };
        client.rpc().upsert_location(request).await.expect("upsert location");
    }
    let channel = v1::Channel {
        channel_id: "web".into(),
        name: "web shop".into(),
        location_ids: vec!["dc-1".into(), "dc-2".into()],
        buffer: 0,
        cap: None,
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    };
    let request = v1::UpsertChannelRequest { channel: Some(channel) };
    client.rpc().upsert_channel(request).await.expect("upsert channel");
    let events = skus
        .iter()
        .map(|sku| v1::StockEvent {
            event_id: format!("recv-{sku}"),
            sku: (*sku).into(),
            location_id: "dc-1".into(),
            kind: Some(v1::stock_event::Kind::Received(v1::Received { quantity: stock })),
        })
        .collect();
    let request = v1::ApplyStockEventsRequest { events };
    let reply = client.rpc().apply_stock_events(request).await.expect("stock events");
    for result in reply.results {
        assert_eq!(result.outcome(), v1::StockEventOutcome::Applied, "{result:?}");
    }
}

/// The position of `sku` at dc-1.
pub async fn position(client: &Client, sku: &str) -> v1::LocationAvailability {
    let skus = client.get_availability(&[sku]).await.expect("availability");
    let locations = skus.into_iter().next().expect("one sku").locations;
    locations.into_iter().find(|position| position.location_id == "dc-1").expect("dc-1")
}

/// What the proxy does to a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and return the reply.
    None,
    /// Forward it, let the node apply it, and answer UNAVAILABLE instead of
    /// the reply, the first time each reservation id is seen.
    DropFirstReply,
    /// Forward it and answer UNAVAILABLE every time.
    DropEveryReply,
    /// Answer RESOURCE_EXHAUSTED `OVERLOADED` without forwarding.
    Overloaded,
    /// Answer a status of this reason, built as the server builds it,
    /// without forwarding.
    Refuse(atp_client::Reason),
    /// In a ReserveBatch, answer every odd item `OVERLOADED` (in its result,
    /// not forwarded) the first time its id is seen; forward the others.
    OverloadOddItemsOnce,
}

/// A gRPC proxy of AvailabilityService in front of a real node that counts
/// attempts and applies a [`Fault`].
#[derive(Clone)]
pub struct FaultProxy {
    upstream: AvailabilityServiceClient<Channel>,
    fault: Arc<Mutex<Fault>>,
    attempts: Arc<AtomicU32>,
    attempts_by_id: Arc<Mutex<HashMap<String, u32>>>,
}

impl FaultProxy {
    /// A proxy of `atpd` on a free port, and its address.
    pub async fn start(atpd: &Atpd, fault: Fault) -> (Self, SocketAddr) {
        let proxy = Self {
            upstream: atpd.availability(),
            fault: Arc::new(Mutex::new(fault)),
            attempts: Arc::new(AtomicU32::new(0)),
            attempts_by_id: Arc::new(Mutex::new(HashMap::new())),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound address");
        let router = tonic::transport::Server::builder()
            .add_service(AvailabilityServiceServer::new(proxy.clone()));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
        (proxy, address)
    }

    /// Changes the fault from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().expect("fault lock") = fault;
    }

    /// Calls received so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Calls received so far for `id`.
    pub fn attempts_for(&self, id: &str) -> u32 {
        self.attempts_by_id.lock().expect("attempts lock").get(id).copied().unwrap_or(0)
    }

    /// Counts the call; `id` is its reservation id. Returns the fault to
    /// apply and whether this is the first call for `id`.
    fn arrive(&self, id: &str) -> (Fault, bool) {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let mut by_id = self.attempts_by_id.lock().expect("attempts lock");
        let count = by_id.entry(id.to_owned()).or_insert(0);
        *count += 1;
        (*self.fault.lock().expect("fault lock"), *count == 1)
    }

    /// Applies the fault around `forward`.
    async fn relay<T>(
        &self,
        id: &str,
        forward: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let (fault, first) = self.arrive(id);
        match fault {
            Fault::Overloaded => {
                return Err(atp_proto::status::overloaded("fault proxy: overloaded"));
            }
            Fault::Refuse(reason) => return Err(reason.plain("fault proxy: refused")),
            _ => {}
        }
        let reply = forward.await;
        match fault {
            Fault::DropEveryReply => Err(Status::unavailable("fault proxy: reply dropped")),
            Fault::DropFirstReply if first => {
                Err(Status::unavailable("fault proxy: reply dropped"))
            }
            _ => reply,
        }
    }
}

impl FaultProxy {
    /// [`Fault::OverloadOddItemsOnce`]: counts each item as an attempt of its id.
    async fn overload_odd_items_once(
        &self,
        request: v1::ReserveBatchRequest,
    ) -> Result<Response<v1::ReserveBatchResponse>, Status> {
        let mut results: Vec<Option<v1::ReserveBatchResult>> = Vec::new();
        let mut forwarded = Vec::new();
        for (index, item) in request.reservations.into_iter().enumerate() {
            let (_, first) = self.arrive(&item.reservation_id);
            let odd = item
                .reservation_id
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|number| number % 2 == 1);
            if first && odd {
                let status = atp_proto::rpc_status(&atp_proto::status::overloaded("fault proxy"));
                results.push(Some(v1::ReserveBatchResult {
                    outcome: Some(v1::reserve_batch_result::Outcome::Error(status)),
                }));
            } else {
                results.push(None);
                forwarded.push((index, item));
            }
        }
        let (indices, reservations): (Vec<usize>, Vec<v1::ReserveRequest>) =
            forwarded.into_iter().unzip();
        if !reservations.is_empty() {
            let request = v1::ReserveBatchRequest { reservations };
            let reply = self.upstream.clone().reserve_batch(request).await?.into_inner();
            for (index, result) in indices.into_iter().zip(reply.results) {
                results[index] = Some(result);
            }
        }
        let results = results.into_iter().map(|result| result.expect("every item answered"));
        Ok(Response::new(v1::ReserveBatchResponse { results: results.collect() }))
    }
}

#[tonic::async_trait]
impl AvailabilityService for FaultProxy {
    type WatchAvailabilityStream = tonic::Streaming<v1::WatchAvailabilityResponse>;

    async fn watch_availability(
        &self,
        request: Request<v1::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        self.upstream.clone().watch_availability(request.into_inner()).await
    }

    async fn allocate(
        &self,
        request: Request<v1::AllocateRequest>,
    ) -> Result<Response<v1::AllocateResponse>, Status> {
        let request = request.into_inner();
        let id = request.order_id.clone();
        self.relay(&id, self.upstream.clone().allocate(request)).await
    }

    async fn reserve(
        &self,
        request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().reserve(request)).await
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().commit(request)).await
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().release(request)).await
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().cancel(request)).await
    }

    async fn extend_reservation(
        &self,
        request: Request<v1::ExtendReservationRequest>,
    ) -> Result<Response<v1::ExtendReservationResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().extend_reservation(request)).await
    }

    async fn modify_reservation(
        &self,
        request: Request<v1::ModifyReservationRequest>,
    ) -> Result<Response<v1::ModifyReservationResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().modify_reservation(request)).await
    }

    async fn get_reservation(
        &self,
        request: Request<v1::GetReservationRequest>,
    ) -> Result<Response<v1::GetReservationResponse>, Status> {
        let request = request.into_inner();
        let id = request.reservation_id.clone();
        self.relay(&id, self.upstream.clone().get_reservation(request)).await
    }

    async fn get_availability(
        &self,
        request: Request<v1::GetAvailabilityRequest>,
    ) -> Result<Response<v1::GetAvailabilityResponse>, Status> {
        self.relay("", self.upstream.clone().get_availability(request.into_inner())).await
    }

    async fn apply_stock_events(
        &self,
        request: Request<v1::ApplyStockEventsRequest>,
    ) -> Result<Response<v1::ApplyStockEventsResponse>, Status> {
        self.relay("", self.upstream.clone().apply_stock_events(request.into_inner())).await
    }

    async fn reserve_batch(
        &self,
        request: Request<v1::ReserveBatchRequest>,
    ) -> Result<Response<v1::ReserveBatchResponse>, Status> {
        let request = request.into_inner();
        if *self.fault.lock().expect("fault lock") == Fault::OverloadOddItemsOnce {
            return self.overload_odd_items_once(request).await;
        }
        let id = request.reservations.first().map(|item| item.reservation_id.clone());
        self.relay(&id.unwrap_or_default(), self.upstream.clone().reserve_batch(request)).await
    }
    async fn get_reservations(
        &self,
        request: Request<v1::GetReservationsRequest>,
    ) -> Result<Response<v1::GetReservationsResponse>, Status> {
        self.relay("", self.upstream.clone().get_reservations(request.into_inner())).await
    }

    async fn list_reservations(
        &self,
        request: Request<v1::ListReservationsRequest>,
    ) -> Result<Response<v1::ListReservationsResponse>, Status> {
        self.relay("", self.upstream.clone().list_reservations(request.into_inner())).await
    }
}
