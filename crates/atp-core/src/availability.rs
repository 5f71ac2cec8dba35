//! What callers are shown: per-location and per-channel availability.

use crate::catalog::Catalog;
use crate::ids::{ChannelId, LocationId, Sku};
use crate::location_map::LocationMap;
use crate::position::Position;

/// One position as shown to callers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocationAvailability {
    /// The location.
    pub location: LocationId,
    /// Physical units.
    pub on_hand: i64,
    /// Held by checkouts.
    pub reserved: i64,
    /// Ordered, not shipped.
    pub committed: i64,
    /// Damaged or on hold.
    pub unavailable: i64,
    /// Never promised (configuration).
    pub safety_stock: i64,
    /// Expected units (not sellable).
    pub incoming: i64,
    /// (units, expected at ms), earliest first.
    pub incoming_batches: Vec<(i64, i64)>,
    /// Units that can be promised.
    pub atp: i64,
    /// Units by which facts left the position short.
    pub shortfall: i64,
}

impl LocationAvailability {
    /// The view of `position` with the location's safety stock.
    pub fn of(location: &LocationId, position: &Position, safety_stock: i64) -> Self {
        Self {
            location: location.clone(),
            on_hand: position.on_hand,
            reserved: position.reserved,
            committed: position.committed,
            unavailable: position.unavailable,
            safety_stock,
            incoming: position.incoming_total(),
            incoming_batches: position.incoming.iter().map(|(at, units)| (*units, *at)).collect(),
            atp: position.atp(safety_stock),
            shortfall: position.shortfall(safety_stock),
        }
    }

    /// The view of `position` at `location` as configured in `catalog`: a
    /// location that is not ACTIVE (paused, retired, unknown) promises
    /// nothing, so its ATP is 0 while its buckets stay visible.
    pub fn in_catalog(location: &LocationId, position: &Position, catalog: &Catalog) -> Self {
        let mut view = Self::of(location, position, catalog.safety_stock(location));
        if !catalog.is_active(location) {
            view.atp = 0;
        }
        view
    }
}

/// One SKU as shown to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkuAvailability {
    /// The SKU.
    pub sku: Sku,
    /// Its shard.
    pub shard: u32,
    /// The shard's epoch.
    pub epoch: u64,
    /// Per location.
    pub locations: Vec<LocationAvailability>,
    /// Per channel: (channel, atp).
    pub channels: Vec<(ChannelId, i64)>,
    /// Per channel, in the order of `channels`: the figure safe to publish
    /// (issue 13, [`crate::publish`]); the channel ATP until
    /// [`SkuAvailability::publish`] applies the observed demand.
    pub published: Vec<(ChannelId, i64)>,
}

impl SkuAvailability {
    /// Sets each channel's published figure from the SKU's observed
    /// `demand` (channels in id order) as of `now_ms`: the rate decays to
    /// now while the channel shows units, and the channel's publishing rule
    /// holds back the lag's demand.
    pub fn publish(
        &mut self,
        catalog: &Catalog,
        demand: &[(ChannelId, crate::publish::DemandRate)],
        now_ms: i64,
    ) {
        self.published = self
            .channels
            .iter()
            .map(|(id, atp)| {
                let Some(channel) = catalog.channels.get(id) else { return (id.clone(), *atp) };
                (id.clone(), published(channel, *atp, demand, now_ms))
            })
            .collect();
    }
}

/// The figure safe to publish to `channel` for a SKU whose channel ATP is
/// `atp` and whose observed demand is `demand` (channels in id order), as
/// of `now_ms`: the rate decays to now while the channel shows units, and
/// the channel's publishing rule holds back the lag's demand.
pub fn published(
    channel: &crate::catalog::Channel,
    atp: i64,
    demand: &[(ChannelId, crate::publish::DemandRate)],
    now_ms: i64,
) -> i64 {
    let rate = match demand.binary_search_by(|(id, _)| id.cmp(&channel.id)) {
        Ok(at) => {
            let mut rate = demand[at].1;
            rate.advance(now_ms, atp > 0, crate::publish::DEFAULT_RATE_TIME_CONSTANT_MS);
            rate.per_hour()
        }
        Err(_) => 0.0,
    };
    crate::publish::safe_to_publish(atp, rate, &channel.publish)
}

/// What a stream watches (issue 13, WatchAvailability).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// One channel: its ATP and its published figure.
    Channel(ChannelId),
    /// The ATP summed over these locations (published = atp).
    Locations(Vec<LocationId>),
}

impl Watched {
    /// (atp, published) of a SKU with `positions` and `demand`, as of
    /// `now_ms`. A channel no longer configured shows 0.
    pub fn figures(
        &self,
        catalog: &Catalog,
        positions: &LocationMap<Position>,
        demand: &[(ChannelId, crate::publish::DemandRate)],
        now_ms: i64,
    ) -> (i64, i64) {
        match self {
            Watched::Channel(id) => match catalog.channels.get(id) {
                Some(channel) => {
                    let atp = channel_atp(catalog, channel, positions);
                    (atp, published(channel, atp, demand, now_ms))
                }
                None => (0, 0),
            },
            Watched::Locations(locations) => {
                let atp = locations
                    .iter()
                    .filter_map(|location| {
                        positions.get(location).map(|p| p.atp(catalog.safety_stock(location)))
                    })
                    .sum();
                (atp, atp)
            }
        }
    }
}

/// ATP of `sku` on `channel`: `clamp(Σ atp over active channel locations − buffer, 0, cap)`,
/// 0 when the channel is not ACTIVE.
pub fn channel_atp(
    catalog: &Catalog,
    channel: &crate::catalog::Channel,
    positions: &LocationMap<Position>,
) -> i64 {
    let total = channel
        .locations
        .iter()
        .filter(|location| catalog.is_active(location))
        .filter_map(|location| {
            positions.get(location).map(|p| p.atp(catalog.safety_stock(location)))
        })
        .sum();
    channel.atp(total)
}

/// Builds the availability of one SKU from its positions. Empty filters mean all
/// positions and all configured channels.
pub fn sku_availability(
    sku: &Sku,
    shard: u32,
    epoch: u64,
    positions: &LocationMap<Position>,
    catalog: &Catalog,
    location_filter: &[LocationId],
    channel_filter: &[ChannelId],
) -> SkuAvailability {
    let locations = if location_filter.is_empty() {
        positions
            .iter()
            .map(|(location, p)| LocationAvailability::in_catalog(location, p, catalog))
            .collect()
    } else {
        location_filter
            .iter()
            .map(|location| {
                let position = positions.get(location).cloned().unwrap_or_default();
                LocationAvailability::in_catalog(location, &position, catalog)
            })
            .collect()
    };
    let channels: Vec<(ChannelId, i64)> = catalog
        .channels
        .values()
        .filter(|channel| channel_filter.is_empty() || channel_filter.contains(&channel.id))
        .map(|channel| (channel.id.clone(), channel_atp(catalog, channel, positions)))
        .collect();
    let published = channels.clone();
    SkuAvailability { sku: sku.clone(), shard, epoch, locations, channels, published }
}
