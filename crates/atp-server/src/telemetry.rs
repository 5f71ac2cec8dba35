//! Telemetry: Prometheus metrics and the trace context of requests.
//!
//! **Metrics** (docs/OPERATIONS.md, "Metrics and the dashboard") go through
//! the `metrics` facade; [`install_metrics`] installs the Prometheus
//! recorder and [`serve_metrics`] answers `GET /metrics`. Without a
//! recorder every handle is a no-op, and the per-request bookkeeping of
//! [`crate::layers::TraceLayer`] is skipped altogether. Gauges of the node's
//! state (mailboxes, log, shards, lease) are read when scraped.
//!
//! **Traces**: the OpenTelemetry SDK and its OTLP exporter are set up by
//! atpd; this module only carries W3C trace context across hops. With
//! tracing on ([`enable_tracing`]), a request's span takes its parent from
//! the incoming `traceparent` (`extract`), and every node-to-node call
//! carries the current span's context ([`inject`]). With tracing off both
//! are a load of one flag.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atp_cluster::LeaseState;
use atp_core::hash::SHARD_COUNT;
use atp_shard::Node;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector};
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::fence::Fence;

static TRACING: AtomicBool = AtomicBool::new(false);
static METRICS: AtomicBool = AtomicBool::new(false);

/// Latency buckets (seconds) of every `_seconds` histogram: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of `atp_group_commit_batches` (shard batches per commit).
const GROUP_BUCKETS: [f64; 11] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Turns on trace context: incoming `traceparent` headers become parents,
/// and node-to-node calls carry the current span's context. atpd calls it
/// once it has installed the OpenTelemetry layer and the W3C propagator.
pub fn enable_tracing() {
    TRACING.store(true, Ordering::Release);
}

/// Whether trace context is carried ([`enable_tracing`]).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// and turns on the per-request metrics; the handle renders the text
/// format. An error if a recorder is already installed.
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("atp_group_commit_batches".to_owned()),
                &GROUP_BUCKETS,
            )
        })
        .map_err(|error| error.to_string())?
        .install_recorder()
        .map_err(|error| error.to_string())?;
    METRICS.store(true, Ordering::Release);
    metrics::describe_counter!(
        "atp_grpc_server_handled_total",
        "gRPC requests finished, by service, method and code"
    );
    metrics::describe_histogram!(
        "atp_grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "gRPC request latency until the last byte of the answer, by service and method"
    );
    metrics::describe_histogram!(
        "atp_fsync_duration_seconds",
        metrics::Unit::Seconds,
        "One durable store commit (write and fdatasync)"
    );
    metrics::describe_histogram!(
        "atp_group_commit_batches",
        "Shard batches written by one durable commit (group-commit size)"
    );
    metrics::gauge!("atp_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Whether the per-request metrics are on ([`install_metrics`]).
pub(crate) fn metrics_enabled() -> bool {
    METRICS.load(Ordering::Relaxed)
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until the
/// process ends; gauges of `node`'s state are read at each scrape.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    node: Node,
    fence: Fence,
) -> std::io::Result<()> {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let render = move || {
        let (handle, node, fence) = (handle.clone(), node.clone(), fence.clone());
        async move {
            collect_gauges(&node, &fence);
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                handle.render(),
            )
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    axum::serve(listener, app).await
}

/// Sets the gauges that are read from the node's state, not counted.
fn collect_gauges(node: &Node, fence: &Fence) {
    let (depth, deepest) = node.mailbox_depths();
    metrics::gauge!("atp_mailbox_depth").set(depth as f64);
    metrics::gauge!("atp_mailbox_depth_max").set(deepest as f64);
    metrics::gauge!("atp_mailbox_capacity").set(node.config().mailbox_capacity as f64);
    if let Some(log) = node.log_stats() {
        metrics::gauge!("atp_log_bytes").set(log.log_bytes as f64);
        metrics::gauge!("atp_log_segments").set(log.segments as f64);
        metrics::gauge!("atp_checkpoint_bytes").set(log.checkpoint_bytes as f64);
    }
    metrics::gauge!("atp_writes_refused").set(if node.writes_refused() { 1.0 } else { 0.0 });
    metrics::gauge!("atp_checkpoint_age_seconds").set(node.checkpoint_age_ms() as f64 / 1000.0);
    let owned = (0..SHARD_COUNT).filter(|shard| node.serves(*shard)).count();
    metrics::gauge!("atp_shards_owned").set(owned as f64);
    let (moving, held, remaining) = match fence {
        Fence::SingleNode => (0, true, None),
        Fence::Cluster(cluster) => {
            let now = tokio::time::Instant::now();
            let (held, remaining) = match &*cluster.lease.borrow() {
                LeaseState::Held { deadline, .. } if now < *deadline => {
                    (true, Some(deadline.saturating_duration_since(now)))
                }
                _ => (false, Some(Duration::ZERO)),
            };
            (cluster.moves.moving().len(), held, remaining)
        }
    };
    metrics::gauge!("atp_shard_moves_in_progress").set(moving as f64);
    metrics::gauge!("atp_lease_held").set(if held { 1.0 } else { 0.0 });
    if let Some(remaining) = remaining {
        metrics::gauge!("atp_lease_remaining_seconds").set(remaining.as_secs_f64());
    }
}

/// The gRPC code names, by number (0..=16), as the `grpc_code` label.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const UNIMPLEMENTED: usize = 12;
const CANCELLED: usize = 1;

/// One method's metric handles: its latency histogram and a counter per
/// code, registered on first use.
struct MethodMetrics {
    service: String,
    method: String,
    latency: Histogram,
    codes: [OnceLock<Counter>; 17],
}

impl MethodMetrics {
    fn new(service: &str, method: &str) -> Self {
        let latency = metrics::histogram!(
            "atp_grpc_server_handling_seconds",
            "grpc_service" => service.to_owned(),
            "grpc_method" => method.to_owned()
        );
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            latency,
            codes: Default::default(),
        }
    }

    fn finished(&self, code: usize, elapsed: Duration) {
        // A number gRPC does not define is UNKNOWN.
        let code = if code < CODE_NAMES.len() { code } else { 2 };
        self.latency.record(elapsed);
        self.codes[code]
            .get_or_init(|| {
                metrics::counter!(
                    "atp_grpc_server_handled_total",
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone(),
                    "grpc_code" => CODE_NAMES[code]
                )
            })
            .increment(1);
    }
}

/// The handles of every method seen, by path. A path is added only when
/// the router answered it (`routed`) with something but UNIMPLEMENTED:
/// those are the methods of the proto, a bounded set. Any other path (one
/// refused by a layer above the router, such as load shedding, before the
/// router saw it) uses the entry of a path already added, else shares
/// `unknown`: a client cannot grow the label set.
fn method_metrics(path: &str, code: usize, routed: bool) -> Arc<MethodMetrics> {
    static TABLE: OnceLock<RwLock<HashMap<String, Arc<MethodMetrics>>>> = OnceLock::new();
    static UNKNOWN: OnceLock<Arc<MethodMetrics>> = OnceLock::new();
    let table = TABLE.get_or_init(Default::default);
    if let Some(found) = table.read().expect("never poisoned").get(path) {
        return Arc::clone(found);
    }
    let split = path.strip_prefix('/').and_then(|path| path.split_once('/'));
    match split {
        Some((service, method)) if routed && code != UNIMPLEMENTED && path.len() <= 256 => {
            let mut table = table.write().expect("never poisoned");
            let entry = table
                .entry(path.to_owned())
                .or_insert_with(|| Arc::new(MethodMetrics::new(service, method)));
            Arc::clone(entry)
        }
        _ => Arc::clone(UNKNOWN.get_or_init(|| Arc::new(MethodMetrics::new("unknown", "unknown")))),
    }
}

/// Counts one request when its answer ends (or is dropped unfinished:
/// CANCELLED). Made by [`crate::layers::TraceLayer`] when metrics are on.
pub(crate) struct RequestMeter {
    path: String,
    started: Instant,
    done: bool,
    /// Whether the router answered (a response, not a layer's error).
    routed: bool,
}

/// The gauge of requests in flight (registered on first use).
fn in_flight() -> &'static metrics::Gauge {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!("atp_grpc_server_in_flight_requests"))
}

