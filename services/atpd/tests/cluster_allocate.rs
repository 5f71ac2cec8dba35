//! Allocate across a cluster (issue 12), with real parts: one real etcd and
//! three real `atpd` processes. Orders sent to every node over SKUs whose
//! shards live on every node, 100 at once over overlapping stock: no unit
//! is oversold, every success holds its whole order (the plan's lines on
//! their owners' shards, the reservation on its home's), and what the
//! nodes report reserved is exactly what the successes hold. Daily
//! capacity under concurrency, release and expiry, and the day turning at
//! the location's midnight (injected clocks). Skipped
//! without an etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::BTreeMap;
use std::sync::Arc;

use atp_cluster::testing::EtcdProcess;
use atp_proto::v1;
use atp_testkit::eventually;
use three_nodes::{Cluster, DEADLINE};
use tonic::Code;
use tonic_types::StatusExt;

/// (location, longitude, per shipment): on the equator, destination (0, 0).
const LOCATIONS: [(&str, f64, i64); 3] =
    [("east", 1.0, 300), ("west", -2.0, 200), ("north", 0.0, 900)];
const SKUS: [&str; 6] = ["sku-a", "sku-b", "sku-c", "sku-d", "sku-e", "sku-f"];
/// Units of each SKU received at each location.
const STOCK_PER_LOCATION: i64 = 10;
const ORDERS: usize = 100;

async fn configure(cluster: &Cluster) {
    let mut config = cluster.nodes[0].config();
    for (id, longitude, per_shipment) in LOCATIONS {
        let location = v1::Location {
            location_id: id.into(),
            longitude,
            cost: Some(v1::ShippingCost { per_shipment, per_km: 1, per_unit: 5 }),
            ..Default::default()
        };
        config
            .upsert_location(v1::UpsertLocationRequest { location: Some(location) })
            .await
            .expect("upsert location");
    }
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: LOCATIONS.iter().map(|(id, _, _)| (*id).into()).collect(),
        ..Default::default()
    };
    config
        .upsert_channel(v1::UpsertChannelRequest { channel: Some(channel) })
        .await
        .expect("upsert channel");
    for node in &cluster.nodes {
        let seen = eventually(DEADLINE, || async {
            let channels = node.config().list_channels(v1::ListChannelsRequest {}).await;
            channels.is_ok_and(|reply| {
                reply.into_inner().channels.iter().any(|c| c.location_ids.len() == LOCATIONS.len())
            })
        })
        .await;
        assert!(seen, "node {} never saw the channel", node.address);
    }
}

