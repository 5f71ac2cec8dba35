//! The catalog as bytes for the store, in a versioned format that still
//! reads the catalogs older atpd versions saved.
//!
//! - **Version 1** (no header): postcard of the catalog as it was before
//!   lifecycles, a location carrying `active: bool` and a channel no state.
//!   It loads with `active = true` as ACTIVE and `active = false` as PAUSED
//!   (what it meant: no holds, stock kept), every channel ACTIVE.
//! - **Version 2**: a header of ten 0xFF bytes (`HEADER`), a version byte (2), then postcard of
//!   the catalog before the fulfilment network (a location without
//!   [`Fulfilment`]); it loads with the default fulfilment (ships anywhere, costs 0, UTC,
//!   no unit limit, priority 0).
//! - **Version 3**: the header, a version byte (3), then postcard of the
//!   catalog before kits; it loads with no kits.
//! - **Version 4**: the header, a version byte (4), then postcard of the
//!   catalog with kits, before channels' publishing rules.
//! - **Version 5**: the header, a version byte (5), then postcard of [`Catalog`]. A version-1 body can never start with the header: postcard
//!   begins it with the number of locations as a varint, and ten bytes of
//!   0xFF are not a valid varint of a `u64`.

use std::collections::BTreeMap;

use crate::catalog::{Catalog, Channel, Fulfilment, Lifecycle, Location, LocationKind};
use crate::ids::{ChannelId, LocationId};

/// Marks a versioned catalog; never the start of a version-1 body.
const HEADER: [u8; 10] = [0xFF; 10];
/// The version [`encode_catalog`] writes.
const VERSION: u8 = 5;

/// Why stored catalog bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogDecodeError {
    /// A version this build does not know (written by a newer atpd).
    #[error("catalog format version {0} is unknown; this atpd reads versions 1 to 5")]
    UnknownVersion(u8),
    /// The bytes are not a catalog of their version.
    #[error("catalog format version {version} does not decode")]
    Malformed {
        /// The version the bytes claimed (1 when headerless).
        version: u8,
        /// What postcard said.
        #[source]
        source: postcard::Error,
    },
}

/// The catalog as stored (the newest version).
pub fn encode_catalog(catalog: &Catalog) -> Vec<u8> {
    let mut bytes = HEADER.to_vec();
    bytes.push(VERSION);
    let body = postcard::to_stdvec(catalog).expect("a catalog always encodes");
    bytes.extend_from_slice(&body);
    bytes
}

/// A stored catalog of any version this build knows.
pub fn decode_catalog(bytes: &[u8]) -> Result<Catalog, CatalogDecodeError> {
    let Some(rest) = bytes.strip_prefix(&HEADER) else {
        let legacy: CatalogV1 = postcard::from_bytes(bytes)
            .map_err(|source| CatalogDecodeError::Malformed { version: 1, source })?;
        return Ok(legacy.into());
    };
    match rest.split_first() {
        Some((&VERSION, body)) => postcard::from_bytes(body)
            .map_err(|source| CatalogDecodeError::Malformed { version: VERSION, source }),
        Some((&4, body)) => postcard::from_bytes::<CatalogV4>(body)
            .map(|old| Catalog {
                locations: old.locations,
                channels: channels_v4(old.channels),
                kits: old.kits,
            })
            .map_err(|source| CatalogDecodeError::Malformed { version: 4, source }),
        Some((&3, body)) => postcard::from_bytes::<CatalogV3>(body)
            .map(|old| Catalog {
                locations: old.locations,
                channels: channels_v4(old.channels),
                kits: BTreeMap::new(),
            })
            .map_err(|source| CatalogDecodeError::Malformed { version: 3, source }),
        Some((&2, body)) => postcard::from_bytes::<CatalogV2>(body)
            .map(Catalog::from)
            .map_err(|source| CatalogDecodeError::Malformed { version: 2, source }),
        Some((&other, _)) => Err(CatalogDecodeError::UnknownVersion(other)),
        None => Err(CatalogDecodeError::UnknownVersion(0)),
    }
}

/// Version 1, field for field (postcard depends on the order).
#[derive(serde::Deserialize)]
struct CatalogV1 {
    locations: BTreeMap<LocationId, LocationV1>,
    channels: BTreeMap<ChannelId, ChannelV1>,
}

#[derive(serde::Deserialize)]
struct LocationV1 {
    id: LocationId,
    kind: LocationKind,
    name: String,
    latitude: f64,
    longitude: f64,
    safety_stock: i64,
    daily_capacity: i64,
    shipping_cost: f64,
    active: bool,
}

#[derive(serde::Deserialize)]
struct ChannelV1 {
    id: ChannelId,
    name: String,
    locations: Vec<LocationId>,
    buffer: i64,
    cap: Option<i64>,
}

