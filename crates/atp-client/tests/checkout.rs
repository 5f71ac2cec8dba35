//! `examples/checkout.rs` against a real `atpd`: its `checkout` function
//! through the three endings, and the example binary itself.

#[path = "../examples/checkout.rs"]
#[allow(dead_code)] // Its `main` is the example's, not this test's.
mod example;

mod support;

use std::path::PathBuf;
use std::process::Command;

use atp_client::{ReservationState, Reserve, RetryPolicy};
use atp_testkit::Atpd;
use example::{Outcome, checkout};
use support::{client, configure, position};

#[tokio::test]
async fn checkout_commits_when_paid_and_releases_when_not() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::default());
    configure(&client, &["tee"], 3).await;

    let order = Reserve::new("order-1", "web").line("tee", "dc-1", 2);
    let outcome = checkout(&client, order, |_| true).await.expect("checkout");
    let Outcome::Ordered(order) = outcome else { panic!("{outcome:?}") };
    assert_eq!(order.state, ReservationState::Committed);
    assert_eq!(order.lines[0].committed, 2);

    let declined = Reserve::new("order-2", "web").line("tee", "dc-1", 1);
    let outcome = checkout(&client, declined, |_| false).await.expect("checkout");
    let Outcome::Released(released) = outcome else { panic!("{outcome:?}") };
    assert_eq!(released.state, ReservationState::Released);

    let too_many = Reserve::new("order-3", "web").line("tee", "dc-1", 2);
    let outcome = checkout(&client, too_many, |_| true).await.expect("checkout");
    assert!(
        matches!(&outcome, Outcome::OutOfStock { sku, available: 1 } if sku == "tee"),
        "{outcome:?}"
    );
    let position = position(&client, "tee").await;
    assert_eq!((position.committed, position.reserved, position.atp), (2, 0, 1));

    // A checkout run again carries on from where its reservation is now.
    let again = Reserve::new("order-1", "web").line("tee", "dc-1", 2);
    let outcome = checkout(&client, again, |_| panic!("no second payment")).await;
    let Outcome::Ordered(order) = outcome.expect("checkout") else { panic!("not ordered") };
    assert_eq!(order.state, ReservationState::Committed);
    let again = Reserve::new("order-2", "web").line("tee", "dc-1", 1);
    let outcome = checkout(&client, again, |_| panic!("no second payment")).await;
    let Outcome::Ended(ended) = outcome.expect("checkout") else { panic!("not ended") };
    assert_eq!(ended.state, ReservationState::Released);
}

/// The example binary, built by cargo the way `cargo run --example` would.
fn example_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "atp-client", "--example", "checkout"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build --example checkout");
    assert!(status.success(), "building the example failed: {status}");
    // tests/checkout-<hash> lives in target/debug/deps; examples in target/debug/examples.
    let test = std::env::current_exe().expect("the test binary");
    let debug = test.parent().and_then(|deps| deps.parent()).expect("target/debug");
    debug.join("examples").join(format!("checkout{}", std::env::consts::EXE_SUFFIX))
}

#[tokio::test]
async fn the_example_binary_orders_and_releases() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::default());
    configure(&client, &["tee"], 3).await;
    let binary = example_binary();
    let run = |order: &str, line: &str, payment: &str| {
        Command::new(&binary)
            .args([&atpd.endpoint(), order, "web", line])
            .env("ATP_PAYMENT", payment)
            .output()
            .expect("run the example")
    };
    let paid = run("order-1", "tee@dc-1=2", "ok");
    assert!(paid.status.success(), "{}", String::from_utf8_lossy(&paid.stderr));
    assert!(String::from_utf8_lossy(&paid.stdout).starts_with("Ordered("));
    let declined = run("order-2", "tee@dc-1=1", "declined");
    assert!(String::from_utf8_lossy(&declined.stdout).starts_with("Released("));
    let short = run("order-3", "tee@dc-1=2", "ok");
    assert!(String::from_utf8_lossy(&short.stdout).starts_with("OutOfStock"), "1 unit left");
    let bad = run("order-4", "tee-without-location", "ok");
    assert!(!bad.status.success(), "a malformed line is refused");
    let position = position(&client, "tee").await;
    assert_eq!((position.committed, position.reserved, position.atp), (2, 0, 1));
    let order = client.get_reservation("order-2").await.expect("order-2");
    assert_eq!(order.state, ReservationState::Released);
}
