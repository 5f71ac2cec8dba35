//! Commit and load of shard records and the catalog, over any [`Backend`].

use std::collections::HashMap;
use std::ops::Bound;

use atp_core::hash::SHARD_COUNT;

use crate::backend::{Backend, Space, Write, prefix_range};
use crate::keys::{
    CATALOG_KEY, encode, index_entries, ledger_key, record_key, record_value, shard_of_record_key,
    shard_prefix, split_record_value,
};
use crate::{LoadedShard, ShardBatch, StoreError};

/// The last write of each record of a commit: (shard, key) → (epoch, value).
type LastWrites<'a> = HashMap<(u32, &'a [u8]), (u64, Option<&'a [u8]>)>;

/// Writes every batch (records, ledger entries and their index entries) as
/// one durable atomic write.
pub(crate) fn commit<B: Backend>(backend: &B, batches: &[ShardBatch]) -> Result<(), StoreError> {
    // A key written twice in one engine batch would get the same sequence
    // number twice, and which one wins is the engine's business, so keep only
    // the last write of each record here.
    let mut records = LastWrites::new();
    let mut ledger_count = 0;
    for batch in batches {
        for (key, value) in &batch.records {
            records.insert((batch.shard, key), (batch.epoch, value.as_deref()));
        }
        ledger_count += batch.ledger.len();
    }
    let mut writes = Vec::with_capacity(records.len() + 5 * ledger_count);
    for ((shard, key), (epoch, value)) in records {
        let key = record_key(shard, key);
        writes.push(match value {
            Some(value) => Write::put(Space::Shards, key, record_value(epoch, value)),
            None => Write::delete(Space::Shards, key),
        });
    }
    for batch in batches {
        let shard = shard_prefix(batch.shard);
        for entry in &batch.ledger {
            let key = ledger_key(shard, entry.sequence).to_vec();
            writes.push(Write::put(Space::Ledger, key, encode(entry)));
            for (key, value) in index_entries(shard, entry) {
                writes.push(Write::put(Space::Index, key, value));
            }
        }
    }
    backend.write(writes, true)
}

/// Every record of `shard` with the highest epoch among them.
pub(crate) fn load_shard<B: Backend>(backend: &B, shard: u32) -> Result<LoadedShard, StoreError> {
    let (start, end) = prefix_range(&shard_prefix(shard));
    let mut loaded = LoadedShard { shard, ..LoadedShard::default() };
    for item in backend.scan(Space::Shards, start, end) {
        let (key, value) = item?;
        add_record(&mut loaded, key.as_ref(), value.as_ref())?;
    }
    Ok(loaded)
}

/// Every shard, index = shard: one pass over all records, split into a
/// contiguous range of shards per available core (at most [`LOAD_THREADS`]).
pub(crate) fn load_all<B: Backend + Sync>(backend: &B) -> Result<Vec<LoadedShard>, StoreError> {
    let threads = std::thread::available_parallelism().map_or(1, |count| count.get());
    let threads = u32::try_from(threads.clamp(1, LOAD_THREADS)).expect("small");
    let per_thread = SHARD_COUNT.div_ceil(threads);
    let ranges: Vec<(u32, u32)> = (0..threads)
        .map(|part| (part * per_thread, ((part + 1) * per_thread).min(SHARD_COUNT)))
        .filter(|(first, end)| first < end)
        .collect();
    let parts: Vec<Result<Vec<LoadedShard>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|(first, end)| scope.spawn(move || load_range(backend, first, end)))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a loader thread panicked")).collect()
    });
    let mut shards = Vec::with_capacity(SHARD_COUNT as usize);
    for part in parts {
        shards.extend(part?);
    }
    Ok(shards)
}

/// Most threads [`load_all`] uses.
const LOAD_THREADS: usize = 4;

/// Shards `first..end`, in one scan.
fn load_range<B: Backend>(
    backend: &B,
    first: u32,
    end: u32,
) -> Result<Vec<LoadedShard>, StoreError> {
    let mut shards: Vec<LoadedShard> =
        (first..end).map(|shard| LoadedShard { shard, ..LoadedShard::default() }).collect();
    let start = Bound::Included(shard_prefix(first).to_vec());
    let stop = match end {
        SHARD_COUNT => Bound::Unbounded,
        end => Bound::Excluded(shard_prefix(end).to_vec()),
    };
    for item in backend.scan(Space::Shards, start, stop) {
        let (key, value) = item?;
        let key = key.as_ref();
        let shard = shard_of_record_key(key)?;
        let Some(loaded) = shard
            .checked_sub(first)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| shards.get_mut(index))
        else {
            return Err(StoreError::Corrupt(format!("record of shard {shard}")));
        };
        add_record(loaded, key, value.as_ref())?;
    }
    Ok(shards)
}

fn add_record(loaded: &mut LoadedShard, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    let (epoch, value) = split_record_value(value)?;
    loaded.epoch = loaded.epoch.max(epoch);
    let key = key.get(2..).expect("a shard's records start with its two-byte prefix");
    loaded.records.push((key.to_vec(), value.to_vec()));
    Ok(())
}

/// Writes the catalog durably.
pub(crate) fn save_catalog<B: Backend>(backend: &B, catalog: &[u8]) -> Result<(), StoreError> {
    backend.write(vec![Write::put(Space::Config, CATALOG_KEY.to_vec(), catalog.to_vec())], true)
}

/// The catalog, if saved.
pub(crate) fn load_catalog<B: Backend>(backend: &B) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(backend.get(Space::Config, CATALOG_KEY)?.map(|value| value.as_ref().to_vec()))
}
