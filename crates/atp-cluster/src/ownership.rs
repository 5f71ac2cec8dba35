//! What one node may do with each shard: the states the claims loop
//! publishes ([`Ownership`]), the view the shard layer decides on
//! ([`OwnershipView`]), and why a request is refused ([`Refusal`]).

use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::assignment::SHARD_COUNT;
use crate::membership::LeaseState;

/// Why a request for a shard is refused on this node. The gRPC layer maps
/// it (one table, like every domain error): `StaleEpoch` → ABORTED with a
/// `google.rpc.ErrorInfo` (reason `STALE_EPOCH`, metadata: the owner and
/// epoch), `FailingClosed` → UNAVAILABLE, `NotOwner` → forward or tell the
/// client the owner.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request carries an epoch that is not the shard's current one.
    #[error("stale epoch: shard owned by {owner:?} under epoch {epoch:?}")]
    StaleEpoch {
        /// The current owner, if known.
        owner: Option<String>,
        /// The current epoch, if the shard is claimed.
        epoch: Option<i64>,
    },
    /// The shard is assigned here but cannot be served now.
    #[error("shard failing closed on this node")]
    FailingClosed,
    /// Another node owns (or is assigned) the shard.
    #[error("shard owned by {owner:?}")]
    NotOwner {
        /// The owner (claim holder, else assigned node), if known.
        owner: Option<String>,
        /// Its epoch, if claimed.
        epoch: Option<i64>,
    },
}

/// What this node may do with one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// It holds the shard's claim: serve, stamping `epoch` on every log
    /// record and reply (while the lease deadline has not passed: see
    /// [`Ownership::state_at`]).
    Serving {
        /// The claim's create revision.
        epoch: i64,
    },
    /// The shard is assigned here but not (or not yet again) confirmed as
    /// held: the lease is lost or its deadline passed, the shard map is not
    /// confirmed since an etcd problem, or the claim is not made yet.
    /// Refuse reads and writes with UNAVAILABLE.
    FailingClosed,
    /// Another node owns the shard (or is assigned it and has not claimed it).
    NotOwned {
        /// The claim's owner, else the assigned node, if known.
        owner: Option<String>,
        /// The claim's epoch, if claimed.
        epoch: Option<i64>,
    },
}

/// Every shard's state on this node, published as one value so a step-down
/// covers every shard at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// The lease deadline while held: a `Serving` shard counts as
    /// `FailingClosed` from this instant.
    pub deadline: Option<Instant>,
    /// The lease the `Serving` shards are claimed under (0: none).
    pub lease_id: i64,
    /// The shard map revision the states were computed from (0: the map
    /// was never read; every shard is then `FailingClosed`).
    pub revision: i64,
    /// One state per shard, in shard order.
    pub shards: Vec<ShardState>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            deadline: None,
            lease_id: 0,
            revision: 0,
            shards: vec![ShardState::FailingClosed; SHARD_COUNT as usize],
        }
    }
}

impl Ownership {
    /// `shard`'s state at `now`: `Serving` only before the lease deadline.
    pub fn state_at(&self, shard: u32, now: Instant) -> ShardState {
        match &self.shards[shard as usize] {
            ShardState::Serving { .. } if self.deadline.is_none_or(|deadline| now >= deadline) => {
                ShardState::FailingClosed
            }
            state => state.clone(),
        }
    }

    /// The shards served at `now`, with their epochs.
    pub fn serving_at(&self, now: Instant) -> BTreeMap<u32, i64> {
        if self.deadline.is_none_or(|deadline| now >= deadline) {
            return BTreeMap::new();
        }
        let mut serving = BTreeMap::new();
        for (shard, state) in (0..SHARD_COUNT).zip(&self.shards) {
            if let ShardState::Serving { epoch } = state {
                serving.insert(shard, *epoch);
            }
        }
        serving
    }
}

/// What the shard layer holds to decide, request by request, whether it may
/// serve a shard: the published [`Ownership`] checked against the lease
/// state *now*. The lease state turns `Lost` or `Idle` before the claims
/// loop has stepped down (and before `leave` revokes the lease), so a view
/// never serves in between. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct OwnershipView {
    ownership: watch::Receiver<Ownership>,
    lease: watch::Receiver<LeaseState>,
    node_id: String,
}

impl OwnershipView {
    pub(crate) fn new(
        ownership: watch::Receiver<Ownership>,
        lease: watch::Receiver<LeaseState>,
        node_id: String,
    ) -> Self {
        Self { ownership, lease, node_id }
    }

