//! `cluster members` and `cluster shards`: the cluster as the node asked
//! sees it. Any node answers for the whole cluster; a single node answers a
//! one-member map. `shard reassign`: a dead node's shards to live nodes,
//! through any node.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use atp_proto::v1::reassign_shards_request::Target;
use atp_proto::v1::{
    ClusterShard, DrainNodeRequest, GetClusterRequest, GetClusterResponse, MoveShardRequest,
    ReassignShardsRequest, ShardView,
};
use serde_json::{Value, json};

use crate::cli::{ClusterShardsArgs, DrainArgs, MoveArgs, ReassignArgs};
use crate::client::Context;
use crate::table::Table;

async fn get_cluster(context: &Context) -> anyhow::Result<GetClusterResponse> {
    let clients = context.connect().await?;
    clients.rpc().get_cluster(GetClusterRequest {}).await.context("get cluster")
}

fn mode(response: &GetClusterResponse) -> String {
    if response.cluster_mode {
        format!("cluster {:?} as seen by node {}", response.cluster, response.node_id)
    } else {
        format!("single node {} (no cluster configured)", response.node_id)
    }
}

pub async fn members(context: &Context) -> anyhow::Result<ExitCode> {
    let response = get_cluster(context).await?;
    context.print(
        || {
            json!({
                "cluster_mode": response.cluster_mode,
                "cluster": response.cluster,
                "node_id": response.node_id,
                "forwarded_requests": response.forwarded_requests,
                "moving_shards": response.moving_shards,
                "members": response.members.iter().map(|member| json!({
                    "node_id": member.node_id,
                    "address": member.address,
                    "lease_state": member.lease_state,
                    "answering": member.answering,
                    "shards": owned(&response, &member.node_id),
                })).collect::<Vec<_>>(),
            })
        },
        || {
            let mut table = Table::new(&["NODE", "ADDRESS", "LEASE", "SHARDS>", "ANSWERING"]);
            for member in &response.members {
                table.row(vec![
                    member.node_id.clone(),
                    member.address.clone(),
                    member.lease_state.clone(),
                    owned(&response, &member.node_id).to_string(),
                    if member.answering { "yes" } else { "" }.to_owned(),
                ]);
            }
            let moving = if response.moving_shards.is_empty() {
                String::new()
            } else {
                let shards: Vec<String> =
                    response.moving_shards.iter().map(u32::to_string).collect();
                format!("; moving away now: shards {}", shards.join(", "))
            };
            format!(
                "{}\n{} members; {}; {} requests forwarded by {}{moving}\n",
                table.render(),
                response.members.len(),
                mode(&response),
                response.forwarded_requests,
                response.node_id,
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// The shards the map gives `node` (claimed, or assigned and unclaimed).
fn owned(response: &GetClusterResponse, node: &str) -> usize {
    response.shards.iter().filter(|shard| shard.owner == node).count()
}

fn view_name(shard: &ClusterShard) -> &'static str {
    match shard.view() {
        ShardView::Serving => "serving",
        ShardView::FailingClosed => "failing_closed",
        ShardView::NotOwned => "not_owned",
        ShardView::Unspecified => "unknown",
    }
}

fn shard_json(shard: &ClusterShard) -> Value {
    json!({
        "shard": shard.shard,
        "owner": shard.owner,
        "epoch": shard.epoch,
        "view": view_name(shard),
    })
}

pub async fn shards(context: &Context, args: ClusterShardsArgs) -> anyhow::Result<ExitCode> {
    let response = get_cluster(context).await?;
    let shown: Vec<&ClusterShard> = response
        .shards
        .iter()
        .filter(|shard| args.node.as_ref().is_none_or(|node| &shard.owner == node))
        .collect();
    context.print(
        || {
            json!({
                "cluster_mode": response.cluster_mode,
                "cluster": response.cluster,
                "node_id": response.node_id,
                "shard_map_revision": response.shard_map_revision,
                "shard_map_confirmed": response.shard_map_confirmed,
                "shards": shown.iter().map(|shard| shard_json(shard)).collect::<Vec<_>>(),
            })
        },
        || {
            let mut table = Table::new(&["SHARD>", "OWNER", "EPOCH>", "VIEW"]);
            for shard in &shown {
                table.row(vec![
                    shard.shard.to_string(),
                    shard.owner.clone(),
                    shard.epoch.to_string(),
                    view_name(shard).to_owned(),
                ]);
            }
            let confirmed = if response.shard_map_confirmed { "" } else { " (not confirmed)" };
            format!(
                "{}\n{} of {} shards listed; {}; map revision {}{confirmed}\n",
                table.render(),
                shown.len(),
                response.shards.len(),
                mode(&response),
                response.shard_map_revision,
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// `shard reassign`: refused here without `--accept-loss` (nothing is sent).
pub async fn reassign(context: &Context, args: ReassignArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.shard, &args.node) {
        (Some(shard), _) => Target::Shard(shard),
        (None, Some(node)) => Target::NodeId(node.clone()),
        // clap's argument group makes one of the two required.
        (None, None) => return Err(anyhow!("give --shard N or --node NODE_ID")),
    };
    let what = match &target {
        Target::Shard(shard) => format!("shard {shard}"),
        Target::NodeId(node) => format!("the shards of node {node}"),
    };
    if !args.accept_loss {
        return Err(anyhow!(
            "refusing to reassign {what} without --accept-loss: a dead node's shards wait for it \
             to come back on its data directory; moving them gives them to live nodes that start \
             them empty, so the stock, holds and reservations only that node held are lost to \
             the cluster. Pass --accept-loss if it will not come back."
        ));
    }
    let operator = args.operator.unwrap_or_else(default_operator);
    let clients = context.connect().await?;
    let request = ReassignShardsRequest { target: Some(target), accept_loss: true, operator };
    let response =
        clients.rpc().reassign_shards(request).await.with_context(|| format!("reassign {what}"))?;
    context.print(
        || {
            json!({
                "moves": response.moves.iter().map(|shard_move| json!({
                    "shard": shard_move.shard,
                    "from": shard_move.from_node,
                    "to": shard_move.to_node,
                })).collect::<Vec<_>>(),
                "revision": response.revision,
                "audit_key": response.audit_key,
            })
        },
        || {
            let mut text = String::new();
            for shard_move in &response.moves {
                let _ = writeln!(
                    text,
                    "{}: {} \u{2192} {}",
                    shard_move.shard, shard_move.from_node, shard_move.to_node
                );
            }
            let _ = writeln!(
                text,
                "{} shards reassigned at revision {}; audit entry {}",
                response.moves.len(),
                response.revision,
                response.audit_key
            );
            text
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// `shard move SHARD --to NODE_ID`: a planned handoff, run by the shard's
/// owner (the asked node forwards it there).
pub async fn move_shard(context: &Context, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let request = MoveShardRequest { shard: args.shard, to_node: args.to.clone() };
    let response = clients
        .rpc()
        .move_shard(request)
        .await
        .with_context(|| format!("move shard {} to {}", args.shard, args.to))?;
    context.print(
        || {
            json!({
                "shard": response.shard,
                "from": response.from_node,
                "to": response.to_node,
                "from_epoch": response.from_epoch,
                "to_epoch": response.to_epoch,
                "records": response.records,
                "elapsed_ms": response.elapsed_ms,
            })
        },
        || {
            format!(
                "shard {}: {} (epoch {}) \u{2192} {} (epoch {}), {} records, {} ms\n",
                response.shard,
                response.from_node,
                response.from_epoch,
                response.to_node,
                response.to_epoch,
                response.records,
                response.elapsed_ms
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// `node drain NODE_ID`: every shard of the node moved to the others (the
/// asked node forwards it to the drained one).
pub async fn drain(context: &Context, args: DrainArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let request =
        DrainNodeRequest { node_id: args.node.clone(), max_parallel: args.parallel.unwrap_or(0) };
    let response = clients
        .rpc()
        .drain_node(request)
        .await
        .with_context(|| format!("drain node {}", args.node))?;
    context.print(
        || {
            json!({
                "node": args.node,
                "moves": response.moves.iter().map(|moved| json!({
                    "shard": moved.shard,
                    "to": moved.to_node,
                    "to_epoch": moved.to_epoch,
                    "elapsed_ms": moved.elapsed_ms,
                })).collect::<Vec<_>>(),
                "failures": response.failures.iter().map(|failed| json!({
                    "shard": failed.shard,
                    "message": failed.message,
                })).collect::<Vec<_>>(),
                "elapsed_ms": response.elapsed_ms,
            })
        },
        || {
            let mut text = String::new();
            for failed in &response.failures {
                let _ = writeln!(text, "shard {}: not moved: {}", failed.shard, failed.message);
            }
            let _ = writeln!(
                text,
                "node {}: {} shards moved, {} not, in {} ms",
                args.node,
                response.moves.len(),
                response.failures.len(),
                response.elapsed_ms
            );
            text
        },
    );
    Ok(if response.failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `$USER@hostname`, as far as they are known.
fn default_operator() -> String {
    let user = std::env::var("USER").ok().filter(|user| !user.is_empty());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|host| !host.is_empty()));
    format!(
        "{}@{}",
        user.as_deref().unwrap_or("unknown-user"),
        host.as_deref().unwrap_or("unknown-host")
    )
}
