//! Allocate on the real `atpd` binary over real gRPC (one node): a plan is
//! chosen and held as an ordinary reservation under the order id; a dry
//! run holds nothing; retries replay; bad input names its field; a short
//! order holds nothing (all or nothing) or its part (partial); concurrent
//! orders over shared stock never oversell. The cluster case is in
//! `cluster_allocate.rs`; the planner's arithmetic in atp-core's routing
//! tests.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use atp_proto::v1;
use common::Atpd;
use tonic::Code;
use tonic_types::StatusExt;

/// Locations on the equator: `(id, longitude, per shipment, per km)`.
const NETWORK: [(&str, f64, i64, i64); 3] =
    [("near", 1.0, 500, 1), ("far", 10.0, 500, 1), ("cheap", 5.0, 100, 0)];

async fn configure(atpd: &Atpd) {
    let mut config = atpd.config();
    for (id, longitude, per_shipment, per_km) in NETWORK {
        let location = v1::Location {
            location_id: id.into(),
            longitude,
            cost: Some(v1::ShippingCost { per_shipment, per_km, per_unit: 0 }),
            ships_to: vec!["US".into()],
            ..Default::default()
        };
        config
            .upsert_location(v1::UpsertLocationRequest { location: Some(location) })
            .await
            .expect("upsert location");
    }
    let mut elsewhere = v1::Location { location_id: "berlin".into(), ..Default::default() };
    elsewhere.ships_to = vec!["DE".into()];
    config
        .upsert_location(v1::UpsertLocationRequest { location: Some(elsewhere) })
        .await
        .expect("upsert location");
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: vec!["near".into(), "far".into(), "cheap".into(), "berlin".into()],
        ..Default::default()
    };
    config
        .upsert_channel(v1::UpsertChannelRequest { channel: Some(channel) })
        .await
        .expect("upsert channel");
}

fn order(id: &str, lines: &[(&str, i64)]) -> v1::AllocateRequest {
    v1::AllocateRequest {
        order_id: id.into(),
        channel_id: "web".into(),
        destination: Some(v1::Destination {
            latitude: 0.0,
            longitude: 0.0,
            country: "US".into(),
            region: "US-CA".into(),
        }),
        lines: lines
            .iter()
            .map(|(sku, quantity)| v1::OrderLine { sku: (*sku).into(), quantity: *quantity })
            .collect(),
        ttl_seconds: 600,
        ..Default::default()
    }
}

/// Units reserved per (sku, location).
async fn reserved(atpd: &Atpd, skus: &[&str]) -> BTreeMap<(String, String), i64> {
    let request = v1::GetAvailabilityRequest {
        skus: skus.iter().map(|sku| (*sku).to_owned()).collect(),
        ..Default::default()
    };
    let reply = atpd.availability().get_availability(request).await.expect("availability");
    let mut reserved = BTreeMap::new();
    for sku in reply.into_inner().skus {
        for location in sku.locations {
            reserved.insert((sku.sku.clone(), location.location_id.clone()), location.reserved);
        }
    }
    reserved
}

fn shipments(plan: &v1::RoutingPlan) -> Vec<(String, Vec<(String, i64)>)> {
    plan.shipments
        .iter()
        .map(|shipment| {
            let lines = shipment.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
            (shipment.location_id.clone(), lines)
        })
        .collect()
}

