//! Shared by the integration tests of atp-core: a fixed catalog and a
//! synchronous stand-in for the node, which owns one `ShardState` per shard and
//! routes requests and line ops between them the way `atp-shard` does.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::catalog::{Catalog, Channel, Location, LocationKind};
use atp_core::events::StockEvent;
use atp_core::hash::shard_of;
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_core::position::Position;
use atp_core::reservation::{CommitLine, ReservationView, ReserveLine, ReserveRequest};
use atp_core::shard::{Begin, EventApplied, LineOp, ShardSettings, ShardState};

/// When the tests' clocks start (ms since the epoch).
pub const START_MS: i64 = 1_700_000_000_000;

/// SKUs of the fixture: three shards, and `sku-931` shares a shard with
/// `sku-apple` so one shard also holds lines of two SKUs (checked by the tests).
pub const SKUS: [&str; 4] = ["sku-apple", "sku-banana", "sku-cherry", "sku-931"];

/// Locations of the fixture with their safety stock.
pub const LOCATIONS: [(&str, i64); 3] = [("loc-north", 1), ("loc-central", 0), ("loc-south", 2)];

/// Channel without buffer or cap, fed by north and central.
pub const WEB: &str = "web";
/// Channel with a buffer of [`MARKET_BUFFER`] and a cap of [`MARKET_CAP`], fed by central and south.
pub const MARKET: &str = "market";
/// Units the market channel withholds.
pub const MARKET_BUFFER: i64 = 2;
/// Most units the market channel is shown.
pub const MARKET_CAP: i64 = 6;

pub fn sku(value: &str) -> Sku {
    Sku::parse("sku", value).expect("valid sku")
}

pub fn location(value: &str) -> LocationId {
    LocationId::parse("location", value).expect("valid location")
}

pub fn channel(value: &str) -> ChannelId {
    ChannelId::parse("channel", value).expect("valid channel")
}

pub fn reservation(value: &str) -> ReservationId {
    ReservationId::parse("reservation", value).expect("valid reservation id")
}

pub fn event_id(value: &str) -> EventId {
    EventId::parse("event", value).expect("valid event id")
}

pub fn line(sku_id: &str, location_id: &str, quantity: i64) -> ReserveLine {
    ReserveLine { sku: sku(sku_id), location: location(location_id), quantity }
}

pub fn commit_line(sku_id: &str, location_id: &str, quantity: i64) -> CommitLine {
    CommitLine { sku: sku(sku_id), location: location(location_id), quantity }
}

pub fn reserve_request(
    id: &str,
    channel_id: &str,
    lines: Vec<ReserveLine>,
    ttl_ms: i64,
) -> ReserveRequest {
    ReserveRequest {
        id: reservation(id),
        channel: channel(channel_id),
        lines,
        ttl_ms,
        metadata: Default::default(),
    }
}

/// Three active locations and two channels sharing `loc-central`.
pub fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for (id, safety_stock) in LOCATIONS {
        let location = Location {
            id: location(id),
            kind: LocationKind::Warehouse,
            name: id.to_owned(),
            latitude: 0.0,
            longitude: 0.0,
            safety_stock,
            daily_capacity: 0,
            shipping_cost: 1.0,
            state: atp_core::catalog::Lifecycle::Active,
            fulfilment: Default::default(),
        };
        catalog.upsert_location(location).expect("valid location");
    }
    let web = Channel {
        id: channel(WEB),
        name: WEB.to_owned(),
        locations: vec![location("loc-north"), location("loc-central")],
        buffer: 0,
        cap: None,
        state: atp_core::catalog::Lifecycle::Active,
        publish: Default::default(),
    };
    let market = Channel {
        id: channel(MARKET),
        name: MARKET.to_owned(),
        locations: vec![location("loc-central"), location("loc-south")],
        buffer: MARKET_BUFFER,
        cap: Some(MARKET_CAP),
        state: atp_core::catalog::Lifecycle::Active,
        publish: Default::default(),
    };
    catalog.upsert_channel(web).expect("valid channel");
    catalog.upsert_channel(market).expect("valid channel");
    catalog
}

/// The settings every test shard uses: an unbounded ledger, other defaults.
pub fn settings() -> ShardSettings {
    ShardSettings { ledger_capacity: 0, ..Default::default() }
}

/// A synchronous node: shards created on first use, line ops delivered at once.
pub struct Node {
    pub catalog: Catalog,
    pub shards: BTreeMap<u32, ShardState>,
    /// The latest `now` seen; a shard created late starts from it, as if it had
    /// been ticked all along like every other shard.
    clock_ms: i64,
}

