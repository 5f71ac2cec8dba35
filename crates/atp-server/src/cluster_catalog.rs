//! The ConfigService's locations and channels in cluster mode: etcd holds
//! them, every node applies them.
//!
//! - **Writes** ([`ClusterCatalog`]): an upsert is parsed as on a single
//!   node, then checked by the same [`Catalog`] rules against the
//!   configuration read from etcd (not the node's own: a channel's locations
//!   must exist in etcd), then written in one transaction guarded by the
//!   entry's mod revision and the `initialized` marker's create revision (a
//!   concurrent change of the same entry makes it read and check again, at
//!   most [`WRITE_ATTEMPTS`] times). It answers once etcd has accepted it
//!   *and* this node has applied it (read-your-write here). `changed` is
//!   false when etcd already held an identical entry (nothing is written).
//!   Locations and channels are never deleted from etcd, so a location a
//!   channel names that was read is still there when the channel is written.
//! - **Applying** ([`CatalogSync`]): every node follows a
//!   [`ConfigWatch`] and applies what it shows through
//!   `Node::upsert_location`/`upsert_channel`, so the local catalog stays
//!   durable and recovery needs no etcd. Locations first, then channels;
//!   only entries that differ from the local ones are written.
//! - **The first configuration**: once recovered, a node whose cluster has
//!   no configuration yet publishes its own catalog (a former single node's
//!   data directory), behind a create-if-absent transaction on the
//!   `initialized` marker, so of two nodes starting at once one wins. A node with an empty catalog publishes
//!   nothing and waits; the first upsert through the API then initializes
//!   the cluster. Once etcd has a configuration, etcd wins: local entries are
//!   replaced by etcd's, and an ACTIVE local location or channel etcd does
//!   not have is PAUSED (kept with its stock and holds, promising nothing,
//!   a warning logged), because no other node knows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use atp_cluster::store::{Compare, Store, StoreError, Txn, TxnOp};
use atp_cluster::{
    ClusterConfig, ClusterKeys, ConfigWatch, MembershipConfig, publish_initial, read_config,
};
use atp_core::catalog::{Catalog, Channel, Kit, Lifecycle, Location};
use atp_proto::catalog_entries::{
    decode_channel, decode_kit, decode_location, encode_channel, encode_kit, encode_location,
};
use atp_proto::{Reason, status_of};
use atp_shard::{Node, NodeError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::Status;

use crate::error::node_status;

/// How many times a write reads, checks and writes again after a concurrent
/// change of the same entry.
pub const WRITE_ATTEMPTS: usize = 5;
/// How long one etcd call of a write may take.
const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write accepted by etcd waits for this node to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the ConfigService writes locations and channels in cluster mode.
#[tonic::async_trait]
pub trait CatalogWriter: Send + Sync + 'static {
    /// Upserts a parsed location; whether it changed.
    async fn upsert_location(&self, location: Location) -> Result<bool, Status>;
    /// Upserts a parsed channel; whether it changed.
    async fn upsert_channel(&self, channel: Channel) -> Result<bool, Status>;
    /// Upserts a parsed kit; whether it changed.
    async fn upsert_kit(&self, kit: Kit) -> Result<bool, Status>;
}

/// Writes the cluster's configuration to etcd and waits until this node applied it.
pub struct ClusterCatalog<S: Store> {
    store: S,
    keys: ClusterKeys,
    node: Node,
    applied: watch::Receiver<i64>,
}

/// Applies the cluster's configuration to the node; dropping it stops that.
pub struct CatalogSync {
    _watch: ConfigWatch,
    task: JoinHandle<()>,
}

