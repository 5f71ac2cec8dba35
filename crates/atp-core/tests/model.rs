//! Property tests of the core against a reference model.
//!
//! Random sequences of every request (Reserve, Commit, Release, Cancel, Extend)
//! and every stock event, with retries (an earlier request replayed verbatim),
//! reused ids (the same id with another payload) and clock jumps (now going
//! backwards, or forward past TTLs and the id retention), are run both through
//! the core — the synchronous node of `common`, one `ShardState` per shard —
//! and through `Model`, a few flat maps that know nothing of shards, holds or
//! deadline heaps. After every step the answers, positions, reservations and
//! ledgers must agree, and the rules of DESIGN.md §2 must hold.
//!
//! `ATP_PROPTEST_CASES` sets the number of cases (default 10 000).

#[path = "model/checks.rs"]
mod checks;
mod common;
#[path = "model/reference.rs"]
mod reference;
#[path = "model/resolve.rs"]
mod resolve;
#[path = "model/strategy.rs"]
mod strategy;

use std::collections::{BTreeMap, BTreeSet};

use atp_core::CoreError;
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, MAX_TTL_MS, ReservationId, Sku};
use atp_core::position::Position;
use atp_core::reservation::{CommitLine, ReservationState, ReservationView, ReserveRequest};
use atp_core::shard::{EventApplied, ShardState, recover};
use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestCaseError};

use checks::{Checker, check_full_ledger, check_promise};
use common::{LOCATIONS, Node, SKUS, START_MS, catalog, event_id, location, sku};
use reference::Model;
use resolve::{History, next_wall, resolve};
use strategy::{Op, Step, TimeMove, retention_ms, step};

/// The key of a shard's meta record (see `atp_core::shard::persist`).
const META_KEY: [u8; 1] = [b'm'];

/// A (sku, location) position.
type Key = (Sku, LocationId);

// ---------------------------------------------------------------------------
// Requests, answers and refusals as both sides see them.

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Reserve(ReserveRequest),
    Commit(ReservationId, Vec<CommitLine>),
    Release(ReservationId),
    Cancel(ReservationId),
    Extend(ReservationId, i64),
    Event(StockEvent),
}

impl Request {
    fn is_promise(&self) -> bool {
        !matches!(self, Request::Event(_))
    }

    /// Whether the request is one that ticks its home shard first.
    fn ticks_home(&self) -> bool {
        matches!(
            self,
            Request::Commit(..) | Request::Release(_) | Request::Cancel(_) | Request::Extend(..)
        )
    }

