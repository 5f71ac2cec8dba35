//! The routing scenario's orders: a destination in the setup's service area,
//! the Allocate request, and the lines its answer holds.

use atp_proto::v1;

use crate::acks::{LineRef, OrderRef};
use crate::setup::{Names, SERVICE_AREA, Setup};

/// A destination drawn uniformly over [`SERVICE_AREA`] (uniform in degrees,
/// not in area: near enough for a load test).
pub fn destination(rng: &mut fastrand::Rng) -> v1::Destination {
    let area = &SERVICE_AREA;
    let latitude = area.latitude.start + rng.f64() * (area.latitude.end - area.latitude.start);
    let longitude = area.longitude.start + rng.f64() * (area.longitude.end - area.longitude.start);
    v1::Destination { latitude, longitude, country: area.country.to_owned(), region: String::new() }
}

/// The Allocate of `order` under `id` from the setup's channel to
/// `destination`: lowest cost, every unit or none, the server's defaults for
/// everything else (up to 4 shipments, no split penalty, the default work
/// budget), holds for `ttl_s`. Sending it again is a retry (same order id,
/// same request): the node answers the reservation it made.
pub fn request(
    setup: &Setup,
    id: &str,
    order: &[OrderRef],
    destination: v1::Destination,
    ttl_s: u32,
) -> v1::AllocateRequest {
    v1::AllocateRequest {
        order_id: id.to_owned(),
        channel_id: setup.channel.clone(),
        destination: Some(destination),
        lines: order
            .iter()
            .map(|line| v1::OrderLine {
                sku: setup.skus[line.sku as usize].clone(),
                quantity: line.quantity,
            })
            .collect(),
        policy: v1::RoutingPolicy::LowestCost.into(),
        fill: v1::FillRule::AllOrNothing.into(),
        ttl_seconds: ttl_s,
        ..Default::default()
    }
}

/// The lines the answer's reservation holds, by setup index; `None` when the
/// answer carries no reservation or names a SKU or location outside the
/// setup (the checker then reads what the node holds and reports it).
pub fn held_lines(names: &Names, answer: &v1::AllocateResponse) -> Option<Vec<LineRef>> {
    let reservation = answer.reservation.as_ref()?;
    reservation
        .lines
        .iter()
        .map(|line| {
            let (sku, location) = names.position(&line.sku, &line.location_id)?;
            Some(LineRef { sku, location, quantity: line.quantity })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn setup() -> Setup {
        let config =
            Config { run_id: Some("r1".into()), skus: 5, locations: 3, ..Config::default() };
        Setup::plan(&config)
    }

    #[test]
    fn destinations_stay_in_the_area() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1_000 {
            let to = destination(&mut rng);
            assert!(SERVICE_AREA.latitude.contains(&to.latitude), "{to:?}");
            assert!(SERVICE_AREA.longitude.contains(&to.longitude), "{to:?}");
            assert_eq!(to.country, "US");
        }
    }

    #[test]
    fn the_request_names_the_setup_ids_and_the_rules() {
        let setup = setup();
        let order = [OrderRef { sku: 4, quantity: 2 }, OrderRef { sku: 1, quantity: 1 }];
        let to = destination(&mut fastrand::Rng::with_seed(1));
        let request = request(&setup, "r1-o-1", &order, to.clone(), 600);
        assert_eq!((request.order_id.as_str(), request.channel_id.as_str()), ("r1-o-1", "r1-web"));
        let lines: Vec<(&str, i64)> =
            request.lines.iter().map(|line| (line.sku.as_str(), line.quantity)).collect();
        assert_eq!(lines, [("r1-sku-4", 2), ("r1-sku-1", 1)]);
        assert_eq!(request.policy(), v1::RoutingPolicy::LowestCost);
        assert_eq!(request.fill(), v1::FillRule::AllOrNothing);
        assert_eq!((request.ttl_seconds, request.destination), (600, Some(to)));
        assert!(!request.dry_run && request.rebind_reservation_id.is_empty());
    }

    #[test]
    fn held_lines_are_read_by_setup_index() {
        let setup = setup();
        let names = Names::new(&setup);
        let held = |location: &str| v1::AllocateResponse {
            reservation: Some(v1::Reservation {
                lines: vec![v1::ReservationLineState {
                    sku: "r1-sku-3".into(),
                    location_id: location.into(),
                    quantity: 2,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let lines = held_lines(&names, &held("r1-loc-2"));
        assert_eq!(lines, Some(vec![LineRef { sku: 3, location: 2, quantity: 2 }]));
        assert_eq!(held_lines(&names, &held("elsewhere")), None);
        assert_eq!(held_lines(&names, &v1::AllocateResponse::default()), None);
    }
}
