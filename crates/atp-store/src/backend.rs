//! The few operations the shared store logic needs from a key-value engine.

use std::ops::Bound;

use crate::StoreError;

/// One of the ledger index's keyspaces (see `keys` for their layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Space {
    /// The indexer's cursor and the index format.
    Meta,
    /// Ledger entries by shard and sequence.
    Ledger,
    /// The ledger's secondary indexes.
    Index,
}

impl Space {
    /// Every keyspace.
    pub(crate) const ALL: [Space; 3] = [Space::Meta, Space::Ledger, Space::Index];

    /// The keyspace's position in [`Space::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Meta => 0,
            Self::Ledger => 1,
            Self::Index => 2,
        }
    }

    /// The keyspace's name on disk.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Meta => "meta",
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
pub(crate) type Scan<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + 'a>;

/// A key-value engine with atomic multi-keyspace writes: what the ledger
/// index is kept in.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The entries of `space` between `start` and `end`, in key order. An
    /// empty or inverted range yields nothing.
    fn scan(&self, space: Space, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Scan<'_>;

    /// The value of `key` in `space`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Applies every write atomically, in order; when `durable`, returns only
    /// once they are on disk.
    fn write(&self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError>;

    /// Makes every earlier write durable.
    fn persist(&self) -> Result<(), StoreError>;
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
