//! The state machine of one virtual shard: positions of its SKUs, line holds,
//! the reservation records whose home it is, stock event ids, and the ledger.
//!
//! Pure and synchronous: every method takes `now` (ms since the epoch) and the
//! configuration snapshot it needs. Time never goes backwards inside a shard:
//! an earlier `now` is treated as the latest one seen (clock jumps are safe).
//!
//! A reservation's record lives on its home shard (`shard_of(id)`); its lines
//! are held on the SKUs' shards. Methods that change a record return the
//! [`LineOp`]s the lines' shards must apply; the caller delivers them.

mod budget;
mod home;
mod lines;
mod persist;
mod recover;
mod stock;
mod tracked;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::catalog::Catalog;
use crate::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use crate::ledger::{LedgerEntry, LedgerKind};
use crate::location_map::LocationMap;
use crate::position::{Deltas, Position};
use crate::publish::DemandRate;
use tracked::Tracked;

pub use budget::{
    DEFAULT_MAX_ENDED_RESERVATIONS, DEFAULT_MAX_EVENT_MEMOS, MIN_AGE_BEFORE_EARLY_FORGET_MS,
};
pub use home::{Begin, ChangeBegin, ChangeDecided, ScanPage};
pub use lines::{HeldLineView, HoldView, Incarnation, LineOp, LineQuantity};
pub use persist::{Changes, RestoreError};
pub use recover::{
    RecordFacts, Recovered, RecoveryReport, Resolution, ShardFacts, needed, recover, recover_owned,
    resolve,
};
pub use stock::{EventApplied, ShipNotice};

/// Tunables of a shard, with the defaults of a fresh node.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// How long an ended reservation's id (and a stock event's id) is remembered.
    pub retention_ms: i64,
    /// Ledger entries kept in memory per shard (oldest dropped first); 0 = unbounded.
    /// The durable ledger (the store) keeps them all for its retention.
    pub ledger_capacity: usize,
    /// How far back a count's `as_of` may reach (movements are kept this long).
    pub count_window_ms: i64,
    /// Movements kept per position for counts (oldest dropped first).
    pub movements_per_position: usize,
    /// Most ended (RELEASED, EXPIRED, CANCELLED, FULFILLED) reservation records
    /// this shard keeps for their retention; 0 = no limit. Past it, the oldest
    /// (by ended time, then id) is forgotten early, exactly as retention would
    /// forget it, once it ended [`MIN_AGE_BEFORE_EARLY_FORGET_MS`] ago. Live (PENDING, HELD, COMMITTED) records never count and are
    /// never forgotten: stock bounds them. After an early forget the id is
    /// unknown, so a retry is treated as new: Reserve holds stock again (a
    /// second promise if the first was released or expired), Commit, Release,
    /// Cancel, Extend and GetReservation answer NOT_FOUND. See
    /// [`DEFAULT_MAX_ENDED_RESERVATIONS`] for the memory estimate.
    pub max_ended_reservations: usize,
    /// Most stock-event memos this shard keeps for their retention; 0 = no
    /// limit. Past it, the oldest (by applied time, then id) is forgotten
    /// early; an event repeated after that is applied again (not DUPLICATE).
    pub max_event_memos: usize,
    /// How long a Reserve may stay PENDING on its home. Past it the home
    /// abandons it: forgets the PENDING record and sends `Abort` (of that
    /// version) to every line shard, and a line shard refuses a `Hold` that
    /// arrives later. A Reserve normally finishes in milliseconds; this only
    /// keeps a lost one from pinning its id and stock.
    pub pending_timeout_ms: i64,
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            retention_ms: 24 * 60 * 60 * 1000,
            ledger_capacity: 64,
            count_window_ms: 24 * 60 * 60 * 1000,
            movements_per_position: 10_000,
            max_ended_reservations: DEFAULT_MAX_ENDED_RESERVATIONS,
            max_event_memos: DEFAULT_MAX_EVENT_MEMOS,
            pending_timeout_ms: DEFAULT_PENDING_TIMEOUT_MS,
        }
    }
}

/// Default of [`ShardSettings::pending_timeout_ms`].
pub const DEFAULT_PENDING_TIMEOUT_MS: i64 = 30_000;

