//! The node's errors as gRPC statuses.

use atp_proto::{Reason, status_of};
use atp_shard::NodeError;
use tonic::Status;

/// The gRPC status of a node error. One exhaustive match: domain errors go
/// through [`atp_proto::status_of`], the node's own through this table;
/// every status is built by its [`Reason`].
pub fn node_status(error: NodeError) -> Status {
    let message = error.to_string();
    match error {
        NodeError::Core(error) => status_of(error),
        NodeError::Overloaded { .. } => atp_proto::status::overloaded(message),
        // Not retryable by waiting: an operator must free space and restart
        // the node. Reads (availability, ledger) go on meanwhile.
        NodeError::DiskFull(_) => Reason::DiskFull.plain(message),
        NodeError::ShuttingDown => Reason::ShuttingDown.plain(message),
        NodeError::Recovering => Reason::Recovering.plain(message),
        NodeError::StorageFailed(_) => Reason::StorageFailed.plain(message),
        // Retryable: the shard's owner is unreachable for now.
        NodeError::ShardUnavailable { shard, .. } => Reason::FailingClosed.status(
            message,
            [("shard", shard.to_string())],
            tonic_types::ErrorDetails::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use atp_core::CoreError;

    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn each_node_error_has_its_code() {
        let cases = [
            (NodeError::Core(CoreError::NotFound("r-1".into())), Code::NotFound),
            (
                NodeError::Core(CoreError::invalid("sku", "must not be empty")),
                Code::InvalidArgument,
            ),
            (NodeError::Overloaded { shard: 3 }, Code::ResourceExhausted),
            (NodeError::ShuttingDown, Code::Unavailable),
            (NodeError::Recovering, Code::Unavailable),
            (NodeError::StorageFailed("fsync".into()), Code::Unavailable),
            (NodeError::DiskFull("no space".into()), Code::ResourceExhausted),
        ];
        for (error, code) in cases {
            assert_eq!(node_status(error.clone()).code(), code, "{error:?}");
        }
    }

    #[test]
    fn overload_names_the_shard_and_suggests_a_retry() {
        let status = node_status(NodeError::Overloaded { shard: 3 });
        assert!(status.message().contains("shard 3"), "{}", status.message());
        assert!(status.get_details_retry_info().is_some());
    }
}
