//! The one place that knows how requests reach a node: a pool of HTTP/2
//! connections per endpoint, picked round-robin. A shard map will later
//! choose the endpoint here; callers above only ask for a channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Connections to one node.
#[derive(Debug)]
struct Node {
    uri: String,
    connections: Vec<Channel>,
}

/// The pool behind a [`crate::Client`]; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    nodes: Arc<[Node]>,
    next: Arc<AtomicUsize>,
}

impl Transport {
    /// `connections_per_endpoint` lazily connected channels to each of
    /// `endpoints` (`http://host:port`, or `host:port` meaning http).
    pub(crate) fn new(
        endpoints: &[String],
        connections_per_endpoint: usize,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::Config("no endpoint given".to_owned()));
        }
        let mut nodes = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let uri = normalize(endpoint);
            let template = Endpoint::from_shared(uri.clone())
                .map_err(|error| Error::Config(format!("endpoint {endpoint:?}: {error}")))?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true);
            // Each `connect_lazy` is its own HTTP/2 connection: several spread
            // the streams of a busy caller over several sockets.
            let connections =
                (0..connections_per_endpoint).map(|_| template.clone().connect_lazy()).collect();
            nodes.push(Node { uri, connections });
        }
        Ok(Self { nodes: nodes.into(), next: Arc::new(AtomicUsize::new(0)) })
    }

    /// Opens the first connection to each node now, so that an unreachable
    /// node is an error here rather than at the first call.
    pub(crate) async fn connect_first(&self, connect_timeout: Duration) -> Result<(), Error> {
        for node in self.nodes.iter() {
            let endpoint = Endpoint::from_shared(node.uri.clone())
                .map_err(|error| Error::Config(format!("endpoint {:?}: {error}", node.uri)))?
                .connect_timeout(connect_timeout);
            if let Err(error) = endpoint.connect().await {
                // The transport error's own message is terse ("transport
                // error"); its sources say what happened.
                let mut message = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                return Err(Error::Unavailable { message, status: None });
            }
        }
        Ok(())
    }

    /// The channel for the next call (round-robin over every connection).
    pub(crate) fn channel(&self) -> Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let node = &self.nodes[turn % self.nodes.len()];
        let index = (turn / self.nodes.len()) % node.connections.len();
        node.connections[index].clone()
    }

    /// The endpoints, normalized (`http://host:port`).
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.uri.clone()).collect()
    }
}

/// `host:port` means `http://host:port`.
pub(crate) fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_port_gets_http() {
        assert_eq!(normalize("10.0.0.1:50051"), "http://10.0.0.1:50051");
        assert_eq!(normalize("https://atp:443"), "https://atp:443");
    }

    #[tokio::test]
    async fn a_bad_endpoint_is_a_config_error() {
        let error = Transport::new(&["http://bad host".to_owned()], 1, Duration::from_secs(1))
            .expect_err("not a uri");
        assert!(matches!(error, Error::Config(message) if message.contains("bad host")));
        let error = Transport::new(&[], 1, Duration::from_secs(1)).expect_err("no endpoint");
        assert!(matches!(error, Error::Config(_)));
    }
}
