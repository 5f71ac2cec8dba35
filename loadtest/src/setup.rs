//! The data a run works on, created through the API: locations, one channel
//! over all of them, and stock by `received` events. Every id starts with
//! the run id, so runs never collide, and every call is idempotent (same ids,
//! same payloads), so setup can be repeated against a node that restarted.
//!
//! Every location also gets a place in [`SERVICE_AREA`] and a shipping cost
//! ([`site`]), so an Allocate (the routing scenario) has real choices; the
//! other scenarios name their locations and never read them.

use std::collections::HashMap;
use std::ops::Range;

use atp_proto::v1;
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::LoadError;
use crate::client::{self, retry};
use crate::config::{Config, Scenario};

/// Most events one ApplyStockEvents call carries (the server's limit).
pub const MAX_EVENTS_PER_CALL: usize = 1_000;
/// ApplyStockEvents calls in flight at once during setup.
const SETUP_CONCURRENCY: usize = 4;

/// Where orders go and where the locations are.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceArea {
    /// Latitudes, degrees.
    pub latitude: Range<f64>,
    /// Longitudes, degrees.
    pub longitude: Range<f64>,
    /// ISO 3166-1 alpha-2 code of the destinations, and what every location
    /// ships to.
    pub country: &'static str,
}

/// The continental United States, roughly.
pub const SERVICE_AREA: ServiceArea =
    ServiceArea { latitude: 25.0..49.0, longitude: -124.0..-67.0, country: "US" };

/// Shipping cost of location `index`, minor units: per shipment
/// `SHIPMENT_COST_BASE + SHIPMENT_COST_STEP × (index mod SHIPMENT_COST_SPREAD)`
/// (so nearby locations still differ), per km `COST_PER_KM` and per unit
/// `COST_PER_UNIT` everywhere.
const SHIPMENT_COST_BASE: i64 = 300;
const SHIPMENT_COST_STEP: i64 = 50;
const SHIPMENT_COST_SPREAD: usize = 7;
const COST_PER_KM: i64 = 1;
const COST_PER_UNIT: i64 = 10;

/// Where location `index` stands, and what a shipment from it costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// Degrees.
    pub latitude: f64,
    /// Degrees.
    pub longitude: f64,
    /// Minor currency units.
    pub cost: v1::ShippingCost,
}

/// The site of location `index`: point `index` of an additive recurrence
/// (the plastic-number R2 sequence) over [`SERVICE_AREA`], so any number of
/// locations spreads evenly and every run places them alike; its cost is
/// 300 + 50 × (index mod 7) per shipment, 1 per km, 10 per unit.
pub fn site(index: usize) -> Site {
    // 1/g and 1/g² for g the plastic number (g³ = g + 1).
    const STEP_LATITUDE: f64 = 0.754_877_666_246_692_8;
    const STEP_LONGITUDE: f64 = 0.569_840_290_998_053_3;
    let within = |range: &Range<f64>, step: f64| {
        let fraction = (0.5 + step * index as f64).fract();
        range.start + fraction * (range.end - range.start)
    };
    let spread = i64::try_from(index % SHIPMENT_COST_SPREAD).expect("below 7");
    Site {
        latitude: within(&SERVICE_AREA.latitude, STEP_LATITUDE),
        longitude: within(&SERVICE_AREA.longitude, STEP_LONGITUDE),
        cost: v1::ShippingCost {
            per_shipment: SHIPMENT_COST_BASE + SHIPMENT_COST_STEP * spread,
            per_km: COST_PER_KM,
            per_unit: COST_PER_UNIT,
        },
    }
}

/// What [`setup`] created: enough to generate requests against it and to
/// check the node's numbers afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Prefix of every id of the run.
    pub run_id: String,
    /// The channel every reservation names; fed by every location.
    pub channel: String,
    /// Location ids, indexed by [`crate::LineRef::location`].
    pub locations: Vec<String>,
    /// SKU ids, indexed by [`crate::LineRef::sku`].
    pub skus: Vec<String>,
    /// Units received at every (sku, location): what `on_hand` must be.
    pub stock_per_position: i64,
}

