//! Domain values → reply messages.

use atp_core::availability::{LocationAvailability, SkuAvailability};
use atp_core::catalog::{Channel, Lifecycle, Location, LocationKind};
use atp_core::ledger::LedgerEntry;
use atp_core::reservation::{LineView, ReservationState, ReservationView};

use crate::v1;

impl From<ReservationState> for v1::ReservationState {
    fn from(state: ReservationState) -> Self {
        match state {
            // A pending reservation is never shown (its home answers "in
            // progress" until it is decided); the wire has no name for it.
            ReservationState::Pending => Self::Unspecified,
            ReservationState::Held => Self::Held,
            ReservationState::Committed => Self::Committed,
            ReservationState::Released => Self::Released,
            ReservationState::Expired => Self::Expired,
            ReservationState::Cancelled => Self::Cancelled,
            ReservationState::Fulfilled => Self::Fulfilled,
        }
    }
}

impl From<LineView> for v1::ReservationLineState {
    fn from(line: LineView) -> Self {
        Self {
            sku: line.sku.to_string(),
            location_id: line.location.to_string(),
            quantity: line.quantity,
            committed: line.committed,
            shipped: line.shipped,
        }
    }
}

impl From<ReservationView> for v1::Reservation {
    fn from(view: ReservationView) -> Self {
        Self {
            reservation_id: view.id.to_string(),
            channel_id: view.channel.to_string(),
            state: v1::ReservationState::from(view.state).into(),
            // Daily capacity counters an Allocate holds are atp's own
            // bookkeeping, not the caller's lines.
            lines: view
                .lines
                .into_iter()
                .filter(|line| !atp_core::capacity::is_counter(&line.sku))
                .map(Into::into)
                .collect(),
            created_at_ms: view.created_at_ms,
            expires_at_ms: view.expires_at_ms,
            ended_at_ms: view.ended_at_ms,
            metadata: (!view.metadata.is_empty()).then(|| v1::ReservationMetadata {
                order_id: view.metadata.order_id,
                labels: view.metadata.labels.into_iter().collect(),
            }),
        }
    }
}

impl From<LocationAvailability> for v1::LocationAvailability {
    fn from(position: LocationAvailability) -> Self {
        Self {
            location_id: position.location.to_string(),
            on_hand: position.on_hand,
            reserved: position.reserved,
            committed: position.committed,
            unavailable: position.unavailable,
            safety_stock: position.safety_stock,
            incoming: position.incoming,
            atp: position.atp,
            shortfall: position.shortfall,
            incoming_batches: position
                .incoming_batches
                .into_iter()
                .map(|(quantity, expected_at_ms)| v1::IncomingBatch { quantity, expected_at_ms })
                .collect(),
        }
    }
}

impl From<SkuAvailability> for v1::SkuAvailability {
    fn from(availability: SkuAvailability) -> Self {
        Self {
            sku: availability.sku.to_string(),
            shard: availability.shard,
            epoch: availability.epoch,
            locations: availability.locations.into_iter().map(Into::into).collect(),
            channels: availability
                .channels
                .iter()
                .map(|(channel, atp)| v1::ChannelAvailability {
                    channel_id: channel.to_string(),
                    atp: *atp,
                    published: availability
                        .published
                        .iter()
                        .find(|(shown, _)| shown == channel)
                        .map_or(*atp, |(_, published)| *published),
                    demand_per_hour: availability
                        .demand
                        .iter()
                        .find(|(shown, _)| shown == channel)
                        .map_or(0.0, |(_, rate)| *rate),
                })
                .collect(),
            error: None,
        }
    }
}

impl From<LocationKind> for v1::LocationKind {
    fn from(kind: LocationKind) -> Self {
        match kind {
            LocationKind::Warehouse => Self::Warehouse,
            LocationKind::Store => Self::Store,
            LocationKind::ThirdParty => Self::ThirdParty,
        }
    }
}

impl From<Location> for v1::Location {
    fn from(location: Location) -> Self {
        Self {
            location_id: location.id.to_string(),
            kind: v1::LocationKind::from(location.kind).into(),
            name: location.name,
            latitude: location.latitude,
            longitude: location.longitude,
            safety_stock: location.safety_stock,
            daily_capacity: location.daily_capacity,
            shipping_cost: location.shipping_cost,
            active: location.state.is_active(),
            state: v1::LifecycleState::from(location.state).into(),
            ships_to: location.fulfilment.ships_to,
            cost: Some(v1::ShippingCost {
                per_shipment: location.fulfilment.cost.per_shipment,
                per_km: location.fulfilment.cost.per_km,
                per_unit: location.fulfilment.cost.per_unit,
            }),
            time_zone: location.fulfilment.time_zone,
            daily_unit_capacity: location.fulfilment.daily_units,
            priority: location.fulfilment.priority,
        }
    }
}

impl From<atp_core::kits::Kit> for v1::Kit {
    fn from(kit: atp_core::kits::Kit) -> Self {
        Self {
            sku: kit.sku.to_string(),
            name: kit.name,
            components: kit
                .components
                .into_iter()
                .map(|(sku, quantity)| v1::KitComponent { sku: sku.to_string(), quantity })
                .collect(),
        }
    }
}

impl From<Channel> for v1::Channel {
    fn from(channel: Channel) -> Self {
        Self {
            channel_id: channel.id.to_string(),
            name: channel.name,
            location_ids: channel.locations.iter().map(ToString::to_string).collect(),
            buffer: channel.buffer,
            cap: channel.cap,
            state: v1::LifecycleState::from(channel.state).into(),
            publish_lag_ms: channel.publish.lag_ms,
            safety_level: Some(channel.publish.safety_level),
        }
    }
}

