//! [`Client`], its builder, and the one function every call goes through.

use std::future::Future;
use std::time::Duration;

use atp_proto::v1;
use tonic::transport::Channel;

use crate::retry::Retrier;
use crate::routing::{RouteKey, Router, reroute, unreachable};
use crate::transport::Transport;
use crate::types::{Allocate, Allocation, Line, Reservation, Reserve};
use crate::{Error, RetryPolicy, Rpc};
use atp_proto::EPOCH_HEADER;

/// Deadline of one attempt unless the builder says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection attempt may take unless the builder says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 connections per endpoint unless the builder says otherwise.
pub const DEFAULT_CONNECTIONS_PER_ENDPOINT: usize = 2;
/// Most connections per endpoint a builder accepts.
pub const MAX_CONNECTIONS_PER_ENDPOINT: usize = 64;
/// Reservations per ReserveBatch call (the server's limit); `reserve_many`
/// splits longer lists.
pub const MAX_BATCH_RESERVATIONS: usize = 1000;

/// The atp client: one per process, cheap to clone (clones share the
/// connections and the retry budget).
#[derive(Clone, Debug)]
pub struct Client {
    transport: Transport,
    retrier: Retrier,
    deadline: Duration,
    /// Follows the shard map while any clone lives (None: not routing).
    _router: Option<std::sync::Arc<Router>>,
}

/// Settings of a [`Client`]; [`ClientBuilder::build`] checks them all at once.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    connections_per_endpoint: usize,
    connect_timeout: Duration,
    deadline: Duration,
    retry: RetryPolicy,
    route: bool,
}

impl ClientBuilder {
    /// Whether calls go straight to their shard's owner by the cluster's
    /// shard map (default true). The client follows the map with one
    /// `WatchShardMap` stream to a configured endpoint; until a map arrives,
    /// on a single node, and when routing is off, calls go round-robin to
    /// the configured endpoints (a node forwards what it does not own).
    pub fn route_by_shard_map(mut self, route: bool) -> Self {
        self.route = route;
        self
    }

    /// HTTP/2 connections opened to each endpoint (1..=64; default 2).
    pub fn connections_per_endpoint(mut self, connections: usize) -> Self {
        self.connections_per_endpoint = connections;
        self
    }

    /// How long opening a connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of each attempt of a call (default 10 s); a call that gets no
    /// answer in time fails with [`Error::DeadlineExceeded`] (and is retried
    /// as the policy allows).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How failed calls are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The client. Connects lazily: the first call opens the connections,
    /// and a broken one is reopened by the next call. Must run inside a Tokio
    /// runtime.
    pub fn build(self) -> Result<Client, Error> {
        let mut problems = Vec::new();
        if !(1..=MAX_CONNECTIONS_PER_ENDPOINT).contains(&self.connections_per_endpoint) {
            problems.push(format!(
                "connections_per_endpoint is {}; must be 1..={MAX_CONNECTIONS_PER_ENDPOINT}",
                self.connections_per_endpoint
            ));
        }
        if self.deadline.is_zero() {
            problems.push("deadline must be positive".to_owned());
        }
        if self.connect_timeout.is_zero() {
            problems.push("connect_timeout must be positive".to_owned());
        }
        let retrier = Retrier::new(self.retry);
        if let Err(Error::Config(problem)) = &retrier {
            problems.push(problem.clone());
        }
        let transport =
            Transport::new(&self.endpoints, self.connections_per_endpoint, self.connect_timeout);
        if let Err(Error::Config(problem)) = &transport {
            problems.push(problem.clone());
        }
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let transport = transport?;
        let router = self.route.then(|| std::sync::Arc::new(Router::start(transport.clone())));
        Ok(Client { transport, retrier: retrier?, deadline: self.deadline, _router: router })
    }
}

impl ClientBuilder {
    /// The client, after checking that each endpoint accepts a connection
    /// ([`Error::Unavailable`] if one does not). Calls still connect lazily
    /// and reconnect as needed afterwards.
    pub async fn connect(self) -> Result<Client, Error> {
        let connect_timeout = self.connect_timeout;
        let client = self.build()?;
        client.transport.connect_first(connect_timeout).await?;
        Ok(client)
    }
}

