//! Configuration the calculation depends on: locations and channels, each
//! with one [`Lifecycle`].

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{CoreError, FieldViolation};
use crate::ids::{ChannelId, LocationId, MAX_EVENT_QUANTITY, Sku, validate_text};
pub use crate::kits::{Kit, MAX_KITS};
pub use crate::routing::CostModel;

/// Most locations one deployment may configure.
pub const MAX_LOCATIONS: usize = 10_000;
/// Most channels one deployment may configure.
pub const MAX_CHANNELS: usize = 1_000;
/// Most locations one channel may draw from.
pub const MAX_LOCATIONS_PER_CHANNEL: usize = 1_000;

/// What sort of building a location is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum LocationKind {
    /// A distribution centre.
    #[default]
    Warehouse,
    /// A retail store (ship-from-store, POS).
    Store,
    /// A third-party logistics provider.
    ThirdParty,
}

/// Where a location or a channel is in its life. Only an ACTIVE one promises.
///
/// - `Active`: takes holds; a location feeds its channels.
/// - `Paused`: takes no new hold and promises nothing (its per-location and
///   channel ATP show 0); its stock and open holds stay as they are, stock
///   events still apply, and Commit, Release, Cancel, expiry and shipments of
///   existing reservations work. It can be made ACTIVE again.
/// - `Retired`: like paused, and final: it can never be made ACTIVE or PAUSED
///   again. Retiring frees nothing by itself: open holds end as they would
///   (commit, release, expiry), committed units ship, and stock stays
///   visible so the remainder can be counted, shipped or adjusted out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Lifecycle {
    /// Promising.
    #[default]
    Active,
    /// Not promising for now.
    Paused,
    /// Never promising again.
    Retired,
}

impl Lifecycle {
    /// Whether it takes holds and counts in ATP.
    pub fn is_active(self) -> bool {
        self == Lifecycle::Active
    }

    /// Whether moving from `self` to `next` is allowed (everything but leaving RETIRED).
    pub fn may_become(self, next: Lifecycle) -> bool {
        self != Lifecycle::Retired || next == Lifecycle::Retired
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lifecycle::Active => "ACTIVE",
            Lifecycle::Paused => "PAUSED",
            Lifecycle::Retired => "RETIRED",
        })
    }
}

/// A fulfilment location.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// Its id.
    pub id: LocationId,
    /// Warehouse, store or 3PL.
    pub kind: LocationKind,
    /// Human name.
    pub name: String,
    /// Latitude in degrees (−90..=90).
    pub latitude: f64,
    /// Longitude in degrees (−180..=180).
    pub longitude: f64,
    /// Units never promised at this location, per SKU.
    pub safety_stock: i64,
    /// Shipments per day (0 = unlimited); for routing.
    pub daily_capacity: i64,
    /// Cost units per shipment; for routing.
    pub shipping_cost: f64,
    /// Only an ACTIVE location feeds channels and takes new holds.
    pub state: Lifecycle,
    /// Where it ships, what that costs, its day and its rank (routing).
    pub fulfilment: Fulfilment,
}

/// Most entries in a location's `ships_to`.
pub const MAX_SHIPS_TO: usize = 64;
/// The largest cost figure (per shipment, per km, per unit), in minor units.
pub const MAX_COST_MINOR: i64 = 1_000_000_000;
/// The longest time zone name.
pub const MAX_TIME_ZONE_BYTES: usize = 64;

/// A location as a member of the fulfilment network (what Allocate plans with).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fulfilment {
    /// Countries (ISO 3166-1 alpha-2, `US`) and regions (ISO 3166-2,
    /// `US-CA`) it ships to; empty: anywhere.
    pub ships_to: Vec<String>,
    /// What a shipment from here costs, in integer minor currency units.
    pub cost: CostModel,
    /// IANA time zone of its day (capacity resets at its local midnight);
    /// empty: UTC.
    pub time_zone: String,
    /// Units per day it can ship (0 = unlimited).
    pub daily_units: i64,
    /// Among equal plans, the lower number ships first.
    pub priority: u32,
}