    /// The same view (lease, node id) over `ownership`, a relay of the
    /// claims loop's publications: the relay can act on each change before
    /// requests are decided on it (atpd tells its shard layer a shard's new
    /// epoch before any request is admitted under it).
    pub fn relayed(&self, ownership: watch::Receiver<Ownership>) -> Self {
        Self { ownership, lease: self.lease.clone(), node_id: self.node_id.clone() }
    }

    /// Whether a request for `shard` carrying `epoch` (the one the client
    /// believes in, if any) may be served here at `now`; `Ok(epoch)` is the
    /// epoch to stamp on its log records and reply. The order of the rules:
    /// failing closed (UNAVAILABLE) first, then a carried epoch that is not
    /// the shard's current one (ABORTED, STALE_EPOCH), then another owner.
    pub fn admit(&self, shard: u32, epoch: Option<i64>, now: Instant) -> Result<i64, Refusal> {
        match self.state_at(shard, now) {
            ShardState::FailingClosed => Err(Refusal::FailingClosed),
            ShardState::Serving { epoch: current } => match epoch {
                Some(carried) if carried != current => Err(Refusal::StaleEpoch {
                    owner: Some(self.node_id.clone()),
                    epoch: Some(current),
                }),
                _ => Ok(current),
            },
            ShardState::NotOwned { owner, epoch: current } => match epoch {
                Some(carried) if Some(carried) != current => {
                    Err(Refusal::StaleEpoch { owner, epoch: current })
                }
                _ => Err(Refusal::NotOwner { owner, epoch: current }),
            },
        }
    }

    /// `shard`'s state at `now`.
    pub fn state_at(&self, shard: u32, now: Instant) -> ShardState {
        let ownership = self.ownership.borrow();
        if self.lease_matches(&ownership, now) {
            ownership.state_at(shard, now)
        } else {
            match ownership.state_at(shard, now) {
                ShardState::Serving { .. } => ShardState::FailingClosed,
                state => state,
            }
        }
    }

    /// The shards served at `now`, with their epochs.
    pub fn serving_at(&self, now: Instant) -> BTreeMap<u32, i64> {
        let ownership = self.ownership.borrow();
        if !self.lease_matches(&ownership, now) {
            return BTreeMap::new();
        }
        ownership.serving_at(now)
    }

    /// The lease the published claims are held under (0: none).
    pub fn lease_id(&self) -> i64 {
        self.ownership.borrow().lease_id
    }

    fn lease_matches(&self, ownership: &Ownership, now: Instant) -> bool {
        matches!(*self.lease.borrow(), LeaseState::Held { lease_id, deadline }
            if lease_id == ownership.lease_id && now < deadline)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn view(states: &[(u32, ShardState)], lease_id: i64) -> (OwnershipView, Instant) {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        let mut ownership =
            Ownership { deadline: Some(deadline), lease_id, ..Ownership::default() };
        for (shard, state) in states {
            ownership.shards[*shard as usize] = state.clone();
        }
        let (_, ownership) = watch::channel(ownership);
        let (_, lease) = watch::channel(LeaseState::Held { lease_id: 7, deadline });
        (OwnershipView::new(ownership, lease, "a".to_owned()), now)
    }

    #[test]
    fn requests_are_admitted_only_under_the_current_epoch() {
        let other = ShardState::NotOwned { owner: Some("b".to_owned()), epoch: Some(9) };
        let (view, now) = view(&[(1, ShardState::Serving { epoch: 5 }), (2, other)], 7);
        assert_eq!(view.admit(1, None, now), Ok(5));
        assert_eq!(view.admit(1, Some(5), now), Ok(5));
        let stale = Refusal::StaleEpoch { owner: Some("a".to_owned()), epoch: Some(5) };
        assert_eq!(view.admit(1, Some(4), now), Err(stale));
        assert_eq!(view.admit(0, Some(5), now), Err(Refusal::FailingClosed));
        let stale = Refusal::StaleEpoch { owner: Some("b".to_owned()), epoch: Some(9) };
        assert_eq!(view.admit(2, Some(5), now), Err(stale));
        let elsewhere = Refusal::NotOwner { owner: Some("b".to_owned()), epoch: Some(9) };
        assert_eq!(view.admit(2, Some(9), now), Err(elsewhere));
        let late = now + Duration::from_secs(1);
        assert_eq!(view.admit(1, Some(5), late), Err(Refusal::FailingClosed), "past the deadline");
    }

    #[test]
    fn a_lease_other_than_the_published_one_serves_nothing() {
        let (view, now) = view(&[(1, ShardState::Serving { epoch: 5 })], 6);
        assert_eq!(view.admit(1, Some(5), now), Err(Refusal::FailingClosed));
        assert!(view.serving_at(now).is_empty());
    }
}
