//! One node's shard claims: claims the shards the assignment gives it, bound
//! to its lease, and publishes which shards it may serve and under which
//! epoch.
//!
//! A claim is `/atp/<cluster>/shards/claims/<shard>` → node id, created by a
//! transaction "absent (and the assignment unchanged) → put, bound to my
//! lease"; its create revision is the shard's epoch. The node serves a shard
//! only while its lease is held (before the local deadline), the shard map
//! is confirmed (read since the last broken watch), and the claim is its
//! own: bound to its current lease. Losing the lease steps down from every
//! shard in one update.

use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};

use crate::assignment::{ClusterKeys, SHARD_COUNT};
use crate::membership::{LeaseState, MembershipConfig, MembershipError, ms};
use crate::ownership::{Ownership, OwnershipView, ShardState};
use crate::shard_map::{ShardMap, watch_shard_map};
use crate::store::{Compare, MAX_TXN_OPS, Store, StoreError, Txn, TxnOp, describe};

/// Claims per transaction: one compare and one put each, plus the
/// assignment's compare, within etcd's limit of 128 per part.
const CLAIMS_PER_TXN: usize = 64;
const _: () = assert!(CLAIMS_PER_TXN < MAX_TXN_OPS);

/// One node's claims component. Dropping it stops its tasks (the claims stay
/// until the lease goes).
pub struct Claims {
    ownership: watch::Sender<Ownership>,
    shard_map: watch::Sender<ShardMap>,
    lease: watch::Receiver<LeaseState>,
    node_id: String,
    tasks: [JoinHandle<()>; 2],
}

impl Claims {
    /// Starts following the shard map and claiming this node's shards while
    /// `lease` is held. `config` is the node's membership config (cluster,
    /// node id, timeouts). Must be called inside a tokio runtime.
    pub fn new<S: Store>(
        store: S,
        config: MembershipConfig,
        lease: watch::Receiver<LeaseState>,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        let (shard_map, _) = watch::channel(ShardMap::default());
        let (ownership, _) = watch::channel(Ownership::default());
        let node_id = config.node_id.clone();
        let map_task =
            tokio::spawn(watch_shard_map(store.clone(), config.clone(), shard_map.clone()));
        let claim_task = tokio::spawn(keep_claims(
            store,
            config,
            lease.clone(),
            shard_map.subscribe(),
            ownership.clone(),
        ));
        Ok(Self { ownership, shard_map, lease, node_id, tasks: [map_task, claim_task] })
    }

    /// The handle to decide on requests with (see [`OwnershipView`]).
    pub fn view(&self) -> OwnershipView {
        OwnershipView::new(self.ownership.subscribe(), self.lease.clone(), self.node_id.clone())
    }

    /// This node's state of every shard, as the claims loop last published
    /// it (changes to wait on; decide on requests with [`Claims::view`]).
    pub fn ownership(&self) -> watch::Receiver<Ownership> {
        self.ownership.subscribe()
    }

