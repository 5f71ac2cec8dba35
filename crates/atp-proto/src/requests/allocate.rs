//! Allocate → [`AllocateRequest`], and its plans → replies.

use atp_core::catalog::{MAX_COST_MINOR, is_area_code};
use atp_core::ids::{ChannelId, MAX_LABELS_PER_RESERVATION, ReservationId, Sku};
use atp_core::routing::{
    ALLOCATE_LABEL, AllocateRequest, DEFAULT_MAX_SHIPMENTS, DEFAULT_WORK_BUDGET, Destination,
    Exclusion, FillRule, GeoPoint, MAX_ORDER_LINES, MAX_SHIPMENTS, MAX_WORK_BUDGET, Plan, Policy,
    Rules,
};
use atp_core::{CoreError, ids::validate_line_quantity};
use xxhash_rust::xxh3::Xxh3;

use super::{Violations, parse_metadata, ttl_ms, within_count};
use crate::v1;

/// Allocate. `ttl_seconds == 0` takes `default_ttl_ms`; `max_shipments == 0`
/// is [`DEFAULT_MAX_SHIPMENTS`], `work_budget == 0` [`DEFAULT_WORK_BUDGET`];
/// `allow_split = false` allows one shipment.
pub fn parse_allocate(
    message: v1::AllocateRequest,
    default_ttl_ms: i64,
) -> Result<AllocateRequest, CoreError> {
    let mut violations = Violations::default();
    let order_id = violations.parse(ReservationId::parse("order_id", &message.order_id));
    let channel = violations.parse(ChannelId::parse("channel_id", &message.channel_id));
    let ttl_ms = violations.parse(ttl_ms("ttl_seconds", message.ttl_seconds, default_ttl_ms));
    let destination = destination(&mut violations, message.destination.as_ref());
    let mut lines = None;
    let rebind = if message.rebind_reservation_id.is_empty() {
        None
    } else {
        violations
            .parse(ReservationId::parse("rebind_reservation_id", &message.rebind_reservation_id))
    };
    let rebinding = !message.rebind_reservation_id.is_empty();
    if rebinding && !message.lines.is_empty() {
        violations.push("lines", "must be empty in a rebind: the order is the reservation's lines");
    } else if rebinding {
        lines = Some(Vec::new());
    } else if message.lines.is_empty() {
        violations.push("lines", "must have at least one line");
    } else if within_count(&mut violations, "lines", message.lines.len(), MAX_ORDER_LINES) {
        lines = order_lines(&mut violations, &message.lines);
    }
    let policy = match v1::RoutingPolicy::try_from(message.policy) {
        Ok(v1::RoutingPolicy::Unspecified | v1::RoutingPolicy::LowestCost) => Policy::LowestCost,
        Ok(v1::RoutingPolicy::Nearest) => Policy::Nearest,
        Ok(v1::RoutingPolicy::FewestShipments) => Policy::FewestShipments,
        Err(_) => {
            violations.push("policy", format!("{} is not a known policy", message.policy));
            Policy::LowestCost
        }
    };
    let fill = match v1::FillRule::try_from(message.fill) {
        Ok(v1::FillRule::Unspecified | v1::FillRule::AllOrNothing) => FillRule::AllOrNothing,
        Ok(v1::FillRule::Partial) => FillRule::Partial,
        Err(_) => {
            violations.push("fill", format!("{} is not a known fill rule", message.fill));
            FillRule::AllOrNothing
        }
    };
    let max_shipments = match message.max_shipments {
        0 => DEFAULT_MAX_SHIPMENTS,
        wanted if wanted as usize <= MAX_SHIPMENTS => wanted as usize,
        wanted => {
            violations.push("max_shipments", format!("is {wanted}; must be 0..={MAX_SHIPMENTS}"));
            1
        }
    };
    let max_shipments = if message.allow_split == Some(false) { 1 } else { max_shipments };
    if !(0..=MAX_COST_MINOR).contains(&message.split_penalty) {
        violations.push(
            "split_penalty",
            format!("is {}; must be 0..={MAX_COST_MINOR}", message.split_penalty),
        );
    }
    let work_budget = match message.work_budget {
        0 => DEFAULT_WORK_BUDGET,
        wanted if wanted <= MAX_WORK_BUDGET => wanted,
        wanted => {
            violations.push("work_budget", format!("is {wanted}; must be 0..={MAX_WORK_BUDGET}"));
            1
        }
    };
    let skus = message.lines.iter().map(|line| line.sku.as_str());
    let reserved = super::reserved::reserved_names("lines", skus, message.metadata.as_ref());
    let reserved_label = reserved.iter().any(|violation| violation.field.starts_with("metadata"));
    violations.extend(reserved);
    let mut metadata = parse_metadata(&mut violations, "metadata", message.metadata.clone());
    if !reserved_label && metadata.labels.len() >= MAX_LABELS_PER_RESERVATION {
        violations.push(
            "metadata.labels",
            format!(
                "has {}; Allocate keeps one of the {MAX_LABELS_PER_RESERVATION} for itself",
                metadata.labels.len()
            ),
        );
    }
    if metadata.order_id.is_empty() {
        metadata.order_id = message.order_id.clone();
    }
    let rules =
        Rules { policy, fill, max_shipments, split_penalty: message.split_penalty, work_budget };
    let fingerprint = fingerprint(&message, &metadata, &rules);
    metadata.labels.insert(ALLOCATE_LABEL.to_owned(), format!("{fingerprint:016x}"));
    let request = match (order_id, channel, destination, lines, ttl_ms) {
        (Some(order_id), Some(channel), Some(destination), Some(lines), Some(ttl_ms)) => {
            Some(AllocateRequest {
                order_id,
                channel,
                destination,
                lines,
                rules,
                ttl_ms,
                dry_run: message.dry_run,
                metadata,
                fingerprint,
                rebind,
            })
        }
        _ => None,
    };
    violations.finish(request)
}

