//! Logging and, when `otlp_endpoint` is set, trace export: `tracing` spans
//! of atp-server (one per request, named after its method) go to an
//! OTLP/gRPC collector in batches; W3C trace context is read from incoming
//! requests and carried on every node-to-node call (`atp_server::telemetry`).
//!
//! With tracing off the subscriber is the plain formatter it always was:
//! no OpenTelemetry layer, no per-layer filters, no context carried.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The tracer provider when `otlp_endpoint` is set (None: tracing off).
/// Must run inside the runtime: the exporter's channel lives on it. Spans
/// name the node by `service.instance.id`: `instance` (its cluster node
/// id, else its `node_name`).
pub fn start_tracing(
    config: &Config,
    instance: String,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    if config.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.otlp_endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("otlp_endpoint: cannot export to {}", config.otlp_endpoint))?;
    let resource = Resource::builder()
        .with_service_name("atpd")
        .with_attributes([
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(Some(provider))
}

/// Logs to stderr; `RUST_LOG` wins over the `log` key (checked at load).
/// With `tracer`, atp-server's request spans (and the events in them) are
/// exported too, whatever the log filter.
pub fn init_logging(log: &str, tracer: Option<&SdkTracerProvider>) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.is_empty())
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(log));
    let Some(tracer) = tracer else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
        return;
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("atpd"))
        .with_filter(Targets::new().with_target("atp_server", LevelFilter::DEBUG));
    tracing_subscriber::registry().with(logs).with(spans).init();
    atp_server::telemetry::enable_tracing();
}
