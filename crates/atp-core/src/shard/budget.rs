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
//! The memory estimate behind the defaults is on
//! [`DEFAULT_MAX_ENDED_RESERVATIONS`].

use std::collections::BTreeSet;

use super::ShardState;
use crate::ids::{EventId, ReservationId};

/// Default of [`super::ShardSettings::max_ended_reservations`], per shard.
///
/// Memory estimate: heap bytes per entry were measured with a counting global
/// allocator around a shard (a scratch program, not in the repo: the
/// workspace forbids `unsafe`, which a global allocator needs): the map entry,
/// the record with its id and line allocations, its deadline-heap entry and
/// its entry in the budget's index. An ended reservation of 1 line with
/// 36-byte ids takes ~670 B, of 3 lines ~890 B; the worst case the limits
/// allow (100 lines, 128-byte ids) ~34 KB. An event memo with a 36-byte id
/// takes ~620 B (128-byte id: ~820 B).
///
/// With 1 KiB per ended reservation and 640 B per memo, 1024 shards × 1024
/// ended reservations + 1024 shards × 2048 memos is 1 GiB + 1.25 GiB ≈ 2.3 GiB
/// per node at the limits. The limit counts entries, not bytes: reservations
/// of many lines with long ids can exceed that figure (up to ~35× for the
/// largest). At 1,000 ended reservations a second spread over the shards,
/// 1024 per shard keeps each one ~17 minutes: enough for client retries,
/// not for a replay hours later. Event ids get twice the room because a
/// forgotten one makes a re-sent event apply twice (a stock error), while a
/// forgotten reservation only answers NOT_FOUND or holds again.
pub const DEFAULT_MAX_ENDED_RESERVATIONS: usize = 1024;
/// Default of [`super::ShardSettings::max_event_memos`], per shard (see
/// [`DEFAULT_MAX_ENDED_RESERVATIONS`] for the memory estimate).
pub const DEFAULT_MAX_EVENT_MEMOS: usize = 2048;

/// How long an ended reservation is kept before the budget may forget it.
/// The line ops of its end (release, cancel) are delivered to the lines'
/// shards after the home's batch is durable, and recovery re-sends them from
/// the record; forgotten too soon, a crash before delivery would leave a
/// cancelled order's committed units held for ever (recovery releases
/// orphaned uncommitted holds, not committed ones). Deliveries take
/// milliseconds; a minute leaves room for a node under load. Ended records
/// younger than this may exceed `max_ended_reservations` for that minute.
pub const MIN_AGE_BEFORE_EARLY_FORGET_MS: i64 = 60_000;

/// Ended records and event memos by age: (ended or applied at ms, id).
#[derive(Debug, Default)]
pub(super) struct Retained {
    ended: BTreeSet<(i64, ReservationId)>,
    memos: BTreeSet<(i64, EventId)>,
    pub(super) evicted_ended_reservations: u64,
    pub(super) evicted_event_memos: u64,
}

impl ShardState {
    /// Record `id` ended at `at` (now): indexes it, then forgets the oldest
    /// other ended records at least [`MIN_AGE_BEFORE_EARLY_FORGET_MS`] old
    /// while the shard holds more than its limit. `id` itself is never
    /// forgotten here (its caller still reads it).
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
            .take_while(|(ended_at, _)| {
                *ended_at <= at.saturating_sub(MIN_AGE_BEFORE_EARLY_FORGET_MS)
            })
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