#[tokio::test]
async fn allocate_holds_the_cheapest_plan_and_explains_it() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    atpd.receive("tee", "near", 5).await;
    atpd.receive("tee", "far", 5).await;
    atpd.receive("tee", "cheap", 1).await;
    atpd.receive("tee", "berlin", 50).await;
    let mut api = atpd.availability();

    // near: 500 + round(111.195) = 611; far: 500 + 1112 = 1612; cheap
    // holds 1 of the 3 wanted. One shipment from near. The runner-up:
    // cheap 1 unit (100 + 0) + near 2 units (611) = 711.
    let mut dry = order("o-1", &[("tee", 3)]);
    dry.dry_run = true;
    let planned = api.allocate(dry).await.expect("dry run").into_inner();
    assert!(planned.dry_run && planned.reservation.is_none());
    let plan = planned.plan.expect("a plan");
    assert_eq!(shipments(&plan), vec![("near".to_owned(), vec![("tee".to_owned(), 3)])]);
    assert_eq!(plan.cost, 611);
    assert_eq!(planned.alternatives.first().map(|alternative| alternative.cost), Some(711));
    let excluded: Vec<(String, String)> =
        planned.excluded.iter().map(|e| (e.location_id.clone(), e.reason.clone())).collect();
    assert_eq!(excluded, vec![("berlin".to_owned(), "DOES_NOT_SHIP_THERE".to_owned())]);
    assert_eq!(reserved(&atpd, &["tee"]).await.values().sum::<i64>(), 0, "a dry run holds nothing");

    let held = api.allocate(order("o-1", &[("tee", 3)])).await.expect("allocate").into_inner();
    assert!(!held.replayed);
    let reservation = held.reservation.expect("a reservation");
    assert_eq!(reservation.state(), v1::ReservationState::Held);
    assert_eq!(reservation.metadata.as_ref().map(|m| m.order_id.as_str()), Some("o-1"));
    assert_eq!(shipments(&held.plan.expect("a plan")), shipments(&plan));
    assert_eq!(reserved(&atpd, &["tee"]).await[&("tee".into(), "near".into())], 3);

    // A retry replays; another request under the same id is refused.
    let again = api.allocate(order("o-1", &[("tee", 3)])).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!(again.reservation.map(|r| r.lines), Some(reservation.lines.clone()));
    assert_eq!(again.plan.map(|plan| plan.cost), Some(611));
    let other = api.allocate(order("o-1", &[("tee", 4)])).await.expect_err("another payload");
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(reserved(&atpd, &["tee"]).await[&("tee".into(), "near".into())], 3);

    // It is an ordinary reservation.
    let commit = v1::CommitRequest { reservation_id: "o-1".into(), lines: Vec::new() };
    let committed = api.commit(commit).await.expect("commit").into_inner();
    assert_eq!(
        committed.reservation.expect("reservation").state(),
        v1::ReservationState::Committed
    );
}

#[tokio::test]
async fn a_short_order_holds_nothing_or_its_part() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    atpd.receive("mug", "near", 2).await;
    atpd.receive("mug", "cheap", 1).await;
    let mut api = atpd.availability();

    let short = api.allocate(order("o-2", &[("mug", 5)])).await.expect_err("too few");
    assert_eq!(short.code(), Code::FailedPrecondition);
    let details = short.get_error_details();
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, "INSUFFICIENT_STOCK");
    assert!(short.message().contains("mug"), "{}", short.message());
    assert_eq!(reserved(&atpd, &["mug"]).await.values().sum::<i64>(), 0);
    // Enough stock in two places, but a budget of one plan (the heuristic
    // runs): the budget is named, not the stock.
    let mut starved = order("o-1", &[("mug", 3)]);
    starved.work_budget = 1;
    let error = api.allocate(starved).await.expect_err("out of budget");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("work budget of 1"), "{}", error.message());
    let details = error.get_error_details();
    assert_ne!(details.error_info().map(|info| info.reason.as_str()), Some("INSUFFICIENT_STOCK"));

    let mut partial = order("o-3", &[("mug", 5)]);
    partial.fill = v1::FillRule::Partial.into();
    let held = api.allocate(partial).await.expect("partial").into_inner();
    let plan = held.plan.expect("a plan");
    assert_eq!(plan.units, 3);
    assert_eq!(plan.backordered, vec![v1::OrderLine { sku: "mug".into(), quantity: 2 }]);
    let lines: i64 = held.reservation.expect("held").lines.iter().map(|l| l.quantity).sum();
    assert_eq!(lines, 3);

    // No split allowed: one location, at most 2.
    let mut single = order("o-4", &[("mug", 2)]);
    single.allow_split = Some(false);
    let error = api.allocate(single).await.expect_err("nothing left");
    assert_eq!(error.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn bad_input_names_the_field_and_holds_nothing() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    atpd.receive("tee", "near", 5).await;
    let mut api = atpd.availability();
    let mut bad = order("", &[("tee", 0)]);
    bad.destination =
        Some(v1::Destination { latitude: 91.0, country: "usa".into(), ..Default::default() });
    bad.max_shipments = 11;
    bad.policy = 9;
    let error = api.allocate(bad).await.expect_err("invalid");
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = error.get_error_details();
    let fields: Vec<String> = details
        .bad_request()
        .expect("bad request")
        .field_violations
        .iter()
        .map(|violation| violation.field.clone())
        .collect();
    for field in [
        "order_id",
        "destination.latitude",
        "destination.country",
        "lines[0].quantity",
        "policy",
        "max_shipments",
    ] {
        assert!(fields.iter().any(|f| f == field), "{field} not in {fields:?}");
    }
    let mut unknown = order("o-5", &[("tee", 1)]);
    unknown.channel_id = "nope".into();
    let error = api.allocate(unknown).await.expect_err("unknown channel");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(reserved(&atpd, &["tee"]).await.values().sum::<i64>(), 0);
}