impl Drop for CatalogSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following the configuration of `membership.cluster` for `node`
/// (publishing the node's catalog first if the cluster has none), and
/// returns the writer for the ConfigService.
pub fn start_cluster_catalog<S: Store>(
    store: S,
    membership: &MembershipConfig,
    node: Node,
) -> (Arc<ClusterCatalog<S>>, CatalogSync) {
    let keys = ClusterKeys::new(membership.cluster.clone());
    let watch = ConfigWatch::start(store.clone(), membership);
    let (applied_sender, applied) = watch::channel(0);
    let backoff = Duration::from_millis(membership.retry_backoff_ms);
    let task = tokio::spawn(follow(
        store.clone(),
        keys.clone(),
        membership.node_id.clone(),
        node.clone(),
        watch.config(),
        applied_sender,
        backoff,
    ));
    let writer = Arc::new(ClusterCatalog { store, keys, node, applied });
    (writer, CatalogSync { _watch: watch, task })
}

#[tonic::async_trait]
impl<S: Store> CatalogWriter for ClusterCatalog<S> {
    async fn upsert_location(&self, location: Location) -> Result<bool, Status> {
        let key = self.keys.config_location(location.id.as_str());
        let value = encode_location(&location);
        self.upsert(&key, value, |catalog| catalog.upsert_location(location.clone())).await
    }

    async fn upsert_channel(&self, channel: Channel) -> Result<bool, Status> {
        let key = self.keys.config_channel(channel.id.as_str());
        let value = encode_channel(&channel);
        self.upsert(&key, value, |catalog| catalog.upsert_channel(channel.clone())).await
    }

    async fn upsert_kit(&self, kit: Kit) -> Result<bool, Status> {
        let key = self.keys.config_kit(kit.sku.as_str());
        let value = encode_kit(&kit);
        self.upsert(&key, value, |catalog| catalog.upsert_kit(kit.clone())).await
    }
}

impl<S: Store> ClusterCatalog<S> {
    /// Reads etcd's configuration, checks `change` against it, writes
    /// `key = value` if it changes anything, and waits until this node has
    /// applied the entry.
    async fn upsert(
        &self,
        key: &str,
        value: Vec<u8>,
        change: impl Fn(&mut Catalog) -> Result<bool, atp_core::CoreError>,
    ) -> Result<bool, Status> {
        if !self.node.is_ready() {
            return Err(node_status(NodeError::Recovering));
        }
        for _ in 0..WRITE_ATTEMPTS {
            let config = etcd_call(read_config(&self.store, &self.keys)).await?;
            if let Some(publisher) = &config.publishing {
                return Err(Reason::FailingClosed.plain(format!(
                    "node {publisher} is publishing the cluster's first configuration; retry"
                )));
            }
            let mut catalog = catalog_of(&config);
            let entry_revision = entry_mod_revision(&self.keys, &config, key);
            if !change(&mut catalog).map_err(status_of)? {
                self.wait_applied(entry_revision).await?;
                return Ok(false);
            }
            let marker = self.keys.config_initialized();
            let mut success = vec![TxnOp::put(key, value.clone(), 0)];
            let guard = if config.initialized {
                Compare::create_revision(&marker, config.initialized_revision)
            } else {
                // The first write initializes the cluster's configuration.
                success.push(TxnOp::put(&marker, b"api".to_vec(), 0));
                Compare::absent(&marker)
            };
            let txn = Txn {
                compares: vec![guard, Compare::mod_revision(key, entry_revision)],
                success,
                failure: Vec::new(),
            };
            let outcome = etcd_call(self.store.txn(txn)).await?;
            if outcome.succeeded {
                self.wait_applied(outcome.revision).await?;
                return Ok(true);
            }
            tracing::debug!(key, "configuration changed concurrently; checking again");
        }
        Err(Reason::FailingClosed.plain(format!(
            "the configuration entry changed concurrently {WRITE_ATTEMPTS} times; retry"
        )))
    }

