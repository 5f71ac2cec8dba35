//! The shard map every node mirrors: the assignment table and every claim
//! (shard → owner and epoch), from one watch of `/atp/<cluster>/shards/`.
//!
//! Unlike the member watch, every (re)connection starts with a full read
//! (at most 1025 small keys): the read is what confirms, after an etcd
//! problem, that the claims a node holds are still there with the same
//! create revision. Until it succeeds the map says `confirmed: false`.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use crate::assignment::{Assignment, ClusterKeys};
use crate::membership::{MembershipConfig, ms};
use crate::store::{KeyValue, Store, StoreError, Watch, WatchEvent, describe};

/// One shard's claim as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The owner's node id (the claim's value).
    pub node: String,
    /// The claim's create revision: the shard's epoch.
    pub epoch: i64,
    /// The owner's lease, which the claim is bound to.
    pub lease_id: i64,
}

/// The assignment and the claims as of one store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    /// The store revision this map reflects (0: not read yet).
    pub revision: i64,
    /// Whether the map was read (or followed by an unbroken watch since a
    /// read): `false` from a broken watch until the next full read.
    pub confirmed: bool,
    /// How many full reads the map was built from so far (each
    /// (re)connection makes one).
    pub reads: u64,
    /// The assignment table, once written (and decodable).
    pub assignment: Option<Arc<Assignment>>,
    /// The assignment key's mod revision (0: absent).
    pub assignment_revision: i64,
    /// Every claim, by shard.
    pub claims: BTreeMap<u32, Claim>,
}

impl ShardMap {
    /// The owner and epoch of `shard`, if claimed.
    pub fn claim(&self, shard: u32) -> Option<&Claim> {
        self.claims.get(&shard)
    }

    fn apply_put(&mut self, keys: &ClusterKeys, key: &str, value: &[u8], epoch: i64, lease: i64) {
        if key == keys.assignment() {
            match Assignment::decode(value) {
                Ok(assignment) => self.assignment = Some(Arc::new(assignment)),
                Err(error) => {
                    tracing::error!(error = %error, "unreadable assignment table; ignoring it");
                    self.assignment = None;
                }
            }
        } else if let Some(shard) = keys.shard_of_claim(key) {
            let node = String::from_utf8_lossy(value).into_owned();
            self.claims.insert(shard, Claim { node, epoch, lease_id: lease });
        }
    }

    fn apply_delete(&mut self, keys: &ClusterKeys, key: &str) {
        if key == keys.assignment() {
            self.assignment = None;
            self.assignment_revision = 0;
        } else if let Some(shard) = keys.shard_of_claim(key) {
            self.claims.remove(&shard);
        }
    }

    fn read(keys: &ClusterKeys, revision: i64, kvs: &[KeyValue], reads: u64) -> Self {
        let mut map = Self { revision, confirmed: true, reads, ..Self::default() };
        for kv in kvs {
            map.apply_put(keys, &kv.key, &kv.value, kv.create_revision, kv.lease_id);
            if kv.key == keys.assignment() {
                map.assignment_revision = kv.mod_revision;
            }
        }
        map
    }

    fn apply(&mut self, keys: &ClusterKeys, events: &[WatchEvent]) {
        for event in events {
            match &event.value {
                Some(value) => {
                    self.apply_put(keys, &event.key, value, event.create_revision, event.lease_id);
                    if event.key == keys.assignment() {
                        self.assignment_revision = event.revision;
                    }
                }
                None => self.apply_delete(keys, &event.key),
            }
            self.revision = self.revision.max(event.revision);
        }
    }
}

/// Keeps `map` equal to the shard keys in the store: a full read, then a
/// watch from the next revision; after any error the map is marked
/// unconfirmed and read again.
pub(crate) async fn watch_shard_map<S: Store>(
    store: S,
    config: MembershipConfig,
    map: watch::Sender<ShardMap>,
) {
    let keys = ClusterKeys::new(&config.cluster);
    let prefix = keys.shards_prefix();
    let request_timeout = ms(config.request_timeout_ms);
    let backoff = ms(config.retry_backoff_ms);
    loop {
        let snapshot = match timeout(request_timeout, store.get_prefix(&prefix)).await {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(error)) => {
                tracing::warn!(error = describe(&error), "reading the shard map failed; retrying");
                sleep(backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(?request_timeout, "reading the shard map timed out; retrying");
                sleep(backoff).await;
                continue;
            }
        };
        let reads = map.borrow().reads + 1;
        map.send_replace(ShardMap::read(&keys, snapshot.revision, &snapshot.kvs, reads));
        let opened = timeout(request_timeout, store.watch_prefix(&prefix, snapshot.revision + 1));
        let mut stream = match opened.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(StoreError::Compacted { .. })) => continue,
            Ok(Err(error)) => {
                tracing::warn!(error = describe(&error), "opening the shard watch failed");
                unconfirm(&map);
                sleep(backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(?request_timeout, "opening the shard watch timed out");
                unconfirm(&map);
                sleep(backoff).await;
                continue;
            }
        };
        loop {
            match stream.next().await {
                Ok(events) => map.send_modify(|map| map.apply(&keys, &events)),
                Err(error) => {
                    tracing::warn!(error = describe(&error), "shard watch broke; reading again");
                    unconfirm(&map);
                    if !matches!(error, StoreError::Compacted { .. }) {
                        sleep(backoff).await;
                    }
                    break;
                }
            }
        }
    }
}

fn unconfirm(map: &watch::Sender<ShardMap>) {
    map.send_if_modified(|map| std::mem::replace(&mut map.confirmed, false));
}