/// Whether `area` is a country (`US`) or region (`US-CA`) code.
pub fn is_area_code(area: &str) -> bool {
    let bytes = area.as_bytes();
    let country = bytes.len() >= 2 && bytes[..2].iter().all(u8::is_ascii_uppercase);
    let region = match bytes.get(2..) {
        None | Some([]) => true,
        Some([b'-', rest @ ..]) => {
            (1..=3).contains(&rest.len())
                && rest.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        }
        Some(_) => false,
    };
    country && region
}

/// Whether `name` has the shape of an IANA zone name (`Europe/Berlin`, `UTC`).
pub fn is_time_zone_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TIME_ZONE_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
}

impl Fulfilment {
    fn validate(&self, field: &str, violations: &mut Vec<FieldViolation>) {
        if self.ships_to.len() > MAX_SHIPS_TO {
            violations.push(FieldViolation::new(
                format!("{field}.ships_to"),
                format!("has {} entries; the limit is {MAX_SHIPS_TO}", self.ships_to.len()),
            ));
        }
        for (index, area) in self.ships_to.iter().enumerate().take(MAX_SHIPS_TO) {
            if !is_area_code(area) {
                violations.push(FieldViolation::new(
                    format!("{field}.ships_to[{index}]"),
                    format!("{area:?} is neither a country (US) nor a region (US-CA) code"),
                ));
            }
        }
        let costs = [
            ("per_shipment", self.cost.per_shipment),
            ("per_km", self.cost.per_km),
            ("per_unit", self.cost.per_unit),
        ];
        for (name, value) in costs {
            if !(0..=MAX_COST_MINOR).contains(&value) {
                violations.push(FieldViolation::new(
                    format!("{field}.cost.{name}"),
                    format!("is {value}; must be 0..={MAX_COST_MINOR}"),
                ));
            }
        }
        let known = is_time_zone_name(&self.time_zone)
            && crate::capacity::is_known_time_zone(&self.time_zone);
        if !self.time_zone.is_empty() && !known {
            violations.push(FieldViolation::new(
                format!("{field}.time_zone"),
                "must be an IANA time zone name such as Europe/Berlin (empty: UTC)",
            ));
        }
        if !(0..=MAX_EVENT_QUANTITY).contains(&self.daily_units) {
            violations.push(FieldViolation::new(
                format!("{field}.daily_unit_capacity"),
                format!("must be 0..={MAX_EVENT_QUANTITY}"),
            ));
        }
    }
}

impl Location {
    /// Checks the numeric fields; `field` prefixes the names in errors.
    pub fn validate(&self, field: &str) -> Result<(), CoreError> {
        let mut violations = Vec::new();
        if let Err(v) = validate_text(&format!("{field}.name"), &self.name) {
            violations.push(v);
        }
        if !(-90.0..=90.0).contains(&self.latitude) {
            violations.push(FieldViolation::new(format!("{field}.latitude"), "must be -90..=90"));
        }
        if !(-180.0..=180.0).contains(&self.longitude) {
            violations
                .push(FieldViolation::new(format!("{field}.longitude"), "must be -180..=180"));
        }
        if !(0..=MAX_EVENT_QUANTITY).contains(&self.safety_stock) {
            violations.push(FieldViolation::new(
                format!("{field}.safety_stock"),
                format!("must be 0..={MAX_EVENT_QUANTITY}"),
            ));
        }
        if self.daily_capacity < 0 {
            violations.push(FieldViolation::new(format!("{field}.daily_capacity"), "must be >= 0"));
        }
        if !self.shipping_cost.is_finite() || self.shipping_cost < 0.0 {
            violations.push(FieldViolation::new(
                format!("{field}.shipping_cost"),
                "must be a finite number >= 0",
            ));
        }
        self.fulfilment.validate(field, &mut violations);
        let limited = self.daily_capacity > 0 || self.fulfilment.daily_units > 0;
        if limited && self.id.as_str().len() > crate::capacity::MAX_LIMITED_LOCATION_ID_BYTES {
            violations.push(FieldViolation::new(
                format!("{field}.location_id"),
                format!(
                    "a location with a daily capacity needs an id of at most {} bytes",
                    crate::capacity::MAX_LIMITED_LOCATION_ID_BYTES
                ),
            ));
        }
        if violations.is_empty() { Ok(()) } else { Err(CoreError::InvalidArgument(violations)) }
    }
}

