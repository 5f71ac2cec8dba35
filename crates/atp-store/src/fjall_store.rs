//! The durable store: one fjall database per node, one keyspace per kind of
//! data (see `keys` for the layouts).

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Slice};

use crate::StoreError;
use crate::backend::{Backend, Scan, Space, Write, is_empty_range};

const MIB: u64 = 1024 * 1024;

/// fjall refuses a smaller journal limit.
const MIN_JOURNAL_BYTES: u64 = 64 * MIB;

/// Tuning of a [`FjallStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size at which a keyspace's memtable is sealed and flushed to disk.
    ///
    /// fjall stores it with each keyspace when the keyspace is created, so it
    /// only applies to a new data directory. Smaller memtables mean shorter
    /// flush stalls of commits (fjall's 64 MiB default stalled commits by
    /// 0.15–0.7 s on the development machine) at the price of more, smaller
    /// tables to compact.
    pub memtable_size_bytes: u64,
    /// Block cache size, shared by all keyspaces.
    pub cache_size_bytes: u64,
    /// Most journal (write-ahead log) kept on disk; beyond it fjall flushes
    /// memtables so older journal files can go. Bounds how much journal a
    /// restart replays (about 0.65 s per 64 MB measured). At least 64 MiB
    /// (smaller values are raised to it).
    pub max_journal_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            memtable_size_bytes: 32 * MIB,
            cache_size_bytes: 64 * MIB,
            max_journal_bytes: 128 * MIB,
        }
    }
}

/// The node's durable store, on fjall.
///
/// Every [`Store::commit`](crate::Store::commit) is one fjall write batch across keyspaces, synced
/// with `fdatasync` before it returns. A failed write or sync poisons the
/// database: every later write fails too, and the node must restart (reopen)
/// to go on — the journal then tells what did reach the disk.
pub struct FjallStore {
    db: Database,
    /// One per [`Space`], in [`Space::ALL`] order.
    keyspaces: [Keyspace; 4],
}

impl FjallStore {
    /// Opens the store in `dir`, creating it if needed, and replays its journal.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<FjallStore, StoreError> {
        let started = std::time::Instant::now();
        let db = Database::builder(dir)
            .cache_size(options.cache_size_bytes)
            .max_journaling_size(options.max_journal_bytes.max(MIN_JOURNAL_BYTES))
            .open()
            .map_err(io_error("opening the database"))?;
        let open = |space: Space| {
            db.keyspace(space.name(), || {
                KeyspaceCreateOptions::default().max_memtable_size(options.memtable_size_bytes)
            })
            .map_err(io_error("opening a keyspace"))
        };
        let [shards, config, ledger, index] = Space::ALL;
        let keyspaces = [open(shards)?, open(config)?, open(ledger)?, open(index)?];
        tracing::info!(dir = %dir.display(), elapsed = ?started.elapsed(), "opened the store");
        Ok(FjallStore { db, keyspaces })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space.index()]
    }
}

/// Maps a fjall error to [`StoreError::Io`], saying what was being done.
fn io_error(doing: &'static str) -> impl Fn(fjall::Error) -> StoreError {
    move |error| StoreError::Io(format!("{doing}: {error}"))
}

impl Backend for FjallStore {
    type Bytes = Slice;

    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_, Slice> {
        if is_empty_range(&start, &end) {
            return Box::new(std::iter::empty());
        }
        let reading = io_error("reading");
        Box::new(
            self.keyspace(space)
                .range((start, end))
                .map(move |guard| guard.into_inner().map_err(&reading)),
        )
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        self.keyspace(space).get(key).map_err(io_error("reading"))
    }

    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        // `durability` must be set on the batch: its commit then writes and
        // syncs the journal under one lock. The default is no sync at all.
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), writes.len())
            .durability(durable.then_some(PersistMode::SyncData));
        for write in writes {
            let keyspace = self.keyspace(write.space);
            match write.value {
                Some(value) => batch.insert(keyspace, write.key, value),
                None => batch.remove(keyspace, write.key),
            }
        }
        batch.commit().map_err(io_error("writing"))
    }
}

crate::backend::store_over_backend!(FjallStore);
