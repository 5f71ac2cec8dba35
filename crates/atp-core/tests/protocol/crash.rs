//! Crashes: the node restarts from what was durable, and recovery must leave
//! nothing half done and nothing acknowledged lost.

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::reservation::ReservationState;
use atp_core::shard::{Incarnation, ShardState, recover};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{World, restore, without_meta};
use crate::checks;

impl World {
    pub(super) fn crash(&mut self, lose_recovery_on: Option<u8>) -> Result<(), TestCaseError> {
        self.restart(true, lose_recovery_on)
    }

    /// Rebuilds every shard from its checkpoint and log and recovers.
    /// `live_is_durable`: every change of the live shards was made durable
    /// (false after a recovery whose writes were partly lost).
    fn restart(
        &mut self,
        live_is_durable: bool,
        lose_recovery_on: Option<u8>,
    ) -> Result<(), TestCaseError> {
        let mut from_log = BTreeMap::new();
        let mut from_store = BTreeMap::new();
        for (shard, durable) in &self.durable {
            let records = durable.replayed();
            prop_assert!(
                without_meta(records.clone()) == without_meta(durable.store.clone()),
                "shard {}: checkpoint + log differs from the store",
                shard
            );
            let restored = restore(*shard, &records)?;
            if live_is_durable && !self.unflushed.contains(shard) {
                prop_assert!(
                    without_meta(restored.dump()) == without_meta(self.shards[shard].dump()),
                    "shard {}: checkpoint + log does not restore the live state",
                    shard
                );
            }
            from_log.insert(*shard, restored);
            from_store.insert(*shard, restore(*shard, &durable.store)?);
        }
        self.network.clear();
        self.unflushed.clear();
        self.hold_back.clear();
        self.reserving.clear();
        self.changing.clear();
        self.doubts.clear();
        self.confirmed.clear();
        self.waiting.clear();

        let expected = self.expected_rebuilds(&from_log);
        recover(&mut from_log, &self.catalog, self.now);
        recover(&mut from_store, &self.catalog, self.now);
        for (shard, state) in &from_log {
            prop_assert!(
                without_meta(state.dump()) == without_meta(from_store[shard].dump()),
                "shard {}: recovered from checkpoint + log unlike from the store",
                shard
            );
        }
        self.shards = from_log;

        for (id, incarnation) in expected {
            let found = self.shards[&shard_of(id.as_str())].get(&id);
            match (incarnation, found) {
                (None, Err(CoreError::NotFound(_))) => {}
                (Some(incarnation), Ok(view)) => {
                    let times = (view.created_at_ms, view.expires_at_ms);
                    prop_assert_eq!(times, (incarnation.created_at_ms, incarnation.expires_at_ms));
                    let lines: Vec<_> = view
                        .lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.location.clone(), l.quantity))
                        .collect();
                    prop_assert_eq!(
                        super::change::lines_of(&incarnation.request.lines),
                        {
                            let mut lines = lines;
                            lines.sort();
                            lines
                        },
                        "{} rebuilt at another version",
                        id
                    );
                    // HELD even past its TTL: it expires on the first tick
                    // after recovery, once the rebuild is durable.
                    prop_assert_eq!(view.state, ReservationState::Held, "{} rebuilt", id);
                }
                (expected, found) => {
                    return Err(TestCaseError::fail(format!(
                        "{id}: expected rebuilt {expected:?}, found {found:?}"
                    )));
                }
            }
        }
        checks::settled(&self.shards, &self.ids)?;
        checks::positions_match_holds(&self.shards, &self.catalog)?;
        self.check_acked()?;

        let Some(mask) = lose_recovery_on else { return self.persist() };
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        for (index, shard) in shards.into_iter().enumerate() {
            if mask & (1 << (index % 8)) != 0 {
                self.persist_shard(shard)?;
            } else {
                let _lost = self.shards.get_mut(&shard).expect("known").drain_changes();
            }
        }
        self.restart(false, None)
    }

    /// For each id without a durable home record but with durable holds: the
    /// incarnation recovery must rebuild (every line shard holds its version),
    /// or None (it must roll the holds back).
    fn expected_rebuilds(
        &self,
        shards: &BTreeMap<u32, ShardState>,
    ) -> Vec<(ReservationId, Option<Incarnation>)> {
        let mut expected = Vec::new();
        for id in &self.ids {
            let home = &shards[&shard_of(id.as_str())];
            if !matches!(home.get(id), Err(CoreError::NotFound(_))) {
                continue;
            }
            // The highest complete version: the newest one seen if every
            // line shard it names holds it (settled or changing to it), else
            // the version a change in flight to it started from, if complete.
            // Older holds are an abandoned incarnation's, whose Abort was lost.
            let holds = checks::holds_of(shards, id);
            let holds: Vec<_> = holds.into_iter().filter(|(_, h)| !h.committed).collect();
            let sides = |h: &atp_core::shard::HoldView| {
                std::iter::once(h.version).chain(h.next_version).collect::<Vec<_>>()
            };
            let Some(newest) = holds.iter().flat_map(|(_, h)| sides(h)).max() else { continue };
            let complete = |version: u64| {
                self.incarnation(id, version).filter(|incarnation| {
                    incarnation.line_shards().iter().all(|shard| {
                        holds.iter().any(|(s, h)| s == shard && sides(h).contains(&version))
                    })
                })
            };
            let from =
                holds.iter().find(|(_, h)| h.next_version == Some(newest)).map(|(_, h)| h.version);
            let complete = complete(newest).or_else(|| from.and_then(complete));
            expected.push((id.clone(), complete.cloned()));
        }
        expected
    }

    /// The incarnation of `id` at `version`: a Reserve's or a change's.
    fn incarnation(&self, id: &ReservationId, version: u64) -> Option<&Incarnation> {
        // Newest first: a version may be reused after a crash lost the
        // shard's sequence (its meta record lags).
        let all = self.incarnations.get(id).into_iter().flatten();
        all.rev().find(|incarnation| incarnation.version == version)
    }

    /// No acknowledged reservation is lost or behind what its client was told.
    pub(super) fn check_acked(&self) -> Result<(), TestCaseError> {
        self.check_acked_changes()?;
        for (id, acked) in &self.acked {
            let found = self.shards[&shard_of(id.as_str())].get(id);
            let Ok(view) = found else {
                return Err(TestCaseError::fail(format!(
                    "acknowledged {id} ({acked}) lost: {found:?}"
                )));
            };
            prop_assert!(
                checks::reachable(*acked, view.state),
                "{} acked {} is {}",
                id,
                acked,
                view.state
            );
        }
        Ok(())
    }

    /// Heals every loss with a crash, lets every TTL pass and delivers every
    /// message: then no hold is open and every hold ended exactly once.
    pub fn finish(&mut self) -> Result<(), TestCaseError> {
        self.crash(None)?;
        self.pass_every_ttl(1)?;
        self.check_all_ended()
    }

    /// Lets every TTL pass, then `rounds` times: every shard ticks, every
    /// message is delivered, everything is made durable.
    pub(super) fn pass_every_ttl(&mut self, rounds: usize) -> Result<(), TestCaseError> {
        self.now += super::TTLS_MS.iter().max().expect("ttls") + 1;
        for _ in 0..rounds {
            let shards: Vec<u32> = self.shards.keys().copied().collect();
            for shard in shards {
                self.on_shard(shard, |_, _, _| ());
            }
            while !self.network.is_empty() {
                let message = self.network.remove(0);
                self.deliver(message, false)?;
            }
            self.persist()?;
        }
        Ok(())
    }

    /// At the end: positions match holds, nothing is held any more, every
    /// hold ended exactly once, every reservation is settled and nothing
    /// acknowledged was lost.
    pub(super) fn check_all_ended(&self) -> Result<(), TestCaseError> {
        checks::positions_match_holds(&self.shards, &self.catalog)?;
        for state in self.shards.values() {
            for (sku, location, position) in state.all_positions() {
                let holds = state.line_holds();
                let records: Vec<_> = holds
                    .iter()
                    .map(|h| self.shards[&shard_of(h.id.as_str())].get(&h.id).map(|v| v.state))
                    .collect();
                prop_assert_eq!(
                    position.reserved,
                    0,
                    "still reserved at {}/{}: holds {:?}, their records {:?}",
                    sku,
                    location,
                    holds,
                    records
                );
            }
        }
        self.lives.all_ended()?;
        checks::settled(&self.shards, &self.ids)?;
        self.check_acked()
    }
}
