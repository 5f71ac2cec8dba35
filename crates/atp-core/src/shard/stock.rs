//! Stock events on a SKU's shard: facts, always applied when well formed,
//! each event id at most once.

use super::{Deadline, MAX_COUNT_SKEW_MS, ShardState};
use crate::availability::LocationAvailability;
use crate::catalog::Catalog;
use crate::error::CoreError;
use crate::events::{COUNTED_NOW, StockEvent, StockEventKind};
use crate::ids::{EventId, LocationId, MAX_POSITION_UNITS, ReservationId, Sku};
use crate::ledger::LedgerKind;
use crate::position::{Deltas, Position};

/// What an applied event leaves behind for its retention: enough to tell a
/// repeat from a reuse of its id and to give a repeat the first answer —
/// not the event itself (a memo is kept per event id for a day by default,
/// so its size is the node's memory; see `budget.rs`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct EventMemo {
    /// xxh3-64 of the event's encoding: another payload under the same id
    /// differs here (a collision is a 2^-64 chance).
    fingerprint: u64,
    /// The position right after the event was first applied (at the event's
    /// location) and the safety stock it was shown with.
    position: Position,
    safety_stock: i64,
    applied_at_ms: i64,
}

fn fingerprint(event: &StockEvent) -> u64 {
    let encoded = postcard::to_stdvec(event).expect("a stock event always encodes");
    xxhash_rust::xxh3::xxh3_64(&encoded)
}

/// An applied (or already applied) stock event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventApplied {
    /// The position right after the event was first applied.
    pub position: LocationAvailability,
    /// True when the id was seen before with the same payload (nothing changed now).
    pub duplicate: bool,
    /// For a shipment against a reservation: what its home shard must learn.
    pub notice: Option<ShipNotice>,
}

/// Units of one reservation line shipped so far, for its home shard.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShipNotice {
    /// The reservation.
    pub reservation: ReservationId,
    /// The line's SKU.
    pub sku: Sku,
    /// The line's location.
    pub location: LocationId,
    /// Units of the line shipped so far (not a delta: applying it twice is harmless).
    pub shipped_total: i64,
}

fn refuse(message: String) -> Result<EventApplied, CoreError> {
    Err(CoreError::FailedPrecondition(message))
}

impl EventMemo {
    pub(super) fn applied_at_ms(&self) -> i64 {
        self.applied_at_ms
    }
}