    /// The assignment and every node's claims (owner and epoch of any shard).
    pub fn shard_map(&self) -> watch::Receiver<ShardMap> {
        self.shard_map.subscribe()
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the claim loop remembers between rounds: the claims it made or
/// adopted under the current lease (shard → epoch).
struct Held {
    lease_id: i64,
    epochs: BTreeMap<u32, i64>,
}

async fn keep_claims<S: Store>(
    store: S,
    config: MembershipConfig,
    mut lease: watch::Receiver<LeaseState>,
    mut map: watch::Receiver<ShardMap>,
    ownership: watch::Sender<Ownership>,
) {
    let keys = ClusterKeys::new(&config.cluster);
    let backoff = ms(config.retry_backoff_ms);
    let mut held = Held { lease_id: 0, epochs: BTreeMap::new() };
    let mut retry_at: Option<Instant> = None;
    // The inputs of the last full round (lease, map revision, confirmed,
    // reads) and whether it left shards to claim: a renewal that changes
    // nothing else only moves the deadline.
    let mut last_round: Option<(i64, i64, bool, u64)> = None;
    let mut to_claim: Vec<u32> = Vec::new();
    loop {
        let lease_now = lease.borrow_and_update().clone();
        let map_now = {
            let map_now = map.borrow_and_update();
            (map_now.revision, map_now.confirmed, map_now.reads)
        };
        let now = Instant::now();
        let usable = match lease_now {
            LeaseState::Held { lease_id, deadline } if now < deadline => Some((lease_id, deadline)),
            _ => None,
        };
        let lease_id = usable.map_or(0, |(lease_id, _)| lease_id);
        let round = (lease_id, map_now.0, map_now.1, map_now.2);
        if last_round == Some(round) && to_claim.is_empty() {
            ownership.send_modify(|ownership| {
                ownership.deadline = usable.map(|(_, deadline)| deadline);
            });
        } else {
            let map_now = map.borrow().clone();
            if held.lease_id != lease_id {
                if !held.epochs.is_empty() {
                    tracing::warn!(
                        shards = held.epochs.len(),
                        lease_id = held.lease_id,
                        "lease gone: stepping down from every shard"
                    );
                }
                held = Held { lease_id, epochs: BTreeMap::new() };
            }
            to_claim = reconcile(&config.node_id, &map_now, &mut held);
            ownership.send_replace(publish(&config.node_id, usable, &map_now, &held));
            last_round = Some(round);

            let due = retry_at.is_none_or(|at| at <= now);
            if usable.is_some() && map_now.confirmed && !to_claim.is_empty() && due {
                // A lost lease must not wait behind claims hanging on an
                // unreachable etcd: the step-down is published at once.
                let mut watched = lease.clone();
                let lease_changed = watched.wait_for(|state| {
                    !matches!(state, LeaseState::Held { lease_id: id, .. } if *id == lease_id)
                });
                let attempt = tokio::select! {
                    attempt = claim(&store, &config, &keys, &map_now, lease_id, &to_claim) => attempt,
                    _ = lease_changed => {
                        last_round = None;
                        continue;
                    }
                };
                match attempt {
                    Ok((claimed, refused)) => {
                        held.epochs.extend(claimed);
                        // Refused: a claim exists or the assignment changed,
                        // which the map will show; until then, wait (or
                        // retry later).
                        retry_at = refused.then(|| Instant::now() + backoff);
                        if !refused {
                            last_round = None;
                            continue;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(
                            error = describe(&error),
                            "claiming shards failed; retrying"
                        );
                        retry_at = Some(Instant::now() + backoff);
                    }
                }
            }
        }
        let pending = (!to_claim.is_empty()).then_some(retry_at).flatten();
        tokio::select! {
            changed = lease.changed() => if changed.is_err() { return },
            changed = map.changed() => if changed.is_err() { return },
            () = sleep_until(pending.unwrap_or_else(Instant::now)), if pending.is_some() => {
                retry_at = None;
            }
        }
    }
}

/// Brings `held` in line with a confirmed map (a claim made after the map's
/// revision is kept: the map has not seen it yet) and returns the shards
/// assigned here that nobody claims.
fn reconcile(node: &str, map: &ShardMap, held: &mut Held) -> Vec<u32> {
    if held.lease_id == 0 || !map.confirmed {
        return Vec::new();
    }
    let Some(assignment) = &map.assignment else { return Vec::new() };
    let mut to_claim = Vec::new();
    for shard in 0..SHARD_COUNT {
        let mine = assignment.owner(shard) == node;
        let known = held.epochs.get(&shard).copied();
        if known.is_some_and(|epoch| epoch > map.revision) {
            continue;
        }
        match map.claim(shard) {
            Some(claim) if mine && claim.node == node && claim.lease_id == held.lease_id => {
                if known.is_some_and(|epoch| epoch != claim.epoch) {
                    tracing::warn!(shard, epoch = claim.epoch, "claim re-created under my lease");
                }
                held.epochs.insert(shard, claim.epoch);
            }
            Some(_) => {
                held.epochs.remove(&shard);
            }
            None => {
                if let Some(epoch) = held.epochs.remove(&shard) {
                    tracing::warn!(shard, epoch, "my claim is gone; claiming under a new epoch");
                }
                if mine {
                    to_claim.push(shard);
                }
            }
        }
    }
    to_claim
}

/// Every shard's state from the lease, the map and the claims held.
fn publish(node: &str, usable: Option<(i64, Instant)>, map: &ShardMap, held: &Held) -> Ownership {
    let deadline = usable.map(|(_, deadline)| deadline);
    let lease_id = usable.map_or(0, |(lease_id, _)| lease_id);
    if map.reads == 0 {
        // Nothing known yet: not even which shards are elsewhere.
        return Ownership { deadline, lease_id, ..Ownership::default() };
    }
    let serving = usable.is_some() && map.confirmed;
    let shards = (0..SHARD_COUNT)
        .map(|shard| {
            let assigned = map.assignment.as_ref().map(|table| table.owner(shard));
            let claim = map.claim(shard);
            if let Some(epoch) = held.epochs.get(&shard).filter(|_| serving) {
                return ShardState::Serving { epoch: *epoch };
            }
            match claim {
                Some(claim) if claim.node != node => ShardState::NotOwned {
                    owner: Some(claim.node.clone()),
                    epoch: Some(claim.epoch),
                },
                // A claim of this node's id it does not serve: under an old
                // lease (a restarted process, a revoke that failed) that
                // must expire first, or not confirmed yet. Nobody else may
                // serve the shard meanwhile, so: unavailable, not elsewhere.
                Some(_) => ShardState::FailingClosed,
                None if assigned == Some(node) => ShardState::FailingClosed,
                None => ShardState::NotOwned { owner: assigned.map(str::to_owned), epoch: None },
            }
        })
        .collect();
    Ownership { deadline, lease_id, revision: map.revision, shards }
}

/// Claims `shards` under `lease_id`, [`CLAIMS_PER_TXN`] at a time, each
/// transaction guarded by the assignment's mod revision; returns the epochs
/// of the claims made (all or nothing per transaction) and whether a
/// transaction was refused (the rest are not tried).
async fn claim<S: Store>(
    store: &S,
    config: &MembershipConfig,
    keys: &ClusterKeys,
    map: &ShardMap,
    lease_id: i64,
    shards: &[u32],
) -> Result<(BTreeMap<u32, i64>, bool), StoreError> {
    let request_timeout = ms(config.request_timeout_ms);
    let mut claimed = BTreeMap::new();
    for chunk in shards.chunks(CLAIMS_PER_TXN) {
        let mut compares = vec![Compare::mod_revision(keys.assignment(), map.assignment_revision)];
        compares.extend(chunk.iter().map(|shard| Compare::absent(keys.claim(*shard))));
        let success = chunk
            .iter()
            .map(|shard| TxnOp::put(keys.claim(*shard), config.node_id.as_bytes(), lease_id))
            .collect();
        let txn = Txn { compares, success, failure: Vec::new() };
        let outcome = match timeout(request_timeout, store.txn(txn)).await {
            Ok(outcome) => outcome?,
            Err(_) => return Err(StoreError::Timeout(request_timeout)),
        };
        if !outcome.succeeded {
            // A claim exists or the assignment changed: the map will show it.
            tracing::debug!(first = chunk[0], "claim transaction refused; waiting for the map");
            return Ok((claimed, true));
        }
        tracing::info!(
            shards = chunk.len(),
            first = chunk[0],
            epoch = outcome.revision,
            "claimed shards"
        );
        claimed.extend(chunk.iter().map(|shard| (*shard, outcome.revision)));
    }
    Ok((claimed, false))
}
