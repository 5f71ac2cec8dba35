//! Recovery: after every shard was restored from the store and before any is
//! served, finish what a crash may have cut short between shards.
//!
//! Each step is idempotent, so a crash during recovery is recovered the same way:
//! 1. every reservation record re-sends the line ops its state implies
//!    (commit, release, expire, cancel) — a crash may have lost the delivery;
//! 2. uncommitted line holds whose home has no record belong to a Reserve whose
//!    record never became durable (a PENDING record is never stored). Each
//!    hold carries its reservation whole ([`super::Incarnation`]): if **every**
//!    line shard holds the same id *and version*, the Reserve got as far as its
//!    last hold, so the home record is rebuilt HELD with the carried expiry (a
//!    replay then gets that answer; a passed TTL expires it in step 4);
//!    otherwise the Reserve never completed and every hold it left is released
//!    (`abort`), so an unfinished multi-shard Reserve is rolled back here, not
//!    only by its TTL. Either way no reservation is left half held. An
//!    uncommitted hold older than its home record's version — or, with no
//!    record, older than the newest version any line shard holds — belongs
//!    to an abandoned Reserve whose `Abort` was lost with the process after
//!    a new incarnation of the id began: it is aborted, and the newest
//!    version is judged alone;
//! 3. shipped units on committed lines are told to the reservations' homes,
//!    and a COMMITTED line whose hold is gone shipped in full (a line's hold
//!    ends only when every unit shipped, or by Cancel, which ends the record first);
//! 4. every shard ticks to `now`: holds whose TTL passed while the node was
//!    down expire and their lines are released — except records rebuilt in
//!    step 2, which expire on the first tick after recovery, so their rebuild
//!    is durable before anything frees their holds.

use std::collections::BTreeMap;

use super::{Incarnation, LineOp, ShardState};
use crate::catalog::Catalog;
use crate::hash::shard_of;
use crate::ids::ReservationId;

/// What recovery did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Line ops re-sent from reservation records (most are no-ops).
    pub redelivered: usize,
    /// Holds of unfinished Reserves released.
    pub aborted: usize,
    /// HELD records rebuilt from holds durable on every line shard.
    pub rebuilt: usize,
    /// Ship notices re-sent to homes.
    pub ship_notices: usize,
    /// Line releases from holds that expired while the node was down.
    pub expired: usize,
    /// Changing holds settled at their new version (the change was complete).
    pub changes_settled: usize,
    /// Changing holds reverted to their old version (the change was not).
    pub changes_reverted: usize,
}

fn deliver(
    shards: &mut BTreeMap<u32, ShardState>,
    ops: Vec<(u32, LineOp)>,
    catalog: &Catalog,
    now: i64,
) {
    for (shard, op) in ops {
        if let Some(state) = shards.get_mut(&shard) {
            // Only Hold can fail, and recovery never sends one.
            let _ = state.apply_line_op(&op, catalog, now);
        }
    }
}

/// Recovers `shards` (every shard of the node, by number) as of `now`. A home
/// shard missing from `shards` is created empty if a reservation is rebuilt on it.
pub fn recover(
    shards: &mut BTreeMap<u32, ShardState>,
    catalog: &Catalog,
    now: i64,
) -> RecoveryReport {
    let mut report = RecoveryReport::default();

    let implied: Vec<_> = shards.values().flat_map(ShardState::implied_line_ops).collect();
    report.redelivered = implied.len();
    deliver(shards, implied, catalog, now);

    settle_orphans(shards, catalog, now, &mut report);

    let mut notices: Vec<_> = shards.values().flat_map(ShardState::ship_notices).collect();
    for line in shards.values().flat_map(ShardState::committed_lines) {
        let shard = shard_of(line.sku.as_str());
        let held = shards
            .get(&shard)
            .is_some_and(|state| state.has_line(&line.reservation, &line.sku, &line.location));
        if !held && line.shipped_total > 0 {
            notices.push(line);
        }
    }
    report.ship_notices = notices.len();
    for notice in notices {
        if let Some(home) = shards.get_mut(&shard_of(notice.reservation.as_str())) {
            home.note_shipped(&notice, now);
        }
    }

    let mut expired = Vec::new();
    for state in shards.values_mut() {
        expired.extend(state.tick(now));
    }
    report.expired = expired.len();
    deliver(shards, expired, catalog, now);
    report
}

/// One uncommitted hold of an id: its shard, the version it holds, and the
/// version a change in flight moves it to.
type HoldOf = (u32, Incarnation, Option<Incarnation>);