/// A sales channel and the rule that turns location ATP into the number it is shown.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Channel {
    /// Its id.
    pub id: ChannelId,
    /// Human name.
    pub name: String,
    /// Locations that feed the channel.
    pub locations: Vec<LocationId>,
    /// Units withheld from the channel's total.
    pub buffer: i64,
    /// Most units ever shown; `None` = no cap.
    pub cap: Option<i64>,
    /// Only an ACTIVE channel takes new holds; any other shows ATP 0.
    pub state: Lifecycle,
    /// How late it shows a figure and how much of the lag's demand the
    /// published figure holds back (issue 13, [`crate::publish`]).
    pub publish: crate::publish::PublishRule,
}

impl Channel {
    /// `clamp(Σ location_atp − buffer, 0, cap)`; 0 unless the channel is ACTIVE.
    pub fn atp(&self, total_location_atp: i64) -> i64 {
        if !self.state.is_active() {
            return 0;
        }
        let atp = (total_location_atp - self.buffer).max(0);
        match self.cap {
            Some(cap) => atp.min(cap),
            None => atp,
        }
    }

    /// Whether `location` feeds this channel.
    pub fn feeds_from(&self, location: &LocationId) -> bool {
        self.locations.contains(location)
    }
}

/// All configuration: an immutable snapshot handed to each shard operation.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Catalog {
    /// Locations by id.
    pub locations: BTreeMap<LocationId, Location>,
    /// Channels by id.
    pub channels: BTreeMap<ChannelId, Channel>,
    /// Kits by their SKU.
    pub kits: BTreeMap<Sku, Kit>,
}

impl Catalog {
    /// Inserts or replaces a kit. Its components must not be kits, nor may
    /// it be a component of another kit (kits do not nest). Returns whether
    /// anything changed.
    pub fn upsert_kit(&mut self, kit: Kit) -> Result<bool, CoreError> {
        kit.validate("kit")?;
        let mut violations = Vec::new();
        for (index, (component, _)) in kit.components.iter().enumerate() {
            if self.kits.contains_key(component) {
                violations.push(FieldViolation::new(
                    format!("kit.components[{index}].sku"),
                    format!("{component} is a kit; kits do not nest"),
                ));
            }
        }
        let used_in = self.kits.values().find(|other| {
            other.sku != kit.sku && other.components.iter().any(|(c, _)| c == &kit.sku)
        });
        if let Some(other) = used_in {
            violations.push(FieldViolation::new(
                "kit.sku",
                format!("{} is a component of kit {}; kits do not nest", kit.sku, other.sku),
            ));
        }
        if !violations.is_empty() {
            return Err(CoreError::InvalidArgument(violations));
        }
        if self.kits.get(&kit.sku) == Some(&kit) {
            return Ok(false);
        }
        if !self.kits.contains_key(&kit.sku) && self.kits.len() >= MAX_KITS {
            return Err(CoreError::FailedPrecondition(format!(
                "at most {MAX_KITS} kits may be configured"
            )));
        }
        self.kits.insert(kit.sku.clone(), kit);
        Ok(true)
    }

    /// Safety stock of `location` (0 when unknown).
    pub fn safety_stock(&self, location: &LocationId) -> i64 {
        self.locations.get(location).map_or(0, |l| l.safety_stock)
    }

    /// Whether `location` exists and is ACTIVE.
    pub fn is_active(&self, location: &LocationId) -> bool {
        self.locations.get(location).is_some_and(|l| l.state.is_active())
    }

