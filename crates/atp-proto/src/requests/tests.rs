use atp_core::catalog::Lifecycle;
use atp_core::events::StockEventKind;
use atp_core::ids::{MAX_EVENTS_PER_BATCH, MAX_TTL_MS};

use super::*;
use crate::v1::stock_event::Kind;

const DEFAULT_TTL_MS: i64 = 900_000;

/// The fields named by an InvalidArgument, in order.
fn fields<T: std::fmt::Debug>(result: Result<T, CoreError>) -> Vec<String> {
    match result {
        Err(CoreError::InvalidArgument(violations)) => {
            violations.into_iter().map(|violation| violation.field).collect()
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn line(sku: &str, location: &str, quantity: i64) -> v1::ReservationLine {
    v1::ReservationLine { sku: sku.into(), location_id: location.into(), quantity }
}

fn reserve(lines: Vec<v1::ReservationLine>) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: "r-1".into(),
        channel_id: "web".into(),
        lines,
        ttl_seconds: 0,
        metadata: None,
    }
}

#[test]
fn reserve_converts_and_takes_the_default_ttl() {
    let request =
        parse_reserve(reserve(vec![line("tee", "dc-1", 2)]), DEFAULT_TTL_MS).expect("valid");
    assert_eq!(request.id.as_str(), "r-1");
    assert_eq!(request.channel.as_str(), "web");
    assert_eq!(request.ttl_ms, DEFAULT_TTL_MS);
    assert_eq!(request.lines[0].sku.as_str(), "tee");
    assert_eq!(request.lines[0].location.as_str(), "dc-1");
    assert_eq!(request.lines[0].quantity, 2);

    let mut message = reserve(vec![line("tee", "dc-1", 2)]);
    message.ttl_seconds = 60;
    assert_eq!(parse_reserve(message, DEFAULT_TTL_MS).expect("valid").ttl_ms, 60_000);
}

#[test]
fn reserve_names_every_bad_field() {
    let message = v1::ReserveRequest {
        reservation_id: String::new(),
        channel_id: "web\n".into(),
        lines: vec![
            line("tee", "dc-1", 1),
            line("", "dc-1", 1),
            line("tee", "", 0),
            line("tee", "dc-2", -5),
            line(&"x".repeat(1_000_000), "dc-1", 1_000_001),
        ],
        ttl_seconds: u32::try_from(MAX_TTL_MS / 1000 + 1).expect("fits"),
        metadata: None,
    };
    assert_eq!(
        fields(parse_reserve(message, DEFAULT_TTL_MS)),
        vec![
            "reservation_id",
            "channel_id",
            "ttl_seconds",
            "lines[1].sku",
            "lines[2].location_id",
            "lines[2].quantity",
            "lines[3].quantity",
            "lines[4].sku",
            "lines[4].quantity",
        ]
    );
}

#[test]
fn reserve_counts_lines_before_checking_them() {
    let lines = (0..10_000).map(|_| line("", "", 0)).collect();
    let result = parse_reserve(reserve(lines), DEFAULT_TTL_MS);
    let Err(CoreError::InvalidArgument(violations)) = result else {
        panic!("expected InvalidArgument");
    };
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "lines");
    assert!(violations[0].description.contains("10000"), "{}", violations[0].description);

    assert_eq!(fields(parse_reserve(reserve(Vec::new()), DEFAULT_TTL_MS)), vec!["lines"]);
    let at_limit = (0..MAX_LINES_PER_RESERVATION).map(|i| line(&format!("s{i}"), "dc-1", 1));
    assert!(parse_reserve(reserve(at_limit.collect()), DEFAULT_TTL_MS).is_ok());
}

