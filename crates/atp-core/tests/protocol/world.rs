//! The simulated node of the protocol test: shards, the network between
//! them, the Reserves in progress (lost at a crash) and what was made durable.

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::catalog::Catalog;
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::{LocationId, ReservationId, Sku};
use atp_core::reservation::{ReservationState, ReserveRequest};
use atp_core::shard::{Begin, Incarnation, LineOp, ShardState, ShipNotice};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::checks::{self, LedgerLives};
use crate::common::{
    LOCATIONS, MARKET, SKUS, START_MS, WEB, catalog, event_id, location, settings, sku,
};

/// A PENDING Reserve is abandoned after this: short enough that the run's
/// ticks (up to 8 s each) reach it.
pub(super) const PENDING_TIMEOUT_MS: i64 = 12_000;

fn protocol_settings() -> atp_core::shard::ShardSettings {
    atp_core::shard::ShardSettings { pending_timeout_ms: PENDING_TIMEOUT_MS, ..settings() }
}

const TTLS_MS: [i64; 3] = [1_000, 5_000, 30_000];
/// Key of a shard's meta record (sequences and clock; written only with real
/// changes, so it may lag the live shard: comparisons leave it out).
const META_KEY: &[u8] = b"m";

type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// One step of the run; numbers are selectors, resolved against the state.
#[derive(Clone, Debug)]
pub enum Action {
    /// A client sends a Reserve: lines are (sku, location of the channel, units).
    Reserve {
        id: u8,
        market: bool,
        lines: Vec<(u8, u8, i64)>,
        ttl: u8,
    },
    /// A client sends its last Reserve for the id again.
    Retry {
        id: u8,
    },
    /// A client changes a reservation's lines (or, with `retry`, sends its
    /// last change of the id again).
    Modify {
        id: u8,
        lines: Vec<(u8, u8, i64)>,
        retry: bool,
    },
    /// The network delivers a message (twice in a row: a duplicate).
    Deliver {
        pick: u8,
        twice: bool,
    },
    /// The network loses a message.
    Drop {
        pick: u8,
    },
    Commit {
        id: u8,
        partial: bool,
    },
    Release {
        id: u8,
    },
    Cancel {
        id: u8,
    },
    /// A warehouse ships one committed unit of a reservation line.
    Ship {
        id: u8,
        line: u8,
    },
    /// Time passes and a shard wakes up (its expiry deadlines).
    Tick {
        shard: u8,
        by_ms: i64,
    },
    /// A shard's checkpoint is taken; its log starts afresh.
    Checkpoint {
        shard: u8,
    },
    /// The node dies; with `Some`, recovery's writes reach only some shards
    /// (bit i of the byte: shard i) before it dies again.
    Crash {
        lose_recovery_on: Option<u8>,
    },
    /// One node of a cluster dies and restarts on its shards' data.
    CrashNode {
        node: u8,
    },
    /// A Hold or Replace to another node is applied, but its answer is lost
    /// (the caller hears a refusal).
    DeliverNoReply {
        pick: u8,
    },
    /// A message between nodes is resent while the first copy is still on
    /// its way (a retry racing its acknowledgement): a late duplicate.
    Duplicate {
        pick: u8,
    },
    /// A reservation in doubt that could not be decided yet is asked about
    /// again (after time passed).
    Requery {
        pick: u8,
    },
    /// A node asks the homes on other nodes about its holds older than the
    /// pending timeout.
    Sweep {
        node: u8,
    },
    /// A planned handoff (`docs/PROTOCOL.md`, "Planned handoff"): a shard
    /// with nothing of its own in flight moves to another node, which
    /// recovers it from its durable records and serves it.
    MoveShard {
        shard: u8,
        to: u8,
    },
}

