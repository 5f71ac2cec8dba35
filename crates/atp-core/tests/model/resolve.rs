//! How a generated step becomes a concrete request when it runs: against
//! the history of the run so far and the model's state.

use std::collections::BTreeMap;

use atp_core::events::{StockEvent, StockEventKind};
use atp_core::ids::{EventId, MAX_TTL_MS, ReservationId};
use atp_core::reservation::{CommitLine, ReservationState, ReserveLine, ReserveRequest};

use crate::common::{LOCATIONS, MARKET, SKUS, WEB, channel, event_id, location, reservation, sku};
use crate::reference::{Model, ModelPosition};
use crate::strategy::{AsOf, EventGen, IdChoice, Op, TimeMove};
use crate::{Key, Request};

/// The wall clock after `time` moves it from `wall_ms`, and the request to
/// retry at a deadline, if the move says so.
pub fn next_wall(time: &TimeMove, wall_ms: i64, model: &Model) -> (i64, Option<Request>) {
    match time {
        TimeMove::By(dt_ms) => (wall_ms + dt_ms, None),
        TimeMove::ToDeadline { selector, off_by_ms, retry } => {
            let deadlines = model.deadlines();
            if deadlines.is_empty() {
                return (wall_ms, None);
            }
            // Mostly the next deadline; sometimes a later one.
            let index = if *selector < 128 { 0 } else { usize::from(*selector) % deadlines.len() };
            let (at_ms, owner) = &deadlines[index];
            (at_ms + off_by_ms, retry.then(|| owner.clone()))
        }
    }
}

/// What the run has issued so far, for picking targets, retries and reused ids.
#[derive(Default)]
pub struct History {
    requests: Vec<Request>,
    /// Every reservation id used, in order of first use.
    ids: Vec<ReservationId>,
    /// The latest Reserve issued per id.
    reserves: BTreeMap<ReservationId, ReserveRequest>,
}

impl History {
    pub fn record(&mut self, request: &Request) {
        self.requests.push(request.clone());
        if let Request::Reserve(reserve) = request {
            self.reserves.insert(reserve.id.clone(), reserve.clone());
        }
        if let Some(id) = request.reservation()
            && !self.ids.contains(id)
        {
            self.ids.push(id.clone());
        }
    }

    /// Mostly a reservation the model has in the `preferred` state (or any
    /// it has); sometimes any id used so far, or one never used.
    fn target(&self, selector: u8, preferred: ReservationState, model: &Model) -> ReservationId {
        if self.ids.is_empty() || selector >= 250 {
            return reservation("never-reserved");
        }
        let pick = |ids: Vec<&ReservationId>| ids[usize::from(selector) % ids.len()].clone();
        if selector < 200 {
            let in_state: Vec<&ReservationId> = model
                .reservations
                .values()
                .filter(|r| r.state == preferred)
                .map(|r| &r.request.id)
                .collect();
            if !in_state.is_empty() {
                return pick(in_state);
            }
            if !model.reservations.is_empty() {
                return pick(model.reservations.keys().collect());
            }
        }
        pick(self.ids.iter().collect())
    }

    /// The request the reservation was made with, as far as the run knows.
    fn reserve_of(&self, id: &ReservationId, model: &Model) -> Option<ReserveRequest> {
        model
            .reservations
            .get(id)
            .map(|record| record.request.clone())
            .or_else(|| self.reserves.get(id).cloned())
    }
}

/// Mostly 1..=available units; sometimes (and always when nothing is
/// available) any of 1..=8, which may be too many.
fn units_within(available: i64, selector: u8) -> i64 {
    if available > 0 && selector < 200 {
        1 + i64::from(selector) % available
    } else {
        1 + i64::from(selector) % 8
    }
}

fn reservation_id(choice: &IdChoice, step: usize) -> ReservationId {
    match choice {
        IdChoice::Fresh => reservation(&format!("r-{step}")),
        IdChoice::Pool(index) => reservation(&format!("r{index}")),
    }
}

fn new_event_id(choice: &IdChoice, step: usize) -> EventId {
    match choice {
        IdChoice::Fresh => event_id(&format!("e-{step}")),
        IdChoice::Pool(index) => event_id(&format!("e{index}")),
    }
}