#[test]
fn commit_allows_zero_but_not_negative_quantities() {
    let message = v1::CommitRequest {
        reservation_id: "r-1".into(),
        lines: vec![
            v1::CommitLine { sku: "tee".into(), location_id: "dc-1".into(), quantity: 0 },
            v1::CommitLine { sku: "tee".into(), location_id: "dc-2".into(), quantity: -1 },
            v1::CommitLine { sku: String::new(), location_id: "dc-3".into(), quantity: 1 },
        ],
    };
    assert_eq!(fields(parse_commit(message)), vec!["lines[1].quantity", "lines[2].sku"]);
    let all = parse_commit(v1::CommitRequest { reservation_id: "r-1".into(), lines: Vec::new() });
    assert_eq!(all.expect("valid").lines, Vec::new());
}

#[test]
fn extend_checks_id_and_ttl() {
    let message = v1::ExtendReservationRequest {
        reservation_id: String::new(),
        ttl_seconds: 0,
        ..Default::default()
    };
    assert_eq!(fields(parse_extend(message, DEFAULT_TTL_MS)), vec!["reservation_id"]);
    let message = v1::ExtendReservationRequest {
        reservation_id: "r-1".into(),
        ttl_seconds: 90_000,
        ..Default::default()
    };
    assert_eq!(fields(parse_extend(message, DEFAULT_TTL_MS)), vec!["ttl_seconds"]);
    let message = v1::ExtendReservationRequest {
        reservation_id: "r-1".into(),
        ttl_seconds: 1,
        ..Default::default()
    };
    assert_eq!(parse_extend(message, DEFAULT_TTL_MS).expect("valid").ttl_ms, 1_000);
    assert_eq!(fields(parse_reservation_id("")), vec!["reservation_id"]);
}

#[test]
fn availability_query_limits_skus() {
    let message = v1::GetAvailabilityRequest {
        skus: vec!["tee".into(), String::new()],
        location_ids: vec!["dc-1".into(), "a\tb".into()],
        channel_ids: vec![String::new()],
    };
    assert_eq!(
        fields(parse_availability_query(message)),
        vec!["skus[1]", "location_ids[1]", "channel_ids[0]"]
    );
    let too_many = v1::GetAvailabilityRequest {
        skus: vec![String::new(); MAX_SKUS_PER_QUERY + 1],
        ..Default::default()
    };
    assert_eq!(fields(parse_availability_query(too_many)), vec!["skus"]);
    assert_eq!(fields(parse_availability_query(Default::default())), vec!["skus"]);
}

fn event(index: usize, kind: Option<Kind>) -> v1::StockEvent {
    v1::StockEvent {
        event_id: format!("e-{index}"),
        sku: "tee".into(),
        location_id: "dc-1".into(),
        kind,
    }
}

#[test]
fn stock_events_name_the_bad_field_inside_the_kind() {
    let events = vec![
        event(0, Some(Kind::Received(v1::Received { quantity: 5 }))),
        event(1, None),
        event(2, Some(Kind::Received(v1::Received { quantity: 0 }))),
        event(3, Some(Kind::Shipped(v1::Shipped { quantity: 1, reservation_id: "r\n".into() }))),
        event(4, Some(Kind::Counted(v1::Counted { on_hand: -1, as_of_ms: -5 }))),
        event(5, Some(Kind::Adjusted(v1::Adjusted { delta: 0, reason: "x".repeat(300) }))),
        event(6, Some(Kind::Adjusted(v1::Adjusted { delta: i64::MIN, reason: String::new() }))),
        event(
            7,
            Some(Kind::Unavailable(v1::MarkedUnavailable { quantity: -1, reason: "ok".into() })),
        ),
        event(8, Some(Kind::ReleasedUnavailable(v1::ReleasedUnavailable { quantity: 0 }))),
        event(9, Some(Kind::Incoming(v1::IncomingExpected { quantity: 1, expected_at_ms: -1 }))),
        event(10, Some(Kind::IncomingReceived(v1::IncomingReceived { quantity: 0 }))),
        v1::StockEvent {
            event_id: String::new(),
            sku: String::new(),
            location_id: String::new(),
            ..event(11, Some(Kind::Received(v1::Received { quantity: 1 })))
        },
    ];
    let message = v1::ApplyStockEventsRequest { events };
    assert_eq!(
        fields(parse_stock_events(message)),
        vec![
            "events[1].kind",
            "events[2].received.quantity",
            "events[3].shipped.reservation_id",
            "events[4].counted.on_hand",
            "events[4].counted.as_of_ms",
            "events[5].adjusted.delta",
            "events[5].adjusted.reason",
            "events[6].adjusted.delta",
            "events[7].unavailable.quantity",
            "events[8].released_unavailable.quantity",
            "events[9].incoming.expected_at_ms",
            "events[10].incoming_received.quantity",
            "events[11].event_id",
            "events[11].sku",
            "events[11].location_id",
        ]
    );
}

