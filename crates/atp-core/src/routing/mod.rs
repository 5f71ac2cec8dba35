//! The routing planner: which locations should ship an order, and why.
//!
//! Pure and deterministic: the same candidates (with their ATP
//! and capacity left), [`Order`] and [`Rules`] always give the same
//! [`Planned`], so a dry run and the real run agree on the same state. The
//! search is bounded by a work budget (plans evaluated), never by time.
//!
//! - A **plan** is a set of shipments, one per location; each of the
//!   order's items (a SKU, its demand summed over lines) is split over the
//!   plan's locations, the cheapest per unit first.
//! - **Candidates** are the locations that are active, ship to the
//!   destination, have capacity left and hold ATP of some demanded item
//!   ([`Exclusion`] says why another was left out).
//! - **Cost**: Σ over shipments of `per_shipment + km × per_km + units ×
//!   per_unit`, each shipment rounded to whole minor units (half away from
//!   zero), plus `split_penalty` per shipment beyond the first. Distance is
//!   haversine with R = [`EARTH_RADIUS_KM`].
//! - **Order of plans** (best first): with [`FillRule::Partial`], more units
//!   filled first; then by policy — [`Policy::LowestCost`]: cost;
//!   [`Policy::FewestShipments`]: shipments, then cost; [`Policy::Nearest`]:
//!   the largest shipment distance, then the sum of distances. Equal plans
//!   break by their locations' (priority, id), smallest first, compared in
//!   order: a lower priority number wins.
//! - **Search**: every set of 1..=`max_shipments` candidates when there are at
//!   most `work_budget` such sets (exact; a set that cannot beat the worst
//!   of four complete leaders — by a cost floor of one unit per location,
//!   its exact distances, or its size — is counted but not filled, which
//!   changes no answer); beyond that every single location,
//!   then greedy growth (add the location that fills most, then by policy),
//!   then improving swaps, drops and additions until the budget is spent
//!   or nothing improves.

mod search;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use crate::ids::LocationId;

pub use search::plan;

/// Mean Earth radius (IUGG) for haversine distances, in km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;
/// The work budget (plans evaluated) when a request names none.
pub const DEFAULT_WORK_BUDGET: u32 = 20_000;
/// The largest work budget a request may ask for.
pub const MAX_WORK_BUDGET: u32 = 1_000_000;
/// The most shipments one plan may have.
pub const MAX_SHIPMENTS: usize = 10;
/// How many runner-up plans an answer explains.
pub const MAX_ALTERNATIVES: usize = 3;
/// The shipments a request gets when it names no limit.
pub const DEFAULT_MAX_SHIPMENTS: usize = 4;
/// Most lines one Allocate may have.
pub const MAX_ORDER_LINES: usize = 50;
/// Label key Allocate keeps its request's fingerprint under.
pub const ALLOCATE_LABEL: &str = "atp.allocate";

/// A point on Earth, in degrees.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GeoPoint {
    /// −90..=90.
    pub latitude: f64,
    /// −180..=180.
    pub longitude: f64,
}

/// Great-circle distance in km (haversine, R = [`EARTH_RADIUS_KM`]).
pub fn haversine_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (lat_a, lat_b) = (a.latitude.to_radians(), b.latitude.to_radians());
    let half_dlat = (lat_b - lat_a) / 2.0;
    let half_dlon = (b.longitude - a.longitude).to_radians() / 2.0;
    let h = half_dlat.sin().powi(2) + lat_a.cos() * lat_b.cos() * half_dlon.sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// What shipping from a location costs, in integer minor currency units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CostModel {
    /// Per shipment.
    pub per_shipment: i64,
    /// Per km from the location to the destination.
    pub per_km: i64,
    /// Per unit shipped.
    pub per_unit: i64,
}

impl CostModel {
    /// One shipment of `units` over `km`, rounded to whole minor units.
    pub fn shipment(&self, km: f64, units: i64) -> i64 {
        let distance = (km * self.per_km as f64).round() as i64;
        self.per_shipment
            .saturating_add(distance)
            .saturating_add(units.saturating_mul(self.per_unit))
    }
}

