//! Helpers the node tests share: ids, and one location `dc-1` feeding the
//! channel `web` with stock received there.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use atp_core::catalog::{Channel, Location, LocationKind};
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::ids::{ChannelId, EventId, LocationId, ReservationId, Sku};
use atp_shard::Node;

pub fn sku(id: &str) -> Sku {
    Sku::parse("sku", id).expect("valid sku")
}

pub fn loc(id: &str) -> LocationId {
    LocationId::parse("location", id).expect("valid location")
}

pub fn rid(id: &str) -> ReservationId {
    ReservationId::parse("reservation_id", id).expect("valid id")
}

/// Configures `dc-1` and the channel `web` over it, then receives each
/// `(sku, units)` at `dc-1` (event id `recv-{sku}`).
pub async fn stock(node: &Node, stock: &[(&str, i64)]) {
    node.upsert_location(Location {
        id: loc("dc-1"),
        kind: LocationKind::Warehouse,
        name: String::new(),
        latitude: 0.0,
        longitude: 0.0,
        safety_stock: 0,
        daily_capacity: 0,
        shipping_cost: 0.0,
        state: atp_core::catalog::Lifecycle::Active,
        fulfilment: Default::default(),
    })
    .await
    .expect("location");
    node.upsert_channel(Channel {
        id: ChannelId::parse("channel", "web").expect("valid"),
        name: String::new(),
        locations: vec![loc("dc-1")],
        buffer: 0,
        cap: None,
        state: atp_core::catalog::Lifecycle::Active,
        publish: Default::default(),
    })
    .await
    .expect("channel");
    let events = stock
        .iter()
        .map(|(s, units)| StockEvent {
            id: EventId::parse("event_id", &format!("recv-{s}")).expect("valid"),
            sku: sku(s),
            location: loc("dc-1"),
            kind: StockEventKind::Received { quantity: *units },
        })
        .collect();
    for result in node.apply_events(events).await.expect("events accepted") {
        result.expect("event applied");
    }
}
