//! Line holds on the SKUs' shards: the units a reservation holds or has
//! committed at each position, changed only by what the home shard decided.

use std::collections::BTreeMap;

use super::ShardState;
use crate::capacity::{counter_limit, is_counter};
use crate::catalog::Catalog;
use crate::error::CoreError;
use crate::ids::{ChannelId, LocationId, ReservationId, Sku};
use crate::ledger::LedgerKind;
use crate::position::Deltas;
use crate::reservation::{ReserveLine, ReserveRequest};

/// (sku, location, units) for one line of a reservation.
pub type LineQuantity = (Sku, LocationId, i64);

/// One incarnation of a reservation, as every one of its holds carries it:
/// enough to rebuild the home record when the holds became durable and the
/// record did not (see `docs/PROTOCOL.md`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Incarnation {
    /// The whole Reserve: id, channel, every line (on every shard) and TTL,
    /// so a replay after a rebuild is judged against the same payload.
    /// Shared by the home record and every hold of this incarnation (one
    /// copy in memory; stored whole in each, as postcard writes the value).
    pub request: std::sync::Arc<ReserveRequest>,
    /// When the home accepted it (ms).
    pub created_at_ms: i64,
    /// When its holds expire unless extended (ms): the first answer's expiry.
    pub expires_at_ms: i64,
    /// Tells two incarnations of one id apart (an id reused after the first
    /// was forgotten or rolled back): the home's operation sequence when it
    /// began. Holds rebuild a record only if every line shard holds this version.
    pub version: u64,
}

impl Incarnation {
    /// The shards holding this reservation's lines, in order of first line.
    pub fn line_shards(&self) -> Vec<u32> {
        self.request.lines_by_shard().into_iter().map(|(shard, _)| shard).collect()
    }

    /// One `Hold` per line shard.
    pub fn holds(&self) -> Vec<(u32, LineOp)> {
        self.request
            .lines_by_shard()
            .into_iter()
            .map(|(shard, lines)| (shard, LineOp::Hold { lines, reservation: self.clone() }))
            .collect()
    }
}

/// What a home shard asks a line's shard to do. Every op is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LineOp {
    /// Hold every line or none, under the channel's rules.
    Hold {
        /// The lines on this shard.
        lines: Vec<ReserveLine>,
        /// The reservation they belong to (id, channel, all lines, expiry, version).
        reservation: Incarnation,
    },
    /// Free held units (Release or expiry).
    Release {
        /// The reservation.
        id: ReservationId,
        /// The version the home's record stands at: a hold of another
        /// version is not this reservation's (a late duplicate).
        version: u64,
        /// Release or Expire.
        kind: LedgerKind,
    },
    /// Free the held (uncommitted) units of one incarnation: the rollback of
    /// a Reserve that did not hold everywhere, or was abandoned. Names the
    /// version, so a late Abort never frees a newer incarnation of the id.
    Abort {
        /// The reservation.
        id: ReservationId,
        /// The incarnation ([`Incarnation::version`]).
        version: u64,
    },
    /// Turn held units into committed ones; the remainder is freed.
    Commit {
        /// The reservation.
        id: ReservationId,
        /// The version the home's record stands at.
        version: u64,
        /// (sku, location, units committed) for each line on this shard.
        lines: Vec<LineQuantity>,
    },
    /// Free committed units not yet shipped.
    Cancel {
        /// The reservation.
        id: ReservationId,
        /// The version the home's record stands at.
        version: u64,
    },
    /// First step of changing a HELD reservation from version `from` to
    /// `to`: checks only each line's increase, then holds max(old, new) per
    /// line and remembers both versions (a *changing* hold). Refused when
    /// this shard's hold is not `from`'s (or, for a shard new in `to`, when
    /// it holds anything else).
    Replace {
        /// The reservation as it stands (every line, its version).
        from: Incarnation,
        /// The reservation as changed (every line, the new version).
        to: Incarnation,
    },
    /// The change to `version` was applied on the home: a changing hold
    /// drops to the new quantities (freeing the difference; a hold with no
    /// line left is deleted).
    Settle {
        /// The reservation.
        id: ReservationId,
        /// The new version (the `to` of the Replace).
        version: u64,
    },
    /// The change to `version` was refused: a changing hold goes back to
    /// the old quantities (a hold new in that version is deleted).
    Revert {
        /// The reservation.
        id: ReservationId,
        /// The new version (the `to` of the Replace).
        version: u64,
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
    /// The reservation as the Hold carried it: recovery rebuilds its home
    /// record from it when every line shard holds the same version. While a
    /// change is in flight, the version being changed (which may have no
    /// line on this shard, for a shard new in the change).
    pub(crate) reservation: Incarnation,
    /// While a change is in flight (after `Replace`, before `Settle` or
    /// `Revert`): the new version. `lines` then hold max(old, new) per line.
    /// Stored after the hold (`persist::Extra`), not in its serde layout.
    #[serde(skip)]
    pub(crate) next: Option<Incarnation>,
}