#[derive(Clone, Debug)]
pub(super) enum Message {
    /// A Reserve's hold; the outcome goes back to its Reserve in progress.
    Hold { shard: u32, op: LineOp },
    /// Release/Commit/Cancel/expiry/rollback; `ack` completes a waiting answer.
    Line {
        shard: u32,
        op: LineOp,
        ack: Option<u32>,
        /// The sending node.
        from: u8,
    },
    /// The Reserve's last step on its home.
    Finish { id: ReservationId, version: u64, held: bool },
    /// A change's first step on a shard; the outcome goes back to the change.
    Replace { shard: u32, op: LineOp },
    /// A change's decision on its home, once every Replace answered.
    ChangeFinish { id: ReservationId, version: u64, replaced: bool },
    Notice {
        notice: ShipNotice,
        /// The sending node (the line shard's).
        from: u8,
    },
    /// A recovery in doubt asks a shard's owner what it knows of an id.
    Query { from: u8, id: ReservationId, shard: u32 },
    /// The owner's answer.
    Facts { to: u8, id: ReservationId, shard: u32, facts: atp_core::shard::ShardFacts },
    /// A resolution asks the id's home to adopt an incarnation.
    Adopt { from: u8, incarnation: Incarnation },
}

/// What answering waits for once every line op of it was delivered.
enum Waiting {
    Client(ReservationId, ReservationState),
    Rollback(ReservationId, u64),
    /// A change's Settles or Reverts; its answer if it was applied.
    Change(ReservationId, u64, Option<atp_core::reservation::ReservationView>),
}

/// A Reserve in progress (the node's task running it): lost at a crash.
pub(super) struct Reserving {
    incarnation: Incarnation,
    /// Per line shard: None while the hold is in flight, then whether it held.
    outcomes: BTreeMap<u32, Option<bool>>,
    /// Line shards (on other nodes) whose answer was lost: the Hold may
    /// have landed, so the rollback aborts there too.
    unanswered: std::collections::BTreeSet<u32>,
}

