//! The etcd-shaped interface membership runs on: leases with keepalive
//! streams, puts bound to a lease, prefix reads with a revision, prefix
//! watches from a revision. [`crate::EtcdStore`] speaks it to a real etcd;
//! `MemoryEtcd` (feature `testing`) is an in-memory etcd with the same
//! semantics, so the membership logic above it is one piece of code tested on
//! both.

use std::future::Future;
use std::time::Duration;

/// A lease as granted: its id and the TTL the server chose (etcd may raise a
/// requested TTL to its minimum; the granted one is what counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (never 0; 0 means "no lease" in etcd).
    pub id: i64,
    /// The TTL the server granted.
    pub ttl: Duration,
}

/// One key and its value as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, as UTF-8.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The revision of the key's last change.
    pub mod_revision: i64,
}

/// Every key under a prefix as of one store revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision the read saw.
    pub revision: i64,
    /// The keys, sorted.
    pub kvs: Vec<KeyValue>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The store revision of the change.
    pub revision: i64,
    /// The key changed.
    pub key: String,
    /// `Some(value)` for a put, `None` for a delete (including a lease's expiry).
    pub value: Option<Vec<u8>>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The etcd client reported an error (transport, status).
    #[error("etcd call failed")]
    Etcd(#[from] etcd_client::Error),
    /// The requested start revision is older than the last compaction.
    #[error("revision compacted (compacted up to {compact_revision})")]
    Compacted {
        /// The store's compaction revision.
        compact_revision: i64,
    },
    /// The revision asked for is newer than the store's.
    #[error("revision {0} is in the future")]
    FutureRevision(i64),
    /// A watch or keepalive stream ended (server gone, restarted, cancelled).
    #[error("stream closed")]
    StreamClosed,
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found")]
    LeaseNotFound(i64),
    /// The call did not finish within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// An etcd-like store. Cloning is cheap and shares the connection.
///
/// Calls may hang while the server is unreachable; callers put a timeout on
/// every one (the membership loop does).
pub trait Store: Clone + Send + Sync + 'static {
    /// A keepalive stream for one lease.
    type Keeper: Keeper;
    /// A watch stream over one prefix.
    type Watch: Watch;

    /// Grants a lease of `ttl` (rounded up to whole seconds, as etcd counts).
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Revokes a lease, deleting every key bound to it.
    fn revoke(&self, lease_id: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Puts `key = value` bound to `lease_id` (0: no lease); returns the revision.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        lease_id: i64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Reads every key under `prefix`.
    fn get_prefix(&self, prefix: &str)
    -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// Compacts the history up to `revision`.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Opens a keepalive stream for `lease_id`.
    fn keep_alive(
        &self,
        lease_id: i64,
    ) -> impl Future<Output = Result<Self::Keeper, StoreError>> + Send;
    /// Watches every change under `prefix` from `start_revision` on
    /// (inclusive); [`StoreError::Compacted`] if that revision is compacted.
    fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

/// A keepalive stream. After an error it is broken: open a new one.
pub trait Keeper: Send + 'static {
    /// Renews the lease once: `Some(ttl)` is the renewed TTL, `None` means the
    /// lease no longer exists.
    fn renew(&mut self) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;
}

/// A watch stream. After an error it is broken: open a new one.
pub trait Watch: Send + 'static {
    /// The next batch of changes (one or more, in revision order).
    fn next(&mut self) -> impl Future<Output = Result<Vec<WatchEvent>, StoreError>> + Send;
}

/// etcd counts TTLs in whole seconds; a requested TTL is rounded up, at least 1.
pub fn ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_millis().div_ceil(1000).max(1);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

/// `error` and its sources, joined by ": ", for a log field.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
