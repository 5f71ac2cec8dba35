//! The gRPC face of an atp node.
//!
//! Three tonic services over one [`atp_shard::Node`] — [`AvailabilityApi`],
//! [`ConfigApi`] and [`AdminApi`] — plus gRPC health and server reflection
//! (v1 and v1alpha), behind one tower layer stack ([`layers`]: tracing, load
//! shedding, a concurrency limit and a request timeout). Handlers hold request
//! logic only: convert the message with `atp-proto`, call the node, convert
//! the answer. Node errors become statuses through [`node_status`].
//!
//! [`serve`] runs it all on a bound listener until a shutdown future
//! resolves, then stops accepting, finishes requests in flight (up to a grace
//! period) and returns.

mod admin;
mod allocate;
mod availability;
pub mod cluster_catalog;
mod config_service;
mod error;
mod fan_out;
mod fence;
pub mod forward;
mod handoff;
mod kits;
mod late_bind;
pub mod layers;
mod listing;
mod peer;
mod reassign;
mod rebind;
mod reserved;
pub mod telemetry;
pub mod watch_availability;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use atp_proto::internal::peer_service_server::PeerServiceServer;
use atp_proto::v1;
use atp_proto::v1::admin_service_server::AdminServiceServer;
use atp_proto::v1::availability_service_server::AvailabilityServiceServer;
use atp_proto::v1::config_service_server::ConfigServiceServer;
use atp_shard::Node;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use admin::{AdminApi, DEFAULT_DRAIN_PARALLEL, shard_info_message};
pub use availability::AvailabilityApi;
pub use cluster_catalog::{CatalogSync, CatalogWriter, ClusterCatalog, start_cluster_catalog};
pub use config_service::ConfigApi;
pub use error::node_status;
pub use fence::{
    ClusterView, EPOCH_HEADER, Fence, Peer, Route, Touched, carried_epoch, refusal_status,
};
pub use handoff::{
    ClusterMover, Entered, INSTALL_CHUNK_BYTES, MAX_DRAIN_PARALLEL, MAX_INSTALL_BYTES, MOVE_WAIT,
    MoveGate, ShardMover, spawn_rebalancer,
};
pub use listing::LIST_SHARDS_HEADER;
pub use peer::{ClusterPeers, MAX_OPS_PER_CALL, PeerApi};
pub use reassign::{
    ClusterReassigner, REASSIGN_ETCD_TIMEOUT_MS, ShardReassigner, not_a_cluster_status,
    reassign_status, target_name,
};

/// The epoch every reply carries on a single node (a cluster fences stale
/// owners with real ones). Same value as `atp_shard`'s single-node epoch.
pub const SINGLE_NODE_EPOCH: u64 = 1;

/// The names of the atp services, as health checks and reflection know them.
pub const SERVICE_NAMES: [&str; 3] = [
    <AvailabilityServiceServer<AvailabilityApi> as NamedService>::NAME,
    <ConfigServiceServer<ConfigApi> as NamedService>::NAME,
    <AdminServiceServer<AdminApi> as NamedService>::NAME,
];

/// Limits of the gRPC server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Longest time one request may run before it gets DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Requests in flight on the node; more are refused with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// Largest request message accepted; a larger one gets a clean error.
    pub max_message_bytes: usize,
    /// After shutdown is asked for, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// WatchAvailability: the resume window and the pending bound.
    pub watch: watch_availability::WatchSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 4096,
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            watch: watch_availability::WatchSettings::default(),
        }
    }
}

