//! A map that remembers which keys were changed, so a batch's changes can be
//! written to the store without tracking them by hand at every call site.
//!
//! Ordered (`BTreeMap`/`BTreeSet`), not hashed: the shard iterates these maps
//! where the order decides results (recovery's line ops and thus ledger
//! sequences, the order of a batch's records), and `HashMap`'s order changes
//! from process to process (random seed), which would break STYLE rule 16
//! (a seeded simulation must replay a failure exactly).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

/// A `BTreeMap` whose every mutable access marks the key as touched. Reads go
/// through `Deref`; there is deliberately no `DerefMut`. Iteration is in key
/// order.
#[derive(Debug)]
pub(crate) struct Tracked<K, V> {
    map: BTreeMap<K, V>,
    touched: BTreeSet<K>,
}

impl<K: Ord + Clone, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Self { map: BTreeMap::new(), touched: BTreeSet::new() }
    }
}

impl<K: Ord + Clone, V> Deref for Tracked<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Ord + Clone, V> Tracked<K, V> {
    fn touch(&mut self, key: &K) {
        if !self.touched.contains(key) {
            self.touched.insert(key.clone());
        }
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.map.contains_key(key) {
            self.touch(key);
        }
        self.map.get_mut(key)
    }

    /// Mutable access that does not mark the key: only for fields the
    /// store never sees (in-memory state such as a change in flight).
    pub(crate) fn get_untracked_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.touch(&key);
        self.map.insert(key, value)
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let removed = self.map.remove(key);
        if removed.is_some() {
            self.touch(key);
        }
        removed
    }

    pub(crate) fn get_or_default(&mut self, key: &K) -> &mut V
    where
        V: Default,
    {
        self.touch(key);
        self.map.entry(key.clone()).or_default()
    }

    /// Whether `key` was changed since the last [`Tracked::take_touched`].
    pub(crate) fn is_touched(&self, key: &K) -> bool {
        self.touched.contains(key)
    }

    /// Removes an entry that was never stored, forgetting that it was touched
    /// (nothing to write or delete).
    pub(crate) fn discard(&mut self, key: &K) -> Option<V> {
        self.touched.remove(key);
        self.map.remove(key)
    }

    /// Inserts without marking (loading from the store).
    pub(crate) fn load(&mut self, key: K, value: V) {
        self.map.insert(key, value);
    }

    /// Keys changed since the last call, in key order.
    pub(crate) fn take_touched(&mut self) -> Vec<K> {
        std::mem::take(&mut self.touched).into_iter().collect()
    }

    pub(crate) fn touched_is_empty(&self) -> bool {
        self.touched.is_empty()
    }
}