    /// Waits until this node has applied the configuration up to `revision`.
    async fn wait_applied(&self, revision: i64) -> Result<(), Status> {
        let mut applied = self.applied.clone();
        match timeout(APPLY_TIMEOUT, applied.wait_for(|applied| *applied >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(node_status(NodeError::ShuttingDown)),
            Err(_) => Err(Reason::FailingClosed.plain(format!(
                "the configuration change is in etcd (revision {revision}) but this node did \
                 not apply it within {APPLY_TIMEOUT:?}; retry (an identical upsert answers \
                 changed=false)"
            ))),
        }
    }
}

/// One etcd call of a write, with its timeout; failures are UNAVAILABLE
/// `FAILING_CLOSED` (nothing was written, or the write's fate is unknown
/// and a retry finds it).
async fn etcd_call<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Status> {
    match timeout(ETCD_CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "a configuration write could not reach etcd");
            Err(Reason::FailingClosed.plain(format!("the cluster configuration store: {error}")))
        }
        Err(_) => Err(Reason::FailingClosed.plain(format!(
            "the cluster configuration store did not answer within {ETCD_CALL_TIMEOUT:?}"
        ))),
    }
}

/// The mod revision of `key` in `config` (0: absent).
fn entry_mod_revision(keys: &ClusterKeys, config: &ClusterConfig, key: &str) -> i64 {
    let entry = if let Some(id) = key.strip_prefix(&keys.config_locations_prefix()) {
        config.locations.get(id)
    } else if let Some(id) = key.strip_prefix(&keys.config_channels_prefix()) {
        config.channels.get(id)
    } else if let Some(sku) = key.strip_prefix(&keys.config_kits_prefix()) {
        config.kits.get(sku)
    } else {
        None
    };
    entry.map_or(0, |entry| entry.mod_revision)
}

/// The catalog etcd's entries describe; an entry that does not decode, or
/// whose id is not its key's, is left out with a warning.
fn catalog_of(config: &ClusterConfig) -> Catalog {
    let mut catalog = Catalog::default();
    for (id, entry) in &config.locations {
        match decode_location(&entry.value) {
            Ok(location) if location.id.as_str() == id => {
                catalog.locations.insert(location.id.clone(), location);
            }
            Ok(_) => tracing::warn!(location = %id, "a location entry names another id; ignored"),
            Err(error) => {
                tracing::warn!(location = %id, error = %error, "a location entry does not decode; ignored");
            }
        }
    }
    for (id, entry) in &config.channels {
        match decode_channel(&entry.value) {
            Ok(channel) if channel.id.as_str() == id => {
                catalog.channels.insert(channel.id.clone(), channel);
            }
            Ok(_) => tracing::warn!(channel = %id, "a channel entry names another id; ignored"),
            Err(error) => {
                tracing::warn!(channel = %id, error = %error, "a channel entry does not decode; ignored");
            }
        }
    }
    for (sku, entry) in &config.kits {
        match decode_kit(&entry.value) {
            Ok(kit) if kit.sku.as_str() == sku => {
                catalog.kits.insert(kit.sku.clone(), kit);
            }
            Ok(_) => tracing::warn!(kit = %sku, "a kit entry names another sku; ignored"),
            Err(error) => {
                tracing::warn!(kit = %sku, error = %error, "a kit entry does not decode; ignored");
            }
        }
    }
    catalog
}