/// What survives a crash for one shard.
#[derive(Default)]
struct Durable {
    /// Everything ever written, overlaid (the old key/value store).
    store: Records,
    /// The last checkpoint (`dump()`), and the records drained since.
    checkpoint: Records,
    log: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Durable {
    /// The checkpoint overlaid with the log, in order: what recovery reads.
    fn replayed(&self) -> Records {
        let mut records = self.checkpoint.clone();
        for (key, value) in &self.log {
            match value {
                Some(value) => records.insert(key.clone(), value.clone()),
                None => records.remove(key),
            };
        }
        records
    }
}

pub struct World {
    catalog: Catalog,
    pub ids: Vec<ReservationId>,
    now: i64,
    shards: BTreeMap<u32, ShardState>,
    durable: BTreeMap<u32, Durable>,
    lives: LedgerLives,
    network: Vec<Message>,
    /// By id and version: an abandoned Reserve may still be running when the
    /// id starts again.
    reserving: BTreeMap<(ReservationId, u64), Reserving>,
    waiting: BTreeMap<u32, (Waiting, usize)>,
    next_token: u32,
    /// The last state each client was told of.
    acked: BTreeMap<ReservationId, ReservationState>,
    /// Every incarnation begun, and the last Reserve sent, per id.
    begun: BTreeMap<ReservationId, Vec<Incarnation>>,
    sent: BTreeMap<ReservationId, ReserveRequest>,
    /// Changes in progress, by id and new version: lost at a crash.
    changing: BTreeMap<(ReservationId, u64), change::Changing>,
    /// Every change begun, the last change sent (request id, lines) and the
    /// last change acknowledged (version, lines), per id.
    changes_begun: BTreeMap<ReservationId, Vec<Incarnation>>,
    change_sent: BTreeMap<ReservationId, (String, Vec<atp_core::reservation::ReserveLine>)>,
    acked_change: BTreeMap<ReservationId, (u64, change::Lines)>,
    /// Every incarnation begun, Reserves' and changes', in order.
    incarnations: BTreeMap<ReservationId, Vec<Incarnation>>,
    changes_sent: u32,
    on_hand: BTreeMap<(Sku, LocationId), i64>,
    shipments: u32,
    /// Shards whose last step is not durable yet (a Reserve's finish: the
    /// caller is answered before the home record is written). The next
    /// persist writes them, unless a crash comes first.
    unflushed: std::collections::BTreeSet<u32>,
    /// Shards to leave unflushed at the end of this step.
    hold_back: std::collections::BTreeSet<u32>,
    /// The node owning each shard (one node: all 0).
    node_of: BTreeMap<u32, u8>,
    /// Reservations in doubt after a node's recovery, by resolving node:
    /// the facts answered so far and the shards asked.
    doubts: BTreeMap<(u8, ReservationId), nodes::Doubt>,
    /// Holds (shard, id, version) a node's sweep found confirmed by their
    /// home; forgotten when the shard's node dies.
    confirmed: std::collections::BTreeSet<(u32, ReservationId, u64)>,
}

fn without_meta(mut records: Records) -> Records {
    records.remove(META_KEY);
    records
}

fn restore(shard: u32, records: &Records) -> Result<ShardState, TestCaseError> {
    let records = records.iter().map(|(k, v)| (k.clone(), v.clone()));
    ShardState::restore(shard, 1, protocol_settings(), records)
        .map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Reserve lines from (sku, location of the channel, units) selectors: the
/// web channel sells from the first two locations, the market from the last two.
fn lines_for(
    channel: &str,
    selectors: &[(u8, u8, i64)],
) -> Vec<atp_core::reservation::ReserveLine> {
    let first = if channel == MARKET { 1 } else { 0 };
    selectors
        .iter()
        .map(|(s, l, units)| {
            crate::common::line(SKUS[*s as usize], LOCATIONS[first + *l as usize].0, *units)
        })
        .collect()
}

fn pick<T>(items: &[T], selector: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[selector as usize % items.len()])
}

impl World {
    /// Shards of the fixture's SKUs and of four reservation ids (one of them
    /// homed on a line shard), stock received at every position.
    pub fn new(stock: &[i64]) -> Self {
        let line_shards: Vec<u32> = SKUS.iter().map(|s| shard_of(s)).collect();
        let candidates =
            (0..).map(|n| ReservationId::parse("id", &format!("{}{n}", crate::ID_PREFIX)));
        let candidates = candidates.map(|id| id.expect("valid id"));
        let mut ids: Vec<ReservationId> = candidates
            .clone()
            .filter(|id| line_shards.contains(&shard_of(id.as_str())))
            .take(1)
            .collect();
        ids.extend(candidates.filter(|id| !line_shards.contains(&shard_of(id.as_str()))).take(3));
        let mut world = Self {
            catalog: catalog(),
            ids,
            now: START_MS,
            shards: BTreeMap::new(),
            durable: BTreeMap::new(),
            lives: LedgerLives::default(),
            network: Vec::new(),
            reserving: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_token: 0,
            acked: BTreeMap::new(),
            begun: BTreeMap::new(),
            sent: BTreeMap::new(),
            changing: BTreeMap::new(),
            changes_begun: BTreeMap::new(),
            change_sent: BTreeMap::new(),
            acked_change: BTreeMap::new(),
            changes_sent: 0,
            incarnations: BTreeMap::new(),
            on_hand: BTreeMap::new(),
            shipments: 0,
            unflushed: Default::default(),
            hold_back: Default::default(),
            node_of: BTreeMap::new(),
            doubts: BTreeMap::new(),
            confirmed: Default::default(),
        };
        let homes = world.ids.iter().map(|id| shard_of(id.as_str()));
        for shard in line_shards.iter().copied().chain(homes) {
            world
                .shards
                .entry(shard)
                .or_insert_with(|| ShardState::new(shard, 1, protocol_settings()));
            world.durable.entry(shard).or_default();
            world.node_of.insert(shard, 0);
        }
        let positions = SKUS.iter().flat_map(|s| LOCATIONS.iter().map(move |(l, _)| (s, l)));
        for (index, ((sku_id, location_id), units)) in positions.zip(stock).enumerate() {
            let event = StockEvent {
                id: event_id(&format!("seed-{index}")),
                sku: sku(sku_id),
                location: location(location_id),
                kind: StockEventKind::Received { quantity: *units },
            };
            if *units > 0 {
                let state = world.shards.get_mut(&shard_of(sku_id)).expect("line shard");
                state.apply_event(&event, &world.catalog, START_MS).expect("receipt applies");
                world.on_hand.insert((sku(sku_id), location(location_id)), *units);
            }
        }
        world
    }