fn order(id: &str, lines: Vec<(&'static str, i64)>) -> v1::AllocateRequest {
    v1::AllocateRequest {
        order_id: id.into(),
        channel_id: "web".into(),
        destination: Some(v1::Destination { country: "US".into(), ..Default::default() }),
        lines: lines
            .into_iter()
            .map(|(sku, quantity)| v1::OrderLine { sku: sku.into(), quantity })
            .collect(),
        ttl_seconds: 3600,
        ..Default::default()
    }
}

/// Units reserved per (sku, location), read through `node`.
async fn reserved(node: &atp_testkit::Atpd) -> BTreeMap<(String, String), i64> {
    let request = v1::GetAvailabilityRequest {
        skus: SKUS.iter().map(|sku| (*sku).to_owned()).collect(),
        ..Default::default()
    };
    let reply = node.availability().get_availability(request).await.expect("availability");
    let mut reserved = BTreeMap::new();
    for sku in reply.into_inner().skus {
        assert!(sku.error.is_none(), "{sku:?}");
        for location in sku.locations {
            reserved.insert((sku.sku.clone(), location.location_id.clone()), location.reserved);
        }
    }
    reserved
}

#[tokio::test]
async fn concurrent_allocations_across_nodes_never_oversell_and_hold_whole_plans() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Arc::new(Cluster::start(&etcd, "allocate").await);
    configure(&cluster).await;
    for sku in SKUS {
        for (location, _, _) in LOCATIONS {
            cluster.nodes[0].receive(sku, location, STOCK_PER_LOCATION).await;
        }
    }
    // Each order wants 2 or 3 SKUs, 2..=6 units each: 100 orders ask for
    // about 1,000 units of the 180 there are, so many must fail and the
    // successes must share every SKU's last units.
    let mut rng = fastrand::Rng::with_seed(12);
    let orders: Vec<(String, Vec<(&'static str, i64)>)> = (0..ORDERS)
        .map(|n| {
            let mut lines = Vec::new();
            let count = 2 + rng.usize(0..2);
            for sku in rng.choose_multiple(SKUS.iter(), count) {
                lines.push((*sku, rng.i64(2..=6)));
            }
            (format!("order-{n}"), lines)
        })
        .collect();
    let tasks: Vec<_> = orders
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, (id, lines))| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move {
                let mut api = cluster.nodes[n % 3].availability();
                api.allocate(order(&id, lines)).await
            })
        })
        .collect();
    let mut held: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut successes = 0;
    for ((id, lines), task) in orders.iter().zip(tasks) {
        match task.await.expect("task") {
            Ok(answer) => {
                successes += 1;
                let answer = answer.into_inner();
                let reservation = answer.reservation.expect("a reservation");
                assert_eq!(reservation.state(), v1::ReservationState::Held, "{id}");
                for (sku, wanted) in lines {
                    let got: i64 = reservation
                        .lines
                        .iter()
                        .filter(|line| line.sku == *sku)
                        .map(|line| line.quantity)
                        .sum();
                    assert_eq!(got, *wanted, "{id}: {sku} held in part");
                }
                let plan = answer.plan.expect("a plan");
                assert_eq!(plan.units, lines.iter().map(|(_, units)| units).sum::<i64>(), "{id}");
                for line in reservation.lines {
                    *held.entry((line.sku, line.location_id)).or_default() += line.quantity;
                }
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{id}: {status:?}");
                let reason =
                    status.get_error_details().error_info().map(|info| info.reason.clone());
                assert_eq!(reason.as_deref(), Some("INSUFFICIENT_STOCK"), "{id}");
            }
        }
    }
    let units: i64 = held.values().sum();
    eprintln!("{successes} of {ORDERS} orders held, {units} units");
    assert!(successes >= 10, "only {successes} orders held");
    for (position, units) in &held {
        assert!(*units <= STOCK_PER_LOCATION, "{position:?} oversold: {units}");
    }
    // Every node reports exactly what the successes hold.
    for node in &cluster.nodes {
        let reported: BTreeMap<_, _> =
            reserved(node).await.into_iter().filter(|(_, units)| *units > 0).collect();
        assert_eq!(reported, held, "as node {} reports it", node.address);
    }
    // And each reservation reads back whole through another node.
    for (n, (id, _)) in orders.iter().enumerate().take(20) {
        let lookup = v1::GetReservationRequest { reservation_id: id.clone() };
        let found = cluster.nodes[(n + 1) % 3].availability().get_reservation(lookup).await;
        if let Ok(found) = found {
            let reservation = found.into_inner().reservation.expect("a reservation");
            assert_eq!(reservation.state(), v1::ReservationState::Held);
        }
    }
    // Panics on a write under an epoch that was not its claim's.
    let summary = cluster.check_epochs(&etcd).await;
    assert!(summary.writes > 0, "{summary:?}");
}

#[tokio::test]
async fn daily_capacity_is_never_exceeded_by_concurrent_orders_across_nodes() {
    const CAPACITY: i64 = 5;
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Arc::new(Cluster::start(&etcd, "capacity").await);
    configure(&cluster).await;
    // Only east sells "sku-cap", plenty of it; east ships 5 orders a day.
    let east = v1::Location {
        location_id: "east".into(),
        longitude: 1.0,
        daily_capacity: CAPACITY,
        ..Default::default()
    };
    cluster.nodes[0]
        .config()
        .upsert_location(v1::UpsertLocationRequest { location: Some(east) })
        .await
        .expect("upsert east");
    for node in &cluster.nodes {
        let seen = eventually(DEADLINE, || async {
            let listed = node.config().list_locations(v1::ListLocationsRequest {}).await;
            listed.is_ok_and(|reply| {
                reply.into_inner().locations.iter().any(|l| l.daily_capacity == CAPACITY)
            })
        })
        .await;
        assert!(seen, "node {} never saw east's capacity", node.address);
    }
    cluster.nodes[0].receive("sku-cap", "east", 100).await;
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move {
                let mut api = cluster.nodes[n % 3].availability();
                api.allocate(order(&format!("cap-{n}"), vec![("sku-cap", 1)])).await
            })
        })
        .collect();
    let mut held = Vec::new();
    for (n, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(_) => held.push(format!("cap-{n}")),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    eprintln!("{} of 40 orders held within a capacity of {CAPACITY}", held.len());
    assert!(!held.is_empty() && held.len() as i64 <= CAPACITY, "{held:?}");
    // Fill what lost races may have left, one at a time: exactly 5 in all.
    for n in 0..CAPACITY {
        let id = format!("cap-fill-{n}");
        let filled =
            cluster.nodes[0].availability().allocate(order(&id, vec![("sku-cap", 1)])).await;
        if filled.is_err() {
            break;
        }
        held.push(id);
    }
    assert_eq!(held.len() as i64, CAPACITY, "{held:?}");
    // Releasing one gives one shipment back, through any node.
    let release = v1::ReleaseRequest { reservation_id: held[0].clone() };
    cluster.nodes[2].availability().release(release).await.expect("release");
    let again =
        cluster.nodes[1].availability().allocate(order("cap-again", vec![("sku-cap", 1)])).await;
    assert!(again.is_ok(), "{again:?}");
    let full =
        cluster.nodes[0].availability().allocate(order("cap-over", vec![("sku-cap", 1)])).await;
    assert_eq!(full.expect_err("over capacity").code(), Code::FailedPrecondition);
    // An expired hold gives its shipment back too: free one, take it with
    // a 1 s hold, and wait for a plan through east to be possible again.
    let release = v1::ReleaseRequest { reservation_id: held[1].clone() };
    cluster.nodes[0].availability().release(release).await.expect("release");
    let mut brief = order("cap-brief", vec![("sku-cap", 1)]);
    brief.ttl_seconds = 1;
    cluster.nodes[2].availability().allocate(brief).await.expect("a 1 s hold");
    let probe = || {
        let mut dry = order("cap-probe", vec![("sku-cap", 1)]);
        dry.dry_run = true;
        dry
    };
    let none_now = cluster.nodes[1].availability().allocate(probe()).await;
    assert!(none_now.is_err(), "east is full until the 1 s hold expires");
    let back = eventually(DEADLINE, || async {
        cluster.nodes[1].availability().allocate(probe()).await.is_ok()
    })
    .await;
    assert!(back, "the expired hold's shipment never came back");
    cluster.check_epochs(&etcd).await;
}

