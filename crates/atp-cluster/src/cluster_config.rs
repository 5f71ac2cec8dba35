//! The cluster's configuration (locations and channels) in etcd, and a watch
//! that keeps every node's copy of it current.
//!
//! Keys, under `/atp/<cluster>/config/` (see [`ClusterKeys`]):
//! `locations/<id>` and `channels/<id>` → one entry each, and `initialized`
//! → who wrote the first configuration. This crate treats entry values as
//! opaque bytes: the server encodes them (protobuf `atp.v1.Location` /
//! `atp.v1.Channel`) and validates them; here they are only stored, read and
//! watched. Nothing is ever deleted: locations and channels are retired, not
//! removed.
//!
//! [`ConfigWatch`] publishes a [`ClusterConfig`] (every entry, with the store
//! revision it reflects) through a `watch::Receiver`: a full read, then a
//! watch from the next revision; a broken watch resumes from the last
//! revision seen + 1, a compacted one starts over with a full read (as the
//! member watch does). [`publish_initial`] writes a first configuration only
//! while the cluster has none, so of two nodes starting at once one wins (in
//! several transactions when it is larger than one takes, behind a
//! `publishing <node>` marker).

use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::assignment::ClusterKeys;
use crate::membership::{MembershipConfig, ms};
use crate::store::{
    Compare, MAX_TXN_OPS, Snapshot, Store, StoreError, Txn, TxnOp, Watch, WatchEvent, describe,
};

/// One configuration entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The encoded location or channel.
    pub value: Vec<u8>,
    /// The revision of its last change: a write guarded by it changes
    /// nothing written since it was read.
    pub mod_revision: i64,
}

/// The whole configuration of a cluster as of one store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The store revision this reflects (every configuration change up to
    /// it is included).
    pub revision: i64,
    /// Whether the `initialized` marker exists and no publish is under way:
    /// the cluster has a configuration (possibly empty). Until then a node
    /// keeps its own.
    pub initialized: bool,
    /// The marker's create revision (0 while absent).
    pub initialized_revision: i64,
    /// The node whose first configuration is being written in several
    /// transactions (the marker says `publishing <node>`), if any.
    pub publishing: Option<String>,
    /// Locations by id.
    pub locations: BTreeMap<String, ConfigEntry>,
    /// Channels by id.
    pub channels: BTreeMap<String, ConfigEntry>,
    /// Kits by SKU.
    pub kits: BTreeMap<String, ConfigEntry>,
}

impl ClusterConfig {
    /// The configuration a full read of [`ClusterKeys::config_prefix`] shows.
    pub fn from_snapshot(keys: &ClusterKeys, snapshot: &Snapshot) -> Self {
        let mut config = Self { revision: snapshot.revision, ..Self::default() };
        for kv in &snapshot.kvs {
            config.set(keys, &kv.key, Some((&kv.value, kv.mod_revision, kv.create_revision)));
        }
        config
    }

    /// Applies one watched change.
    fn apply(&mut self, keys: &ClusterKeys, event: &WatchEvent) {
        let change =
            event.value.as_deref().map(|value| (value, event.revision, event.create_revision));
        self.set(keys, &event.key, change);
        self.revision = self.revision.max(event.revision);
    }

    /// Sets (`Some((value, mod revision, create revision))`) or removes one key.
    fn set(&mut self, keys: &ClusterKeys, key: &str, change: Option<(&[u8], i64, i64)>) {
        if key == keys.config_initialized() {
            let value = change.map(|(value, _, _)| String::from_utf8_lossy(value).into_owned());
            self.publishing = value
                .as_deref()
                .and_then(|value| value.strip_prefix(PUBLISHING_PREFIX))
                .map(str::to_owned);
            self.initialized = change.is_some() && self.publishing.is_none();
            self.initialized_revision = change.map_or(0, |(_, _, created)| created);
            return;
        }
        let (map, id) = if let Some(id) = key.strip_prefix(&keys.config_locations_prefix()) {
            (&mut self.locations, id)
        } else if let Some(id) = key.strip_prefix(&keys.config_channels_prefix()) {
            (&mut self.channels, id)
        } else if let Some(sku) = key.strip_prefix(&keys.config_kits_prefix()) {
            (&mut self.kits, sku)
        } else {
            return;
        };
        match change {
            Some((value, mod_revision, _)) => {
                map.insert(id.to_owned(), ConfigEntry { value: value.to_vec(), mod_revision });
            }
            None => {
                map.remove(id);
            }
        }
    }
}

/// Reads the whole configuration of a cluster.
pub async fn read_config<S: Store>(
    store: &S,
    keys: &ClusterKeys,
) -> Result<ClusterConfig, StoreError> {
    let snapshot = store.get_prefix(&keys.config_prefix()).await?;
    Ok(ClusterConfig::from_snapshot(keys, &snapshot))
}

/// The marker's value while a first configuration too large for one
/// transaction is being written: this prefix, then the publisher's id.
pub const PUBLISHING_PREFIX: &str = "publishing ";

/// Entries per transaction of a publish in several parts.
const PUBLISH_CHUNK: usize = MAX_TXN_OPS - 1;

