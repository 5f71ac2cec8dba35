//! `atp.v1.ConfigService` over a [`Node`]: locations and channels.

use atp_proto::requests::{parse_channel, parse_location};
use atp_proto::status_of;
use atp_proto::v1;
use atp_proto::v1::config_service_server::ConfigService;
use atp_shard::Node;
use tonic::{Request, Response, Status};

use crate::error::node_status;

/// Configuration set through the API.
#[derive(Clone)]
pub struct ConfigApi {
    node: Node,
}

impl ConfigApi {
    /// The service over `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn upsert_location(
        &self,
        request: Request<v1::UpsertLocationRequest>,
    ) -> Result<Response<v1::UpsertLocationResponse>, Status> {
        let location = parse_location(request.into_inner()).map_err(status_of)?;
        let changed = self.node.upsert_location(location.clone()).await.map_err(node_status)?;
        Ok(Response::new(v1::UpsertLocationResponse { location: Some(location.into()), changed }))
    }

    async fn upsert_channel(
        &self,
        request: Request<v1::UpsertChannelRequest>,
    ) -> Result<Response<v1::UpsertChannelResponse>, Status> {
        let channel = parse_channel(request.into_inner()).map_err(status_of)?;
        let changed = self.node.upsert_channel(channel.clone()).await.map_err(node_status)?;
        Ok(Response::new(v1::UpsertChannelResponse { channel: Some(channel.into()), changed }))
    }

    async fn list_locations(
        &self,
        _request: Request<v1::ListLocationsRequest>,
    ) -> Result<Response<v1::ListLocationsResponse>, Status> {
        let locations = self.node.locations().into_iter().map(Into::into).collect();
        Ok(Response::new(v1::ListLocationsResponse { locations }))
    }

    async fn list_channels(
        &self,
        _request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        let channels = self.node.channels().into_iter().map(Into::into).collect();
        Ok(Response::new(v1::ListChannelsResponse { channels }))
    }
}