/// New York's midnight starting 2026-12-03 (05:00Z), in ms.
const NEW_YORK_MIDNIGHT_MS: i64 = 1_796_274_000_000;

#[tokio::test]
async fn the_day_turns_at_the_locations_midnight_on_every_node() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    // Every node's clock starts 45 s before midnight in New York (an
    // injected clock: ATP_TEST_CLOCK_START_MS), then runs on: room for a
    // slow start on a busy machine.
    let start = (NEW_YORK_MIDNIGHT_MS - 45_000).to_string();
    let extra = [("ATP_TEST_CLOCK_START_MS", start.as_str())];
    let cluster = Cluster::start_with(&etcd, "midnight", &extra).await;
    configure(&cluster).await;
    // east ships 1 order a day, New York time; only east sells "sku-day".
    let east = v1::Location {
        location_id: "east".into(),
        longitude: 1.0,
        daily_capacity: 1,
        time_zone: "America/New_York".into(),
        ..Default::default()
    };
    let mut config = cluster.nodes[0].config();
    config.upsert_location(v1::UpsertLocationRequest { location: Some(east) }).await.expect("east");
    for node in &cluster.nodes {
        let seen = eventually(DEADLINE, || async {
            let listed = node.config().list_locations(v1::ListLocationsRequest {}).await;
            listed.is_ok_and(|reply| {
                reply.into_inner().locations.iter().any(|l| l.daily_capacity == 1)
            })
        })
        .await;
        assert!(seen, "node {} never saw east's capacity", node.address);
    }
    cluster.nodes[0].receive("sku-day", "east", 100).await;
    let late =
        cluster.nodes[0].availability().allocate(order("late-1", vec![("sku-day", 1)])).await;
    let held = late.expect("the day's one shipment").into_inner().reservation.expect("held");
    let node_now = held.expires_at_ms - 3_600_000;
    let started_in_s = (node_now - NEW_YORK_MIDNIGHT_MS + 45_000) / 1000;
    eprintln!("the cluster was configured {started_in_s} s after its clocks started");
    assert!(
        node_now < NEW_YORK_MIDNIGHT_MS - 5_000,
        "the cluster took {started_in_s} s of the 45 before midnight to start"
    );
    let probe = || {
        let mut dry = order("probe", vec![("sku-day", 1)]);
        dry.dry_run = true;
        dry
    };
    // Through every other node: today's shipment is taken.
    for node in &cluster.nodes[1..] {
        let full = node.availability().allocate(probe()).await;
        assert_eq!(full.expect_err("east is full today").code(), Code::FailedPrecondition);
    }
    // After New York's midnight, a new day: east ships again, through any node.
    let next_day = eventually(std::time::Duration::from_secs(60), || async {
        cluster.nodes[2].availability().allocate(probe()).await.is_ok()
    })
    .await;
    assert!(next_day, "east's capacity never reset at midnight");
    let mut api = cluster.nodes[1].availability();
    api.allocate(order("early-1", vec![("sku-day", 1)])).await.expect("the new day's shipment");
    // Yesterday's release gives yesterday's shipment back, not today's.
    let release = v1::ReleaseRequest { reservation_id: "late-1".into() };
    cluster.nodes[2].availability().release(release).await.expect("release");
    for node in &cluster.nodes {
        let full = node.availability().allocate(probe()).await;
        assert_eq!(full.expect_err("east is full today").code(), Code::FailedPrecondition);
    }
    cluster.check_epochs(&etcd).await;
}