#[test]
fn stock_events_convert_each_kind() {
    let events = vec![
        event(0, Some(Kind::Shipped(v1::Shipped { quantity: 2, reservation_id: "r-1".into() }))),
        event(1, Some(Kind::Shipped(v1::Shipped { quantity: 2, reservation_id: String::new() }))),
        event(2, Some(Kind::Adjusted(v1::Adjusted { delta: -3, reason: "recount".into() }))),
        event(3, Some(Kind::Counted(v1::Counted { on_hand: 0, as_of_ms: 1 }))),
        event(4, Some(Kind::Counted(v1::Counted { on_hand: 7, as_of_ms: 0 }))),
    ];
    let parsed = parse_stock_events(v1::ApplyStockEventsRequest { events }).expect("valid");
    let kinds: Vec<_> = parsed.into_iter().map(|event| event.kind).collect();
    assert_eq!(
        kinds,
        vec![
            StockEventKind::Shipped {
                quantity: 2,
                reservation: Some(ReservationId::parse("r", "r-1").expect("valid id")),
            },
            StockEventKind::Shipped { quantity: 2, reservation: None },
            StockEventKind::Adjusted { delta: -3, reason: "recount".into() },
            StockEventKind::Counted { on_hand: 0, as_of_ms: 1 },
            // No as_of: a count as of now, resolved by the shard.
            StockEventKind::Counted { on_hand: 7, as_of_ms: atp_core::events::COUNTED_NOW },
        ]
    );
}

#[test]
fn stock_event_batches_are_counted_first() {
    let events = vec![event(0, None); MAX_EVENTS_PER_BATCH + 1];
    assert_eq!(fields(parse_stock_events(v1::ApplyStockEventsRequest { events })), vec!["events"]);
}

#[test]
fn location_reports_id_and_numbers_together() {
    let message = v1::UpsertLocationRequest {
        location: Some(v1::Location {
            location_id: String::new(),
            kind: 42,
            latitude: 91.0,
            safety_stock: -1,
            ..Default::default()
        }),
    };
    assert_eq!(
        fields(parse_location(message)),
        vec!["location.location_id", "location.kind", "location.latitude", "location.safety_stock"]
    );
    assert_eq!(
        fields(parse_location(v1::UpsertLocationRequest { location: None })),
        vec!["location"]
    );
    let message = v1::UpsertLocationRequest {
        location: Some(v1::Location {
            location_id: "store-9".into(),
            kind: v1::LocationKind::Store.into(),
            ..Default::default()
        }),
    };
    let location = parse_location(message).expect("valid");
    assert_eq!(location.kind, atp_core::catalog::LocationKind::Store);
    assert_eq!(location.state, Lifecycle::Active, "an omitted state means ACTIVE");
}