fn destination(
    violations: &mut Violations,
    message: Option<&v1::Destination>,
) -> Option<Destination> {
    let Some(message) = message else {
        violations.push("destination", "must be set");
        return None;
    };
    let mut good = true;
    if !message.latitude.is_finite() || !(-90.0..=90.0).contains(&message.latitude) {
        violations.push("destination.latitude", "must be -90..=90");
        good = false;
    }
    if !message.longitude.is_finite() || !(-180.0..=180.0).contains(&message.longitude) {
        violations.push("destination.longitude", "must be -180..=180");
        good = false;
    }
    if message.country.len() != 2 || !is_area_code(&message.country) {
        violations.push("destination.country", "must be an ISO 3166-1 alpha-2 code such as US");
        good = false;
    }
    let region_ok = message.region.is_empty()
        || (is_area_code(&message.region)
            && message.region.len() > 2
            && message.region.starts_with(&message.country));
    if !region_ok {
        violations.push(
            "destination.region",
            "must be empty or an ISO 3166-2 code of the country, such as US-CA",
        );
        good = false;
    }
    good.then(|| Destination {
        point: GeoPoint { latitude: message.latitude, longitude: message.longitude },
        country: message.country.clone(),
        region: message.region.clone(),
    })
}

fn order_lines(violations: &mut Violations, lines: &[v1::OrderLine]) -> Option<Vec<(Sku, i64)>> {
    let mut parsed = Vec::with_capacity(lines.len());
    let mut all_good = true;
    for (index, line) in lines.iter().enumerate() {
        let sku = violations.parse(Sku::parse(&format!("lines[{index}].sku"), &line.sku));
        let quantity = violations
            .check(validate_line_quantity(&format!("lines[{index}].quantity"), line.quantity));
        match (sku, quantity) {
            (Some(sku), true) => parsed.push((sku, line.quantity)),
            _ => all_good = false,
        }
    }
    all_good.then_some(parsed)
}

/// A hash of the request, but for `dry_run`: a retry of the same order with
/// the same request has the same fingerprint. The rules are hashed as
/// understood (an omitted policy and LOWEST_COST are the same request).
fn fingerprint(
    message: &v1::AllocateRequest,
    metadata: &atp_core::reservation::Metadata,
    rules: &Rules,
) -> u64 {
    let mut hash = Xxh3::new();
    let mut text = |value: &str| {
        hash.update(&(value.len() as u64).to_le_bytes());
        hash.update(value.as_bytes());
    };
    text(&message.order_id);
    text(&message.channel_id);
    text(&message.rebind_reservation_id);
    let destination = message.destination.clone().unwrap_or_default();
    text(&destination.country);
    text(&destination.region);
    for line in &message.lines {
        text(&line.sku);
        text(&line.quantity.to_string());
    }
    text(&metadata.order_id);
    for (key, value) in &metadata.labels {
        text(key);
        text(value);
    }
    let numbers = [
        destination.latitude.to_bits(),
        destination.longitude.to_bits(),
        match rules.policy {
            Policy::LowestCost => 1,
            Policy::Nearest => 2,
            Policy::FewestShipments => 3,
        },
        rules.max_shipments as u64,
        match rules.fill {
            FillRule::AllOrNothing => 1,
            FillRule::Partial => 2,
        },
        u64::from(message.ttl_seconds),
        rules.split_penalty as u64,
        u64::from(rules.work_budget),
    ];
    for number in numbers {
        hash.update(&number.to_le_bytes());
    }
    hash.digest()
}

/// A plan as the API shows it; `skus` names the plan's items.
pub fn routing_plan(plan: &Plan, skus: &[Sku]) -> v1::RoutingPlan {
    let lines = |units: &[i64]| -> Vec<v1::OrderLine> {
        units
            .iter()
            .zip(skus)
            .filter(|(units, _)| **units > 0)
            .map(|(units, sku)| v1::OrderLine { sku: sku.to_string(), quantity: *units })
            .collect()
    };
    v1::RoutingPlan {
        shipments: plan
            .shipments
            .iter()
            .map(|shipment| v1::PlannedShipment {
                location_id: shipment.location.to_string(),
                distance_km: shipment.km,
                cost: shipment.cost,
                lines: lines(&shipment.units),
                units: shipment.total_units(),
                orders_left: shipment.orders_left,
                units_left: shipment.units_left,
            })
            .collect(),
        cost: plan.cost,
        units: plan.filled,
        max_distance_km: plan.max_km,
        total_distance_km: plan.total_km,
        backordered: lines(&plan.backordered),
    }
}

/// An exclusion's reason as the API spells it.
pub fn exclusion_name(exclusion: Exclusion) -> &'static str {
    match exclusion {
        Exclusion::NotActive => "NOT_ACTIVE",
        Exclusion::DoesNotShipThere => "DOES_NOT_SHIP_THERE",
        Exclusion::NoCapacity => "NO_CAPACITY",
        Exclusion::NoStock => "NO_STOCK",
    }
}
