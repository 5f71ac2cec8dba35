//! UpsertLocation and UpsertChannel → domain configuration.

use atp_core::CoreError;
use atp_core::catalog::{
    Channel, CostModel, Fulfilment, Lifecycle, Location, LocationKind, MAX_LOCATIONS_PER_CHANNEL,
};
use atp_core::ids::{ChannelId, LocationId};

use super::{Violations, parse_ids, within_count};
use crate::v1;

/// A lifecycle state: UNSPECIFIED (omitted) means ACTIVE; an unknown number
/// is refused.
fn lifecycle(violations: &mut Violations, field: &str, state: i32) -> Option<Lifecycle> {
    match v1::LifecycleState::try_from(state) {
        Ok(v1::LifecycleState::Unspecified | v1::LifecycleState::Active) => Some(Lifecycle::Active),
        Ok(v1::LifecycleState::Paused) => Some(Lifecycle::Paused),
        Ok(v1::LifecycleState::Retired) => Some(Lifecycle::Retired),
        Err(_) => {
            violations.push(field, format!("{state} is not a known lifecycle state"));
            None
        }
    }
}

/// UpsertLocation. `LOCATION_KIND_UNSPECIFIED` means a warehouse (the
/// domain's default kind); an unknown kind number is refused. The state
/// decides whether it is active; the deprecated `active` flag is ignored.
pub fn parse_location(message: v1::UpsertLocationRequest) -> Result<Location, CoreError> {
    let Some(location) = message.location else {
        return Err(CoreError::invalid("location", "must be set"));
    };
    let mut violations = Violations::default();
    let id = violations.parse(LocationId::parse("location.location_id", &location.location_id));
    let kind = match v1::LocationKind::try_from(location.kind) {
        Ok(v1::LocationKind::Unspecified | v1::LocationKind::Warehouse) => {
            Some(LocationKind::Warehouse)
        }
        Ok(v1::LocationKind::Store) => Some(LocationKind::Store),
        Ok(v1::LocationKind::ThirdParty) => Some(LocationKind::ThirdParty),
        Err(_) => {
            violations
                .push("location.kind", format!("{} is not a known location kind", location.kind));
            None
        }
    };
    let state = lifecycle(&mut violations, "location.state", location.state);
    // `Location::validate` checks the other fields and never looks at the id,
    // so a stand-in id lets one answer report a bad id and bad numbers together.
    let stand_in = || LocationId::parse("location.location_id", "-").expect("a valid stand-in id");
    let candidate = Location {
        id: id.clone().unwrap_or_else(stand_in),
        kind: kind.unwrap_or_default(),
        name: location.name,
        latitude: location.latitude,
        longitude: location.longitude,
        safety_stock: location.safety_stock,
        daily_capacity: location.daily_capacity,
        shipping_cost: location.shipping_cost,
        state: state.unwrap_or_default(),
        fulfilment: Fulfilment {
            ships_to: location.ships_to,
            cost: location
                .cost
                .map(|cost| CostModel {
                    per_shipment: cost.per_shipment,
                    per_km: cost.per_km,
                    per_unit: cost.per_unit,
                })
                .unwrap_or_default(),
            time_zone: location.time_zone,
            daily_units: location.daily_unit_capacity,
            priority: location.priority,
        },
    };
    match candidate.validate("location") {
        Ok(()) => {}
        Err(CoreError::InvalidArgument(found)) => violations.extend(found),
        Err(other) => return Err(other),
    }
    let location = (id.is_some() && kind.is_some() && state.is_some()).then_some(candidate);
    violations.finish(location)
}

/// UpsertChannel. Ids are checked here; the name, buffer, cap and whether
/// each location exists are checked by the catalog when the channel is
/// stored (with the same field paths).
pub fn parse_channel(message: v1::UpsertChannelRequest) -> Result<Channel, CoreError> {
    let Some(channel) = message.channel else {
        return Err(CoreError::invalid("channel", "must be set"));
    };
    let mut violations = Violations::default();
    let id = violations.parse(ChannelId::parse("channel.channel_id", &channel.channel_id));
    let mut locations = None;
    if within_count(
        &mut violations,
        "channel.location_ids",
        channel.location_ids.len(),
        MAX_LOCATIONS_PER_CHANNEL,
    ) {
        locations = parse_ids(
            &mut violations,
            "channel.location_ids",
            &channel.location_ids,
            LocationId::parse,
        );
    }
    let state = lifecycle(&mut violations, "channel.state", channel.state);
    let parsed = match (id, locations, state) {
        (Some(id), Some(locations), Some(state)) => Some(Channel {
            id,
            name: channel.name,
            locations,
            buffer: channel.buffer,
            cap: channel.cap,
            state,
            publish: atp_core::publish::PublishRule {
                lag_ms: channel.publish_lag_ms,
                safety_level: channel
                    .safety_level
                    .unwrap_or(atp_core::publish::DEFAULT_SAFETY_LEVEL),
            },
        }),
        _ => None,
    };
    violations.finish(parsed)
}

/// UpsertKit. The kit's own rules are checked here; whether its components
/// are kits (kits do not nest) when it is stored.
pub fn parse_kit(message: v1::UpsertKitRequest) -> Result<atp_core::kits::Kit, CoreError> {
    let Some(kit) = message.kit else {
        return Err(CoreError::invalid("kit", "must be set"));
    };
    let mut violations = Violations::default();
    let sku = violations.parse(atp_core::ids::Sku::parse("kit.sku", &kit.sku));
    let mut components = Vec::with_capacity(kit.components.len());
    let mut all_good = true;
    if within_count(
        &mut violations,
        "kit.components",
        kit.components.len(),
        atp_core::kits::MAX_KIT_COMPONENTS,
    ) {
        for (index, component) in kit.components.iter().enumerate() {
            let field = format!("kit.components[{index}].sku");
            match violations.parse(atp_core::ids::Sku::parse(&field, &component.sku)) {
                Some(sku) => components.push((sku, component.quantity)),
                None => all_good = false,
            }
        }
    }
    let parsed = match sku {
        Some(sku) if all_good => {
            let kit = atp_core::kits::Kit { sku, name: kit.name, components };
            match kit.validate("kit") {
                Ok(()) => Some(kit),
                Err(CoreError::InvalidArgument(found)) => {
                    violations.extend(found);
                    None
                }
                Err(other) => return Err(other),
            }
        }
        _ => None,
    };
    violations.finish(parsed)
}
