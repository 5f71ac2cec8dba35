//! What recovery asks of the home side: which records exist, what their
//! states imply for the lines' shards, and rebuilding a record from its holds.
//!
//! Records live in a hash map; everything here walks them in id order, so
//! recovery delivers its line ops (and numbers its ledger entries) the same
//! way every time.

use super::super::lines::Incarnation;
use super::super::{Deadline, LineOp, ShardState, ShipNotice};
use super::Record;
use crate::ids::ReservationId;
use crate::ledger::LedgerKind;
use crate::reservation::ReservationState;

impl Record {
    /// The line ops this record's state implies on its lines' shards (none
    /// while PENDING or HELD). Re-sent by recovery and by replayed requests.
    pub(in crate::shard) fn implied_ops(&self, id: &ReservationId) -> Vec<(u32, LineOp)> {
        let version = self.version;
        let commit = |lines| LineOp::Commit { id: id.clone(), version, lines };
        let release = |kind| move |_| LineOp::Release { id: id.clone(), version, kind };
        match self.state {
            ReservationState::Pending | ReservationState::Held => Vec::new(),
            ReservationState::Committed | ReservationState::Fulfilled => self.line_ops(commit),
            ReservationState::Cancelled => {
                let mut ops = self.line_ops(commit);
                ops.extend(self.line_ops(|_| LineOp::Cancel { id: id.clone(), version }));
                ops
            }
            ReservationState::Released => self.line_ops(release(LedgerKind::Release)),
            ReservationState::Expired => self.line_ops(release(LedgerKind::Expire)),
        }
    }
}

/// The Reserves (id, version) a home refused or abandoned in this process's
/// life, in the order they were dropped: past `limit` entries the oldest is
/// forgotten.
#[derive(Debug, Default)]
pub(in crate::shard) struct Dropped {
    set: std::collections::HashSet<(ReservationId, u64)>,
    order: std::collections::VecDeque<(ReservationId, u64)>,
}

impl Dropped {
    pub(in crate::shard) fn insert(&mut self, id: &ReservationId, version: u64, limit: usize) {
        if self.set.insert((id.clone(), version)) {
            self.order.push_back((id.clone(), version));
        }
        while self.order.len() > limit.max(1) {
            let Some(oldest) = self.order.pop_front() else { break };
            self.set.remove(&oldest);
        }
    }

    /// Whether `version` of `id` was dropped (its holds are being aborted).
    pub(in crate::shard) fn contains(&self, id: &ReservationId, version: u64) -> bool {
        self.set.contains(&(id.clone(), version))
    }
}

impl ShardState {
    /// The record of `id` as another node's recovery is told it.
    pub(in crate::shard) fn record_facts(
        &self,
        id: &ReservationId,
    ) -> Option<super::super::RecordFacts> {
        self.records.get(id).map(|record| super::super::RecordFacts {
            version: record.version,
            state: record.state,
            changing: record.changing.is_some(),
        })
    }

    /// Recovery could not settle `id` without other nodes: refuse a new
    /// Reserve of it until it is.
    pub(in crate::shard) fn mark_in_doubt(&mut self, id: &ReservationId) {
        self.in_doubt.insert(id.clone());
    }

    /// Whether `id` waits for a resolution (a Reserve of it is refused).
    pub fn is_in_doubt(&self, id: &ReservationId) -> bool {
        self.in_doubt.contains(id)
    }

    /// `id` was settled without adopting a record here (its holds were
    /// rolled back or kept as they are).
    pub fn settled_doubt(&mut self, id: &ReservationId) {
        self.in_doubt.remove(id);
    }

    /// Makes the record of `incarnation`'s id stand at it (a resolution's
    /// [`super::super::Resolution::adopt`]): rebuilt HELD if absent, rolled
    /// forward if HELD at a lower version. True if the record changed.
    ///
    /// A version this home refused or abandoned is not adopted: its holds
    /// are being aborted.
    pub fn adopt(&mut self, incarnation: &Incarnation, now: i64) -> bool {
        let id = &incarnation.request.id;
        self.in_doubt.remove(id);
        self.observe_version(incarnation.version);
        if self.dropped.contains(id, incarnation.version) {
            return false;
        }
        if self.records.contains_key(id) {
            self.roll_forward(incarnation, now)
        } else {
            self.rebuild_held(incarnation, now)
        }
    }

