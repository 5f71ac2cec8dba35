//! Durable storage for one atp node: the log is the store.
//!
//! A [`Store`] keeps:
//! - **the log**: one record per shard batch (shard, epoch, the shard's batch
//!   sequence, the batch's record writes and ledger entries), versioned and
//!   checksummed, appended in groups with one write + one fdatasync
//!   ([`Store::commit`]);
//! - **checkpoints**: each shard's records at a batch boundary, written in the
//!   background; recovery = checkpoint + the log after it ([`Store::load_all`]);
//!   a log segment is deleted once checkpoints cover it ([`Store::compact_log`]);
//! - **the catalog** (locations and channels), one checksummed file;
//! - **the ledger index**: every [`LedgerEntry`], queryable by sku, location,
//!   cause and time range, built from the log by a background indexer.
//!
//! A failed commit is never retried: the caller must treat the store as failed
//! (see `docs/ARCHITECTURE.md`). The file formats are in the `log` and
//! `checkpoint` modules; the disk sits behind [`Disk`] so a simulation can
//! tear writes and fail fsyncs ([`SimDisk`]).
//!
//! Implementations: [`LogStore`] (on a [`RealDisk`] with a fjall ledger index,
//! or on a [`SimDisk`] with an in-memory one) and [`FaultyStore`], which wraps
//! a store to hold or fail commits in tests.

mod backend;
mod checkpoint;
mod codec;
mod disk;
mod faulty;
mod fjall_store;
mod indexer;
mod keys;
mod ledger;
mod log;
mod log_store;
mod memory;

pub use checkpoint::{
    CHECKPOINT_FORMAT_VERSION, Checkpoint, decode as decode_checkpoint, encode as encode_checkpoint,
};
pub use disk::{CrashMode, Disk, RealDisk, SimDisk};
pub use faulty::{CommitHold, FaultyStore};
pub use log::{LOG_FORMAT_VERSION, LogPosition, RECORD_VERSION};
pub use log_store::{DATA_FORMAT_VERSION, LogOptions, LogStore};

#[doc(hidden)]
pub mod fuzzing;

/// A store on a simulated disk with an in-memory ledger index (tests).
pub type MemoryStore = LogStore<std::sync::Arc<SimDisk>>;

use atp_core::ledger::LedgerEntry;

/// The changes of one shard's applied batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardBatch {
    /// The shard.
    pub shard: u32,
    /// The shard's epoch when the batch was applied.
    pub epoch: u64,
    /// The shard's batch number: 1 for its first batch, +1 for each next one.
    pub sequence: u64,
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
    /// The highest epoch of its checkpoint and log records (0 when it has none).
    pub epoch: u64,
    /// The sequence of its last durable batch (0: none).
    pub sequence: u64,
    /// Its records, in key order.
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
    /// The disk is full: nothing of the write may be acknowledged; the node
    /// refuses writes until space is freed and it restarts.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The data directory is of a format this build does not read.
    #[error("unsupported data format: {0}")]
    Format(String),
    /// A query was malformed (bad page token, no filter).
    #[error("invalid ledger query: {field}: {message}")]
    InvalidQuery {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Sizes and positions of the log, for the admin API and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Log segments on disk.
    pub segments: u64,
    /// Bytes in them.
    pub log_bytes: u64,
    /// Shard checkpoints on disk.
    pub checkpoints: u64,
    /// Bytes in them.
    pub checkpoint_bytes: u64,
    /// End of the durable log.
    pub durable: LogPosition,
    /// Where the ledger indexer got to.
    pub indexed: LogPosition,
}

/// Durable storage of one node.
pub trait Store: Send + Sync + 'static {
    /// Writes every batch and returns once it is durable (fdatasync). On
    /// error none of it may be reported as written, and every later commit
    /// fails too.
    fn commit(&self, batches: &[ShardBatch]) -> Result<(), StoreError>;

    /// Every shard, [`SHARD_COUNT`](atp_core::hash::SHARD_COUNT) of them, index = shard number (empty
    /// shards included): its checkpoint with the log's later batches applied.
    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError>;

    /// Replaces a shard's checkpoint, durably.
    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Closes the current log segment (if it holds anything), so that the
    /// next checkpoints can cover all of it.
    fn rotate_log(&self);

    /// Deletes the oldest log segments that every checkpoint covers and the
    /// ledger indexer has passed; returns how many.
    fn compact_log(&self) -> Result<u64, StoreError>;

    /// Sizes and positions of the log.
    fn log_stats(&self) -> LogStats;

    /// Writes the encoded catalog durably.
    fn save_catalog(&self, catalog: &[u8]) -> Result<(), StoreError>;

    /// The encoded catalog, if one was saved.
    fn load_catalog(&self) -> Result<Option<Vec<u8>>, StoreError>;

    /// One page of ledger entries matching `query`, oldest first (by time,
    /// then shard, then sequence). Sees every entry durable before the call
    /// (it waits for the indexer to get there).
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

    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError> {
        (**self).load_all()
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        (**self).write_checkpoint(checkpoint)
    }

    fn rotate_log(&self) {
        (**self).rotate_log()
    }

    fn compact_log(&self) -> Result<u64, StoreError> {
        (**self).compact_log()
    }

    fn log_stats(&self) -> LogStats {
        (**self).log_stats()
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
