//! The admin API (status, republish) and the config checks, on the real
//! binary.

mod support;

use std::process::Command;
use std::time::Duration;

use atp_testkit::{Atpd, eventually};
use support::{Faults, Publisher, Receiver, converges, http, skus, write_config};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_channel_and_republish_pushes_every_sku_again() {
    let directory = tempfile::tempdir().expect("a directory");
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(30);
    atpd.receive_all(&all, 5, "a").await;
    let faults = Faults { fail_percent: 0, timeout_percent: 0, hold: Duration::ZERO };
    let receiver = Receiver::start(faults, 1).await;
    let config = write_config(directory.path(), &atpd, &receiver.url(), "");
    let publisher = Publisher::start(&config).await;
    assert!(converges(&atpd, &receiver, &all, DEADLINE).await, "log:\n{}", publisher.log());

    // Everything acknowledged: synced, nothing pending, no lag.
    let until = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        let status = publisher.status().await;
        let channel = &status["channels"][0];
        if channel["synced"] == true && channel["pending"] == 0 && channel["pushed_items"] == 30 {
            break status;
        }
        assert!(tokio::time::Instant::now() < until, "never settled: {status}");
        tokio::time::sleep(atp_testkit::POLL_INTERVAL).await;
    };
    let channel = &status["channels"][0];
    assert_eq!(channel["channel_id"], "web");
    assert_eq!(channel["connected"], true);
    assert_eq!(channel["lag_ms"], 0);
    assert_eq!(channel["failed_requests"], 0);
    assert!(channel["last_acked_version"]["epoch"].as_u64().is_some(), "{status}");
    assert!(channel["last_acked_version"]["sequence"].as_u64().is_some(), "{status}");

    // Republish: every SKU is pushed a second time.
    let (code, body) = http(publisher.admin, "POST", "/v1/channels/web/republish").await;
    assert_eq!(code, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer, serde_json::json!({"channel_id": "web", "skus": 30}));
    let twice = eventually(DEADLINE, || {
        let received = receiver.received.lock().expect("lock");
        let done = all.iter().all(|sku| received.items_per_sku.get(sku).copied().unwrap_or(0) >= 2);
        std::future::ready(done)
    })
    .await;
    assert!(twice, "republish did not push every SKU again");

    let (code, body) = http(publisher.admin, "POST", "/v1/channels/nope/republish").await;
    assert_eq!(code, 404, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(error["error"].as_str().is_some_and(|message| message.contains("nope")), "{body}");
}

fn run_with_config(text: &str) -> (bool, String) {
    let directory = tempfile::tempdir().expect("a directory");
    let path = directory.path().join("bad.toml");
    std::fs::write(&path, text).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_atp-publish"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run atp-publish");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_bad_config_exits_non_zero_naming_the_key() {
    let good = "atp_endpoints = [\"http://127.0.0.1:50051\"]\nstate_dir = \"/tmp/x\"\n\
                [[channels]]\nchannel_id = \"web\"\nurl = \"http://127.0.0.1:9/f\"\n";
    let cases = [
        (format!("{good}batch_max = 0\n"), "channels[0].batch_max"),
        (format!("{good}batch_max = 20000\n"), "channels[0].batch_max"),
        (format!("{good}request_timeout_ms = 0\n"), "channels[0].request_timeout_ms"),
        (good.replace("http://127.0.0.1:9/f", "ftp://x/"), "channels[0].url"),
        (good.replace("state_dir = \"/tmp/x\"\n", ""), "state_dir"),
        (format!("admin_listen = \"here\"\n{good}"), "admin_listen"),
        (format!("{good}flush_interval_ms = \"fast\"\n"), "flush_interval_ms"),
        (format!("{good}surprise = true\n"), "surprise"),
    ];
    for (text, key) in cases {
        let (success, stderr) = run_with_config(&text);
        assert!(!success, "accepted:\n{text}");
        assert!(
            stderr.contains("bad config") && stderr.contains(key),
            "{key} not named:\n{stderr}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_atp-publish")).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_resume_window_gets_resync_and_the_whole_snapshot() {
    let directory = tempfile::tempdir().expect("a directory");
    let atpd = Atpd::start(&[("ATP_WATCH_RESUME_WINDOW_MS", "1000")]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(40);
    atpd.receive_all(&all, 5, "a").await;
    let faults = Faults { fail_percent: 0, timeout_percent: 0, hold: Duration::ZERO };
    let receiver = Receiver::start(faults, 2).await;
    let config = write_config(directory.path(), &atpd, &receiver.url(), "");
    let mut publisher = Publisher::start(&config).await;
    assert!(converges(&atpd, &receiver, &all, DEADLINE).await, "log:\n{}", publisher.log());
    let cursor = directory.path().join("state").join("web.cursor");
    let cursor_sent_at_ms = || -> Option<i64> {
        let text = std::fs::read_to_string(&cursor).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["sent_at_ms"].as_i64()
    };
    let persisted =
        eventually(DEADLINE, || std::future::ready(cursor_sent_at_ms().is_some())).await;
    assert!(persisted, "no cursor; log:\n{}", publisher.log());
    publisher.kill();

    // Down past the node's resume window (a condition on the clock), with a change meanwhile.
    atpd.receive_all(&all[..5], 1, "b").await;
    let sent_at_ms = cursor_sent_at_ms().expect("a cursor");
    let now_ms = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        i64::try_from(since.expect("after 1970").as_millis()).expect("fits")
    };
    let expired = eventually(DEADLINE, || std::future::ready(now_ms() > sent_at_ms + 1500)).await;
    assert!(expired);

    let publisher = Publisher::start(&config).await;
    let everything_again = eventually(DEADLINE, || {
        let received = receiver.received.lock().expect("lock");
        let done = all.iter().all(|sku| received.items_per_sku.get(sku).copied().unwrap_or(0) >= 2);
        std::future::ready(done)
    })
    .await;
    assert!(
        everything_again,
        "the snapshot after RESYNC was not pushed; log:\n{}",
        publisher.log()
    );
    assert!(converges(&atpd, &receiver, &all, DEADLINE).await, "log:\n{}", publisher.log());
    assert!(publisher.log().contains("resync"), "log:\n{}", publisher.log());
}