/// The task behind [`CatalogSync`]: once the node has recovered, publish
/// its catalog if the cluster has none, then apply every configuration the
/// watch shows and publish the revision applied.
async fn follow<S: Store>(
    store: S,
    keys: ClusterKeys,
    node_id: String,
    node: Node,
    mut config: watch::Receiver<ClusterConfig>,
    applied: watch::Sender<i64>,
    backoff: Duration,
) {
    node.wait_ready().await;
    publish_local(&store, &keys, &node_id, &node, backoff).await;
    loop {
        let current = config.borrow_and_update().clone();
        if current.initialized {
            apply(&node, &catalog_of(&current)).await;
            applied.send_replace(current.revision);
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes the node's catalog as the cluster's first configuration, if
/// the cluster has none and the catalog is not empty; retries until etcd
/// answers.
async fn publish_local<S: Store>(
    store: &S,
    keys: &ClusterKeys,
    node_id: &str,
    node: &Node,
    backoff: Duration,
) {
    loop {
        let config = match timeout(ETCD_CALL_TIMEOUT, read_config(store, keys)).await {
            Ok(Ok(config)) => config,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "reading the cluster configuration failed; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!("reading the cluster configuration timed out; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if config.initialized {
            return;
        }
        if let Some(publisher) = config.publishing.as_deref().filter(|other| *other != node_id) {
            tracing::info!(
                publisher,
                "another node is publishing the first configuration; waiting"
            );
            tokio::time::sleep(backoff).await;
            continue;
        }
        let locations: Vec<_> = node
            .locations()
            .iter()
            .map(|location| (location.id.as_str().to_owned(), encode_location(location)))
            .collect();
        let channels: Vec<_> = node
            .channels()
            .iter()
            .map(|channel| (channel.id.as_str().to_owned(), encode_channel(channel)))
            .collect();
        if locations.is_empty() && channels.is_empty() {
            tracing::info!("no cluster configuration yet and none here; the first upsert sets it");
            return;
        }
        let (location_count, channel_count) = (locations.len(), channels.len());
        match timeout(ETCD_CALL_TIMEOUT, publish_initial(store, keys, node_id, locations, channels))
            .await
        {
            Ok(Ok(true)) => {
                tracing::info!(
                    locations = location_count,
                    channels = channel_count,
                    "published this node's configuration as the cluster's first"
                );
                return;
            }
            Ok(Ok(false)) => {
                tracing::info!("another node published the cluster configuration first");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "publishing the configuration failed; retrying");
            }
            Err(_) => tracing::warn!("publishing the configuration timed out; retrying"),
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Makes the node's catalog etcd's: locations, then channels, each only if
/// it differs; then pauses ACTIVE local entries etcd does not have.
async fn apply(node: &Node, cluster: &Catalog) {
    let local: BTreeMap<_, _> =
        node.locations().into_iter().map(|location| (location.id.clone(), location)).collect();
    for (id, location) in &cluster.locations {
        if local.get(id) == Some(location) {
            continue;
        }
        if let Err(error) = node.upsert_location(location.clone()).await {
            tracing::error!(location = %id, error = %error, "could not apply a location from the cluster configuration");
        }
    }
    let local: BTreeMap<_, _> =
        node.channels().into_iter().map(|channel| (channel.id.clone(), channel)).collect();
    for (id, channel) in &cluster.channels {
        if local.get(id) == Some(channel) {
            continue;
        }
        if let Err(error) = node.upsert_channel(channel.clone()).await {
            tracing::error!(channel = %id, error = %error, "could not apply a channel from the cluster configuration");
        }
    }
    let local: BTreeMap<_, _> = node.kits().into_iter().map(|kit| (kit.sku.clone(), kit)).collect();
    for (sku, kit) in &cluster.kits {
        if local.get(sku) == Some(kit) {
            continue;
        }
        if let Err(error) = node.upsert_kit(kit.clone()).await {
            tracing::error!(kit = %sku, error = %error, "could not apply a kit from the cluster configuration");
        }
    }
    for location in node.locations() {
        if location.state == Lifecycle::Active && !cluster.locations.contains_key(&location.id) {
            tracing::warn!(location = %location.id, "a local location is not in the cluster configuration: paused (stock and holds kept)");
            let paused = Location { state: Lifecycle::Paused, ..location };
            if let Err(error) = node.upsert_location(paused).await {
                tracing::error!(error = %error, "could not pause a local-only location");
            }
        }
    }
    for channel in node.channels() {
        if channel.state == Lifecycle::Active && !cluster.channels.contains_key(&channel.id) {
            tracing::warn!(channel = %channel.id, "a local channel is not in the cluster configuration: paused");
            let paused = Channel { state: Lifecycle::Paused, ..channel };
            if let Err(error) = node.upsert_channel(paused).await {
                tracing::error!(error = %error, "could not pause a local-only channel");
            }
        }
    }
}