    /// Runs one action, makes its changes durable and checks the invariants.
    pub fn step(&mut self, action: &Action) -> Result<(), TestCaseError> {
        match action {
            Action::Reserve { id, market, lines, ttl } => {
                let id = pick(&self.ids, *id).expect("ids").clone();
                let channel = if *market { MARKET } else { WEB };
                let lines = lines_for(channel, lines);
                let ttl_ms = TTLS_MS[*ttl as usize % TTLS_MS.len()];
                // Caller data on some: holds carry it, so a record rebuilt
                // from them after a crash must still show it (checked on
                // every replay).
                let mut metadata = atp_core::reservation::Metadata::default();
                if *ttl % 2 == 0 {
                    metadata.order_id = format!("order-{id}");
                    metadata.labels.insert("market".to_owned(), market.to_string());
                }
                let request = ReserveRequest {
                    id,
                    channel: crate::common::channel(channel),
                    lines,
                    ttl_ms,
                    metadata,
                };
                self.reserve(request)?;
            }
            Action::Retry { id } => {
                let id = pick(&self.ids, *id).expect("ids");
                if let Some(request) = self.sent.get(id).cloned() {
                    self.reserve(request)?;
                }
            }
            Action::Modify { id, lines, retry } => self.modify(*id, lines, *retry)?,
            Action::Deliver { pick: selector, twice } => {
                if !self.network.is_empty() {
                    let message = self.network.remove(*selector as usize % self.network.len());
                    self.deliver(message, *twice)?;
                }
            }
            Action::Drop { pick: selector } => {
                // Only what a node can lose without a crash: a Hold refused
                // by a full mailbox, and a Reserve's Finish (its task lost,
                // as a node's will be across nodes). Every other line op is
                // delivered exactly once or lost with the process
                // (docs/PROTOCOL.md).
                let droppable: Vec<usize> = (0..self.network.len())
                    .filter(|at| {
                        matches!(
                            self.network[*at],
                            Message::Hold { .. } | Message::Finish { .. } | Message::Replace { .. }
                        )
                    })
                    .collect();
                if !droppable.is_empty() {
                    let at = droppable[*selector as usize % droppable.len()];
                    let message = self.network.remove(at);
                    // Never applied: the Reserve or change hears a refusal
                    // (as from a full mailbox).
                    match message {
                        Message::Hold { shard, op: LineOp::Hold { reservation, .. } } => {
                            let key = (reservation.request.id.clone(), reservation.version);
                            self.hold_outcome(&key, shard, false);
                        }
                        Message::Replace { shard, op: LineOp::Replace { to, .. } } => {
                            let key = (to.request.id.clone(), to.version);
                            self.replace_outcome(&key, shard, false);
                        }
                        _ => {}
                    }
                }
            }
            Action::Commit { id, partial } => {
                self.client_op(*id, ReservationState::Committed, *partial)?
            }
            Action::Release { id } => self.client_op(*id, ReservationState::Released, false)?,
            Action::Cancel { id } => self.client_op(*id, ReservationState::Cancelled, false)?,
            Action::Ship { id, line } => self.ship(*id, *line)?,
            Action::Tick { shard, by_ms } => {
                self.now += by_ms;
                let shards: Vec<u32> = self.shards.keys().copied().collect();
                self.on_shard(*pick(&shards, *shard).expect("shards"), |_, _, _| ());
            }
            Action::Checkpoint { shard } => {
                let shards: Vec<u32> = self.shards.keys().copied().collect();
                let shard = *pick(&shards, *shard).expect("shards");
                let durable = self.durable.get_mut(&shard).expect("durable");
                durable.checkpoint = self.shards[&shard].dump();
                durable.log.clear();
            }
            Action::Crash { lose_recovery_on } => self.crash(*lose_recovery_on)?,
            Action::CrashNode { node } => self.crash_node(*node)?,
            Action::DeliverNoReply { pick } => self.deliver_without_reply(*pick)?,
            Action::Duplicate { pick } => self.duplicate(*pick),
            Action::Requery { pick } => self.requery(*pick),
            Action::Sweep { node } => {
                let nodes: Vec<u8> = self.node_of.values().copied().collect();
                let node = *pick(&nodes, *node).expect("nodes");
                self.sweep(node);
            }
            Action::MoveShard { shard, to } => self.move_shard(*shard, *to)?,
        }
        self.persist()?;
        checks::positions_match_holds(&self.shards, &self.catalog)?;
        self.check_on_hand()
    }

