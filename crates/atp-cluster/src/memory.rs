//! An in-memory etcd for tests and simulation (feature `testing`).
//!
//! It keeps what membership and claims depend on the way etcd 3.4 does: one
//! revision counter bumped by every change (a transaction's writes share
//! one); create and mod revisions and versions of keys; equality compares
//! as etcd evaluates them on absent keys; keys bound to leases; a lease expiring or
//! revoked deletes its keys in one revision; watches replay history from a
//! start revision and fail with `Compacted` below the compaction revision;
//! TTLs in whole seconds. Time is tokio's, so paused time drives expiry.
//!
//! Faults: [`MemoryEtcd::pause`]/[`MemoryEtcd::resume`] behave like
//! SIGSTOP/SIGCONT (calls hang, nothing expires while stopped; leases whose
//! time passed expire as soon as it runs again), and [`MemoryEtcd::restart`]
//! like a restart of a one-member etcd: every stream breaks and every lease
//! survives (etcd persists leases) with its TTL reset to the full TTL from
//! now, as etcd's lessor does when a member becomes leader (`Promote`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::store::{
    Compare, CompareTarget, Keeper, KeyValue, Lease, MAX_TXN_OPS, Snapshot, Store, StoreError, Txn,
    TxnOp, TxnOutcome, Watch, WatchEvent, ttl_seconds,
};

/// An in-memory etcd. Cloning shares it (like clients of one server).
#[derive(Clone)]
pub struct MemoryEtcd {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// `true` while the server runs (not paused).
    running: watch::Sender<bool>,
    /// Wakes the expiry task when leases change.
    leases_changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    revision: i64,
    compact_revision: i64,
    next_lease_id: i64,
    /// Bumped by a restart: streams of an older generation are broken.
    generation: u64,
    kv: BTreeMap<String, Entry>,
    leases: BTreeMap<i64, LeaseEntry>,
    history: Vec<WatchEvent>,
    watchers: Vec<Watcher>,
}

struct Entry {
    value: Vec<u8>,
    lease_id: i64,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

impl Entry {
    /// A value to write; the revisions are set when it is committed.
    fn new(value: Vec<u8>, lease_id: i64) -> Self {
        Self { value, lease_id, create_revision: 0, mod_revision: 0, version: 0 }
    }

    fn key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease_id: self.lease_id,
        }
    }
}

struct LeaseEntry {
    ttl: Duration,
    expires_at: Instant,
}

struct Watcher {
    prefix: String,
    sender: mpsc::UnboundedSender<Result<Vec<WatchEvent>, StoreError>>,
}

impl std::fmt::Debug for MemoryEtcd {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("MemoryEtcd").finish_non_exhaustive()
    }
}

impl MemoryEtcd {
    /// A fresh store at revision 1 (as a fresh etcd). Starts its expiry
    /// task, so it must be called inside a tokio runtime.
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { revision: 1, next_lease_id: 1, ..State::default() }),
            running: watch::channel(true).0,
            leases_changed: Arc::new(Notify::new()),
        });
        tokio::spawn(expire_leases(Arc::downgrade(&shared), Arc::clone(&shared.leases_changed)));
        Self { shared }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("memory etcd lock poisoned")
    }

    /// Waits while the server is paused.
    async fn running(&self) {
        let mut running = self.shared.running.subscribe();
        running.wait_for(|running| *running).await.expect("the sender lives in self");
    }

    /// Stops answering (SIGSTOP): calls hang, leases do not expire.
    pub fn pause(&self) {
        self.shared.running.send_replace(false);
    }

    /// Answers again (SIGCONT): leases whose time passed expire now.
    pub fn resume(&self) {
        self.shared.running.send_replace(true);
        self.shared.leases_changed.notify_one();
    }

    /// A restart: every watch and keepalive stream breaks; leases survive
    /// with their full TTL from now; keys and history are kept.
    pub fn restart(&self) {
        let now = Instant::now();
        let mut state = self.state();
        state.generation += 1;
        for watcher in state.watchers.drain(..) {
            let _ = watcher.sender.send(Err(StoreError::StreamClosed));
        }
        for lease in state.leases.values_mut() {
            lease.expires_at = now + lease.ttl;
        }
        drop(state);
        self.shared.running.send_replace(true);
        self.shared.leases_changed.notify_one();
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.state().revision
    }

    /// One key as stored, read without waiting (also while paused): for
    /// checkers that look at the store's truth.
    pub fn peek(&self, key: &str) -> Option<KeyValue> {
        self.state().kv.get(key).map(|entry| entry.key_value(key))
    }

    /// Whether the lease exists.
    pub fn lease_exists(&self, lease_id: i64) -> bool {
        self.state().leases.contains_key(&lease_id)
    }
}

