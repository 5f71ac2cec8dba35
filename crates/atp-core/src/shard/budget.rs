//! The memory budget of what a shard keeps only for retention: ended
//! reservation records (a retry gets the first answer) and stock-event memos
//! (a repeated event id is DUPLICATE). Both are otherwise kept `retention_ms`
//! whatever the rate, so memory would grow with traffic × retention.
//!
//! Past `max_ended_reservations` / `max_event_memos` a shard forgets the
//! oldest (by ended/applied time, then id) at once: the record is removed
//! exactly as retention would remove it, so the deletion reaches the store
//! through [`ShardState::drain_changes`]. Live reservations (PENDING, HELD,
//! COMMITTED) are never indexed here, so never forgotten early.
//!
//! ## Memory estimate (defaults)
//!
//! Bytes per entry were measured with a counting allocator
//! (`crates/atp-core/tests/memory.rs`, which also fails if they grow past
//! the constants below): the map entry, the record, its id and line
//! allocations, its deadline-heap entry and its entry in this index, for a
//! reservation of 3 lines and an event with 36-byte ids and 16-byte SKU and
//! location ids. Ids are `Arc<str>`, so the id kept in the heap and the index
//! shares the record's allocation. A worst-case reservation (100 lines,
//! 128-byte ids everywhere) is about 40 times larger; the limit counts
//! entries, not bytes, so such traffic can exceed the figure below.
//!
//! Defaults: 1024 shards × 512 × [`BYTES_PER_ENDED_RESERVATION`] ≈ 384 MiB
//! and 1024 × 512 × [`BYTES_PER_EVENT_MEMO`] ≈ 224 MiB; together about 600
//! MiB per node at the limit, with typical entries. At 1,000 ended
//! reservations a second spread over the shards, 512 per shard still keeps
//! each one about 8 minutes: long enough for client retries, not for a
//! replay a day later.

use std::collections::BTreeSet;

use super::ShardState;
use crate::ids::{EventId, ReservationId};

/// Default of [`super::ShardSettings::max_ended_reservations`], per shard.
pub const DEFAULT_MAX_ENDED_RESERVATIONS: usize = 512;
/// Default of [`super::ShardSettings::max_event_memos`], per shard.
pub const DEFAULT_MAX_EVENT_MEMOS: usize = 512;
/// Measured heap bytes of one ended 3-line reservation (see the module docs),
/// rounded up.
pub const BYTES_PER_ENDED_RESERVATION: usize = 768;
/// Measured heap bytes of one stock-event memo (see the module docs), rounded up.
pub const BYTES_PER_EVENT_MEMO: usize = 448;

/// Ended records and event memos by age: (ended or applied at ms, id).
#[derive(Debug, Default)]
pub(super) struct Retained {
    ended: BTreeSet<(i64, ReservationId)>,
    memos: BTreeSet<(i64, EventId)>,
    pub(super) evicted_ended_reservations: u64,
    pub(super) evicted_event_memos: u64,
}

impl ShardState {
    /// Record `id` ended at `at`: indexes it, then forgets the oldest other
    /// ended records while the shard holds more than its limit. `id` itself
    /// is never forgotten here (its caller still reads it).
    pub(super) fn retain_ended(&mut self, id: &ReservationId, at: i64) {
        self.retained.ended.insert((at, id.clone()));
        let limit = self.settings.max_ended_reservations;
        let excess = self.retained.ended.len().saturating_sub(limit);
        if limit == 0 || excess == 0 {
            return;
        }
        let oldest: Vec<(i64, ReservationId)> = self
            .retained
            .ended
            .iter()
            .filter(|(_, other)| other != id)
            .take(excess)
            .cloned()
            .collect();
        for entry in oldest {
            self.retained.ended.remove(&entry);
            let (ended_at, victim) = entry;
            // Only a final record with this end time is the entry's record;
            // anything else is a stale entry, dropped without counting.
            let current = self
                .records
                .get(&victim)
                .is_some_and(|r| r.state().is_final() && r.ended_at_ms() == ended_at);
            if current {
                self.records.remove(&victim);
                self.retained.evicted_ended_reservations += 1;
            }
        }
    }

    /// Forgets ended record `id` (its retention passed).
    pub(super) fn forget_ended(&mut self, id: &ReservationId) {
        if let Some(record) = self.records.remove(id) {
            self.retained.ended.remove(&(record.ended_at_ms(), id.clone()));
        }
    }

    /// Memo `id` was recorded at `at`: indexes it, then forgets the oldest
    /// other memos while the shard holds more than its limit.
    pub(super) fn retain_memo(&mut self, id: &EventId, at: i64) {
        self.retained.memos.insert((at, id.clone()));
        let limit = self.settings.max_event_memos;
        let excess = self.retained.memos.len().saturating_sub(limit);
        if limit == 0 || excess == 0 {
            return;
        }
        let oldest: Vec<(i64, EventId)> = self
            .retained
            .memos
            .iter()
            .filter(|(_, other)| other != id)
            .take(excess)
            .cloned()
            .collect();
        for entry in oldest {
            self.retained.memos.remove(&entry);
            let (applied_at, victim) = entry;
            if self.events.get(&victim).is_some_and(|m| m.applied_at_ms() == applied_at) {
                self.events.remove(&victim);
                self.retained.evicted_event_memos += 1;
            }
        }
    }

    /// Forgets memo `id` (its retention passed).
    pub(super) fn forget_memo(&mut self, id: &EventId) {
        if let Some(memo) = self.events.remove(id) {
            self.retained.memos.remove(&(memo.applied_at_ms(), id.clone()));
        }
    }

    /// Rebuilds the index from the records and memos (after a restore).
    pub(super) fn rebuild_retained(&mut self) {
        let ended = self
            .records
            .iter()
            .filter(|(_, record)| record.state().is_final())
            .map(|(id, record)| (record.ended_at_ms(), id.clone()))
            .collect();
        let memos =
            self.events.iter().map(|(id, memo)| (memo.applied_at_ms(), id.clone())).collect();
        self.retained.ended = ended;
        self.retained.memos = memos;
    }
}