    /// Ticks `shard` first, as every actor batch does (its expiry releases go
    /// out on the network), then runs `work` on it.
    fn on_shard<T>(
        &mut self,
        shard: u32,
        work: impl FnOnce(&mut ShardState, &Catalog, i64) -> T,
    ) -> T {
        let state = self.shards.get_mut(&shard).expect("known shard");
        let expired = state.tick(self.now);
        let out = work(state, &self.catalog, self.now);
        self.send_line_ops(expired, None);
        out
    }

    /// Sends line ops from their reservations' homes (every op a home
    /// decides: client ops, expiry, rollbacks).
    fn send_line_ops(&mut self, ops: Vec<(u32, LineOp)>, ack: Option<u32>) {
        for (shard, op) in ops {
            let from = self.home_node(nodes::op_id(&op));
            self.network.push(Message::Line { shard, op, ack, from });
        }
    }

    /// Line ops whose delivery completes `waiting`; with none it completes now.
    fn send_then(
        &mut self,
        ops: Vec<(u32, LineOp)>,
        waiting: Waiting,
    ) -> Result<(), TestCaseError> {
        if ops.is_empty() {
            return self.complete(waiting);
        }
        let token = self.next_token;
        self.next_token += 1;
        self.waiting.insert(token, (waiting, ops.len()));
        self.send_line_ops(ops, Some(token));
        Ok(())
    }

    fn reserve(&mut self, request: ReserveRequest) -> Result<(), TestCaseError> {
        if request.check(&self.catalog).is_err() {
            return Ok(()); // the node refuses it before any shard
        }
        self.sent.insert(request.id.clone(), request.clone());
        let home = shard_of(request.id.as_str());
        let begin = self.on_shard(home, |state, _, now| state.begin_reserve(&request, now));
        let id = request.id.clone();
        match begin {
            Ok(Begin::Started { holds, version }) => {
                prop_assert!(!self.acked.contains_key(&id), "acknowledged {} was forgotten", id);
                let key = (id.clone(), version);
                prop_assert!(!self.reserving.contains_key(&key), "{} started twice at once", id);
                let Some((_, LineOp::Hold { reservation, .. })) = holds.first() else {
                    return Err(TestCaseError::fail("a Reserve starts with holds"));
                };
                prop_assert_eq!(&*reservation.request, &request);
                prop_assert_eq!(reservation.version, version);
                self.begun.entry(id.clone()).or_default().push(reservation.clone());
                self.incarnations.entry(id.clone()).or_default().push(reservation.clone());
                let outcomes = holds.iter().map(|(shard, _)| (*shard, None)).collect();
                let incarnation = reservation.clone();
                let unanswered = Default::default();
                self.reserving.insert(key, Reserving { incarnation, outcomes, unanswered });
                for (shard, op) in holds {
                    self.network.push(Message::Hold { shard, op });
                }
            }
            Ok(Begin::Replay(reply)) => {
                prop_assert!(reply.is_replay(), "a replay says so");
                let view = reply.reservation;
                // The first answer: that of an incarnation of this payload.
                let first = self.begun.get(&id).into_iter().flatten().any(|inc| {
                    *inc.request == request
                        && (inc.created_at_ms, inc.expires_at_ms)
                            == (view.created_at_ms, view.expires_at_ms)
                });
                prop_assert!(first, "replay of {} is no first answer: {:?}", id, view);
                prop_assert_eq!(
                    &view.metadata,
                    &request.metadata,
                    "replay of {} lost its metadata",
                    id
                );
                prop_assert_eq!(view.state, ReservationState::Held);
                self.acked.entry(id).or_insert(ReservationState::Held);
            }
            Err(CoreError::AlreadyExists(_) | CoreError::InProgress(_)) => {}
            Err(error) => return Err(TestCaseError::fail(format!("reserve {id}: {error}"))),
        }
        Ok(())
    }