/// What a plan optimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Least total cost.
    #[default]
    LowestCost,
    /// Smallest largest shipment distance, then smallest sum of distances.
    Nearest,
    /// Fewest shipments, then least cost.
    FewestShipments,
}

/// Whether an order may be held in part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FillRule {
    /// Every unit or nothing.
    #[default]
    AllOrNothing,
    /// As many units as can be held; the rest is backordered.
    Partial,
}

/// Where an order goes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Destination {
    /// The address's point.
    pub point: GeoPoint,
    /// ISO 3166-1 alpha-2 country, e.g. `US`.
    pub country: String,
    /// ISO 3166-2 region, e.g. `US-CA` (empty: unknown).
    pub region: String,
}

/// A location the order might ship from, with what it can give now.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Its id.
    pub location: LocationId,
    /// Its point.
    pub point: GeoPoint,
    /// Whether it is ACTIVE.
    pub active: bool,
    /// Countries (`US`) and regions (`US-CA`) it ships to; empty: anywhere.
    pub ships_to: Vec<String>,
    /// Its costs.
    pub cost: CostModel,
    /// Lower ranks first among equal plans.
    pub priority: u32,
    /// Shipments it may still take today (`None`: unlimited).
    pub orders_left: Option<i64>,
    /// Units it may still ship today (`None`: unlimited).
    pub units_left: Option<i64>,
    /// ATP of each of the order's items here (by item index).
    pub atp: Vec<i64>,
}

impl Candidate {
    /// Whether it ships to `destination`.
    pub fn ships_to(&self, destination: &Destination) -> bool {
        self.ships_to.is_empty()
            || self.ships_to.iter().any(|area| {
                area == &destination.country
                    || (!destination.region.is_empty() && area == &destination.region)
            })
    }
}

/// An order's items: distinct SKUs with the units wanted of each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// Units wanted, by item.
    pub demand: Vec<i64>,
    /// The most units of each item the channel may hold (its channel ATP);
    /// `i64::MAX` for no limit.
    pub limit: Vec<i64>,
}

/// How to choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// What to optimise.
    pub policy: Policy,
    /// Whole order or part.
    pub fill: FillRule,
    /// 1..=[`MAX_SHIPMENTS`]; 1 forbids splitting.
    pub max_shipments: usize,
    /// Cost added per shipment beyond the first.
    pub split_penalty: i64,
    /// Plans evaluated at most.
    pub work_budget: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            policy: Policy::LowestCost,
            fill: FillRule::AllOrNothing,
            max_shipments: DEFAULT_MAX_SHIPMENTS,
            split_penalty: 0,
            work_budget: DEFAULT_WORK_BUDGET,
        }
    }
}

/// One location's part of a plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Shipment {
    /// Where from.
    pub location: LocationId,
    /// Its priority (for ties).
    pub priority: u32,
    /// Distance to the destination.
    pub km: f64,
    /// Its cost, rounded to whole minor units (no split penalty).
    pub cost: i64,
    /// Units of each item it ships (by item index).
    pub units: Vec<i64>,
    /// Shipments the location may take today after this one (`None`: unlimited).
    pub orders_left: Option<i64>,
    /// Units it may ship today after this one (`None`: unlimited).
    pub units_left: Option<i64>,
}

impl Shipment {
    /// Units shipped, all items.
    pub fn total_units(&self) -> i64 {
        self.units.iter().sum()
    }
}

/// A way to fill the order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Its shipments, in the order of the candidates' (priority, id).
    pub shipments: Vec<Shipment>,
    /// Units of each item not filled.
    pub backordered: Vec<i64>,
    /// Units filled.
    pub filled: i64,
    /// Σ shipment costs + split penalty.
    pub cost: i64,
    /// Largest shipment distance.
    pub max_km: f64,
    /// Sum of shipment distances.
    pub total_km: f64,
}

