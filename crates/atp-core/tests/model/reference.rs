//! The reference model: flat maps of positions, reservations and applied
//! events, with no shards, line holds or deadline heaps. It predicts every
//! answer and refusal of the core and the state after each request.

use std::collections::BTreeMap;

use atp_core::availability::LocationAvailability;
use atp_core::catalog::{Catalog, Channel};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{EventId, LocationId, MAX_LINES_PER_RESERVATION, ReservationId, Sku};
use atp_core::reservation::{
    CommitLine, LineView, ReservationState, ReservationView, ReserveLine, ReserveRequest,
};
use atp_core::shard::{EventApplied, MAX_COUNT_SKEW_MS, ShardSettings, ShipNotice};

use crate::common::LOCATIONS;
use crate::{Answer, Key, Outcome, Refusal, Request};

#[derive(Clone, Debug, Default)]
pub struct ModelPosition {
    pub reserved: i64,
    pub committed: i64,
    pub unavailable: i64,
    pub incoming: BTreeMap<i64, i64>,
    /// Non-count on_hand movements: (order applied, applied at ms, units).
    pub movements: Vec<(u64, i64, i64)>,
    /// The count in force: (order applied, as_of ms, units counted).
    pub count: Option<(u64, i64, i64)>,
}

impl ModelPosition {
    /// on_hand from the accepted events alone: without a count, the sum of
    /// the movements; with one, the units counted plus every movement the
    /// count could not include — applied at a time after `as_of`, or applied
    /// after the count itself (a fact that arrives later always adds, even if
    /// its time is not after a slightly future `as_of`).
    pub fn on_hand(&self) -> i64 {
        match self.count {
            None => self.movements.iter().map(|(_, _, units)| units).sum(),
            Some((count_order, as_of_ms, counted)) => {
                let later: i64 = self
                    .movements
                    .iter()
                    .filter(|(order, at_ms, _)| *order > count_order || *at_ms > as_of_ms)
                    .map(|(_, _, units)| units)
                    .sum();
                counted + later
            }
        }
    }

    pub fn incoming_total(&self) -> i64 {
        self.incoming.values().sum()
    }
}

#[derive(Clone, Debug)]
pub struct ModelReservation {
    pub request: ReserveRequest,
    pub state: ReservationState,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub ended_at_ms: i64,
    pub committed: Option<Vec<i64>>,
    pub shipped: Vec<i64>,
    /// First answers, which retries must get verbatim.
    pub reserve_answer: Option<ReservationView>,
    pub commit_answer: Option<ReservationView>,
    pub end_answer: Option<ReservationView>,
}