/// Publishes a first configuration, `locations` and `channels` as
/// `(id, encoded)`, only if the cluster has none (the `initialized` marker
/// is absent); the marker ends up holding `publisher`. Returns whether it
/// did (`false`: another publisher or the API came first; nothing written).
///
/// Up to [`MAX_TXN_OPS`]` - 1` entries go in one transaction with the marker.
/// A larger configuration goes in parts: the first transaction claims the
/// marker as `publishing <publisher>` (only if absent) with the first
/// entries, each further part is guarded by that value, and the last
/// transaction sets the marker to `publisher`. Until then the configuration
/// does not count as initialized ([`ClusterConfig::initialized`]), so no node
/// applies a part of it. A publisher that stopped half-way resumes when it
/// publishes again under the same id; any other publisher waits for it (or
/// for an operator to delete the marker).
pub async fn publish_initial<S: Store>(
    store: &S,
    keys: &ClusterKeys,
    publisher: &str,
    locations: Vec<(String, Vec<u8>)>,
    channels: Vec<(String, Vec<u8>)>,
) -> Result<bool, StoreError> {
    let marker = keys.config_initialized();
    let mut entries: Vec<TxnOp> = Vec::with_capacity(locations.len() + channels.len());
    for (id, value) in locations {
        entries.push(TxnOp::put(keys.config_location(&id), value, 0));
    }
    for (id, value) in channels {
        entries.push(TxnOp::put(keys.config_channel(&id), value, 0));
    }
    if entries.len() <= PUBLISH_CHUNK {
        let mut success = vec![TxnOp::put(&marker, publisher.as_bytes(), 0)];
        success.extend(entries);
        let txn = Txn { compares: vec![Compare::absent(marker)], success, failure: Vec::new() };
        return Ok(store.txn(txn).await?.succeeded);
    }
    let publishing = format!("{PUBLISHING_PREFIX}{publisher}").into_bytes();
    let claim = Txn {
        compares: vec![Compare::absent(&marker)],
        success: vec![TxnOp::put(&marker, publishing.clone(), 0)],
        failure: Vec::new(),
    };
    if !store.txn(claim).await?.succeeded {
        // Ours from an attempt that stopped half-way: resume; else another's.
        let (current, _) = store.get(&marker).await?;
        if current.is_none_or(|current| current.value != publishing) {
            return Ok(false);
        }
    }
    let mut parts = entries.into_iter().peekable();
    while parts.peek().is_some() {
        let part: Vec<TxnOp> = parts.by_ref().take(PUBLISH_CHUNK).collect();
        let guarded = Txn {
            compares: vec![Compare::value(&marker, publishing.clone())],
            success: part,
            failure: Vec::new(),
        };
        if !store.txn(guarded).await?.succeeded {
            return Ok(false);
        }
    }
    let done = Txn {
        compares: vec![Compare::value(&marker, publishing)],
        success: vec![TxnOp::put(&marker, publisher.as_bytes(), 0)],
        failure: Vec::new(),
    };
    Ok(store.txn(done).await?.succeeded)
}

/// Keeps a [`ClusterConfig`] current; dropping it stops the watch.
pub struct ConfigWatch {
    config: watch::Receiver<ClusterConfig>,
    task: JoinHandle<()>,
}

impl ConfigWatch {
    /// Starts watching the configuration of `membership.cluster`, with its
    /// request timeout and retry backoff. Until the first full read the
    /// published value is the default (revision 0, not initialized).
    pub fn start<S: Store>(store: S, membership: &MembershipConfig) -> Self {
        let (sender, config) = watch::channel(ClusterConfig::default());
        let timing = Timing {
            request_timeout: ms(membership.request_timeout_ms),
            backoff: ms(membership.retry_backoff_ms),
        };
        let keys = ClusterKeys::new(membership.cluster.clone());
        let task = tokio::spawn(watch_config(store, keys, timing, sender));
        Self { config, task }
    }

    /// The latest configuration (a slow reader skips intermediate ones).
    pub fn config(&self) -> watch::Receiver<ClusterConfig> {
        self.config.clone()
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
struct Timing {
    request_timeout: std::time::Duration,
    backoff: std::time::Duration,
}

/// The loop behind [`ConfigWatch`]: full read, watch from the next revision,
/// resume after a broken stream, read again after a compaction.
async fn watch_config<S: Store>(
    store: S,
    keys: ClusterKeys,
    timing: Timing,
    config: watch::Sender<ClusterConfig>,
) {
    let prefix = keys.config_prefix();
    // The revision the published configuration reflects; None: read it all again.
    let mut resume_from: Option<i64> = None;
    loop {
        let revision = match resume_from {
            Some(revision) => revision,
            None => match timeout(timing.request_timeout, store.get_prefix(&prefix)).await {
                Ok(Ok(snapshot)) => {
                    config.send_replace(ClusterConfig::from_snapshot(&keys, &snapshot));
                    snapshot.revision
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = describe(&error), "reading the configuration failed");
                    sleep(timing.backoff).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!(?timing.request_timeout, "reading the configuration timed out");
                    sleep(timing.backoff).await;
                    continue;
                }
            },
        };
        resume_from = Some(revision);
        let opened = timeout(timing.request_timeout, store.watch_prefix(&prefix, revision + 1));
        let mut stream = match opened.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(StoreError::Compacted { compact_revision })) => {
                tracing::info!(revision, compact_revision, "config watch compacted; reading again");
                resume_from = None;
                continue;
            }
            Ok(Err(error)) => {
                tracing::warn!(error = describe(&error), "opening the config watch failed");
                sleep(timing.backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(?timing.request_timeout, "opening the config watch timed out");
                sleep(timing.backoff).await;
                continue;
            }
        };
        loop {
            match stream.next().await {
                Ok(events) => {
                    config.send_modify(|current| {
                        for event in &events {
                            current.apply(&keys, event);
                        }
                    });
                    resume_from = Some(config.borrow().revision);
                }
                Err(StoreError::Compacted { compact_revision }) => {
                    tracing::info!(compact_revision, "config watch compacted; reading again");
                    resume_from = None;
                    break;
                }
                Err(error) => {
                    tracing::warn!(error = describe(&error), "config watch broke; resuming");
                    sleep(timing.backoff).await;
                    break;
                }
            }
        }
    }
}
