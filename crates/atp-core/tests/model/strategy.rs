//! What the strategy generates: steps whose ids, targets, quantities and
//! times are mostly selectors, turned into concrete requests when they run
//! (see `resolve`).

use atp_core::ids::MAX_TTL_MS;
use atp_core::shard::{MAX_COUNT_SKEW_MS, ShardSettings};
use proptest::prelude::*;

use crate::common::{LOCATIONS, SKUS};

/// Which id a new request uses: one never seen, or one of a small pool shared
/// by many requests (so ids collide, with the same or another payload).
#[derive(Clone, Debug)]
pub enum IdChoice {
    Fresh,
    Pool(u8),
}

#[derive(Clone, Debug)]
pub enum EventGen {
    Received(i64),
    Shipped(i64),
    Counted {
        on_hand: i64,
        as_of: AsOf,
    },
    Adjusted(i64),
    MarkedUnavailable(i64),
    /// A selector: mostly at most the units unavailable.
    ReleasedUnavailable(u8),
    IncomingExpected {
        quantity: i64,
        at_offset_ms: i64,
    },
    /// A selector: mostly at most the units incoming.
    IncomingReceived(u8),
}

#[derive(Clone, Debug)]
pub enum Op {
    /// Lines are (sku, location selector, quantity).
    Reserve {
        id: IdChoice,
        channel: u8,
        lines: Vec<(u8, u8, i64)>,
        ttl_ms: i64,
    },
    /// Lines are (line selector, quantity selector); none = commit everything held.
    Commit {
        target: u8,
        lines: Vec<(u8, u8)>,
    },
    Release {
        target: u8,
    },
    Cancel {
        target: u8,
    },
    Extend {
        target: u8,
        ttl_ms: i64,
    },
    Event {
        id: IdChoice,
        sku: u8,
        location: u8,
        kind: EventGen,
    },
    /// A shipment naming a reservation, for one of its lines; the quantity
    /// is a selector, mostly at most the line's unshipped units.
    Ship {
        id: IdChoice,
        target: u8,
        line: u8,
        quantity: u8,
    },
    /// An earlier request, verbatim.
    Replay {
        index: u16,
    },
    /// An earlier request's id with another payload.
    ReuseId {
        index: u16,
    },
    Idle,
}

/// The `as_of` of a count.
#[derive(Clone, Debug)]
pub enum AsOf {
    /// The model's clock plus this (may be past the skew or the window).
    Offset(i64),
    /// When one of the position's movements was applied, give or take a
    /// millisecond: the edge of "movements after as_of".
    AtMovement { selector: u8, off_by_ms: i64 },
    /// The `as_of` of the count in force, give or take a millisecond.
    AtLastCount { off_by_ms: i64 },
}

/// How the wall clock moves before a step.
#[derive(Clone, Debug)]
pub enum TimeMove {
    /// By this much (may be negative).
    By(i64),
    /// To one of the model's deadlines — an expiry, or the end of an id's
    /// retention — give or take a millisecond; with `retry`, the step replays
    /// the request the deadline belongs to instead of its own.
    ToDeadline { selector: u8, off_by_ms: i64, retry: bool },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub time: TimeMove,
    /// For Commit, Release, Cancel and Extend: tick the shards after the
    /// request rather than before, so the home shard's own tick inside the
    /// request is the one that expires what is due.
    pub late_tick: bool,
    pub op: Op,
}

pub fn retention_ms() -> i64 {
    ShardSettings::default().retention_ms
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    prop_oneof![3 => Just(IdChoice::Fresh), 1 => (0..4u8).prop_map(IdChoice::Pool)]
}

fn ttl_ms() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1_000..120_000i64, 1 => Just(MAX_TTL_MS)]
}

