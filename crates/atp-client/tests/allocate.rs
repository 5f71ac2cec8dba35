//! `Client::allocate` against a real `atpd`: a dry run explains and holds
//! nothing; an Allocate whose reply is lost is sent again and replays
//! (held once); another request under the same order id and a short order
//! are typed refusals; a partial fill reports what it could not hold.

mod support;

use atp_client::{
    Allocate, Client, Destination, Error, FillRule, OrderLine, Plan, ReservationState, RetryPolicy,
};
use atp_proto::v1;
use atp_testkit::Atpd;
use support::{Fault, FaultProxy, client, quick_retries};

/// Locations on the equator: `(id, longitude, per shipment, per km)`.
/// From (0, 0), near costs 500 + round(111.195 km) = 611, far 500 + 1112,
/// cheap 100 + 0.
const NETWORK: [(&str, f64, i64, i64); 3] =
    [("near", 1.0, 500, 1), ("far", 10.0, 500, 1), ("cheap", 5.0, 100, 0)];

/// The network, berlin (ships to DE only), channel `web` over all four, and
/// 5 tees at near and far, 1 at cheap, 50 at berlin. Through the SDK.
async fn configure(client: &Client) {
    for (id, longitude, per_shipment, per_km) in NETWORK {
        let location = v1::Location {
            location_id: id.into(),
            longitude,
            cost: Some(v1::ShippingCost { per_shipment, per_km, per_unit: 0 }),
            ships_to: vec!["US".into()],
            ..Default::default()
        };
        let request = v1::UpsertLocationRequest { location: Some(location) };
        client.rpc().upsert_location(request).await.expect("upsert location");
    }
    let berlin = v1::Location {
        location_id: "berlin".into(),
        ships_to: vec!["DE".into()],
        ..Default::default()
    };
    let request = v1::UpsertLocationRequest { location: Some(berlin) };
    client.rpc().upsert_location(request).await.expect("upsert location");
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: vec!["near".into(), "far".into(), "cheap".into(), "berlin".into()],
        ..Default::default()
    };
    let request = v1::UpsertChannelRequest { channel: Some(channel) };
    client.rpc().upsert_channel(request).await.expect("upsert channel");
    let events = [("near", 5), ("far", 5), ("cheap", 1), ("berlin", 50)]
        .into_iter()
        .map(|(location, quantity)| v1::StockEvent {
            event_id: format!("recv-{location}"),
            sku: "tee".into(),
            location_id: location.into(),
            kind: Some(v1::stock_event::Kind::Received(v1::Received { quantity })),
        })
        .collect();
    let request = v1::ApplyStockEventsRequest { events };
    let reply = client.rpc().apply_stock_events(request).await.expect("stock events");
    for result in reply.results {
        assert_eq!(result.outcome(), v1::StockEventOutcome::Applied, "{result:?}");
    }
}

/// An order of `tee`s for San Francisco's latitude 0 (the equator at 0, 0).
fn order(id: &str, tees: i64) -> Allocate {
    let destination = Destination::new("US", 0.0, 0.0).region("US-CA");
    Allocate::new(id, "web", destination).line("tee", tees).ttl_seconds(600)
}

/// Units of tee reserved, by location.
async fn reserved(client: &Client) -> Vec<(String, i64)> {
    let skus = client.get_availability(&["tee"]).await.expect("availability");
    let locations = skus.into_iter().next().expect("one sku").locations;
    let mut reserved: Vec<(String, i64)> = locations
        .into_iter()
        .filter(|position| position.reserved > 0)
        .map(|position| (position.location_id, position.reserved))
        .collect();
    reserved.sort();
    reserved
}

/// A plan's shipments as (location, [(sku, units)]).
fn shipments(plan: &Plan) -> Vec<(&str, Vec<(&str, i64)>)> {
    plan.shipments
        .iter()
        .map(|shipment| {
            let lines = shipment.lines.iter().map(|line| (line.sku.as_str(), line.quantity));
            (shipment.location_id.as_str(), lines.collect())
        })
        .collect()
}

