//! `atpd`: one atp node serving the `atp.v1` gRPC API.
//!
//! Loads the [`config::Config`] (optional TOML file from `--config` or
//! `ATP_CONFIG`, then `ATP_<KEY>` variables), starts logging to stderr, opens
//! the durable store in `data_dir`, recovers every shard from it (health says
//! NOT_SERVING and requests get UNAVAILABLE until then), and serves until
//! SIGTERM or Ctrl-C; then (cluster mode) it moves its shards to the other
//! nodes (`drain_timeout_ms`), stops accepting, lets requests in flight
//! finish, stops the node and exits 0.
//!
//! If a durable write fails, atpd exits at once with status 1 (never
//! retrying the fsync, never acknowledging the batch): its supervisor restarts
//! it and recovery reloads what the store holds.
//!
//! Once it accepts connections it prints `atpd listening on IP:PORT` on
//! stderr, whatever the log filter, so scripts and tests can find the port
//! when `listen_addr` asks for port 0.

mod cluster;
mod config;
mod telemetry;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use atp_shard::{Clock, Node, WriteLogConfig};
use atp_store::{LogOptions, LogStore};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::Cluster;

/// Cluster mode: the write log in the data directory (one line per durable
/// shard batch: shard, epoch, node id, host ms, sequence), for the epoch
/// checker of the tests.
const WRITE_LOG_FILE: &str = "writes.log";
use crate::config::{CONFIG_FILE_ENV, Config};
use atp_server::forward::Forwarder;
use atp_server::{ClusterPeers, DEFAULT_DRAIN_PARALLEL, Fence};

