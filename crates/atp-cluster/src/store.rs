//! The etcd-shaped interface membership and shard claims run on: leases with
//! keepalive streams, puts bound to a lease, reads with a revision, prefix
//! watches from a revision, and transactions (compare, then put/delete, in
//! one revision). [`crate::EtcdStore`] speaks it to a real etcd;
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
    /// The revision of the put that created the key (it changes only when
    /// the key is deleted and created again).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// The lease the key is bound to (0: none).
    pub lease_id: i64,
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
    /// For a put, the key's create revision (0 for a delete).
    pub create_revision: i64,
    /// For a put, the lease the key is bound to (0: none, and for a delete).
    pub lease_id: i64,
}

/// One condition of a transaction, on one key. Every comparison is an
/// equality, as etcd evaluates it: an absent key has version, create and mod
/// revision 0, and no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// What it must be.
    pub target: CompareTarget,
}

/// What a [`Compare`] requires of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key does not exist (etcd: version = 0).
    Absent,
    /// The key's create revision is this (0: absent).
    CreateRevision(i64),
    /// The key's last change is at this revision (0: absent).
    ModRevision(i64),
    /// The key was changed this many times since it was created (0: absent).
    Version(i64),
    /// The key exists with this value.
    Value(Vec<u8>),
}

impl Compare {
    /// `key` does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self { key: key.into(), target: CompareTarget::Absent }
    }
    /// `key`'s create revision is `revision`.
    pub fn create_revision(key: impl Into<String>, revision: i64) -> Self {
        Self { key: key.into(), target: CompareTarget::CreateRevision(revision) }
    }
    /// `key`'s mod revision is `revision`.
    pub fn mod_revision(key: impl Into<String>, revision: i64) -> Self {
        Self { key: key.into(), target: CompareTarget::ModRevision(revision) }
    }
    /// `key`'s version is `version`.
    pub fn version(key: impl Into<String>, version: i64) -> Self {
        Self { key: key.into(), target: CompareTarget::Version(version) }
    }
    /// `key` exists with `value`.
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), target: CompareTarget::Value(value.into()) }
    }
}

/// A write in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Puts `key = value` bound to `lease_id` (0: no lease).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none).
        lease_id: i64,
    },
    /// Deletes `key` (nothing happens if it is absent).
    Delete {
        /// The key.
        key: String,
    },
}

impl TxnOp {
    /// A put.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>, lease_id: i64) -> Self {
        Self::Put { key: key.into(), value: value.into(), lease_id }
    }
    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }
}

/// A transaction: if every compare holds, `success` runs, else `failure`;
/// either way the writes happen in one revision (none if nothing changed).
/// etcd refuses more than 128 compares or operations per branch by default
/// (`--max-txn-ops`); [`MAX_TXN_OPS`] is the limit callers keep to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// The writes when they hold.
    pub success: Vec<TxnOp>,
    /// The writes when one does not.
    pub failure: Vec<TxnOp>,
}

/// The most compares, or operations in one branch, a [`Txn`] may carry
/// (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (`success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction: the transaction's own
    /// revision if it wrote anything (so a key it created has this create
    /// revision).
    pub revision: i64,
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
    /// A transaction has more compares or operations than [`MAX_TXN_OPS`].
    #[error("transaction too large: {0} compares or operations in one part")]
    TxnTooLarge(usize),
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
    /// Reads one key (`None`: absent) and the store revision the read saw.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<(Option<KeyValue>, i64), StoreError>> + Send;
    /// Deletes one key; returns the revision after it (unchanged if the key
    /// was absent).
    fn delete(&self, key: &str) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Runs a transaction. A put bound to a lease that does not exist fails
    /// the whole transaction with [`StoreError::LeaseNotFound`].
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnOutcome, StoreError>> + Send;
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
