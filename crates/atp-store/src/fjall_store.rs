//! The ledger index on disk: one fjall database, one keyspace per kind of
//! data (see `keys` for the layouts). Shard state is not here: it lives in
//! the log and the checkpoints (`log_store`).

use std::ops::Bound;
use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::StoreError;
use crate::backend::{Backend, Scan, Space, Write, is_empty_range};

const MIB: u64 = 1024 * 1024;

/// fjall refuses a smaller journal limit.
const MIN_JOURNAL_BYTES: u64 = 64 * MIB;
/// Memtable size of each keyspace (only applies to a new index).
const MEMTABLE_BYTES: u64 = 32 * MIB;
/// Block cache shared by the keyspaces.
const CACHE_BYTES: u64 = 32 * MIB;

/// The ledger index, on fjall. Writes of the indexer are not synced one by
/// one; [`Backend::persist`] syncs them before log segments are deleted.
pub(crate) struct FjallIndex {
    db: Database,
    /// One per [`Space`], in [`Space::ALL`] order.
    keyspaces: [Keyspace; 3],
}

impl FjallIndex {
    /// Opens the index in `dir`, creating it if needed.
    pub(crate) fn open(dir: &Path) -> Result<FjallIndex, StoreError> {
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MIN_JOURNAL_BYTES)
            .open()
            .map_err(io_error("opening the ledger index"))?;
        let open = |space: Space| {
            db.keyspace(space.name(), || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(io_error("opening a ledger index keyspace"))
        };
        let [meta, ledger, index] = Space::ALL;
        let keyspaces = [open(meta)?, open(ledger)?, open(index)?];
        Ok(FjallIndex { db, keyspaces })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[space.index()]
    }
}

/// Maps a fjall error to [`StoreError::Io`], saying what was being done.
fn io_error(doing: &'static str) -> impl Fn(fjall::Error) -> StoreError {
    move |error| StoreError::Io(format!("{doing}: {error}"))
}

impl Backend for FjallIndex {
    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_> {
        if is_empty_range(&start, &end) {
            return Box::new(std::iter::empty());
        }
        let reading = io_error("reading the ledger index");
        Box::new(self.keyspace(space).range((start, end)).map(move |guard| {
            guard.into_inner().map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(&reading)
        }))
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .keyspace(space)
            .get(key)
            .map_err(io_error("reading the ledger index"))?
            .map(|value| value.to_vec()))
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
        batch.commit().map_err(io_error("writing the ledger index"))
    }

    fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncData).map_err(io_error("syncing the ledger index"))
    }
}