#[tokio::test]
async fn concurrent_orders_over_shared_stock_never_oversell() {
    let atpd = Arc::new(Atpd::start(&[]).await);
    configure(&atpd).await;
    for (sku, location, units) in [
        ("a", "near", 20),
        ("a", "far", 20),
        ("a", "cheap", 10),
        ("b", "near", 15),
        ("b", "cheap", 15),
    ] {
        atpd.receive(sku, location, units).await;
    }
    let tasks: Vec<_> = (0..100)
        .map(|n| {
            let atpd = Arc::clone(&atpd);
            tokio::spawn(async move {
                let lines: &[(&str, i64)] =
                    if n % 2 == 0 { &[("a", 2), ("b", 1)] } else { &[("a", 1)] };
                let result = atpd.availability().allocate(order(&format!("c-{n}"), lines)).await;
                (lines.to_vec(), result)
            })
        })
        .collect();
    let mut held_a = 0;
    let mut held_b = 0;
    for task in tasks {
        let (lines, result) = task.await.expect("task");
        match result {
            Ok(answer) => {
                let reservation = answer.into_inner().reservation.expect("held");
                for (sku, wanted) in lines {
                    let got: i64 =
                        reservation.lines.iter().filter(|l| l.sku == sku).map(|l| l.quantity).sum();
                    assert_eq!(got, wanted, "every success holds its whole order");
                    if sku == "a" { held_a += got } else { held_b += got }
                }
            }
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    let reserved = reserved(&atpd, &["a", "b"]).await;
    let sum =
        |sku: &str| reserved.iter().filter(|((s, _), _)| s == sku).map(|(_, n)| *n).sum::<i64>();
    assert_eq!((sum("a"), sum("b")), (held_a, held_b));
    assert!(held_a <= 50 && held_b <= 30, "oversold: a {held_a}, b {held_b}");
    // Demand for a (150) is three times its stock: most of it sells.
    assert!(held_a >= 40, "a held {held_a}");
}

/// `near` (1°, 500 per shipment) limited to `orders` shipments and `units`
/// units a day in `time_zone`; `far` (10°, unlimited) as the fallback.
async fn configure_capacity(atpd: &Atpd, orders: i64, units: i64, time_zone: &str) {
    let mut config = atpd.config();
    let near = v1::Location {
        location_id: "near".into(),
        longitude: 1.0,
        cost: Some(v1::ShippingCost { per_shipment: 500, per_km: 1, per_unit: 0 }),
        daily_capacity: orders,
        daily_unit_capacity: units,
        time_zone: time_zone.into(),
        ..Default::default()
    };
    let far = v1::Location {
        location_id: "far".into(),
        longitude: 10.0,
        cost: Some(v1::ShippingCost { per_shipment: 500, per_km: 1, per_unit: 0 }),
        ..Default::default()
    };
    for location in [near, far] {
        config
            .upsert_location(v1::UpsertLocationRequest { location: Some(location) })
            .await
            .expect("upsert location");
    }
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: vec!["near".into(), "far".into()],
        ..Default::default()
    };
    config
        .upsert_channel(v1::UpsertChannelRequest { channel: Some(channel) })
        .await
        .expect("upsert channel");
    atpd.receive("tee", "near", 100).await;
    atpd.receive("tee", "far", 100).await;
}

/// Where an order of `units` tees would ship now (a dry run).
async fn planned_from(atpd: &Atpd, units: i64) -> Vec<String> {
    let mut dry = order("probe", &[("tee", units)]);
    dry.dry_run = true;
    let answer = atpd.availability().allocate(dry).await.expect("dry run").into_inner();
    answer.plan.expect("a plan").shipments.iter().map(|s| s.location_id.clone()).collect()
}

/// Allocates `id` and returns the locations it ships from.
async fn allocate_from(atpd: &Atpd, id: &str, units: i64, ttl_seconds: u32) -> Vec<String> {
    let mut request = order(id, &[("tee", units)]);
    request.ttl_seconds = ttl_seconds;
    let answer = atpd.availability().allocate(request).await.expect("allocate").into_inner();
    let reservation = answer.reservation.expect("held");
    assert!(
        reservation.lines.iter().all(|line| line.sku == "tee"),
        "capacity counters are not the caller's lines: {:?}",
        reservation.lines
    );
    answer.plan.expect("a plan").shipments.iter().map(|s| s.location_id.clone()).collect()
}

#[tokio::test]
async fn daily_capacity_limits_a_location_and_comes_back_on_release_and_expiry() {
    let atpd = Atpd::start(&[]).await;
    // near: 2 shipments and 5 units a day.
    configure_capacity(&atpd, 2, 5, "").await;
    assert_eq!(allocate_from(&atpd, "o-1", 2, 600).await, ["near"]);
    assert_eq!(allocate_from(&atpd, "o-2", 2, 600).await, ["near"]);
    // Two shipments taken: near is out for today.
    let mut dry = order("o-3", &[("tee", 1)]);
    dry.dry_run = true;
    let answer = atpd.availability().allocate(dry).await.expect("dry run").into_inner();
    let excluded: Vec<(String, String)> =
        answer.excluded.iter().map(|e| (e.location_id.clone(), e.reason.clone())).collect();
    assert_eq!(excluded, vec![("near".to_owned(), "NO_CAPACITY".to_owned())]);
    assert_eq!(allocate_from(&atpd, "o-3", 1, 600).await, ["far"]);

    // A release gives its shipment back (same day).
    let release = v1::ReleaseRequest { reservation_id: "o-1".into() };
    atpd.availability().release(release).await.expect("release");
    // near has 1 shipment and 3 units left (o-2 holds 2 of 5): 4 units
    // do not fit there, 3 do.
    assert_eq!(planned_from(&atpd, 4).await, ["far"]);
    assert_eq!(allocate_from(&atpd, "o-4", 3, 1).await, ["near"]);
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
    // o-4 (1 s) expires: its shipment and units come back.
    let expired = common::eventually(std::time::Duration::from_secs(20), || async {
        planned_from(&atpd, 3).await == ["near"]
    })
    .await;
    assert!(expired, "o-4's capacity never came back");
    let lookup = v1::GetReservationRequest { reservation_id: "o-4".into() };
    let o4 = atpd.availability().get_reservation(lookup).await.expect("get").into_inner();
    assert_eq!(o4.reservation.expect("o-4").state(), v1::ReservationState::Expired);

    // Commit keeps it taken.
    let commit = v1::CommitRequest { reservation_id: "o-2".into(), lines: Vec::new() };
    atpd.availability().commit(commit).await.expect("commit");
    assert_eq!(allocate_from(&atpd, "o-5", 1, 600).await, ["near"]);
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
}

/// The fields an INVALID_ARGUMENT names.
fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details.bad_request().expect("bad request");
    bad.field_violations.iter().map(|violation| violation.field.clone()).collect()
}

