//! `allocate`: the server chooses the locations that ship an order and holds
//! them under the order id; atpctl prints the plan, what else it weighed and
//! what it left out.

use std::process::ExitCode;

use anyhow::Context as _;
use atp_client::{Allocate, Destination, FillRule};
use atp_proto::v1::{AllocateRequest, AllocateResponse, OrderLine, PlannedShipment, RoutingPlan};
use serde_json::{Value, json};

use crate::cli::AllocateArgs;
use crate::client::Context;
use crate::commands::reservation::reservation_json;
use crate::format::{reservation_state, time_ms};
use crate::table::{Fields, Table};

pub async fn allocate(context: &Context, args: AllocateArgs) -> anyhow::Result<ExitCode> {
    let order_id = args.order_id().to_owned();
    let request = request(&args);
    let clients = context.connect().await?;
    // The generated reply rather than the SDK's `Client::allocate`, so that
    // --json shows every field as the server sent it; the request is the
    // SDK's, so the same order from the SDK and from atpctl is the same
    // request (a retry by either replays).
    let response =
        clients.rpc().allocate(request).await.with_context(|| format!("allocate {order_id}"))?;
    context.print(|| allocation_json(&response), || allocation_text(&order_id, &response));
    Ok(ExitCode::SUCCESS)
}

/// The request, built as the SDK builds it.
fn request(args: &AllocateArgs) -> AllocateRequest {
    let mut destination = Destination::new(args.to_country.as_str(), args.latitude, args.longitude);
    if let Some(region) = &args.to_region {
        destination = destination.region(region.as_str());
    }
    let mut allocate = Allocate::new(args.order_id(), args.channel.as_str(), destination)
        .policy(args.policy.into())
        .max_shipments(args.max_shipments.unwrap_or(0))
        .ttl_seconds(args.ttl_seconds.unwrap_or(0))
        .split_penalty(args.split_penalty.unwrap_or(0))
        .work_budget(args.work_budget.unwrap_or(0));
    for line in &args.lines {
        allocate = allocate.line(line.sku.as_str(), line.quantity);
    }
    if args.no_split {
        allocate = allocate.no_split();
    }
    if args.partial {
        allocate = allocate.fill(FillRule::Partial);
    }
    if args.dry_run {
        allocate = allocate.dry_run();
    }
    allocate.into()
}

fn lines_json(lines: &[OrderLine]) -> Vec<Value> {
    lines.iter().map(|line| json!({ "sku": line.sku, "quantity": line.quantity })).collect()
}

fn shipment_json(shipment: &PlannedShipment) -> Value {
    json!({
        "location_id": shipment.location_id,
        "distance_km": shipment.distance_km,
        "cost": shipment.cost,
        "lines": lines_json(&shipment.lines),
        "units": shipment.units,
        "orders_left": shipment.orders_left,
        "units_left": shipment.units_left,
    })
}

fn plan_json(plan: &RoutingPlan) -> Value {
    json!({
        "shipments": plan.shipments.iter().map(shipment_json).collect::<Vec<_>>(),
        "cost": plan.cost,
        "units": plan.units,
        "max_distance_km": plan.max_distance_km,
        "total_distance_km": plan.total_distance_km,
        "backordered": lines_json(&plan.backordered),
    })
}

/// Every field of the answer (`reservation` and `plan` null when absent).
pub fn allocation_json(response: &AllocateResponse) -> Value {
    let excluded: Vec<Value> = response
        .excluded
        .iter()
        .map(|excluded| json!({ "location_id": excluded.location_id, "reason": excluded.reason }))
        .collect();
    json!({
        "reservation": response.reservation.as_ref().map(reservation_json),
        "plan": response.plan.as_ref().map(plan_json),
        "alternatives": response.alternatives.iter().map(plan_json).collect::<Vec<_>>(),
        "excluded": excluded,
        "work": response.work,
        "exact": response.exact,
        "dry_run": response.dry_run,
        "replayed": response.replayed,
        "attempts": response.attempts,
        "epoch": response.epoch,
    })
}