impl ShardState {
    /// Applies one stock event. A refused event changes and remembers nothing.
    pub fn apply_event(
        &mut self,
        event: &StockEvent,
        catalog: &Catalog,
        now: i64,
    ) -> Result<EventApplied, CoreError> {
        let now = self.advance(now);
        if let Some(memo) = self.events.get(&event.id) {
            if memo.fingerprint != fingerprint(event) {
                return Err(CoreError::AlreadyExists(format!(
                    "event {} was already applied with another payload",
                    event.id
                )));
            }
            let mut position =
                LocationAvailability::of(&event.location, &memo.position, memo.safety_stock);
            if !catalog.is_active(&event.location) {
                position.atp = 0;
            }
            return Ok(EventApplied { position, duplicate: true, notice: None });
        }
        let (sku, location) = (&event.sku, &event.location);
        let cause = event.id.shared();
        let kind = LedgerKind::Event(event.kind.name());
        let state =
            self.positions.get(sku).and_then(|m| m.get(location)).cloned().unwrap_or_default();
        let position = &state.position;
        let within = |value: i64| (-MAX_POSITION_UNITS..=MAX_POSITION_UNITS).contains(&value);
        let mut notice = None;
        match &event.kind {
            StockEventKind::Received { quantity } => {
                if !within(position.on_hand + quantity) {
                    return refuse(format!("on_hand would pass the limit {MAX_POSITION_UNITS}"));
                }
                let deltas = Deltas { on_hand: *quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, true, now);
            }
            StockEventKind::Shipped { quantity, reservation: None } => {
                if !within(position.on_hand - quantity) {
                    return refuse(format!("on_hand would pass the limit -{MAX_POSITION_UNITS}"));
                }
                let deltas = Deltas { on_hand: -quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, true, now);
            }
            StockEventKind::Shipped { quantity, reservation: Some(reservation) } => {
                let unshipped = self
                    .holds
                    .get(reservation)
                    .filter(|holds| holds.committed)
                    .and_then(|holds| {
                        holds.lines.iter().find(|l| &l.sku == sku && &l.location == location)
                    })
                    .map_or(0, |line| line.committed - line.shipped);
                if *quantity > unshipped {
                    return refuse(format!(
                        "reservation {reservation} has {unshipped} committed unshipped units of \
                         sku {sku} at {location}; cannot ship {quantity}"
                    ));
                }
                let deltas =
                    Deltas { on_hand: -quantity, committed: -quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, true, now);
                let holds = self.holds.get_mut(reservation).expect("checked above");
                let line = holds
                    .lines
                    .iter_mut()
                    .find(|l| &l.sku == sku && &l.location == location)
                    .expect("checked above");
                line.shipped += quantity;
                notice = Some(ShipNotice {
                    reservation: reservation.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                    shipped_total: line.shipped,
                });
                if holds.lines.iter().all(|l| l.shipped >= l.committed) {
                    self.holds.remove(reservation);
                }
            }
            StockEventKind::Counted { on_hand, as_of_ms } => {
                // 0 (no as_of given) is a count taken now. The event keeps
                // its 0, so a retry has the same payload and is a DUPLICATE.
                let as_of_ms = &if *as_of_ms == COUNTED_NOW { now } else { *as_of_ms };
                if *as_of_ms > now + MAX_COUNT_SKEW_MS {
                    return Err(CoreError::invalid(
                        "counted.as_of_ms",
                        format!("is {} s in the future", (as_of_ms - now) / 1000),
                    ));
                }
                let oldest =
                    (now - self.settings.count_window_ms).max(state.movements_complete_since);
                if *as_of_ms < oldest {
                    return Err(CoreError::invalid(
                        "counted.as_of_ms",
                        format!("is before {oldest}, the oldest time whose movements are kept"),
                    ));
                }
                if state.last_count_as_of.is_none_or(|last| *as_of_ms >= last) {
                    let later: i64 = state
                        .movements
                        .iter()
                        .filter(|(at, _)| at > as_of_ms)
                        .map(|(_, delta)| delta)
                        .sum();
                    let target = on_hand + later;
                    let deltas = Deltas { on_hand: target - position.on_hand, ..Deltas::default() };
                    self.change(sku, location, &cause, kind, deltas, false, now);
                    self.position_mut(sku, location).last_count_as_of = Some(*as_of_ms);
                }
                // An older count than one already applied is superseded: recorded, no change.
            }
            StockEventKind::Adjusted { delta, .. } => {
                if !within(position.on_hand + delta) {
                    return refuse(format!("on_hand would pass the limit {MAX_POSITION_UNITS}"));
                }
                let deltas = Deltas { on_hand: *delta, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, true, now);
            }
            StockEventKind::MarkedUnavailable { quantity, .. } => {
                if !within(position.unavailable + quantity) {
                    return refuse(format!(
                        "unavailable would pass the limit {MAX_POSITION_UNITS}"
                    ));
                }
                let deltas = Deltas { unavailable: *quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, false, now);
            }
            StockEventKind::ReleasedUnavailable { quantity } => {
                if *quantity > position.unavailable {
                    return refuse(format!(
                        "only {} units of sku {sku} at {location} are unavailable; cannot release {quantity}",
                        position.unavailable
                    ));
                }
                let deltas = Deltas { unavailable: -quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, false, now);
            }
            StockEventKind::IncomingExpected { quantity, expected_at_ms } => {
                if !within(position.incoming_total() + quantity) {
                    return refuse(format!("incoming would pass the limit {MAX_POSITION_UNITS}"));
                }
                *self
                    .position_mut(sku, location)
                    .position
                    .incoming
                    .entry(*expected_at_ms)
                    .or_default() += quantity;
                let deltas = Deltas { incoming: *quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, false, now);
            }
            StockEventKind::IncomingReceived { quantity } => {
                let incoming = position.incoming_total();
                if *quantity > incoming {
                    return refuse(format!(
                        "only {incoming} units of sku {sku} are incoming at {location}; cannot receive {quantity}"
                    ));
                }
                if !within(position.on_hand + quantity) {
                    return refuse(format!("on_hand would pass the limit {MAX_POSITION_UNITS}"));
                }
                let batches = &mut self.position_mut(sku, location).position.incoming;
                let mut left = *quantity;
                while left > 0 {
                    let mut first = batches.first_entry().expect("incoming covers the quantity");
                    let take = left.min(*first.get());
                    *first.get_mut() -= take;
                    left -= take;
                    if *first.get() == 0 {
                        first.remove();
                    }
                }
                let deltas =
                    Deltas { on_hand: *quantity, incoming: -quantity, ..Deltas::default() };
                self.change(sku, location, &cause, kind, deltas, true, now);
            }
        }
        self.applied_sequence += 1;
        // Keep the position entry so the SKU shows where it was touched.
        let state = self.position_mut(sku, location);
        let safety_stock = catalog.safety_stock(location);
        let position = state.position.clone();
        let after = LocationAvailability::in_catalog(location, &position, catalog);
        let retention_ms = self.settings.retention_ms;
        let memo = EventMemo {
            fingerprint: fingerprint(event),
            position,
            safety_stock,
            applied_at_ms: now,
        };
        self.events.insert(event.id.clone(), memo);
        self.schedule(now + retention_ms, Deadline::ForgetEvent(event.id.clone()));
        self.retain_memo(&event.id, now);
        Ok(EventApplied { position: after, duplicate: false, notice })
    }

    pub(super) fn forget_event(&mut self, id: &EventId, now: i64) {
        let retention_ms = self.settings.retention_ms;
        if self.events.get(id).is_some_and(|m| m.applied_at_ms + retention_ms <= now) {
            self.forget_memo(id);
        }
    }
}