impl ModelReservation {
    pub fn view(&self) -> ReservationView {
        let lines = self
            .request
            .lines
            .iter()
            .enumerate()
            .map(|(index, line)| LineView {
                sku: line.sku.clone(),
                location: line.location.clone(),
                quantity: line.quantity,
                committed: self.committed.as_ref().map_or(0, |committed| committed[index]),
                shipped: self.shipped[index],
            })
            .collect();
        ReservationView {
            id: self.request.id.clone(),
            channel: self.request.channel.clone(),
            state: self.state,
            lines,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            ended_at_ms: self.ended_at_ms,
            metadata: self.request.metadata.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EventMemo {
    pub event: StockEvent,
    pub applied_at_ms: i64,
    pub position: LocationAvailability,
}

pub struct Model {
    pub catalog: Catalog,
    pub retention_ms: i64,
    pub count_window_ms: i64,
    pub clock_ms: i64,
    /// Order in which on_hand movements and counts were applied.
    pub order: u64,
    pub positions: BTreeMap<Key, ModelPosition>,
    pub reservations: BTreeMap<ReservationId, ModelReservation>,
    /// Applied events by (shard of the SKU, id): ids are deduplicated on the
    /// SKU's shard, so the same id for a SKU of another shard is another event.
    pub events: BTreeMap<(u32, EventId), EventMemo>,
}

impl Model {
    pub fn new(catalog: Catalog) -> Self {
        let defaults = ShardSettings::default();
        Self {
            catalog,
            retention_ms: defaults.retention_ms,
            count_window_ms: defaults.count_window_ms,
            clock_ms: i64::MIN,
            order: 0,
            positions: BTreeMap::new(),
            reservations: BTreeMap::new(),
            events: BTreeMap::new(),
        }
    }

    /// Every future deadline of the core, earliest first, with the request
    /// it belongs to: expiries of held reservations, ends of the retention of
    /// ended reservations and of applied events.
    pub fn deadlines(&self) -> Vec<(i64, Request)> {
        let reservations = self.reservations.values().filter_map(|r| {
            let at_ms = match r.state {
                ReservationState::Held => r.expires_at_ms,
                state if state.is_final() => r.ended_at_ms + self.retention_ms,
                _ => return None,
            };
            Some((at_ms, Request::Reserve(r.request.clone())))
        });
        let events = self.events.values().map(|memo| {
            (memo.applied_at_ms + self.retention_ms, Request::Event(memo.event.clone()))
        });
        let mut deadlines: Vec<(i64, Request)> =
            reservations.chain(events).filter(|(at_ms, _)| *at_ms > self.clock_ms).collect();
        deadlines.sort_by_key(|(at_ms, _)| *at_ms);
        deadlines
    }

    fn position_mut(&mut self, sku: &Sku, location: &LocationId) -> &mut ModelPosition {
        self.positions.entry((sku.clone(), location.clone())).or_default()
    }

    pub fn safety_stock(location: &LocationId) -> i64 {
        LOCATIONS
            .iter()
            .find(|(id, _)| *id == location.as_str())
            .map_or(0, |(_, safety_stock)| *safety_stock)
    }

    fn atp(&self, sku: &Sku, location: &LocationId) -> i64 {
        let position =
            self.positions.get(&(sku.clone(), location.clone())).cloned().unwrap_or_default();
        let claimed = position.reserved
            + position.committed
            + position.unavailable
            + Self::safety_stock(location);
        (position.on_hand() - claimed).max(0)
    }

    fn channel_atp(&self, channel: &Channel, sku: &Sku) -> i64 {
        let total: i64 = channel.locations.iter().map(|location| self.atp(sku, location)).sum();
        let shown = (total - channel.buffer).max(0);
        channel.cap.map_or(shown, |cap| shown.min(cap))
    }

    fn availability(&self, sku: &Sku, location: &LocationId) -> LocationAvailability {
        let position =
            self.positions.get(&(sku.clone(), location.clone())).cloned().unwrap_or_default();
        let safety_stock = Self::safety_stock(location);
        let claimed = position.reserved + position.committed + position.unavailable + safety_stock;
        LocationAvailability {
            location: location.clone(),
            on_hand: position.on_hand(),
            reserved: position.reserved,
            committed: position.committed,
            unavailable: position.unavailable,
            safety_stock,
            incoming: position.incoming_total(),
            incoming_batches: position.incoming.iter().map(|(at, units)| (*units, *at)).collect(),
            atp: (position.on_hand() - claimed).max(0),
            shortfall: (claimed - position.on_hand()).max(0),
        }
    }

    /// Time passes: holds past their TTL expire, ended reservations and
    /// applied events past the retention are forgotten.
    pub fn advance(&mut self, now: i64) {
        self.clock_ms = self.clock_ms.max(now);
        let expired: Vec<ReservationId> = self
            .reservations
            .values()
            .filter(|r| r.state == ReservationState::Held && r.expires_at_ms <= self.clock_ms)
            .map(|r| r.request.id.clone())
            .collect();
        for id in expired {
            self.free_held(&id);
            self.end(&id, ReservationState::Expired);
        }
        let (clock_ms, retention_ms) = (self.clock_ms, self.retention_ms);
        self.reservations
            .retain(|_, r| !(r.state.is_final() && r.ended_at_ms + retention_ms <= clock_ms));
        self.events.retain(|_, memo| memo.applied_at_ms + retention_ms > clock_ms);
    }

    fn end(&mut self, id: &ReservationId, state: ReservationState) {
        let clock_ms = self.clock_ms;
        let record = self.reservations.get_mut(id).expect("ending a known reservation");
        assert!(!record.state.is_final(), "model bug: {id} ended twice");
        record.state = state;
        record.ended_at_ms = clock_ms;
    }

    fn free_held(&mut self, id: &ReservationId) {
        let lines = self.reservations[id].request.lines.clone();
        for line in lines {
            self.position_mut(&line.sku, &line.location).reserved -= line.quantity;
        }
    }

    fn well_formed(&self, request: &ReserveRequest) -> bool {
        let Some(channel) = self.catalog.channels.get(&request.channel) else { return false };
        !request.lines.is_empty()
            && request.lines.len() <= MAX_LINES_PER_RESERVATION
            && request.lines.iter().enumerate().all(|(index, line)| {
                channel.locations.contains(&line.location)
                    && !request.lines[..index]
                        .iter()
                        .any(|other| other.sku == line.sku && other.location == line.location)
            })
    }

    fn reserve(&mut self, request: &ReserveRequest) -> Outcome {
        if !self.well_formed(request) {
            return Err(Refusal::InvalidArgument);
        }
        if let Some(existing) = self.reservations.get(&request.id) {
            if existing.request != *request {
                return Err(Refusal::AlreadyExists);
            }
            return Ok(Answer::View(existing.reserve_answer.clone().expect("held once")));
        }
        if request.lines.iter().any(|line| line.quantity > self.atp(&line.sku, &line.location)) {
            return Err(Refusal::InsufficientStock);
        }
        let channel = &self.catalog.channels[&request.channel];
        let mut per_sku: BTreeMap<&Sku, i64> = BTreeMap::new();
        for line in &request.lines {
            *per_sku.entry(&line.sku).or_default() += line.quantity;
        }
        if per_sku.iter().any(|(sku, units)| *units > self.channel_atp(channel, sku)) {
            return Err(Refusal::InsufficientStock);
        }
        for line in &request.lines {
            self.position_mut(&line.sku, &line.location).reserved += line.quantity;
        }
        let mut record = ModelReservation {
            request: request.clone(),
            state: ReservationState::Held,
            created_at_ms: self.clock_ms,
            expires_at_ms: self.clock_ms + request.ttl_ms,
            ended_at_ms: 0,
            committed: None,
            shipped: vec![0; request.lines.len()],
            reserve_answer: None,
            commit_answer: None,
            end_answer: None,
        };
        let answer = record.view();
        record.reserve_answer = Some(answer.clone());
        self.reservations.insert(request.id.clone(), record);
        Ok(Answer::View(answer))
    }

    /// Per-line quantities of a Commit, or None when its lines are invalid.
    fn commit_quantities(request: &ReserveRequest, lines: &[CommitLine]) -> Option<Vec<i64>> {
        let mut quantities: Vec<i64> = request.lines.iter().map(|line| line.quantity).collect();
        for (index, commit) in lines.iter().enumerate() {
            let held = request
                .lines
                .iter()
                .position(|line| line.sku == commit.sku && line.location == commit.location)?;
            let named_twice = lines[..index]
                .iter()
                .any(|other| other.sku == commit.sku && other.location == commit.location);
            if named_twice || !(0..=request.lines[held].quantity).contains(&commit.quantity) {
                return None;
            }
            quantities[held] = commit.quantity;
        }
        if quantities.iter().all(|quantity| *quantity == 0) {
            return None;
        }
        Some(quantities)
    }

    fn commit(&mut self, id: &ReservationId, lines: &[CommitLine]) -> Outcome {
        let Some(record) = self.reservations.get(id) else { return Err(Refusal::NotFound) };
        let Some(quantities) = Self::commit_quantities(&record.request, lines) else {
            return Err(Refusal::InvalidArgument);
        };
        match record.state {
            ReservationState::Held => {}
            ReservationState::Committed
            | ReservationState::Cancelled
            | ReservationState::Fulfilled => {
                if record.committed.as_ref() != Some(&quantities) {
                    return Err(Refusal::AlreadyExists);
                }
                return Ok(Answer::View(record.commit_answer.clone().expect("committed once")));
            }
            state => return Err(Refusal::WrongState(state)),
        }
        let request_lines = record.request.lines.clone();
        for (line, committed) in request_lines.iter().zip(&quantities) {
            let position = self.position_mut(&line.sku, &line.location);
            position.reserved -= line.quantity;
            position.committed += committed;
        }
        let record = self.reservations.get_mut(id).expect("checked above");
        record.state = ReservationState::Committed;
        record.committed = Some(quantities);
        let answer = record.view();
        record.commit_answer = Some(answer.clone());
        Ok(Answer::View(answer))
    }

    fn release(&mut self, id: &ReservationId) -> Outcome {
        let Some(record) = self.reservations.get(id) else { return Err(Refusal::NotFound) };
        match record.state {
            ReservationState::Held => {}
            ReservationState::Released => {
                return Ok(Answer::View(record.end_answer.clone().expect("released once")));
            }
            state => return Err(Refusal::WrongState(state)),
        }
        self.free_held(id);
        self.end(id, ReservationState::Released);
        let record = self.reservations.get_mut(id).expect("checked above");
        let answer = record.view();
        record.end_answer = Some(answer.clone());
        Ok(Answer::View(answer))
    }

    fn cancel(&mut self, id: &ReservationId) -> Outcome {
        let Some(record) = self.reservations.get(id) else { return Err(Refusal::NotFound) };
        match record.state {
            ReservationState::Committed => {}
            ReservationState::Cancelled => {
                return Ok(Answer::View(record.end_answer.clone().expect("cancelled once")));
            }
            state => return Err(Refusal::WrongState(state)),
        }
        let committed = record.committed.clone().expect("a committed reservation");
        let unshipped: Vec<(ReserveLine, i64)> = record
            .request
            .lines
            .iter()
            .zip(committed.iter().zip(&record.shipped))
            .map(|(line, (committed, shipped))| (line.clone(), committed - shipped))
            .collect();
        for (line, units) in unshipped {
            self.position_mut(&line.sku, &line.location).committed -= units;
        }
        self.end(id, ReservationState::Cancelled);
        let record = self.reservations.get_mut(id).expect("checked above");
        let answer = record.view();
        record.end_answer = Some(answer.clone());
        Ok(Answer::View(answer))
    }

    fn extend(&mut self, id: &ReservationId, ttl_ms: i64) -> Outcome {
        let clock_ms = self.clock_ms;
        let Some(record) = self.reservations.get_mut(id) else { return Err(Refusal::NotFound) };
        if record.state != ReservationState::Held {
            return Err(Refusal::WrongState(record.state));
        }
        record.expires_at_ms = clock_ms + ttl_ms;
        Ok(Answer::View(record.view()))
    }

    fn movement(&mut self, sku: &Sku, location: &LocationId, units: i64) {
        self.order += 1;
        let (order, clock_ms) = (self.order, self.clock_ms);
        self.position_mut(sku, location).movements.push((order, clock_ms, units));
    }

    fn event(&mut self, event: &StockEvent) -> Outcome {
        let memo_key = (shard_of(event.sku.as_str()), event.id.clone());
        if let Some(memo) = self.events.get(&memo_key) {
            if memo.event != *event {
                return Err(Refusal::AlreadyExists);
            }
            let position = memo.position.clone();
            return Ok(Answer::Event(EventApplied { position, duplicate: true, notice: None }));
        }
        let (sku, location) = (&event.sku, &event.location);
        let current =
            self.positions.get(&(sku.clone(), location.clone())).cloned().unwrap_or_default();
        let mut notice = None;
        match &event.kind {
            StockEventKind::Received { quantity } => self.movement(sku, location, *quantity),
            StockEventKind::Shipped { quantity, reservation: None } => {
                self.movement(sku, location, -quantity);
            }
            StockEventKind::Shipped { quantity, reservation: Some(id) } => {
                let line = self.reservations.get(id).and_then(|record| {
                    let index = record
                        .request
                        .lines
                        .iter()
                        .position(|line| &line.sku == sku && &line.location == location)?;
                    let committed = record.committed.as_ref()?[index];
                    let open = record.state == ReservationState::Committed;
                    open.then_some((index, committed - record.shipped[index]))
                });
                let (index, unshipped) = line.unwrap_or((0, 0));
                if *quantity > unshipped {
                    return Err(Refusal::FailedPrecondition);
                }
                self.movement(sku, location, -quantity);
                self.position_mut(sku, location).committed -= quantity;
                let record = self.reservations.get_mut(id).expect("checked above");
                record.shipped[index] += quantity;
                notice = Some(ShipNotice {
                    reservation: id.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                    shipped_total: record.shipped[index],
                });
                let committed = record.committed.as_ref().expect("checked above");
                if committed
                    .iter()
                    .zip(&record.shipped)
                    .all(|(committed, shipped)| shipped >= committed)
                {
                    self.end(id, ReservationState::Fulfilled);
                }
            }
            StockEventKind::Counted { on_hand, as_of_ms } => {
                let too_new = *as_of_ms > self.clock_ms + MAX_COUNT_SKEW_MS;
                let too_old = *as_of_ms < self.clock_ms - self.count_window_ms;
                if too_new || too_old {
                    return Err(Refusal::InvalidArgument);
                }
                if current.count.is_none_or(|(_, last_as_of_ms, _)| *as_of_ms >= last_as_of_ms) {
                    self.order += 1;
                    let order = self.order;
                    self.position_mut(sku, location).count = Some((order, *as_of_ms, *on_hand));
                }
            }
            StockEventKind::Adjusted { delta, .. } => self.movement(sku, location, *delta),
            StockEventKind::MarkedUnavailable { quantity, .. } => {
                self.position_mut(sku, location).unavailable += quantity;
            }
            StockEventKind::ReleasedUnavailable { quantity } => {
                if *quantity > current.unavailable {
                    return Err(Refusal::FailedPrecondition);
                }
                self.position_mut(sku, location).unavailable -= quantity;
            }
            StockEventKind::IncomingExpected { quantity, expected_at_ms } => {
                *self.position_mut(sku, location).incoming.entry(*expected_at_ms).or_default() +=
                    quantity;
            }
            StockEventKind::IncomingReceived { quantity } => {
                if *quantity > current.incoming_total() {
                    return Err(Refusal::FailedPrecondition);
                }
                let incoming = &mut self.position_mut(sku, location).incoming;
                let mut left = *quantity;
                let batches: Vec<(i64, i64)> =
                    incoming.iter().map(|(at, units)| (*at, *units)).collect();
                for (at, units) in batches {
                    if left == 0 {
                        break;
                    }
                    let taken = left.min(units);
                    left -= taken;
                    if taken == units {
                        incoming.remove(&at);
                    } else {
                        incoming.insert(at, units - taken);
                    }
                }
                self.movement(sku, location, *quantity);
            }
        }
        let position = self.availability(sku, location);
        let memo = EventMemo {
            event: event.clone(),
            applied_at_ms: self.clock_ms,
            position: position.clone(),
        };
        self.events.insert(memo_key, memo);
        Ok(Answer::Event(EventApplied { position, duplicate: false, notice }))
    }

    pub fn apply(&mut self, request: &Request) -> Outcome {
        match request {
            Request::Reserve(request) => self.reserve(request),
            Request::Commit(id, lines) => self.commit(id, lines),
            Request::Release(id) => self.release(id),
            Request::Cancel(id) => self.cancel(id),
            Request::Extend(id, ttl_ms) => self.extend(id, *ttl_ms),
            Request::Event(event) => self.event(event),
        }
    }
}