#[test]
fn lifecycle_states_parse_and_the_old_flag_is_ignored() {
    let location = |state: i32, active: bool| v1::UpsertLocationRequest {
        location: Some(v1::Location {
            location_id: "store-9".into(),
            state,
            active,
            ..Default::default()
        }),
    };
    let cases = [
        (v1::LifecycleState::Unspecified, false, Lifecycle::Active),
        (v1::LifecycleState::Active, false, Lifecycle::Active),
        (v1::LifecycleState::Paused, true, Lifecycle::Paused),
        (v1::LifecycleState::Retired, true, Lifecycle::Retired),
    ];
    for (state, active, expected) in cases {
        let parsed = parse_location(location(state.into(), active)).expect("valid");
        assert_eq!(parsed.state, expected, "{state:?} active={active}");
    }
    assert_eq!(fields(parse_location(location(9, true))), vec!["location.state"]);
    let channel = |state: i32| v1::UpsertChannelRequest {
        channel: Some(v1::Channel { channel_id: "web".into(), state, ..Default::default() }),
    };
    assert_eq!(parse_channel(channel(0)).expect("valid").state, Lifecycle::Active);
    let paused = parse_channel(channel(v1::LifecycleState::Paused.into())).expect("valid");
    assert_eq!(paused.state, Lifecycle::Paused);
    assert_eq!(fields(parse_channel(channel(-1))), vec!["channel.state"]);
    let shown = v1::Location::from(location_with(Lifecycle::Paused));
    assert_eq!((shown.active, shown.state()), (false, v1::LifecycleState::Paused));
    let shown = v1::Location::from(location_with(Lifecycle::Active));
    assert_eq!((shown.active, shown.state()), (true, v1::LifecycleState::Active));
}

fn location_with(state: Lifecycle) -> atp_core::catalog::Location {
    let message = v1::UpsertLocationRequest {
        location: Some(v1::Location { location_id: "dc-1".into(), ..Default::default() }),
    };
    atp_core::catalog::Location { state, ..parse_location(message).expect("valid") }
}

#[test]
fn channel_checks_its_ids() {
    let message = v1::UpsertChannelRequest {
        channel: Some(v1::Channel {
            channel_id: "web".into(),
            location_ids: vec!["dc-1".into(), String::new()],
            cap: Some(5),
            ..Default::default()
        }),
    };
    assert_eq!(fields(parse_channel(message)), vec!["channel.location_ids[1]"]);
    let message = v1::UpsertChannelRequest {
        channel: Some(v1::Channel {
            channel_id: "web".into(),
            location_ids: vec!["dc-1".into()],
            cap: Some(5),
            ..Default::default()
        }),
    };
    assert_eq!(parse_channel(message).expect("valid").cap, Some(5));
}

#[test]
fn shard_target_and_ledger_query() {
    use v1::get_shard_request::Target;
    let by_sku = v1::GetShardRequest { target: Some(Target::Sku("sku-1".into())) };
    assert_eq!(parse_shard_target(by_sku).expect("valid"), 951);
    let by_number = v1::GetShardRequest { target: Some(Target::Shard(7)) };
    assert_eq!(parse_shard_target(by_number).expect("valid"), 7);
    let too_big = v1::GetShardRequest { target: Some(Target::Shard(SHARD_COUNT)) };
    assert_eq!(fields(parse_shard_target(too_big)), vec!["shard"]);
    assert_eq!(fields(parse_shard_target(v1::GetShardRequest { target: None })), vec!["target"]);

    let query = |limit| v1::QueryLedgerRequest { sku: "tee".into(), limit, ..Default::default() };
    assert_eq!(parse_ledger_query(query(0)).expect("valid").limit, DEFAULT_LEDGER_LIMIT);
    assert_eq!(parse_ledger_query(query(5)).expect("valid").limit, 5);
    assert_eq!(parse_ledger_query(query(5_000)).expect("valid").limit, MAX_LEDGER_LIMIT);
    let bad = v1::QueryLedgerRequest { location_id: "a\u{7}".into(), ..Default::default() };
    assert_eq!(fields(parse_ledger_query(bad)), vec!["location_id"]);
    let nothing = v1::QueryLedgerRequest::default();
    assert_eq!(fields(parse_ledger_query(nothing)), vec!["sku"]);
    let by_cause = v1::QueryLedgerRequest { cause_id: "order-1".into(), ..Default::default() };
    assert_eq!(parse_ledger_query(by_cause).expect("valid").cause.as_deref(), Some("order-1"));
    let token = v1::QueryLedgerRequest { page_token: "zz".into(), ..query(0) };
    assert_eq!(fields(parse_ledger_query(token)), vec!["page_token"]);
    let token = v1::QueryLedgerRequest { page_token: encode_page_token(&[1, 0xab]), ..query(0) };
    assert_eq!(parse_ledger_query(token).expect("valid").page_token, vec![1, 0xab]);
    let backwards = v1::QueryLedgerRequest { from_ms: 10, to_ms: 5, ..query(0) };
    assert_eq!(fields(parse_ledger_query(backwards)), vec!["to_ms"]);
}

