//! An in-memory store with the disk store's layout and logic, for tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use crate::StoreError;
use crate::backend::{Backend, Scan, Space, Write, is_empty_range};

/// Entries a scan copies out per lock.
const SCAN_CHUNK: usize = 1024;

type Maps = [BTreeMap<Vec<u8>, Vec<u8>>; 4];

/// A [`Store`](crate::Store) in `BTreeMap`s: the same key layout, commit, ledger query and
/// sweep code as [`FjallStore`](crate::FjallStore), without a disk.
///
/// "Durable" here means "kept as long as this value lives": a test can stop
/// a node and start another on the same `Arc<MemoryStore>` to simulate a
/// restart.
#[derive(Default)]
pub struct MemoryStore {
    maps: Mutex<Maps>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        // A panic while holding the lock leaves the maps as they were between
        // writes (a write is applied after every check), so go on using them.
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Backend for MemoryStore {
    type Bytes = Vec<u8>;

    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_, Vec<u8>> {
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
}

/// A scan that copies [`SCAN_CHUNK`] entries at a time, so it holds the lock
/// only briefly and sees writes made between chunks (as a real engine's
/// iterator may not; the shared logic does not depend on either).
struct ChunkedScan<'a> {
    store: &'a MemoryStore,
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

crate::backend::store_over_backend!(MemoryStore);