impl RequestMeter {
    pub(crate) fn start(path: &str) -> Self {
        in_flight().increment(1.0);
        Self { path: path.to_owned(), started: Instant::now(), done: false, routed: false }
    }

    /// The router answered: the path may become a label of its own.
    pub(crate) fn routed(&mut self) {
        self.routed = true;
    }

    /// The request finished with `code` (a gRPC status code number).
    pub(crate) fn finish(&mut self, code: usize) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        in_flight().decrement(1.0);
        method_metrics(&self.path, code, self.routed).finished(code, self.started.elapsed());
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// The gRPC code number in `headers`' `grpc-status`, if there is one.
pub(crate) fn grpc_code(headers: &http::HeaderMap) -> Option<usize> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A response body that tells its `RequestMeter` the request's code when
/// the trailers pass (or the body ends without them: OK); dropped before
/// that, the request counts as CANCELLED.
pub struct MeteredBody<B> {
    inner: B,
    meter: Option<RequestMeter>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for MeteredBody<B> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MeteredBody")
            .field("inner", &self.inner)
            .field("metered", &self.meter.is_some())
            .finish()
    }
}

impl<B> MeteredBody<B> {
    pub(crate) fn new(inner: B, meter: Option<RequestMeter>) -> Self {
        Self { inner, meter }
    }
}

impl<B> http_body::Body for MeteredBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(context);
        if let Some(meter) = this.meter.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        meter.finish(grpc_code(trailers).unwrap_or(0));
                    }
                }
                Poll::Ready(Some(Err(_))) => meter.finish(2),
                Poll::Ready(None) => meter.finish(0),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The trace context in `headers` (W3C `traceparent`), with tracing on.
pub(crate) fn extract(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    if !tracing_enabled() {
        return None;
    }
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    Some(opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    }))
}

/// Makes `span`'s parent the trace context of `headers`, with tracing on.
pub(crate) fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if let Some(parent) = extract(headers) {
        // A disabled span (filtered out) has no context to set: nothing lost.
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into `metadata`
/// (`traceparent`, replacing a caller's), with tracing on: every
/// node-to-node call does this, so a request is one trace across nodes.
pub fn inject(metadata: &mut MetadataMap) {
    if !tracing_enabled() {
        return;
    }
    struct Metadata<'a>(&'a mut MetadataMap);
    impl Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            let (Ok(key), Ok(value)) =
                (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_str()))
            else {
                return;
            };
            self.0.insert(key, value);
        }
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Metadata(metadata));
    });
}
