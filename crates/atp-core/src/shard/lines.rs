//! Line holds on the SKUs' shards: the units a reservation holds or has
//! committed at each position, changed only by what the home shard decided.

use std::collections::BTreeMap;

use super::ShardState;
use crate::catalog::Catalog;
use crate::error::CoreError;
use crate::ids::{ChannelId, LocationId, ReservationId, Sku};
use crate::ledger::LedgerKind;
use crate::position::Deltas;
use crate::reservation::ReserveLine;

/// (sku, location, units) for one line of a reservation.
pub type LineQuantity = (Sku, LocationId, i64);

/// What a home shard asks a line's shard to do. Every op is idempotent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineOp {
    /// Hold every line or none, under the channel's rules.
    Hold {
        /// The reservation.
        id: ReservationId,
        /// Its channel.
        channel: ChannelId,
        /// The lines on this shard.
        lines: Vec<ReserveLine>,
    },
    /// Free held units (Release, expiry, or a failed multi-shard Reserve).
    Release {
        /// The reservation.
        id: ReservationId,
        /// Release, Expire or Abort.
        kind: LedgerKind,
    },
    /// Turn held units into committed ones; the remainder is freed.
    Commit {
        /// The reservation.
        id: ReservationId,
        /// (sku, location, units committed) for each line on this shard.
        lines: Vec<LineQuantity>,
    },
    /// Free committed units not yet shipped.
    Cancel {
        /// The reservation.
        id: ReservationId,
    },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct HeldLine {
    pub(crate) sku: Sku,
    pub(crate) location: LocationId,
    pub(crate) held: i64,
    pub(crate) committed: i64,
    pub(crate) shipped: i64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct LineHolds {
    pub(crate) committed: bool,
    pub(crate) lines: Vec<HeldLine>,
}

impl LineHolds {
    pub(crate) fn is_held(&self) -> bool {
        !self.committed
    }
}

impl ShardState {
    /// Applies a line op. Only `Hold` can fail; a failed hold changes nothing.
    pub fn apply_line_op(
        &mut self,
        op: &LineOp,
        catalog: &Catalog,
        now: i64,
    ) -> Result<(), CoreError> {
        let now = self.advance(now);
        match op {
            LineOp::Hold { id, channel, lines } => self.hold(id, channel, lines, catalog, now),
            LineOp::Release { id, kind } => {
                self.release_lines(id, *kind, now);
                Ok(())
            }
            LineOp::Commit { id, lines } => {
                self.commit_lines(id, lines, catalog, now);
                Ok(())
            }
            LineOp::Cancel { id } => {
                self.cancel_lines(id, now);
                Ok(())
            }
        }
    }

    fn hold(
        &mut self,
        id: &ReservationId,
        channel_id: &ChannelId,
        lines: &[ReserveLine],
        catalog: &Catalog,
        now: i64,
    ) -> Result<(), CoreError> {
        if self.holds.contains_key(id) {
            return Ok(());
        }
        let Some(channel) = catalog.channels.get(channel_id) else {
            return Err(CoreError::invalid("channel_id", format!("unknown channel {channel_id}")));
        };
        let mut per_sku: BTreeMap<&Sku, i64> = BTreeMap::new();
        for line in lines {
            if !catalog.is_active(&line.location) {
                return Err(CoreError::FailedPrecondition(format!(
                    "location {} is inactive or unknown; it takes no holds",
                    line.location
                )));
            }
            let safety = self.safety(catalog, &line.location);
            let available = self.position(&line.sku, &line.location).atp(safety);
            if line.quantity > available {
                return Err(CoreError::InsufficientStock {
                    sku: line.sku.to_string(),
                    location: line.location.to_string(),
                    requested: line.quantity,
                    available,
                });
            }
            *per_sku.entry(&line.sku).or_default() += line.quantity;
        }
        for (sku, requested) in per_sku {
            let total: i64 = channel
                .locations
                .iter()
                .filter(|location| catalog.is_active(location))
                .map(|location| self.position(sku, location).atp(self.safety(catalog, location)))
                .sum();
            let available = channel.atp(total);
            if requested > available {
                return Err(CoreError::InsufficientStock {
                    sku: sku.to_string(),
                    location: format!("channel {channel_id}"),
                    requested,
                    available,
                });
            }
        }
        self.applied_sequence += 1;
        let cause = id.to_string();
        for line in lines {
            let deltas = Deltas { reserved: line.quantity, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, LedgerKind::Reserve, deltas, false, now);
            let safety = self.safety(catalog, &line.location);
            let position = self.position(&line.sku, &line.location);
            assert_eq!(
                position.shortfall(safety),
                0,
                "hold {id} created a shortfall at {}/{}",
                line.sku,
                line.location
            );
        }
        let held = lines
            .iter()
            .map(|line| HeldLine {
                sku: line.sku.clone(),
                location: line.location.clone(),
                held: line.quantity,
                committed: 0,
                shipped: 0,
            })
            .collect();
        self.holds.insert(id.clone(), LineHolds { committed: false, lines: held });
        Ok(())
    }

    fn release_lines(&mut self, id: &ReservationId, kind: LedgerKind, now: i64) {
        let Some(holds) = self.holds.get(id) else { return };
        if holds.committed {
            return;
        }
        let holds = self.holds.remove(id).expect("checked above");
        self.applied_sequence += 1;
        let cause = id.to_string();
        for line in holds.lines {
            let deltas = Deltas { reserved: -line.held, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, kind, deltas, false, now);
        }
    }

    fn commit_lines(
        &mut self,
        id: &ReservationId,
        quantities: &[(Sku, LocationId, i64)],
        catalog: &Catalog,
        now: i64,
    ) {
        let Some(mut holds) = self.holds.remove(id) else { return };
        if holds.committed {
            self.holds.insert(id.clone(), holds);
            return;
        }
        self.applied_sequence += 1;
        let cause = id.to_string();
        for line in &mut holds.lines {
            let committed = quantities
                .iter()
                .find(|(sku, location, _)| *sku == line.sku && *location == line.location)
                .map_or(line.held, |(_, _, quantity)| *quantity);
            assert!(committed <= line.held, "commit of {id} exceeds its hold");
            let safety = self.safety(catalog, &line.location);
            let before = self.position(&line.sku, &line.location).shortfall(safety);
            let deltas = Deltas { reserved: -line.held, committed, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, LedgerKind::Commit, deltas, false, now);
            let after = self.position(&line.sku, &line.location).shortfall(safety);
            assert!(after <= before, "commit of {id} deepened a shortfall");
            line.committed = committed;
        }
        holds.committed = true;
        holds.lines.retain(|line| line.committed > 0);
        if !holds.lines.is_empty() {
            self.holds.insert(id.clone(), holds);
        }
    }

    fn cancel_lines(&mut self, id: &ReservationId, now: i64) {
        let Some(holds) = self.holds.remove(id) else { return };
        self.applied_sequence += 1;
        let cause = id.to_string();
        for line in holds.lines {
            // A Cancel can overtake its reservation's Commit on the way to
            // this shard (the home committed, then cancelled, and the two
            // deliveries raced): the hold is still uncommitted, nothing of it
            // shipped, so the whole hold is freed and the late Commit finds
            // nothing to commit.
            let deltas = if holds.committed {
                Deltas { committed: -(line.committed - line.shipped), ..Deltas::default() }
            } else {
                Deltas { reserved: -line.held, ..Deltas::default() }
            };
            self.change(&line.sku, &line.location, &cause, LedgerKind::Cancel, deltas, false, now);
        }
    }
}

impl ShardState {
    /// Reservations with uncommitted holds on this shard.
    pub(super) fn uncommitted_holds(&self) -> Vec<ReservationId> {
        self.holds.iter().filter(|(_, holds)| holds.is_held()).map(|(id, _)| id.clone()).collect()
    }

    /// Whether a line of reservation `id` is still held or committed here.
    pub(super) fn has_line(&self, id: &ReservationId, sku: &Sku, location: &LocationId) -> bool {
        self.holds
            .get(id)
            .is_some_and(|h| h.lines.iter().any(|l| &l.sku == sku && &l.location == location))
    }

    /// What shipped so far on every committed line, for the lines' homes.
    pub(super) fn ship_notices(&self) -> Vec<super::ShipNotice> {
        let mut notices = Vec::new();
        for (id, holds) in self.holds.iter().filter(|(_, holds)| holds.committed) {
            for line in holds.lines.iter().filter(|line| line.shipped > 0) {
                notices.push(super::ShipNotice {
                    reservation: id.clone(),
                    sku: line.sku.clone(),
                    location: line.location.clone(),
                    shipped_total: line.shipped,
                });
            }
        }
        notices
    }
}
