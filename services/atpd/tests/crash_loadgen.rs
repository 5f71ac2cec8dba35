//! Crash test driven by the load generator: `atp-loadgen`'s checkout scenario
//! (reserve, then commit, release or let expire) runs against a real atpd
//! that is SIGKILLed at random moments and restarted on the same data
//! directory and port; afterwards the load generator's checker verifies every
//! acknowledged operation, that nothing is oversold and that units add up.
//!
//! `ATP_CRASH_CYCLES` (default 5) sets the kills; `ATP_CRASH_SEED` replays.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use atp_loadgen::{Config, Mode, Scenario, check, run, setup};
use common::Atpd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_checkout_survives_sigkill() {
    let cycles: u64 =
        std::env::var("ATP_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let seed: u64 =
        std::env::var("ATP_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("loadgen crash test: seed {seed} (ATP_CRASH_SEED replays it), {cycles} kills");
    // A fixed port, so the load generator's endpoint survives restarts.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let variables = [("ATP_LISTEN_ADDR", listen.as_str())];
    let data = tempfile::tempdir().expect("data directory");
    let mut atpd = Atpd::start_in(data.path(), &variables).await;

    let config = Config {
        endpoint: format!("http://{listen}"),
        scenario: Scenario::Checkout,
        mode: Mode::Closed,
        clients: 16,
        connections: 2,
        skus: 40,
        locations: 2,
        stock: 200,
        warmup: Duration::ZERO,
        // Long enough for every kill and restart below; the run keeps going
        // through them (lost answers are logged as in doubt).
        duration: Duration::from_millis(1500 * (cycles + 2)),
        request_timeout: Duration::from_secs(2),
        seed: Some(seed),
        ..Config::default()
    };
    let setup = setup(&config).await.expect("setup");
    let load = {
        let (config, setup) = (config.clone(), setup.clone());
        tokio::spawn(async move { run(&config, &setup).await })
    };

    let mut rng = seed | 1;
    for _ in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // A random moment: the kill is what is random, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(300 + rng % 900)).await;
        atpd.kill();
        atpd = Atpd::start_in(data.path(), &variables).await;
    }
    let report = load.await.expect("load task").expect("load ran");
    let acknowledged: usize = report.acknowledged.values().sum();
    assert!(acknowledged > 0, "nothing was acknowledged: {:?}", report.errors);

    let checked = check(&config.endpoint, &setup, &report.acks).await.expect("check ran");
    assert!(
        checked.violations.is_empty(),
        "{} violations: {:#?}",
        checked.violation_count,
        checked.violations
    );
    eprintln!(
        "loadgen crash test: {cycles} kills, {acknowledged} acknowledged, {} in doubt, errors {:?}, found {:?}",
        report.unknown_outcomes, report.errors, checked.found
    );
}
