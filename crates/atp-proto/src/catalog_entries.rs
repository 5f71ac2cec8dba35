//! One location or channel as bytes: the values of the cluster
//! configuration in etcd (`/atp/<cluster>/config/locations/<id>`,
//! `…/channels/<id>`).
//!
//! The encoding is the protobuf `atp.v1.Location` / `atp.v1.Channel` of the
//! public API, not the store's catalog codec: any tool with the `.proto`
//! files reads it (`etcdctl get … --print-value-only | protoc --decode
//! atp.v1.Location`), and protobuf's rules for adding fields are its
//! versioning. Decoding checks the entry as an UpsertLocation/UpsertChannel
//! would, so a hand-written bad value is refused, not applied.

use atp_core::CoreError;
use atp_core::catalog::{Channel, Location};
use prost::Message;

use crate::requests::{parse_channel, parse_location};
use crate::v1;

/// Why stored entry bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EntryDecodeError {
    /// Not a protobuf message of the expected type.
    #[error("not a protobuf entry")]
    Protobuf(#[from] prost::DecodeError),
    /// A message, but not a valid location or channel.
    #[error("not a valid entry")]
    Invalid(#[from] CoreError),
}

/// `location` as stored in etcd.
pub fn encode_location(location: &Location) -> Vec<u8> {
    v1::Location::from(location.clone()).encode_to_vec()
}

/// A location stored in etcd.
pub fn decode_location(bytes: &[u8]) -> Result<Location, EntryDecodeError> {
    let message = v1::Location::decode(bytes)?;
    Ok(parse_location(v1::UpsertLocationRequest { location: Some(message) })?)
}

/// `channel` as stored in etcd.
pub fn encode_channel(channel: &Channel) -> Vec<u8> {
    v1::Channel::from(channel.clone()).encode_to_vec()
}

/// A kit as stored in etcd.
pub fn encode_kit(kit: &atp_core::kits::Kit) -> Vec<u8> {
    v1::Kit::from(kit.clone()).encode_to_vec()
}

/// A kit stored in etcd (whether its components are kits is not checked here).
pub fn decode_kit(bytes: &[u8]) -> Result<atp_core::kits::Kit, EntryDecodeError> {
    let message = v1::Kit::decode(bytes)?;
    Ok(crate::requests::parse_kit(v1::UpsertKitRequest { kit: Some(message) })?)
}

/// A channel stored in etcd (its locations are not checked here).
pub fn decode_channel(bytes: &[u8]) -> Result<Channel, EntryDecodeError> {
    let message = v1::Channel::decode(bytes)?;
    Ok(parse_channel(v1::UpsertChannelRequest { channel: Some(message) })?)
}

#[cfg(test)]
mod tests {
    use atp_core::catalog::{Lifecycle, LocationKind};
    use atp_core::ids::{ChannelId, LocationId};

    use super::*;

    fn location_id(id: &str) -> LocationId {
        LocationId::parse("location", id).expect("a valid id")
    }

    #[test]
    fn entries_read_back_as_written() {
        let location = Location {
            id: location_id("dc-1"),
            kind: LocationKind::Store,
            name: "Store 1".into(),
            latitude: 48.1,
            longitude: 11.5,
            safety_stock: 3,
            daily_capacity: 100,
            shipping_cost: 2.5,
            state: Lifecycle::Paused,
            fulfilment: atp_core::catalog::Fulfilment {
                ships_to: vec!["DE".into(), "AT-9".into()],
                cost: atp_core::catalog::CostModel { per_shipment: 495, per_km: 3, per_unit: 20 },
                time_zone: "Europe/Berlin".into(),
                daily_units: 5_000,
                priority: 2,
            },
        };
        assert_eq!(decode_location(&encode_location(&location)).expect("decodes"), location);
        let channel = Channel {
            id: ChannelId::parse("channel", "web").expect("a valid id"),
            name: "web shop".into(),
            locations: vec![location_id("dc-1"), location_id("dc-2")],
            buffer: 2,
            cap: Some(50),
            state: Lifecycle::Retired,
            publish: Default::default(),
        };
        assert_eq!(decode_channel(&encode_channel(&channel)).expect("decodes"), channel);
    }

    #[test]
    fn bad_bytes_and_bad_entries_are_refused() {
        assert!(matches!(decode_location(&[0xFF, 0xFF]), Err(EntryDecodeError::Protobuf(_))));
        let bad = v1::Location { location_id: "dc-1".into(), latitude: 91.0, ..Default::default() };
        assert!(matches!(
            decode_location(&bad.encode_to_vec()),
            Err(EntryDecodeError::Invalid(CoreError::InvalidArgument(_)))
        ));
    }
}
