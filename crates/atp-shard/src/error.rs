//! Errors of the node layer.

use atp_core::CoreError;

/// Why a node refused or failed a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The domain refused the request.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A shard's mailbox is full; retry later.
    #[error("shard {shard} is overloaded (mailbox full); retry later")]
    Overloaded {
        /// The shard.
        shard: u32,
    },
    /// The node is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node is loading its state from disk; retry shortly.
    #[error("the node is recovering its state; retry shortly")]
    Recovering,
    /// A durable write failed: nothing of it was acknowledged and the node
    /// takes no more writes until it restarts and recovers.
    #[error("storage failed; the node must restart: {0}")]
    StorageFailed(String),
    /// The disk is full: writes are refused (nothing of the failed one was
    /// acknowledged); reads go on. Free space, then restart the node.
    #[error("disk full: writes are refused until space is freed and the node restarts ({0})")]
    DiskFull(String),
    /// A shard another node owns could not be reached in time (cluster
    /// mode): nothing was promised; retry later.
    #[error("shard {shard} cannot be reached now; retry later ({reason})")]
    ShardUnavailable {
        /// The shard.
        shard: u32,
        /// Why.
        reason: String,
    },
}

impl From<crate::peers::PeerError> for NodeError {
    fn from(error: crate::peers::PeerError) -> Self {
        match error {
            crate::peers::PeerError::Unavailable { shard, reason } => {
                NodeError::ShardUnavailable { shard, reason }
            }
        }
    }
}
