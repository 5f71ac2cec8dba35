//! `atp.v1.ConfigService` over a [`Node`]: locations and channels. On a
//! single node upserts change the node's catalog; in cluster mode they go
//! through a [`CatalogWriter`] (etcd, then applied here: see
//! `cluster_catalog`). Lists read the node's catalog either way.

use atp_proto::requests::{parse_channel, parse_kit, parse_location};
use atp_proto::status_of;
use atp_proto::v1;
use atp_proto::v1::config_service_server::ConfigService;
use std::sync::Arc;

use atp_shard::Node;
use tonic::{Request, Response, Status};

use crate::cluster_catalog::CatalogWriter;
use crate::error::node_status;

/// Configuration set through the API.
#[derive(Clone)]
pub struct ConfigApi {
    node: Node,
    /// Cluster mode: where upserts go instead of the node.
    cluster: Option<Arc<dyn CatalogWriter>>,
}

impl ConfigApi {
    /// The service over `node` (a single node).
    pub fn new(node: Node) -> Self {
        Self { node, cluster: None }
    }

    /// The service over `node` in cluster mode: upserts go through `cluster`.
    pub fn with_cluster(node: Node, cluster: Arc<dyn CatalogWriter>) -> Self {
        Self { node, cluster: Some(cluster) }
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn upsert_location(
        &self,
        request: Request<v1::UpsertLocationRequest>,
    ) -> Result<Response<v1::UpsertLocationResponse>, Status> {
        let location = parse_location(request.into_inner()).map_err(status_of)?;
        let changed = match &self.cluster {
            Some(cluster) => cluster.upsert_location(location.clone()).await?,
            None => self.node.upsert_location(location.clone()).await.map_err(node_status)?,
        };
        Ok(Response::new(v1::UpsertLocationResponse { location: Some(location.into()), changed }))
    }

    async fn upsert_channel(
        &self,
        request: Request<v1::UpsertChannelRequest>,
    ) -> Result<Response<v1::UpsertChannelResponse>, Status> {
        let channel = parse_channel(request.into_inner()).map_err(status_of)?;
        let changed = match &self.cluster {
            Some(cluster) => cluster.upsert_channel(channel.clone()).await?,
            None => self.node.upsert_channel(channel.clone()).await.map_err(node_status)?,
        };
        Ok(Response::new(v1::UpsertChannelResponse { channel: Some(channel.into()), changed }))
    }

    async fn list_locations(
        &self,
        _request: Request<v1::ListLocationsRequest>,
    ) -> Result<Response<v1::ListLocationsResponse>, Status> {
        let locations = self.node.locations().into_iter().map(Into::into).collect();
        Ok(Response::new(v1::ListLocationsResponse { locations }))
    }

    async fn upsert_kit(
        &self,
        request: Request<v1::UpsertKitRequest>,
    ) -> Result<Response<v1::UpsertKitResponse>, Status> {
        let kit = parse_kit(request.into_inner()).map_err(status_of)?;
        let changed = match &self.cluster {
            Some(cluster) => cluster.upsert_kit(kit.clone()).await?,
            None => self.node.upsert_kit(kit.clone()).await.map_err(node_status)?,
        };
        Ok(Response::new(v1::UpsertKitResponse { kit: Some(kit.into()), changed }))
    }

    async fn list_kits(
        &self,
        _request: Request<v1::ListKitsRequest>,
    ) -> Result<Response<v1::ListKitsResponse>, Status> {
        let kits = self.node.kits().into_iter().map(Into::into).collect();
        Ok(Response::new(v1::ListKitsResponse { kits }))
    }

    async fn list_channels(
        &self,
        _request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        let channels = self.node.channels().into_iter().map(Into::into).collect();
        Ok(Response::new(v1::ListChannelsResponse { channels }))
    }
}
