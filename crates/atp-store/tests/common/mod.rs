//! Shared by the store's integration tests: batch and ledger-entry builders,
//! and a model of what the store must load back.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;

use atp_core::ids::{LocationId, Sku};
use atp_core::ledger::{LedgerEntry, LedgerKind};
use atp_core::position::Deltas;
use atp_store::{LoadedShard, ShardBatch, Store};

pub type Write = (Vec<u8>, Option<Vec<u8>>);

pub fn put(key: &str, value: &str) -> Write {
    (key.as_bytes().to_vec(), Some(value.as_bytes().to_vec()))
}

pub fn delete(key: &str) -> Write {
    (key.as_bytes().to_vec(), None)
}

pub fn batch(shard: u32, epoch: u64, sequence: u64, records: Vec<Write>) -> ShardBatch {
    ShardBatch { shard, epoch, sequence, records, ledger: Vec::new() }
}

pub fn entry(sequence: u64, at_ms: i64, sku: &str, location: &str, cause: &str) -> LedgerEntry {
    LedgerEntry {
        sequence,
        at_ms,
        sku: Sku::parse("sku", sku).expect("a valid sku"),
        location: LocationId::parse("location", location).expect("a valid location"),
        cause: cause.into(),
        kind: LedgerKind::Reserve,
        deltas: Deltas { reserved: 1, ..Deltas::default() },
        on_hand: 10,
        reserved: i64::try_from(sequence).expect("a small sequence"),
        committed: 0,
        unavailable: 0,
        incoming: 0,
    }
}

/// A shard in the model: (epoch, last sequence, records).
pub type ModelShard = (u64, u64, BTreeMap<Vec<u8>, Vec<u8>>);

/// What each shard's committed batches add up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// shard → (epoch, last sequence, records).
    pub shards: BTreeMap<u32, ModelShard>,
}

impl Model {
    /// The next sequence of `shard`.
    pub fn next(&self, shard: u32) -> u64 {
        self.shards.get(&shard).map_or(1, |(_, sequence, _)| sequence + 1)
    }

    pub fn apply(&mut self, batch: &ShardBatch) {
        let (epoch, sequence, records) = self.shards.entry(batch.shard).or_default();
        assert_eq!(batch.sequence, *sequence + 1, "the test applies batches in order");
        *epoch = (*epoch).max(batch.epoch);
        *sequence = batch.sequence;
        for (key, value) in &batch.records {
            match value {
                Some(value) => records.insert(key.clone(), value.clone()),
                None => records.remove(key),
            };
        }
    }

    /// What `load_all` must return for `shard`.
    pub fn loaded(&self, shard: u32) -> LoadedShard {
        let Some((epoch, sequence, records)) = self.shards.get(&shard) else {
            return LoadedShard { shard, ..LoadedShard::default() };
        };
        LoadedShard {
            shard,
            epoch: *epoch,
            sequence: *sequence,
            records: records.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The checkpoint of `shard` as of now.
    pub fn checkpoint(&self, shard: u32) -> atp_store::Checkpoint {
        let loaded = self.loaded(shard);
        atp_store::Checkpoint {
            shard,
            epoch: loaded.epoch,
            sequence: loaded.sequence,
            records: loaded.records,
        }
    }
}

/// Asserts that `store.load_all()` is exactly `model`, shard by shard.
pub fn assert_loads(store: &dyn Store, model: &Model) {
    let all = store.load_all().expect("load_all");
    assert_eq!(all.len(), atp_core::hash::SHARD_COUNT as usize);
    for (index, shard) in all.iter().enumerate() {
        assert_eq!(*shard, model.loaded(index as u32), "shard {index}");
    }
}
