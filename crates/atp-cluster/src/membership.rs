//! A node's membership: its key bound to its lease, the keepalive loop that
//! keeps (or loses) the lease, and the member list from a resumable watch.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::keepalive::keep_lease;
use crate::member_watch::watch_members;
use crate::store::{Store, StoreError, describe};

/// Timing and identity of one node's membership. Durations are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The cluster's name: keys live under `/atp/<cluster>/`.
    pub cluster: String,
    /// This node's id (the last segment of its key).
    pub node_id: String,
    /// This node's address, the value of its key.
    pub address: String,
    /// The lease TTL requested (etcd counts whole seconds and may raise it).
    pub lease_ttl_ms: u64,
    /// Time between two keepalives while they succeed.
    pub keepalive_interval_ms: u64,
    /// How long one keepalive (or opening its stream) may take.
    pub keepalive_timeout_ms: u64,
    /// Subtracted from the lease's end: the local deadline is the time the
    /// last acknowledged keepalive was sent + TTL − this margin, so the node
    /// stops serving before etcd can hand its shards to another node, even
    /// with some clock drift between them.
    pub safety_margin_ms: u64,
    /// How long any other call (grant, put, get, revoke, open a watch) may take.
    pub request_timeout_ms: u64,
    /// Pause before re-creating a failed keepalive or watch stream.
    pub retry_backoff_ms: u64,
}

impl MembershipConfig {
    /// Production defaults (TTL 10 s, keepalive every 2 s, margin 2 s).
    pub fn new(
        cluster: impl Into<String>,
        node_id: impl Into<String>,
        address: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            node_id: node_id.into(),
            address: address.into(),
            lease_ttl_ms: 10_000,
            keepalive_interval_ms: 2_000,
            keepalive_timeout_ms: 1_500,
            safety_margin_ms: 2_000,
            request_timeout_ms: 2_000,
            retry_backoff_ms: 200,
        }
    }

    /// Checks the timings leave room for at least one retried keepalive
    /// before the deadline.
    pub fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |reason: &'static str| Err(MembershipError::InvalidConfig(reason));
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return invalid("cluster must be non-empty and contain no '/'");
        }
        // No whitespace: the write log separates its fields with spaces.
        if self.node_id.is_empty()
            || self.node_id.contains('/')
            || self.node_id.contains(char::is_whitespace)
        {
            return invalid("node_id must be non-empty and contain no '/' and no whitespace");
        }
        if self.lease_ttl_ms < 1_000 {
            return invalid("lease_ttl_ms must be at least 1000 (etcd counts whole seconds)");
        }
        if self.safety_margin_ms >= self.lease_ttl_ms {
            return invalid("safety_margin_ms must be less than lease_ttl_ms");
        }
        let usable_ms = self.lease_ttl_ms - self.safety_margin_ms;
        if 2 * self.keepalive_interval_ms.max(self.keepalive_timeout_ms) > usable_ms {
            return invalid(
                "lease_ttl_ms - safety_margin_ms must fit two keepalive intervals and timeouts",
            );
        }
        if self.keepalive_interval_ms == 0 || self.request_timeout_ms == 0 {
            return invalid("keepalive_interval_ms and request_timeout_ms must be positive");
        }
        Ok(())
    }

    /// `/atp/<cluster>/nodes/`: the prefix of every node key.
    pub fn nodes_prefix(&self) -> String {
        format!("/atp/{}/nodes/", self.cluster)
    }

    /// `/atp/<cluster>/nodes/<node-id>`: this node's key.
    pub fn node_key(&self) -> String {
        format!("{}{}", self.nodes_prefix(), self.node_id)
    }
}

pub(crate) fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// Whether this node holds its lease. The shard layer serves only while
/// `Held` and `now < deadline` (it checks the deadline itself, so a starved
/// keepalive task cannot keep it serving).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Not joined, or left.
    Idle,
    /// The lease is held until `deadline` unless renewed.
    Held {
        /// The lease's id.
        lease_id: i64,
        /// Send time of the last acknowledged keepalive + TTL − safety margin.
        deadline: Instant,
    },
    /// The lease is lost: step down from every shard at once. Join again for
    /// a new lease; a lost lease is never reused.
    Lost {
        /// The lost lease's id.
        lease_id: i64,
        /// Why.
        reason: LostReason,
    },
}

impl LeaseState {
    /// Whether the lease is held at `now`.
    pub fn is_held_at(&self, now: Instant) -> bool {
        matches!(self, Self::Held { deadline, .. } if now < *deadline)
    }
}

/// Why a lease was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// No keepalive was acknowledged in time: the local deadline passed.
    DeadlinePassed,
    /// etcd answered that the lease no longer exists.
    Expired,
}

/// The member list as of one store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The store revision this list reflects (0: not read yet).
    pub revision: i64,
    /// Node id → address.
    pub nodes: BTreeMap<String, String>,
}

