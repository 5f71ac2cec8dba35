//! A small map from location to value: a SKU's positions.
//!
//! A SKU is stocked at a handful of locations, and a `BTreeMap` allocates a
//! node for eleven entries whatever it holds (~1.4 KiB for a shard's
//! position state), twice per SKU (the shard and the read view). A sorted
//! `Vec` holds just what is there. Lookups are a binary search; inserts keep
//! the order. It encodes exactly like a `BTreeMap` (a serde map in key
//! order), so stored records do not change.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::LocationId;

/// Values by location, in location order.
#[derive(Clone, PartialEq, Eq)]
pub struct LocationMap<V> {
    entries: Vec<(LocationId, V)>,
}

impl<V> Default for LocationMap<V> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<V> LocationMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, location: &LocationId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(key, _)| key.cmp(location))
    }

    /// The value at `location`.
    pub fn get(&self, location: &LocationId) -> Option<&V> {
        self.find(location).ok().map(|index| &self.entries[index].1)
    }

    /// The value at `location`, inserted as `V::default()` if missing.
    pub fn get_or_default(&mut self, location: &LocationId) -> &mut V
    where
        V: Default,
    {
        let index = match self.find(location) {
            Ok(index) => index,
            Err(index) => {
                self.entries.insert(index, (location.clone(), V::default()));
                index
            }
        };
        &mut self.entries[index].1
    }

    /// Sets the value at `location`; returns the one it replaced.
    pub fn insert(&mut self, location: LocationId, value: V) -> Option<V> {
        match self.find(&location) {
            Ok(index) => Some(std::mem::replace(&mut self.entries[index].1, value)),
            Err(index) => {
                self.entries.insert(index, (location, value));
                None
            }
        }
    }

    /// Removes and returns the value at `location`.
    pub fn remove(&mut self, location: &LocationId) -> Option<V> {
        self.find(location).ok().map(|index| self.entries.remove(index).1)
    }

    /// Entries in location order.
    pub fn iter(&self) -> impl Iterator<Item = (&LocationId, &V)> {
        self.entries.iter().map(|(key, value)| (key, value))
    }

    /// Values in location order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    /// How many locations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The same keys with `f` applied to each value.
    pub fn map<W>(&self, mut f: impl FnMut(&V) -> W) -> LocationMap<W> {
        LocationMap {
            entries: self.entries.iter().map(|(key, value)| (key.clone(), f(value))).collect(),
        }
    }
}

impl<V> FromIterator<(LocationId, V)> for LocationMap<V> {
    fn from_iter<I: IntoIterator<Item = (LocationId, V)>>(iter: I) -> Self {
        let mut entries: Vec<(LocationId, V)> = iter.into_iter().collect();
        // The last value of a repeated key wins, as in a BTreeMap.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, earlier| later.0 == earlier.0);
        entries.shrink_to_fit();
        Self { entries }
    }
}

impl<'a, V> IntoIterator for &'a LocationMap<V> {
    type Item = (&'a LocationId, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (LocationId, V)>,
        fn(&'a (LocationId, V)) -> (&'a LocationId, &'a V),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(key, value)| (key, value))
    }
}

impl<V> std::ops::Index<&LocationId> for LocationMap<V> {
    type Output = V;

    fn index(&self, location: &LocationId) -> &V {
        self.get(location).expect("no value at this location")
    }
}

impl<V: fmt::Debug> fmt::Debug for LocationMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for LocationMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (key, value) in &self.entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for LocationMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = LocationMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of locations")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some((key, value)) = access.next_entry::<LocationId, V>()? {
                    entries.push((key, value));
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn location(id: &str) -> LocationId {
        LocationId::parse("location", id).expect("valid")
    }

    #[test]
    fn behaves_like_a_btree_map_and_encodes_like_one() {
        let mut map = LocationMap::new();
        let mut reference = BTreeMap::new();
        for (n, id) in ["dc-3", "dc-1", "dc-2", "dc-1", "store-9"].into_iter().enumerate() {
            *map.get_or_default(&location(id)) += n;
            *reference.entry(location(id)).or_default() += n;
        }
        assert_eq!(map.len(), reference.len());
        let pairs: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let expected: Vec<_> = reference.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(pairs, expected);
        let encoded = postcard::to_stdvec(&map).expect("encodes");
        assert_eq!(encoded, postcard::to_stdvec(&reference).expect("encodes"));
        let decoded: LocationMap<usize> = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(decoded, map);
        assert_eq!(map.remove(&location("dc-2")), Some(2));
        assert_eq!(map.get(&location("dc-2")), None);
        assert_eq!(map[&location("dc-1")], 4);
    }
}