pub fn resolve(op: &Op, step: usize, history: &History, model: &Model) -> Option<Request> {
    let clock_ms = model.clock_ms;
    let request = match op {
        Op::Reserve { id, channel: selector, lines, ttl_ms } => {
            let channel_id = match selector {
                0 => channel(WEB),
                1 => channel(MARKET),
                _ => channel("outlet"),
            };
            let feeds = model.catalog.channels.get(&channel_id).map(|c| c.locations.clone());
            let lines = lines
                .iter()
                .map(|(sku_index, location_selector, quantity)| {
                    let location_id = match &feeds {
                        Some(feeds) if *location_selector < 31 => {
                            feeds[usize::from(*location_selector) % feeds.len()].clone()
                        }
                        // A location that does not feed the channel (or any, for an unknown one).
                        _ => LOCATIONS
                            .iter()
                            .map(|(id, _)| location(id))
                            .find(|l| feeds.as_ref().is_none_or(|feeds| !feeds.contains(l)))
                            .expect("some location does not feed the channel"),
                    };
                    ReserveLine {
                        sku: sku(SKUS[usize::from(*sku_index)]),
                        location: location_id,
                        quantity: *quantity,
                    }
                })
                .collect();
            let request = ReserveRequest {
                id: reservation_id(id, step),
                channel: channel_id,
                lines,
                ttl_ms: *ttl_ms,
                metadata: Default::default(),
            };
            Request::Reserve(request)
        }
        Op::Commit { target, lines } => {
            let id = history.target(*target, ReservationState::Held, model);
            let reserve = history.reserve_of(&id, model);
            let lines = lines
                .iter()
                .map(|(line_selector, quantity_selector)| match &reserve {
                    Some(reserve) if usize::from(*line_selector) < reserve.lines.len() * 16 => {
                        let line =
                            &reserve.lines[usize::from(*line_selector) % reserve.lines.len()];
                        CommitLine {
                            sku: line.sku.clone(),
                            location: line.location.clone(),
                            // 0..=held+1: mostly valid, sometimes zero or one too many.
                            quantity: i64::from(*quantity_selector) % (line.quantity + 2),
                        }
                    }
                    // A line the reservation does not have.
                    _ => CommitLine {
                        sku: sku("sku-zz"),
                        location: location("loc-north"),
                        quantity: 1,
                    },
                })
                .collect();
            Request::Commit(id, lines)
        }
        Op::Release { target } => {
            Request::Release(history.target(*target, ReservationState::Held, model))
        }
        Op::Cancel { target } => {
            Request::Cancel(history.target(*target, ReservationState::Committed, model))
        }
        Op::Extend { target, ttl_ms } => {
            Request::Extend(history.target(*target, ReservationState::Held, model), *ttl_ms)
        }
        Op::Event { id, sku: sku_index, location: location_index, kind } => {
            let mut sku_id = sku(SKUS[usize::from(*sku_index)]);
            let mut location_id = location(LOCATIONS[usize::from(*location_index)].0);
            // Releases of unavailable units, receipts of incoming ones and
            // counts as of the last count mostly go where there are some.
            let (wanted, selector): (fn(&ModelPosition) -> bool, u8) = match kind {
                EventGen::ReleasedUnavailable(selector) => (|p| p.unavailable > 0, *selector),
                EventGen::IncomingReceived(selector) => (|p| !p.incoming.is_empty(), *selector),
                EventGen::Counted { as_of: AsOf::AtLastCount { .. }, .. } => {
                    (|p| p.count.is_some(), *sku_index * 16 + *location_index)
                }
                _ => (|_| false, u8::MAX),
            };
            let candidates: Vec<&Key> =
                model.positions.iter().filter(|(_, p)| wanted(p)).map(|(key, _)| key).collect();
            if selector < 200 && !candidates.is_empty() {
                (sku_id, location_id) =
                    candidates[usize::from(selector) % candidates.len()].clone();
            }
            let current = model
                .positions
                .get(&(sku_id.clone(), location_id.clone()))
                .cloned()
                .unwrap_or_default();
            let kind = match kind {
                EventGen::Received(quantity) => StockEventKind::Received { quantity: *quantity },
                EventGen::Shipped(quantity) => {
                    StockEventKind::Shipped { quantity: *quantity, reservation: None }
                }
                EventGen::Counted { on_hand, as_of } => {
                    let as_of_ms = match as_of {
                        AsOf::Offset(offset_ms) => clock_ms + offset_ms,
                        AsOf::AtMovement { selector, off_by_ms } => {
                            let times: Vec<i64> =
                                current.movements.iter().map(|(_, at, _)| *at).collect();
                            let at = if times.is_empty() {
                                clock_ms
                            } else {
                                times[usize::from(*selector) % times.len()]
                            };
                            at + off_by_ms
                        }
                        AsOf::AtLastCount { off_by_ms } => {
                            current.count.map_or(clock_ms, |(_, as_of_ms, _)| as_of_ms) + off_by_ms
                        }
                    };
                    StockEventKind::Counted { on_hand: *on_hand, as_of_ms }
                }
                EventGen::Adjusted(delta) => {
                    StockEventKind::Adjusted { delta: *delta, reason: "recount".to_owned() }
                }
                EventGen::MarkedUnavailable(quantity) => StockEventKind::MarkedUnavailable {
                    quantity: *quantity,
                    reason: "damaged".to_owned(),
                },
                EventGen::ReleasedUnavailable(selector) => StockEventKind::ReleasedUnavailable {
                    quantity: units_within(current.unavailable, *selector),
                },
                EventGen::IncomingExpected { quantity, at_offset_ms } => {
                    StockEventKind::IncomingExpected {
                        quantity: *quantity,
                        expected_at_ms: clock_ms + at_offset_ms,
                    }
                }
                EventGen::IncomingReceived(selector) => StockEventKind::IncomingReceived {
                    quantity: units_within(current.incoming_total(), *selector),
                },
            };
            Request::Event(StockEvent {
                id: new_event_id(id, step),
                sku: sku_id,
                location: location_id,
                kind,
            })
        }
        Op::Ship { id, target, line, quantity } => {
            let reservation_id = history.target(*target, ReservationState::Committed, model);
            let reserve = history.reserve_of(&reservation_id, model)?;
            let index = usize::from(*line) % reserve.lines.len();
            let line = &reserve.lines[index];
            let unshipped = model.reservations.get(&reservation_id).map_or(0, |record| {
                record.committed.as_ref().map_or(0, |c| c[index] - record.shipped[index])
            });
            Request::Event(StockEvent {
                id: new_event_id(id, step),
                sku: line.sku.clone(),
                location: line.location.clone(),
                kind: StockEventKind::Shipped {
                    quantity: units_within(unshipped, *quantity),
                    reservation: Some(reservation_id),
                },
            })
        }
        Op::Replay { index } => {
            let count = history.requests.len();
            return (count > 0).then(|| history.requests[usize::from(*index) % count].clone());
        }
        Op::ReuseId { index } => {
            let count = history.requests.len();
            if count == 0 {
                return None;
            }
            return Some(with_another_payload(
                &history.requests[usize::from(*index) % count],
                history,
                model,
            ));
        }
        Op::Idle => return None,
    };
    Some(request)
}