#[tokio::test]
async fn late_bound_holds_rebound_across_nodes_hold_each_unit_once() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Arc::new(Cluster::start(&etcd, "rebind").await);
    configure(&cluster).await;
    for sku in SKUS {
        for (location, _, _) in LOCATIONS {
            cluster.nodes[0].receive(sku, location, STOCK_PER_LOCATION).await;
        }
    }
    // 12 late-bound reservations (2 units of one SKU, one of another) made
    // through every node, then each rebound through another node, all at once.
    let tasks: Vec<_> = (0..12)
        .map(|n| {
            let cluster = Arc::clone(&cluster);
            tokio::spawn(async move {
                let id = format!("late-{n}");
                let late = |sku: &str, quantity| v1::ReservationLine {
                    sku: sku.into(),
                    location_id: String::new(),
                    quantity,
                };
                let reserve = v1::ReserveRequest {
                    reservation_id: id.clone(),
                    channel_id: "web".into(),
                    lines: vec![late(SKUS[n % 6], 2), late(SKUS[(n + 1) % 6], 1)],
                    ttl_seconds: 3600,
                    metadata: None,
                };
                cluster.nodes[n % 3].availability().reserve(reserve).await.expect("late-bound");
                let mut rebind = order(&format!("move-{n}"), Vec::new());
                rebind.rebind_reservation_id = id.clone();
                let moved =
                    cluster.nodes[(n + 1) % 3].availability().allocate(rebind.clone()).await;
                let moved = moved.expect("rebind").into_inner();
                // A retry through the third node is a replay.
                let again = cluster.nodes[(n + 2) % 3].availability().allocate(rebind).await;
                assert!(again.expect("retry").into_inner().replayed, "{id}");
                moved.reservation.expect("moved")
            })
        })
        .collect();
    let mut held: BTreeMap<(String, String), i64> = BTreeMap::new();
    for task in tasks {
        let reservation = task.await.expect("task");
        let units: i64 = reservation.lines.iter().map(|line| line.quantity).sum();
        assert_eq!(units, 3, "{reservation:?}");
        for line in reservation.lines {
            *held.entry((line.sku, line.location_id)).or_default() += line.quantity;
        }
    }
    // Each unit is held once: the nodes report exactly the rebound lines.
    for node in &cluster.nodes {
        let reported: BTreeMap<_, _> =
            reserved(node).await.into_iter().filter(|(_, units)| *units > 0).collect();
        assert_eq!(reported, held, "as node {} reports it", node.address);
    }

    // A kit defined through one node is the cluster's: another shows its
    // figures from its components' (which live on other nodes' shards).
    let component = |sku: &str, quantity| v1::KitComponent { sku: sku.into(), quantity };
    let kit = v1::Kit {
        sku: "kit-ab".into(),
        name: "a and two b".into(),
        components: vec![component("sku-a", 1), component("sku-b", 2)],
    };
    cluster.nodes[1]
        .config()
        .upsert_kit(v1::UpsertKitRequest { kit: Some(kit) })
        .await
        .expect("upsert kit");
    let listed = eventually(DEADLINE, || async {
        let kits = cluster.nodes[2].config().list_kits(v1::ListKitsRequest {}).await;
        kits.is_ok_and(|reply| reply.into_inner().kits.len() == 1)
    })
    .await;
    assert!(listed, "node 2 never saw the kit");
    let request = v1::GetAvailabilityRequest {
        skus: vec!["kit-ab".into(), "sku-a".into(), "sku-b".into()],
        ..Default::default()
    };
    let reply = cluster.nodes[2].availability().get_availability(request).await.expect("read");
    let skus = reply.into_inner().skus;
    let atp = |sku: usize, location: &str| {
        skus[sku].locations.iter().find(|at| at.location_id == location).map_or(0, |at| at.atp)
    };
    for (location, _, _) in LOCATIONS {
        assert_eq!(atp(0, location), atp(1, location).min(atp(2, location) / 2), "{location}");
    }
    cluster.check_epochs(&etcd).await;
}