/// Step 2: settles every uncommitted hold against its home record: holds of
/// no current version are rolled back, a change in flight is settled or
/// reverted, and a record whose holds are complete but which was lost (or
/// left behind a complete change) is rebuilt at the **highest complete
/// version** (see `docs/PROTOCOL.md`).
fn settle_orphans(
    shards: &mut BTreeMap<u32, ShardState>,
    catalog: &Catalog,
    now: i64,
    report: &mut RecoveryReport,
) {
    let mut by_id: BTreeMap<ReservationId, Vec<HoldOf>> = BTreeMap::new();
    for (shard, state) in shards.iter() {
        for (id, base, next) in state.uncommitted_holds() {
            by_id.entry(id.clone()).or_default().push((*shard, base.clone(), next.cloned()));
        }
    }
    let mut ops = Vec::new();
    for (id, holds) in by_id {
        let home = shard_of(id.as_str());
        let template = &shards[&holds[0].0];
        let (epoch, settings) = (template.epoch(), template.settings.clone());
        let state = shards.entry(home).or_insert_with(|| ShardState::new(home, epoch, settings));
        let newest = holds.iter().flat_map(|(_, base, next)| {
            std::iter::once(base.version).chain(next.as_ref().map(|next| next.version))
        });
        state.observe_version(newest.max().unwrap_or(0));
        let record = state.record_version(&id);
        let target = judge(&holds, record);
        for (shard, base, next) in &holds {
            let next_version = next.as_ref().map(|next| next.version);
            let op = match (&target, record) {
                (Some(target), _) if next_version == Some(target.version) => {
                    report.changes_settled += 1;
                    LineOp::Settle { id: id.clone(), version: target.version }
                }
                (Some(target), _) if base.version == target.version => match next_version {
                    Some(version) => {
                        report.changes_reverted += 1;
                        LineOp::Revert { id: id.clone(), version }
                    }
                    None => continue,
                },
                // The record stays where it is: a change beyond it is reverted.
                (None, Some((version, _))) if base.version == version => match next_version {
                    Some(next) => {
                        report.changes_reverted += 1;
                        LineOp::Revert { id: id.clone(), version: next }
                    }
                    None => continue,
                },
                // A hold of no version that stays: rolled back whole.
                _ => {
                    report.aborted += 1;
                    LineOp::Abort { id: id.clone(), version: base.version }
                }
            };
            ops.push((*shard, op));
        }
        let Some(target) = target else { continue };
        let state = shards.get_mut(&home).expect("created above");
        let moved = match record {
            None => state.rebuild_held(&target, now),
            Some((version, _)) if version < target.version => state.roll_forward(&target, now),
            Some(_) => false,
        };
        if moved {
            report.rebuilt += 1;
        }
    }
    deliver(shards, ops, catalog, now);
}

/// The incarnation an id's record must stand at after recovery, when that
/// is a version its holds carry: the newest version seen if it is complete
/// (every line shard it names holds it, settled or as the new side of a
/// changing hold) and the record is absent, HELD below it, or at it; else,
/// with no record, the version the newest one changes from if that is
/// complete. None: the record (if any) stays as it is, and holds of no
/// version it has are rolled back.
fn judge(holds: &[HoldOf], record: Option<(u64, bool)>) -> Option<Incarnation> {
    let newest = holds
        .iter()
        .flat_map(|(_, base, next)| std::iter::once(base).chain(next))
        .max_by_key(|incarnation| incarnation.version)?
        .clone();
    let holds_version = |shard: u32, version: u64| {
        holds.iter().any(|(s, base, next)| {
            *s == shard
                && (base.version == version || next.as_ref().is_some_and(|n| n.version == version))
        })
    };
    let complete = |incarnation: &Incarnation| {
        incarnation.line_shards().into_iter().all(|shard| holds_version(shard, incarnation.version))
    };
    match record {
        // Holds older than the record: an abandoned Reserve's.
        Some((version, _)) if version > newest.version => None,
        Some((version, _)) if version == newest.version => Some(newest),
        Some((_, held)) => (held && complete(&newest)).then_some(newest),
        None if complete(&newest) => Some(newest),
        None => {
            // A change in flight to `newest`: what it changes from.
            let from = holds
                .iter()
                .find(|(_, _, next)| next.as_ref().is_some_and(|n| n.version == newest.version))
                .map(|(_, base, _)| base.clone())?;
            complete(&from).then_some(from)
        }
    }
}
