//! The checks run after every step: the core agrees with the model, and the
//! invariants of DESIGN.md §2 hold on the core's own state.

use std::collections::{BTreeMap, BTreeSet};

use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, ReservationId, Sku};
use atp_core::ledger::LedgerKind;
use atp_core::position::Position;
use atp_core::reservation::ReservationState;
use atp_core::shard::ShardState;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::common::Node;
use crate::reference::{Model, ModelReservation};
use crate::{Key, Refusal, refusal};

/// Running sums of one shard's ledger, replayed entry by entry.
#[derive(Default)]
struct LedgerReplay {
    entries_seen: usize,
    totals: BTreeMap<Key, [i64; 5]>,
    /// Reserved units per (cause, sku, location): what each reservation holds.
    reserved_by_cause: BTreeMap<(std::sync::Arc<str>, Sku, LocationId), i64>,
}

impl LedgerReplay {
    /// Replays the entries not seen yet: sequences continue without a gap and
    /// each entry's resulting buckets are the running sums of its deltas.
    fn catch_up(&mut self, shard: u32, state: &ShardState) -> Result<(), TestCaseError> {
        for entry in state.ledger_entries().skip(self.entries_seen) {
            self.entries_seen += 1;
            prop_assert_eq!(
                entry.sequence,
                self.entries_seen as u64,
                "ledger gap on shard {}",
                shard
            );
            prop_assert_eq!(shard_of(entry.sku.as_str()), shard, "entry on the wrong shard");
            prop_assert!(!entry.deltas.is_zero(), "empty ledger entry {:?}", entry);
            let deltas = entry.deltas;
            let totals =
                self.totals.entry((entry.sku.clone(), entry.location.clone())).or_default();
            for (total, delta) in totals.iter_mut().zip([
                deltas.on_hand,
                deltas.reserved,
                deltas.committed,
                deltas.unavailable,
                deltas.incoming,
            ]) {
                *total += delta;
            }
            let resulting =
                [entry.on_hand, entry.reserved, entry.committed, entry.unavailable, entry.incoming];
            prop_assert_eq!(*totals, resulting, "ledger entry {:?}", entry);
            let reserve_kinds = matches!(
                entry.kind,
                LedgerKind::Reserve
                    | LedgerKind::Release
                    | LedgerKind::Expire
                    | LedgerKind::Abort
                    | LedgerKind::Commit
            );
            prop_assert_eq!(deltas.reserved != 0, reserve_kinds, "entry {:?}", entry);
            if deltas.reserved != 0 {
                let key = (entry.cause.clone(), entry.sku.clone(), entry.location.clone());
                let held = self.reserved_by_cause.entry(key.clone()).or_default();
                *held += deltas.reserved;
                prop_assert!(*held >= 0, "{} released more than it held: {:?}", entry.cause, entry);
                if *held == 0 {
                    self.reserved_by_cause.remove(&key);
                }
            }
        }
        Ok(())
    }
}

fn totals_of(position: &Position) -> [i64; 5] {
    [
        position.on_hand,
        position.reserved,
        position.committed,
        position.unavailable,
        position.incoming_total(),
    ]
}

#[derive(Default)]
pub struct Checker {
    ledgers: BTreeMap<u32, LedgerReplay>,
    /// The last state seen of each reservation (by id and created_at).
    seen: BTreeMap<ReservationId, (i64, ReservationState)>,
}

fn allowed(from: ReservationState, to: ReservationState) -> bool {
    use ReservationState::{Committed, Expired, Fulfilled, Held, Released};
    from == to
        || matches!(
            (from, to),
            (Held, Committed | Released | Expired)
                | (Committed, Fulfilled | ReservationState::Cancelled)
        )
}

/// Promise operations never create or deepen a shortfall, nor move on_hand.
pub fn check_promise(
    before: &BTreeMap<Key, Position>,
    after: &BTreeMap<Key, Position>,
    what: &str,
) -> Result<(), TestCaseError> {
    let keys: BTreeSet<&Key> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let was = before.get(key).cloned().unwrap_or_default();
        let is = after.get(key).cloned().unwrap_or_default();
        let safety_stock = Model::safety_stock(&key.1);
        prop_assert!(
            is.shortfall(safety_stock) <= was.shortfall(safety_stock),
            "{} deepened the shortfall at {:?}: {:?} -> {:?}",
            what,
            key,
            was,
            is
        );
        prop_assert_eq!(is.on_hand, was.on_hand, "{} moved on_hand at {:?}", what, key);
    }
    Ok(())
}

