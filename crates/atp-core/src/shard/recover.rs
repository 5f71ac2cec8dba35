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

/// Step 2: rebuilds or rolls back every reservation that has uncommitted
/// holds but no home record.
fn settle_orphans(
    shards: &mut BTreeMap<u32, ShardState>,
    catalog: &Catalog,
    now: i64,
    report: &mut RecoveryReport,
) {
    // By id: the shards holding it, each with the incarnation its hold carries.
    let mut orphans: BTreeMap<ReservationId, Vec<(u32, Incarnation)>> = BTreeMap::new();
    let mut aborts = Vec::new();
    for (shard, state) in shards.iter() {
        for (id, incarnation) in state.uncommitted_holds() {
            let home = shard_of(id.as_str());
            match shards.get(&home).and_then(|home| home.record_version(id)) {
                None => orphans.entry(id.clone()).or_default().push((*shard, incarnation.clone())),
                // A newer incarnation owns the record: this hold's Reserve
                // was abandoned and its Abort lost.
                Some(current) if current > incarnation.version => aborts
                    .push((*shard, LineOp::Abort { id: id.clone(), version: incarnation.version })),
                Some(_) => {}
            }
        }
    }
    for (id, holds) in orphans {
        // Holds of an older version than the id's newest belong to an
        // incarnation that ended (abandoned: the next one began only after
        // it was forgotten) and whose Abort was lost: roll them back, and
        // judge the newest version alone.
        let newest = holds.iter().map(|(_, incarnation)| incarnation.version).max();
        let (holds, stale): (Vec<_>, Vec<_>) =
            holds.into_iter().partition(|(_, incarnation)| Some(incarnation.version) == newest);
        for (shard, incarnation) in stale {
            aborts.push((shard, LineOp::Abort { id: id.clone(), version: incarnation.version }));
        }
        let (_, incarnation) = &holds[0];
        let complete = holds.iter().all(|(_, other)| other == incarnation)
            && incarnation.line_shards().iter().all(|line| holds.iter().any(|(s, _)| s == line));
        if complete {
            let home = shard_of(id.as_str());
            let template = &shards[&holds[0].0];
            let (epoch, settings) = (template.epoch(), template.settings.clone());
            let state =
                shards.entry(home).or_insert_with(|| ShardState::new(home, epoch, settings));
            if state.rebuild_held(incarnation, now) {
                report.rebuilt += 1;
            }
        } else {
            for (shard, incarnation) in holds {
                let version = incarnation.version;
                aborts.push((shard, LineOp::Abort { id: id.clone(), version }));
            }
        }
    }
    report.aborted = aborts.len();
    deliver(shards, aborts, catalog, now);
}
