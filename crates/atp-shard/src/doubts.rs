//! Doubts across nodes (`docs/PROTOCOL.md`, "Across nodes"): reservations
//! recovery could not settle from this node's shards alone
//! (`Recovered::in_doubt`), and uncommitted holds kept past the pending
//! timeout whose home, on another node, has not confirmed them (the sweep).
//! Each is decided only from the current owners' answers ([`needed`]
//! facts, then [`resolve`]); until then its holds stay (under-sell, never
//! oversell). An owner that cannot be asked, or a home still working on
//! the id, means "ask again later". Committed lines on other owners' shards
//! that recovery could not confirm are asked about too (a line no longer
//! held shipped in full).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::ReservationId;
use atp_core::shard::{ShardFacts, ShipNotice, needed, resolve};
use tokio::sync::watch;

use crate::actor::{self, Answer, Shared};
use crate::error::NodeError;

/// How long one owner may take to answer a question.
const ASK_DEADLINE: Duration = Duration::from_secs(2);
/// The first pause before asking again about undecided doubts; it doubles
/// up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Holds a home on another node confirmed (shard, id, version): the sweep
/// does not ask about them again while they last.
#[derive(Default)]
pub(crate) struct Confirmed(Mutex<HashSet<(u32, ReservationId, u64)>>);

impl Confirmed {
    fn contains(&self, key: &(u32, ReservationId, u64)) -> bool {
        self.0.lock().expect("never poisoned").contains(key)
    }

    fn insert(&self, key: (u32, ReservationId, u64)) {
        self.0.lock().expect("never poisoned").insert(key);
    }

    /// Forgets confirmations of holds not among `current` any more.
    fn keep_only(&self, current: &HashSet<(u32, ReservationId, u64)>) {
        self.0.lock().expect("never poisoned").retain(|key| current.contains(key));
    }
}

/// What `shard` knows of `id`: asked of its actor here, or of its owner.
async fn facts_of(
    shared: &Shared,
    shard: u32,
    id: &ReservationId,
) -> Result<ShardFacts, NodeError> {
    match shared.peers() {
        Some(peers) if !peers.is_local(shard) => {
            Ok(peers.facts(shard, id.clone(), ASK_DEADLINE).await?)
        }
        _ => {
            let id = id.clone();
            shared.shards[shard as usize]
                .call_answered(move |state, _, _| state.facts(&id), Answer::Durable)
                .await
        }
    }
}

/// Tries once to decide the doubt of `id`, starting from the facts of
/// `known` (shards here holding something of it). True when decided and
/// done: the resolution's ops delivered (or left to the outbox) and the
/// home's record adopted or its doubt cleared.
pub(crate) async fn decide(
    shared: &Shared,
    id: &ReservationId,
    known: &[u32],
    pending_timeout_ms: i64,
    confirmed: &Confirmed,
) -> Result<bool, NodeError> {
    // The home's facts first, then every line shard's: no hold is read
    // before the home's answer, so a "no record" cannot meet a hold a
    // rollback freed in between (docs/PROTOCOL.md, "Facts are read home
    // first").
    let home = shard_of(id.as_str());
    let mut facts: BTreeMap<u32, ShardFacts> = BTreeMap::new();
    facts.insert(home, facts_of(shared, home, id).await?);
    for &shard in known.iter().filter(|shard| **shard != home) {
        facts.insert(shard, facts_of(shared, shard, id).await?);
    }
    loop {
        let missing: Vec<u32> =
            needed(id, &facts).into_iter().filter(|shard| !facts.contains_key(shard)).collect();
        if missing.is_empty() {
            break;
        }
        for shard in missing {
            facts.insert(shard, facts_of(shared, shard, id).await?);
        }
    }
    let now = shared.clock.now_ms();
    let Some(resolution) = resolve(id, &facts, Some((now, pending_timeout_ms))) else {
        return Ok(false);
    };
    // Holds left as they are, of the version the home's record stands at,
    // are confirmed (not those whose record is still to be adopted).
    let recorded = facts.get(&home).and_then(|home| home.record).map(|record| record.version);
    for (shard, shard_facts) in &facts {
        if let Some((base, None)) = &shard_facts.hold
            && Some(base.version) == recorded
            && !resolution.ops.iter().any(|(of, _)| of == shard)
        {
            confirmed.insert((*shard, id.clone(), base.version));
        }
    }
    actor::deliver(shared, resolution.ops).await?;
    let peers = shared.peers();
    let home_is_here = peers.as_ref().is_none_or(|peers| peers.is_local(home));
    match (resolution.adopt, home_is_here) {
        (Some(incarnation), true) => {
            shared.shards[home as usize]
                .call(move |state, _, now| {
                    state.adopt(&incarnation, now);
                })
                .await?
        }
        (Some(incarnation), false) => {
            let peers = peers.expect("a home elsewhere means peers");
            peers.adopt(incarnation, ASK_DEADLINE).await?;
        }
        (None, true) => {
            let id = id.clone();
            shared.shards[home as usize].call(move |state, _, _| state.settled_doubt(&id)).await?
        }
        (None, false) => {}
    }
    Ok(true)
}