/// `tee×2 mug×1`.
fn lines_text(lines: &[OrderLine]) -> String {
    let lines: Vec<String> =
        lines.iter().map(|line| format!("{}×{}", line.sku, line.quantity)).collect();
    lines.join(" ")
}

/// A distance with one decimal.
fn km(distance_km: f64) -> String {
    format!("{distance_km:.1}")
}

/// The plan (fields, then its shipments), the backorder, the alternatives,
/// the exclusions, and what was held.
pub fn allocation_text(order_id: &str, response: &AllocateResponse) -> String {
    let plan = response.plan.clone().unwrap_or_default();
    let mut fields = Fields::new();
    fields
        .add("order", order_id)
        .add("cost", plan.cost)
        .add("units", plan.units)
        .add("shipments", plan.shipments.len())
        .add("max km", km(plan.max_distance_km));
    if !response.replayed {
        let search = if response.exact { "every combination" } else { "best within the budget" };
        fields.add("work", format!("{} plans ({search})", response.work));
        fields.add("attempts", response.attempts);
    }
    fields.add("epoch", response.epoch);
    let mut shipments = Table::new(&["LOCATION", "KM>", "COST>", "UNITS>", "LINES"]);
    for shipment in &plan.shipments {
        shipments.row(vec![
            shipment.location_id.clone(),
            km(shipment.distance_km),
            shipment.cost.to_string(),
            shipment.units.to_string(),
            lines_text(&shipment.lines),
        ]);
    }
    let mut text = format!("{}\n{}", fields.render(), shipments.render());
    if !plan.backordered.is_empty() {
        let units: i64 = plan.backordered.iter().map(|line| line.quantity).sum();
        text.push_str(&format!(
            "\nbackordered: {units} unit(s): {}\n",
            lines_text(&plan.backordered)
        ));
    }
    if !response.alternatives.is_empty() {
        let mut alternatives =
            Table::new(&["ALTERNATIVE>", "COST>", "SHIPMENTS>", "MAX KM>", "UNITS>", "LOCATIONS"]);
        for (index, alternative) in response.alternatives.iter().enumerate() {
            let locations: Vec<&str> =
                alternative.shipments.iter().map(|s| s.location_id.as_str()).collect();
            alternatives.row(vec![
                (index + 1).to_string(),
                alternative.cost.to_string(),
                alternative.shipments.len().to_string(),
                km(alternative.max_distance_km),
                alternative.units.to_string(),
                locations.join(","),
            ]);
        }
        text.push('\n');
        text.push_str(&alternatives.render());
    }
    if !response.excluded.is_empty() {
        let mut excluded = Table::new(&["EXCLUDED", "REASON"]);
        for location in &response.excluded {
            excluded.row(vec![location.location_id.clone(), location.reason.clone()]);
        }
        text.push('\n');
        text.push_str(&excluded.render());
    }
    text.push('\n');
    text.push_str(&outcome_text(response));
    text
}

