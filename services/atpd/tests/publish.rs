//! Safe to publish (issue 13) on the real `atpd` binary over real gRPC:
//! GetAvailability shows each channel's ATP and the figure safe to publish
//! (ATP less the demand expected during the channel's lag), the demand is
//! learnt from holds, and it is durable: a node killed with SIGKILL shows
//! the same figure after restarting on its data.

mod common;

use atp_proto::v1;
use common::Atpd;
use tonic::Code;

/// `web` sells from dc-1 with a 60 s lag at the default level (95 %);
/// `pos` sells from dc-1 with no lag.
async fn configure(atpd: &Atpd) {
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
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
}

/// (channel, atp, published) of `sku`, channels in id order.
async fn figures(atpd: &Atpd, sku: &str) -> Vec<(String, i64, i64)> {
    let request = v1::GetAvailabilityRequest { skus: vec![sku.into()], ..Default::default() };
    let reply = atpd.availability().get_availability(request).await.expect("availability");
    let mut figures: Vec<(String, i64, i64)> = reply.into_inner().skus[0]
        .channels
        .iter()
        .map(|channel| (channel.channel_id.clone(), channel.atp, channel.published))
        .collect();
    figures.sort();
    figures
}

fn shown(pos: (i64, i64), web: (i64, i64)) -> Vec<(String, i64, i64)> {
    vec![("pos".into(), pos.0, pos.1), ("web".into(), web.0, web.1)]
}

/// `count` holds of one `tee` at dc-1 on web (ids `r-0`, `r-1`, ...).
async fn hold_tees_on_web(atpd: &Atpd, count: usize) {
    let mut api = atpd.availability();
    for n in 0..count {
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
}

#[tokio::test]
async fn the_published_figure_holds_back_the_lags_demand_and_survives_a_restart() {
    let data = tempfile::tempdir().expect("a data directory");
    let mut atpd = Atpd::start_in(data.path(), &[]).await;
    configure(&atpd).await;
    atpd.receive("tee", "dc-1", 100).await;
    // No demand seen yet: nothing is held back.
    assert_eq!(figures(&atpd, "tee").await, shown((100, 100), (100, 100)));

    // 30 holds of one unit on web within seconds: 30 units over the 15 min
    // exposure floor is 120 an hour, Poisson(2) over web's 60 s lag, whose
    // 95 % quantile is 5 (P(≤4) = 0.947, P(≤5) = 0.983).
    hold_tees_on_web(&atpd, 30).await;
    // pos has no lag and saw no demand: it publishes its ATP.
    assert_eq!(figures(&atpd, "tee").await, shown((70, 70), (70, 65)));

    // The demand is durable with the holds.
    atpd.kill();
    let atpd = Atpd::start_in(data.path(), &[]).await;
    assert_eq!(figures(&atpd, "tee").await, shown((70, 70), (70, 65)));
}

#[tokio::test]
async fn a_publishing_rule_out_of_range_names_its_field() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: vec!["dc-1".into()],
        publish_lag_ms: -1,
        safety_level: Some(1000),
        ..Default::default()
    };
    let request = v1::UpsertChannelRequest { channel: Some(channel) };
    let refused = atpd.config().upsert_channel(request).await.expect_err("out of range");
    assert_eq!(refused.code(), Code::InvalidArgument);
    for field in ["channel.publish_lag_ms", "channel.safety_level"] {
        assert!(refused.message().contains(field), "{field}: {}", refused.message());
    }
    // The stored channel is unchanged: lag 0, level 950.
    let listed = atpd.config().list_channels(v1::ListChannelsRequest {}).await.expect("list");
    let web = listed.into_inner().channels.into_iter().find(|c| c.channel_id == "web");
    let web = web.expect("web");
    assert_eq!((web.publish_lag_ms, web.safety_level), (0, Some(950)));
}

/// `demand_per_hour` of each channel of `sku`, channels in id order.
async fn demand(atpd: &Atpd, sku: &str) -> Vec<(String, f64)> {
    let request = v1::GetAvailabilityRequest { skus: vec![sku.into()], ..Default::default() };
    let reply = atpd.availability().get_availability(request).await.expect("availability");
    let mut rates: Vec<(String, f64)> = reply.into_inner().skus[0]
        .channels
        .iter()
        .map(|channel| (channel.channel_id.clone(), channel.demand_per_hour))
        .collect();
    rates.sort_by(|a, b| a.0.cmp(&b.0));
    rates
}

#[tokio::test]
async fn get_availability_shows_the_observed_demand_per_channel() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;
    atpd.receive("tee", "dc-1", 100).await;
    assert_eq!(demand(&atpd, "tee").await, [("pos".into(), 0.0), ("web".into(), 0.0)]);

    // 30 holds of one unit on web (60 s lag) within seconds: 30 units over
    // the 15 min exposure floor, 120 an hour (less the decay of the seconds
    // the test takes, e^(−s/1 h)).
    hold_tees_on_web(&atpd, 30).await;
    let rates = demand(&atpd, "tee").await;
    // pos has no lag: it is not observed.
    assert_eq!(rates[0], ("pos".into(), 0.0));
    assert_eq!(rates[1].0, "web");
    assert!((119.0..=120.0 + 1e-9).contains(&rates[1].1), "{rates:?}");
}