impl Default for MemoryEtcd {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Applies one revision's changes and tells the watchers. Deletes of
    /// absent keys change nothing (as in etcd).
    fn commit(&mut self, changes: Vec<(String, Option<Entry>)>) -> i64 {
        let changes: Vec<(String, Option<Entry>)> = changes
            .into_iter()
            .filter(|(key, entry)| entry.is_some() || self.kv.contains_key(key))
            .collect();
        if changes.is_empty() {
            return self.revision;
        }
        self.revision += 1;
        let revision = self.revision;
        let mut events = Vec::with_capacity(changes.len());
        for (key, entry) in changes {
            let event = match entry {
                Some(entry) => {
                    let (create_revision, version) = match self.kv.get(&key) {
                        Some(old) => (old.create_revision, old.version + 1),
                        None => (revision, 1),
                    };
                    let event = WatchEvent {
                        revision,
                        key: key.clone(),
                        value: Some(entry.value.clone()),
                        create_revision,
                        lease_id: entry.lease_id,
                    };
                    let entry = Entry { create_revision, mod_revision: revision, version, ..entry };
                    self.kv.insert(key, entry);
                    event
                }
                None => {
                    self.kv.remove(&key);
                    WatchEvent { revision, key, value: None, create_revision: 0, lease_id: 0 }
                }
            };
            events.push(event);
        }
        self.watchers.retain(|watcher| {
            let matching: Vec<WatchEvent> = events
                .iter()
                .filter(|event| event.key.starts_with(&watcher.prefix))
                .cloned()
                .collect();
            matching.is_empty() || watcher.sender.send(Ok(matching)).is_ok()
        });
        self.history.extend(events);
        revision
    }

    /// Whether `compare` holds, as etcd evaluates it: an absent key has
    /// version, create and mod revision 0 and no value.
    fn holds(&self, compare: &Compare) -> bool {
        let entry = self.kv.get(&compare.key);
        match &compare.target {
            CompareTarget::Absent => entry.is_none(),
            CompareTarget::CreateRevision(revision) => {
                entry.map_or(0, |entry| entry.create_revision) == *revision
            }
            CompareTarget::ModRevision(revision) => {
                entry.map_or(0, |entry| entry.mod_revision) == *revision
            }
            CompareTarget::Version(version) => entry.map_or(0, |entry| entry.version) == *version,
            CompareTarget::Value(value) => entry.is_some_and(|entry| entry.value == *value),
        }
    }

    /// Deletes the lease and its keys in one revision.
    fn drop_lease(&mut self, lease_id: i64) -> bool {
        if self.leases.remove(&lease_id).is_none() {
            return false;
        }
        let keys: Vec<(String, Option<Entry>)> = self
            .kv
            .iter()
            .filter(|(_, entry)| entry.lease_id == lease_id)
            .map(|(key, _)| (key.clone(), None))
            .collect();
        self.commit(keys);
        true
    }
}

/// Expires leases at their time while the server runs. Ends when the store is dropped.
async fn expire_leases(shared: Weak<Shared>, leases_changed: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let changed = leases_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let running = *strong.running.borrow();
        let next = {
            let now = Instant::now();
            let mut state = strong.state.lock().expect("memory etcd lock poisoned");
            if running {
                let due: Vec<i64> = state
                    .leases
                    .iter()
                    .filter(|(_, lease)| lease.expires_at <= now)
                    .map(|(id, _)| *id)
                    .collect();
                for lease_id in due {
                    state.drop_lease(lease_id);
                }
            }
            state.leases.values().map(|lease| lease.expires_at).min()
        };
        drop(strong);
        match next {
            Some(at) if running => {
                tokio::select! {
                    () = sleep_until(at) => {}
                    () = changed => {}
                }
            }
            _ => changed.await,
        }
    }
}

