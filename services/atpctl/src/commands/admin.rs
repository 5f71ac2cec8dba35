//! `shards`, `shard` and `ledger`: the operator's view of a node.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use atp_proto::v1::get_shard_request::Target;
use atp_proto::v1::{
    GetShardRequest, LedgerEntry, ListShardsRequest, QueryLedgerRequest, ShardInfo,
};
use serde_json::{Value, json};

use crate::cli::{LedgerArgs, ShardArgs, ShardsArgs};
use crate::client::Context;
use crate::format::{time_ms, with_delta};
use crate::table::{Fields, Table};

pub async fn shards(context: &Context, args: ShardsArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .list_shards(ListShardsRequest { include_empty: args.all })
        .await
        .context("list shards")?;
    context.print(
        || {
            json!({
                "shard_count": response.shard_count,
                "shards": response.shards.iter().map(shard_json).collect::<Vec<_>>(),
            })
        },
        || {
            let mut table = Table::new(&[
                "SHARD>",
                "EPOCH>",
                "SKUS>",
                "POSITIONS>",
                "OPEN_HOLDS>",
                "RESERVATIONS>",
                "MAILBOX>",
                "LAST_SEQ>",
                "NODE",
            ]);
            for shard in &response.shards {
                table.row(vec![
                    shard.shard.to_string(),
                    shard.epoch.to_string(),
                    shard.sku_count.to_string(),
                    shard.position_count.to_string(),
                    shard.open_holds.to_string(),
                    shard.reservation_count.to_string(),
                    format!("{}/{}", shard.mailbox_depth, shard.mailbox_capacity),
                    shard.last_applied_sequence.to_string(),
                    shard.node.clone(),
                ]);
            }
            let listed = response.shards.len();
            format!("{}\n{listed} of {} shards listed\n", table.render(), response.shard_count)
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn shard(context: &Context, args: ShardArgs) -> anyhow::Result<ExitCode> {
    let (target, what) = match (args.shard, args.sku) {
        (Some(number), _) => (Target::Shard(number), format!("shard {number}")),
        (None, Some(sku)) => (Target::Sku(sku.clone()), format!("shard of sku {sku}")),
        // clap's argument group makes one of the two required.
        (None, None) => return Err(anyhow!("give a shard number or --sku")),
    };
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .get_shard(GetShardRequest { target: Some(target) })
        .await
        .with_context(|| format!("get {what}"))?;
    let shard = response.shard.ok_or_else(|| anyhow!("the server's answer has no shard"))?;
    context.print(
        || shard_json(&shard),
        || {
            let mut fields = Fields::new();
            fields
                .add("shard", shard.shard)
                .add("epoch", shard.epoch)
                .add("node", &shard.node)
                .add("skus", shard.sku_count)
                .add("positions", shard.position_count)
                .add("open holds", shard.open_holds)
                .add("reservations", shard.reservation_count)
                .add("mailbox", format!("{} of {}", shard.mailbox_depth, shard.mailbox_capacity))
                .add("last applied sequence", shard.last_applied_sequence);
            fields.render()
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn ledger(context: &Context, args: LedgerArgs) -> anyhow::Result<ExitCode> {
    let what = [args.sku.as_deref(), args.location.as_deref(), args.cause.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    let request = QueryLedgerRequest {
        sku: args.sku.unwrap_or_default(),
        location_id: args.location.unwrap_or_default(),
        // 0 asks for the server's default.
        limit: args.limit.unwrap_or(0),
        cause_id: args.cause.unwrap_or_default(),
        from_ms: args.from_ms.unwrap_or(0),
        to_ms: args.to_ms.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
    };
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .query_ledger(request)
        .await
        .with_context(|| format!("query ledger of {what}"))?;
    context.print(
        || {
            json!({
                "epoch": response.epoch,
                "entries": response.entries.iter().map(ledger_entry_json).collect::<Vec<_>>(),
                "next_page_token": response.next_page_token,
            })
        },
        || {
            let mut text = ledger_text(&response.entries);
            if !response.next_page_token.is_empty() {
                text.push_str(&format!("next page: --page-token {}\n", response.next_page_token));
            }
            text
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn shard_json(shard: &ShardInfo) -> Value {
    json!({
        "shard": shard.shard,
        "epoch": shard.epoch,
        "sku_count": shard.sku_count,
        "position_count": shard.position_count,
        "open_holds": shard.open_holds,
        "reservation_count": shard.reservation_count,
        "mailbox_depth": shard.mailbox_depth,
        "mailbox_capacity": shard.mailbox_capacity,
        "last_applied_sequence": shard.last_applied_sequence,
        "node": shard.node,
    })
}

fn ledger_entry_json(entry: &LedgerEntry) -> Value {
    json!({
        "sequence": entry.sequence,
        "at_ms": entry.at_ms,
        "sku": entry.sku,
        "location_id": entry.location_id,
        "cause_id": entry.cause_id,
        "kind": entry.kind,
        "on_hand_delta": entry.on_hand_delta,
        "reserved_delta": entry.reserved_delta,
        "committed_delta": entry.committed_delta,
        "unavailable_delta": entry.unavailable_delta,
        "incoming_delta": entry.incoming_delta,
        "on_hand": entry.on_hand,
        "reserved": entry.reserved,
        "committed": entry.committed,
        "unavailable": entry.unavailable,
        "incoming": entry.incoming,
    })
}

/// One row per entry: each bucket after the change, with the change in brackets.
fn ledger_text(entries: &[LedgerEntry]) -> String {
    let mut table = Table::new(&[
        "SEQ>",
        "AT",
        "SKU",
        "LOCATION",
        "KIND",
        "CAUSE",
        "ON_HAND>",
        "RESERVED>",
        "COMMITTED>",
        "UNAVAILABLE>",
        "INCOMING>",
    ]);
    for entry in entries {
        table.row(vec![
            entry.sequence.to_string(),
            time_ms(entry.at_ms),
            entry.sku.clone(),
            entry.location_id.clone(),
            entry.kind.clone(),
            entry.cause_id.clone(),
            with_delta(entry.on_hand, entry.on_hand_delta),
            with_delta(entry.reserved, entry.reserved_delta),
            with_delta(entry.committed, entry.committed_delta),
            with_delta(entry.unavailable, entry.unavailable_delta),
            with_delta(entry.incoming, entry.incoming_delta),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_rows_show_values_and_their_changes() {
        let entry = LedgerEntry {
            sequence: 7,
            at_ms: 1_700_000_000_000,
            sku: "s".into(),
            location_id: "dc".into(),
            cause_id: "r1".into(),
            kind: "reserve".into(),
            reserved_delta: 2,
            on_hand: 10,
            reserved: 2,
            ..Default::default()
        };
        let text = ledger_text(&[entry]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "SEQ  AT                        SKU  LOCATION  KIND     CAUSE  ON_HAND  RESERVED  COMMITTED  UNAVAILABLE  INCOMING"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "  7  2023-11-14T22:13:20.000Z  s    dc        reserve  r1          10    2 (+2)          0            0         0"
            )
        );
    }
}
