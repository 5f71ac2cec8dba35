//! `cluster members` and `cluster shards`: the cluster as the node asked
//! sees it. Any node answers for the whole cluster; a single node answers a
//! one-member map.

use std::process::ExitCode;

use anyhow::Context as _;
use atp_proto::v1::{ClusterShard, GetClusterRequest, GetClusterResponse, ShardView};
use serde_json::{Value, json};

use crate::cli::ClusterShardsArgs;
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
                "members": response.members.iter().map(|member| json!({
                    "node_id": member.node_id,
                    "address": member.address,
                    "lease_state": member.lease_state,
                    "answering": member.answering,
                })).collect::<Vec<_>>(),
            })
        },
        || {
            let mut table = Table::new(&["NODE", "ADDRESS", "LEASE", "ANSWERING"]);
            for member in &response.members {
                table.row(vec![
                    member.node_id.clone(),
                    member.address.clone(),
                    member.lease_state.clone(),
                    if member.answering { "yes" } else { "" }.to_owned(),
                ]);
            }
            format!("{}\n{} members; {}\n", table.render(), response.members.len(), mode(&response))
        },
    );
    Ok(ExitCode::SUCCESS)
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
