//! Cross-cutting concerns as tower layers, and the stack they form.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atp_proto::Reason;
use tonic::Status;
use tonic::codegen::http;
use tonic_types::ErrorDetails;
use tower::layer::util::{Identity, Stack};
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::util::MapErrLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::telemetry::{self, MeteredBody, RequestMeter};

/// Maps the errors of the layers below to gRPC statuses.
type ErrorToStatus = fn(BoxError) -> BoxError;

/// The layer stack of [`crate::serve`], outermost first.
pub type Layers = Stack<
    DeadlineLayer,
    Stack<
        ConcurrencyLimitLayer,
        Stack<
            LoadShedLayer,
            Stack<MapErrLayer<ErrorToStatus>, Stack<TooLargeLayer, Stack<TraceLayer, Identity>>>,
        >,
    >,
>;

/// Builds the stack every request passes through. It is applied once to the
/// router, so the concurrency limit is shared by every connection.
pub fn layers(
    request_timeout: Duration,
    max_concurrent_requests: usize,
    max_message_bytes: usize,
) -> ServiceBuilder<Layers> {
    ServiceBuilder::new()
        // Tracing is outermost so every request gets a span and a result line,
        // including those shed or timed out by the layers below.
        .layer(TraceLayer)
        // tonic refuses a request over max_message_bytes itself, with a bare
        // OUT_OF_RANGE; this adds its reason (MESSAGE_TOO_LARGE) and the limit,
        // like every other error. Any place above the router would do.
        .layer(TooLargeLayer::new(max_message_bytes))
        // Errors of the layers below become statuses here, above all of them,
        // so clients see RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED, not UNKNOWN.
        .layer(MapErrLayer::new(error_to_status as ErrorToStatus))
        // Load shed sits right above the limit: when the limit has no room, the
        // request is refused at once instead of queueing behind the others.
        .layer(LoadShedLayer::new())
        // The limit bounds requests in flight on the whole node, which bounds
        // the memory and mailbox slots that a burst can take.
        .layer(ConcurrencyLimitLayer::new(max_concurrent_requests))
        // The timeout is innermost: it bounds the time a handler runs, not the
        // time spent above it (there is no waiting for the limit: it sheds).
        .layer(DeadlineLayer { timeout: request_timeout })
}

/// Requests that may run longer than the request timeout: a planned shard
/// move and a node drain take seconds to minutes (bounded by their own
/// limits and the caller's deadline).
const LONG_PATHS: [&str; 2] = ["/atp.v1.AdminService/MoveShard", "/atp.v1.AdminService/DrainNode"];

/// Bounds the time a handler runs (the request timeout), except for
/// MoveShard and DrainNode; an overrun is tower's `Elapsed`.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, timeout: self.timeout }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, RequestBody> Service<http::Request<RequestBody>> for Deadline<S>
where
    S: Service<http::Request<RequestBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let long = LONG_PATHS.contains(&request.uri().path());
        let response = self.inner.call(request);
        let timeout = self.timeout;
        Box::pin(async move {
            if long {
                return response.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, response).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(tower::timeout::error::Elapsed::new()) as BoxError),
            }
        })
    }
}

fn error_to_status(error: BoxError) -> BoxError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Box::new(atp_proto::status::overloaded(
            "the node has too many requests in flight; retry later",
        ));
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return Box::new(
            Reason::RequestTimeout.plain("the request took longer than the server allows"),
        );
    }
    error
}

/// Gives tonic's "message too large" refusal (OUT_OF_RANGE, which atp
/// itself never answers) the reason [`Reason::MessageTooLarge`] and the
/// limit as `limit_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct TooLargeLayer {
    max_message_bytes: usize,
}

impl TooLargeLayer {
    /// The layer for a server whose message limit is `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> Layer<S> for TooLargeLayer {
    type Service = TooLarge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TooLarge { inner, max_message_bytes: self.max_message_bytes }
    }
}

/// The service of [`TooLargeLayer`].
#[derive(Clone, Debug)]
pub struct TooLarge<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for TooLarge<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let response = self.inner.call(request);
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let mut response = response.await?;
            explain_too_large(response.headers_mut(), limit);
            Ok(response)
        })
    }
}

