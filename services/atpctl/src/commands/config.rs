//! Locations and channels: upsert and list one at a time, or `config apply` a whole file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use atp_proto::v1::{
    Channel, Kit, KitComponent, LifecycleState, ListChannelsRequest, ListKitsRequest,
    ListLocationsRequest, Location, LocationKind, ShippingCost, UpsertChannelRequest,
    UpsertKitRequest, UpsertLocationRequest,
};
use serde_json::{Value, json};

use crate::cli::{ChannelUpsertArgs, KitUpsertArgs, LocationKindArg, LocationUpsertArgs};
use crate::client::{Clients, Context};
use crate::config_file::ConfigFile;
use crate::format::location_kind;
use crate::table::Table;

pub async fn upsert_location(
    context: &Context,
    args: LocationUpsertArgs,
) -> anyhow::Result<ExitCode> {
    let kind = match args.kind {
        LocationKindArg::Warehouse => LocationKind::Warehouse,
        LocationKindArg::Store => LocationKind::Store,
        LocationKindArg::ThirdParty => LocationKind::ThirdParty,
    };
    let state = args.state();
    let location = Location {
        location_id: args.id.to_string(),
        kind: kind as i32,
        name: args.name,
        latitude: args.latitude.unwrap_or(0.0),
        longitude: args.longitude.unwrap_or(0.0),
        safety_stock: args.safety_stock,
        daily_capacity: args.daily_capacity,
        shipping_cost: args.shipping_cost,
        active: state == LifecycleState::Active,
        state: state.into(),
        ships_to: args.ships_to,
        cost: Some(ShippingCost {
            per_shipment: args.cost_per_shipment,
            per_km: args.cost_per_km,
            per_unit: args.cost_per_unit,
        }),
        time_zone: args.time_zone,
        daily_unit_capacity: args.daily_unit_capacity,
        priority: args.priority,
    };
    let clients = context.connect().await?;
    let (stored, changed) = send_location(&clients, location).await?;
    context.print(
        || json!({ "location": location_json(&stored), "changed": changed }),
        || {
            let table = locations_table(std::slice::from_ref(&stored));
            format!("{table}\nlocation {}: {}\n", stored.location_id, changed_word(changed))
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list_locations(context: &Context) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response =
        clients.rpc().list_locations(ListLocationsRequest {}).await.context("list locations")?;
    context.print(
        || json!({ "locations": response.locations.iter().map(location_json).collect::<Vec<_>>() }),
        || locations_table(&response.locations),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn upsert_channel(
    context: &Context,
    args: ChannelUpsertArgs,
) -> anyhow::Result<ExitCode> {
    let channel = Channel {
        channel_id: args.id.to_string(),
        name: args.name,
        location_ids: args.locations,
        buffer: args.buffer,
        cap: args.cap,
        state: LifecycleState::from(args.state).into(),
        publish_lag_ms: args.publish_lag_ms,
        safety_level: args.safety_level,
    };
    let clients = context.connect().await?;
    let (stored, changed) = send_channel(&clients, channel).await?;
    context.print(
        || json!({ "channel": channel_json(&stored), "changed": changed }),
        || {
            let table = channels_table(std::slice::from_ref(&stored));
            format!("{table}\nchannel {}: {}\n", stored.channel_id, changed_word(changed))
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn upsert_kit(context: &Context, args: KitUpsertArgs) -> anyhow::Result<ExitCode> {
    let kit = Kit {
        sku: args.id.to_string(),
        name: args.name,
        components: args
            .components
            .into_iter()
            .map(|component| KitComponent { sku: component.sku, quantity: component.quantity })
            .collect(),
    };
    let clients = context.connect().await?;
    let request = UpsertKitRequest { kit: Some(kit) };
    let response = clients.rpc().upsert_kit(request).await.context("upsert kit")?;
    let stored = response.kit.unwrap_or_default();
    let changed = response.changed;
    context.print(
        || json!({ "kit": kit_json(&stored), "changed": changed }),
        || {
            let table = kits_table(std::slice::from_ref(&stored));
            format!("{table}\nkit {}: {}\n", stored.sku, changed_word(changed))
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list_kits(context: &Context) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response = clients.rpc().list_kits(ListKitsRequest {}).await.context("list kits")?;
    context.print(
        || json!({ "kits": response.kits.iter().map(kit_json).collect::<Vec<_>>() }),
        || kits_table(&response.kits),
    );
    Ok(ExitCode::SUCCESS)
}

fn kit_json(kit: &Kit) -> Value {
    let components: Vec<Value> = kit
        .components
        .iter()
        .map(|component| json!({ "sku": component.sku, "quantity": component.quantity }))
        .collect();
    json!({ "sku": kit.sku, "name": kit.name, "components": components })
}

fn kits_table(kits: &[Kit]) -> String {
    let mut table = Table::new(&["SKU", "NAME", "COMPONENTS"]);
    for kit in kits {
        let components: Vec<String> = kit
            .components
            .iter()
            .map(|component| format!("{}×{}", component.sku, component.quantity))
            .collect();
        table.row(vec![kit.sku.clone(), kit.name.clone(), components.join(" ")]);
    }
    table.render()
}

pub async fn list_channels(context: &Context) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response =
        clients.rpc().list_channels(ListChannelsRequest {}).await.context("list channels")?;
    context.print(
        || json!({ "channels": response.channels.iter().map(channel_json).collect::<Vec<_>>() }),
        || channels_table(&response.channels),
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the file (and, unless `offline`, that every location a channel
/// names is in the file or on the node), and shows what it declares.
pub async fn check(context: &Context, path: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let file = read_config(path)?;
    if !offline {
        let clients = context.connect().await?;
        let response = clients
            .rpc()
            .list_locations(ListLocationsRequest {})
            .await
            .context("list locations")?;
        let known = response.locations.into_iter().map(|location| location.location_id).collect();
        crate::config_file::refuse(file.unknown_locations(&known))
            .with_context(|| format!("checking {} against the node", path.display()))?;
    }
    let locations: Vec<Location> = file.locations.iter().map(|entry| entry.to_proto()).collect();
    let channels: Vec<Channel> = file.channels.iter().map(|entry| entry.to_proto()).collect();
    context.print(
        || {
            json!({
                "locations": locations.iter().map(location_json).collect::<Vec<_>>(),
                "channels": channels.iter().map(channel_json).collect::<Vec<_>>(),
            })
        },
        || format!("{}\n{}", locations_table(&locations), channels_table(&channels)),
    );
    Ok(ExitCode::SUCCESS)
}

/// What happened to one item of the file.
struct Applied {
    kind: &'static str,
    id: String,
    changed: bool,
}

/// Upserts the file's locations, then its channels. Stops at the first refused item,
/// after printing what was applied before it.
pub async fn apply(context: &Context, path: &Path) -> anyhow::Result<ExitCode> {
    let file = read_config(path)?;
    let clients = context.connect().await?;
    let mut applied = Vec::new();
    let result = apply_all(&clients, &file, &mut applied).await;
    context.print(
        || {
            let items: Vec<Value> = applied
                .iter()
                .map(|item| json!({ "kind": item.kind, "id": item.id, "changed": item.changed }))
                .collect();
            json!({ "applied": items })
        },
        || {
            let mut table = Table::new(&["KIND", "ID", "RESULT"]);
            for item in &applied {
                table.row(vec![
                    item.kind.to_owned(),
                    item.id.clone(),
                    changed_word(item.changed).to_owned(),
                ]);
            }
            table.render()
        },
    );
    result.with_context(|| format!("applying {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}

async fn apply_all(
    clients: &Clients,
    file: &ConfigFile,
    applied: &mut Vec<Applied>,
) -> anyhow::Result<()> {
    for entry in &file.locations {
        // The error names the item: "upsert location <id>".
        let (_, changed) = send_location(clients, entry.to_proto()).await?;
        applied.push(Applied { kind: "location", id: entry.id.clone(), changed });
    }
    for entry in &file.channels {
        let (_, changed) = send_channel(clients, entry.to_proto()).await?;
        applied.push(Applied { kind: "channel", id: entry.id.clone(), changed });
    }
    Ok(())
}

fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ConfigFile::parse(&text).with_context(|| format!("checking {}", path.display()))
}

async fn send_location(clients: &Clients, location: Location) -> anyhow::Result<(Location, bool)> {
    let id = location.location_id.clone();
    let response = clients
        .rpc()
        .upsert_location(UpsertLocationRequest { location: Some(location) })
        .await
        .with_context(|| format!("upsert location {id}"))?;
    let stored = response.location.ok_or_else(|| anyhow!("the server's answer has no location"))?;
    Ok((stored, response.changed))
}

async fn send_channel(clients: &Clients, channel: Channel) -> anyhow::Result<(Channel, bool)> {
    let id = channel.channel_id.clone();
    let response = clients
        .rpc()
        .upsert_channel(UpsertChannelRequest { channel: Some(channel) })
        .await
        .with_context(|| format!("upsert channel {id}"))?;
    let stored = response.channel.ok_or_else(|| anyhow!("the server's answer has no channel"))?;
    Ok((stored, response.changed))
}

fn changed_word(changed: bool) -> &'static str {
    if changed { "changed" } else { "unchanged" }
}

pub fn location_json(location: &Location) -> Value {
    json!({
        "id": location.location_id,
        "kind": location_kind(location.kind),
        "name": location.name,
        "latitude": location.latitude,
        "longitude": location.longitude,
        "safety_stock": location.safety_stock,
        "daily_capacity": location.daily_capacity,
        "shipping_cost": location.shipping_cost,
        "active": location.active,
        "state": state_name(location.state),
        "ships_to": location.ships_to,
        "cost_per_shipment": location.cost.as_ref().map_or(0, |cost| cost.per_shipment),
        "cost_per_km": location.cost.as_ref().map_or(0, |cost| cost.per_km),
        "cost_per_unit": location.cost.as_ref().map_or(0, |cost| cost.per_unit),
        "time_zone": location.time_zone,
        "daily_unit_capacity": location.daily_unit_capacity,
        "priority": location.priority,
    })
}

pub fn channel_json(channel: &Channel) -> Value {
    json!({
        "id": channel.channel_id,
        "name": channel.name,
        "locations": channel.location_ids,
        "buffer": channel.buffer,
        "cap": channel.cap,
        "state": state_name(channel.state),
        "publish_lag_ms": channel.publish_lag_ms,
        "safety_level": channel.safety_level,
    })
}

/// A lifecycle state as the config file spells it (`active`, `paused`, `retired`).
fn state_name(state: i32) -> String {
    match LifecycleState::try_from(state) {
        Ok(LifecycleState::Unspecified | LifecycleState::Active) => "active".to_owned(),
        Ok(LifecycleState::Paused) => "paused".to_owned(),
        Ok(LifecycleState::Retired) => "retired".to_owned(),
        Err(_) => format!("state {state}"),
    }
}

fn locations_table(locations: &[Location]) -> String {
    let mut table = Table::new(&[
        "ID",
        "KIND",
        "NAME",
        "LAT>",
        "LON>",
        "SAFETY>",
        "CAPACITY>",
        "COST>",
        "STATE",
    ]);
    for location in locations {
        table.row(vec![
            location.location_id.clone(),
            location_kind(location.kind),
            location.name.clone(),
            location.latitude.to_string(),
            location.longitude.to_string(),
            location.safety_stock.to_string(),
            location.daily_capacity.to_string(),
            location.shipping_cost.to_string(),
            state_name(location.state),
        ]);
    }
    table.render()
}

fn channels_table(channels: &[Channel]) -> String {
    let mut table = Table::new(&["ID", "NAME", "LOCATIONS", "BUFFER>", "CAP>", "STATE"]);
    for channel in channels {
        table.row(vec![
            channel.channel_id.clone(),
            channel.name.clone(),
            channel.location_ids.join(","),
            channel.buffer.to_string(),
            channel.cap.map_or_else(|| "-".to_owned(), |cap| cap.to_string()),
            state_name(channel.state),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_tables_and_json_show_a_missing_cap() {
        let channel = Channel {
            channel_id: "web".into(),
            name: "Web".into(),
            location_ids: vec!["a".into(), "b".into()],
            buffer: 2,
            cap: None,
            state: 0,
            ..Default::default()
        };
        assert_eq!(
            channels_table(std::slice::from_ref(&channel)),
            "ID   NAME  LOCATIONS  BUFFER  CAP  STATE\nweb  Web   a,b             2    -  active\n"
        );
        assert!(channel_json(&channel)["cap"].is_null());
    }

    #[test]
    fn location_json_uses_the_config_file_spelling() {
        let location = Location {
            location_id: "x".into(),
            kind: LocationKind::ThirdParty as i32,
            active: true,
            state: LifecycleState::Paused.into(),
            ..Default::default()
        };
        let value = location_json(&location);
        assert_eq!(value["kind"], "3pl");
        assert_eq!((&value["active"], &value["state"]), (&json!(true), &json!("paused")));
    }
}
