//! `reassign --accept-loss`: the operator's way to move a dead node's shards
//! to live nodes when it will not come back on its data directory. What the
//! dead node made durable and nobody else holds is lost, hence the explicit
//! flag, the grace period and the audit record.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tokio::time::timeout;

use crate::assignment::{Assignment, AssignmentError, ClusterKeys, SHARD_COUNT, rendezvous_owner};
use crate::membership::ms;
use crate::store::{Compare, Store, StoreError, Txn, TxnOp};

/// What to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReassignTarget {
    /// One shard (its assigned node must be dead).
    Shard(u32),
    /// Every shard of a dead node.
    Node(String),
}

/// One reassignment, as the operator asked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassignRequest {
    /// The cluster's name.
    pub cluster: String,
    /// What to move.
    pub target: ReassignTarget,
    /// Must be `true`: the operator accepts losing what only the dead node held.
    pub accept_loss: bool,
    /// How long the node must have been seen down (by the coordinator) first.
    pub grace_ms: u64,
    /// Who asks (recorded in the audit entry).
    pub operator: String,
    /// The caller's clock, ms since the Unix epoch (the grace period and the
    /// audit entry's time are measured on it).
    pub now_unix_ms: u64,
    /// How long each store call may take.
    pub request_timeout_ms: u64,
}

/// What a reassignment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassigned {
    /// The revision of the transaction (the new table's mod revision).
    pub revision: i64,
    /// Shard → (old node, new node).
    pub moves: BTreeMap<u32, (String, String)>,
    /// The audit entry written in the same transaction.
    pub audit_key: String,
}

