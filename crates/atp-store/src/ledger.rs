//! Ledger queries and the retention sweep, over any [`Backend`].
//!
//! A query is a range scan of one index (see `keys`): the prefix names the
//! filter value, the suffix orders by time, so `from_ms..to_ms` is a key
//! range and a page token is simply the suffix of the last key a page used.

use std::ops::Bound;

use atp_core::ledger::LedgerEntry;

use crate::backend::{Backend, Space, Write, is_empty_range};
use crate::keys::{Index, Suffix, decode, index_key, index_keys_from_time_entry, index_prefix};
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

    let from = index_key(&prefix, Suffix::at(query.from_ms.unwrap_or(i64::MIN)));
    let start = if query.page_token.is_empty() {
        Bound::Included(from)
    } else {
        let after = index_key(&prefix, Suffix::from_token(&query.page_token)?);
        if after >= from { Bound::Excluded(after) } else { Bound::Included(from) }
    };
    let end = match query.to_ms {
        Some(to_ms) => Bound::Excluded(index_key(&prefix, Suffix::at(to_ms))),
        None => Bound::Included(index_key(&prefix, Suffix::max())),
    };
    let mut page = LedgerPage::default();
    if is_empty_range(&start, &end) {
        return Ok(page);
    }

    let mut last_returned = None;
    for (scanned, item) in backend.scan(Space::Index, start, end).enumerate() {
        let (key, value) = item?;
        let suffix = Suffix::from_key(key.as_ref())?;
        if passes_other_filters(index, value.as_ref(), query)? {
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
        Index::Location | Index::Time => true,
    })
}

/// Deletes every entry older than `before_ms` with its index entries, in
/// batches of [`SWEEP_BATCH`] (not individually durable); returns how many.
pub(crate) fn sweep<B: Backend>(backend: &B, before_ms: i64) -> Result<u64, StoreError> {
    let prefix = index_prefix(Index::Time, "").expect("the time index has no value");
    let end = Bound::Excluded(index_key(&prefix, Suffix::at(before_ms)));
    let mut start = Bound::Included(prefix);
    let mut swept = 0;
    while !is_empty_range(&start, &end) {
        let mut writes = Vec::with_capacity(5 * SWEEP_BATCH);
        let mut last_key = None;
        let mut count: u64 = 0;
        for item in backend.scan(Space::Index, start.clone(), end.clone()).take(SWEEP_BATCH) {
            let (key, value) = item?;
            let (suffix, index_keys) = index_keys_from_time_entry(key.as_ref(), value.as_ref())?;
            writes.push(Write::delete(Space::Ledger, suffix.ledger_key().to_vec()));
            writes.extend(index_keys.into_iter().map(|key| Write::delete(Space::Index, key)));
            last_key = Some(key.as_ref().to_vec());
            count += 1;
        }
        let Some(last_key) = last_key else { break };
        backend.write(writes, false)?;
        swept += count;
        if count < SWEEP_BATCH as u64 {
            break;
        }
        start = Bound::Excluded(last_key);
    }
    Ok(swept)
}