/// How far in the future a count's `as_of` may be (clock skew allowance).
pub const MAX_COUNT_SKEW_MS: i64 = 5 * 60 * 1000;

/// Stale entries the deadline heap may hold beyond one per live entry before
/// it is rebuilt from the records. Entries go stale when an Extend shortens
/// a hold or a record or memo is forgotten early; without a rebuild they
/// would pile up until their time came (up to a retention later).
pub const STALE_DEADLINES_ALLOWED: usize = 1024;

/// One position and what counts need to know about its past.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct PositionState {
    pub(crate) position: Position,
    /// (applied at ms, on_hand delta) of non-count movements, oldest first.
    pub(crate) movements: VecDeque<(i64, i64)>,
    /// Movements before this time were dropped; counts before it are refused.
    pub(crate) movements_complete_since: i64,
    /// `as_of` of the latest count applied.
    pub(crate) last_count_as_of: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Deadline {
    Expire(ReservationId),
    /// A PENDING Reserve of this version has not finished in time.
    Abandon(ReservationId, u64),
    ForgetReservation(ReservationId),
    ForgetEvent(EventId),
    /// Every demand rate advances to now (decays while the SKU shows
    /// units), so the published figure moves, and is written and
    /// streamed, without new holds.
    DecayDemand,
}

/// Counters shown by the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// SKUs with at least one position.
    pub sku_count: u64,
    /// Positions.
    pub position_count: u64,
    /// Line holds of HELD reservations on this shard.
    pub open_holds: u64,
    /// Reservation records whose home is this shard.
    pub reservation_count: u64,
    /// State-changing operations applied so far.
    pub last_applied_sequence: u64,
    /// Ended reservation records forgotten before their retention because the
    /// shard held `max_ended_reservations` of them (since the process started).
    pub evicted_ended_reservations: u64,
    /// Stock-event memos forgotten before their retention because the shard
    /// held `max_event_memos` of them (since the process started).
    pub evicted_event_memos: u64,
}

/// The version of a SKU's figures: the epoch and batch sequence of the
/// shard batch that last changed them (or that republished them, when a
/// node started serving the shard). Ordered by epoch, then sequence: a
/// shard's epoch grows with every new owner, so a version never goes
/// backwards, also across moves and `--accept-loss` reassignments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The shard's epoch.
    pub epoch: u64,
    /// The batch sequence within the epoch's log of the shard.
    pub sequence: u64,
}

/// What readers see of one SKU: its positions by location and its
/// observed demand per channel (channels in id order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SkuView {
    /// Positions by location.
    pub positions: LocationMap<Position>,
    /// Demand rates per channel.
    pub demand: Vec<(ChannelId, DemandRate)>,
    /// The version of these figures (set by the node when it publishes
    /// them; zero in a view the state makes).
    pub version: Version,
    /// When the node published these figures (its clock, ms since the
    /// Unix epoch; 0 in a view the state makes).
    pub changed_at_ms: i64,
}

/// State of one virtual shard.
#[derive(Debug)]
pub struct ShardState {
    shard: u32,
    epoch: u64,
    settings: ShardSettings,
    positions: Tracked<Sku, LocationMap<PositionState>>,
    /// Observed demand per SKU and channel (issue 13, safe to publish),
    /// channels in id order; written with the positions' batch.
    demand: Tracked<Sku, Vec<(ChannelId, DemandRate)>>,
    holds: Tracked<ReservationId, lines::LineHolds>,
    records: Tracked<ReservationId, home::Record>,
    events: Tracked<EventId, stock::EventMemo>,
    ledger: VecDeque<LedgerEntry>,
    /// Ledger entries not yet handed out by [`ShardState::drain_changes`].
    ledger_outbox: Vec<LedgerEntry>,
    ledger_sequence: u64,
    applied_sequence: u64,
    clock_ms: i64,
    deadlines: BinaryHeap<Reverse<(i64, Deadline)>>,
    /// Ended records and event memos by age, for the memory budget.
    retained: budget::Retained,
    /// Line ops of a tick inside a request that then failed; the next tick returns them.
    undelivered: Vec<(u32, LineOp)>,
    /// When the next [`Deadline::DecayDemand`] fires (None: no demand).
    decay_at: Option<i64>,
    /// The meta record as last handed out by [`ShardState::drain_changes`].
    drained_meta: persist::Meta,
    /// Reservations homed here that recovery could not settle without other
    /// nodes' answers: a Reserve of such an id is refused until
    /// [`ShardState::adopt`] or [`ShardState::settled_doubt`]. In memory only.
    in_doubt: std::collections::BTreeSet<ReservationId>,
    /// Reserves homed here that this process refused or abandoned: their
    /// versions are never adopted (`docs/PROTOCOL.md`, "A home never adopts
    /// a version it dropped"). In memory only.
    dropped: home::Dropped,
    /// The meta record must be written by the next batch (after a restore
    /// moved the operation sequence past the dead process's).
    meta_unwritten: bool,
}

