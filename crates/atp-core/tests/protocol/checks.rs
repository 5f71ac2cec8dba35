//! The invariants the protocol test checks, on live shards after every step
//! and on recovered shards after every crash.

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::catalog::Catalog;
use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, ReservationId, Sku};
use atp_core::ledger::{LedgerEntry, LedgerKind};
use atp_core::reservation::ReservationState;
use atp_core::shard::{HoldView, ShardState};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Where one line's hold stands according to the durable ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldLife {
    Held,
    Committed,
    Ended,
}

/// Follows every reservation line through the durable ledger: a hold is
/// placed, then ends exactly once (released, expired, aborted, cancelled) or
/// is committed (and later cancelled or shipped).
#[derive(Default)]
pub struct LedgerLives {
    /// Each line's life and, while held, its units held.
    lives: BTreeMap<(std::sync::Arc<str>, Sku, LocationId), (HoldLife, i64)>,
}

impl LedgerLives {
    pub fn feed(&mut self, entry: &LedgerEntry) -> Result<(), TestCaseError> {
        if !entry.cause.starts_with(crate::ID_PREFIX) {
            return Ok(()); // a stock event
        }
        let key = (entry.cause.clone(), entry.sku.clone(), entry.location.clone());
        let (before, units) = self.lives.get(&key).copied().unwrap_or((HoldLife::Ended, 0));
        let units = units + entry.deltas.reserved;
        let after = match (before, entry.kind) {
            (HoldLife::Ended | HoldLife::Committed, LedgerKind::Reserve) => HoldLife::Held,
            // A change moves a held line's units; it ends when none are left.
            (HoldLife::Held, LedgerKind::Change) if units > 0 => HoldLife::Held,
            (HoldLife::Held, LedgerKind::Change) if units == 0 => HoldLife::Ended,
            (
                HoldLife::Held,
                LedgerKind::Release | LedgerKind::Expire | LedgerKind::Abort | LedgerKind::Cancel,
            ) => HoldLife::Ended,
            (HoldLife::Held, LedgerKind::Commit) => HoldLife::Committed,
            (HoldLife::Committed, LedgerKind::Cancel) => HoldLife::Ended,
            (before, kind) => {
                return Err(TestCaseError::fail(format!(
                    "hold {key:?} was {before:?} when the ledger says {}",
                    kind.name()
                )));
            }
        };
        if after == HoldLife::Held {
            prop_assert!(units > 0, "hold {:?} holds {} units", key, units);
        }
        let units = if after == HoldLife::Held { units } else { 0 };
        self.lives.insert(key, (after, units));
        Ok(())
    }

    /// After every TTL passed: no hold is still open.
    pub fn all_ended(&self) -> Result<(), TestCaseError> {
        for (key, (life, _)) in &self.lives {
            prop_assert!(*life != HoldLife::Held, "hold {:?} never ended", key);
        }
        Ok(())
    }
}

/// Every position's `reserved` and `committed` equal the sums over the holds
/// on its shard, and a position with units promised is not oversold.
pub fn positions_match_holds(
    shards: &BTreeMap<u32, ShardState>,
    catalog: &Catalog,
) -> Result<(), TestCaseError> {
    for (number, state) in shards {
        let mut sums: BTreeMap<(Sku, LocationId), (i64, i64)> = BTreeMap::new();
        for hold in state.line_holds() {
            for line in &hold.lines {
                let sum = sums.entry((line.sku.clone(), line.location.clone())).or_default();
                if hold.committed {
                    sum.1 += line.committed - line.shipped;
                } else {
                    sum.0 += line.held;
                }
            }
        }
        for (sku, location, position) in state.all_positions() {
            let (reserved, committed) =
                sums.remove(&(sku.clone(), location.clone())).unwrap_or((0, 0));
            prop_assert_eq!(
                (position.reserved, position.committed),
                (reserved, committed),
                "shard {} position {}/{} against its holds",
                number,
                sku,
                location
            );
            if position.reserved + position.committed > 0 {
                let safety = catalog.safety_stock(&location);
                prop_assert!(
                    position.claimed(safety) <= position.on_hand,
                    "oversold {}/{}: {:?} with safety {}",
                    sku,
                    location,
                    position,
                    safety
                );
            }
        }
        let stray: Vec<_> = sums.into_iter().filter(|(_, sum)| *sum != (0, 0)).collect();
        prop_assert!(stray.is_empty(), "shard {} holds units at no position: {:?}", number, stray);
    }
    Ok(())
}