/// Adds the reason to a trailers-only OUT_OF_RANGE answer without details.
fn explain_too_large(headers: &mut http::HeaderMap, limit: usize) {
    let out_of_range = i32::from(tonic::Code::OutOfRange).to_string();
    let is_out_of_range =
        headers.get("grpc-status").is_some_and(|code| code == out_of_range.as_str());
    if !is_out_of_range || headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let Some(refused) = Status::from_header_map(headers) else { return };
    let status = Reason::MessageTooLarge.status(
        refused.message(),
        [("limit_bytes", limit.to_string())],
        ErrorDetails::new(),
    );
    if status.add_header(headers).is_err() {
        tracing::debug!("could not add the reason to a message-too-large answer");
    }
}

/// Opens a `grpc` span per request (method name) and logs its result and
/// latency at debug level, like tower-http's default for gRPC. With tracing
/// on, the span's parent is the caller's `traceparent` and it is exported
/// (named after the method); with metrics on, the request is counted by
/// code and its latency recorded when the answer's last byte is sent
/// (`crate::telemetry`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Trace<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + ErrorCode,
{
    type Response = http::Response<MeteredBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        let span = tracing::debug_span!(
            "grpc",
            method = %path,
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::adopt_parent(&span, request.headers());
        let mut meter = telemetry::metrics_enabled().then(|| RequestMeter::start(path));
        let started = Instant::now();
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorded = span.clone();
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = response.await;
                let elapsed_us = started.elapsed().as_micros();
                match result {
                    // An error status travels in the headers ("trailers only");
                    // a reply without one is OK (its trailers come later).
                    Ok(response) => {
                        let code = telemetry::grpc_code(response.headers());
                        recorded.record("rpc.grpc.status_code", code.unwrap_or(0));
                        tracing::debug!(code = code.unwrap_or(0), elapsed_us, "request finished");
                        if let Some(meter) = meter.as_mut() {
                            meter.routed();
                            // A trailers-only answer (an error status in the
                            // headers) is done: its empty body may never be read.
                            if let Some(code) = code {
                                meter.finish(code);
                            }
                        }
                        Ok(response.map(|body| MeteredBody::new(body, meter)))
                    }
                    Err(error) => {
                        let code = error.grpc_code();
                        recorded.record("rpc.grpc.status_code", code);
                        if let Some(meter) = meter.as_mut() {
                            meter.finish(code);
                        }
                        tracing::debug!(%error, elapsed_us, "request failed");
                        Err(error)
                    }
                }
            },
            span,
        ))
    }
}

/// The gRPC code an error of the layers below stands for (they are all
/// statuses once `error_to_status` has run; anything else is UNKNOWN).
pub trait ErrorCode {
    /// The code's number.
    fn grpc_code(&self) -> usize;
}

impl ErrorCode for BoxError {
    fn grpc_code(&self) -> usize {
        self.downcast_ref::<Status>().map_or(2, |status| status.code() as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::ServiceExt;

    use super::*;

    type Request = http::Request<()>;
    type Response = http::Response<()>;

    fn never_answers(_: Request) -> std::future::Pending<Result<Response, Infallible>> {
        std::future::pending()
    }

    fn status_of(error: BoxError) -> Status {
        *error.downcast::<Status>().expect("the layers turn errors into statuses")
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_gets_deadline_exceeded() {
        let service = layers(Duration::from_millis(10), 4, 1024).service_fn(never_answers);
        let error = service.oneshot(Request::new(())).await.expect_err("timed out");
        assert_eq!(status_of(error).code(), Code::DeadlineExceeded);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_over_the_limit_are_shed_at_once() {
        let mut service = layers(Duration::from_secs(60), 1, 1024).service_fn(never_answers);
        let in_flight = service.ready().await.expect("ready").call(Request::new(()));
        let shed = service.ready().await.expect("ready").call(Request::new(())).await;
        assert_eq!(status_of(shed.expect_err("shed")).code(), Code::ResourceExhausted);
        drop(in_flight);
        let again = service.ready().await.expect("ready").call(Request::new(()));
        let timed_out = again.await.expect_err("room again, then the timeout");
        assert_eq!(status_of(timed_out).code(), Code::DeadlineExceeded);
    }
}
