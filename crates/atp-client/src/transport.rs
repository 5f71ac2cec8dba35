//! The one place that knows how requests reach a node: a pool of HTTP/2
//! connections per endpoint, picked round-robin, and — once the shard map
//! arrived (`crate::routing`) — the pool of each shard's owner.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atp_proto::v1;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::Error;

/// Most distinct node addresses a client keeps connections to; owners
/// beyond are reached through the configured endpoints (which forward).
const MAX_ROUTED_NODES: usize = 256;

/// How long an owner that could not be reached is routed around (its
/// calls go to the configured endpoints, which forward).
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);
/// HTTP/2 pings on every connection, idle or not.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections to one node.
#[derive(Debug)]
pub(crate) struct Node {
    uri: String,
    connections: Vec<Channel>,
    next: AtomicUsize,
    /// Routed around until then (milliseconds since `EPOCH`; 0: never).
    unreachable_until_ms: AtomicU64,
}

impl Node {
    fn channel(&self) -> Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.connections[turn % self.connections.len()].clone()
    }

    fn reachable(&self) -> bool {
        self.unreachable_until_ms.load(Ordering::Relaxed) <= since_epoch_ms()
    }

    /// A routed call could not reach this node: route around it for a while.
    pub(crate) fn unreachable(&self) {
        let until = since_epoch_ms() + UNREACHABLE_FOR.as_millis() as u64;
        self.unreachable_until_ms.store(until, Ordering::Relaxed);
    }
}

/// Milliseconds since the first call (a process-wide monotonic base).
fn since_epoch_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Where each shard's requests go: its owner's connections and the epoch
/// the map gives it.
#[derive(Debug)]
struct Routes {
    shards: Vec<Option<(Arc<Node>, u64)>>,
}

