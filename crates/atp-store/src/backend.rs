//! The few operations the shared store logic needs from a key-value engine.

use std::ops::Bound;

use crate::StoreError;

/// One of the store's keyspaces (see `keys` for their layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Space {
    /// Shard records.
    Shards,
    /// The catalog.
    Config,
    /// Ledger entries by shard and sequence.
    Ledger,
    /// The ledger's secondary indexes.
    Index,
}

impl Space {
    /// Every keyspace.
    pub(crate) const ALL: [Space; 4] = [Space::Shards, Space::Config, Space::Ledger, Space::Index];

    /// The keyspace's position in [`Space::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Shards => 0,
            Self::Config => 1,
            Self::Ledger => 2,
            Self::Index => 3,
        }
    }

    /// The keyspace's name on disk.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Shards => "shards",
            Self::Config => "config",
            Self::Ledger => "ledger",
            Self::Index => "ledger_index",
        }
    }
}

/// One put (`value` is `Some`) or delete.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) space: Space,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

impl Write {
    pub(crate) fn put(space: Space, key: Vec<u8>, value: Vec<u8>) -> Self {
        Self { space, key, value: Some(value) }
    }

    pub(crate) fn delete(space: Space, key: Vec<u8>) -> Self {
        Self { space, key, value: None }
    }
}

/// A key range scan, in key order.
pub(crate) type Scan<'a, Bytes> = Box<dyn Iterator<Item = Result<(Bytes, Bytes), StoreError>> + 'a>;

/// A key-value engine with atomic multi-keyspace writes.
pub(crate) trait Backend {
    /// Bytes as the engine hands them out.
    type Bytes: AsRef<[u8]>;

    /// The entries of `space` between `start` and `end`, in key order. An
    /// empty or inverted range yields nothing.
    fn scan(
        &self,
        space: Space,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> Scan<'_, Self::Bytes>;

    /// The value of `key` in `space`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Self::Bytes>, StoreError>;

    /// Applies every write atomically, in order; when `durable`, returns only
    /// once they are on disk.
    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError>;
}

/// The range of every key starting with `prefix`.
pub(crate) fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = Bound::Included(prefix.to_vec());
    // The end is the prefix with its last non-0xFF byte incremented.
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return (start, Bound::Excluded(end));
        }
    }
    (start, Bound::Unbounded)
}

/// Whether no key lies between `start` and `end`.
pub(crate) fn is_empty_range(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    match (start, end) {
        (Bound::Unbounded, _) | (_, Bound::Unbounded) => false,
        (Bound::Included(start), Bound::Included(end)) => start > end,
        (Bound::Included(start) | Bound::Excluded(start), Bound::Excluded(end))
        | (Bound::Excluded(start), Bound::Included(end)) => start >= end,
    }
}

/// Implements [`crate::Store`] for a [`Backend`]: every store operation is the
/// same code over any backend (`records` and `ledger`), only the engine differs.
macro_rules! store_over_backend {
    ($backend:ty) => {
        impl $crate::Store for $backend {
            fn commit(&self, batches: &[$crate::ShardBatch]) -> Result<(), $crate::StoreError> {
                $crate::records::commit(self, batches)
            }

            fn load_shard_with_epoch(
                &self,
                shard: u32,
            ) -> Result<$crate::LoadedShard, $crate::StoreError> {
                $crate::records::load_shard(self, shard)
            }

            fn load_all(&self) -> Result<Vec<$crate::LoadedShard>, $crate::StoreError> {
                $crate::records::load_all(self)
            }

            fn save_catalog(&self, catalog: &[u8]) -> Result<(), $crate::StoreError> {
                $crate::records::save_catalog(self, catalog)
            }

            fn load_catalog(&self) -> Result<Option<Vec<u8>>, $crate::StoreError> {
                $crate::records::load_catalog(self)
            }

            fn query_ledger(
                &self,
                query: &$crate::LedgerQuery,
            ) -> Result<$crate::LedgerPage, $crate::StoreError> {
                $crate::ledger::query(self, query)
            }

            fn sweep_ledger(&self, before_ms: i64) -> Result<u64, $crate::StoreError> {
                $crate::ledger::sweep(self, before_ms)
            }
        }
    };
}
pub(crate) use store_over_backend;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        assert_eq!(prefix_range(&[1, 2]).1, Bound::Excluded(vec![1, 3]));
        assert_eq!(prefix_range(&[1, 0xFF]).1, Bound::Excluded(vec![2]));
        assert_eq!(prefix_range(&[0xFF]).1, Bound::Unbounded);
    }

    #[test]
    fn empty_ranges() {
        let key = |k: u8| vec![k];
        assert!(is_empty_range(&Bound::Included(key(2)), &Bound::Excluded(key(2))));
        assert!(is_empty_range(&Bound::Excluded(key(2)), &Bound::Included(key(2))));
        assert!(!is_empty_range(&Bound::Included(key(2)), &Bound::Included(key(2))));
        assert!(is_empty_range(&Bound::Included(key(3)), &Bound::Included(key(2))));
        assert!(!is_empty_range(&Bound::Excluded(key(3)), &Bound::Unbounded));
    }
}