#[test]
fn location_checks_its_fulfilment_fields() {
    let location =
        |ships_to: Vec<&str>, cost: v1::ShippingCost, time_zone: &str| v1::UpsertLocationRequest {
            location: Some(v1::Location {
                location_id: "dc-1".into(),
                ships_to: ships_to.into_iter().map(Into::into).collect(),
                cost: Some(cost),
                time_zone: time_zone.into(),
                daily_unit_capacity: -1,
                ..Default::default()
            }),
        };
    let bad_cost = v1::ShippingCost { per_shipment: -1, per_km: 1, per_unit: 2_000_000_000 };
    assert_eq!(
        fields(parse_location(location(
            vec!["US", "us", "US-CALI", "DE-BY"],
            bad_cost,
            "Mars Base"
        ))),
        vec![
            "location.ships_to[1]",
            "location.ships_to[2]",
            "location.cost.per_shipment",
            "location.cost.per_unit",
            "location.time_zone",
            "location.daily_unit_capacity",
        ]
    );
    let cost = v1::ShippingCost { per_shipment: 450, per_km: 2, per_unit: 15 };
    let mut good = location(vec!["US", "CA-QC"], cost, "America/Toronto");
    if let Some(location) = good.location.as_mut() {
        location.daily_unit_capacity = 900;
        location.priority = 3;
    }
    let parsed = parse_location(good.clone()).expect("valid");
    assert_eq!(parsed.fulfilment.ships_to, vec!["US".to_owned(), "CA-QC".to_owned()]);
    assert_eq!((parsed.fulfilment.cost.per_km, parsed.fulfilment.priority), (2, 3));
    assert_eq!(v1::Location::from(parsed), {
        let mut shown = good.location.expect("set");
        shown.active = true;
        shown.state = v1::LifecycleState::Active.into();
        shown.kind = v1::LocationKind::Warehouse.into();
        shown
    });
}

#[test]
fn an_allocate_is_the_same_request_whether_defaults_are_named_or_omitted() {
    let order = |policy: i32, fill: i32, max_shipments: u32, allow_split: Option<bool>| {
        v1::AllocateRequest {
            order_id: "o-1".into(),
            channel_id: "web".into(),
            destination: Some(v1::Destination { country: "US".into(), ..Default::default() }),
            lines: vec![v1::OrderLine { sku: "tee".into(), quantity: 1 }],
            policy,
            fill,
            max_shipments,
            allow_split,
            ..Default::default()
        }
    };
    let fingerprint = |message| parse_allocate(message, 900_000).expect("valid").fingerprint;
    let omitted = fingerprint(order(0, 0, 0, None));
    let named = fingerprint(order(
        v1::RoutingPolicy::LowestCost.into(),
        v1::FillRule::AllOrNothing.into(),
        4,
        Some(true),
    ));
    assert_eq!(omitted, named);
    assert_ne!(omitted, fingerprint(order(v1::RoutingPolicy::Nearest.into(), 0, 0, None)));
    assert_ne!(omitted, fingerprint(order(0, 0, 0, Some(false))));
}