#[tokio::test]
async fn a_client_may_not_use_atps_own_names() {
    let atpd = Atpd::start(&[]).await;
    // near: 1 shipment a day; its counter for today is a reserved SKU.
    configure_capacity(&atpd, 1, 0, "").await;
    let mut api = atpd.availability();
    let counter = |day: &str| format!("~cap/orders/near/{day}");
    let mut reserve = v1::ReserveRequest {
        reservation_id: "r-1".into(),
        channel_id: "web".into(),
        lines: vec![
            v1::ReservationLine { sku: "tee".into(), location_id: "near".into(), quantity: 1 },
            v1::ReservationLine {
                sku: counter("2026-12-02"),
                location_id: "near".into(),
                quantity: 1,
            },
        ],
        ttl_seconds: 600,
        metadata: Some(v1::ReservationMetadata {
            order_id: String::new(),
            labels: [("atp.allocate".to_owned(), "0123456789abcdef".to_owned())].into(),
        }),
    };
    let refused = api.reserve(reserve.clone()).await.expect_err("reserved names");
    assert_eq!(bad_fields(&refused), ["lines[1].sku", "metadata.labels[atp.allocate]"]);
    reserve.lines.truncate(1);
    reserve.metadata = Some(v1::ReservationMetadata {
        order_id: String::new(),
        labels: [("atp.late_bound".to_owned(), "x".to_owned())].into(),
    });
    let refused = api.reserve(reserve.clone()).await.expect_err("reserved label");
    assert_eq!(bad_fields(&refused), ["metadata.labels[atp.late_bound]"]);
    let batch = v1::ReserveBatchRequest { reservations: vec![reserve.clone()] };
    let results = api.reserve_batch(batch).await.expect("batch").into_inner().results;
    let Some(v1::reserve_batch_result::Outcome::Error(error)) = &results[0].outcome else {
        panic!("a reserved label in a batch item: {results:?}");
    };
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    assert!(error.message.contains("reservations[0].metadata.labels[atp.late_bound]"), "{error:?}");
    let mut allocate = order("o-1", &[("tee", 1), (&counter("2026-12-02"), 1)]);
    allocate.metadata = reserve.metadata.clone();
    let refused = api.allocate(allocate).await.expect_err("reserved names");
    assert_eq!(bad_fields(&refused), ["lines[1].sku", "metadata.labels[atp.late_bound]"]);

    // Nothing was held, and Allocate itself still counts the day.
    assert_eq!(reserved(&atpd, &["tee"]).await.values().sum::<i64>(), 0);
    reserve.metadata = None;
    api.reserve(reserve).await.expect("a plain reserve");
    assert_eq!(allocate_from(&atpd, "o-2", 1, 600).await, ["near"]);
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
    let change = v1::ModifyReservationRequest {
        reservation_id: "o-2".into(),
        request_id: "c-1".into(),
        lines: vec![v1::ReservationLine {
            sku: counter("2026-12-03"),
            location_id: "near".into(),
            quantity: 1,
        }],
    };
    let refused = api.modify_reservation(change).await.expect_err("a counter line");
    assert_eq!(bad_fields(&refused), ["lines[0].sku"]);
}

