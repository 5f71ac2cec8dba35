//! Cluster membership, shard assignment and shard claims for atp nodes
//! sharing 1024 shards through etcd.
//!
//! A node joins by granting a lease and putting `/atp/<cluster>/nodes/<id>`
//! (its address) bound to that lease, then keeps the lease alive. It serves
//! shards only while it holds the lease: the local deadline is the send time
//! of the last acknowledged keepalive + TTL − a safety margin, and the moment
//! that passes (or etcd says the lease is gone) [`LeaseState`] turns `Lost`,
//! the one signal on which the node steps down from every shard at once.
//! Every node watches the member list ([`Members`], with the etcd revision it
//! reflects); a broken watch resumes from the last seen revision, a compacted
//! one reads everything again.
//!
//! On top of membership: a [`Coordinator`], elected through etcd, writes the
//! [`Assignment`] table (shard → node, rendezvous hashing over the initial
//! members) once; it is sticky afterwards. Each node's [`Claims`] claims its
//! assigned shards with transactions bound to its lease; a claim's create
//! revision is the shard's epoch. [`OwnershipView`] tells the shard layer,
//! request by request, whether it serves a shard and under which epoch
//! ([`Refusal`] otherwise), and [`ShardMap`] gives every claim's owner and
//! epoch. [`reassign`] is the operator's `--accept-loss` move of a dead
//! node's shards. [`ConfigWatch`] keeps every node's copy of the cluster's
//! configuration (locations and channels, [`ClusterConfig`]) current, and
//! [`publish_initial`] writes a first one only while there is none.
//!
//! Main types: the [`Membership`] trait and its implementation [`Member`],
//! generic over an etcd-shaped [`Store`]: [`EtcdStore`] for a real etcd, and
//! (feature `testing`) `memory::MemoryEtcd`, an in-memory etcd with
//! revisions, leases, transactions, compaction, pause and restart, for tests
//! and simulation; `testing` also starts real etcd processes for tests.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use atp_cluster::{EtcdStore, LeaseState, Member, Membership, MembershipConfig};
//!
//! let endpoints = ["http://127.0.0.1:2379".to_owned()];
//! let store = EtcdStore::connect(&endpoints, Duration::from_secs(5)).await?;
//! let member = Member::new(store, MembershipConfig::new("prod", "node-1", "10.0.0.1:50051"))?;
//! member.join().await?;
//! let mut lease = member.lease_state();
//! lease.wait_for(|state| matches!(state, LeaseState::Lost { .. })).await?;
//! // Step down from every shard now; a later join gets a new lease.
//! # Ok(())
//! # }
//! ```
//!
//! A node with claims (the coordinator candidacy writes the table once three
//! nodes are members):
//!
//! ```no_run
//! # async fn run(store: atp_cluster::EtcdStore) -> Result<(), Box<dyn std::error::Error>> {
//! use atp_cluster::{Claims, Coordinator, Member, Membership, MembershipConfig, system_clock};
//!
//! let config = MembershipConfig::new("prod", "node-1", "10.0.0.1:50051");
//! let member = Member::new(store.clone(), config.clone())?;
//! let claims = Claims::new(store.clone(), config.clone(), member.lease_state())?;
//! let _coordinator = Coordinator::new(
//!     store, config, 3, system_clock(), member.lease_state(), member.members(),
//! )?;
//! member.join().await?;
//! let view = claims.view();
//! // Per request for `shard` carrying the client's epoch:
//! let epoch = view.admit(17, Some(42), tokio::time::Instant::now());
//! # let _ = epoch;
//! # Ok(())
//! # }
//! ```

mod assignment;
mod claims;
mod cluster_config;
mod coordinator;
mod etcd;
mod handoff;
mod keepalive;
mod member_watch;
mod membership;
#[cfg(feature = "testing")]
pub mod memory;
mod ownership;
mod reassign;
mod shard_map;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use assignment::{
    Assignment, AssignmentError, ClusterKeys, SHARD_COUNT, placement_moves, rendezvous,
    rendezvous_owner, rendezvous_score,
};
pub use claims::Claims;
pub use cluster_config::{
    ClusterConfig, ConfigEntry, ConfigWatch, PUBLISHING_PREFIX, publish_initial, read_config,
};
pub use coordinator::{Clock, Coordinator, system_clock};
pub use etcd::{EtcdKeeper, EtcdStore, EtcdWatch};
pub use handoff::{HandOver, HandOverError, assigned_owner, claim_of, hand_over};
pub use membership::{
    LeaseState, LostReason, Member, Members, Membership, MembershipConfig, MembershipError,
};
pub use ownership::{Ownership, OwnershipView, Refusal, ShardState};
pub use reassign::{ReassignError, ReassignRequest, ReassignTarget, Reassigned, reassign};
pub use shard_map::{Claim, ShardMap};
pub use store::{Store, StoreError};