/// Why a reassignment was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReassignError {
    /// `accept_loss` was not set.
    #[error("reassigning a dead node's shards may lose data: pass --accept-loss")]
    LossNotAccepted,
    /// No assignment table is written yet.
    #[error("no assignment table yet")]
    NoTable,
    /// The table could not be read.
    #[error("unreadable assignment table")]
    BadTable(#[source] AssignmentError),
    /// The shard does not exist.
    #[error("shard {0} does not exist (0..{SHARD_COUNT})")]
    UnknownShard(u32),
    /// The node has no shards.
    #[error("node {0} has no shards")]
    NoShards(String),
    /// The node's key exists: it is alive.
    #[error("node {0} is alive")]
    NodeAlive(String),
    /// The coordinator has not marked the node down (yet).
    #[error("node {0} is not marked down by the coordinator")]
    NotMarkedDown(String),
    /// The node is down for less than the grace period.
    #[error("node {node} is down for {down_ms} ms, less than the grace period of {grace_ms} ms")]
    WithinGrace {
        /// The node.
        node: String,
        /// For how long it has been down.
        down_ms: u64,
        /// The grace period.
        grace_ms: u64,
    },
    /// A shard to move is claimed (its holder's lease lives).
    #[error("shard {shard} is claimed by {node}")]
    StillClaimed {
        /// The shard.
        shard: u32,
        /// The holder.
        node: String,
    },
    /// No live node to move the shards to.
    #[error("no live node to take the shards")]
    NoLiveNodes,
    /// The table, the node or its mark changed since they were read: nothing
    /// was written; check again and retry.
    #[error("the assignment or the node changed concurrently; nothing was written")]
    Conflict,
    /// A store call failed.
    #[error("failed to {operation}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

async fn call<T>(
    limit_ms: u64,
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ReassignError> {
    let limit = ms(limit_ms);
    match timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(ReassignError::Store { operation, source }),
        Err(_) => Err(ReassignError::Store { operation, source: StoreError::Timeout(limit) }),
    }
}

/// Moves the target's shards from their dead node to live nodes (rendezvous
/// hashing over the live nodes), in one transaction guarded by the table's
/// mod revision, the node key's absence and the down mark's mod revision,
/// together with the audit entry `/atp/<cluster>/audit/<revision read>`.
///
/// The dead node's claims went with its lease (its node key, bound to the
/// same lease, is absent); a claim still present on a shard to move means
/// its holder lives, and the move is refused. The new owners claim the
/// shards under new epochs; the old node, if it ever comes back, finds them
/// assigned elsewhere.
pub async fn reassign<S: Store>(
    store: &S,
    request: &ReassignRequest,
) -> Result<Reassigned, ReassignError> {
    if !request.accept_loss {
        return Err(ReassignError::LossNotAccepted);
    }
    let keys = ClusterKeys::new(&request.cluster);
    let limit = request.request_timeout_ms;
    let (table_kv, read_revision) =
        call(limit, "read the assignment", store.get(&keys.assignment())).await?;
    let table_kv = table_kv.ok_or(ReassignError::NoTable)?;
    let mut table = Assignment::decode(&table_kv.value).map_err(ReassignError::BadTable)?;
    let (node, shards): (String, Vec<u32>) = match &request.target {
        ReassignTarget::Shard(shard) => {
            if *shard >= SHARD_COUNT {
                return Err(ReassignError::UnknownShard(*shard));
            }
            (table.owner(*shard).to_owned(), vec![*shard])
        }
        ReassignTarget::Node(node) => (node.clone(), table.shards_of(node).collect()),
    };
    if shards.is_empty() {
        return Err(ReassignError::NoShards(node));
    }

    let (node_kv, _) = call(limit, "read the node key", store.get(&keys.node(&node))).await?;
    if node_kv.is_some() {
        return Err(ReassignError::NodeAlive(node));
    }
    let (mark, _) = call(limit, "read the down mark", store.get(&keys.down(&node))).await?;
    let Some(mark) = mark else { return Err(ReassignError::NotMarkedDown(node)) };
    let since: u64 = String::from_utf8_lossy(&mark.value).parse().unwrap_or(u64::MAX);
    let down_ms = request.now_unix_ms.saturating_sub(since);
    if down_ms < request.grace_ms {
        return Err(ReassignError::WithinGrace { node, down_ms, grace_ms: request.grace_ms });
    }
    let claims = call(limit, "read the claims", store.get_prefix(&keys.claims_prefix())).await?;
    for kv in &claims.kvs {
        let Some(shard) = keys.shard_of_claim(&kv.key) else { continue };
        if shards.contains(&shard) {
            let holder = String::from_utf8_lossy(&kv.value).into_owned();
            return Err(ReassignError::StillClaimed { shard, node: holder });
        }
    }
    let live = call(limit, "read the members", store.get_prefix(&keys.nodes_prefix())).await?;
    let live: Vec<&str> = live
        .kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&keys.nodes_prefix()))
        .filter(|live| *live != node)
        .collect();

    let mut moves = BTreeMap::new();
    for shard in &shards {
        let to =
            rendezvous_owner(*shard, live.iter().copied()).ok_or(ReassignError::NoLiveNodes)?;
        moves.insert(*shard, (node.clone(), to.to_owned()));
        table.set_owner(*shard, to);
    }
    let audit_key = keys.audit(read_revision);
    let audit = audit_entry(request, &node, since, table_kv.mod_revision, &moves);
    let mut success =
        vec![TxnOp::put(keys.assignment(), table.encode(), 0), TxnOp::put(&audit_key, audit, 0)];
    if table.shards_of(&node).next().is_none() {
        success.push(TxnOp::delete(keys.down(&node)));
    }
    let txn = Txn {
        compares: vec![
            Compare::mod_revision(keys.assignment(), table_kv.mod_revision),
            Compare::absent(keys.node(&node)),
            Compare::mod_revision(keys.down(&node), mark.mod_revision),
            Compare::absent(&audit_key),
        ],
        success,
        failure: Vec::new(),
    };
    let outcome = call(limit, "write the new assignment", store.txn(txn)).await?;
    if !outcome.succeeded {
        return Err(ReassignError::Conflict);
    }
    // Logged by the caller, which handles it (atp-server logs every call at
    // `warn` with the operator, the target and the moves).
    Ok(Reassigned { revision: outcome.revision, moves, audit_key })
}

/// The audit entry: `name=value` lines, one move per `moved=` line
/// (`shard from->to`).
fn audit_entry(
    request: &ReassignRequest,
    node: &str,
    down_since_unix_ms: u64,
    previous_table_revision: i64,
    moves: &BTreeMap<u32, (String, String)>,
) -> String {
    let target = match &request.target {
        ReassignTarget::Shard(shard) => format!("shard {shard}"),
        ReassignTarget::Node(node) => format!("node {node}"),
    };
    let mut entry = format!(
        "action=shard reassign --accept-loss\noperator={}\nat_unix_ms={}\ntarget={target}\n\
         dead_node={node}\ndown_since_unix_ms={down_since_unix_ms}\ngrace_ms={}\n\
         previous_table_revision={previous_table_revision}\n",
        request.operator, request.now_unix_ms, request.grace_ms
    );
    for (shard, (from, to)) in moves {
        let _ = writeln!(entry, "moved={shard} {from}->{to}");
    }
    entry
}
