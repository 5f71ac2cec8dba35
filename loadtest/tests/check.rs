//! The checker catches a log that does not match the node.

mod common;

use std::collections::BTreeSet;

use atp_loadgen::{AckEntry, Acked, LineRef, Mode, Scenario, check, run, setup};
use common::{Server, short};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_tampered_log() {
    let server = Server::start().await;
    let config = short(&server, Scenario::Reserve, Mode::Closed);
    let data = setup(&config).await.expect("setup");
    let report = run(&config, &data).await.expect("run");
    let honest = check(&config.endpoint, &data, &report.acks).await.expect("check");
    assert!(honest.passed(), "{honest}");

    // An acknowledged reservation the node never saw.
    let mut fabricated = report.acks.clone();
    let line = LineRef { sku: 0, location: 0, quantity: 1 };
    let entry = AckEntry {
        lines: vec![line],
        order: Vec::new(),
        acked: Some(Acked::Held),
        in_doubt: BTreeSet::new(),
    };
    fabricated.insert("fabricated-1", entry);
    let checked = check(&config.endpoint, &data, &fabricated).await.expect("check");
    assert!(!checked.passed());
    assert!(
        checked.violations.iter().any(|v| v.contains("fabricated-1") && v.contains("Missing")),
        "{checked}"
    );

    // A held reservation logged as released.
    let (id, held) = report.acks.iter().next().expect("something was held");
    let mut released = report.acks.clone();
    released.insert(id, AckEntry { acked: Some(Acked::Released), ..held.clone() });
    let checked = check(&config.endpoint, &data, &released).await.expect("check");
    assert_eq!(checked.violation_count, 1, "{checked}");
    assert!(checked.violations[0].contains(id), "{checked}");

    // A log that lost a reservation: its units are held by nobody it knows.
    let mut lost = report.acks.clone();
    let mut kept = atp_loadgen::AckLog::new();
    for (other, entry) in lost.iter().filter(|(other, _)| *other != id) {
        kept.insert(other, entry.clone());
    }
    lost = kept;
    let checked = check(&config.endpoint, &data, &lost).await.expect("check");
    assert!(
        checked.violations.iter().any(|v| v.contains("reserved") && v.contains("HELD")),
        "{checked}"
    );

    // Other lines than the ones sent.
    let mut changed = report.acks.clone();
    let mut lines = held.lines.clone();
    lines[0].quantity += 1;
    changed.insert(id, AckEntry { lines, ..held.clone() });
    let checked = check(&config.endpoint, &data, &changed).await.expect("check");
    assert!(checked.violations.iter().any(|v| v.contains("differ")), "{checked}");
}
