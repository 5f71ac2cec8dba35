//! `availability`: per-location buckets and per-channel ATP of SKUs.

use std::process::ExitCode;

use anyhow::Context as _;
use atp_core::ids::MAX_SKUS_PER_QUERY;
use atp_proto::v1::{GetAvailabilityRequest, LocationAvailability, SkuAvailability};
use atp_proto::{Reason, code_name, reason_of, status_from_rpc};
use serde_json::{Value, json};

use crate::cli::AvailabilityArgs;
use crate::client::Context;
use crate::format::time_ms;
use crate::table::Table;

/// Columns of a position, shared with the stock-event result.
pub const POSITION_COLUMNS: [&str; 8] = [
    "ON_HAND>",
    "RESERVED>",
    "COMMITTED>",
    "UNAVAILABLE>",
    "SAFETY>",
    "INCOMING>",
    "ATP>",
    "SHORTFALL>",
];

pub async fn availability(context: &Context, args: AvailabilityArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let client = clients.rpc();
    let mut skus = Vec::with_capacity(args.skus.len());
    // The server takes at most MAX_SKUS_PER_QUERY per call.
    for chunk in args.skus.chunks(MAX_SKUS_PER_QUERY) {
        let request = GetAvailabilityRequest {
            skus: chunk.to_vec(),
            location_ids: args.locations.clone(),
            channel_ids: args.channels.clone(),
        };
        let response = client.get_availability(request).await.context("get availability")?;
        skus.extend(response.skus);
    }
    context.print(
        || json!({ "skus": skus.iter().map(sku_json).collect::<Vec<_>>() }),
        || skus.iter().map(sku_text).collect::<Vec<_>>().join("\n"),
    );
    Ok(ExitCode::SUCCESS)
}