impl Setup {
    /// The ids and stock a run of `config` uses; no I/O. The run id is
    /// `config.run_id`, or a fresh random one.
    pub fn plan(config: &Config) -> Self {
        let run_id = config.run_id.clone().unwrap_or_else(random_run_id);
        let (skus, locations, stock) = match config.scenario {
            Scenario::FlashSale => (1, 1, config.flash_stock),
            Scenario::Ceiling => (0, 0, 0),
            Scenario::Reserve | Scenario::Checkout | Scenario::Batch | Scenario::Routing => {
                (config.skus, config.locations, config.stock)
            }
        };
        Self {
            channel: format!("{run_id}-web"),
            locations: (0..locations).map(|index| format!("{run_id}-loc-{index}")).collect(),
            skus: (0..skus).map(|index| format!("{run_id}-sku-{index}")).collect(),
            stock_per_position: stock,
            run_id,
        }
    }

    /// Positions (sku × location) the run stocks.
    pub fn position_count(&self) -> usize {
        self.skus.len() * self.locations.len()
    }

    /// The `received` event that stocks `sku` at `location`.
    fn stock_event(&self, sku: usize, location: usize) -> v1::StockEvent {
        v1::StockEvent {
            event_id: format!("{}-recv-{sku}-{location}", self.run_id),
            sku: self.skus[sku].clone(),
            location_id: self.locations[location].clone(),
            kind: Some(v1::stock_event::Kind::Received(v1::Received {
                quantity: self.stock_per_position,
            })),
        }
    }
}

/// The setup's SKU and location ids → their indexes in a
/// [`crate::LineRef`]: how the node's answers are read back.
pub(crate) struct Names {
    skus: HashMap<String, u32>,
    locations: HashMap<String, u16>,
}

impl Names {
    pub(crate) fn new(setup: &Setup) -> Self {
        let skus = setup.skus.iter().cloned().zip(0..).collect();
        let locations = setup.locations.iter().cloned().zip(0..).collect();
        Self { skus, locations }
    }

    /// The indexes of `sku` at `location`, if both are the setup's.
    pub(crate) fn position(&self, sku: &str, location: &str) -> Option<(u32, u16)> {
        Some((*self.skus.get(sku)?, *self.locations.get(location)?))
    }
}

/// A run id nobody used: 8 hex digits.
fn random_run_id() -> String {
    format!("lg{:08x}", fastrand::u32(..))
}

/// Creates the run's locations and channel on every node
/// `config.endpoint` lists, its stock through any of them, and returns what
/// it created. Safe to repeat. The
/// ceiling scenario reads no data, so for it nothing is sent and the setup
/// is empty.
pub async fn setup(config: &Config) -> Result<Setup, LoadError> {
    config.validate()?;
    let setup = Setup::plan(config);
    if config.scenario == Scenario::Ceiling {
        return Ok(setup);
    }
    // Every endpoint gets the locations and the channel: the same upserts,
    // so harmless where the cluster keeps its configuration in etcd, and
    // what nodes configured one by one (older versions) need.
    for endpoint in config.endpoints() {
        let client = client::client(&endpoint, config.request_timeout)?;
        configure(&client, &setup).await?;
    }
    let client = client::client(&config.endpoint, config.request_timeout)?;
    let positions: Vec<(usize, usize)> = (0..setup.skus.len())
        .flat_map(|sku| (0..setup.locations.len()).map(move |location| (sku, location)))
        .collect();
    let calls = positions.chunks(MAX_EVENTS_PER_CALL).map(|chunk| {
        let events: Vec<_> =
            chunk.iter().map(|&(sku, location)| setup.stock_event(sku, location)).collect();
        stock(&client, events)
    });
    let outcomes: Vec<_> = stream::iter(calls).buffer_unordered(SETUP_CONCURRENCY).collect().await;
    outcomes.into_iter().collect::<Result<(), _>>()?;
    Ok(setup)
}

/// Upserts the run's locations and its channel through `client`.
async fn configure(client: &atp_client::Client, setup: &Setup) -> Result<(), LoadError> {
    for (index, location_id) in setup.locations.iter().enumerate() {
        let site = site(index);
        let location = v1::Location {
            location_id: location_id.clone(),
            kind: v1::LocationKind::Warehouse.into(),
            name: format!("load generator {location_id}"),
            state: v1::LifecycleState::Active.into(),
            latitude: site.latitude,
            longitude: site.longitude,
            ships_to: vec![SERVICE_AREA.country.to_owned()],
            cost: Some(site.cost),
            ..Default::default()
        };
        let request = v1::UpsertLocationRequest { location: Some(location) };
        retry("upsert location", || client.rpc().upsert_location(request.clone())).await?;
    }
    let channel_config = v1::Channel {
        channel_id: setup.channel.clone(),
        name: format!("load generator {}", setup.run_id),
        location_ids: setup.locations.clone(),
        buffer: 0,
        cap: None,
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    };
    let request = v1::UpsertChannelRequest { channel: Some(channel_config) };
    retry("upsert channel", || client.rpc().upsert_channel(request.clone())).await?;
    Ok(())
}

