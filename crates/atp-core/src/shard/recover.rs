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

use std::collections::{BTreeMap, BTreeSet};

use super::{Incarnation, LineOp, ShardState, ShipNotice};
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

/// What recovery of part of the shards leaves to the node: what it owes
/// shards other nodes own, and what it cannot settle without their owners'
/// answers (see `docs/PROTOCOL.md`, "Across nodes").
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// What recovery did on this node's shards.
    pub report: RecoveryReport,
    /// Line ops for shards this node does not own: sent to their owners
    /// until acknowledged (each is idempotent and names its version).
    pub remote_ops: Vec<(u32, LineOp)>,
    /// Ship notices for homes this node does not own.
    pub remote_notices: Vec<ShipNotice>,
    /// Reservations with uncommitted holds here that cannot be settled from
    /// this node's shards alone: their holds are kept (no unit is freed or
    /// promised on a guess) until [`resolve`] decides them from the owners'
    /// [`ShardFacts`].
    pub in_doubt: Vec<ReservationId>,
    /// Committed lines of this node's records whose line shard another node
    /// owns: if that shard no longer holds the line, it shipped in full
    /// (ask its owner, then [`ShardState::note_shipped`] the committed total).
    pub unconfirmed: Vec<ShipNotice>,
}

/// Delivers `ops` to the shards this node owns and returns the others'.
fn deliver(
    shards: &mut BTreeMap<u32, ShardState>,
    owned: &dyn Fn(u32) -> bool,
    ops: Vec<(u32, LineOp)>,
    catalog: &Catalog,
    now: i64,
) -> Vec<(u32, LineOp)> {
    let mut remote = Vec::new();
    for (shard, op) in ops {
        if !owned(shard) {
            remote.push((shard, op));
        } else if let Some(state) = shards.get_mut(&shard) {
            // Only Hold and Replace can fail, and recovery sends neither.
            let _ = state.apply_line_op(&op, catalog, now);
        }
    }
    remote
}

/// Recovers `shards` (every shard of the node, by number) as of `now`. A home
/// shard missing from `shards` is created empty if a reservation is rebuilt on it.
pub fn recover(
    shards: &mut BTreeMap<u32, ShardState>,
    catalog: &Catalog,
    now: i64,
) -> RecoveryReport {
    let recovered = recover_owned(shards, &|_| true, catalog, now);
    debug_assert!(recovered.remote_ops.is_empty() && recovered.in_doubt.is_empty());
    recovered.report
}

/// Recovers the shards a node owns (`owned`; `shards` holds those with any
/// state, an owned shard missing from it is empty) as of `now`. Everything
/// that involves only owned shards is settled here as [`recover`] does; the
/// rest is returned: ops and notices for other owners, reservations in
/// doubt, and committed lines to confirm.
pub fn recover_owned(
    shards: &mut BTreeMap<u32, ShardState>,
    owned: &dyn Fn(u32) -> bool,
    catalog: &Catalog,
    now: i64,
) -> Recovered {
    let mut recovered = Recovered::default();

    let implied: Vec<_> = shards.values().flat_map(ShardState::implied_line_ops).collect();
    recovered.report.redelivered = implied.len();
    recovered.remote_ops = deliver(shards, owned, implied, catalog, now);

    settle_orphans(shards, owned, catalog, now, &mut recovered);

    let mut notices: Vec<_> = shards.values().flat_map(ShardState::ship_notices).collect();
    for line in shards.values().flat_map(ShardState::committed_lines) {
        let shard = shard_of(line.sku.as_str());
        if !owned(shard) {
            if line.shipped_total > 0 {
                recovered.unconfirmed.push(line);
            }
            continue;
        }
        let held = shards
            .get(&shard)
            .is_some_and(|state| state.has_line(&line.reservation, &line.sku, &line.location));
        if !held && line.shipped_total > 0 {
            notices.push(line);
        }
    }
    recovered.report.ship_notices = notices.len();
    for notice in notices {
        let home = shard_of(notice.reservation.as_str());
        if !owned(home) {
            recovered.remote_notices.push(notice);
        } else if let Some(home) = shards.get_mut(&home) {
            home.note_shipped(&notice, now);
        }
    }

    let mut expired = Vec::new();
    for state in shards.values_mut() {
        expired.extend(state.tick(now));
    }
    recovered.report.expired = expired.len();
    let remote = deliver(shards, owned, expired, catalog, now);
    recovered.remote_ops.extend(remote);
    recovered
}