#[tokio::test]
async fn changing_an_allocated_orders_lines_keeps_its_capacity_until_it_moves_away() {
    let atpd = Atpd::start(&[]).await;
    // near: 1 shipment a day.
    configure_capacity(&atpd, 1, 0, "").await;
    assert_eq!(allocate_from(&atpd, "o-1", 2, 600).await, ["near"]);
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
    let change = v1::ModifyReservationRequest {
        reservation_id: "o-1".into(),
        request_id: "fewer".into(),
        lines: vec![v1::ReservationLine {
            sku: "tee".into(),
            location_id: "near".into(),
            quantity: 1,
        }],
    };
    let changed = atpd.availability().modify_reservation(change.clone()).await.expect("modify");
    let lines = changed.into_inner().reservation.expect("held").lines;
    let lines: Vec<(String, i64)> = lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
    assert_eq!(lines, [("tee".to_owned(), 1)], "counters stay out of the caller's view");
    // The order still ships from near today: its shipment stays taken.
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
    // A retry of the change is the same change, not another.
    let again = atpd.availability().modify_reservation(change).await.expect("retry");
    assert!(again.into_inner().replayed);
    // Moved off near, the order gives near's shipment back.
    let moved = v1::ModifyReservationRequest {
        reservation_id: "o-1".into(),
        request_id: "elsewhere".into(),
        lines: vec![v1::ReservationLine {
            sku: "tee".into(),
            location_id: "far".into(),
            quantity: 1,
        }],
    };
    atpd.availability().modify_reservation(moved).await.expect("move");
    assert_eq!(planned_from(&atpd, 1).await, ["near"]);
}