/// The holds of `id` on every shard.
pub fn holds_of(shards: &BTreeMap<u32, ShardState>, id: &ReservationId) -> Vec<(u32, HoldView)> {
    let mut found = Vec::new();
    for (number, state) in shards {
        for hold in state.line_holds() {
            if &hold.id == id {
                found.push((*number, hold));
            }
        }
    }
    found
}

/// After recovery nothing is half done: each reservation's holds are exactly
/// what its home record's state implies, and holds without a record are gone.
pub fn settled(
    shards: &BTreeMap<u32, ShardState>,
    ids: &[ReservationId],
) -> Result<(), TestCaseError> {
    for id in ids {
        let holds = holds_of(shards, id);
        let record = shards.get(&shard_of(id.as_str())).map(|home| home.get(id));
        let view = match record {
            None | Some(Err(CoreError::NotFound(_))) => {
                prop_assert!(holds.is_empty(), "{} has no record but holds {:?}", id, holds);
                continue;
            }
            Some(Err(error)) => return Err(TestCaseError::fail(format!("{id}: {error}"))),
            Some(Ok(view)) => view,
        };
        match view.state {
            ReservationState::Held => {
                prop_assert!(
                    holds.iter().all(|(_, h)| !h.committed),
                    "{} HELD, a hold committed",
                    id
                );
                let versions: Vec<u64> = holds.iter().map(|(_, h)| h.version).collect();
                prop_assert!(versions.windows(2).all(|w| w[0] == w[1]), "{} mixes versions", id);
                prop_assert!(
                    holds.iter().all(|(_, h)| h.next_version.is_none()),
                    "{} still changing after recovery: {:?}",
                    id,
                    holds
                );
                for (_, hold) in &holds {
                    for held in &hold.lines {
                        let on_record = view
                            .lines
                            .iter()
                            .any(|l| l.sku == held.sku && l.location == held.location);
                        prop_assert!(on_record, "{} HELD holds a line it has not: {:?}", id, held);
                    }
                }
                for line in &view.lines {
                    let held = holds
                        .iter()
                        .filter(|(shard, _)| *shard == shard_of(line.sku.as_str()))
                        .flat_map(|(_, h)| &h.lines)
                        .find(|l| l.sku == line.sku && l.location == line.location)
                        .map(|l| l.held);
                    prop_assert_eq!(held, Some(line.quantity), "{} HELD line {:?}", id, line);
                }
            }
            ReservationState::Committed => {
                prop_assert!(
                    holds.iter().all(|(_, h)| h.committed),
                    "{} COMMITTED, a hold not",
                    id
                );
                for line in &view.lines {
                    let on_shard = holds
                        .iter()
                        .flat_map(|(_, h)| &h.lines)
                        .find(|l| l.sku == line.sku && l.location == line.location);
                    match on_shard {
                        Some(held) => {
                            prop_assert_eq!(
                                (held.committed, held.shipped),
                                (line.committed, line.shipped),
                                "{} line {:?}",
                                id,
                                line
                            );
                        }
                        None => prop_assert!(
                            line.committed == 0 || line.shipped == line.committed,
                            "{} COMMITTED line {:?} has no hold",
                            id,
                            line
                        ),
                    }
                }
            }
            ReservationState::Released
            | ReservationState::Expired
            | ReservationState::Cancelled
            | ReservationState::Fulfilled => {
                prop_assert!(holds.is_empty(), "{} {} still holds {:?}", id, view.state, holds);
            }
            ReservationState::Pending => {
                return Err(TestCaseError::fail(format!("{id} PENDING after recovery")));
            }
        }
    }
    Ok(())
}

/// Whether `now` is a state the reservation may reach from `acked`, the last
/// state its client was told of.
pub fn reachable(acked: ReservationState, now: ReservationState) -> bool {
    use ReservationState::{Cancelled, Committed, Expired, Fulfilled, Held, Released};
    match acked {
        Held => matches!(now, Held | Committed | Released | Expired | Cancelled | Fulfilled),
        Committed => matches!(now, Committed | Cancelled | Fulfilled),
        other => now == other,
    }
}