#[tokio::test]
async fn allocate_holds_the_plan_once_and_a_retry_replays() {
    let atpd = Atpd::start(&[]).await;
    let direct = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&direct).await;

    // A dry run: the plan, the runner-up (cheap's 1 unit + near's 2 =
    // 100 + 611), berlin left out, nothing held.
    let planned = direct.allocate(order("o-1", 3).dry_run()).await.expect("dry run");
    assert!(planned.dry_run && planned.reservation.is_none() && !planned.replayed);
    assert_eq!(shipments(&planned.plan), [("near", vec![("tee", 3)])]);
    assert_eq!((planned.plan.cost, planned.plan.units), (611, 3));
    assert_eq!(planned.alternatives.first().map(|plan| plan.cost), Some(711));
    let excluded: Vec<(&str, &str)> = planned
        .excluded
        .iter()
        .map(|excluded| (excluded.location_id.as_str(), excluded.reason.as_str()))
        .collect();
    assert_eq!(excluded, [("berlin", "DOES_NOT_SHIP_THERE")]);
    assert!(planned.exact && planned.work > 0, "{planned:?}");
    assert!(reserved(&direct).await.is_empty(), "a dry run holds nothing");

    // The hold, through a proxy that lets it reach the node but loses the
    // reply: the SDK sends the same Allocate again, which replays.
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropFirstReply).await;
    let retrying = client(&format!("http://{address}"), quick_retries(3));
    let held = retrying.allocate(order("o-1", 3)).await.expect("allocate");
    assert_eq!(proxy.attempts_for("o-1"), 2, "the first reply was lost");
    assert!(held.replayed, "the second attempt answers the first: {held:?}");
    assert!(!held.dry_run);
    let reservation = held.reservation.as_ref().expect("a reservation");
    assert_eq!(reservation.reservation_id, "o-1");
    assert_eq!(reservation.state, ReservationState::Held);
    assert_eq!(reservation.metadata.as_ref().map(|m| m.order_id.as_str()), Some("o-1"));
    assert_eq!(shipments(&held.plan), [("near", vec![("tee", 3)])]);
    assert_eq!(held.plan.cost, 611, "today's cost of the held lines");
    assert_eq!(reserved(&direct).await, [("near".to_owned(), 3)], "held once");

    // Again, straight to the node: still the same reservation, nothing more held.
    let again = direct.allocate(order("o-1", 3)).await.expect("the same allocate");
    assert!(again.replayed);
    assert_eq!(again.reservation.map(|r| r.lines), Some(reservation.lines.clone()));
    assert_eq!(reserved(&direct).await, [("near".to_owned(), 3)]);

    // Another request under the same order id: refused once, not retried.
    let other = retrying.allocate(order("o-1", 4)).await;
    assert!(matches!(other, Err(Error::IdReused { .. })), "{other:?}");
    assert_eq!(proxy.attempts_for("o-1"), 3);

    // It is an ordinary reservation.
    let committed = direct.commit("o-1").await.expect("commit");
    assert_eq!(committed.state, ReservationState::Committed);
}

#[tokio::test]
async fn a_short_order_is_refused_typed_or_filled_in_part() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client).await;

    // 11 tees can ship to the US (near 5, far 5, cheap 1): 12 is too many.
    let short = client.allocate(order("o-2", 12)).await;
    let Err(Error::InsufficientStock { sku, requested, available, .. }) = short else {
        panic!("insufficient stock: {short:?}")
    };
    assert_eq!((sku.as_str(), requested, available), ("tee", 12, 11));
    assert!(reserved(&client).await.is_empty(), "all or nothing");

    // One shipment only: at most 5.
    let single = client.allocate(order("o-3", 6).no_split()).await;
    assert!(matches!(single, Err(Error::InsufficientStock { .. })), "{single:?}");

    // Partial: what there is, and the rest backordered.
    let partial = client.allocate(order("o-4", 12).fill(FillRule::Partial)).await.expect("partial");
    assert_eq!(partial.plan.units, 11);
    assert_eq!(partial.plan.backordered, [OrderLine { sku: "tee".into(), quantity: 1 }]);
    let held: i64 = partial.reservation.expect("held").lines.iter().map(|l| l.quantity).sum();
    assert_eq!(held, 11);

    // Malformed: the field is named.
    let bad = client.allocate(order("o-5", 0)).await;
    let Err(Error::InvalidArgument { violations, .. }) = &bad else {
        panic!("invalid argument: {bad:?}")
    };
    assert!(violations.iter().any(|violation| violation.field == "lines[0].quantity"), "{bad:?}");
}