impl From<CatalogV1> for Catalog {
    fn from(legacy: CatalogV1) -> Self {
        let locations = legacy
            .locations
            .into_iter()
            .map(|(id, old)| {
                let state = if old.active { Lifecycle::Active } else { Lifecycle::Paused };
                let location = Location {
                    id: old.id,
                    kind: old.kind,
                    name: old.name,
                    latitude: old.latitude,
                    longitude: old.longitude,
                    safety_stock: old.safety_stock,
                    daily_capacity: old.daily_capacity,
                    shipping_cost: old.shipping_cost,
                    state,
                    fulfilment: Fulfilment::default(),
                };
                (id, location)
            })
            .collect();
        let channels = legacy
            .channels
            .into_iter()
            .map(|(id, old)| {
                let channel = Channel {
                    id: old.id,
                    name: old.name,
                    locations: old.locations,
                    buffer: old.buffer,
                    cap: old.cap,
                    state: Lifecycle::Active,
                    publish: Default::default(),
                };
                (id, channel)
            })
            .collect();
        Catalog { locations, channels, kits: BTreeMap::new() }
    }
}

/// Version 4, field for field.
#[derive(serde::Deserialize)]
struct CatalogV4 {
    locations: BTreeMap<LocationId, Location>,
    channels: BTreeMap<ChannelId, ChannelV4>,
    kits: BTreeMap<crate::ids::Sku, crate::kits::Kit>,
}

/// A channel of versions 2 to 4 (before publishing rules).
#[derive(serde::Deserialize)]
struct ChannelV4 {
    id: ChannelId,
    name: String,
    locations: Vec<LocationId>,
    buffer: i64,
    cap: Option<i64>,
    state: Lifecycle,
}

/// Channels of versions 2 to 4, publishing their ATP as it is.
fn channels_v4(old: BTreeMap<ChannelId, ChannelV4>) -> BTreeMap<ChannelId, Channel> {
    old.into_iter()
        .map(|(id, old)| {
            let channel = Channel {
                id: old.id,
                name: old.name,
                locations: old.locations,
                buffer: old.buffer,
                cap: old.cap,
                state: old.state,
                publish: Default::default(),
            };
            (id, channel)
        })
        .collect()
}

/// Version 3, field for field.
#[derive(serde::Deserialize)]
struct CatalogV3 {
    locations: BTreeMap<LocationId, Location>,
    channels: BTreeMap<ChannelId, ChannelV4>,
}

/// Version 2, field for field.
#[derive(serde::Deserialize)]
struct CatalogV2 {
    locations: BTreeMap<LocationId, LocationV2>,
    channels: BTreeMap<ChannelId, ChannelV4>,
}

#[derive(serde::Deserialize)]
struct LocationV2 {
    id: LocationId,
    kind: LocationKind,
    name: String,
    latitude: f64,
    longitude: f64,
    safety_stock: i64,
    daily_capacity: i64,
    shipping_cost: f64,
    state: Lifecycle,
}

