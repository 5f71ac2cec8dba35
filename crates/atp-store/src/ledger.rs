//! Ledger queries and the retention sweep, over any [`Backend`].
//!
//! A query is a range scan of one index (see `keys`): the prefix names the
//! filter value, the suffix orders by time, so `from_ms..to_ms` is a key
//! range and a page token is simply the suffix of the last key a page used.

use std::ops::Bound;

use atp_core::hash::SHARD_COUNT;
use atp_core::ledger::LedgerEntry;

use crate::backend::{Backend, Space, Write, is_empty_range, prefix_range};
use crate::keys::{Index, Suffix, decode, index_key, index_keys, index_prefix, shard_prefix};
use crate::{
    DEFAULT_LEDGER_PAGE, LedgerPage, LedgerQuery, MAX_LEDGER_PAGE, MAX_LEDGER_SCAN, StoreError,
};

/// Most ledger entries one sweep write deletes.
const SWEEP_BATCH: usize = 4096;

/// One page of entries matching `query`, oldest first.
pub(crate) fn query<B: Backend>(
    backend: &B,
    query: &LedgerQuery,
) -> Result<LedgerPage, StoreError> {
    let (index, field, value) = if let Some(cause) = &query.cause {
        (Index::Cause, "cause_id", cause)
    } else if let Some(sku) = &query.sku {
        (Index::Sku, "sku", sku)
    } else if let Some(location) = &query.location {
        (Index::Location, "location_id", location)
    } else {
        return Err(StoreError::InvalidQuery {
            field: "sku",
            message: "one of sku, location_id or cause_id is required".to_owned(),
        });
    };
    let Some(prefix) = index_prefix(index, value) else {
        return Err(StoreError::InvalidQuery { field, message: "is too long".to_owned() });
    };
    let limit = match query.limit {
        0 => DEFAULT_LEDGER_PAGE,
        limit => limit.min(MAX_LEDGER_PAGE),
    };

    let from = index_key(prefix.clone(), Suffix::at(query.from_ms.unwrap_or(i64::MIN)));
    let start = if query.page_token.is_empty() {
        Bound::Included(from)
    } else {
        let after = index_key(prefix.clone(), Suffix::from_token(&query.page_token)?);
        if after >= from { Bound::Excluded(after) } else { Bound::Included(from) }
    };
    let end = match query.to_ms {
        Some(to_ms) => Bound::Excluded(index_key(prefix, Suffix::at(to_ms))),
        None => Bound::Included(index_key(prefix, Suffix::max())),
    };
    let mut page = LedgerPage::default();
    if is_empty_range(&start, &end) {
        return Ok(page);
    }

    let mut last_returned = None;
    for (scanned, item) in backend.scan(Space::Index, start, end).enumerate() {
        let (key, value) = item?;
        let suffix = Suffix::from_key(key.as_slice())?;
        if passes_other_filters(index, value.as_slice(), query)? {
            if page.entries.len() == limit {
                // There is at least one more: point the token at what we returned.
                let last: Suffix = last_returned.expect("limit is at least 1");
                page.next_page_token = last.to_token();
                return Ok(page);
            }
            // An entry missing here was swept after the scan began.
            if let Some(stored) = backend.get(Space::Ledger, &suffix.ledger_key())? {
                page.entries.push(decode::<LedgerEntry>(stored.as_ref())?);
                last_returned = Some(suffix);
            }
        }
        if scanned + 1 >= MAX_LEDGER_SCAN {
            page.next_page_token = suffix.to_token();
            return Ok(page);
        }
    }
    Ok(page)
}

/// Whether the index entry with `value` passes the filters other than the
/// one that chose `index` (filters of a lower priority than `index`'s own).
fn passes_other_filters(
    index: Index,
    value: &[u8],
    query: &LedgerQuery,
) -> Result<bool, StoreError> {
    let wanted =
        |filter: &Option<String>, actual: &str| filter.as_deref().is_none_or(|f| f == actual);
    Ok(match index {
        Index::Cause => {
            let (sku, location): (&str, &str) = decode(value)?;
            wanted(&query.sku, sku) && wanted(&query.location, location)
        }
        Index::Sku => query.location.as_deref().is_none_or(|location| location.as_bytes() == value),
        Index::Location => true,
    })
}

