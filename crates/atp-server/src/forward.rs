//! One hop: a node passes a request for shards that one other node owns to
//! that node and answers with its reply.
//!
//! A forwarded request carries [`FORWARDED_HEADER`] (the hops so far) and
//! the wire version [`WIRE_HEADER`] = [`WIRE_VERSION`]. A node forwards a
//! request at most [`MAX_HOPS`] hops in all (then it answers `NOT_OWNER`
//! itself), so a stale shard map costs a refusal, never a loop; the second
//! hop covers a shard that moved while the first was on its way. A request whose wire version this
//! node does not speak (a rolling upgrade between versions) is refused with
//! UNAVAILABLE `NOT_OWNER` saying so: the client retries, as for any
//! `NOT_OWNER`.
//!
//! The owner's reply, or its status with its details, is the answer. When
//! the owner cannot be reached (a connect error, an UNAVAILABLE without an
//! atp reason, or the deadline), the answer is the `NOT_OWNER` status
//! admission gave.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::{Reason, reason_of, rpc_status, status_from_rpc};
use tonic::codegen::http::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tonic_types::ErrorDetails;

use crate::fence::{EPOCH_HEADER, Peer};

/// Set on a request one node forwarded to another: how many hops it made.
pub const FORWARDED_HEADER: &str = "x-atp-forwarded";
/// Most hops a request is forwarded in all.
pub const MAX_HOPS: u32 = 2;
/// The wire version of a node-to-node message.
pub const WIRE_HEADER: &str = "x-atp-wire";
/// The only wire version this node speaks.
pub const WIRE_VERSION: &str = "1";
/// The deadline of a forwarded request when the caller set none.
const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Peers with a pooled channel; past this the pool starts again empty.
const MAX_PEERS: usize = 256;

/// A request's metadata, and a copy of its message while it may still be
/// forwarded.
#[derive(Debug)]
pub struct Incoming<T> {
    metadata: MetadataMap,
    message: Option<T>,
    /// Hops it made to reach this node.
    hops: u32,
}

impl<T: Clone> Incoming<T> {
    /// Splits `request`; keeps a copy of its message when `may_forward`
    /// (cluster mode) and it was not forwarded already. Refuses a request
    /// of a wire version this node does not speak.
    pub fn split(request: Request<T>, may_forward: bool) -> Result<(Self, T), Status> {
        let (metadata, _, message) = request.into_parts();
        let unknown_version = metadata
            .get(WIRE_HEADER)
            .filter(|version| version.as_bytes() != WIRE_VERSION.as_bytes());
        if let Some(version) = unknown_version {
            let version = String::from_utf8_lossy(version.as_bytes()).into_owned();
            // NOT_OWNER's keys, all empty: this node cannot read the request.
            let unknown =
                ["shard", "owner", "owner_address", "epoch"].map(|key| (key, String::new()));
            return Err(Reason::NotOwner.status(
                format!(
                    "a forwarded request of wire version {version:?} is not understood by this \
                     node (it speaks {WIRE_VERSION}): a rolling upgrade is in progress; retry"
                ),
                unknown,
                ErrorDetails::new(),
            ));
        }
        let hops = metadata.get(FORWARDED_HEADER).map_or(0, |value| {
            value.to_str().ok().and_then(|text| text.parse().ok()).unwrap_or(MAX_HOPS)
        });
        let copy = (may_forward && hops < MAX_HOPS).then(|| message.clone());
        Ok((Self { metadata, message: copy, hops }, message))
    }

    /// Forwards `message` instead of the one received (a late-bound Reserve
    /// once its locations are chosen), when it would be forwarded at all.
    pub fn replace_message(&mut self, message: &T) {
        if self.message.is_some() {
            self.message = Some(message.clone());
        }
    }
}

impl<T> Incoming<T> {
    /// The request's metadata (forwarded with it).
    pub fn metadata(&self) -> &MetadataMap {
        &self.metadata
    }

    /// Whether another node forwarded this request here.
    pub fn is_forwarded(&self) -> bool {
        self.hops > 0
    }

    /// Whether this request may be forwarded (fewer than [`MAX_HOPS`] so far).
    pub fn may_forward(&self) -> bool {
        self.message.is_some()
    }

    /// A sub-request of this one: its metadata (and so its deadline) with
    /// `message`, forwardable only if this one is.
    pub fn part<U>(&self, message: U) -> Incoming<U> {
        Incoming {
            metadata: self.metadata.clone(),
            message: self.may_forward().then_some(message),
            hops: self.hops,
        }
    }

    /// The caller's deadline, at most `limit` (`limit` without one).
    fn timeout_up_to(&self, limit: Duration) -> Duration {
        self.metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(limit, |timeout| timeout.min(limit))
    }
}