/// Command line: everything else is configuration (file or environment).
#[derive(Debug, Parser)]
#[command(name = "atpd", version, about = "An atp node: available-to-promise over gRPC.")]
struct Cli {
    /// TOML configuration file (keys in docs/CONFIGURATION.md); `ATP_<KEY>`
    /// environment variables override it.
    #[arg(long, value_name = "FILE", env = CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Load and check the configuration exactly as at start-up, then exit:
    /// 0 (`atpd: configuration ok` on stderr) or 2 with every problem.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("atpd: {error:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        for variable in &loaded.unknown_variables {
            eprintln!("atpd: warning: {variable} names no config key (ignored)");
        }
        eprintln!("atpd: configuration ok");
        return ExitCode::SUCCESS;
    }
    // Cluster mode with tracing: spans name the node by its id, which a
    // first start writes only once the store has opened the directory.
    let trace_instance = (loaded.config.is_cluster() && !loaded.config.otlp_endpoint.is_empty())
        .then(|| cluster::known_node_id(&loaded.config).unwrap_or_else(cluster::new_node_id));
    let instance = trace_instance.clone().unwrap_or_else(|| loaded.config.node_name.clone());
    let tracer = match telemetry::start_tracing(&loaded.config, instance) {
        Ok(tracer) => tracer,
        Err(error) => {
            eprintln!("atpd: {error:#}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&loaded.config.log, tracer.as_ref());
    for variable in &loaded.unknown_variables {
        tracing::warn!(%variable, "ignoring an environment variable that names no config key");
    }
    let result = run(loaded.config, trace_instance).await;
    if let Some(tracer) = tracer {
        // Sends the spans still in the batch before exiting.
        if let Err(error) = tracer.shutdown() {
            eprintln!("atpd: exporting the last trace spans failed: {error}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "atpd failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs the node; `trace_instance` is the node id the trace exporter was
/// given (cluster mode, tracing on), stored as the node's id if the data
/// directory has none yet.
async fn run(config: Config, trace_instance: Option<String>) -> anyhow::Result<()> {
    // Install the handlers before serving, so an early SIGTERM is not lost.
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let signalled = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        }
    };

    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding {}", config.listen_addr))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let metrics = match config.metrics_addr().map_err(anyhow::Error::msg)? {
        Some(metrics_addr) => {
            let listener = TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {metrics_addr}"))?;
            let handle = atp_server::telemetry::install_metrics().map_err(anyhow::Error::msg)?;
            Some((listener, handle))
        }
        None => None,
    };
    let store = LogStore::open(&config.data_dir, LogOptions::default())
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    // Cluster mode: the node id is known before the node opens, so its
    // write log names it.
    let node_id = if config.is_cluster() {
        Some(cluster::node_id(&config, trace_instance.as_deref())?)
    } else {
        None
    };
    let mut node_config = config.node_config();
    node_config.write_log = node_id.as_ref().map(|node_id| WriteLogConfig {
        node_id: node_id.clone(),
        path: config.data_dir.join(WRITE_LOG_FILE),
    });
    let node = Node::open(node_config, node_clock(), Arc::new(store));
    let cluster = if let Some(node_id) = node_id {
        let advertised = if config.advertised_addr.is_empty() {
            address.to_string()
        } else {
            config.advertised_addr.clone()
        };
        let cluster = Cluster::start(&config, &node, node_id, &advertised).await?;
        tracing::info!(
            node_id = %cluster.node_id,
            advertised = %advertised,
            cluster = %config.cluster_name,
            etcd = %config.etcd_endpoints().join(","),
            initial_members = config.initial_members,
            reassign_grace_ms = config.reassign_grace_ms,
            "cluster mode: joining"
        );
        Some(cluster)
    } else {
        None
    };
    // Cluster mode: a signalled node first moves its shards to the others
    // (planned handoffs, while it still serves), then stops.
    let drain_limit = Duration::from_millis(config.drain_timeout_ms);
    let mover = cluster.as_ref().map(|cluster| Arc::clone(&cluster.apis.mover));
    let shutdown = async move {
        signalled.await;
        let Some(mover) = mover else { return };
        if drain_limit.is_zero() {
            return;
        }
        tracing::info!(limit_ms = drain_limit.as_millis() as u64, "draining before exit");
        match tokio::time::timeout(drain_limit, mover.drain(DEFAULT_DRAIN_PARALLEL)).await {
            Ok(Ok(drained)) => tracing::info!(
                moved = drained.moves.len(),
                failed = drained.failures.len(),
                elapsed_ms = drained.elapsed_ms,
                "drained before exit"
            ),
            Ok(Err(status)) => {
                tracing::warn!(error = %status.message(), "could not drain before exit")
            }
            Err(_) => {
                tracing::warn!("the drain did not finish in time; exiting with the shards left")
            }
        }
    };
    let fence = cluster.as_ref().map_or(Fence::SingleNode, |cluster| cluster.fence.clone());
    let apis = cluster.as_ref().map(|cluster| cluster.apis.clone());
    // Cluster mode: line ops for shards other nodes serve go to them, and
    // recovery counts only this node's assigned shards as evidence.
    let owned = match &cluster {
        Some(cluster) => {
            node.set_peers(ClusterPeers::new(fence.clone(), Forwarder::default()));
            let owned = cluster.assigned_shards().await?;
            tracing::info!(
                assigned = owned.as_ref().map_or(-1, |owned| owned.len() as i64),
                "recovering this node's assigned shards (-1: no assignment yet, all)"
            );
            owned
        }
        None => None,
    };
    tracing::info!(
        %address,
        node = %config.node_name,
        data_dir = %config.data_dir.display(),
        mailbox_capacity = config.mailbox_capacity,
        batch_max = config.batch_max,
        reservation_ttl_default_s = config.reservation_ttl_default_s,
        max_concurrent_requests = config.max_concurrent_requests,
        request_timeout_ms = config.request_timeout_ms,
        "atpd started"
    );
    if let Some((listener, handle)) = metrics {
        let metrics_address = listener.local_addr().context("reading the metrics address")?;
        tokio::spawn(atp_server::telemetry::serve_metrics(
            listener,
            handle,
            node.clone(),
            fence.clone(),
        ));
        tracing::info!(%metrics_address, "serving Prometheus metrics at /metrics");
        // Like the line below, for scripts and tests (port 0).
        eprintln!("atpd metrics on {metrics_address}");
    }
    // The readiness line scripts and tests wait for; printed whatever the log filter.
    eprintln!("atpd listening on {address}");

    let serving = atp_server::serve_cluster(
        node.clone(),
        fence,
        apis,
        listener,
        config.server_config(),
        shutdown,
    );
    tokio::pin!(serving);
    tokio::select! {
        recovered = node.recover_owning(owned) => {
            let stats = recovered.context("recovering from the store")?;
            tracing::info!(
                elapsed_ms = stats.elapsed.as_millis() as u64,
                load_ms = stats.load.as_millis() as u64,
                positions = stats.positions,
                open_holds = stats.open_holds,
                reservations = stats.reservations,
                redelivered = stats.report.redelivered,
                aborted = stats.report.aborted,
                expired = stats.report.expired,
                "recovered; serving"
            );
        }
        served = &mut serving => {
            served.context("serving gRPC")?;
            tracing::info!("atpd stopped before recovery finished");
            return Ok(());
        }
    }
    let mut failure = node.failure();
    tokio::select! {
        served = &mut serving => {
            if let Some(cluster) = cluster {
                cluster.leave().await;
            }
            node.shutdown();
            served.context("serving gRPC")?;
            tracing::info!("atpd stopped");
            Ok(())
        }
        reason = failure.wait_for(Option::is_some) => {
            let reason = reason.map(|reason| reason.clone().unwrap_or_default()).unwrap_or_default();
            tracing::error!(%reason, "the node failed (a durable write failed or a shard died); exiting so it restarts and recovers");
            std::process::exit(1);
        }
    }
}

/// The system clock, or (a test hook) one that reads
/// `ATP_TEST_CLOCK_START_MS` at start and runs on from there.
fn node_clock() -> Clock {
    match std::env::var("ATP_TEST_CLOCK_START_MS").ok().and_then(|ms| ms.parse().ok()) {
        Some(start_ms) => {
            tracing::warn!(
                start_ms,
                "test hook: the node's clock starts at ATP_TEST_CLOCK_START_MS"
            );
            Clock::starting_at(start_ms)
        }
        None => Clock::system(),
    }
}