impl Client {
    /// A builder for a client of `endpoints` (`http://host:port` or
    /// `host:port`; more than one spreads calls over them).
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connections_per_endpoint: DEFAULT_CONNECTIONS_PER_ENDPOINT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            retry: RetryPolicy::default(),
            route: true,
        }
    }

    /// A client of one endpoint with the default settings.
    pub fn new(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::builder([endpoint.into()]).build()
    }

    /// This client with another deadline per attempt (same connections and budget).
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        Self { deadline, ..self.clone() }
    }

    /// Whether calls are routed by a shard map now (cluster mode, a map
    /// received, the stream unbroken).
    pub fn is_routed(&self) -> bool {
        self.transport.routed()
    }

    /// Waits until a shard map has been received (true), or `within` passed
    /// (false). On a single node the map arrives too, but routes nothing.
    pub async fn wait_for_shard_map(&self, within: Duration) -> bool {
        let mut installs = self.transport.installs();
        tokio::time::timeout(within, installs.wait_for(|count| *count > 0))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// The endpoints this client calls, normalized (`http://host:port`).
    pub fn endpoints(&self) -> Vec<String> {
        self.transport.endpoints()
    }

    /// Every RPC of `atp.v1` with its own request and reply messages, under
    /// the same deadline, retries and typed errors as the methods below.
    pub fn rpc(&self) -> Rpc<'_> {
        Rpc::new(self)
    }

    /// Holds every line of `reserve` or none. Sending the same Reserve
    /// again (same id, same payload) returns the first answer, with
    /// [`Reservation::replayed`] set and the reservation as it stands now in
    /// [`Reservation::current`] (the same for commit, release, cancel).
    pub async fn reserve(&self, reserve: Reserve) -> Result<Reservation, Error> {
        let reply = self.rpc().reserve(reserve.into()).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Commits every line of a held reservation in full.
    pub async fn commit(&self, reservation_id: &str) -> Result<Reservation, Error> {
        let request =
            v1::CommitRequest { reservation_id: reservation_id.to_owned(), lines: vec![] };
        let reply = self.rpc().commit(request).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Frees a held reservation.
    pub async fn release(&self, reservation_id: &str) -> Result<Reservation, Error> {
        let request = v1::ReleaseRequest { reservation_id: reservation_id.to_owned() };
        let reply = self.rpc().release(request).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Frees the unshipped units of a committed reservation.
    pub async fn cancel(&self, reservation_id: &str) -> Result<Reservation, Error> {
        let request = v1::CancelRequest { reservation_id: reservation_id.to_owned() };
        let reply = self.rpc().cancel(request).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Moves a held reservation's expiry to now + `ttl_seconds`.
    pub async fn extend(
        &self,
        reservation_id: &str,
        ttl_seconds: u32,
    ) -> Result<Reservation, Error> {
        let request = v1::ExtendReservationRequest {
            reservation_id: reservation_id.to_owned(),
            ttl_seconds,
            // Unkeyed: a retry moves the expiry again (to now + ttl);
            // `rpc().extend_reservation` takes a request id.
            request_id: String::new(),
        };
        let reply = self.rpc().extend_reservation(request).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Changes a held reservation to exactly `lines` (quantities, lines
    /// added or removed), all or nothing. `request_id` makes a retry safe:
    /// the same key and lines get the first answer, with
    /// [`Reservation::replayed`] set; the same key with other lines is
    /// [`Error::IdReused`]. Only increases are checked against stock: an
    /// [`Error::InsufficientStock`]'s `requested` is the increase of the
    /// line, its `available` the units free beside what the reservation holds.
    pub async fn modify(
        &self,
        reservation_id: &str,
        request_id: &str,
        lines: Vec<Line>,
    ) -> Result<Reservation, Error> {
        let request = v1::ModifyReservationRequest {
            reservation_id: reservation_id.to_owned(),
            request_id: request_id.to_owned(),
            lines: lines.into_iter().map(Into::into).collect(),
        };
        let reply = self.rpc().modify_reservation(request).await?;
        Reservation::from_replayable_reply(
            reply.reservation,
            reply.epoch,
            reply.replayed,
            reply.current,
        )
    }

    /// Chooses the locations of `allocate`'s channel that ship the order
    /// (by its policy, splitting only when it pays) and holds their stock
    /// as a reservation under the order id, unless it is a dry run (then it
    /// only plans and explains). Sending the same Allocate again (same
    /// order id, same request) holds nothing more and answers with
    /// [`Allocation::replayed`] set; the same order id with another request
    /// is [`Error::IdReused`]. An order that cannot be filled within the
    /// rules is [`Error::InsufficientStock`] (its `location` names the
    /// channel) unless the fill rule is partial.
    pub async fn allocate(&self, allocate: Allocate) -> Result<Allocation, Error> {
        let reply = self.rpc().allocate(allocate.into()).await?;
        Allocation::from_reply(reply)
    }

    /// The reservation `reservation_id`.
    pub async fn get_reservation(&self, reservation_id: &str) -> Result<Reservation, Error> {
        let request = v1::GetReservationRequest { reservation_id: reservation_id.to_owned() };
        let reply = self.rpc().get_reservation(request).await?;
        Reservation::from_reply(reply.reservation, reply.epoch)
    }

    /// Availability of `skus` at every location and in every channel, in
    /// the order asked. In cluster mode a SKU that could not be read (its
    /// owner down or unreachable, its shard failing closed) comes back with
    /// `error` set and no figures; its typed error is
    /// `Error::from_status(&atp_proto::status_from_rpc(error))`.
    pub async fn get_availability<S: AsRef<str>>(
        &self,
        skus: &[S],
    ) -> Result<Vec<v1::SkuAvailability>, Error> {
        let request = v1::GetAvailabilityRequest {
            skus: skus.iter().map(|sku| sku.as_ref().to_owned()).collect(),
            ..Default::default()
        };
        Ok(self.rpc().get_availability(request).await?.skus)
    }

    /// Many Reserves over ReserveBatch (split into calls of at most
    /// [`MAX_BATCH_RESERVATIONS`]): one result per Reserve, in order. Items
    /// that failed for a retryable reason are sent again (same id, same
    /// payload) under the client's policy and budget; the others keep their
    /// error. The outer error is a failure of a whole call.
    pub async fn reserve_many(
        &self,
        reserves: Vec<Reserve>,
    ) -> Result<Vec<Result<Reservation, Error>>, Error> {
        let requests: Vec<v1::ReserveRequest> = reserves.into_iter().map(Into::into).collect();
        let mut results: Vec<Result<Reservation, Error>> = (0..requests.len())
            .map(|_| Err(Error::Unavailable { message: "not sent".to_owned(), status: None }))
            .collect();
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        self.retrier.deposit();
        let mut backoff = self.retrier.backoff();
        let mut attempts = 1;
        loop {
            for chunk in pending.chunks(MAX_BATCH_RESERVATIONS) {
                let request = v1::ReserveBatchRequest {
                    reservations: chunk.iter().map(|&index| requests[index].clone()).collect(),
                };
                let reply = self.rpc().reserve_batch(request).await?;
                if reply.results.len() != chunk.len() {
                    return Err(Error::Other {
                        code: tonic::Code::Internal,
                        reason: None,
                        message: format!(
                            "ReserveBatch answered {} results for {} reservations",
                            reply.results.len(),
                            chunk.len()
                        ),
                        status: None,
                    });
                }
                for (&index, result) in chunk.iter().zip(reply.results) {
                    results[index] = batch_result(result);
                }
            }
            let retryable: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&index| results[index].as_ref().is_err_and(Error::is_retryable))
                .collect();
            let Some(&first) = retryable.first() else { break };
            let error = results[first].as_ref().expect_err("filtered on errors");
            if !self.retrier.may_retry(error, attempts) {
                break;
            }
            attempts += 1;
            Retrier::pause(&mut backoff, error).await;
            pending = retryable;
        }
        Ok(results)
    }

    /// Runs one unary call under the deadline and the retry policy: each
    /// attempt sends the same request to its shard's owner (by the shard
    /// map, with the epoch it gives), or on the next pooled connection; a
    /// routed send the owner refuses as behind the map (or cannot take) is
    /// sent again at once to a configured endpoint, which forwards it.
    pub(crate) async fn unary<Request, Response, Call, Answer>(
        &self,
        request: Request,
        call: Call,
    ) -> Result<Response, Error>
    where
        Request: Clone + RouteKey,
        Call: Fn(Channel, tonic::Request<Request>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<Response>, tonic::Status>>,
    {
        let (request, call) = (&request, &call);
        self.retrier
            .run(|| async move {
                let shard = request.route_key().map(atp_core::hash::shard_of);
                if let Some((owner, channel, epoch)) =
                    shard.and_then(|shard| self.transport.route(shard))
                {
                    let mut routed = tonic::Request::new(request.clone());
                    routed.metadata_mut().insert(EPOCH_HEADER, epoch.into());
                    match self.timed(call(channel, routed)).await {
                        Err(error) if unreachable(&error) => owner.unreachable(),
                        Err(error) if reroute(&error) => {}
                        answered => return answered,
                    }
                }
                self.timed(call(self.transport.channel(), tonic::Request::new(request.clone())))
                    .await
            })
            .await
    }

    /// One send under the client's deadline.
    async fn timed<Response>(
        &self,
        answer: impl Future<Output = Result<tonic::Response<Response>, tonic::Status>>,
    ) -> Result<Response, Error> {
        let deadline = self.deadline;
        match tokio::time::timeout(deadline, answer).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(Error::from_status(&status)),
            Err(_) => Err(Error::DeadlineExceeded {
                message: format!("no answer within the client deadline of {deadline:?}"),
                status: None,
            }),
        }
    }
}

/// One item of a ReserveBatch reply as a typed result.
fn batch_result(result: v1::ReserveBatchResult) -> Result<Reservation, Error> {
    match result.outcome {
        Some(v1::reserve_batch_result::Outcome::Reserved(reply)) => {
            Reservation::from_replayable_reply(
                reply.reservation,
                reply.epoch,
                reply.replayed,
                reply.current,
            )
        }
        Some(v1::reserve_batch_result::Outcome::Error(status)) => {
            Err(Error::from_status(&atp_proto::status_from_rpc(status)))
        }
        None => Err(Error::Other {
            code: tonic::Code::Internal,
            reason: None,
            message: "a ReserveBatch result carries no outcome".to_owned(),
            status: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_bad_setting_is_reported_at_once() {
        let error = Client::builder(["not a uri at all"])
            .connections_per_endpoint(0)
            .deadline(Duration::ZERO)
            .retry(RetryPolicy { max_attempts: 0, ..RetryPolicy::default() })
            .build()
            .expect_err("refused");
        let Error::Config(message) = error else { panic!("a config error: {error:?}") };
        for part in ["connections_per_endpoint", "deadline", "max_attempts", "not a uri"] {
            assert!(message.contains(part), "{part} missing in {message}");
        }
    }
}
