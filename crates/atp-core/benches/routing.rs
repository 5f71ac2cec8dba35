//! Planner throughput on one core: plans per second for 5-line orders over
//! 50 candidate locations (issue 12's measure), per policy, with the
//! default work budget (20,000 plans: past the exact size for 4 shipments
//! over 50 locations, so the budgeted heuristic runs) and with every order
//! fitting at one location or needing a split.
//!
//! The network is generated from a fixed seed: locations spread over the
//! continental US, costs 300–900 per shipment, 1–3 per km, 10–40 per unit;
//! each location stocks each of the 5 SKUs with probability 0.6, 0–20
//! units. Orders want 1–4 units per line ("fits") or 10–25 ("splits").
//!
//! ```sh
//! cargo bench -p atp-core --bench routing
//! ```

use std::hint::black_box;

use atp_core::ids::LocationId;
use atp_core::routing::{Candidate, CostModel, Destination, GeoPoint, Order, Policy, Rules, plan};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const LOCATIONS: usize = 50;
const LINES: usize = 5;
const ORDERS: usize = 64;

fn network(rng: &mut fastrand::Rng) -> Vec<Candidate> {
    (0..LOCATIONS)
        .map(|n| Candidate {
            location: LocationId::parse("location", &format!("loc-{n:02}")).expect("an id"),
            point: GeoPoint {
                latitude: 25.0 + rng.f64() * 24.0,
                longitude: -124.0 + rng.f64() * 57.0,
            },
            active: true,
            ships_to: vec!["US".into()],
            cost: CostModel {
                per_shipment: rng.i64(300..=900),
                per_km: rng.i64(1..=3),
                per_unit: rng.i64(10..=40),
            },
            priority: rng.u32(0..3),
            orders_left: None,
            units_left: None,
            atp: (0..LINES).map(|_| if rng.f64() < 0.6 { rng.i64(0..=20) } else { 0 }).collect(),
        })
        .collect()
}

fn orders(
    rng: &mut fastrand::Rng,
    units: std::ops::RangeInclusive<i64>,
) -> Vec<(Destination, Order)> {
    (0..ORDERS)
        .map(|_| {
            let destination = Destination {
                point: GeoPoint {
                    latitude: 25.0 + rng.f64() * 24.0,
                    longitude: -124.0 + rng.f64() * 57.0,
                },
                country: "US".into(),
                region: String::new(),
            };
            let demand = (0..LINES).map(|_| rng.i64(units.clone())).collect();
            (destination, Order { demand, limit: vec![i64::MAX; LINES] })
        })
        .collect()
}

fn planner(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(20261202);
    let candidates = network(&mut rng);
    let mut group = c.benchmark_group("plan_5_lines_50_locations");
    group.throughput(Throughput::Elements(1));
    for (shape, units) in [("fits", 1..=4), ("splits", 10..=25)] {
        let orders = orders(&mut rng, units);
        for policy in [Policy::LowestCost, Policy::Nearest, Policy::FewestShipments] {
            let rules = Rules { policy, ..Rules::default() };
            let id = BenchmarkId::new(format!("{policy:?}"), shape);
            let mut next = 0;
            group.bench_function(id, |b| {
                b.iter(|| {
                    let (destination, order) = &orders[next % ORDERS];
                    next += 1;
                    black_box(plan(&candidates, destination, order, &rules))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
