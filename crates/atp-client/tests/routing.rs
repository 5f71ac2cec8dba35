//! Routing by the shard map when the map is wrong: a map that sends every
//! shard to a node refusing `NOT_OWNER`, or to an address where nothing
//! listens, costs the caller a second send to the configured endpoint,
//! never an error. The configured endpoint is a fake AdminService that
//! streams a hand-made map, in front of a real `atpd` (a [`FaultProxy`]
//! serves its AvailabilityService); the "owner" is another proxy of the
//! same node, whose fault the test sets.

mod support;

use std::pin::Pin;
use std::time::Duration;

use atp_client::{Client, Reason, Reserve};
use atp_proto::v1;
use atp_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use atp_proto::v1::availability_service_server::AvailabilityServiceServer;
use atp_testkit::Atpd;
use futures::Stream;
use support::{Fault, FaultProxy, configure, quick_retries};
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A map of a cluster whose every shard `owner` (at `address`) serves
/// under epoch 7.
fn map_to(owner: &str, address: &str) -> v1::GetClusterResponse {
    v1::GetClusterResponse {
        cluster_mode: true,
        cluster: "fake".into(),
        node_id: "front".into(),
        members: vec![v1::ClusterMember {
            node_id: owner.into(),
            address: address.into(),
            lease_state: "held".into(),
            answering: false,
        }],
        shards: (0..1024)
            .map(|shard| v1::ClusterShard {
                shard,
                owner: owner.into(),
                epoch: 7,
                view: v1::ShardView::NotOwned.into(),
            })
            .collect(),
        shard_map_revision: 1,
        shard_map_confirmed: true,
        forwarded_requests: 0,
        moving_shards: Vec::new(),
    }
}

/// Streams whatever map the test sets, again on every change.
#[derive(Clone)]
struct FakeMap {
    map: watch::Sender<v1::GetClusterResponse>,
}

type MapStream = Pin<Box<dyn Stream<Item = Result<v1::WatchShardMapResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for FakeMap {
    type WatchShardMapStream = MapStream;

    async fn watch_shard_map(
        &self,
        _request: Request<v1::WatchShardMapRequest>,
    ) -> Result<Response<MapStream>, Status> {
        let changes = self.map.subscribe();
        let stream = futures::stream::unfold((changes, true), |(mut changes, first)| async move {
            if !first && changes.changed().await.is_err() {
                return None;
            }
            let map = changes.borrow_and_update().clone();
            Some((Ok(v1::WatchShardMapResponse { map: Some(map) }), (changes, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_shards(
        &self,
        _: Request<v1::ListShardsRequest>,
    ) -> Result<Response<v1::ListShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_shard(
        &self,
        _: Request<v1::GetShardRequest>,
    ) -> Result<Response<v1::GetShardResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn query_ledger(
        &self,
        _: Request<v1::QueryLedgerRequest>,
    ) -> Result<Response<v1::QueryLedgerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_cluster(
        &self,
        _: Request<v1::GetClusterRequest>,
    ) -> Result<Response<v1::GetClusterResponse>, Status> {
        Ok(Response::new(self.map.borrow().clone()))
    }

    async fn reassign_shards(
        &self,
        _: Request<v1::ReassignShardsRequest>,
    ) -> Result<Response<v1::ReassignShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn move_shard(
        &self,
        _: Request<v1::MoveShardRequest>,
    ) -> Result<Response<v1::MoveShardResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn drain_node(
        &self,
        _: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// The configured endpoint: the fake map and a forwarding proxy of `atpd`.
async fn front(atpd: &Atpd, map: v1::GetClusterResponse) -> (FakeMap, FaultProxy, String) {
    let fake = FakeMap { map: watch::channel(map).0 };
    let (proxy, _) = FaultProxy::start(atpd, Fault::None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound address");
    let router = tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(fake.clone()))
        .add_service(AvailabilityServiceServer::new(proxy.clone()));
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    (fake, proxy, format!("http://{address}"))
}

#[tokio::test]
async fn a_map_behind_or_pointing_nowhere_costs_a_second_send_not_an_error() {
    let atpd = Atpd::start(&[]).await;
    let setup = support::client(&atpd.endpoint(), quick_retries(3));
    configure(&setup, &["sku-r"], 1_000).await;
    let (owner, owner_address) = FaultProxy::start(&atpd, Fault::Refuse(Reason::NotOwner)).await;
    let (fake, front_proxy, endpoint) = front(&atpd, map_to("b", &owner_address.to_string())).await;
    let client = Client::builder([endpoint])
        .deadline(Duration::from_secs(30))
        .retry(quick_retries(1))
        .build()
        .expect("client");
    assert!(client.wait_for_shard_map(Duration::from_secs(20)).await, "no map");
    assert!(client.is_routed());
    let reserve = |n: u32| {
        let client = client.clone();
        async move {
            let id = format!("routed-{n}");
            let held =
                client.reserve(Reserve::new(id.as_str(), "web").line("sku-r", "dc-1", 1)).await;
            assert!(held.is_ok(), "{id}: {held:?}");
        }
    };

    // The "owner" refuses NOT_OWNER: each call is sent there, then to the
    // configured endpoint, with one attempt and no error.
    for n in 0..5 {
        reserve(n).await;
    }
    assert_eq!((owner.attempts(), front_proxy.attempts()), (5, 5));

    // The owner serves: calls go there only.
    owner.set_fault(Fault::None);
    for n in 5..10 {
        reserve(n).await;
    }
    assert_eq!((owner.attempts(), front_proxy.attempts()), (10, 5));

    // A map naming an address where nothing listens: the calls still
    // succeed through the configured endpoint.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    fake.map.send_replace(map_to("c", &closed.to_string()));
    let moved = tokio::time::timeout(Duration::from_secs(20), async {
        // The next map is installed when a call stops reaching `owner`.
        loop {
            let before = owner.attempts();
            reserve(100 + before).await;
            if owner.attempts() == before {
                return;
            }
        }
    })
    .await;
    assert!(moved.is_ok(), "the new map was never followed");
    let through_front = front_proxy.attempts();
    for n in 200..205 {
        reserve(n).await;
    }
    assert_eq!(front_proxy.attempts(), through_front + 5);
    assert!(client.is_routed(), "the map still routes (around the dead owner)");
}