/// The pool behind a [`crate::Client`]; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    nodes: Arc<[Arc<Node>]>,
    next: Arc<AtomicUsize>,
    connections_per_endpoint: usize,
    connect_timeout: Duration,
    /// The owners' pools by address (the configured endpoints' included).
    known: Arc<Mutex<HashMap<String, Arc<Node>>>>,
    /// None: every call goes round-robin over the configured endpoints.
    routes: Arc<RwLock<Option<Arc<Routes>>>>,
    /// Counts the shard maps installed (0: none yet, or routing is off).
    installed: Arc<watch::Sender<u64>>,
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
            nodes.push(Arc::new(connect_lazy(
                endpoint,
                connections_per_endpoint,
                connect_timeout,
            )?));
        }
        let known = nodes.iter().map(|node| (node.uri.clone(), Arc::clone(node))).collect();
        Ok(Self {
            nodes: nodes.into(),
            next: Arc::new(AtomicUsize::new(0)),
            connections_per_endpoint,
            connect_timeout,
            known: Arc::new(Mutex::new(known)),
            routes: Arc::new(RwLock::new(None)),
            installed: Arc::new(watch::channel(0).0),
        })
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
    /// Skips an endpoint found unreachable lately while another is not.
    pub(crate) fn channel(&self) -> Channel {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.nodes.len();
        let node = (0..count)
            .map(|step| &self.nodes[(turn + step) % count])
            .find(|node| node.reachable())
            .unwrap_or(&self.nodes[turn % count]);
        let index = (turn / count) % node.connections.len();
        node.connections[index].clone()
    }

    /// The owner of `shard` (its node, a channel to it, and the epoch the
    /// shard map gives it), once a map is installed and names an owner not
    /// found unreachable in the last [`UNREACHABLE_FOR`].
    pub(crate) fn route(&self, shard: u32) -> Option<(Arc<Node>, Channel, u64)> {
        let routes = self.routes.read().expect("routes lock is never poisoned");
        let (node, epoch) = routes.as_ref()?.shards.get(shard as usize)?.as_ref()?;
        node.reachable().then(|| (Arc::clone(node), node.channel(), *epoch))
    }

    /// Routes by `map` (a WatchShardMap answer): each claimed shard to its
    /// owner's address. A single node's map (or an empty one) routes
    /// nothing: calls go to the configured endpoints.
    pub(crate) fn install(&self, map: &v1::GetClusterResponse) {
        let routes = map.cluster_mode.then(|| self.routes_of(map));
        // Pools of nodes the map no longer names are dropped (the
        // configured endpoints' stay).
        let named: std::collections::HashSet<String> =
            map.members.iter().map(|member| normalize(&member.address)).collect();
        self.known.lock().expect("pool lock is never poisoned").retain(|uri, node| {
            named.contains(uri) || self.nodes.iter().any(|own| Arc::ptr_eq(own, node))
        });
        *self.routes.write().expect("routes lock is never poisoned") = routes.map(Arc::new);
        self.installed.send_modify(|count| *count += 1);
    }

    fn routes_of(&self, map: &v1::GetClusterResponse) -> Routes {
        let addresses: HashMap<&str, &str> = map
            .members
            .iter()
            .filter(|member| !member.address.is_empty())
            .map(|member| (member.node_id.as_str(), member.address.as_str()))
            .collect();
        let mut by_owner: HashMap<&str, Option<Arc<Node>>> = HashMap::new();
        let mut shards = vec![None; atp_core::hash::SHARD_COUNT as usize];
        for shard in &map.shards {
            // Unclaimed: whoever answers forwards or refuses.
            if shard.epoch == 0 || shard.shard >= atp_core::hash::SHARD_COUNT {
                continue;
            }
            let node = by_owner.entry(shard.owner.as_str()).or_insert_with(|| {
                addresses.get(shard.owner.as_str()).and_then(|address| self.pool(address))
            });
            if let Some(node) = node {
                shards[shard.shard as usize] = Some((Arc::clone(node), shard.epoch));
            }
        }
        Routes { shards }
    }

    /// The connections to `address`, made on first use (None past
    /// [`MAX_ROUTED_NODES`] addresses, or for an address that is no URI).
    fn pool(&self, address: &str) -> Option<Arc<Node>> {
        let uri = normalize(address);
        let mut known = self.known.lock().expect("pool lock is never poisoned");
        if let Some(node) = known.get(&uri) {
            return Some(Arc::clone(node));
        }
        if known.len() >= MAX_ROUTED_NODES {
            return None;
        }
        let node = connect_lazy(&uri, self.connections_per_endpoint, self.connect_timeout).ok()?;
        let node = Arc::new(node);
        known.insert(uri, Arc::clone(&node));
        Some(node)
    }

    /// Stops routing (the map's stream broke): calls go to the configured
    /// endpoints until the next map.
    pub(crate) fn forget_routes(&self) {
        *self.routes.write().expect("routes lock is never poisoned") = None;
    }

    /// Whether calls are routed by a shard map now.
    pub(crate) fn routed(&self) -> bool {
        self.routes.read().expect("routes lock is never poisoned").is_some()
    }

    /// Changes each time a shard map is installed.
    pub(crate) fn installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// The endpoints, normalized (`http://host:port`).
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.uri.clone()).collect()
    }
}

/// `connections` lazily connected channels to `endpoint`: each is its own
/// HTTP/2 connection, so several spread a busy caller's streams over
/// several sockets.
fn connect_lazy(
    endpoint: &str,
    connections: usize,
    connect_timeout: Duration,
) -> Result<Node, Error> {
    let uri = normalize(endpoint);
    let template = Endpoint::from_shared(uri.clone())
        .map_err(|error| Error::Config(format!("endpoint {endpoint:?}: {error}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // A half-open connection (a partition) is found within ~20 s, also
        // under an idle WatchShardMap stream.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connections = (0..connections).map(|_| template.clone().connect_lazy()).collect();
    Ok(Node {
        uri,
        connections,
        next: AtomicUsize::new(0),
        unreachable_until_ms: AtomicU64::new(0),
    })
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
