//! Shard actors: the in-memory, single-writer home of every SKU's state.
//!
//! One tokio task per virtual shard owns an [`atp_core::shard::ShardState`]
//! and takes work from a bounded mailbox. It drains a batch, applies it in
//! order to the pure state machine, publishes the changed SKUs to a shared read
//! view, and only then replies (the group commit of the durability issue goes
//! between "apply" and "publish/reply"). A full mailbox answers
//! [`NodeError::Overloaded`] at once.
//!
//! [`Node`] is the API the gRPC layer calls: it routes each request to its
//! shard(s), coordinates multi-shard reservations from the reservation's home
//! shard, and serves availability reads from the read view without queuing
//! behind writes.

mod actor;
mod changes;
mod clock;
mod committer;
mod doubts;
mod error;
mod node;
mod peers;
mod reservations;
mod write_log;

pub use changes::{CHANGE_FEED_CAPACITY, Changed};
pub use clock::Clock;
pub use committer::CommitterStats;
pub use error::NodeError;
pub use node::{CheckpointRound, Node, NodeConfig, RecoveryStats, SINGLE_NODE_EPOCH, ShardInfo};
pub use peers::{
    PeerError, PeerFuture, Peers, WireRefusal, decode, decode_results, encode, encode_results,
};
pub use reservations::{MAX_RESERVATIONS_READ_PER_PAGE, ReservationPage};
pub use write_log::WriteLogConfig;