    /// Inserts or replaces a location. Returns whether anything changed.
    pub fn upsert_location(&mut self, location: Location) -> Result<bool, CoreError> {
        location.validate("location")?;
        if self.locations.get(&location.id) == Some(&location) {
            return Ok(false);
        }
        if let Some(stored) = self.locations.get(&location.id) {
            check_transition("location", location.id.as_str(), stored.state, location.state)?;
        }
        if !self.locations.contains_key(&location.id) && self.locations.len() >= MAX_LOCATIONS {
            return Err(CoreError::FailedPrecondition(format!(
                "at most {MAX_LOCATIONS} locations may be configured"
            )));
        }
        self.locations.insert(location.id.clone(), location);
        Ok(true)
    }

    /// Inserts or replaces a channel; its locations must exist. Returns whether anything changed.
    pub fn upsert_channel(&mut self, channel: Channel) -> Result<bool, CoreError> {
        let mut violations = Vec::new();
        if let Err(v) = validate_text("channel.name", &channel.name) {
            violations.push(v);
        }
        if channel.locations.len() > MAX_LOCATIONS_PER_CHANNEL {
            violations.push(FieldViolation::new(
                "channel.location_ids",
                format!(
                    "has {}; the limit is {MAX_LOCATIONS_PER_CHANNEL}",
                    channel.locations.len()
                ),
            ));
        }
        for (index, location) in channel.locations.iter().enumerate() {
            if !self.locations.contains_key(location) {
                violations.push(FieldViolation::new(
                    format!("channel.location_ids[{index}]"),
                    format!("unknown location {location}"),
                ));
            }
            if channel.locations[..index].contains(location) {
                violations.push(FieldViolation::new(
                    format!("channel.location_ids[{index}]"),
                    format!("location {location} is listed twice"),
                ));
            }
        }
        if !(0..=MAX_EVENT_QUANTITY).contains(&channel.buffer) {
            violations.push(FieldViolation::new(
                "channel.buffer",
                format!("must be 0..={MAX_EVENT_QUANTITY}"),
            ));
        }
        if channel.cap.is_some_and(|cap| cap < 0) {
            violations.push(FieldViolation::new("channel.cap", "must be >= 0"));
        }
        let publish = channel.publish;
        if !(0..=crate::publish::MAX_PUBLISH_LAG_MS).contains(&publish.lag_ms) {
            violations.push(FieldViolation::new(
                "channel.publish_lag_ms",
                format!(
                    "is {}; must be 0..={}",
                    publish.lag_ms,
                    crate::publish::MAX_PUBLISH_LAG_MS
                ),
            ));
        }
        if publish.safety_level > crate::publish::MAX_SAFETY_LEVEL {
            violations.push(FieldViolation::new(
                "channel.safety_level",
                format!(
                    "is {}; must be 0..={} (per mille)",
                    publish.safety_level,
                    crate::publish::MAX_SAFETY_LEVEL
                ),
            ));
        }
        if !violations.is_empty() {
            return Err(CoreError::InvalidArgument(violations));
        }
        if self.channels.get(&channel.id) == Some(&channel) {
            return Ok(false);
        }
        if let Some(stored) = self.channels.get(&channel.id) {
            check_transition("channel", channel.id.as_str(), stored.state, channel.state)?;
        }
        if !self.channels.contains_key(&channel.id) && self.channels.len() >= MAX_CHANNELS {
            return Err(CoreError::FailedPrecondition(format!(
                "at most {MAX_CHANNELS} channels may be configured"
            )));
        }
        self.channels.insert(channel.id.clone(), channel);
        Ok(true)
    }
}

/// Refuses leaving RETIRED: retiring is final.
fn check_transition(
    kind: &'static str,
    id: &str,
    from: Lifecycle,
    to: Lifecycle,
) -> Result<(), CoreError> {
    if from.may_become(to) {
        return Ok(());
    }
    Err(CoreError::NotActive {
        kind,
        id: id.to_owned(),
        state: from,
        operation: "change its state (retiring is final)",
    })
}
