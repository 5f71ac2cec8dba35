//! `atpctl demand` against the real `atpd` (started by `atp-testkit`): the
//! observed rate per channel and the days of cover per location.

use std::process::Output;

use atp_proto::v1;
use atp_testkit::Atpd;

/// Runs `atpctl --addr ADDR ARGS…` to completion.
async fn atpctl(addr: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_atpctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("ATP_ADDR")
        .output()
        .await
        .expect("run the atpctl binary")
}

#[tokio::test]
async fn demand_shows_the_rate_of_a_lagged_channel_and_the_cover_it_leaves() {
    let atpd = Atpd::start(&[]).await;
    // web (60 s lag) and pos (no lag) both sell from dc-1; dc-2 sells nowhere.
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1"]).await;
    let mut config = atpd.config();
    for (id, lag) in [("web", 60_000), ("pos", 0)] {
        let channel = v1::Channel {
            channel_id: id.into(),
            location_ids: vec!["dc-1".into()],
            publish_lag_ms: lag,
            ..Default::default()
        };
        let request = v1::UpsertChannelRequest { channel: Some(channel) };
        config.upsert_channel(request).await.expect("upsert channel");
    }
    atpd.receive("tee", "dc-1", 100).await;
    atpd.receive("tee", "dc-2", 4).await;
    let mut api = atpd.availability();
    for n in 0..30 {
        let reserve = v1::ReserveRequest {
            reservation_id: format!("r-{n}"),
            channel_id: "web".into(),
            lines: vec![v1::ReservationLine {
                sku: "tee".into(),
                location_id: "dc-1".into(),
                quantity: 1,
            }],
            ttl_seconds: 3600,
            metadata: None,
        };
        api.reserve(reserve).await.expect("reserve");
    }

    let output = atpctl(&atpd.endpoint(), &["demand", "tee", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("--json prints one JSON document");
    let channel = |id: &str| {
        value["channels"]
            .as_array()
            .and_then(|channels| channels.iter().find(|channel| channel["channel_id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no channel {id}: {value}"))
    };
    // 30 units over the 15 min exposure floor: 120 an hour (less the decay
    // of the seconds the test takes).
    let web = channel("web");
    let rate = web["demand_per_hour"].as_f64().expect("a number");
    assert!((119.0..=120.0 + 1e-9).contains(&rate), "{web}");
    let per_day = web["demand_per_day"].as_f64().expect("a number");
    assert!((per_day - rate * 24.0).abs() < 1e-6, "{web}");
    assert_eq!((web["publish_lag_ms"].as_i64(), web["atp"].as_i64()), (Some(60_000), Some(70)));
    assert_eq!(web["published"].as_i64(), Some(65), "{web}");
    let pos = channel("pos");
    assert_eq!(pos["demand_per_hour"].as_f64(), Some(0.0), "{pos}");

    // dc-1: 70 units against web's demand of the day (pos adds none).
    let location = |id: &str| {
        value["locations"]
            .as_array()
            .and_then(|locations| locations.iter().find(|at| at["location_id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no location {id}: {value}"))
    };
    let dc1 = location("dc-1");
    assert_eq!(dc1["atp"].as_i64(), Some(70));
    let cover = dc1["days_of_cover"].as_f64().expect("a number");
    assert!((cover - 70.0 / (rate * 24.0)).abs() < 1e-9, "{dc1}");
    assert!((0.0243..0.0246).contains(&cover), "{dc1}");
    // No channel sells from dc-2: no demand, no end to its cover.
    assert!(location("dc-2")["days_of_cover"].is_null(), "{value}");
}