impl Node {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog, shards: BTreeMap::new(), clock_ms: i64::MIN }
    }

    pub fn shard_mut(&mut self, shard: u32) -> &mut ShardState {
        shard_entry(&mut self.shards, self.clock_ms, shard)
    }

    /// Ticks every shard and delivers the expiry releases.
    pub fn tick(&mut self, now: i64) {
        self.clock_ms = self.clock_ms.max(now);
        let mut effects = Vec::new();
        for state in self.shards.values_mut() {
            effects.extend(state.tick(now));
        }
        self.deliver(effects, now);
    }

    /// Applies line ops that cannot fail (everything but `Hold`).
    pub fn deliver(&mut self, ops: Vec<(u32, LineOp)>, now: i64) {
        for (shard, op) in ops {
            assert!(!matches!(op, LineOp::Hold { .. }), "holds are sent by reserve only");
            shard_entry(&mut self.shards, self.clock_ms, shard)
                .apply_line_op(&op, &self.catalog, now)
                .expect("only holds can fail");
        }
    }

    /// Reserve as the node runs it: check, home, holds on every line shard,
    /// rollback of the holds taken if any failed, finish on the home.
    pub fn reserve(
        &mut self,
        request: &ReserveRequest,
        now: i64,
    ) -> Result<ReservationView, CoreError> {
        self.clock_ms = self.clock_ms.max(now);
        request.check(&self.catalog)?;
        let home = shard_of(request.id.as_str());
        let (holds, version) = match self.shard_mut(home).begin_reserve(request, now)? {
            Begin::Replay(reply) => return Ok(reply.reservation),
            Begin::Started { holds, version } => (holds, version),
        };
        let mut failure = None;
        let mut rollback = Vec::new();
        for (shard, op) in holds {
            let state = shard_entry(&mut self.shards, self.clock_ms, shard);
            match state.apply_line_op(&op, &self.catalog, now) {
                Ok(()) => rollback.push((shard, LineOp::Abort { id: request.id.clone(), version })),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        if let Some(error) = failure {
            self.deliver(rollback, now);
            let answer = self.shard_mut(home).finish_reserve(&request.id, version, false, now);
            assert_eq!(answer, None, "a failed reserve has no answer");
            return Err(error);
        }
        let answer = self.shard_mut(home).finish_reserve(&request.id, version, true, now);
        Ok(answer.expect("a pending reservation whose lines are held has an answer"))
    }

    pub fn commit(
        &mut self,
        id: &ReservationId,
        lines: &[CommitLine],
        now: i64,
    ) -> Result<ReservationView, CoreError> {
        self.home_then_lines(id, now, |state| state.commit(id, lines, now))
    }

    pub fn release(&mut self, id: &ReservationId, now: i64) -> Result<ReservationView, CoreError> {
        self.home_then_lines(id, now, |state| state.release(id, now))
    }

    pub fn cancel(&mut self, id: &ReservationId, now: i64) -> Result<ReservationView, CoreError> {
        self.home_then_lines(id, now, |state| state.cancel(id, now))
    }

    pub fn extend(
        &mut self,
        id: &ReservationId,
        ttl_ms: i64,
        now: i64,
    ) -> Result<ReservationView, CoreError> {
        self.home_then_lines(id, now, |state| state.extend(id, ttl_ms, now))
    }

    fn home_then_lines(
        &mut self,
        id: &ReservationId,
        now: i64,
        work: impl FnOnce(&mut ShardState) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError>,
    ) -> Result<ReservationView, CoreError> {
        self.clock_ms = self.clock_ms.max(now);
        let (view, ops) = work(self.shard_mut(shard_of(id.as_str())))?;
        self.deliver(ops, now);
        Ok(view)
    }

    pub fn get(&mut self, id: &ReservationId) -> Result<ReservationView, CoreError> {
        self.shard_mut(shard_of(id.as_str())).get(id)
    }

    /// Applies an event on its SKU's shard and tells the reservation's home about a shipment.
    pub fn apply_event(&mut self, event: &StockEvent, now: i64) -> Result<EventApplied, CoreError> {
        self.clock_ms = self.clock_ms.max(now);
        let state = shard_entry(&mut self.shards, self.clock_ms, shard_of(event.sku.as_str()));
        let applied = state.apply_event(event, &self.catalog, now)?;
        if let Some(notice) = &applied.notice {
            self.shard_mut(shard_of(notice.reservation.as_str())).note_shipped(notice, now);
        }
        Ok(applied)
    }

    /// Every position of every shard.
    pub fn positions(&self) -> BTreeMap<(Sku, LocationId), Position> {
        let mut positions = BTreeMap::new();
        for state in self.shards.values() {
            for (sku, location, position) in state.all_positions() {
                positions.insert((sku, location), position);
            }
        }
        positions
    }

    /// One position (empty if never touched).
    pub fn position(&self, sku_id: &str, location_id: &str) -> Position {
        self.shards
            .get(&shard_of(sku_id))
            .and_then(|state| state.positions_of(&sku(sku_id)).remove(&location(location_id)))
            .unwrap_or_default()
    }
}

/// The shard, created on first use and brought to the node's clock.
fn shard_entry(
    shards: &mut BTreeMap<u32, ShardState>,
    clock_ms: i64,
    shard: u32,
) -> &mut ShardState {
    shards.entry(shard).or_insert_with(|| {
        let mut state = ShardState::new(shard, 1, settings());
        let effects = state.tick(clock_ms);
        assert!(effects.is_empty(), "a new shard has nothing to expire");
        state
    })
}