fn event_gen() -> impl Strategy<Value = EventGen> {
    let window = ShardSettings::default().count_window_ms;
    let as_of = prop_oneof![
        4 => -60_000..=0i64,
        1 => 0..=MAX_COUNT_SKEW_MS + 60_000,
        1 => -window - 3_600_000..=-window + 3_600_000,
        // The edges: as far ahead or back as a count may be, give or take 1 ms.
        1 => (prop_oneof![Just(MAX_COUNT_SKEW_MS), Just(-window)], -1..=1i64)
            .prop_map(|(edge, off_by_ms)| edge + off_by_ms),
    ]
    .prop_map(AsOf::Offset);
    let as_of = prop_oneof![
        6 => as_of,
        3 => (any::<u8>(), -1..=1i64)
            .prop_map(|(selector, off_by_ms)| AsOf::AtMovement { selector, off_by_ms }),
        2 => prop_oneof![Just(0i64), -1..=1i64].prop_map(|off_by_ms| AsOf::AtLastCount { off_by_ms }),
    ];
    prop_oneof![
        8 => (1..=20i64).prop_map(EventGen::Received),
        2 => (1..=5i64).prop_map(EventGen::Shipped),
        4 => (0..=30i64, as_of).prop_map(|(on_hand, as_of)| EventGen::Counted { on_hand, as_of }),
        2 => prop_oneof![-5..=-1i64, 1..=5i64].prop_map(EventGen::Adjusted),
        2 => (1..=5i64).prop_map(EventGen::MarkedUnavailable),
        2 => any::<u8>().prop_map(EventGen::ReleasedUnavailable),
        2 => (1..=10i64, -3_600_000..=86_400_000i64)
            .prop_map(|(quantity, at_offset_ms)| EventGen::IncomingExpected { quantity, at_offset_ms }),
        2 => any::<u8>().prop_map(EventGen::IncomingReceived),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let reserve_line = (0..SKUS.len() as u8, 0..32u8, 1..=5i64);
    let reserve_lines = prop_oneof![
        5 => proptest::collection::vec(reserve_line.clone(), 1),
        3 => proptest::collection::vec(reserve_line.clone(), 2),
        2 => proptest::collection::vec(reserve_line, 3),
    ];
    let commit_lines = prop_oneof![
        6 => Just(Vec::new()),
        4 => proptest::collection::vec((any::<u8>(), any::<u8>()), 1..=2),
    ];
    prop_oneof![
        22 => (id_choice(), prop_oneof![19 => 0..2u8, 1 => Just(2u8)], reserve_lines, ttl_ms())
            .prop_map(|(id, channel, lines, ttl_ms)| Op::Reserve { id, channel, lines, ttl_ms }),
        12 => (any::<u8>(), commit_lines).prop_map(|(target, lines)| Op::Commit { target, lines }),
        5 => any::<u8>().prop_map(|target| Op::Release { target }),
        5 => any::<u8>().prop_map(|target| Op::Cancel { target }),
        4 => (any::<u8>(), ttl_ms()).prop_map(|(target, ttl_ms)| Op::Extend { target, ttl_ms }),
        28 => (id_choice(), 0..SKUS.len() as u8, 0..LOCATIONS.len() as u8, event_gen())
            .prop_map(|(id, sku, location, kind)| Op::Event { id, sku, location, kind }),
        10 => (id_choice(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(id, target, line, quantity)| Op::Ship { id, target, line, quantity }),
        8 => any::<u16>().prop_map(|index| Op::Replay { index }),
        4 => any::<u16>().prop_map(|index| Op::ReuseId { index }),
        1 => Just(Op::Idle),
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    let retention = retention_ms();
    let by = prop_oneof![
        10 => Just(0i64),
        50 => 1..3_000i64,
        12 => -60_000..0i64,
        12 => 30_000..600_000i64,
        3 => retention..retention + 2 * 3_600_000,
    ]
    .prop_map(TimeMove::By);
    let time = prop_oneof![
        9 => by,
        1 => (any::<u8>(), -1..=1i64, any::<bool>()).prop_map(|(selector, off_by_ms, retry)| {
            TimeMove::ToDeadline { selector, off_by_ms, retry }
        }),
    ];
    (time, proptest::bool::weighted(0.25), op()).prop_map(|(time, late_tick, op)| Step {
        time,
        late_tick,
        op,
    })
}