/// One uncommitted hold of an id: its shard, the version it holds, and the
/// version a change in flight moves it to.
type HoldOf = (u32, Incarnation, Option<Incarnation>);

/// What one shard's owner says of one reservation id (an answer to a
/// recovery's query; [`ShardState::facts`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardFacts {
    /// The home record, on the id's home shard.
    pub record: Option<RecordFacts>,
    /// This shard's uncommitted hold of the id: the version it holds, and
    /// the version a change in flight moves it to.
    pub hold: Option<(Incarnation, Option<Incarnation>)>,
}

/// A home record as [`ShardFacts`] tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordFacts {
    /// The version it stands at.
    pub version: u64,
    /// Its state (PENDING: a Reserve in flight).
    pub state: crate::reservation::ReservationState,
    /// A change of it is in flight.
    pub changing: bool,
}

impl ShardState {
    /// What this shard knows of `id`, for another node's recovery.
    pub fn facts(&self, id: &ReservationId) -> ShardFacts {
        ShardFacts {
            record: self.record_facts(id),
            hold: self.uncommitted_hold(id).map(|(base, next)| (base.clone(), next.cloned())),
        }
    }
}

/// The shards whose facts [`resolve`] needs for `id` given what is known so
/// far (the home's, then every shard any version seen names): ask their
/// owners until every one answered. Start from the asking node's own
/// shards' facts (the hold that raised the doubt): with no hold known, the
/// home's answer alone decides that nothing is to be done.
pub fn needed(id: &ReservationId, facts: &BTreeMap<u32, ShardFacts>) -> BTreeSet<u32> {
    let home = shard_of(id.as_str());
    let mut needed = BTreeSet::from([home]);
    let Some(home_facts) = facts.get(&home) else { return needed };
    let holds = facts.values().filter_map(|facts| facts.hold.as_ref());
    let top = |(base, next): &(Incarnation, Option<Incarnation>)| {
        next.as_ref().map_or(base.version, |next| next.version.max(base.version))
    };
    if let Some(record) = &home_facts.record
        && holds.clone().all(|hold| top(hold) <= record.version)
    {
        return needed; // decided by the record alone
    }
    for (base, next) in holds {
        needed.extend(base.line_shards());
        if let Some(next) = next {
            needed.extend(next.line_shards());
        }
    }
    needed
}

/// How a reservation in doubt is settled: line ops for its shards (local or
/// remote) and, on its home, a record to rebuild or roll forward.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Abort, Settle or Revert for each shard holding the id.
    pub ops: Vec<(u32, LineOp)>,
    /// The incarnation the home's record must stand at, when it is absent
    /// or behind (apply with [`ShardState::adopt`] on the home).
    pub adopt: Option<Incarnation>,
}

/// Settles `id` from every shard's facts ([`needed`] answered). None while
/// it cannot be decided: facts missing, the home still working on it (a
/// Reserve or a change in flight), or — with `late_holds` = (now,
/// pending timeout) when Holds of the id may still be on their way from a
/// Reserve on another node — no record, no complete version, and the newest
/// Reserve too recent for its late Holds to be refused yet: ask again later.
pub fn resolve(
    id: &ReservationId,
    facts: &BTreeMap<u32, ShardFacts>,
    late_holds: Option<(i64, i64)>,
) -> Option<Resolution> {
    if !needed(id, facts).iter().all(|shard| facts.contains_key(shard)) {
        return None;
    }
    let home = &facts[&shard_of(id.as_str())];
    let record = match home.record {
        Some(record)
            if record.state == crate::reservation::ReservationState::Pending || record.changing =>
        {
            return None;
        }
        Some(record) => {
            Some((record.version, record.state == crate::reservation::ReservationState::Held))
        }
        None => None,
    };
    let holds: Vec<HoldOf> = facts
        .iter()
        .filter_map(|(shard, facts)| {
            facts.hold.as_ref().map(|(base, next)| (*shard, base.clone(), next.clone()))
        })
        .collect();
    if record.is_none()
        && let Some((now, pending_timeout_ms)) = late_holds
        && judge(&holds, None).is_none()
    {
        let newest = holds
            .iter()
            .flat_map(|(_, base, next)| std::iter::once(base).chain(next))
            .max_by_key(|incarnation| incarnation.version);
        // A line shard refuses a Hold this long after its Reserve began.
        if newest.is_some_and(|n| now < n.created_at_ms.saturating_add(pending_timeout_ms)) {
            return None;
        }
    }
    Some(decide(id, &holds, record))
}