/// Why a membership call failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configuration is inconsistent.
    #[error("invalid membership config: {0}")]
    InvalidConfig(&'static str),
    /// The node already holds a lease.
    #[error("already joined with lease {0}")]
    AlreadyJoined(i64),
    /// A store call failed.
    #[error("failed to {operation}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// A node's membership in the cluster.
pub trait Membership: Send + Sync {
    /// Grants a new lease, puts this node's key bound to it and starts the
    /// keepalives. After a `Lost`, a join gets a new lease.
    fn join(&self) -> impl Future<Output = Result<i64, MembershipError>> + Send;
    /// Stops the keepalives and revokes the lease (deleting the node key).
    fn leave(&self) -> impl Future<Output = Result<(), MembershipError>> + Send;
    /// The lease's state, updated on every renewal and at once on loss.
    fn lease_state(&self) -> watch::Receiver<LeaseState>;
    /// The member list; each update carries the revision it reflects. A
    /// receiver sees the latest list (intermediate ones may be skipped).
    fn members(&self) -> watch::Receiver<Members>;
}

/// [`Membership`] over any [`Store`]: `Member<EtcdStore>` in production,
/// `Member<MemoryEtcd>` in tests and simulation. Dropping it stops its tasks
/// (the lease then expires on its own).
pub struct Member<S: Store> {
    store: S,
    config: MembershipConfig,
    lease_state: watch::Sender<LeaseState>,
    members: watch::Sender<Members>,
    keepalive_task: Mutex<Option<JoinHandle<()>>>,
    watch_task: JoinHandle<()>,
    /// Serialises join and leave (an async lock, held across their store calls).
    join_lock: tokio::sync::Mutex<()>,
}

impl<S: Store> Member<S> {
    /// Starts watching the member list (no join yet). Must be called inside
    /// a tokio runtime: it spawns the watch task.
    pub fn new(store: S, config: MembershipConfig) -> Result<Self, MembershipError> {
        config.validate()?;
        let (lease_state, _) = watch::channel(LeaseState::Idle);
        let (members, _) = watch::channel(Members::default());
        let watch_task =
            tokio::spawn(watch_members(store.clone(), config.clone(), members.clone()));
        Ok(Self {
            store,
            config,
            lease_state,
            members,
            keepalive_task: Mutex::new(None),
            watch_task,
            join_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    fn stop_keepalive(&self) {
        let task = self.keepalive_task.lock().expect("keepalive task lock poisoned").take();
        if let Some(task) = task {
            task.abort();
        }
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, MembershipError> {
        let limit = ms(self.config.request_timeout_ms);
        match timeout(limit, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(MembershipError::Store { operation, source }),
            Err(_) => Err(MembershipError::Store { operation, source: StoreError::Timeout(limit) }),
        }
    }
}

impl<S: Store> Drop for Member<S> {
    fn drop(&mut self) {
        self.stop_keepalive();
        self.watch_task.abort();
    }
}

impl<S: Store> Membership for Member<S> {
    async fn join(&self) -> Result<i64, MembershipError> {
        let _serial = self.join_lock.lock().await;
        let previous = self.lease_state.borrow().clone();
        match previous {
            LeaseState::Held { lease_id, .. } => {
                return Err(MembershipError::AlreadyJoined(lease_id));
            }
            LeaseState::Lost { lease_id, .. } => {
                // Best effort: a lost lease may still live in etcd (we gave up
                // before it expired); revoking it frees what it holds sooner.
                self.stop_keepalive();
                if let Err(error) =
                    self.call("revoke the lost lease", self.store.revoke(lease_id)).await
                {
                    tracing::debug!(
                        lease_id,
                        error = describe(&error),
                        "could not revoke the lost lease"
                    );
                }
            }
            LeaseState::Idle => {}
        }
        let sent = Instant::now();
        let lease =
            self.call("grant a lease", self.store.grant(ms(self.config.lease_ttl_ms))).await?;
        let key = self.config.node_key();
        let put = self.store.put(&key, self.config.address.as_bytes(), lease.id);
        if let Err(error) = self.call("put the node key", put).await {
            let _ = self.call("revoke the new lease", self.store.revoke(lease.id)).await;
            return Err(error);
        }
        let deadline = sent + lease.ttl.saturating_sub(ms(self.config.safety_margin_ms));
        self.lease_state.send_replace(LeaseState::Held { lease_id: lease.id, deadline });
        tracing::info!(lease_id = lease.id, node = %self.config.node_id, "joined the cluster");
        let task = tokio::spawn(keep_lease(
            self.store.clone(),
            self.config.clone(),
            lease,
            deadline,
            self.lease_state.clone(),
        ));
        *self.keepalive_task.lock().expect("keepalive task lock poisoned") = Some(task);
        Ok(lease.id)
    }

    async fn leave(&self) -> Result<(), MembershipError> {
        let _serial = self.join_lock.lock().await;
        self.stop_keepalive();
        let previous = self.lease_state.send_replace(LeaseState::Idle);
        let lease_id = match previous {
            LeaseState::Held { lease_id, .. } | LeaseState::Lost { lease_id, .. } => lease_id,
            LeaseState::Idle => return Ok(()),
        };
        match self.call("revoke the lease", self.store.revoke(lease_id)).await {
            Ok(()) | Err(MembershipError::Store { source: StoreError::LeaseNotFound(_), .. }) => {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn lease_state(&self) -> watch::Receiver<LeaseState> {
        self.lease_state.subscribe()
    }

    fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }
}