impl From<Lifecycle> for v1::LifecycleState {
    fn from(state: Lifecycle) -> Self {
        match state {
            Lifecycle::Active => Self::Active,
            Lifecycle::Paused => Self::Paused,
            Lifecycle::Retired => Self::Retired,
        }
    }
}

impl From<LedgerEntry> for v1::LedgerEntry {
    fn from(entry: LedgerEntry) -> Self {
        Self {
            sequence: entry.sequence,
            at_ms: entry.at_ms,
            sku: entry.sku.to_string(),
            location_id: entry.location.to_string(),
            cause_id: entry.cause.to_string(),
            kind: entry.kind.name().to_owned(),
            on_hand_delta: entry.deltas.on_hand,
            reserved_delta: entry.deltas.reserved,
            committed_delta: entry.deltas.committed,
            unavailable_delta: entry.deltas.unavailable,
            incoming_delta: entry.deltas.incoming,
            on_hand: entry.on_hand,
            reserved: entry.reserved,
            committed: entry.committed,
            unavailable: entry.unavailable,
            incoming: entry.incoming,
        }
    }
}

#[cfg(test)]
mod tests {
    use atp_core::ids::{ChannelId, LocationId, ReservationId, Sku};
    use atp_core::ledger::LedgerKind;
    use atp_core::position::Deltas;

    use super::*;

    fn location_id(id: &str) -> LocationId {
        LocationId::parse("location_id", id).expect("valid id")
    }

    #[test]
    fn reservation_view_keeps_every_field() {
        let view = ReservationView {
            id: ReservationId::parse("reservation_id", "r-1").expect("valid id"),
            channel: ChannelId::parse("channel_id", "web").expect("valid id"),
            state: ReservationState::Committed,
            lines: vec![LineView {
                sku: Sku::parse("sku", "tee").expect("valid id"),
                location: location_id("dc-1"),
                quantity: 5,
                committed: 3,
                shipped: 1,
            }],
            created_at_ms: 10,
            expires_at_ms: 20,
            ended_at_ms: 0,
            metadata: atp_core::reservation::Metadata {
                order_id: "o-1".into(),
                labels: [("cart".to_owned(), "c-1".to_owned())].into(),
            },
        };
        let message = v1::Reservation::from(view);
        let metadata = message.metadata.clone().expect("metadata is shown");
        assert_eq!(metadata.order_id, "o-1");
        assert_eq!(metadata.labels.get("cart").map(String::as_str), Some("c-1"));
        assert_eq!(message.reservation_id, "r-1");
        assert_eq!(message.channel_id, "web");
        assert_eq!(message.state(), v1::ReservationState::Committed);
        assert_eq!(
            message.lines,
            vec![v1::ReservationLineState {
                sku: "tee".into(),
                location_id: "dc-1".into(),
                quantity: 5,
                committed: 3,
                shipped: 1,
            }]
        );
        assert_eq!(
            (message.created_at_ms, message.expires_at_ms, message.ended_at_ms),
            (10, 20, 0)
        );
    }

    #[test]
    fn availability_keeps_batches_and_channels() {
        let availability = SkuAvailability {
            sku: Sku::parse("sku", "tee").expect("valid id"),
            shard: 7,
            epoch: 1,
            locations: vec![LocationAvailability {
                location: location_id("dc-1"),
                on_hand: 10,
                reserved: 2,
                committed: 1,
                unavailable: 1,
                safety_stock: 1,
                incoming: 4,
                incoming_batches: vec![(4, 99)],
                atp: 5,
                shortfall: 0,
            }],
            channels: vec![(ChannelId::parse("channel_id", "web").expect("valid id"), 5)],
            published: vec![(ChannelId::parse("channel_id", "web").expect("valid id"), 3)],
            demand: vec![(ChannelId::parse("channel_id", "web").expect("valid id"), 1.5)],
        };
        let message = v1::SkuAvailability::from(availability);
        assert_eq!((message.shard, message.epoch), (7, 1));
        let location = &message.locations[0];
        assert_eq!((location.on_hand, location.reserved, location.atp), (10, 2, 5));
        assert_eq!(
            location.incoming_batches,
            vec![v1::IncomingBatch { quantity: 4, expected_at_ms: 99 }]
        );
        assert_eq!(
            message.channels,
            vec![v1::ChannelAvailability {
                channel_id: "web".into(),
                atp: 5,
                published: 3,
                demand_per_hour: 1.5
            }]
        );
    }

    #[test]
    fn ledger_entry_names_its_cause_and_kind() {
        let entry = LedgerEntry {
            sequence: 3,
            at_ms: 42,
            sku: Sku::parse("sku", "tee").expect("valid id"),
            location: location_id("dc-1"),
            cause: "r-1".into(),
            kind: LedgerKind::Reserve,
            deltas: Deltas { reserved: 2, ..Deltas::default() },
            on_hand: 10,
            reserved: 2,
            committed: 0,
            unavailable: 0,
            incoming: 0,
        };
        let message = v1::LedgerEntry::from(entry);
        assert_eq!((message.cause_id.as_str(), message.kind.as_str()), ("r-1", "reserve"));
        assert_eq!((message.reserved_delta, message.reserved, message.on_hand), (2, 2, 10));
    }

    #[test]
    fn channel_keeps_an_unset_cap() {
        let channel = Channel {
            id: ChannelId::parse("channel_id", "web").expect("valid id"),
            name: "Web".into(),
            locations: vec![location_id("dc-1"), location_id("dc-2")],
            buffer: 2,
            cap: None,
            state: atp_core::catalog::Lifecycle::Active,
            publish: Default::default(),
        };
        let message = v1::Channel::from(channel);
        assert_eq!(message.location_ids, vec!["dc-1", "dc-2"]);
        assert_eq!((message.buffer, message.cap), (2, None));
    }
}
