//! Every scenario for about a second in both modes against an in-process
//! node, then the invariant check on the merged log of both runs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use atp_loadgen::{AckLog, Acked, CheckReport, Config, Mode, Report, Scenario, check, run, setup};
use common::{Server, short};

/// Runs `scenario` closed-loop, then open-loop over the same setup, and
/// checks the merged log of both runs.
async fn both_modes(scenario: Scenario) -> (Vec<Report>, AckLog, CheckReport) {
    let server = Server::start().await;
    let config = short(&server, scenario, Mode::Closed);
    let data = setup(&config).await.expect("setup");
    let mut reports = Vec::new();
    let mut acks = AckLog::new();
    for mode in [Mode::Closed, Mode::Open] {
        let config = Config { mode, ..config.clone() };
        let mut report = run(&config, &data).await.expect("run");
        assert!(report.steps > 0, "{scenario:?} {mode:?} ran no step:\n{report}");
        assert!(report.latency.count > 0 && report.latency.p99_us > 0, "{report}");
        assert_eq!(report.unknown_outcomes, 0, "{report}");
        acks.merge(std::mem::take(&mut report.acks));
        reports.push(report);
    }
    let checked = check(&config.endpoint, &data, &acks).await.expect("check");
    assert!(checked.passed(), "{scenario:?}: {checked}");
    assert_eq!(checked.reservations, acks.len());
    (reports, acks, checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_runs_in_both_modes_and_checks() {
    let (reports, acks, checked) = both_modes(Scenario::Reserve).await;
    for report in &reports {
        assert!(report.errors.is_empty(), "plenty of stock, no refusal:\n{report}");
        assert!(report.calls.contains_key("Reserve"), "{report}");
    }
    let open = &reports[1];
    assert_eq!(open.target_rate, Some(300.0));
    // A fixed arrival rate: about 300 steps in the measured second.
    assert!((150..=330).contains(&open.steps), "{open}");
    assert_eq!(acks.count(Acked::Held), acks.len());
    assert_eq!(checked.reserved_units, acks.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_commits_releases_and_lets_expire() {
    let (reports, acks, checked) = both_modes(Scenario::Checkout).await;
    for report in &reports {
        assert!(report.errors.is_empty(), "{report}");
        for call in ["Reserve", "Commit", "Release"] {
            assert!(report.calls.contains_key(call), "{call} missing:\n{report}");
        }
    }
    assert!(acks.count(Acked::Committed) > 0 && acks.count(Acked::Released) > 0);
    // The holds left to expire are still HELD or already EXPIRED.
    let left = acks.count(Acked::Held);
    assert!(left > 0, "some holds are left to expire");
    let found_held = checked.found.get("Held").copied().unwrap_or(0);
    let found_expired = checked.found.get("Expired").copied().unwrap_or(0);
    assert_eq!(found_held + found_expired, left, "{checked}");
    assert!(checked.committed_units > 0, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_allocates_then_commits_or_releases() {
    let (reports, acks, checked) = both_modes(Scenario::Routing).await;
    for report in &reports {
        assert!(report.errors.is_empty(), "{report}");
        for call in ["Allocate", "Commit", "Release"] {
            assert!(report.calls.contains_key(call), "{call} missing:\n{report}");
        }
        assert!(!report.calls.contains_key("AllocateResend"), "nothing was lost:\n{report}");
    }
    // Every order was answered with the lines the node chose, then ended.
    assert!(acks.count(Acked::Committed) > 0 && acks.count(Acked::Released) > 0);
    assert_eq!(acks.count(Acked::Committed) + acks.count(Acked::Released), acks.len());
    let locations: BTreeSet<u16> = acks
        .iter()
        .flat_map(|(_, entry)| {
            assert!(!entry.order.is_empty() && !entry.lines.is_empty(), "{entry:?}");
            entry.lines.iter().map(|line| line.location)
        })
        .collect();
    assert!(locations.len() > 1, "destinations differ, so do the cheapest locations");
    assert!(checked.committed_units > 0 && checked.reserved_units == 0, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reserves_sixteen_per_call() {
    let (reports, acks, _) = both_modes(Scenario::Batch).await;
    for report in &reports {
        assert!(report.errors.is_empty(), "{report}");
        let calls = report.calls.get("ReserveBatch").expect("batch calls").count;
        assert!(calls > 0, "{report}");
        let ratio = report.reservations_per_s / report.calls_per_s;
        assert!((ratio - 16.0).abs() < 0.01, "16 reservations per call, got {ratio}");
    }
    assert_eq!(acks.len() % 16, 0);
    assert_eq!(acks.count(Acked::Held), acks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_counts_health_checks_and_writes_nothing() {
    let (reports, acks, checked) = both_modes(Scenario::Ceiling).await;
    for report in &reports {
        assert!(report.errors.is_empty(), "every check answered SERVING:\n{report}");
        let checks = report.calls.get("HealthCheck").expect("health checks");
        assert_eq!(checks.count, report.steps, "one call per step:\n{report}");
        assert_eq!(report.calls.len(), 1, "nothing but health checks:\n{report}");
        assert_eq!(report.reservations_per_s, 0.0, "{report}");
    }
    assert_eq!(reports[1].target_rate, Some(300.0));
    assert!((150..=330).contains(&reports[1].steps), "{}", reports[1]);
    assert!(acks.is_empty(), "a health check logs no reservation");
    assert_eq!((checked.positions, checked.reservations), (0, 0), "{checked}");
}

/// Every buyer's answer in a flash sale: exactly `stock` holds, every other
/// buyer refused as sold out or overloaded, never in doubt.
fn assert_sold_exactly(report: &Report, acks: &AckLog, checked: &CheckReport, stock: usize) {
    assert_eq!(acks.count(Acked::Held), stock, "{report}");
    assert_eq!(acks.count(Acked::Refused), acks.len() - stock, "{report}");
    assert_eq!(report.unknown_outcomes, 0, "{report}");
    for code in report.errors.keys() {
        assert!(
            code == "FailedPrecondition" || code == "ResourceExhausted",
            "a buyer got {code}:\n{report}"
        );
    }
    assert!(report.errors.get("FailedPrecondition").copied().unwrap_or(0) > 0, "{report}");
    assert!(checked.passed(), "{checked}");
    assert_eq!(checked.reserved_units, stock as i64, "{checked}");
    assert!(report.calls["Reserve"].p99_us > 0, "the sale reports its latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_holds_exactly_the_stock_closed_loop() {
    let server = Server::start().await;
    let config = Config {
        clients: 2_000,
        connections: 4,
        // Time for every buyer to start in a debug build, where client and
        // server share two cores.
        warmup: Duration::from_secs(1),
        ..short(&server, Scenario::FlashSale, Mode::Closed)
    };
    let data = setup(&config).await.expect("setup");
    assert_eq!((data.position_count(), data.stock_per_position), (1, 100));
    let report = run(&config, &data).await.expect("run");
    assert!(report.acks.len() > 1_000, "thousands of buyers:\n{report}");
    let checked = check(&config.endpoint, &data, &report.acks).await.expect("check");
    assert_sold_exactly(&report, &report.acks, &checked, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_sale_holds_exactly_the_stock_open_loop() {
    let server = Server::start().await;
    let config = Config {
        clients: 1_000,
        rate: 3_000.0,
        connections: 4,
        ..short(&server, Scenario::FlashSale, Mode::Open)
    };
    let data = setup(&config).await.expect("setup");
    let report = run(&config, &data).await.expect("run");
    let checked = check(&config.endpoint, &data, &report.acks).await.expect("check");
    assert_sold_exactly(&report, &report.acks, &checked, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_goes_on_while_the_server_is_away() {
    let mut server = Server::start().await;
    let config = Config {
        duration: Duration::from_millis(1_500),
        warmup: Duration::ZERO,
        ..short(&server, Scenario::Checkout, Mode::Closed)
    };
    let data = setup(&config).await.expect("setup");
    server.stop().await;
    let load = {
        let (config, data) = (config.clone(), data.clone());
        tokio::spawn(async move { run(&config, &data).await })
    };
    // Half a second of load against a closed port, then the node is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart().await;
    let report = load.await.expect("the run task").expect("the run ends normally");
    assert!(report.errors.get("Unavailable").copied().unwrap_or(0) > 0, "{report}");
    assert!(report.acks.count(Acked::Held) + report.acks.count(Acked::Committed) > 0, "{report}");
    let checked = check(&config.endpoint, &data, &report.acks).await.expect("check");
    assert!(checked.passed(), "{checked}");
}

/// Units held over every position of `data`, read through the API.
async fn held_units(config: &Config, data: &atp_loadgen::Setup) -> i64 {
    let client =
        atp_loadgen::client::client(&config.endpoint, Duration::from_secs(10)).expect("a client");
    let request = atp_proto::v1::GetAvailabilityRequest {
        skus: data.skus.clone(),
        location_ids: data.locations.clone(),
        channel_ids: Vec::new(),
    };
    let response = client.rpc().get_availability(request).await.expect("availability");
    response.skus.iter().flat_map(|sku| &sku.locations).map(|at| at.reserved).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_reconnects_after_the_server_went_away_mid_run() {
    let mut server = Server::start().await;
    let config = Config {
        duration: Duration::from_millis(2_000),
        warmup: Duration::ZERO,
        skus: 20,
        locations: 1,
        ..short(&server, Scenario::Reserve, Mode::Closed)
    };
    let data = setup(&config).await.expect("setup");
    let load = {
        let (config, data) = (config.clone(), data.clone());
        tokio::spawn(async move { run(&config, &data).await })
    };
    // Half a second of load, the server stops (its connections close), and
    // after a moment of load against a closed port it is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await;
    let held_at_restart = held_units(&config, &data).await;
    let report = load.await.expect("the run task").expect("the run ends normally");
    assert!(report.errors.get("Unavailable").copied().unwrap_or(0) > 0, "{report}");
    assert!(held_units(&config, &data).await > held_at_restart, "no hold after the restart");
    let checked = check(&config.endpoint, &data, &report.acks).await.expect("check");
    assert!(checked.passed(), "{checked}");
}