/// Step 2: settles every uncommitted hold against its home record: holds of
/// no current version are rolled back, a change in flight is settled or
/// reverted, and a record whose holds are complete but which was lost (or
/// left behind a complete change) is rebuilt at the **highest complete
/// version** (see `docs/PROTOCOL.md`). An id that needs a shard another node
/// owns is left in doubt.
fn settle_orphans(
    shards: &mut BTreeMap<u32, ShardState>,
    owned: &dyn Fn(u32) -> bool,
    catalog: &Catalog,
    now: i64,
    recovered: &mut Recovered,
) {
    let mut by_id: BTreeMap<ReservationId, BTreeMap<u32, ShardFacts>> = BTreeMap::new();
    for (shard, state) in shards.iter() {
        for (id, _, _) in state.uncommitted_holds() {
            by_id.entry(id.clone()).or_default().insert(*shard, state.facts(id));
        }
    }
    let mut ops = Vec::new();
    for (id, mut facts) in by_id {
        let home = shard_of(id.as_str());
        let newest = facts.values().filter_map(|facts| facts.hold.as_ref()).map(|(base, next)| {
            next.as_ref().map_or(base.version, |next| next.version.max(base.version))
        });
        let newest = newest.max().unwrap_or(0);
        // Every owned shard `resolve` needs answers from here (an owned
        // shard without state has nothing of the id).
        loop {
            let missing: Vec<u32> = needed(&id, &facts)
                .into_iter()
                .filter(|shard| owned(*shard) && !facts.contains_key(shard))
                .collect();
            if missing.is_empty() {
                break;
            }
            for shard in missing {
                let known = shards
                    .get(&shard)
                    .map_or(ShardFacts { record: None, hold: None }, |state| state.facts(&id));
                facts.insert(shard, known);
            }
        }
        if owned(home) {
            let template = shards.values().next().expect("a shard holds the id");
            let (epoch, settings) = (template.epoch(), template.settings.clone());
            let state =
                shards.entry(home).or_insert_with(|| ShardState::new(home, epoch, settings));
            state.observe_version(newest);
        }
        // Every Reserve of an id decided here ran on this node and died
        // with it: no Hold of it is still on its way.
        let Some(resolution) = resolve(&id, &facts, None) else {
            if owned(home) {
                shards.get_mut(&home).expect("created above").mark_in_doubt(&id);
            }
            recovered.in_doubt.push(id);
            continue;
        };
        count(&resolution, &mut recovered.report);
        if let Some(incarnation) = &resolution.adopt {
            let state = shards.get_mut(&home).expect("a resolution adopts only on a known home");
            if state.adopt(incarnation, now) {
                recovered.report.rebuilt += 1;
            }
        }
        ops.extend(resolution.ops);
    }
    let remote = deliver(shards, owned, ops, catalog, now);
    recovered.remote_ops.extend(remote);
}

fn count(resolution: &Resolution, report: &mut RecoveryReport) {
    for (_, op) in &resolution.ops {
        match op {
            LineOp::Settle { .. } => report.changes_settled += 1,
            LineOp::Revert { .. } => report.changes_reverted += 1,
            _ => report.aborted += 1,
        }
    }
}

/// The decision for one id from its uncommitted holds and its record
/// (version, HELD) if there is one.
fn decide(id: &ReservationId, holds: &[HoldOf], record: Option<(u64, bool)>) -> Resolution {
    let target = judge(holds, record);
    let mut resolution = Resolution::default();
    for (shard, base, next) in holds {
        let next_version = next.as_ref().map(|next| next.version);
        let op = match (&target, record) {
            (Some(target), _) if next_version == Some(target.version) => {
                LineOp::Settle { id: id.clone(), version: target.version }
            }
            (Some(target), _) if base.version == target.version => match next_version {
                Some(version) => LineOp::Revert { id: id.clone(), version },
                None => continue,
            },
            // The record stays where it is: a change beyond it is reverted.
            (None, Some((version, _))) if base.version == version => match next_version {
                Some(next) => LineOp::Revert { id: id.clone(), version: next },
                None => continue,
            },
            // A hold of no version that stays: rolled back whole.
            _ => LineOp::Abort { id: id.clone(), version: base.version },
        };
        resolution.ops.push((*shard, op));
    }
    resolution.adopt = match (target, record) {
        (Some(target), None) => Some(target),
        (Some(target), Some((version, _))) if version < target.version => Some(target),
        _ => None,
    };
    resolution
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