/// The owner could not be asked, or did not answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreachable;

/// Channels to the peers, one per address, made on first use.
#[derive(Clone, Debug, Default)]
pub struct Forwarder {
    peers: Arc<Mutex<HashMap<String, Channel>>>,
    forwarded: Arc<AtomicU64>,
}

impl Forwarder {
    /// Requests forwarded since start.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Sends `incoming` to `peer` through `call` (one RPC of the generated
    /// client) and answers with the owner's reply or status.
    pub async fn forward<T, Reply, Call, Answer>(
        &self,
        peer: Peer,
        incoming: Incoming<T>,
        call: Call,
    ) -> Result<Response<Reply>, Status>
    where
        Call: FnOnce(AvailabilityServiceClient<Channel>, Request<T>) -> Answer,
        Answer: Future<Output = Result<Response<Reply>, Status>>,
    {
        self.forward_with(peer, incoming, AvailabilityServiceClient::new, call).await
    }

    /// [`Forwarder::forward`] through another service's client (`client`
    /// makes it from the pooled channel).
    pub async fn forward_with<Client, T, Reply, Call, Answer>(
        &self,
        peer: Peer,
        incoming: Incoming<T>,
        client: fn(Channel) -> Client,
        call: Call,
    ) -> Result<Response<Reply>, Status>
    where
        Call: FnOnce(Client, Request<T>) -> Answer,
        Answer: Future<Output = Result<Response<Reply>, Status>>,
    {
        match self.send_with(&peer.address, incoming, client, call).await {
            Ok(answer) => answer,
            Err(Unreachable) => Err(peer.refusal),
        }
    }

    /// Sends `incoming` to the node at `address` through `call`: the
    /// owner's reply or status, or [`Unreachable`] when it could not be
    /// asked or did not answer within the caller's deadline (or the
    /// request may not be forwarded).
    pub async fn send<T, Reply, Call, Answer>(
        &self,
        address: &str,
        incoming: Incoming<T>,
        call: Call,
    ) -> Result<Result<Response<Reply>, Status>, Unreachable>
    where
        Call: FnOnce(AvailabilityServiceClient<Channel>, Request<T>) -> Answer,
        Answer: Future<Output = Result<Response<Reply>, Status>>,
    {
        self.send_with(address, incoming, AvailabilityServiceClient::new, call).await
    }

    /// [`Forwarder::send`] through another service's client.
    pub async fn send_with<Client, T, Reply, Call, Answer>(
        &self,
        address: &str,
        incoming: Incoming<T>,
        client: fn(Channel) -> Client,
        call: Call,
    ) -> Result<Result<Response<Reply>, Status>, Unreachable>
    where
        Call: FnOnce(Client, Request<T>) -> Answer,
        Answer: Future<Output = Result<Response<Reply>, Status>>,
    {
        self.send_with_up_to(DEFAULT_FORWARD_TIMEOUT, address, incoming, client, call).await
    }

    /// [`Forwarder::send_with`] waiting up to `limit` (within the caller's
    /// deadline) instead of the usual 10 s: for work that takes long (a
    /// shard move, a drain).
    pub async fn send_with_up_to<Client, T, Reply, Call, Answer>(
        &self,
        limit: Duration,
        address: &str,
        incoming: Incoming<T>,
        client: fn(Channel) -> Client,
        call: Call,
    ) -> Result<Result<Response<Reply>, Status>, Unreachable>
    where
        Call: FnOnce(Client, Request<T>) -> Answer,
        Answer: Future<Output = Result<Response<Reply>, Status>>,
    {
        let timeout = incoming.timeout_up_to(limit);
        let hops = incoming.hops + 1;
        let Some(message) = incoming.message else { return Err(Unreachable) };
        let Some(channel) = self.channel(address) else { return Err(Unreachable) };
        let mut request = Request::from_parts(
            MetadataMap::from_headers(passed_on(incoming.metadata.into_headers())),
            Default::default(),
            message,
        );
        request
            .metadata_mut()
            .insert(FORWARDED_HEADER, hops.to_string().parse().expect("ascii digits"));
        request.metadata_mut().insert(WIRE_HEADER, WIRE_VERSION.parse().expect("an ascii value"));
        request.set_timeout(timeout);
        crate::telemetry::inject(request.metadata_mut());
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let outcome = self.answer(address, timeout, call(client(channel), request)).await;
        let label = if outcome.is_ok() { "answered" } else { "unreachable" };
        metrics::counter!("atp_forwarded_requests_total", "outcome" => label).increment(1);
        outcome
    }