/// What a node in cluster mode serves through etcd rather than itself.
#[derive(Clone)]
pub struct ClusterApis {
    /// Where the ConfigService writes locations and channels.
    pub catalog: Arc<dyn CatalogWriter>,
    /// What runs AdminService.ReassignShards.
    pub reassigner: Arc<dyn ShardReassigner>,
    /// What runs AdminService.MoveShard at a shard's owner.
    pub mover: Arc<dyn ShardMover>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not read the file descriptor sets.
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves every service on `listener` until `shutdown` resolves; then marks
/// the services NOT_SERVING, stops accepting, lets requests in flight finish
/// (at most `config.shutdown_grace`) and returns. The node is left running:
/// the caller stops it.
pub async fn serve(
    node: Node,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_fenced(node, Fence::SingleNode, listener, config, shutdown).await
}

/// [`serve`], answering only for the shards `fence` admits (cluster mode).
pub async fn serve_fenced(
    node: Node,
    fence: Fence,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_cluster(node, fence, None, listener, config, shutdown).await
}

/// [`serve_fenced`], with the ConfigService's upserts and the
/// AdminService's ReassignShards going through `cluster` when given
/// (cluster mode: the configuration and the assignment live in etcd).
pub async fn serve_cluster(
    node: Node,
    fence: Fence,
    cluster: Option<ClusterApis>,
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the node has recovered its state, and again once a
    // durable write failed (the node then takes no writes until restarted).
    let initial = if node.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
    set_status(&health, initial).await;
    let watcher = {
        let (health, node) = (health.clone(), node.clone());
        tokio::spawn(async move {
            node.wait_ready().await;
            set_status(&health, ServingStatus::Serving).await;
            let mut failure = node.failure();
            if failure.wait_for(Option::is_some).await.is_ok() {
                set_status(&health, ServingStatus::NotServing).await;
            }
        })
    };

    let limit = config.max_message_bytes;
    let forwarder = forward::Forwarder::default();
    let (stop_streams, streams_stopping) = watch::channel(false);
    let availability = AvailabilityServiceServer::new(
        AvailabilityApi::with_fence(node.clone(), fence.clone())
            .with_forwarder(forwarder.clone())
            .with_watch(config.watch)
            .with_stopping(streams_stopping.clone()),
    )
    .max_decoding_message_size(limit);
    let configuration = ConfigServiceServer::new(match &cluster {
        Some(cluster) => ConfigApi::with_cluster(node.clone(), Arc::clone(&cluster.catalog)),
        None => ConfigApi::new(node.clone()),
    })
    .max_decoding_message_size(limit);
    // Cluster mode: other nodes' ops for shards served here come in through
    // the PeerService (the caller gives the node its `ClusterPeers`).
    let peer_service = matches!(fence, Fence::Cluster(_)).then(|| {
        PeerServiceServer::new(PeerApi::new(node.clone(), fence.clone()))
            .max_decoding_message_size(limit)
    });
    let admin =
        AdminApi::with_fence(node, fence).with_forwarder(forwarder).with_stopping(streams_stopping);
    let admin = match cluster {
        Some(cluster) => admin.with_reassigner(cluster.reassigner).with_mover(cluster.mover),
        None => admin,
    };
    let admin = AdminServiceServer::new(admin).max_decoding_message_size(limit);

    // HTTP/2 flow control (issue 8, measured in docs/BENCHMARKS.md): larger
    // initial windows. No adaptive window and no stream limit: with either,
    // overload reached clients as CANCELLED/UNKNOWN instead of the
    // concurrency layer's RESOURCE_EXHAUSTED (the flash-sale test).
    let router = Server::builder()
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .layer(layers::layers(
            config.request_timeout,
            config.max_concurrent_requests,
            config.max_message_bytes,
        ))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        // grpcurl before 1.9 speaks only v1alpha.
        .add_service(reflection().build_v1alpha()?)
        .add_service(availability)
        .add_service(configuration)
        .add_service(admin)
        .add_optional_service(peer_service);

    // Without TCP_NODELAY small replies wait for Nagle's algorithm: p99 goes
    // from ~4 ms to ~44 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping, stopping_seen) = oneshot::channel::<()>();
    let watcher_abort = watcher.abort_handle();
    let signal = async move {
        shutdown.await;
        watcher_abort.abort();
        tracing::info!("stopping: no new connections, finishing requests in flight");
        set_status(&health, ServingStatus::NotServing).await;
        // Open WatchShardMap streams end now (they would hold shutdown up).
        stop_streams.send_replace(true);
        let _ = stopping.send(());
    };
    let grace = config.shutdown_grace;
    let grace_over = async move {
        match stopping_seen.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The signal future was dropped: serving ended by itself.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, signal) => served?,
        () = grace_over => {
            tracing::warn!(grace_ms = grace.as_millis(), "requests still open after the shutdown grace; closing them");
        }
    }
    watcher.abort();
    Ok(())
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc error details, so reflection clients can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Sets the whole server ("") and every atp service to `status`.
async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::admin_service_client::AdminServiceClient;
    use atp_shard::{Clock, NodeConfig};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    type Server = tokio::task::JoinHandle<Result<(), ServeError>>;

    /// Serves `node` on a free port; returns a connected channel, the
    /// shutdown trigger and the server task.
    async fn start(node: &Node) -> (tonic::transport::Channel, oneshot::Sender<()>, Server) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve(node.clone(), listener, ServerConfig::default(), shutdown));
        let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
            .expect("a valid uri")
            .connect()
            .await
            .expect("connect");
        (channel, stop, server)
    }

    /// Triggers shutdown; the server must return cleanly within 10 s.
    async fn stop_server(stop: oneshot::Sender<()>, server: Server) {
        stop.send(()).expect("the server is waiting");
        let served = tokio::time::timeout(Duration::from_secs(10), server).await;
        served.expect("serve returns after shutdown").expect("task").expect("served cleanly");
    }

    #[tokio::test]
    async fn serves_until_shutdown_then_returns() {
        let node = Node::start(NodeConfig::default(), Clock::system());
        let (channel, stop, server) = start(&node).await;
        let mut health = HealthClient::new(channel.clone());
        for service in SERVICE_NAMES.into_iter().chain([""]) {
            let request = HealthCheckRequest { service: service.to_owned() };
            let response = health.check(request).await.expect("health check").into_inner();
            assert_eq!(response.status(), Serving, "{service:?}");
        }
        let mut admin = AdminServiceClient::new(channel);
        let request = v1::GetShardRequest { target: Some(v1::get_shard_request::Target::Shard(3)) };
        let shard = admin.get_shard(request).await.expect("get shard").into_inner().shard;
        assert_eq!(shard.expect("shard info").node, "atpd-0");

        stop_server(stop, server).await;
        node.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_serving_until_the_node_has_recovered() {
        let store = std::sync::Arc::new(atp_store::MemoryStore::new());
        let node = Node::open(NodeConfig::default(), Clock::system(), store);
        let (channel, stop, server) = start(&node).await;
        let mut health = HealthClient::new(channel.clone());
        let status = |mut health: HealthClient<tonic::transport::Channel>| async move {
            let request = HealthCheckRequest { service: String::new() };
            health.check(request).await.expect("health check").into_inner().status()
        };
        assert_eq!(status(health.clone()).await, NotServing);
        let mut availability =
            v1::availability_service_client::AvailabilityServiceClient::new(channel.clone());
        let request = v1::GetReservationRequest { reservation_id: "r-1".into() };
        let refused = availability.get_reservation(request).await.expect_err("recovering");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

        node.recover().await.expect("recovers");
        let mut seen = NotServing;
        for _ in 0..500 {
            seen = status(health.clone()).await;
            if seen == Serving {
                break;
            }
            tokio::task::yield_now().await;
            let _ = health.check(HealthCheckRequest { service: String::new() }).await;
        }
        assert_eq!(seen, Serving);
        stop_server(stop, server).await;
        node.shutdown();
    }
}
