//! Durable storage for one atp node.
//!
//! A [`Store`] keeps three things:
//! - **shard records**: opaque `(key, value)` pairs written by a shard's state
//!   machine (`atp_core::shard`), scanned per shard for recovery (and later
//!   handoff). Keys are unique within a shard; a `None` value deletes.
//! - **the catalog** (locations and channels), one encoded blob.
//! - **the ledger**: every [`LedgerEntry`], queryable by sku, location, cause
//!   and time range, paged, and swept after a retention period.
//!
//! [`Store::commit`] writes many shards' batches as one atomic batch and
//! returns only once it is durable (fsync). A failed commit is never retried:
//! the caller must treat the store as failed (see `docs/ARCHITECTURE.md`).
//!
//! Implementations:
//! - [`FjallStore`]: the durable one, on an embedded LSM tree (fjall).
//! - [`MemoryStore`]: the same layout and query logic on `BTreeMap`s, for tests.
//! - [`FaultyStore`]: wraps another store to hold or fail commits, for tests of
//!   "never acknowledged before durable".
//!
//! Both real implementations share the key layout (`keys`) and the commit,
//! load, ledger query and sweep logic (`records`, `ledger`) through a small
//! internal `Backend` trait, so the fast in-memory tests exercise the same code
//! as the disk store.

mod backend;
mod faulty;
mod fjall_store;
mod keys;
mod ledger;
mod memory;
mod records;

pub use faulty::{CommitHold, FaultyStore};
pub use fjall_store::{FjallStore, StoreOptions};
pub use memory::MemoryStore;

use atp_core::hash::SHARD_COUNT;
use atp_core::ledger::LedgerEntry;

/// The changes of one shard's applied batch.
#[derive(Clone, Debug, Default)]
pub struct ShardBatch {
    /// The shard.
    pub shard: u32,
    /// The shard's epoch when the batch was applied (stored with every record).
    pub epoch: u64,
    /// Records to write (`Some`) or delete (`None`), in order.
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// New ledger entries, in sequence order.
    pub ledger: Vec<LedgerEntry>,
}

impl ShardBatch {
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.ledger.is_empty()
    }
}

/// A ledger query. At least one of `sku`, `location` or `cause` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only this SKU.
    pub sku: Option<String>,
    /// Only this location.
    pub location: Option<String>,
    /// Only entries caused by this reservation or event id.
    pub cause: Option<String>,
    /// Entries at or after this time (ms), inclusive.
    pub from_ms: Option<i64>,
    /// Entries before this time (ms), exclusive.
    pub to_ms: Option<i64>,
    /// Most entries to return (the store caps it at [`MAX_LEDGER_PAGE`]).
    pub limit: usize,
    /// Where the previous page ended (empty for the first page).
    pub page_token: Vec<u8>,
}

/// Largest ledger page.
pub const MAX_LEDGER_PAGE: usize = 1000;

/// Page size of a query whose `limit` is 0.
pub const DEFAULT_LEDGER_PAGE: usize = 100;

/// Most index entries one ledger query examines. When a secondary filter
/// (e.g. a location on top of a sku) rejects this many in a row, the page
/// ends early — possibly empty — with a token to continue, so one request
/// never scans an unbounded part of the ledger.
pub const MAX_LEDGER_SCAN: usize = 100_000;

/// A shard's records as `(key, value)` pairs, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The records of one shard as loaded for recovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedShard {
    /// The shard.
    pub shard: u32,
    /// The highest epoch any of its records was written with (0 when it has none).
    pub epoch: u64,
    /// Its records, in key order, without the stored epoch.
    pub records: Records,
}

/// One page of ledger entries, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerPage {
    /// The entries.
    pub entries: Vec<LedgerEntry>,
    /// Token for the next page; empty when there is none.
    pub next_page_token: Vec<u8>,
}

/// Why the store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The disk write or fsync failed; nothing of that batch may be acknowledged.
    #[error("storage write failed: {0}")]
    Io(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A query was malformed (bad page token, no filter).
    #[error("invalid ledger query: {field}: {message}")]
    InvalidQuery {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Durable storage of one node.
pub trait Store: Send + Sync + 'static {
    /// Writes every batch as one atomic write and returns once it is durable
    /// (fsync). On error none of it may be reported as written.
    fn commit(&self, batches: &[ShardBatch]) -> Result<(), StoreError>;

    /// Every record of `shard`, in key order.
    fn load_shard(&self, shard: u32) -> Result<Records, StoreError> {
        self.load_shard_with_epoch(shard).map(|loaded| loaded.records)
    }

    /// Every record of `shard`, in key order, with the highest epoch stored.
    fn load_shard_with_epoch(&self, shard: u32) -> Result<LoadedShard, StoreError>;

    /// Every shard, [`SHARD_COUNT`] of them, index = shard number (empty shards
    /// included). Stores override this with one pass over all records, which
    /// is faster than loading shard by shard.
    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError> {
        (0..SHARD_COUNT).map(|shard| self.load_shard_with_epoch(shard)).collect()
    }

    /// Writes the encoded catalog durably.
    fn save_catalog(&self, catalog: &[u8]) -> Result<(), StoreError>;

    /// The encoded catalog, if one was saved.
    fn load_catalog(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// One page of ledger entries matching `query`, oldest first (by time,
    /// then shard, then sequence).
    ///
    /// The most selective filter set (cause, then sku, then location) picks
    /// the index scanned; the others are checked on each index entry. `limit`
    /// 0 means [`DEFAULT_LEDGER_PAGE`]; it is capped at [`MAX_LEDGER_PAGE`].
    /// A page may be shorter than `limit` and still carry a token (see
    /// [`MAX_LEDGER_SCAN`]); an empty token means there is nothing more.
    fn query_ledger(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError>;

    /// Deletes ledger entries older than `before_ms`; returns how many.
    ///
    /// Deletes in bounded batches that are not individually made durable: a
    /// crash may bring some back, and the next sweep deletes them again.
    fn sweep_ledger(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// A shared store is a store (tests restart a node on the same `Arc`).
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn commit(&self, batches: &[ShardBatch]) -> Result<(), StoreError> {
        (**self).commit(batches)
    }

    fn load_shard(&self, shard: u32) -> Result<Records, StoreError> {
        (**self).load_shard(shard)
    }

    fn load_shard_with_epoch(&self, shard: u32) -> Result<LoadedShard, StoreError> {
        (**self).load_shard_with_epoch(shard)
    }

    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError> {
        (**self).load_all()
    }

    fn save_catalog(&self, catalog: &[u8]) -> Result<(), StoreError> {
        (**self).save_catalog(catalog)
    }

    fn load_catalog(&self) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).load_catalog()
    }

    fn query_ledger(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
        (**self).query_ledger(query)
    }

    fn sweep_ledger(&self, before_ms: i64) -> Result<u64, StoreError> {
        (**self).sweep_ledger(before_ms)
    }
}