/// The same id with another payload.
fn with_another_payload(request: &Request, history: &History, model: &Model) -> Request {
    match request {
        Request::Reserve(reserve) => {
            let mut changed = reserve.clone();
            changed.lines[0].quantity += 1;
            Request::Reserve(changed)
        }
        Request::Commit(id, lines) => {
            let first = history.reserve_of(id, model).map(|reserve| reserve.lines[0].clone());
            match (lines.is_empty(), first) {
                (true, Some(first)) => Request::Commit(
                    id.clone(),
                    vec![CommitLine {
                        sku: first.sku,
                        location: first.location,
                        quantity: first.quantity - 1,
                    }],
                ),
                _ => Request::Commit(id.clone(), Vec::new()),
            }
        }
        // Another TTL, still within the bounds the API enforces.
        Request::Extend(id, ttl_ms) if *ttl_ms < MAX_TTL_MS => {
            Request::Extend(id.clone(), ttl_ms + 1_000)
        }
        Request::Extend(id, ttl_ms) => Request::Extend(id.clone(), ttl_ms - 1_000),
        Request::Release(_) | Request::Cancel(_) => request.clone(),
        Request::Event(event) => {
            let mut changed = event.clone();
            changed.kind = match &event.kind {
                StockEventKind::Received { quantity } => {
                    StockEventKind::Received { quantity: quantity + 1 }
                }
                _ => StockEventKind::Received { quantity: 1 },
            };
            Request::Event(changed)
        }
    }
}