impl Store for MemoryEtcd {
    type Keeper = MemoryKeeper;
    type Watch = MemoryWatch;

    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.running().await;
        let seconds = u64::try_from(ttl_seconds(ttl)).unwrap_or(u64::MAX);
        let ttl = Duration::from_secs(seconds);
        let mut state = self.state();
        let lease_id = state.next_lease_id;
        state.next_lease_id += 1;
        state.leases.insert(lease_id, LeaseEntry { ttl, expires_at: Instant::now() + ttl });
        drop(state);
        self.shared.leases_changed.notify_one();
        Ok(Lease { id: lease_id, ttl })
    }

    async fn revoke(&self, lease_id: i64) -> Result<(), StoreError> {
        self.running().await;
        if self.state().drop_lease(lease_id) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease_id))
        }
    }

    async fn put(&self, key: &str, value: &[u8], lease_id: i64) -> Result<i64, StoreError> {
        self.running().await;
        let mut state = self.state();
        if lease_id != 0 && !state.leases.contains_key(&lease_id) {
            return Err(StoreError::LeaseNotFound(lease_id));
        }
        let entry = Entry::new(value.to_vec(), lease_id);
        Ok(state.commit(vec![(key.to_owned(), Some(entry))]))
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
        self.running().await;
        let state = self.state();
        Ok((state.kv.get(key).map(|entry| entry.key_value(key)), state.revision))
    }

    async fn delete(&self, key: &str) -> Result<i64, StoreError> {
        self.running().await;
        Ok(self.state().commit(vec![(key.to_owned(), None)]))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.running().await;
        let largest = txn.compares.len().max(txn.success.len()).max(txn.failure.len());
        if largest > MAX_TXN_OPS {
            return Err(StoreError::TxnTooLarge(largest));
        }
        let mut state = self.state();
        let succeeded = txn.compares.iter().all(|compare| state.holds(compare));
        let ops = if succeeded { txn.success } else { txn.failure };
        let mut changes = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease_id } => {
                    if lease_id != 0 && !state.leases.contains_key(&lease_id) {
                        return Err(StoreError::LeaseNotFound(lease_id));
                    }
                    changes.push((key, Some(Entry::new(value, lease_id))));
                }
                TxnOp::Delete { key } => changes.push((key, None)),
            }
        }
        let revision = state.commit(changes);
        Ok(TxnOutcome { succeeded, revision })
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.running().await;
        let state = self.state();
        let kvs = state
            .kv
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| entry.key_value(key))
            .collect();
        Ok(Snapshot { revision: state.revision, kvs })
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.running().await;
        let mut state = self.state();
        if revision > state.revision {
            return Err(StoreError::FutureRevision(revision));
        }
        if revision <= state.compact_revision {
            return Err(StoreError::Compacted { compact_revision: state.compact_revision });
        }
        state.compact_revision = revision;
        state.history.retain(|event| event.revision >= revision);
        Ok(())
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<MemoryKeeper, StoreError> {
        self.running().await;
        let generation = self.state().generation;
        Ok(MemoryKeeper { etcd: self.clone(), lease_id, generation })
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<MemoryWatch, StoreError> {
        self.running().await;
        let mut state = self.state();
        // etcd refuses a start revision below the compaction revision.
        if start_revision < state.compact_revision {
            return Err(StoreError::Compacted { compact_revision: state.compact_revision });
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let past: Vec<WatchEvent> = state
            .history
            .iter()
            .filter(|event| event.revision >= start_revision && event.key.starts_with(prefix))
            .cloned()
            .collect();
        if !past.is_empty() {
            let _ = sender.send(Ok(past));
        }
        state.watchers.push(Watcher { prefix: prefix.to_owned(), sender });
        Ok(MemoryWatch { receiver })
    }
}

/// A keepalive stream on a [`MemoryEtcd`]; broken by a restart.
pub struct MemoryKeeper {
    etcd: MemoryEtcd,
    lease_id: i64,
    generation: u64,
}

impl Keeper for MemoryKeeper {
    async fn renew(&mut self) -> Result<Option<Duration>, StoreError> {
        self.etcd.running().await;
        let mut state = self.etcd.state();
        if state.generation != self.generation {
            return Err(StoreError::StreamClosed);
        }
        let Some(lease) = state.leases.get_mut(&self.lease_id) else { return Ok(None) };
        lease.expires_at = Instant::now() + lease.ttl;
        let ttl = lease.ttl;
        drop(state);
        self.etcd.shared.leases_changed.notify_one();
        Ok(Some(ttl))
    }
}

/// A watch stream on a [`MemoryEtcd`]; broken by a restart.
pub struct MemoryWatch {
    receiver: mpsc::UnboundedReceiver<Result<Vec<WatchEvent>, StoreError>>,
}

impl Watch for MemoryWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        self.receiver.recv().await.unwrap_or(Err(StoreError::StreamClosed))
    }
}
