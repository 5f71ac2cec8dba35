//! Changing a HELD reservation (ModifyReservation): the home begins a new
//! version, `Replace` goes to every shard of the old or new lines (each
//! holding max(old, new), answered once durable; lost like a `Hold`, as a
//! refusal), the home applies or drops the change (durable before anything
//! follows), then `Settle` or `Revert` reaches every shard before the
//! caller is answered.

use atp_core::CoreError;
use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, ReservationId, Sku};
use atp_core::reservation::{ReservationState, ReservationView, ReserveLine, ReserveRequest};
use atp_core::shard::{ChangeBegin, Incarnation, LineOp};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Message, Waiting, World, pick};
use crate::checks;

/// A change in progress (the node's task running it): lost at a crash.
pub(super) struct Changing {
    pub(super) to: Incarnation,
    /// Per shard: None while the Replace is in flight, then whether it held.
    pub(super) outcomes: std::collections::BTreeMap<u32, Option<bool>>,
}

pub(super) type Lines = Vec<(Sku, LocationId, i64)>;

pub(super) fn lines_of(lines: &[ReserveLine]) -> Lines {
    let mut lines: Lines =
        lines.iter().map(|l| (l.sku.clone(), l.location.clone(), l.quantity)).collect();
    lines.sort();
    lines
}

impl World {
    /// A client changes reservation `id` to `lines` (`retry`: sends its
    /// last change of the id again, same request id).
    pub(super) fn modify(
        &mut self,
        id: u8,
        lines: &[(u8, u8, i64)],
        retry: bool,
    ) -> Result<(), TestCaseError> {
        let id = pick(&self.ids, id).expect("ids").clone();
        let home = shard_of(id.as_str());
        let (request_id, lines) = match (retry, self.change_sent.get(&id)) {
            (true, Some(sent)) => sent.clone(),
            _ => {
                let Ok(view) = self.shards[&home].get(&id) else { return Ok(()) };
                let lines = super::lines_for(view.channel.as_str(), lines);
                let check = ReserveRequest {
                    id: id.clone(),
                    channel: view.channel.clone(),
                    lines: lines.clone(),
                    ttl_ms: 1,
                    metadata: Default::default(),
                };
                if check.check(&self.catalog).is_err() {
                    return Ok(()); // the node refuses it before any shard
                }
                self.changes_sent += 1;
                let sent = (format!("change-{}", self.changes_sent), lines);
                self.change_sent.insert(id.clone(), sent.clone());
                sent
            }
        };
        let begin = self.on_shard(home, |state, catalog, now| {
            state.begin_change(&id, &request_id, lines.clone(), catalog, now)
        });
        match begin {
            Ok(ChangeBegin::Started { replaces, version }) => {
                let Some((_, LineOp::Replace { to, .. })) = replaces.first() else {
                    return Err(TestCaseError::fail("a change starts with replaces"));
                };
                prop_assert_eq!(&to.request.lines, &lines);
                prop_assert_eq!(to.version, version);
                self.changes_begun.entry(id.clone()).or_default().push(to.clone());
                self.incarnations.entry(id.clone()).or_default().push(to.clone());
                let outcomes = replaces.iter().map(|(shard, _)| (*shard, None)).collect();
                self.changing.insert((id, version), Changing { to: to.clone(), outcomes });
                for (shard, op) in replaces {
                    self.network.push(Message::Replace { shard, op });
                }
            }
            Ok(ChangeBegin::Replay(reply)) => {
                prop_assert!(reply.is_replay(), "a replayed change says so");
                prop_assert_eq!(
                    lines_of(&reply.reservation.lines.iter().map(line_of_view).collect::<Vec<_>>()),
                    lines_of(&lines),
                    "a replayed change of {} answers other lines",
                    id
                );
            }
            Err(
                CoreError::AlreadyExists(_)
                | CoreError::InProgress(_)
                | CoreError::NotFound(_)
                | CoreError::WrongState { .. }
                | CoreError::InvalidArgument(_),
            ) => {}
            Err(error) => return Err(TestCaseError::fail(format!("modify {id}: {error}"))),
        }
        Ok(())
    }