impl From<CatalogV2> for Catalog {
    fn from(old: CatalogV2) -> Self {
        let locations = old
            .locations
            .into_iter()
            .map(|(id, old)| {
                let location = Location {
                    id: old.id,
                    kind: old.kind,
                    name: old.name,
                    latitude: old.latitude,
                    longitude: old.longitude,
                    safety_stock: old.safety_stock,
                    daily_capacity: old.daily_capacity,
                    shipping_cost: old.shipping_cost,
                    state: old.state,
                    fulfilment: Fulfilment::default(),
                };
                (id, location)
            })
            .collect();
        Catalog { locations, channels: channels_v4(old.channels), kits: BTreeMap::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog saved by atpd before lifecycles (commit fcd6c4b): locations
    /// `dc-on` (active) and `dc-off` (inactive), channel `web` over both.
    const VERSION_1_CATALOG: &str = "020664632d6f66660664632d6f6666010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f000564632d6f6e0564632d6f6e010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f0101037765620377656203576562020564632d6f6e0664632d6f666604010e";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn location(id: &str) -> LocationId {
        LocationId::parse("location", id).expect("a valid id")
    }

    #[test]
    fn a_version_1_catalog_still_loads() {
        let catalog = decode_catalog(&unhex(VERSION_1_CATALOG)).expect("version 1 loads");
        let on = &catalog.locations[&location("dc-on")];
        let off = &catalog.locations[&location("dc-off")];
        assert_eq!((on.state, off.state), (Lifecycle::Active, Lifecycle::Paused));
        assert_eq!(
            (on.kind, on.name.as_str(), on.safety_stock),
            (LocationKind::Store, "Store 12", 3)
        );
        assert_eq!((on.latitude, on.longitude, on.daily_capacity), (1.5, -2.25, 40));
        let web = catalog.channels.values().next().expect("one channel");
        assert_eq!((web.buffer, web.cap, web.state), (2, Some(7), Lifecycle::Active));
        assert_eq!(web.locations, vec![location("dc-on"), location("dc-off")]);
    }

    /// The version-1 catalog above with `dc-off` RETIRED, as atpd saved it
    /// before the fulfilment network (commit 0b236c1's `encode_catalog`).
    const VERSION_2_CATALOG: &str = "ffffffffffffffffffff02020664632d6f66660664632d6f6666010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f020564632d6f6e0564632d6f6e010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f0001037765620377656203576562020564632d6f6e0664632d6f666604010e00";

    #[test]
    fn a_version_2_catalog_still_loads_with_default_fulfilment() {
        let catalog = decode_catalog(&unhex(VERSION_2_CATALOG)).expect("version 2 loads");
        let off = &catalog.locations[&location("dc-off")];
        let on = &catalog.locations[&location("dc-on")];
        assert_eq!((on.state, off.state), (Lifecycle::Active, Lifecycle::Retired));
        assert_eq!((on.latitude, on.longitude, on.daily_capacity), (1.5, -2.25, 40));
        assert_eq!(on.fulfilment, Fulfilment::default());
        let web = catalog.channels.values().next().expect("one channel");
        assert_eq!((web.buffer, web.cap), (2, Some(7)));
    }

    /// The version-1 catalog with `dc-off` at priority 7, as atpd saved it
    /// before kits (version 3).
    const VERSION_3_CATALOG: &str = "ffffffffffffffffffff03020664632d6f66660664632d6f6666010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f01000000000000070564632d6f6e0564632d6f6e010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f000000000000000001037765620377656203576562020564632d6f6e0664632d6f666604010e00";

    #[test]
    fn a_version_3_catalog_still_loads_without_kits() {
        let catalog = decode_catalog(&unhex(VERSION_3_CATALOG)).expect("version 3 loads");
        assert_eq!(catalog.locations[&location("dc-off")].fulfilment.priority, 7);
        assert_eq!(catalog.locations[&location("dc-on")].fulfilment.priority, 0);
        assert!(catalog.kits.is_empty());
        assert_eq!(catalog.channels.len(), 1);
    }

    /// The round-trip catalog below before publishing rules (version 4),
    /// as atpd saved it: dc-on's fulfilment, web PAUSED, the kit `box`.
    const VERSION_4_CATALOG: &str = "ffffffffffffffffffff04020664632d6f66660664632d6f6666010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f02000000000000000564632d6f6e0564632d6f6e010853746f7265203132000000000000f83f00000000000002c00650000000000000e03f00020255530543412d51438407041e0f416d65726963612f546f726f6e746f880e0301037765620377656203576562020564632d6f6e0664632d6f666604010e010103626f7803626f78086769667420626f7802036d7567020374656106";

    #[test]
    fn a_version_4_catalog_still_loads_publishing_its_atp() {
        let catalog = decode_catalog(&unhex(VERSION_4_CATALOG)).expect("version 4 loads");
        let web = catalog.channels.values().next().expect("one channel");
        assert_eq!(web.state, Lifecycle::Paused);
        assert_eq!(web.publish, crate::publish::PublishRule::default());
        assert_eq!(web.publish.lag_ms, 0, "lag 0 publishes the channel ATP");
        let on = &catalog.locations[&location("dc-on")];
        assert_eq!(on.fulfilment.time_zone, "America/Toronto");
        assert_eq!(catalog.kits.len(), 1);
    }

    #[test]
    fn the_current_version_round_trips() {
        let mut catalog = decode_catalog(&unhex(VERSION_1_CATALOG)).expect("version 1 loads");
        catalog.locations.get_mut(&location("dc-off")).expect("dc-off").state = Lifecycle::Retired;
        let web = catalog.channels.values_mut().next().expect("one channel");
        web.state = Lifecycle::Paused;
        web.publish = crate::publish::PublishRule { lag_ms: 60_000, safety_level: 990 };
        let on = catalog.locations.get_mut(&location("dc-on")).expect("dc-on");
        on.fulfilment = Fulfilment {
            ships_to: vec!["US".into(), "CA-QC".into()],
            cost: crate::routing::CostModel { per_shipment: 450, per_km: 2, per_unit: 15 },
            time_zone: "America/Toronto".into(),
            daily_units: 900,
            priority: 3,
        };
        let sku = |text: &str| crate::ids::Sku::parse("sku", text).expect("a sku");
        let kit = crate::kits::Kit {
            sku: sku("box"),
            name: "gift box".into(),
            components: vec![(sku("mug"), 1), (sku("tea"), 3)],
        };
        catalog.kits.insert(kit.sku.clone(), kit);
        let bytes = encode_catalog(&catalog);
        assert!(bytes.starts_with(&HEADER));
        let back = decode_catalog(&bytes).expect("decodes");
        assert_eq!(back.locations, catalog.locations);
        assert_eq!(back.channels, catalog.channels);
        assert_eq!(back.kits, catalog.kits);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        let mut newer = HEADER.to_vec();
        newer.push(6);
        assert!(matches!(decode_catalog(&newer), Err(CatalogDecodeError::UnknownVersion(6))));
        assert!(decode_catalog(&[0x05, 0x01]).is_err());
        assert!(decode_catalog(&HEADER).is_err());
    }
}