    pub(super) fn hold_outcome(&mut self, key: &(ReservationId, u64), shard: u32, held: bool) {
        let id = &key.0;
        let Some(reserving) = self.reserving.get_mut(key) else { return };
        reserving.outcomes.insert(shard, Some(held));
        if reserving.outcomes.values().any(Option::is_none) {
            return;
        }
        let version = reserving.incarnation.version;
        if reserving.outcomes.values().all(|held| *held == Some(true)) {
            self.network.push(Message::Finish { id: id.clone(), version, held: true });
            return;
        }
        // Roll back what held before the home forgets the reservation.
        let rollback = reserving
            .outcomes
            .iter()
            .filter(|(shard, held)| **held == Some(true) || reserving.unanswered.contains(shard))
            .map(|(shard, _)| (*shard, LineOp::Abort { id: id.clone(), version }))
            .collect();
        self.send_then(rollback, Waiting::Rollback(id.clone(), version))
            .expect("a rollback completes");
    }

    /// Applies a Hold or Replace (`twice`: a repeat right after, which must
    /// change nothing); whether it was taken.
    fn call(&mut self, shard: u32, op: &LineOp, twice: bool) -> Result<bool, TestCaseError> {
        let taken =
            self.on_shard(shard, |state, catalog, now| state.apply_line_op(op, catalog, now));
        if twice {
            let before = self.shards[&shard].all_positions();
            let again =
                self.on_shard(shard, |state, catalog, now| state.apply_line_op(op, catalog, now));
            prop_assert!(taken.is_err() || again.is_ok(), "a repeated {:?} failed", op);
            prop_assert_eq!(
                before,
                self.shards[&shard].all_positions(),
                "a repeated {:?} changed positions",
                op
            );
        }
        Ok(taken.is_ok())
    }

