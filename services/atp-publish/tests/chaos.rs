//! The publisher against a real atpd and a real HTTP receiver that fails
//! 20 % of requests (500) and holds 5 % past the publisher's timeout: every
//! SKU's figures reach the receiver equal to GetAvailability's, through a
//! SIGKILL of the publisher and its restart on the same state directory,
//! then a SIGKILL and restart of atpd (the stream cut), and the receiver's
//! applied version of a SKU never goes backwards.
//!
//! The SKUs are in groups so that each phase's changes are the last a group
//! sees: group A changes only before the kill (what was owed at the kill
//! must still arrive), B only while the publisher is down (the resume from
//! the cursor must bring it), C after the restart, D after atpd's restart.

mod support;

use std::time::Duration;

use atp_testkit::{Atpd, eventually};
use std::sync::atomic::Ordering;

use support::{Faults, Publisher, Receiver, converges, skus, write_config};

const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);

/// A round of changes to `group`: stock on every SKU, a hold on every 7th.
async fn changes(atpd: &Atpd, group: &[String], round: usize) {
    atpd.receive_all(group, 1 + round as i64, &format!("round-{round}")).await;
    let every_seventh = group.iter().enumerate().filter(|(index, _)| index % 7 == round % 7);
    for (_, sku) in every_seventh {
        atpd.hold_on_web(&format!("hold-{round}-{sku}"), sku, 1).await;
    }
}

/// A port free now, below the kernel's ephemeral range (for an atpd
/// restarted on the same address: an outgoing connection cannot take it
/// meanwhile).
fn free_port() -> u16 {
    atp_cluster::testing::unassigned_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_arrive_through_failures_timeouts_and_sigkill_restarts() {
    let started = std::time::Instant::now();
    let directory = tempfile::tempdir().expect("a directory");
    let data = directory.path().join("atpd");
    std::fs::create_dir_all(&data).expect("a data directory");
    let listen = format!("127.0.0.1:{}", free_port());
    let node_variables = [("ATP_LISTEN_ADDR", listen.as_str())];
    let mut atpd = Atpd::start_in(&data, &node_variables).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(200);
    let (group_a, group_b, group_c, group_d) =
        (&all[..50], &all[50..100], &all[100..150], &all[150..]);
    let faults = Faults { fail_percent: 20, timeout_percent: 5, hold: Duration::from_millis(800) };
    let receiver = Receiver::start(faults, 13).await;
    let extra =
        "batch_max = 10\nflush_interval_ms = 20\nrequest_timeout_ms = 300\nmax_backoff_ms = 400";
    let config = write_config(directory.path(), &atpd, &receiver.url(), extra);

    // Stock before the publisher starts (its snapshot), more after, all
    // pushed through the receiver's faults.
    changes(&atpd, &all, 0).await;
    let mut publisher = Publisher::start(&config).await;
    for round in 1..5 {
        changes(&atpd, &all, round).await;
    }

    // Caught up (some pushes acknowledged, a cursor, nothing owed), then
    // group A's last changes and one of group D are received but cannot be
    // delivered (the receiver refuses everything): killed then. A cursor
    // that ran ahead of the acknowledgements would lose group A.
    let cursor = directory.path().join("state").join("web.cursor");
    let caught_up = eventually(CONVERGE_DEADLINE, || async {
        let pending = publisher.status().await["channels"][0]["pending"].as_u64();
        pending == Some(0) && cursor.exists()
    })
    .await;
    assert!(caught_up, "never caught up; publisher log:\n{}", publisher.log());
    assert!(converges(&atpd, &receiver, &all, CONVERGE_DEADLINE).await);
    receiver.blackhole.store(true, Ordering::SeqCst);
    changes(&atpd, group_a, 5).await;
    atpd.receive_all(&group_d[..1], 1, "after-a").await;
    let received_all = eventually(CONVERGE_DEADLINE, || async {
        let pending = publisher.status().await["channels"][0]["pending"].as_u64();
        pending == Some(group_a.len() as u64 + 1)
    })
    .await;
    assert!(received_all, "the changes never reached the publisher:\n{}", publisher.log());
    publisher.kill();
    receiver.blackhole.store(false, Ordering::SeqCst);
    let before_restart = publisher.log();

    // Group B changes while it is down; C after the restart on the same state_dir.
    for round in 6..9 {
        changes(&atpd, group_b, round).await;
    }
    let publisher = Publisher::start(&config).await;
    for round in 9..12 {
        changes(&atpd, group_c, round).await;
    }

    // atpd dies and comes back on the same address: the stream is cut and
    // resumed. Group D changes after.
    atpd.kill();
    let atpd = Atpd::start_in(&data, &node_variables).await;
    for round in 12..15 {
        changes(&atpd, group_d, round).await;
    }

    let converged = converges(&atpd, &receiver, &all, CONVERGE_DEADLINE).await;
    let received = receiver.received.lock().expect("lock");
    assert!(
        converged,
        "the receiver's figures never equalled GetAvailability's; before restart:\n{before_restart}\nafter:\n{}",
        publisher.log()
    );
    let log = publisher.log();
    assert!(log.contains("resume=true"), "the restart did not resume from the cursor:\n{log}");
    assert!(log.contains("reconnecting"), "atpd's restart did not cut the stream:\n{log}");
    assert_eq!(received.went_backwards(), Vec::<String>::new(), "applied versions went backwards");
    assert_eq!(received.conflicts, Vec::<String>::new(), "same version, other figures");
    assert_eq!(received.malformed, 0);
    assert!(received.failed > 0 && received.timed_out > 0, "the faults happened: {received:?}");
    eprintln!(
        "chaos: {} acknowledged, {} failed, {} held past the timeout, {} stale items, in {:?}",
        received.acknowledged,
        received.failed,
        received.timed_out,
        received.stale,
        started.elapsed()
    );
}