/// What was held: the reservation, or that nothing was; and whether this
/// answered a retry.
fn outcome_text(response: &AllocateResponse) -> String {
    if response.dry_run {
        return "dry run: nothing held\n".to_owned();
    }
    let mut fields = Fields::new();
    match &response.reservation {
        Some(reservation) => {
            fields
                .add("reservation", &reservation.reservation_id)
                .add("state", reservation_state(reservation.state))
                .add("expires", time_ms(reservation.expires_at_ms));
        }
        None => {
            fields.add("reservation", "none in the answer");
        }
    }
    let mut text = fields.render();
    if response.replayed {
        text.push_str(
            "replayed: this order was allocated before by the same request; nothing more \
             was held, and the plan shows the reservation as it stands now\n",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::{ExcludedLocation, Reservation, ReservationState};

    use super::*;

    fn line(sku: &str, quantity: i64) -> OrderLine {
        OrderLine { sku: sku.into(), quantity }
    }

    fn sample() -> AllocateResponse {
        let shipment = |location: &str, km: f64, cost: i64, lines: Vec<OrderLine>| {
            let units = lines.iter().map(|line| line.quantity).sum();
            PlannedShipment {
                location_id: location.into(),
                distance_km: km,
                cost,
                lines,
                units,
                ..Default::default()
            }
        };
        AllocateResponse {
            reservation: Some(Reservation {
                reservation_id: "o-1".into(),
                channel_id: "web".into(),
                state: ReservationState::Held as i32,
                expires_at_ms: 1_700_000_900_000,
                ..Default::default()
            }),
            plan: Some(RoutingPlan {
                shipments: vec![shipment(
                    "near",
                    111.19,
                    611,
                    vec![line("tee", 3), line("mug", 1)],
                )],
                cost: 611,
                units: 4,
                max_distance_km: 111.19,
                total_distance_km: 111.19,
                backordered: vec![line("cap", 2)],
            }),
            alternatives: vec![RoutingPlan {
                shipments: vec![
                    shipment("cheap", 556.0, 100, vec![line("tee", 1)]),
                    shipment("near", 111.19, 611, vec![line("tee", 2), line("mug", 1)]),
                ],
                cost: 711,
                units: 4,
                max_distance_km: 556.0,
                ..Default::default()
            }],
            excluded: vec![ExcludedLocation {
                location_id: "berlin".into(),
                reason: "DOES_NOT_SHIP_THERE".into(),
            }],
            work: 12,
            exact: true,
            attempts: 1,
            epoch: 1,
            ..Default::default()
        }
    }

    #[test]
    fn text_shows_the_plan_alternatives_exclusions_and_the_hold() {
        let text = allocation_text("o-1", &sample());
        assert!(text.starts_with("order      o-1\ncost       611\nunits      4\n"), "{text}");
        assert!(text.contains("max km     111.2\n"), "{text}");
        assert!(text.contains("work       12 plans (every combination)\n"), "{text}");
        assert!(
            text.contains(
                "LOCATION     KM  COST  UNITS  LINES\nnear      111.2   611      4  tee×3 mug×1\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nbackordered: 2 unit(s): cap×2\n"), "{text}");
        assert!(
            text.contains("ALTERNATIVE  COST  SHIPMENTS  MAX KM  UNITS  LOCATIONS\n          1   711          2   556.0      4  cheap,near\n"),
            "{text}"
        );
        assert!(text.contains("EXCLUDED  REASON\nberlin    DOES_NOT_SHIP_THERE\n"), "{text}");
        assert!(
            text.ends_with("state        HELD\nexpires      2023-11-14T22:28:20.000Z\n"),
            "{text}"
        );
        assert!(!text.contains("replayed") && !text.contains("dry run"), "{text}");
    }

    #[test]
    fn a_dry_run_and_a_replay_say_so() {
        let dry = AllocateResponse { reservation: None, dry_run: true, ..sample() };
        assert!(allocation_text("o-1", &dry).ends_with("\ndry run: nothing held\n"));
        let replayed = AllocateResponse { replayed: true, alternatives: vec![], ..sample() };
        let text = allocation_text("o-1", &replayed);
        assert!(text.contains("\nreplayed: this order was allocated before"), "{text}");
        assert!(!text.contains("work "), "a replay plans nothing: {text}");
    }

    #[test]
    fn json_has_every_field() {
        let value = allocation_json(&sample());
        assert_eq!(value["reservation"]["state"], "HELD");
        assert_eq!(value["plan"]["shipments"][0]["lines"][1]["sku"], "mug");
        assert_eq!(value["plan"]["shipments"][0]["units_left"], Value::Null);
        assert_eq!(value["plan"]["backordered"][0]["quantity"], 2);
        assert_eq!(value["alternatives"][0]["cost"], 711);
        assert_eq!(value["excluded"][0]["reason"], "DOES_NOT_SHIP_THERE");
        assert_eq!((value["work"].as_u64(), value["exact"].as_bool()), (Some(12), Some(true)));
        assert_eq!(
            (value["dry_run"].as_bool(), value["replayed"].as_bool()),
            (Some(false), Some(false))
        );
        let dry =
            allocation_json(&AllocateResponse { reservation: None, dry_run: true, ..sample() });
        assert!(dry["reservation"].is_null() && dry["dry_run"] == true);
    }
}