    /// The owner's answer to a forwarded call, or [`Unreachable`].
    async fn answer<Reply>(
        &self,
        address: &str,
        timeout: Duration,
        call: impl Future<Output = Result<Response<Reply>, Status>>,
    ) -> Result<Result<Response<Reply>, Status>, Unreachable> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(Ok(Response::new(response.into_inner()))),
            // The transport's failures, not the owner's answers: no atp
            // reason, and UNAVAILABLE (could not connect), or CANCELLED or
            // UNKNOWN (the connection broke mid-call, e.g. the owner died).
            Ok(Err(status)) if transport_failure(&status) => {
                tracing::warn!(peer = %address, error = %status.message(), "could not reach the owner to forward to");
                Err(Unreachable)
            }
            // The owner's answer, without its transport headers.
            Ok(Err(status)) => Ok(Err(status_from_rpc(rpc_status(&status)))),
            Err(_elapsed) => {
                tracing::warn!(peer = %address, timeout_ms = timeout.as_millis(), "the owner did not answer a forwarded request in time");
                Err(Unreachable)
            }
        }
    }

    /// The pooled channel to `address` (connected lazily).
    pub(crate) fn channel(&self, address: &str) -> Option<Channel> {
        let mut peers = self.peers.lock().expect("the peer pool is never poisoned");
        if let Some(channel) = peers.get(address) {
            return Some(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .inspect_err(|error| tracing::warn!(peer = %address, error = %error, "a peer address that is not a uri"))
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        let channel = endpoint.connect_lazy();
        peers.insert(address.to_owned(), channel.clone());
        Some(channel)
    }
}

/// A status the transport made, not the owner: no atp reason, and a code
/// a broken or refused connection gives.
fn transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    ) && reason_of(status).is_none()
}

/// The caller's headers a forwarded request keeps: not the transport's
/// (`te`, `content-type`, `user-agent`, `grpc-*`) nor atp's own, except the
/// carried epoch ([`EPOCH_HEADER`]), which the owner checks.
fn passed_on(mut headers: HeaderMap<HeaderValue>) -> HeaderMap<HeaderValue> {
    let dropped: Vec<_> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            matches!(name, "te" | "content-type" | "user-agent")
                || name.starts_with("grpc-")
                || (name.starts_with("x-atp-") && name != EPOCH_HEADER)
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    headers
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn a_request_is_forwarded_at_most_two_hops() {
        let forwarded = |hops: &str| {
            let mut request = Request::new(5_u32);
            request.metadata_mut().insert(FORWARDED_HEADER, hops.parse().expect("ascii"));
            Incoming::split(request, true).expect("wire version 1")
        };
        let (incoming, message) = forwarded("2");
        assert_eq!(message, 5);
        assert!(!incoming.may_forward());
        assert!(forwarded("1").0.may_forward(), "a second hop");
        assert!(!forwarded("junk").0.may_forward());
        let (incoming, _) = Incoming::split(Request::new(5_u32), true).expect("no headers");
        assert!(incoming.may_forward());
    }

    #[test]
    fn a_forwarded_request_keeps_the_callers_headers_and_its_epoch() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-tenant", "a"),
            (EPOCH_HEADER, "17"),
            (FORWARDED_HEADER, "1"),
            (WIRE_HEADER, "1"),
            ("grpc-timeout", "5S"),
            ("te", "trailers"),
        ] {
            headers.insert(name, value.parse().expect("ascii"));
        }
        let kept = passed_on(headers);
        let mut names: Vec<&str> = kept.keys().map(|name| name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["x-atp-epoch", "x-tenant"]);
    }

    #[test]
    fn a_broken_connection_is_unreachable_but_an_owners_answer_is_not() {
        for code in [tonic::Code::Unavailable, tonic::Code::Cancelled, tonic::Code::Unknown] {
            assert!(transport_failure(&Status::new(code, "h2 error")), "{code:?}");
        }
        assert!(!transport_failure(&Status::not_found("no such reservation")));
        let owners = Reason::FailingClosed.status(
            "shard 3 is failing closed",
            [("shard", "3".to_owned())],
            ErrorDetails::new(),
        );
        assert!(!transport_failure(&owners), "an atp reason is the owner's answer");
    }

    #[test]
    fn an_unknown_wire_version_is_refused() {
        let mut request = Request::new(5_u32);
        request.metadata_mut().insert(WIRE_HEADER, "2".parse().expect("ascii"));
        let refused = Incoming::split(request, true).expect_err("version 2");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(reason_of(&refused), Some(Reason::NotOwner));
        assert!(refused.message().contains("wire version \"2\""), "{refused:?}");
    }
}
