//! ReassignShards: what to move and who asks. Whether the move is allowed
//! (cluster mode, `accept_loss`, the node dead past its grace period) is
//! decided by the server, not here.

use atp_core::CoreError;
use atp_core::hash::SHARD_COUNT;

use super::Violations;
use crate::v1;

/// The most characters an operator name may have.
pub const MAX_OPERATOR_CHARS: usize = 200;
/// The most characters a node id may have.
pub const MAX_NODE_ID_CHARS: usize = 256;

/// What a ReassignShards moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReassignTarget {
    /// One shard.
    Shard(u32),
    /// Every shard of a node.
    Node(String),
}

/// A validated ReassignShards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassignShards {
    /// What to move.
    pub target: ReassignTarget,
    /// Whether the operator accepts the loss (checked by the server).
    pub accept_loss: bool,
    /// Who asks.
    pub operator: String,
}

/// ReassignShards: a shard in range or a well-formed node id, and an operator.
pub fn parse_reassign_shards(
    message: v1::ReassignShardsRequest,
) -> Result<ReassignShards, CoreError> {
    use v1::reassign_shards_request::Target;
    let mut violations = Violations::default();
    let target = match message.target {
        None => {
            violations.push("target", "must be set: a shard number or a node id");
            None
        }
        Some(Target::Shard(shard)) if shard >= SHARD_COUNT => {
            violations.push("shard", format!("is {shard}; must be 0..{SHARD_COUNT}"));
            None
        }
        Some(Target::Shard(shard)) => Some(ReassignTarget::Shard(shard)),
        Some(Target::NodeId(node)) => {
            if node.is_empty()
                || node.chars().count() > MAX_NODE_ID_CHARS
                || node.contains('/')
                || node.contains(char::is_whitespace)
            {
                violations.push(
                    "node_id",
                    format!("must be 1..={MAX_NODE_ID_CHARS} characters without '/' or whitespace"),
                );
                None
            } else {
                Some(ReassignTarget::Node(node))
            }
        }
    };
    let operator = message.operator.trim().to_owned();
    if operator.is_empty()
        || operator.chars().count() > MAX_OPERATOR_CHARS
        || operator.contains(char::is_control)
    {
        violations.push(
            "operator",
            format!("must be 1..={MAX_OPERATOR_CHARS} characters without control characters"),
        );
    }
    let parsed =
        target.map(|target| ReassignShards { target, accept_loss: message.accept_loss, operator });
    violations.finish(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::reassign_shards_request::Target;

    fn request(target: Option<Target>, operator: &str) -> v1::ReassignShardsRequest {
        v1::ReassignShardsRequest { target, accept_loss: true, operator: operator.into() }
    }

    fn fields(result: Result<ReassignShards, CoreError>) -> Vec<String> {
        match result {
            Err(CoreError::InvalidArgument(violations)) => {
                violations.into_iter().map(|violation| violation.field).collect()
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_shard_or_a_node_and_an_operator() {
        let shard = parse_reassign_shards(request(Some(Target::Shard(7)), " ops@host "));
        let shard = shard.expect("valid");
        assert_eq!(shard.target, ReassignTarget::Shard(7));
        assert_eq!(shard.operator, "ops@host");
        assert!(shard.accept_loss);
        let node = parse_reassign_shards(request(Some(Target::NodeId("n-2".into())), "ops"));
        assert_eq!(node.expect("valid").target, ReassignTarget::Node("n-2".into()));
    }

    #[test]
    fn bad_fields_are_named() {
        let too_big = request(Some(Target::Shard(SHARD_COUNT)), "ops");
        assert_eq!(fields(parse_reassign_shards(too_big)), vec!["shard"]);
        assert_eq!(fields(parse_reassign_shards(request(None, "ops"))), vec!["target"]);
        for node in ["", "a/b", "a b", &"n".repeat(MAX_NODE_ID_CHARS + 1)] {
            let bad = request(Some(Target::NodeId(node.into())), "ops");
            assert_eq!(fields(parse_reassign_shards(bad)), vec!["node_id"], "{node:?}");
        }
        let long = "o".repeat(MAX_OPERATOR_CHARS + 1);
        for operator in ["", "  ", "a\nb", long.as_str()] {
            let bad = request(Some(Target::Shard(1)), operator);
            assert_eq!(fields(parse_reassign_shards(bad)), vec!["operator"], "{operator:?}");
        }
        assert_eq!(fields(parse_reassign_shards(request(None, ""))), vec!["target", "operator"]);
    }
}