/// The eight numbers of a position, in [`POSITION_COLUMNS`] order.
pub fn position_cells(position: &LocationAvailability) -> Vec<String> {
    [
        position.on_hand,
        position.reserved,
        position.committed,
        position.unavailable,
        position.safety_stock,
        position.incoming,
        position.atp,
        position.shortfall,
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

pub fn position_json(position: &LocationAvailability) -> Value {
    let batches: Vec<Value> = position
        .incoming_batches
        .iter()
        .map(|batch| json!({ "quantity": batch.quantity, "expected_at_ms": batch.expected_at_ms }))
        .collect();
    json!({
        "location_id": position.location_id,
        "on_hand": position.on_hand,
        "reserved": position.reserved,
        "committed": position.committed,
        "unavailable": position.unavailable,
        "safety_stock": position.safety_stock,
        "incoming": position.incoming,
        "atp": position.atp,
        "shortfall": position.shortfall,
        "incoming_batches": batches,
    })
}

/// A SKU's per-SKU error (cluster mode: it could not be read): its code
/// name, reason and message.
fn sku_error(sku: &SkuAvailability) -> Option<(&'static str, &'static str, String)> {
    let status = status_from_rpc(sku.error.clone()?);
    let reason = reason_of(&status).map(Reason::name).unwrap_or_default();
    Some((code_name(status.code()), reason, status.message().to_owned()))
}

fn sku_json(sku: &SkuAvailability) -> Value {
    if let Some((code, reason, message)) = sku_error(sku) {
        return json!({
            "sku": sku.sku,
            "shard": sku.shard,
            "error": { "code": code, "reason": reason, "message": message },
        });
    }
    let channels: Vec<Value> = sku
        .channels
        .iter()
        .map(|channel| {
            json!({
                "channel_id": channel.channel_id,
                "atp": channel.atp,
                "published": channel.published,
            })
        })
        .collect();
    json!({
        "sku": sku.sku,
        "shard": sku.shard,
        "epoch": sku.epoch,
        "locations": sku.locations.iter().map(position_json).collect::<Vec<_>>(),
        "channels": channels,
    })
}

/// `sku  (shard N, epoch E)`, the location table, incoming batches if any, the channel table;
/// for a SKU that could not be read: `sku  (shard N)  not read: REASON (CODE): message`.
fn sku_text(sku: &SkuAvailability) -> String {
    if let Some((code, reason, message)) = sku_error(sku) {
        return format!(
            "{}  (shard {})  not read: {reason} ({code}): {message}\n",
            sku.sku, sku.shard
        );
    }
    let mut out = format!("{}  (shard {}, epoch {})\n", sku.sku, sku.shard, sku.epoch);
    let mut columns = vec!["LOCATION"];
    columns.extend(POSITION_COLUMNS);
    let mut locations = Table::new(&columns);
    let mut incoming = Table::new(&["LOCATION", "INCOMING>", "EXPECTED_AT"]);
    for position in &sku.locations {
        let mut cells = vec![position.location_id.clone()];
        cells.extend(position_cells(position));
        locations.row(cells);
        for batch in &position.incoming_batches {
            incoming.row(vec![
                position.location_id.clone(),
                batch.quantity.to_string(),
                time_ms(batch.expected_at_ms),
            ]);
        }
    }
    if locations.is_empty() {
        out.push_str("(no positions)\n");
    } else {
        out.push_str(&locations.render());
    }
    if !incoming.is_empty() {
        out.push('\n');
        out.push_str(&incoming.render());
    }
    if !sku.channels.is_empty() {
        let mut channels = Table::new(&["CHANNEL", "ATP>", "PUBLISHED>"]);
        for channel in &sku.channels {
            channels.row(vec![
                channel.channel_id.clone(),
                channel.atp.to_string(),
                channel.published.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&channels.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::{ChannelAvailability, IncomingBatch};

    use super::*;

    #[test]
    fn a_sku_shows_locations_incoming_and_channels() {
        let sku = SkuAvailability {
            sku: "sku-1".into(),
            shard: 17,
            epoch: 1,
            locations: vec![LocationAvailability {
                location_id: "dc-east".into(),
                on_hand: 10,
                reserved: 2,
                safety_stock: 1,
                incoming: 5,
                atp: 7,
                incoming_batches: vec![IncomingBatch {
                    quantity: 5,
                    expected_at_ms: 1_700_000_000_000,
                }],
                ..Default::default()
            }],
            channels: vec![ChannelAvailability {
                channel_id: "web".into(),
                atp: 7,
                published: 5,
                ..Default::default()
            }],
            error: None,
        };
        let text = sku_text(&sku);
        let expected = "\
sku-1  (shard 17, epoch 1)
LOCATION  ON_HAND  RESERVED  COMMITTED  UNAVAILABLE  SAFETY  INCOMING  ATP  SHORTFALL
dc-east        10         2          0            0       1         5    7          0

LOCATION  INCOMING  EXPECTED_AT
dc-east          5  2023-11-14T22:13:20.000Z

CHANNEL  ATP  PUBLISHED
web        7          5
";
        assert_eq!(text, expected);
        let value = sku_json(&sku);
        assert_eq!(value["locations"][0]["atp"], 7);
        assert_eq!(value["channels"][0]["channel_id"], "web");
        assert_eq!(value["channels"][0]["published"], 5);
    }

    #[test]
    fn a_sku_that_could_not_be_read_shows_its_error() {
        let status = Reason::NotOwner.status(
            "shard 3 is owned by node \"n2\" at \"\"; send it there",
            [("shard", "3".to_owned()), ("owner", "n2".to_owned())],
            tonic_types::ErrorDetails::new(),
        );
        let sku = SkuAvailability {
            sku: "sku-9".into(),
            shard: 3,
            error: Some(atp_proto::rpc_status(&status)),
            ..Default::default()
        };
        assert_eq!(
            sku_text(&sku),
            "sku-9  (shard 3)  not read: NOT_OWNER (UNAVAILABLE): shard 3 is owned by node \"n2\" \
             at \"\"; send it there\n"
        );
        let value = sku_json(&sku);
        assert_eq!(value["error"]["reason"], "NOT_OWNER");
        assert_eq!(value["error"]["code"], "UNAVAILABLE");
        assert!(value.get("locations").is_none(), "{value}");
    }

    #[test]
    fn a_sku_without_positions_says_so() {
        let sku = SkuAvailability { sku: "x".into(), ..Default::default() };
        assert_eq!(sku_text(&sku), "x  (shard 0, epoch 0)\n(no positions)\n");
    }
}