/// A reservation's hold on one shard, as checks and admin tools see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldView {
    /// The reservation.
    pub id: ReservationId,
    /// The incarnation the hold belongs to (while changing, the old one).
    pub version: u64,
    /// While a change is in flight: the version it changes to.
    pub next_version: Option<u64>,
    /// Whether the home's Commit reached it (its units are committed, not held).
    pub committed: bool,
    /// Its lines on this shard.
    pub lines: Vec<HeldLineView>,
}

/// One line of a [`HoldView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLineView {
    /// The SKU.
    pub sku: Sku,
    /// The location.
    pub location: LocationId,
    /// Units held (counted in `reserved` until committed).
    pub held: i64,
    /// Units committed (counted in `committed` until shipped).
    pub committed: i64,
    /// Committed units shipped.
    pub shipped: i64,
}

impl LineHolds {
    pub(crate) fn is_held(&self) -> bool {
        !self.committed
    }
}

impl HeldLine {
    fn held(sku: &Sku, location: &LocationId, quantity: i64) -> Self {
        Self {
            sku: sku.clone(),
            location: location.clone(),
            held: quantity,
            committed: 0,
            shipped: 0,
        }
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
            LineOp::Hold { lines, reservation } => self.hold(lines, reservation, catalog, now),
            LineOp::Release { id, version, kind } => {
                if self.holds_version(id, *version) {
                    self.release_lines(id, *kind, now);
                }
                Ok(())
            }
            LineOp::Abort { id, version } => {
                if self.holds.get(id).is_some_and(|holds| holds.reservation.version == *version) {
                    self.release_lines(id, LedgerKind::Abort, now);
                }
                Ok(())
            }
            LineOp::Commit { id, version, lines } => {
                if self.holds_version(id, *version) {
                    // A change still in flight here was decided by the
                    // record's version: its home died mid-change (another
                    // node's), or its Settle is late. Settle or revert it
                    // first, so only the record's lines are committed.
                    let next = self.holds.get(id).and_then(|h| h.next.as_ref()).map(|n| n.version);
                    if let Some(next) = next {
                        self.end_change(id, next, next == *version, now);
                    }
                    self.commit_lines(id, lines, catalog, now);
                }
                Ok(())
            }
            LineOp::Cancel { id, version } => {
                if self.holds_version(id, *version) {
                    self.cancel_lines(id, now);
                }
                Ok(())
            }
            LineOp::Replace { from, to } => self.replace(from, to, catalog, now),
            LineOp::Settle { id, version } => {
                self.end_change(id, *version, true, now);
                Ok(())
            }
            LineOp::Revert { id, version } => {
                self.end_change(id, *version, false, now);
                Ok(())
            }
        }
    }

    /// Whether this shard's hold of `id` is `version`'s (settled, or as the
    /// new side of a change in flight).
    fn holds_version(&self, id: &ReservationId, version: u64) -> bool {
        self.holds.get(id).is_some_and(|holds| {
            holds.reservation.version == version
                || holds.next.as_ref().is_some_and(|next| next.version == version)
        })
    }

    /// This shard's lines of `incarnation`, as (sku, location, units).
    fn lines_here(&self, incarnation: &Incarnation) -> Vec<LineQuantity> {
        incarnation
            .request
            .lines
            .iter()
            .filter(|line| crate::hash::shard_of(line.sku.as_str()) == self.shard)
            .map(|line| (line.sku.clone(), line.location.clone(), line.quantity))
            .collect()
    }

    fn replace(
        &mut self,
        from: &Incarnation,
        to: &Incarnation,
        catalog: &Catalog,
        now: i64,
    ) -> Result<(), CoreError> {
        let id = &to.request.id;
        let old = self.lines_here(from);
        let new = self.lines_here(to);
        match self.holds.get(id) {
            Some(holds) if holds.next.as_ref().is_some_and(|next| next.version == to.version) => {
                return Ok(()); // a repeated Replace: already done
            }
            Some(holds) if holds.reservation.version == to.version => {
                return Ok(()); // a repeated Replace, already settled
            }
            Some(holds) if holds.committed => {
                return Err(CoreError::FailedPrecondition(format!(
                    "reservation {id}: its units here are committed; it cannot change"
                )));
            }
            Some(holds) if holds.next.is_some() || holds.reservation.version != from.version => {
                return Err(CoreError::InProgress(format!(
                    "reservation {id} changed meanwhile; retry"
                )));
            }
            Some(_) => {}
            None if !old.is_empty() => {
                return Err(CoreError::FailedPrecondition(format!(
                    "reservation {id}: its hold here has ended; it cannot change"
                )));
            }
            None => {}
        }
        let Some(channel) = catalog.channels.get(&to.request.channel) else {
            let channel = &to.request.channel;
            return Err(CoreError::invalid("channel_id", format!("unknown channel {channel}")));
        };
        let old_of = |sku: &Sku, location: &LocationId| {
            old.iter().find(|(s, l, _)| s == sku && l == location).map_or(0, |line| line.2)
        };
        // Only what grows is checked, as a Reserve of the increase would be.
        let mut increases: Vec<ReserveLine> = Vec::new();
        for (sku, location, quantity) in &new {
            let increase = quantity - old_of(sku, location);
            if increase > 0 {
                increases.push(ReserveLine {
                    sku: sku.clone(),
                    location: location.clone(),
                    quantity: increase,
                });
            }
        }
        if !increases.is_empty() {
            to.request.check_active(catalog)?;
        }
        // A refusal speaks of the whole line: what it asks for in all, and
        // what is available to it (the free units plus its own hold).
        self.check_stock(&increases, &old, channel, &to.request.channel, catalog)?;
        self.applied_sequence += 1;
        let cause = id.shared();
        for line in &increases {
            let kind = if old_of(&line.sku, &line.location) == 0 {
                LedgerKind::Reserve
            } else {
                LedgerKind::Change
            };
            let deltas = Deltas { reserved: line.quantity, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, kind, deltas, false, now);
        }
        // max(old, new) per line: old lines first, then lines new here.
        let mut lines: Vec<HeldLine> = old
            .iter()
            .map(|(sku, location, quantity)| {
                let new_quantity =
                    new.iter().find(|(s, l, _)| s == sku && l == location).map_or(0, |line| line.2);
                HeldLine::held(sku, location, (*quantity).max(new_quantity))
            })
            .collect();
        for (sku, location, quantity) in &new {
            if !old.iter().any(|(s, l, _)| s == sku && l == location) {
                lines.push(HeldLine::held(sku, location, *quantity));
            }
        }
        let holds = LineHolds {
            committed: false,
            lines,
            reservation: from.clone(),
            next: Some(to.clone()),
        };
        self.holds.insert(id.clone(), holds);
        Ok(())
    }

    /// Settles (`keep_new`) or reverts the change to `version` of `id`'s
    /// hold here, if it is changing to that version.
    fn end_change(&mut self, id: &ReservationId, version: u64, keep_new: bool, now: i64) {
        let changing = self
            .holds
            .get(id)
            .is_some_and(|holds| holds.next.as_ref().is_some_and(|next| next.version == version));
        if !changing {
            return;
        }
        let mut holds = self.holds.remove(id).expect("checked above");
        let next = holds.next.take().expect("checked above");
        let kept = if keep_new { next } else { holds.reservation.clone() };
        let target = self.lines_here(&kept);
        self.applied_sequence += 1;
        let cause = id.shared();
        for line in &holds.lines {
            let keep = target
                .iter()
                .find(|(s, l, _)| *s == line.sku && *l == line.location)
                .map_or(0, |t| t.2);
            let freed = line.held - keep;
            debug_assert!(freed >= 0, "a changing hold holds the larger side");
            // A line new in a reverted change is aborted; every other
            // line's units move by a change.
            let kind = if keep == 0 && !keep_new { LedgerKind::Abort } else { LedgerKind::Change };
            let deltas = Deltas { reserved: -freed, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, kind, deltas, false, now);
        }
        if !target.is_empty() {
            holds.lines = target
                .iter()
                .map(|(sku, location, quantity)| HeldLine::held(sku, location, *quantity))
                .collect();
            holds.reservation = kept;
            self.holds.insert(id.clone(), holds);
        }
    }

    fn hold(
        &mut self,
        lines: &[ReserveLine],
        reservation: &Incarnation,
        catalog: &Catalog,
        now: i64,
    ) -> Result<(), CoreError> {
        let (id, channel_id): (&ReservationId, &ChannelId) =
            (&reservation.request.id, &reservation.request.channel);
        if let Some(existing) = self.holds.get(id) {
            return match (existing.reservation.version == reservation.version, existing.committed) {
                // A repeated Hold of this incarnation: already done.
                (true, _) => Ok(()),
                // An earlier incarnation's hold, being aborted.
                (false, false) => Err(CoreError::InProgress(format!(
                    "reservation {id}: an earlier attempt's hold is being rolled back; retry"
                ))),
                (false, true) => Err(CoreError::FailedPrecondition(format!(
                    "reservation {id}: an earlier use of this id still has committed units here"
                ))),
            };
        }
        if now >= reservation.created_at_ms.saturating_add(self.settings.pending_timeout_ms) {
            // The home has abandoned this Reserve (or is about to): a hold
            // taken now would belong to nobody.
            return Err(CoreError::InProgress(format!(
                "reservation {id}: the Reserve took longer than {} ms and was abandoned; nothing is held; retry",
                self.settings.pending_timeout_ms
            )));
        }
        let Some(channel) = catalog.channels.get(channel_id) else {
            return Err(CoreError::invalid("channel_id", format!("unknown channel {channel_id}")));
        };
        // The catalog may have changed since the node checked the request.
        reservation.request.check_active(catalog)?;
        self.check_stock(lines, &[], channel, channel_id, catalog)?;
        self.applied_sequence += 1;
        let cause = id.shared();
        for line in lines {
            let deltas = Deltas { reserved: line.quantity, ..Deltas::default() };
            self.change(&line.sku, &line.location, &cause, LedgerKind::Reserve, deltas, false, now);
            let safety = self.safety(catalog, &line.location);
            let position = self.position(&line.sku, &line.location);
            // A capacity counter has no stock: its limit is checked above.
            assert!(
                is_counter(&line.sku) || position.shortfall(safety) == 0,
                "hold {id} created a shortfall at {}/{}",
                line.sku,
                line.location
            );
        }
        // Demand for safe-to-publish: the units this hold takes, per SKU;
        // only for a channel that publishes late (lag 0 needs none).
        let mut demand: Vec<(&Sku, i64)> = Vec::new();
        let observed = channel.publish.lag_ms > 0;
        for line in lines.iter().filter(|line| observed && !is_counter(&line.sku)) {
            match demand.iter_mut().find(|(sku, _)| *sku == &line.sku) {
                Some((_, units)) => *units += line.quantity,
                None => demand.push((&line.sku, line.quantity)),
            }
        }
        for (sku, units) in demand {
            self.record_demand(sku, channel_id, units, now);
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
        let holds = LineHolds {
            committed: false,
            lines: held,
            reservation: reservation.clone(),
            next: None,
        };
        self.holds.insert(id.clone(), holds);
        Ok(())
    }

    /// Whether `lines` fit the positions' ATP and the channel's, as a hold
    /// of them would take them. `own`: what the reservation already holds
    /// here (a change's old lines), added to both sides of a refusal.
    fn check_stock(
        &self,
        lines: &[ReserveLine],
        own: &[LineQuantity],
        channel: &crate::catalog::Channel,
        channel_id: &ChannelId,
        catalog: &Catalog,
    ) -> Result<(), CoreError> {
        let mut per_sku: BTreeMap<&Sku, i64> = BTreeMap::new();
        for line in lines {
            if !catalog.locations.contains_key(&line.location) {
                return Err(CoreError::FailedPrecondition(format!(
                    "location {} is unknown; it takes no holds",
                    line.location
                )));
            }
            let available = match counter_limit(&line.sku, &line.location, catalog) {
                // A daily capacity counter: what its limit leaves.
                Some(limit) => {
                    let counted = self.position(&line.sku, &line.location);
                    limit.saturating_sub(counted.reserved + counted.committed).max(0)
                }
                None => {
                    let safety = self.safety(catalog, &line.location);
                    self.position(&line.sku, &line.location).atp(safety)
                }
            };
            if line.quantity > available {
                let held: i64 = own
                    .iter()
                    .filter(|(sku, location, _)| *sku == line.sku && *location == line.location)
                    .map(|(_, _, units)| units)
                    .sum();
                return Err(CoreError::InsufficientStock {
                    sku: line.sku.to_string(),
                    location: line.location.to_string(),
                    requested: line.quantity + held,
                    available: available + held,
                });
            }
            *per_sku.entry(&line.sku).or_default() += line.quantity;
        }
        for (sku, requested) in per_sku {
            if is_counter(sku) {
                continue;
            }
            let total: i64 = channel
                .locations
                .iter()
                .filter(|location| catalog.is_active(location))
                .map(|location| self.position(sku, location).atp(self.safety(catalog, location)))
                .sum();
            let available = channel.atp(total);
            if requested > available {
                let held: i64 =
                    own.iter().filter(|(s, _, _)| s == sku).map(|(_, _, units)| units).sum();
                return Err(CoreError::InsufficientStock {
                    sku: sku.to_string(),
                    location: format!("channel {channel_id}"),
                    requested: requested + held,
                    available: available + held,
                });
            }
        }
        Ok(())
    }

    fn release_lines(&mut self, id: &ReservationId, kind: LedgerKind, now: i64) {
        let Some(holds) = self.holds.get(id) else { return };
        if holds.committed {
            return;
        }
        let holds = self.holds.remove(id).expect("checked above");
        self.applied_sequence += 1;
        let cause = id.shared();
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
        let cause = id.shared();
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
            assert!(
                is_counter(&line.sku) || after <= before,
                "commit of {id} deepened a shortfall"
            );
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
        let cause = id.shared();
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
    /// Every hold on this shard, by reservation id.
    pub fn line_holds(&self) -> Vec<HoldView> {
        let mut views: Vec<HoldView> = self
            .holds
            .iter()
            .map(|(id, holds)| HoldView {
                id: id.clone(),
                version: holds.reservation.version,
                next_version: holds.next.as_ref().map(|next| next.version),
                committed: holds.committed,
                lines: holds
                    .lines
                    .iter()
                    .map(|line| HeldLineView {
                        sku: line.sku.clone(),
                        location: line.location.clone(),
                        held: line.held,
                        committed: line.committed,
                        shipped: line.shipped,
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Uncommitted holds on this shard, by id: the reservation each carries,
    /// and the new version of a change in flight.
    pub(super) fn uncommitted_holds(
        &self,
    ) -> impl Iterator<Item = (&ReservationId, &Incarnation, Option<&Incarnation>)> {
        // The holds map is ordered by id, so this is in id order.
        self.holds
            .iter()
            .filter(|(_, holds)| holds.is_held())
            .map(|(id, holds)| (id, &holds.reservation, holds.next.as_ref()))
    }

    /// Reservations with an uncommitted hold here whose Reserve began at or
    /// before `cutoff` (ms), in id order: a node asks the homes on other
    /// nodes about those older than the pending timeout, so a hold whose
    /// Reserve died with its home (a late Hold, an `Abort` lost with its
    /// sender) is found and settled (`docs/PROTOCOL.md`, "Across nodes").
    pub fn uncommitted_holds_begun_before(&self, cutoff: i64) -> Vec<ReservationId> {
        self.holds
            .iter()
            .filter(|(_, holds)| holds.is_held() && holds.reservation.created_at_ms <= cutoff)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// This shard's uncommitted hold of `id`: the version it holds, and the
    /// version a change in flight moves it to.
    pub(super) fn uncommitted_hold(
        &self,
        id: &ReservationId,
    ) -> Option<(&Incarnation, Option<&Incarnation>)> {
        self.holds
            .get(id)
            .filter(|holds| holds.is_held())
            .map(|holds| (&holds.reservation, holds.next.as_ref()))
    }

    /// Whether a line of reservation `id` is still held or committed here.
    pub fn has_line(&self, id: &ReservationId, sku: &Sku, location: &LocationId) -> bool {
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
        // Deterministic order (the holds are a hash map): recovery replays these.
        notices.sort_by(|a, b| {
            (&a.reservation, &a.sku, &a.location).cmp(&(&b.reservation, &b.sku, &b.location))
        });
        notices
    }
}