    /// The reservation a request names, if any.
    pub fn reservation(&self) -> Option<&ReservationId> {
        match self {
            Request::Reserve(reserve) => Some(&reserve.id),
            Request::Commit(id, _)
            | Request::Release(id)
            | Request::Cancel(id)
            | Request::Extend(id, _) => Some(id),
            Request::Event(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    View(ReservationView),
    Event(EventApplied),
}

/// A refusal, by kind (messages are not compared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidArgument,
    InsufficientStock,
    WrongState(ReservationState),
    FailedPrecondition,
    AlreadyExists,
    NotFound,
    InProgress,
}

pub fn refusal(error: &CoreError) -> Refusal {
    match error {
        CoreError::InvalidArgument(_) => Refusal::InvalidArgument,
        CoreError::InsufficientStock { .. } => Refusal::InsufficientStock,
        CoreError::WrongState { state, .. } => Refusal::WrongState(*state),
        CoreError::FailedPrecondition(_) | CoreError::NotActive { .. } => {
            Refusal::FailedPrecondition
        }
        CoreError::AlreadyExists(_) => Refusal::AlreadyExists,
        CoreError::NotFound(_) => Refusal::NotFound,
        CoreError::InProgress(_) => Refusal::InProgress,
    }
}

pub type Outcome = Result<Answer, Refusal>;

fn execute(node: &mut Node, request: &Request, now: i64) -> Result<Answer, CoreError> {
    match request {
        Request::Reserve(request) => node.reserve(request, now).map(Answer::View),
        Request::Commit(id, lines) => node.commit(id, lines, now).map(Answer::View),
        Request::Release(id) => node.release(id, now).map(Answer::View),
        Request::Cancel(id) => node.cancel(id, now).map(Answer::View),
        Request::Extend(id, ttl_ms) => node.extend(id, *ttl_ms, now).map(Answer::View),
        Request::Event(event) => node.apply_event(event, now).map(Answer::Event),
    }
}

// ---------------------------------------------------------------------------
// The run.

struct Run {
    node: Node,
    model: Model,
    history: History,
    checker: Checker,
    /// The wall clock handed to the core; it may run backwards.
    wall_ms: i64,
    /// Every position after the last step.
    positions: BTreeMap<Key, Position>,
    /// Per shard, the records its drained changes wrote.
    stores: BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Run {
    fn new() -> Self {
        Self {
            node: Node::new(catalog()),
            model: Model::new(catalog()),
            history: History::default(),
            checker: Checker::default(),
            wall_ms: START_MS,
            positions: BTreeMap::new(),
            stores: BTreeMap::new(),
        }
    }

    /// Receives `units` at each position (in SKU, then location order).
    fn seed(&mut self, units: &[i64]) -> Result<(), TestCaseError> {
        self.model.advance(self.wall_ms);
        self.node.tick(self.wall_ms);
        let keys =
            SKUS.iter().flat_map(|sku| LOCATIONS.iter().map(move |(location, _)| (sku, location)));
        for (index, ((sku_id, location_id), units)) in keys.zip(units).enumerate() {
            if *units == 0 {
                continue;
            }
            let event = StockEvent {
                id: event_id(&format!("seed-{index}")),
                sku: sku(sku_id),
                location: location(location_id),
                kind: StockEventKind::Received { quantity: *units },
            };
            let before = std::mem::take(&mut self.positions);
            self.positions = self.request(&Request::Event(event), self.wall_ms, &before)?;
        }
        self.checker.check(&mut self.node, &self.model, &self.positions, None)
    }

    fn step(&mut self, index: usize, step: &Step) -> Result<(), TestCaseError> {
        let (wall_ms, retry) = next_wall(&step.time, self.wall_ms, &self.model);
        self.wall_ms = wall_ms;
        let now = self.wall_ms;

        self.model.advance(now);
        let request = retry.or_else(|| resolve(&step.op, index, &self.history, &self.model));

        // Time passes first (expiry is a promise operation too), unless the
        // step ticks late: then the request's home shard ticks inside it and
        // the other shards after it.
        let late_tick = step.late_tick && request.as_ref().is_some_and(Request::ticks_home);
        let mut positions = std::mem::take(&mut self.positions);
        if !late_tick {
            positions = self.tick(now, &positions)?;
        }
        if let Some(request) = &request {
            positions = self.request(request, now, &positions)?;
        }
        if late_tick {
            positions = self.tick(now, &positions)?;
        }
        let named = request.as_ref().and_then(Request::reservation);
        self.checker.check(&mut self.node, &self.model, &positions, named)?;
        self.positions = positions;
        self.persist()
    }

    /// Hands every shard's changes to a stand-in store: what the store holds
    /// must be exactly the shard's state (no change left untracked).
    fn persist(&mut self) -> Result<(), TestCaseError> {
        for (shard, state) in &mut self.node.shards {
            let store = self.stores.entry(*shard).or_default();
            for (key, value) in state.drain_changes().records {
                match value {
                    Some(value) => store.insert(key, value),
                    None => store.remove(&key),
                };
            }
            // The meta record (sequences, clock) rides along with real changes only.
            let mut dump = state.dump();
            dump.remove(&META_KEY[..]);
            let mut stored = store.clone();
            stored.remove(&META_KEY[..]);
            let differing: Vec<String> = stored
                .keys()
                .chain(dump.keys())
                .filter(|key| stored.get(*key) != dump.get(*key))
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .collect();
            prop_assert!(differing.is_empty(), "shard {} stored differs: {:?}", shard, differing);
        }
        Ok(())
    }

    /// Every shard restored from the store and recovered equals the live one.
    fn restore(&self) -> Result<(), TestCaseError> {
        let mut restored = BTreeMap::new();
        for (shard, store) in &self.stores {
            let records = store.iter().map(|(k, v)| (k.clone(), v.clone()));
            let state = ShardState::restore(*shard, 1, common::settings(), records)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            restored.insert(*shard, state);
        }
        let now = self.model.clock_ms;
        recover(&mut restored, &catalog(), now);
        for (shard, state) in &self.node.shards {
            let restored = restored.get(shard);
            let mut again = restored.map(ShardState::dump).unwrap_or_default();
            let mut live = state.dump();
            again.remove(&META_KEY[..]);
            live.remove(&META_KEY[..]);
            prop_assert!(again == live, "shard {} differs after restore", shard);
            let sequence = restored.map_or(0, ShardState::ledger_sequence);
            prop_assert_eq!(sequence, state.ledger_sequence(), "ledger sequence of {}", shard);
        }
        Ok(())
    }

    /// Ticks every shard; returns the positions after.
    fn tick(
        &mut self,
        now: i64,
        before: &BTreeMap<Key, Position>,
    ) -> Result<BTreeMap<Key, Position>, TestCaseError> {
        self.node.tick(now);
        let after = self.node.positions();
        check_promise(before, &after, "expiry")?;
        Ok(after)
    }

    /// Runs one request on both sides: the same answer (or the same refusal),
    /// and a promise creates or deepens no shortfall and leaves on_hand alone.
    /// Returns the positions after it.
    fn request(
        &mut self,
        request: &Request,
        now: i64,
        before: &BTreeMap<Key, Position>,
    ) -> Result<BTreeMap<Key, Position>, TestCaseError> {
        self.history.record(request);
        let expected = self.model.apply(request);
        let answer = execute(&mut self.node, request, now);
        match (&answer, &expected) {
            (Ok(answer), Ok(expected)) => prop_assert_eq!(answer, expected, "{:?}", request),
            (Err(error), Err(expected)) => {
                prop_assert_eq!(refusal(error), *expected, "{:?}: {}", request, error);
            }
            _ => prop_assert!(
                false,
                "{:?}: core answered {:?}, model expected {:?}",
                request,
                answer,
                expected
            ),
        }
        let after = self.node.positions();
        if request.is_promise() {
            check_promise(before, &after, &format!("{request:?}"))?;
        }
        Ok(after)
    }

    /// Jumps past every TTL, then past the retention: every hold has ended
    /// exactly once and only open orders are remembered.
    fn drain(&mut self, steps: usize) -> Result<(), TestCaseError> {
        let past_ttl = self.model.clock_ms.max(self.wall_ms) + MAX_TTL_MS - self.wall_ms + 1;
        self.step(steps, &Step { time: TimeMove::By(past_ttl), late_tick: false, op: Op::Idle })?;
        prop_assert!(
            self.model.reservations.values().all(|r| r.state != ReservationState::Held),
            "model still holds after every TTL"
        );
        for (key, position) in &self.positions {
            prop_assert_eq!(position.reserved, 0, "units still held at {:?}", key);
        }
        let past_retention = TimeMove::By(retention_ms() + 1);
        self.step(steps + 1, &Step { time: past_retention, late_tick: false, op: Op::Idle })?;
        prop_assert!(
            self.model.reservations.values().all(|r| r.state == ReservationState::Committed),
            "ended reservations outlived the retention"
        );
        check_full_ledger(&self.node)?;
        self.restore()
    }
}

fn run(seed: &[i64], steps: &[Step]) -> Result<(), TestCaseError> {
    let mut run = Run::new();
    run.seed(seed)?;
    for (index, step) in steps.iter().enumerate() {
        run.step(index, step)?;
    }
    run.drain(steps.len())
}

fn cases() -> u32 {
    std::env::var("ATP_PROPTEST_CASES")
        .ok()
        .map(|value| value.parse().expect("ATP_PROPTEST_CASES is a number of cases"))
        .unwrap_or(10_000)
}

#[test]
fn fixture_spans_shards() {
    let shards: BTreeSet<u32> = SKUS.iter().map(|sku| shard_of(sku)).collect();
    assert!(shards.len() >= 2, "the SKUs must live on more than one shard");
    assert!(shards.len() < SKUS.len(), "two SKUs must share a shard");
}

proptest! {
    // XorShift: ChaCha alone took a quarter of the run in debug builds.
    #![proptest_config(ProptestConfig {
        cases: cases(),
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_model(
        seed in proptest::collection::vec(0..=25i64, SKUS.len() * LOCATIONS.len()),
        steps in proptest::collection::vec(step(), 20..=60),
    ) {
        run(&seed, &steps)?;
    }
}