#[tokio::test]
async fn capacity_resets_at_the_locations_midnight_and_a_late_release_does_not_refill_today() {
    // The node's clock starts at 23:59:57 in New York (04:59:57Z).
    let start_ms = (1_796_273_999_000_i64 - 2_000).to_string();
    let atpd = Atpd::start(&[("ATP_TEST_CLOCK_START_MS", start_ms.as_str())]).await;
    configure_capacity(&atpd, 1, 0, "America/New_York").await;
    assert_eq!(allocate_from(&atpd, "late-1", 1, 3600).await, ["near"]);
    assert_eq!(planned_from(&atpd, 1).await, ["far"], "one shipment a day");
    // After New York's midnight, a new day's counter.
    let next_day = common::eventually(std::time::Duration::from_secs(20), || async {
        planned_from(&atpd, 1).await == ["near"]
    })
    .await;
    assert!(next_day, "near's capacity never reset");
    assert_eq!(allocate_from(&atpd, "early-2", 1, 3600).await, ["near"]);
    // Releasing yesterday's order gives yesterday's capacity back, not today's.
    let release = v1::ReleaseRequest { reservation_id: "late-1".into() };
    atpd.availability().release(release).await.expect("release");
    assert_eq!(planned_from(&atpd, 1).await, ["far"]);
}