/// Decides `doubts` (an id, and the shards here holding something of it)
/// in the background, asking again with a growing pause until every one
/// is decided or `stop` turns true.
pub(crate) fn spawn_resolver(
    shared: Arc<Shared>,
    mut doubts: Vec<(ReservationId, Vec<u32>)>,
    pending_timeout_ms: i64,
    confirmed: Arc<Confirmed>,
    mut stop: watch::Receiver<bool>,
) {
    if doubts.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut pause = FIRST_RETRY;
        while !doubts.is_empty() {
            let mut undecided = Vec::new();
            for (id, known) in doubts {
                match decide(&shared, &id, &known, pending_timeout_ms, &confirmed).await {
                    Ok(true) => tracing::info!(reservation = %id, "decided a reservation in doubt"),
                    Ok(false) => undecided.push((id, known)),
                    Err(error) => {
                        tracing::debug!(reservation = %id, %error, "a doubt waits for an owner");
                        undecided.push((id, known));
                    }
                }
            }
            doubts = undecided;
            if doubts.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    });
}

/// Every `pending_timeout_ms / 2`, asks the homes on other nodes about the
/// uncommitted holds here older than the pending timeout that they have
/// not confirmed: a hold whose Reserve died with its home, or whose Abort
/// was lost with its sender, is rolled back.
pub(crate) fn spawn_sweeper(
    shared: Arc<Shared>,
    pending_timeout_ms: i64,
    confirmed: Arc<Confirmed>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(u64::try_from(pending_timeout_ms / 2).unwrap_or(1000))
        .max(Duration::from_millis(500));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if let Err(error) = sweep(&shared, pending_timeout_ms, &confirmed).await {
                tracing::debug!(%error, "sweep stopped early; again next time");
            }
        }
    });
}

async fn sweep(
    shared: &Shared,
    pending_timeout_ms: i64,
    confirmed: &Confirmed,
) -> Result<(), NodeError> {
    let Some(peers) = shared.peers() else { return Ok(()) };
    let cutoff = shared.clock.now_ms() - pending_timeout_ms;
    let mut candidates = HashSet::new();
    for shard in (0..SHARD_COUNT).filter(|shard| peers.is_local(*shard)) {
        let old = shared.shards[shard as usize]
            .call_answered(
                move |state, _, _| {
                    state
                        .uncommitted_holds_begun_before(cutoff)
                        .into_iter()
                        .filter_map(|id| {
                            let (base, _) = state.facts(&id).hold?;
                            Some((id, base.version))
                        })
                        .collect::<Vec<_>>()
                },
                Answer::Applied,
            )
            .await?;
        for (id, version) in old {
            if !peers.is_local(shard_of(id.as_str())) {
                candidates.insert((shard, id, version));
            }
        }
    }
    confirmed.keep_only(&candidates);
    for (shard, id, version) in candidates {
        if confirmed.contains(&(shard, id.clone(), version)) {
            continue;
        }
        if let Err(error) = decide(shared, &id, &[shard], pending_timeout_ms, confirmed).await {
            tracing::debug!(reservation = %id, %error, "sweep: the home could not be asked");
        }
    }
    Ok(())
}

/// Committed lines of this node's records whose line shard another node
/// serves (`Recovered::unconfirmed`): each is asked of its owner until it
/// answers; a line no longer held there shipped in full, and its home
/// (here) is told so. Runs in the background until every line is answered.
pub(crate) fn spawn_confirmer(
    shared: Arc<Shared>,
    mut lines: Vec<ShipNotice>,
    mut stop: watch::Receiver<bool>,
) {
    if lines.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut pause = FIRST_RETRY;
        while !lines.is_empty() {
            let mut unanswered = Vec::new();
            for line in lines {
                match held_at_owner(&shared, &line).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // To the home where it is served now: here once this
                        // node serves it, else its owner (or the outbox).
                        if actor::notify_home(&shared, line.clone()).await.is_err() {
                            unanswered.push(line);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(reservation = %line.reservation, %error, "a committed line waits for its owner");
                        unanswered.push(line);
                    }
                }
            }
            lines = unanswered;
            if lines.is_empty() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    });
}

/// Whether the shard of `line.sku` still holds the line: asked here or of its owner.
async fn held_at_owner(shared: &Shared, line: &ShipNotice) -> Result<bool, NodeError> {
    let shard = shard_of(line.sku.as_str());
    match shared.peers() {
        Some(peers) if !peers.is_local(shard) => {
            Ok(peers.has_line(line.clone(), ASK_DEADLINE).await?)
        }
        _ => {
            let line = line.clone();
            shared.shards[shard as usize]
                .call(move |state, _, _| {
                    state.has_line(&line.reservation, &line.sku, &line.location)
                })
                .await
        }
    }
}