    /// A hold of a reservation homed here carries `version`: later versions
    /// this home hands out must be higher (its stored sequence may lag what
    /// it had handed out before a crash), so a new change or incarnation
    /// is never mistaken for one its holds already carry.
    pub(in crate::shard) fn observe_version(&mut self, version: u64) {
        self.applied_sequence = self.applied_sequence.max(version);
    }

    /// Moves a HELD record to `to`, a change of it complete on every line
    /// shard whose record write was lost. Like a rebuild, it does not expire
    /// within recovery. Returns false (and changes nothing) otherwise.
    pub(in crate::shard) fn roll_forward(&mut self, to: &Incarnation, now: i64) -> bool {
        self.advance(now);
        let id = &to.request.id;
        let movable = self
            .records
            .get(id)
            .is_some_and(|r| r.state == ReservationState::Held && r.version < to.version);
        if !movable {
            return false;
        }
        self.applied_sequence += 1;
        let record = self.records.get_mut(id).expect("checked above");
        // A line shard of the record's version that `to` does not name
        // keeps a hold of that version nobody else ends: `to` is another
        // incarnation of the id (a Reserve begun again after this one's
        // record was lost), or a change that dropped that shard. Abort it
        // (delivered by the next tick; docs/PROTOCOL.md, "A roll-forward
        // aborts what the old version leaves behind").
        let kept = to.line_shards();
        let from = record.version;
        let left: Vec<(u32, LineOp)> = record
            .line_ops(|_| LineOp::Abort { id: id.clone(), version: from })
            .into_iter()
            .filter(|(shard, _)| !kept.contains(shard))
            .collect();
        record.apply_change(to);
        self.undelivered.extend(left);
        let record = self.records.get_mut(id).expect("checked above");
        // The change's request id is not in its holds: a retry of it is
        // judged as a new change (to the same lines).
        record.not_expired_before_ms = now + 1;
        let at = record.deadline(self.settings.retention_ms).unwrap_or(now + 1);
        self.schedule(at, Deadline::Expire(id.clone()));
        true
    }

    fn records_by_id(&self) -> Vec<(&ReservationId, &Record)> {
        let mut records: Vec<_> = self.records.iter().collect();
        records.sort_by(|a, b| a.0.cmp(b.0));
        records
    }

    /// Every line of every COMMITTED record, with the units committed.
    pub(in crate::shard) fn committed_lines(&self) -> Vec<ShipNotice> {
        let mut lines = Vec::new();
        for (id, record) in self.records_by_id() {
            let (ReservationState::Committed, Some(committed)) = (record.state, &record.committed)
            else {
                continue;
            };
            for (line, units) in record.request.lines.iter().zip(committed) {
                lines.push(ShipNotice {
                    reservation: id.clone(),
                    sku: line.sku.clone(),
                    location: line.location.clone(),
                    shipped_total: *units,
                });
            }
        }
        lines
    }

    /// The line ops every record's state implies on its lines' shards. All are
    /// idempotent, so recovery re-sends them in case a crash lost them.
    pub(in crate::shard) fn implied_line_ops(&self) -> Vec<(u32, LineOp)> {
        let mut ops = Vec::new();
        for (id, record) in self.records_by_id() {
            ops.extend(record.implied_ops(id));
        }
        ops
    }

    /// Rebuilds the HELD record of a reservation whose holds are durable on
    /// every line shard but whose record is not (the crash came between the
    /// two group commits of a Reserve). Its expiry is the first answer's; if
    /// that passed, the next [`ShardState::tick`] expires it as usual.
    /// Returns false (and changes nothing) if the id already has a record.
    pub(in crate::shard) fn rebuild_held(&mut self, incarnation: &Incarnation, now: i64) -> bool {
        self.advance(now);
        let id = &incarnation.request.id;
        if self.records.contains_key(id) {
            return false;
        }
        self.applied_sequence += 1;
        let mut record = Record::held(incarnation);
        // Expires on the first tick after recovery (the actor's, which
        // writes the EXPIRED record before freeing the holds), not within it.
        record.not_expired_before_ms = now + 1;
        let at = record.deadline(self.settings.retention_ms).unwrap_or(now + 1);
        self.records.insert(id.clone(), record);
        self.schedule(at, Deadline::Expire(id.clone()));
        true
    }
}
