//! The ledger index in memory: the same layout and query code as the fjall
//! one, for tests and simulation.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use crate::StoreError;
use crate::backend::{Backend, Scan, Space, Write, is_empty_range};

/// Entries a scan copies out per lock.
const SCAN_CHUNK: usize = 1024;

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; 3];

/// The ledger index in `BTreeMap`s (kept as long as the value lives).
#[derive(Default)]
pub(crate) struct MemoryIndex {
    maps: Mutex<Maps>,
}

impl MemoryIndex {
    fn lock(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps as they were between
        // writes (a write is applied after every check), so go on using them.
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for MemoryIndex {
    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_> {
        Box::new(ChunkedScan {
            store: self,
            space,
            next: start,
            end,
            chunk: Vec::new().into_iter(),
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[space.index()].get(key).cloned())
    }

    fn write(&self, writes: Vec<Write>, _durable: bool) -> Result<(), StoreError> {
        let mut maps = self.lock();
        for write in writes {
            let map = &mut maps[write.space.index()];
            match write.value {
                Some(value) => map.insert(write.key, value),
                None => map.remove(&write.key),
            };
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A scan that copies [`SCAN_CHUNK`] entries at a time, so it holds the lock
/// only briefly and sees writes made between chunks (as a real engine's
/// iterator may not; the shared logic does not depend on either).
struct ChunkedScan<'a> {
    store: &'a MemoryIndex,
    space: Space,
    /// Where the next chunk starts.
    next: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    chunk: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for ChunkedScan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(entry) = self.chunk.next() {
            return Some(Ok(entry));
        }
        if is_empty_range(&self.next, &self.end) {
            return None;
        }
        let chunk: Vec<(Vec<u8>, Vec<u8>)> = self.store.lock()[self.space.index()]
            .range((self.next.clone(), self.end.clone()))
            .take(SCAN_CHUNK)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let (last, _) = chunk.last()?;
        self.next = Bound::Excluded(last.clone());
        self.chunk = chunk.into_iter();
        self.chunk.next().map(Ok)
    }
}

/// The ledger index of a store: on disk, or in memory for tests.
pub(crate) enum LedgerIndex {
    /// fjall, in the data directory.
    Fjall(crate::fjall_store::FjallIndex),
    /// `BTreeMap`s.
    Memory(MemoryIndex),
}

impl Backend for LedgerIndex {
    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_> {
        match self {
            Self::Fjall(index) => index.scan(space, start, end),
            Self::Memory(index) => index.scan(space, start, end),
        }
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::Fjall(index) => index.get(space, key),
            Self::Memory(index) => index.get(space, key),
        }
    }

    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        match self {
            Self::Fjall(index) => index.write(writes, durable),
            Self::Memory(index) => index.write(writes, durable),
        }
    }

    fn persist(&self) -> Result<(), StoreError> {
        match self {
            Self::Fjall(index) => index.persist(),
            Self::Memory(index) => index.persist(),
        }
    }
}