impl Plan {
    /// Whether nothing is backordered.
    pub fn is_complete(&self) -> bool {
        self.backordered.iter().all(|units| *units == 0)
    }

    /// Orders `self` against `other` under `policy` (Less: `self` is better).
    pub fn compare(&self, other: &Plan, policy: Policy) -> Ordering {
        let by_policy = match policy {
            Policy::LowestCost => self.cost.cmp(&other.cost),
            Policy::FewestShipments => {
                self.shipments.len().cmp(&other.shipments.len()).then(self.cost.cmp(&other.cost))
            }
            Policy::Nearest => {
                self.max_km.total_cmp(&other.max_km).then(self.total_km.total_cmp(&other.total_km))
            }
        };
        other.filled.cmp(&self.filled).then(by_policy).then_with(|| self.tie_break(other))
    }

    fn tie_break(&self, other: &Plan) -> Ordering {
        let ranks = |plan: &Plan| {
            let mut ranks: Vec<(u32, LocationId)> = plan
                .shipments
                .iter()
                .map(|shipment| (shipment.priority, shipment.location.clone()))
                .collect();
            ranks.sort();
            ranks
        };
        ranks(self).cmp(&ranks(other))
    }
}

/// Why a location is not a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusion {
    /// PAUSED or RETIRED.
    NotActive,
    /// It does not ship to the destination's country or region.
    DoesNotShipThere,
    /// Its daily capacity (orders or units) is used up.
    NoCapacity,
    /// No ATP of any item the order wants.
    NoStock,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The best plan the fill rule admits, if any.
    pub plan: Option<Plan>,
    /// The next best admissible plans, best first (at most [`MAX_ALTERNATIVES`]).
    pub alternatives: Vec<Plan>,
    /// Plans evaluated.
    pub work: u32,
    /// Whether every set of candidates was evaluated.
    pub exact: bool,
    /// Locations left out, and why.
    pub excluded: Vec<(LocationId, Exclusion)>,
}

/// The distinct SKUs `lines` need and the units of each, in order of first
/// mention: a kit's line becomes its components × quantity, and units of
/// one SKU are summed over every line that needs it (a kit's component and
/// a line of its own alike).
pub fn demand_of(
    lines: &[(crate::ids::Sku, i64)],
    kits: &std::collections::BTreeMap<crate::ids::Sku, Vec<(crate::ids::Sku, i64)>>,
) -> Vec<(crate::ids::Sku, i64)> {
    let mut demand: Vec<(crate::ids::Sku, i64)> = Vec::new();
    let mut add =
        |sku: &crate::ids::Sku, units: i64| match demand.iter_mut().find(|(s, _)| s == sku) {
            Some((_, total)) => *total = total.saturating_add(units),
            None => demand.push((sku.clone(), units)),
        };
    for (sku, quantity) in lines {
        match kits.get(sku) {
            Some(components) => {
                for (component, per_kit) in components {
                    add(component, quantity.saturating_mul(*per_kit));
                }
            }
            None => add(sku, *quantity),
        }
    }
    demand
}

/// A validated Allocate.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocateRequest {
    /// The order id: idempotency key and reservation id.
    pub order_id: crate::ids::ReservationId,
    /// The channel whose rules bind the holds.
    pub channel: crate::ids::ChannelId,
    /// Where it goes.
    pub destination: Destination,
    /// The order's lines as given (a SKU may repeat).
    pub lines: Vec<(crate::ids::Sku, i64)>,
    /// How to choose.
    pub rules: Rules,
    /// Hold lifetime.
    pub ttl_ms: i64,
    /// Plan only.
    pub dry_run: bool,
    /// Kept on the reservation (with the fingerprint label added).
    pub metadata: crate::reservation::Metadata,
    /// Hash of everything but `dry_run`: a retry carries the same.
    pub fingerprint: u64,
    /// A rebind: the HELD reservation to move (`lines` are then its lines,
    /// filled in by the server).
    pub rebind: Option<crate::ids::ReservationId>,
}
