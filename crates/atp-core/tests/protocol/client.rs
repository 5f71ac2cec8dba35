//! What clients and warehouses do: Commit, Release, Cancel and shipments,
//! and when their answers count as acknowledged.

use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, Sku};
use atp_core::reservation::{CommitLine, ReservationState, ReservationView};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Message, Waiting, World, pick};
use crate::checks;
use crate::common::event_id;

impl World {
    /// Every line op of an answer was delivered (so it is durable): the
    /// client is told, and its next read sees the lines' stock.
    pub(super) fn complete(&mut self, waiting: Waiting) -> Result<(), TestCaseError> {
        match waiting {
            Waiting::Rollback(id, version) => {
                self.network.push(Message::Finish { id, version, held: false })
            }
            Waiting::Change(id, version, answer) => self.change_complete(id, version, answer)?,
            Waiting::Client(id, state) => {
                // The reservation's own holds: an older incarnation's (an
                // abandoned Reserve's) may still wait for its Abort.
                // (a change of it has a higher version).
                let current = self.begun.get(&id).and_then(|all| all.last()).map(|inc| inc.version);
                let mut holds = checks::holds_of(&self.shards, &id);
                holds.retain(|(_, hold)| Some(hold.version) >= current);
                // A hold still changing belongs to a change whose home died
                // (a node's crash): the record's ops do not reach a shard new
                // in it, and the sweep reverts it later (under-sell until
                // then; the end checks it is gone).
                holds.retain(|(_, hold)| hold.next_version.is_none());
                match state {
                    ReservationState::Committed => {
                        prop_assert!(
                            holds.iter().all(|(_, h)| h.committed),
                            "{} committed, still held",
                            id
                        );
                    }
                    _ => prop_assert!(
                        holds.is_empty(),
                        "{} {} acknowledged, holds {:?}",
                        id,
                        state,
                        holds
                    ),
                }
                let before = self.acked.get(&id).copied().unwrap_or(ReservationState::Held);
                if checks::reachable(before, state) {
                    self.acked.insert(id, state);
                }
            }
        }
        Ok(())
    }

    /// Commit, Release or Cancel on the home; answered once the lines have it.
    pub(super) fn client_op(
        &mut self,
        id: u8,
        op: ReservationState,
        partial: bool,
    ) -> Result<(), TestCaseError> {
        let id = pick(&self.ids, id).expect("ids").clone();
        let home = shard_of(id.as_str());
        let outcome = self.on_shard(home, |state, _, now| match op {
            ReservationState::Committed => {
                let lines: Vec<CommitLine> = match (partial, state.get(&id)) {
                    (true, Ok(view)) => view
                        .lines
                        .iter()
                        .take(1)
                        .map(|l| CommitLine {
                            sku: l.sku.clone(),
                            location: l.location.clone(),
                            quantity: l.quantity - 1,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                state.commit(&id, &lines, now)
            }
            ReservationState::Released => state.release(&id, now),
            _ => state.cancel(&id, now),
        });
        let (view, ops): (ReservationView, _) = match outcome {
            Ok(answer) => answer,
            Err(_) => return Ok(()), // refused: nothing changed, nothing to check here
        };
        prop_assert!(
            view.state == op
                || view.state == ReservationState::Fulfilled
                || op == ReservationState::Committed
        );
        self.send_then(ops, Waiting::Client(id, view.state))
    }

    /// Ships one unit of a committed line of reservation `id`, if it has one.
    pub(super) fn ship(&mut self, id: u8, line: u8) -> Result<(), TestCaseError> {
        let id = pick(&self.ids, id).expect("ids").clone();
        let unshipped: Vec<(u32, Sku, LocationId)> = checks::holds_of(&self.shards, &id)
            .into_iter()
            .filter(|(_, hold)| hold.committed)
            .flat_map(|(shard, hold)| {
                hold.lines
                    .into_iter()
                    .filter(|l| l.shipped < l.committed)
                    .map(move |l| (shard, l.sku, l.location))
            })
            .collect();
        let Some((shard, sku, location)) = pick(&unshipped, line).cloned() else { return Ok(()) };
        self.shipments += 1;
        let event = StockEvent {
            id: event_id(&format!("ship-{}", self.shipments)),
            sku: sku.clone(),
            location: location.clone(),
            kind: StockEventKind::Shipped { quantity: 1, reservation: Some(id) },
        };
        let applied =
            self.on_shard(shard, |state, catalog, now| state.apply_event(&event, catalog, now));
        let applied = applied.map_err(|error| TestCaseError::fail(format!("ship: {error}")))?;
        *self.on_hand.get_mut(&(sku, location)).expect("shipped from stock") -= 1;
        if let Some(notice) = applied.notice {
            let from = self.node(shard);
            self.network.push(Message::Notice { notice, from });
        }
        Ok(())
    }
}