impl ShardState {
    /// An empty shard.
    pub fn new(shard: u32, epoch: u64, settings: ShardSettings) -> Self {
        Self {
            shard,
            epoch,
            settings,
            positions: Tracked::default(),
            demand: Tracked::default(),
            holds: Tracked::default(),
            records: Tracked::default(),
            events: Tracked::default(),
            ledger: VecDeque::new(),
            ledger_outbox: Vec::new(),
            ledger_sequence: 0,
            applied_sequence: 0,
            clock_ms: i64::MIN,
            deadlines: BinaryHeap::new(),
            retained: budget::Retained::default(),
            undelivered: Vec::new(),
            decay_at: None,
            in_doubt: std::collections::BTreeSet::new(),
            dropped: home::Dropped::default(),
            meta_unwritten: false,
            drained_meta: persist::Meta::default(),
        }
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The ownership epoch (1 on a single node).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Admin counters.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            sku_count: self.positions.len() as u64,
            position_count: self.positions.values().map(|m| m.len() as u64).sum(),
            open_holds: self.holds.values().filter(|h| h.is_held()).count() as u64,
            reservation_count: self.records.len() as u64,
            last_applied_sequence: self.applied_sequence,
            evicted_ended_reservations: self.retained.evicted_ended_reservations,
            evicted_event_memos: self.retained.evicted_event_memos,
        }
    }

    /// The positions of `sku` (empty if none).
    /// What readers see of `sku`: its positions and its observed demand.
    pub fn view_of(&self, sku: &Sku) -> SkuView {
        SkuView {
            positions: self.positions_of(sku),
            demand: self.demand.get(sku).cloned().unwrap_or_default(),
            version: Version::default(),
            changed_at_ms: 0,
        }
    }

    /// The observed demand of `sku` per channel.
    pub fn demand_of(&self, sku: &Sku) -> &[(ChannelId, DemandRate)] {
        self.demand.get(sku).map_or(&[], Vec::as_slice)
    }

    /// Brings `sku`'s demand rates to `now` before its positions change:
    /// the time since their last event counts as exposure when the SKU had
    /// units free at some location (on hand − reserved − committed −
    /// unavailable > 0; safety stock and channel rules are not applied
    /// here), and not while it had none (sold out: no demand was seen).
    fn expose(&mut self, sku: &Sku, now: i64) {
        if !self.demand.contains_key(sku) {
            return;
        }
        let exposed = self
            .positions
            .get(sku)
            .is_some_and(|by_location| by_location.values().any(|state| state.position.atp(0) > 0));
        if let Some(rates) = self.demand.get_mut(sku) {
            for (_, rate) in rates.iter_mut() {
                rate.advance(now, exposed, crate::publish::DEFAULT_RATE_TIME_CONSTANT_MS);
            }
        }
    }

    /// [`Deadline::DecayDemand`] due at `at`: advances every SKU's demand
    /// rates to `now` (each SKU is written and published again) and
    /// schedules the next one.
    fn decay_demand(&mut self, at: i64, now: i64) {
        if self.decay_at != Some(at) {
            return;
        }
        self.decay_at = None;
        let skus: Vec<Sku> = self.demand.keys().cloned().collect();
        for sku in &skus {
            self.expose(sku, now);
        }
        self.schedule_decay(now);
    }

    /// Schedules the next demand decay, if any SKU has demand and none is
    /// scheduled.
    fn schedule_decay(&mut self, now: i64) {
        if self.decay_at.is_none() && !self.demand.is_empty() {
            let at = now.saturating_add(crate::publish::DEMAND_DECAY_INTERVAL_MS);
            self.decay_at = Some(at);
            self.schedule(at, Deadline::DecayDemand);
        }
    }

    /// Counts a hold of `units` of `sku` on `channel` at `now` in its
    /// demand rate (the SKU was shown as available: a shopper held it).
    pub(crate) fn record_demand(&mut self, sku: &Sku, channel: &ChannelId, units: i64, now: i64) {
        let rates = self.demand.get_or_default(sku);
        let at = match rates.binary_search_by(|(id, _)| id.cmp(channel)) {
            Ok(at) => at,
            Err(at) => {
                // Observed from now on: no exposure before the first hold.
                rates
                    .insert(at, (channel.clone(), DemandRate { at_ms: now, ..Default::default() }));
                at
            }
        };
        rates[at].1.record(units, now, true, crate::publish::DEFAULT_RATE_TIME_CONSTANT_MS);
        self.schedule_decay(now);
    }

    pub fn positions_of(&self, sku: &Sku) -> LocationMap<Position> {
        self.positions
            .get(sku)
            .map(|by_location| by_location.map(|state| state.position.clone()))
            .unwrap_or_default()
    }

    /// The sequence of the shard's latest ledger entry (0 before the first).
    pub fn ledger_sequence(&self) -> u64 {
        self.ledger_sequence
    }

    /// The SKUs with positions on this shard.
    pub fn skus(&self) -> impl Iterator<Item = &Sku> {
        self.positions.keys()
    }

    /// Every position of the shard, for checks and tests.
    pub fn all_positions(&self) -> Vec<(Sku, LocationId, Position)> {
        let mut all = Vec::new();
        for (sku, by_location) in self.positions.iter() {
            for (location, state) in by_location.iter() {
                all.push((sku.clone(), location.clone(), state.position.clone()));
            }
        }
        all
    }

    /// Ledger entries of `sku` (optionally one location), oldest first, at most `limit` newest.
    pub fn ledger(
        &self,
        sku: &Sku,
        location: Option<&LocationId>,
        limit: usize,
    ) -> Vec<LedgerEntry> {
        let mut entries: Vec<LedgerEntry> = self
            .ledger
            .iter()
            .rev()
            .filter(|e| &e.sku == sku && location.is_none_or(|l| &e.location == l))
            .take(limit)
            .cloned()
            .collect();
        entries.reverse();
        entries
    }

    /// The whole in-memory ledger, oldest first.
    pub fn ledger_entries(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.ledger.iter()
    }

    /// When the shard next needs [`ShardState::tick`], if ever.
    pub fn next_deadline(&self) -> Option<i64> {
        if !self.undelivered.is_empty() {
            return Some(self.clock_ms);
        }
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Entries in the deadline heap, live and stale (for tests and diagnostics:
    /// it stays below twice the records and memos plus [`STALE_DEADLINES_ALLOWED`]).
    pub fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    /// Advances the shard's clock: expires holds whose TTL passed and forgets
    /// ids past their retention. Returns the line releases to deliver.
    pub fn tick(&mut self, now: i64) -> Vec<(u32, LineOp)> {
        let now = self.advance(now);
        let mut effects = std::mem::take(&mut self.undelivered);
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, deadline))) = self.deadlines.pop() else { break };
            match deadline {
                Deadline::Expire(id) => {
                    effects.extend(self.expire(&id, now));
                    self.rearm_expiry(&id, now);
                }
                Deadline::Abandon(id, version) => effects.extend(self.abandon(&id, version)),
                Deadline::ForgetReservation(id) => self.forget_reservation(&id, now),
                Deadline::ForgetEvent(id) => self.forget_event(&id, now),
                Deadline::DecayDemand => self.decay_demand(at, now),
            }
        }
        effects
    }

    fn advance(&mut self, now: i64) -> i64 {
        self.clock_ms = self.clock_ms.max(now);
        self.clock_ms
    }

    /// Every state change that needs a deadline calls this after changing the
    /// state, so a rebuild here sees the deadline being scheduled.
    fn schedule(&mut self, at: i64, deadline: Deadline) {
        self.deadlines.push(Reverse((at, deadline)));
        let live = self.records.len() + self.events.len();
        if self.deadlines.len() > 2 * live + STALE_DEADLINES_ALLOWED {
            // At least `live + STALE_DEADLINES_ALLOWED` stale entries were
            // pushed since the last rebuild, so rebuilds cost O(1) per push.
            self.deadlines = BinaryHeap::from(
                self.rebuild_deadlines().into_iter().map(Reverse).collect::<Vec<_>>(),
            );
        }
    }

    /// An Extend that moves a hold's expiry later schedules nothing (the
    /// earlier entry is still there); when that entry fires and the hold is
    /// still HELD with a later expiry, it is scheduled again here. So
    /// repeated Extends keep one entry per hold, not one per Extend.
    fn rearm_expiry(&mut self, id: &ReservationId, now: i64) {
        let later = self
            .records
            .get(id)
            .filter(|record| record.state() == crate::reservation::ReservationState::Held)
            .and_then(|record| record.deadline(self.settings.retention_ms))
            .filter(|at| *at > now);
        if let Some(at) = later {
            self.schedule(at, Deadline::Expire(id.clone()));
        }
    }

    fn position_mut(&mut self, sku: &Sku, location: &LocationId) -> &mut PositionState {
        self.positions.get_or_default(sku).get_or_default(location)
    }

    fn position(&self, sku: &Sku, location: &LocationId) -> Position {
        self.positions
            .get(sku)
            .and_then(|m| m.get(location))
            .map(|state| state.position.clone())
            .unwrap_or_default()
    }

    /// Applies `deltas` to a position and records the ledger entry.
    /// `movement` marks on_hand changes that later counts must add back.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        sku: &Sku,
        location: &LocationId,
        cause: &std::sync::Arc<str>,
        kind: LedgerKind,
        deltas: Deltas,
        movement: bool,
        now: i64,
    ) {
        if deltas.is_zero() {
            return;
        }
        self.expose(sku, now);
        let movements_per_position = self.settings.movements_per_position;
        let count_window_ms = self.settings.count_window_ms;
        let state = self.position_mut(sku, location);
        let position = &mut state.position;
        position.on_hand += deltas.on_hand;
        position.reserved += deltas.reserved;
        position.committed += deltas.committed;
        position.unavailable += deltas.unavailable;
        assert!(position.reserved >= 0, "reserved went negative at {sku}/{location}");
        assert!(position.committed >= 0, "committed went negative at {sku}/{location}");
        assert!(position.unavailable >= 0, "unavailable went negative at {sku}/{location}");
        if movement && deltas.on_hand != 0 {
            state.movements.push_back((now, deltas.on_hand));
        }
        while state.movements.front().is_some_and(|(at, _)| *at < now - count_window_ms)
            || state.movements.len() > movements_per_position
        {
            if let Some((at, _)) = state.movements.pop_front() {
                state.movements_complete_since = state.movements_complete_since.max(at);
            }
        }
        let position = state.position.clone();
        self.ledger_sequence += 1;
        let entry = LedgerEntry {
            sequence: self.ledger_sequence,
            at_ms: now,
            sku: sku.clone(),
            location: location.clone(),
            cause: std::sync::Arc::clone(cause),
            kind,
            deltas,
            on_hand: position.on_hand,
            reserved: position.reserved,
            committed: position.committed,
            unavailable: position.unavailable,
            incoming: position.incoming_total(),
        };
        self.ledger_outbox.push(entry.clone());
        self.ledger.push_back(entry);
        if self.settings.ledger_capacity > 0 && self.ledger.len() > self.settings.ledger_capacity {
            self.ledger.pop_front();
        }
    }

    fn safety(&self, catalog: &Catalog, location: &LocationId) -> i64 {
        catalog.safety_stock(location)
    }
}
