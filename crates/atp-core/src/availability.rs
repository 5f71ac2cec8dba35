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
#[derive(Clone, Debug, PartialEq)]
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
    /// Per channel, in the order of `channels`: the observed demand in
    /// units held per hour of exposure, decayed to now (issue 13,
    /// [`rate_per_hour`]); 0 for a channel never observed (a lag-0 channel
    /// is not) and until [`SkuAvailability::publish`] sets it.
    pub demand: Vec<(ChannelId, f64)>,
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
        self.published.clear();
        self.demand.clear();
        for (id, atp) in &self.channels {
            let Some(channel) = catalog.channels.get(id) else {
                self.published.push((id.clone(), *atp));
                self.demand.push((id.clone(), 0.0));
                continue;
            };
            let rate = rate_per_hour(channel, *atp, demand, now_ms);
            self.published
                .push((id.clone(), crate::publish::safe_to_publish(*atp, rate, &channel.publish)));
            self.demand.push((id.clone(), rate));
        }
    }
}

/// The observed demand of `channel` for a SKU whose channel ATP is `atp`
/// and whose observed demand is `demand` (channels in id order), as of
/// `now_ms`: units held per hour of exposure, the rate decayed to now while
/// the channel shows units (`atp > 0`); 0 when the channel was never
/// observed.
pub fn rate_per_hour(
    channel: &crate::catalog::Channel,
    atp: i64,
    demand: &[(ChannelId, crate::publish::DemandRate)],
    now_ms: i64,
) -> f64 {
    match demand.binary_search_by(|(id, _)| id.cmp(&channel.id)) {
        Ok(at) => {
            let mut rate = demand[at].1;
            rate.advance(now_ms, atp > 0, crate::publish::DEFAULT_RATE_TIME_CONSTANT_MS);
            rate.per_hour()
        }
        Err(_) => 0.0,
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
    let rate = rate_per_hour(channel, atp, demand, now_ms);
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
    let demand = channels.iter().map(|(id, _)| (id.clone(), 0.0)).collect();
    SkuAvailability { sku: sku.clone(), shard, epoch, locations, channels, published, demand }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Channel, Lifecycle};
    use crate::publish::{DEFAULT_SAFETY_LEVEL, DemandRate, PublishRule};

    fn channel(id: &str, lag_ms: i64) -> Channel {
        Channel {
            id: ChannelId::parse("channel_id", id).expect("valid id"),
            name: id.into(),
            locations: Vec::new(),
            buffer: 0,
            cap: None,
            state: Lifecycle::Active,
            publish: PublishRule { lag_ms, safety_level: DEFAULT_SAFETY_LEVEL },
        }
    }

    #[test]
    fn publish_sets_each_channels_rate_beside_its_figure() {
        let mut catalog = Catalog::default();
        for shown in [channel("pos", 0), channel("web", 60_000)] {
            catalog.channels.insert(shown.id.clone(), shown);
        }
        let web = ChannelId::parse("channel_id", "web").expect("valid id");
        let pos = ChannelId::parse("channel_id", "pos").expect("valid id");
        // 30 units at t = 0, no exposure yet: 30 over the 15 min floor.
        let rate = DemandRate { units: 30.0, exposure_ms: 0.0, at_ms: 0 };
        let mut figures = SkuAvailability {
            sku: Sku::parse("sku", "tee").expect("valid id"),
            shard: 0,
            epoch: 0,
            locations: Vec::new(),
            channels: vec![(pos.clone(), 10), (web.clone(), 10)],
            published: Vec::new(),
            demand: Vec::new(),
        };
        figures.publish(&catalog, &[(web.clone(), rate)], 0);
        assert_eq!(figures.demand, vec![(pos.clone(), 0.0), (web.clone(), 120.0)]);
        let expected = published(&catalog.channels[&web], 10, &[(web.clone(), rate)], 0);
        assert_eq!(figures.published, vec![(pos, 10), (web, expected)]);
        assert!(expected < 10, "the web's lag holds back some units");
    }

    #[test]
    fn a_sold_out_channel_keeps_its_rate_and_an_exposed_one_decays() {
        let web = channel("web", 60_000);
        let rate = DemandRate { units: 30.0, exposure_ms: 0.0, at_ms: 0 };
        let demand = [(web.id.clone(), rate)];
        let hour = 3_600_000;
        assert_eq!(rate_per_hour(&web, 0, &demand, hour), 120.0);
        assert!(rate_per_hour(&web, 5, &demand, hour) < 120.0);
        assert_eq!(rate_per_hour(&channel("pos", 0), 5, &demand, hour), 0.0);
    }
}