    pub(super) fn replace_outcome(&mut self, key: &(ReservationId, u64), shard: u32, held: bool) {
        let Some(changing) = self.changing.get_mut(key) else { return };
        changing.outcomes.insert(shard, Some(held));
        if changing.outcomes.values().any(Option::is_none) {
            return;
        }
        let replaced = changing.outcomes.values().all(|held| *held == Some(true));
        self.network.push(Message::ChangeFinish { id: key.0.clone(), version: key.1, replaced });
    }

    /// The home applies or drops the change, durably, then settles or
    /// reverts it on every shard.
    pub(super) fn finish_change(
        &mut self,
        id: ReservationId,
        version: u64,
        replaced: bool,
    ) -> Result<(), TestCaseError> {
        let Some(changing) = self.changing.remove(&(id.clone(), version)) else {
            return Err(TestCaseError::fail(format!("finish of change {id} without its change")));
        };
        let home = shard_of(id.as_str());
        let finished =
            self.on_shard(home, |state, _, now| state.finish_change(&id, version, replaced, now));
        let Some((answer, ops)) = finished else {
            return Err(TestCaseError::fail(format!("change {id} v{version} was not in flight")));
        };
        prop_assert_eq!(answer.is_some(), replaced, "change {} answered iff replaced", id);
        if let Some(view) = &answer {
            prop_assert_eq!(
                lines_of(&view.lines.iter().map(line_of_view).collect::<Vec<_>>()),
                lines_of(&changing.to.request.lines)
            );
        }
        // The home's change is durable before any Settle.
        self.persist_shard(home)?;
        self.send_then(ops, Waiting::Change(id, version, answer))
    }

    /// Every Settle or Revert was delivered: the change is over.
    pub(super) fn change_complete(
        &mut self,
        id: ReservationId,
        version: u64,
        answer: Option<ReservationView>,
    ) -> Result<(), TestCaseError> {
        let home = shard_of(id.as_str());
        self.on_shard(home, |state, _, now| state.change_done(&id, version, now));
        let holds = checks::holds_of(&self.shards, &id);
        prop_assert!(
            holds.iter().all(|(_, h)| h.next_version != Some(version)),
            "change {} v{} over, a hold still changing: {:?}",
            id,
            version,
            holds
        );
        let Some(view) = answer else { return Ok(()) };
        // Acknowledged: the holds are the new lines, nothing more.
        let mut held: Lines = holds
            .iter()
            .filter(|(_, h)| h.version == version)
            .flat_map(|(_, h)| h.lines.iter().map(|l| (l.sku.clone(), l.location.clone(), l.held)))
            .collect();
        held.sort();
        let lines = lines_of(&view.lines.iter().map(line_of_view).collect::<Vec<_>>());
        prop_assert_eq!(&held, &lines, "acknowledged change of {} holds other lines", id);
        prop_assert_eq!(view.state, ReservationState::Held);
        self.acked_change.insert(id, (version, lines));
        Ok(())
    }

    /// An acknowledged change is never lost: the record has its lines, or
    /// those of a change begun after it.
    pub(super) fn check_acked_changes(&self) -> Result<(), TestCaseError> {
        for (id, (version, lines)) in &self.acked_change {
            let Ok(view) = self.shards[&shard_of(id.as_str())].get(id) else { continue };
            let now = lines_of(&view.lines.iter().map(line_of_view).collect::<Vec<_>>());
            let later = self
                .changes_begun
                .get(id)
                .into_iter()
                .flatten()
                .any(|to| to.version > *version && lines_of(&to.request.lines) == now);
            prop_assert!(
                now == *lines || later,
                "acknowledged change of {} (v{}, {:?}) lost: {:?}",
                id,
                version,
                lines,
                now
            );
        }
        Ok(())
    }
}

fn line_of_view(line: &atp_core::reservation::LineView) -> ReserveLine {
    ReserveLine { sku: line.sku.clone(), location: line.location.clone(), quantity: line.quantity }
}