/// Deletes every entry older than `before_ms` with its index entries, in
/// writes of about [`SWEEP_BATCH`] entries (not individually durable);
/// returns how many.
///
/// Walks each shard's ledger from its oldest entry and stops at the first one
/// not older than `before_ms`: the shard clock never goes back, so sequence
/// order is time order. (Were it ever to, an old entry behind a younger one
/// would be swept late, once the younger one is old enough — never kept.)
pub(crate) fn sweep<B: Backend>(backend: &B, before_ms: i64) -> Result<u64, StoreError> {
    let mut sweep = Sweep { backend, writes: Vec::new(), pending: 0, swept: 0 };
    for shard in 0..SHARD_COUNT {
        let prefix = shard_prefix(shard);
        let (mut start, end) = prefix_range(&prefix);
        loop {
            let mut scanned = 0;
            let mut last_key = None;
            for item in backend.scan(Space::Ledger, start.clone(), end.clone()).take(SWEEP_BATCH) {
                let (key, value) = item?;
                let entry: LedgerEntry = decode(value.as_slice())?;
                if entry.at_ms >= before_ms {
                    break;
                }
                scanned += 1;
                sweep.delete(key.as_slice(), prefix, &entry)?;
                last_key = Some(key.as_slice().to_vec());
            }
            match last_key {
                Some(last_key) if scanned == SWEEP_BATCH => start = Bound::Excluded(last_key),
                _ => break,
            }
        }
    }
    sweep.flush()?;
    Ok(sweep.swept)
}

/// Deletions of a sweep not yet written.
struct Sweep<'a, B> {
    backend: &'a B,
    writes: Vec<Write>,
    /// Entries in `writes`.
    pending: u64,
    /// Entries deleted so far.
    swept: u64,
}

impl<B: Backend> Sweep<'_, B> {
    fn delete(
        &mut self,
        key: &[u8],
        shard: [u8; 2],
        entry: &LedgerEntry,
    ) -> Result<(), StoreError> {
        self.writes.push(Write::delete(Space::Ledger, key.to_vec()));
        let index_keys = index_keys(shard, entry);
        self.writes.extend(index_keys.into_iter().map(|key| Write::delete(Space::Index, key)));
        self.pending += 1;
        if self.pending >= SWEEP_BATCH as u64 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending > 0 {
            self.backend.write(std::mem::take(&mut self.writes), false)?;
            self.swept += self.pending;
            self.pending = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use atp_core::ids::{LocationId, Sku};
    use atp_core::ledger::LedgerKind;
    use atp_core::position::Deltas;

    use super::*;
    use crate::disk::Disk;
    use crate::{LogOptions, LogStore, MemoryStore, ShardBatch, Store};

    fn entry(sequence: u64, at_ms: i64) -> LedgerEntry {
        LedgerEntry {
            sequence,
            at_ms,
            sku: Sku::parse("sku", &format!("sku-{}", sequence % 7)).unwrap(),
            location: LocationId::parse("location", &format!("L{}", sequence % 3)).unwrap(),
            cause: format!("cause-{}", sequence % 11).into(),
            kind: LedgerKind::Expire,
            deltas: Deltas::default(),
            on_hand: 0,
            reserved: 0,
            committed: 0,
            unavailable: 0,
            incoming: 0,
        }
    }

    fn count<B: Backend>(backend: &B, space: Space) -> usize {
        backend.scan(space, Bound::Unbounded, Bound::Unbounded).count()
    }

    /// Sweeping everything leaves no primary or index entry behind.
    fn sweep_leaves_nothing<D: Disk>(store: &LogStore<D>) {
        let batches: Vec<ShardBatch> = [0, 1, 513, 1023]
            .into_iter()
            .map(|shard| ShardBatch {
                shard,
                epoch: 1,
                sequence: 1,
                records: Vec::new(),
                ledger: (1..=5000).map(|sequence| entry(sequence, sequence as i64)).collect(),
            })
            .collect();
        store.commit(&batches).unwrap();
        let index = store.indexed_for_tests();
        assert_eq!(count(index, Space::Ledger), 4 * 5000);
        assert_eq!(count(index, Space::Index), 3 * 4 * 5000);
        assert_eq!(store.sweep_ledger(2501).unwrap(), 4 * 2500);
        assert_eq!(count(index, Space::Ledger), 4 * 2500);
        assert_eq!(count(index, Space::Index), 3 * 4 * 2500);
        assert_eq!(store.sweep_ledger(i64::MAX).unwrap(), 4 * 2500);
        assert_eq!(count(index, Space::Ledger), 0);
        assert_eq!(count(index, Space::Index), 0);
    }

    #[test]
    fn memory_sweep_leaves_nothing() {
        sweep_leaves_nothing(&MemoryStore::new());
    }

    #[test]
    fn fjall_sweep_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        sweep_leaves_nothing(&LogStore::open(dir.path(), LogOptions::default()).unwrap());
    }
}