/// Applies `events` until each is APPLIED or DUPLICATE (a REJECTED one, e.g.
/// for a full mailbox, is sent again).
async fn stock(
    client: &atp_client::Client,
    mut events: Vec<v1::StockEvent>,
) -> Result<(), LoadError> {
    let deadline = tokio::time::Instant::now() + client::RETRY_DEADLINE;
    while !events.is_empty() {
        let request = v1::ApplyStockEventsRequest { events: events.clone() };
        let response =
            retry("apply stock events", || client.rpc().apply_stock_events(request.clone()))
                .await?;
        let mut rejected = Vec::new();
        for (event, result) in events.into_iter().zip(response.results) {
            if result.outcome() == v1::StockEventOutcome::Rejected {
                let code = tonic::Code::from(result.error_code);
                if !client::passing(code) || tokio::time::Instant::now() >= deadline {
                    return Err(LoadError::Setup(format!(
                        "stock event {} rejected: {code:?} {}",
                        event.event_id, result.error_message
                    )));
                }
                rejected.push(event);
            }
        }
        events = rejected;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_starts_with_the_run_id() {
        let config =
            Config { run_id: Some("r1".into()), skus: 3, locations: 2, ..Config::default() };
        let setup = Setup::plan(&config);
        assert_eq!(setup.position_count(), 6);
        assert_eq!(setup.skus, ["r1-sku-0", "r1-sku-1", "r1-sku-2"]);
        assert_eq!(setup.locations, ["r1-loc-0", "r1-loc-1"]);
        assert_eq!(setup.channel, "r1-web");
        assert_eq!(setup.stock_event(2, 1).event_id, "r1-recv-2-1");
    }

    #[test]
    fn flash_sale_has_one_position() {
        let config =
            Config { scenario: Scenario::FlashSale, flash_stock: 100, ..Config::default() };
        let setup = Setup::plan(&config);
        assert_eq!((setup.position_count(), setup.stock_per_position), (1, 100));
        assert!(setup.run_id.starts_with("lg"));
    }

    #[test]
    fn sites_spread_over_the_area_and_differ_in_cost() {
        let sites: Vec<Site> = (0..10).map(site).collect();
        assert_eq!(sites, (0..10).map(site).collect::<Vec<_>>(), "the same every run");
        for site in &sites {
            assert!(SERVICE_AREA.latitude.contains(&site.latitude), "{site:?}");
            assert!(SERVICE_AREA.longitude.contains(&site.longitude), "{site:?}");
            assert_eq!((site.cost.per_km, site.cost.per_unit), (1, 10));
        }
        let costs: Vec<i64> = sites.iter().map(|site| site.cost.per_shipment).collect();
        assert_eq!(costs, [300, 350, 400, 450, 500, 550, 600, 300, 350, 400]);
        // Spread: no two of ten locations within half a degree of each other.
        for (index, one) in sites.iter().enumerate() {
            for other in &sites[index + 1..] {
                let apart = (one.latitude - other.latitude)
                    .abs()
                    .max((one.longitude - other.longitude).abs());
                assert!(apart > 0.5, "{one:?} and {other:?}");
            }
        }
    }

    #[test]
    fn names_read_back_the_setup_ids() {
        let config =
            Config { run_id: Some("r1".into()), skus: 3, locations: 2, ..Config::default() };
        let setup = Setup::plan(&config);
        let names = Names::new(&setup);
        assert_eq!(names.position("r1-sku-2", "r1-loc-1"), Some((2, 1)));
        assert_eq!(names.position("r1-sku-3", "r1-loc-1"), None);
        assert_eq!(names.position("r1-sku-0", "elsewhere"), None);
    }

    #[test]
    fn ceiling_needs_no_data() {
        let config = Config { scenario: Scenario::Ceiling, ..Config::default() };
        let setup = Setup::plan(&config);
        assert_eq!(setup.position_count(), 0);
        assert!(setup.locations.is_empty());
    }
}
