//! A map that remembers which keys were changed, so a batch's changes can be
//! written to the store without tracking them by hand at every call site.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::ops::Deref;

/// A `HashMap` whose every mutable access marks the key as touched. Reads go
/// through `Deref`; there is deliberately no `DerefMut`.
#[derive(Debug)]
pub(crate) struct Tracked<K, V> {
    map: HashMap<K, V>,
    touched: HashSet<K>,
}

impl<K: Eq + Hash + Clone, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Self { map: HashMap::new(), touched: HashSet::new() }
    }
}

impl<K: Eq + Hash + Clone, V> Deref for Tracked<K, V> {
    type Target = HashMap<K, V>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Eq + Hash + Clone, V> Tracked<K, V> {
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

    /// Keys changed since the last call.
    pub(crate) fn take_touched(&mut self) -> Vec<K> {
        self.touched.drain().collect()
    }

    pub(crate) fn touched_is_empty(&self) -> bool {
        self.touched.is_empty()
    }
}
