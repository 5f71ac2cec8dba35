//! Daily capacity counters (issue 12): how many shipments and units a
//! location has taken on its local day.
//!
//! A counter is a position of a reserved SKU, `~cap/orders/<location>/<day>`
//! or `~cap/units/<location>/<day>` (day `YYYY-MM-DD`, the location's local
//! date), at that location. Allocate holds 1 unit of the orders counter and
//! the shipment's units of the units counter in the same Reserve as the
//! stock, so the shard that owns the counter (`shard_of` of its SKU) counts
//! it durably and all or nothing with the stock:
//!
//! - a hold takes capacity, refused past the location's configured limit
//!   (units held + committed on the counter ≤ limit; no safety stock, no
//!   channel rule);
//! - Commit keeps it taken; Release, expiry and Cancel give it back to the
//!   counter of the day it was taken, so after the location's midnight a
//!   release no longer frees today's capacity; a new day is a new counter.
//!
//! SKUs beginning with [`CAPACITY_PREFIX`] are reserved for these counters.

use crate::catalog::Catalog;
use crate::ids::{LocationId, Sku};

/// The prefix of every counter SKU.
pub const CAPACITY_PREFIX: &str = "~cap/";
/// The longest location id that may have a daily limit: its counter SKU
/// (`~cap/orders/<id>/YYYY-MM-DD`, 23 bytes more) must be a valid id.
pub const MAX_LIMITED_LOCATION_ID_BYTES: usize = crate::ids::MAX_ID_BYTES - 23;

/// What a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Shipments (1 per plan location).
    Orders,
    /// Units shipped.
    Units,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::Orders => "orders",
            Counter::Units => "units",
        }
    }
}

/// The SKU of `location`'s `counter` on local `day` (`YYYY-MM-DD`); `None`
/// when the location's id is too long for one (see
/// [`MAX_LIMITED_LOCATION_ID_BYTES`], which configuration enforces).
pub fn counter_sku(counter: Counter, location: &LocationId, day: &str) -> Option<Sku> {
    let text = format!("{CAPACITY_PREFIX}{}/{location}/{day}", counter.name());
    Sku::parse("sku", &text).ok()
}

/// Whether `sku` is a capacity counter.
pub fn is_counter(sku: &Sku) -> bool {
    sku.as_str().starts_with(CAPACITY_PREFIX)
}

/// The counter `sku` names and its location, if it is one.
pub fn parse_counter(sku: &Sku) -> Option<(Counter, &str)> {
    let rest = sku.as_str().strip_prefix(CAPACITY_PREFIX)?;
    let (kind, rest) = rest.split_once('/')?;
    let (location, _day) = rest.rsplit_once('/')?;
    let counter = match kind {
        "orders" => Counter::Orders,
        "units" => Counter::Units,
        _ => return None,
    };
    Some((counter, location))
}

/// The limit of the counter `sku` at `location`: `None` when `sku` is not
/// a counter; `Some(0)` when it names another location or an unknown one
/// (it takes nothing); else the location's configured daily figure, where
/// 0 means unlimited (`i64::MAX`).
pub fn counter_limit(sku: &Sku, location: &LocationId, catalog: &Catalog) -> Option<i64> {
    if !is_counter(sku) {
        return None;
    }
    let Some((counter, named)) = parse_counter(sku) else { return Some(0) };
    if named != location.as_str() {
        return Some(0);
    }
    let Some(configured) = catalog.locations.get(location) else { return Some(0) };
    let limit = match counter {
        Counter::Orders => configured.daily_capacity,
        Counter::Units => configured.fulfilment.daily_units,
    };
    Some(if limit == 0 { i64::MAX } else { limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_name_their_location_and_day() {
        let location = LocationId::parse("location", "dc-1").expect("an id");
        let sku = counter_sku(Counter::Units, &location, "2026-12-02").expect("a counter");
        assert_eq!(sku.as_str(), "~cap/units/dc-1/2026-12-02");
        assert!(is_counter(&sku));
        assert_eq!(parse_counter(&sku), Some((Counter::Units, "dc-1")));
        let plain = Sku::parse("sku", "tee").expect("an id");
        assert!(!is_counter(&plain));
        assert_eq!(counter_limit(&plain, &location, &Catalog::default()), None);
        assert_eq!(counter_limit(&sku, &location, &Catalog::default()), Some(0));
    }
}

/// Whether `name` is a time zone this build knows (the bundled IANA database).
pub fn is_known_time_zone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

/// The local date (`YYYY-MM-DD`) at `now_ms` in the IANA zone `time_zone`
/// (empty or unknown: UTC).
pub fn local_day(time_zone: &str, now_ms: i64) -> String {
    let zone = if time_zone.is_empty() {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::get(time_zone).unwrap_or(jiff::tz::TimeZone::UTC)
    };
    let instant = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    instant.to_zoned(zone).date().to_string()
}

#[cfg(test)]
mod day_tests {
    use super::*;

    #[test]
    fn the_local_day_turns_at_local_midnight() {
        // 2026-12-03T04:59:59Z is 23:59:59 on the 2nd in New York (EST, UTC−5).
        let before = 1_796_273_999_000;
        assert_eq!(local_day("UTC", before), "2026-12-03");
        assert_eq!(local_day("America/New_York", before), "2026-12-02");
        assert_eq!(local_day("America/New_York", before + 1_000), "2026-12-03");
        assert_eq!(local_day("", before), "2026-12-03");
        assert!(is_known_time_zone("Europe/Berlin"));
        assert!(!is_known_time_zone("Mars/Base"));
    }
}