impl Checker {
    /// Checks the state after a step; `positions` are the node's positions
    /// now, `named` the reservation the step's request named.
    pub fn check(
        &mut self,
        node: &mut Node,
        model: &Model,
        positions: &BTreeMap<Key, Position>,
        named: Option<&ReservationId>,
    ) -> Result<(), TestCaseError> {
        // Positions: the core's buckets are the model's, on_hand included.
        let keys: BTreeSet<&Key> = positions.keys().chain(model.positions.keys()).collect();
        for key in &keys {
            let core = positions.get(*key).cloned().unwrap_or_default();
            let expected = model.positions.get(*key).cloned().unwrap_or_default();
            prop_assert_eq!(core.on_hand, expected.on_hand(), "on_hand at {:?}", key);
            prop_assert_eq!(core.reserved, expected.reserved, "reserved at {:?}", key);
            prop_assert_eq!(core.committed, expected.committed, "committed at {:?}", key);
            prop_assert_eq!(core.unavailable, expected.unavailable, "unavailable at {:?}", key);
            prop_assert_eq!(&core.incoming, &expected.incoming, "incoming at {:?}", key);
        }

        // reserved = units of HELD reservations; committed = unshipped units of COMMITTED ones.
        let mut reserved: BTreeMap<Key, i64> = BTreeMap::new();
        let mut committed: BTreeMap<Key, i64> = BTreeMap::new();
        let mut held_by_cause: BTreeMap<(std::sync::Arc<str>, Sku, LocationId), i64> =
            BTreeMap::new();
        let mut open_holds = 0;
        for record in model.reservations.values() {
            let lines = &record.request.lines;
            match record.state {
                ReservationState::Held => {
                    for line in lines {
                        let key = (line.sku.clone(), line.location.clone());
                        *reserved.entry(key).or_default() += line.quantity;
                        let cause =
                            (record.request.id.shared(), line.sku.clone(), line.location.clone());
                        held_by_cause.insert(cause, line.quantity);
                    }
                    open_holds += record.request.lines_by_shard().len() as u64;
                }
                ReservationState::Committed => {
                    let quantities = record.committed.as_ref().expect("committed");
                    for (index, line) in lines.iter().enumerate() {
                        let key = (line.sku.clone(), line.location.clone());
                        *committed.entry(key).or_default() +=
                            quantities[index] - record.shipped[index];
                    }
                }
                _ => {}
            }
        }
        for key in &keys {
            let core = positions.get(*key).cloned().unwrap_or_default();
            prop_assert_eq!(
                core.reserved,
                reserved.get(*key).copied().unwrap_or(0),
                "held at {:?}",
                key
            );
            prop_assert_eq!(
                core.committed,
                committed.get(*key).copied().unwrap_or(0),
                "ordered at {:?}",
                key
            );
        }

        // Every reservation as its home shows it; ended states never change.
        // Ids neither the model nor the last check knew, other than the one
        // just named, need no look: the count of records below covers them.
        let ids: BTreeSet<ReservationId> =
            model.reservations.keys().chain(self.seen.keys()).chain(named).cloned().collect();
        for id in &ids {
            let core = node.get(id);
            let expected = model.reservations.get(id).map(ModelReservation::view);
            match (&core, &expected) {
                (Ok(core), Some(expected)) => prop_assert_eq!(core, expected),
                (Err(error), None) => {
                    prop_assert_eq!(refusal(error), Refusal::NotFound, "{}", error)
                }
                _ => {
                    prop_assert!(false, "reservation {}: core {:?}, model {:?}", id, core, expected)
                }
            }
            match core {
                Ok(view) => {
                    if let Some((created_at_ms, state)) = self.seen.get(id)
                        && *created_at_ms == view.created_at_ms
                    {
                        prop_assert!(
                            allowed(*state, view.state),
                            "{} went from {} to {}",
                            id,
                            state,
                            view.state
                        );
                    }
                    self.seen.insert(id.clone(), (view.created_at_ms, view.state));
                }
                Err(_) => {
                    self.seen.remove(id);
                }
            }
        }

        // The ledger replayed from empty gives every position; each hold is
        // taken once and given back once.
        let mut reserved_by_cause = BTreeMap::new();
        let (mut records, mut holds) = (0, 0);
        for (shard, state) in &node.shards {
            let replay = self.ledgers.entry(*shard).or_default();
            replay.catch_up(*shard, state)?;
            for (sku, location, position) in state.all_positions() {
                prop_assert_eq!(shard_of(sku.as_str()), *shard, "position on the wrong shard");
                let totals = replay
                    .totals
                    .get(&(sku.clone(), location.clone()))
                    .copied()
                    .unwrap_or_default();
                prop_assert_eq!(totals, totals_of(&position), "ledger of {:?}/{:?}", sku, location);
            }
            for (key, totals) in &replay.totals {
                let position = positions.get(key).cloned().unwrap_or_default();
                prop_assert_eq!(*totals, totals_of(&position), "ledger of {:?}", key);
            }
            reserved_by_cause.extend(replay.reserved_by_cause.clone());
            records += state.stats().reservation_count;
            holds += state.stats().open_holds;
        }
        prop_assert_eq!(reserved_by_cause, held_by_cause, "holds per reservation");
        prop_assert_eq!(records, model.reservations.len() as u64, "reservation records");
        prop_assert_eq!(holds, open_holds, "open line holds");
        Ok(())
    }
}

/// Each shard's whole ledger, summed from empty, gives its positions.
pub fn check_full_ledger(node: &Node) -> Result<(), TestCaseError> {
    for (shard, state) in &node.shards {
        let mut totals: BTreeMap<Key, [i64; 5]> = BTreeMap::new();
        for (index, entry) in state.ledger_entries().enumerate() {
            prop_assert_eq!(entry.sequence, index as u64 + 1, "ledger gap on shard {}", shard);
            let sums = totals.entry((entry.sku.clone(), entry.location.clone())).or_default();
            let deltas = entry.deltas;
            sums[0] += deltas.on_hand;
            sums[1] += deltas.reserved;
            sums[2] += deltas.committed;
            sums[3] += deltas.unavailable;
            sums[4] += deltas.incoming;
        }
        let positions: BTreeMap<Key, [i64; 5]> = state
            .all_positions()
            .into_iter()
            .map(|(sku, location, position)| ((sku, location), totals_of(&position)))
            .filter(|(key, position)| totals.contains_key(key) || *position != [0; 5])
            .collect();
        prop_assert_eq!(totals, positions, "ledger of shard {}", shard);
    }
    Ok(())
}