    fn deliver(&mut self, message: Message, twice: bool) -> Result<(), TestCaseError> {
        match message {
            Message::Hold { shard, op } => {
                let LineOp::Hold { reservation, .. } = &op else { unreachable!("holds only") };
                let key = (reservation.request.id.clone(), reservation.version);
                let held = self.call(shard, &op, twice)?;
                self.hold_outcome(&key, shard, held);
            }
            Message::Line { shard, op, ack, .. } => {
                for _ in 0..if twice { 2 } else { 1 } {
                    let applied = self.on_shard(shard, |state, catalog, now| {
                        state.apply_line_op(&op, catalog, now)
                    });
                    prop_assert!(applied.is_ok(), "{:?}: {:?}", op, applied);
                }
                if let Some(token) = ack {
                    let (_, left) = self.waiting.get_mut(&token).expect("waiting for its ops");
                    *left -= 1;
                    if *left == 0 {
                        let (waiting, _) = self.waiting.remove(&token).expect("present");
                        self.complete(waiting)?;
                    }
                }
            }
            Message::Finish { id, version, held } => {
                let Some(reserving) = self.reserving.remove(&(id.clone(), version)) else {
                    return Err(TestCaseError::fail(format!("finish of {id} without its Reserve")));
                };
                let home = shard_of(id.as_str());
                // The home's batch ticks first and that batch is durable as
                // usual (its expiry releases go out only then); the finish
                // itself is answered at once, before its record is durable
                // (one group commit per Reserve: the holds'), so the home is
                // left unflushed until the next step — or a crash.
                self.on_shard(home, |_, _, _| ());
                self.persist_shard(home)?;
                let now = self.now;
                let state = self.shards.get_mut(&home).expect("known shard");
                let answer = state.finish_reserve(&id, version, held, now);
                // One round only when every line shard shares the home's
                // node (they die together, and the holds rebuild the
                // record); with a line on another node the HELD record is
                // durable before the answer (a restarted home could not
                // know of holds it does not see).
                let local = reserving
                    .incarnation
                    .line_shards()
                    .iter()
                    .all(|shard| self.node(*shard) == self.node(home));
                if local {
                    self.hold_back.insert(home);
                } else {
                    self.persist_shard(home)?;
                }
                // None when held: abandoned after the pending timeout (its
                // holds are being aborted); the caller gets an error.
                if let Some(view) = answer {
                    prop_assert!(held, "a failed Reserve {} answered", id);
                    let incarnation = &reserving.incarnation;
                    prop_assert_eq!(
                        (view.created_at_ms, view.expires_at_ms),
                        (incarnation.created_at_ms, incarnation.expires_at_ms)
                    );
                    self.acked.insert(id, ReservationState::Held);
                }
            }
            Message::Replace { shard, op } => {
                let LineOp::Replace { to, .. } = &op else { unreachable!("replaces only") };
                let key = (to.request.id.clone(), to.version);
                let replaced = self.call(shard, &op, twice)?;
                self.replace_outcome(&key, shard, replaced);
            }
            Message::ChangeFinish { id, version, replaced } => {
                self.finish_change(id, version, replaced)?
            }
            Message::Query { from, id, shard } => self.answer_query(from, id, shard),
            Message::Facts { to, id, shard, facts } => self.facts_arrived(to, id, shard, facts)?,
            Message::Adopt { incarnation, .. } => self.adopt(&incarnation),
            Message::Notice { notice, .. } => {
                for _ in 0..if twice { 2 } else { 1 } {
                    let home = shard_of(notice.reservation.as_str());
                    self.on_shard(home, |state, _, now| state.note_shipped(&notice, now));
                }
            }
        }
        Ok(())
    }

    /// Every shard's drained changes become durable: in its store, in its
    /// log, and the ledger entries in the ledger check.
    pub fn persist(&mut self) -> Result<(), TestCaseError> {
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        let held_back = std::mem::take(&mut self.hold_back);
        for shard in shards {
            if !held_back.contains(&shard) {
                self.persist_shard(shard)?;
            }
        }
        self.unflushed = held_back;
        Ok(())
    }

    fn persist_shard(&mut self, shard: u32) -> Result<(), TestCaseError> {
        let changes = self.shards.get_mut(&shard).expect("known shard").drain_changes();
        let durable = self.durable.get_mut(&shard).expect("durable");
        for (key, value) in changes.records {
            match &value {
                Some(value) => durable.store.insert(key.clone(), value.clone()),
                None => durable.store.remove(&key),
            };
            durable.log.push((key, value));
        }
        for entry in &changes.ledger {
            self.lives.feed(entry)?;
        }
        Ok(())
    }

    fn check_on_hand(&self) -> Result<(), TestCaseError> {
        for state in self.shards.values() {
            for (sku, location, position) in state.all_positions() {
                let expected =
                    self.on_hand.get(&(sku.clone(), location.clone())).copied().unwrap_or(0);
                prop_assert_eq!(position.on_hand, expected, "on_hand of {}/{}", sku, location);
            }
        }
        Ok(())
    }
}

#[path = "change.rs"]
mod change;
#[path = "client.rs"]
mod client;
#[path = "crash.rs"]
mod crash;
#[path = "nodes.rs"]
mod nodes;