#[tokio::test]
async fn a_late_bound_hold_takes_one_location_and_a_rebind_moves_it_once() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    atpd.receive("tee", "near", 3).await;
    atpd.receive("tee", "far", 8).await;
    let mut api = atpd.availability();
    // No location: bound where the channel has the most ATP (far, 8).
    let late = v1::ReserveRequest {
        reservation_id: "late-1".into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: "tee".into(),
            location_id: String::new(),
            quantity: 2,
        }],
        ttl_seconds: 600,
        metadata: None,
    };
    let held = api.reserve(late.clone()).await.expect("late-bound reserve").into_inner();
    let lines = held.reservation.expect("held").lines;
    assert_eq!((lines[0].location_id.as_str(), lines[0].quantity), ("far", 2));
    let positions = reserved(&atpd, &["tee"]).await;
    assert_eq!(positions[&("tee".into(), "far".into())], 2);
    assert_eq!(positions.values().sum::<i64>(), 2);
    // A retry is the same hold, even when near has more ATP by then.
    let more = v1::StockEvent {
        event_id: "more-near".into(),
        sku: "tee".into(),
        location_id: "near".into(),
        kind: Some(v1::stock_event::Kind::Received(v1::Received { quantity: 10 })),
    };
    api.apply_stock_events(v1::ApplyStockEventsRequest { events: vec![more] })
        .await
        .expect("receive");
    let again = api.reserve(late).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!(reserved(&atpd, &["tee"]).await.values().sum::<i64>(), 2);

    // Rebind to the cheapest plan for the destination: near (611 vs 1612).
    let mut rebind = order("move-1", &[]);
    rebind.lines.clear();
    rebind.rebind_reservation_id = "late-1".into();
    let moved = api.allocate(rebind.clone()).await.expect("rebind").into_inner();
    let reservation = moved.reservation.expect("moved");
    assert_eq!(reservation.reservation_id, "late-1");
    let lines: Vec<(String, i64)> =
        reservation.lines.iter().map(|l| (l.location_id.clone(), l.quantity)).collect();
    assert_eq!(lines, vec![("near".to_owned(), 2)]);
    let positions = reserved(&atpd, &["tee"]).await;
    assert_eq!(positions[&("tee".into(), "near".into())], 2);
    assert_eq!(positions.values().sum::<i64>(), 2, "the hold moved, never doubled: {positions:?}");
    // A retry of the rebind is a replay, and still one hold.
    let again = api.allocate(rebind).await.expect("rebind retry").into_inner();
    assert!(again.replayed);
    assert_eq!(reserved(&atpd, &["tee"]).await.values().sum::<i64>(), 2);
    // Lines in a rebind are refused.
    let mut bad = order("move-2", &[("tee", 1)]);
    bad.rebind_reservation_id = "late-1".into();
    let error = api.allocate(bad).await.expect_err("lines in a rebind");
    assert_eq!(error.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_kit_shows_its_scarcest_component_and_holds_its_components() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    for (sku, location, units) in
        [("mug", "near", 5), ("tea", "near", 9), ("mug", "far", 10), ("tea", "far", 30)]
    {
        atpd.receive(sku, location, units).await;
    }
    let component = |sku: &str, quantity| v1::KitComponent { sku: sku.into(), quantity };
    let kit = v1::Kit {
        sku: "box".into(),
        name: "gift box".into(),
        components: vec![component("mug", 1), component("tea", 3)],
    };
    let mut config = atpd.config();
    config.upsert_kit(v1::UpsertKitRequest { kit: Some(kit) }).await.expect("upsert kit");
    let nested =
        v1::Kit { sku: "crate".into(), name: String::new(), components: vec![component("box", 2)] };
    let error =
        config.upsert_kit(v1::UpsertKitRequest { kit: Some(nested) }).await.expect_err("nested");
    assert_eq!(error.code(), Code::InvalidArgument);
    let listed = config.list_kits(v1::ListKitsRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.kits.len(), 1);

    let figures = |skus: &[&str]| v1::GetAvailabilityRequest {
        skus: skus.iter().map(|sku| (*sku).to_owned()).collect(),
        ..Default::default()
    };
    let mut api = atpd.availability();
    let answer = api.get_availability(figures(&["box", "tea"])).await.expect("read").into_inner();
    assert_eq!(answer.skus.iter().map(|s| s.sku.as_str()).collect::<Vec<_>>(), ["box", "tea"]);
    let atp_at = |figures: &v1::SkuAvailability, location: &str| {
        figures.locations.iter().find(|at| at.location_id == location).map_or(0, |at| at.atp)
    };
    // near: min(5 / 1, 9 / 3) = 3; far: min(10, 30 / 3) = 10; web: min(15, 39 / 3) = 13.
    assert_eq!((atp_at(&answer.skus[0], "near"), atp_at(&answer.skus[0], "far")), (3, 10));
    assert_eq!(
        answer.skus[0].channels.iter().find(|c| c.channel_id == "web").map(|c| c.atp),
        Some(13)
    );

    // A kit line holds its components.
    let reserve = v1::ReserveRequest {
        reservation_id: "kit-1".into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: "box".into(),
            location_id: "near".into(),
            quantity: 2,
        }],
        ttl_seconds: 600,
        metadata: None,
    };
    let held = api.reserve(reserve).await.expect("reserve a kit").into_inner();
    let mut lines: Vec<(String, i64)> =
        held.reservation.expect("held").lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
    lines.sort();
    assert_eq!(lines, vec![("mug".to_owned(), 2), ("tea".to_owned(), 6)]);
    let answer = api.get_availability(figures(&["box"])).await.expect("read").into_inner();
    // near: min(3 / 1, 3 / 3) = 1.
    assert_eq!(atp_at(&answer.skus[0], "near"), 1);

    // Allocate 2 boxes and 1 tea: mug 2, tea 7 — near has mug 3, tea 3, so far.
    let allocated = api
        .allocate(order("kit-order", &[("box", 2), ("tea", 1)]))
        .await
        .expect("allocate")
        .into_inner();
    let mut lines: Vec<(String, String, i64)> = allocated
        .reservation
        .expect("held")
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.location_id.clone(), l.quantity))
        .collect();
    lines.sort();
    assert_eq!(lines, vec![("mug".into(), "far".into(), 2), ("tea".into(), "far".into(), 7)]);
}
