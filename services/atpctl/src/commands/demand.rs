//! `demand`: one SKU's observed demand per channel and its days of cover per
//! location (issue 13, the start of demand sensing). One GetAvailability
//! (the channels' ATP, published figure and `demand_per_hour`) and one
//! ListChannels (each channel's lag, safety level and locations).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use atp_core::publish::DEFAULT_SAFETY_LEVEL;
use atp_proto::status_from_rpc;
use atp_proto::v1::{Channel, GetAvailabilityRequest, ListChannelsRequest, SkuAvailability};
use clap::Args;
use serde_json::{Value, json};

use crate::client::Context;
use crate::table::Table;

/// Hours in a day: a daily demand is 24 times the hourly rate.
const HOURS_PER_DAY: f64 = 24.0;

/// Shown under `atpctl demand --help`.
pub const DEMAND_HELP: &str = "\
DEMAND/H is the SKU's observed demand on the channel: units held per hour the
channel showed the SKU as available, exponentially weighted (time constant
1 h), decayed to now. Only channels with a publish lag above 0 are observed;
the others, and kits, show 0. DEMAND/DAY is 24 times it.

DAYS_OF_COVER of a location is its ATP divided by the summed DEMAND/DAY of
every channel that sells from it (ListChannels). An approximation: a
channel's whole demand is counted against each of its locations, so a channel
that sells from two locations counts fully at both and the cover shown is on
the low side. No observed demand: the cover is ∞ (null with --json).

Examples:
  atpctl demand tee
  atpctl --json demand tee";

#[derive(Debug, Args)]
pub struct DemandArgs {
    /// The SKU.
    pub sku: String,
}

/// One channel's row.
#[derive(Debug, PartialEq)]
struct ChannelDemand {
    channel_id: String,
    /// None: the channel is not (or no longer) configured.
    publish_lag_ms: Option<i64>,
    /// Per mille, as configured (unset: the default).
    safety_level: Option<u32>,
    per_hour: f64,
    atp: i64,
    published: i64,
}

/// One location's row.
#[derive(Debug, PartialEq)]
struct LocationCover {
    location_id: String,
    atp: i64,
    /// Summed over the channels that sell from the location.
    per_day: f64,
    /// None when `per_day` is 0: no end in sight.
    days_of_cover: Option<f64>,
}

/// What `demand` shows of one SKU.
#[derive(Debug, PartialEq)]
struct Demand {
    sku: String,
    shard: u32,
    epoch: u64,
    channels: Vec<ChannelDemand>,
    locations: Vec<LocationCover>,
}

pub async fn demand(context: &Context, args: DemandArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let client = clients.rpc();
    let request = GetAvailabilityRequest { skus: vec![args.sku.clone()], ..Default::default() };
    let response = client.get_availability(request).await.context("get availability")?;
    let sku = response
        .skus
        .into_iter()
        .next()
        .with_context(|| format!("get availability: no figures for {}", args.sku))?;
    if let Some(error) = sku.error.clone() {
        // Cluster mode: this SKU could not be read; say why, with its status.
        return Err(anyhow::Error::new(status_from_rpc(error))
            .context(format!("get availability of {}", args.sku)));
    }
    let channels = client.list_channels(ListChannelsRequest {}).await.context("list channels")?;
    let shown = demand_of(&sku, &channels.channels);
    context.print(|| demand_json(&shown), || demand_text(&shown));
    Ok(ExitCode::SUCCESS)
}

/// The rows of `sku`'s figures, with the `configured` channels' rules and
/// locations.
fn demand_of(sku: &SkuAvailability, configured: &[Channel]) -> Demand {
    let configured: BTreeMap<&str, &Channel> =
        configured.iter().map(|channel| (channel.channel_id.as_str(), channel)).collect();
    let channels: Vec<ChannelDemand> = sku
        .channels
        .iter()
        .map(|shown| {
            let channel = configured.get(shown.channel_id.as_str());
            ChannelDemand {
                channel_id: shown.channel_id.clone(),
                publish_lag_ms: channel.map(|channel| channel.publish_lag_ms),
                safety_level: channel
                    .map(|channel| channel.safety_level.unwrap_or(DEFAULT_SAFETY_LEVEL)),
                per_hour: shown.demand_per_hour.max(0.0),
                atp: shown.atp,
                published: shown.published,
            }
        })
        .collect();
    let locations = sku
        .locations
        .iter()
        .map(|position| {
            // Every channel selling from here counts in full (see DEMAND_HELP).
            let per_day: f64 = channels
                .iter()
                .filter(|row| {
                    configured
                        .get(row.channel_id.as_str())
                        .is_some_and(|channel| channel.location_ids.contains(&position.location_id))
                })
                // From +0.0: an empty float `sum` is −0.0.
                .fold(0.0, |total, row| total + row.per_hour * HOURS_PER_DAY);
            let days_of_cover = (per_day > 0.0).then(|| position.atp.max(0) as f64 / per_day);
            LocationCover {
                location_id: position.location_id.clone(),
                atp: position.atp,
                per_day,
                days_of_cover,
            }
        })
        .collect();
    Demand { sku: sku.sku.clone(), shard: sku.shard, epoch: sku.epoch, channels, locations }
}

fn demand_json(demand: &Demand) -> Value {
    let channels: Vec<Value> = demand
        .channels
        .iter()
        .map(|row| {
            json!({
                "channel_id": row.channel_id,
                "publish_lag_ms": row.publish_lag_ms,
                "safety_level": row.safety_level,
                "demand_per_hour": row.per_hour,
                "demand_per_day": row.per_hour * HOURS_PER_DAY,
                "atp": row.atp,
                "published": row.published,
            })
        })
        .collect();
    let locations: Vec<Value> = demand
        .locations
        .iter()
        .map(|row| {
            json!({
                "location_id": row.location_id,
                "atp": row.atp,
                "demand_per_day": row.per_day,
                "days_of_cover": row.days_of_cover,
            })
        })
        .collect();
    json!({
        "sku": demand.sku,
        "shard": demand.shard,
        "epoch": demand.epoch,
        "channels": channels,
        "locations": locations,
    })
}

/// `sku  (shard N, epoch E)`, the channel table, the location table.
fn demand_text(demand: &Demand) -> String {
    let mut out = format!("{}  (shard {}, epoch {})\n", demand.sku, demand.shard, demand.epoch);
    if demand.channels.is_empty() {
        out.push_str("(no channels)\n");
    } else {
        let mut channels = Table::new(&[
            "CHANNEL",
            "LAG>",
            "SAFETY>",
            "DEMAND/H>",
            "DEMAND/DAY>",
            "ATP>",
            "PUBLISHED>",
        ]);
        for row in &demand.channels {
            channels.row(vec![
                row.channel_id.clone(),
                row.publish_lag_ms.map_or_else(|| "-".to_owned(), lag),
                row.safety_level.map_or_else(|| "-".to_owned(), percent),
                format!("{:.2}", row.per_hour),
                format!("{:.1}", row.per_hour * HOURS_PER_DAY),
                row.atp.to_string(),
                row.published.to_string(),
            ]);
        }
        out.push_str(&channels.render());
    }
    out.push('\n');
    if demand.locations.is_empty() {
        out.push_str("(no positions)\n");
    } else {
        let mut locations = Table::new(&["LOCATION", "ATP>", "DEMAND/DAY>", "DAYS_OF_COVER>"]);
        for row in &demand.locations {
            locations.row(vec![
                row.location_id.clone(),
                row.atp.to_string(),
                format!("{:.1}", row.per_day),
                row.days_of_cover.map_or_else(|| "∞".to_owned(), |days| format!("{days:.2}")),
            ]);
        }
        out.push_str(&locations.render());
    }
    out
}

/// A publish lag: `0`, `60s`, `1500ms`.
fn lag(ms: i64) -> String {
    match ms {
        0 => "0".to_owned(),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A per-mille level as a percentage: `95.0%`.
fn percent(per_mille: u32) -> String {
    format!("{}.{}%", per_mille / 10, per_mille % 10)
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::{ChannelAvailability, LocationAvailability};

    use super::*;

    fn channel(id: &str, locations: &[&str], lag_ms: i64) -> Channel {
        Channel {
            channel_id: id.into(),
            location_ids: locations.iter().map(|location| (*location).to_owned()).collect(),
            publish_lag_ms: lag_ms,
            ..Default::default()
        }
    }

    fn sku() -> SkuAvailability {
        let at = |location: &str, atp: i64| LocationAvailability {
            location_id: location.into(),
            atp,
            ..Default::default()
        };
        let shown = |id: &str, atp: i64, published: i64, demand_per_hour: f64| {
            ChannelAvailability { channel_id: id.into(), atp, published, demand_per_hour }
        };
        SkuAvailability {
            sku: "tee".into(),
            shard: 17,
            epoch: 1,
            locations: vec![at("dc-1", 60), at("store-1", 10), at("dc-2", 5)],
            channels: vec![shown("pos", 10, 10, 0.0), shown("web", 70, 65, 2.5)],
            error: None,
        }
    }

    #[test]
    fn a_channels_demand_counts_at_each_of_its_locations() {
        let configured =
            [channel("pos", &["store-1"], 0), channel("web", &["dc-1", "store-1"], 60_000)];
        let shown = demand_of(&sku(), &configured);
        let cover: Vec<(&str, f64, Option<f64>)> = shown
            .locations
            .iter()
            .map(|row| (row.location_id.as_str(), row.per_day, row.days_of_cover))
            .collect();
        // web's 60 a day counts at dc-1 and at store-1; nothing sells from dc-2.
        assert_eq!(
            cover,
            [("dc-1", 60.0, Some(1.0)), ("store-1", 60.0, Some(10.0 / 60.0)), ("dc-2", 0.0, None)]
        );
        let text = demand_text(&shown);
        let expected = "\
tee  (shard 17, epoch 1)
CHANNEL  LAG  SAFETY  DEMAND/H  DEMAND/DAY  ATP  PUBLISHED
pos        0   95.0%      0.00         0.0   10         10
web      60s   95.0%      2.50        60.0   70         65

LOCATION  ATP  DEMAND/DAY  DAYS_OF_COVER
dc-1       60        60.0           1.00
store-1    10        60.0           0.17
dc-2        5         0.0              ∞
";
        assert_eq!(text, expected);
        let value = demand_json(&shown);
        assert_eq!(value["channels"][1]["demand_per_hour"], 2.5);
        assert_eq!(value["channels"][1]["demand_per_day"], 60.0);
        assert_eq!(value["channels"][1]["publish_lag_ms"], 60_000);
        assert_eq!(value["channels"][1]["safety_level"], 950);
        assert_eq!(value["locations"][0]["days_of_cover"], 1.0);
        assert!(value["locations"][2]["days_of_cover"].is_null(), "{value}");
    }

    #[test]
    fn a_channel_no_longer_configured_has_no_rule_and_no_locations() {
        let shown = demand_of(&sku(), &[channel("pos", &["store-1"], 0)]);
        assert_eq!(
            (shown.channels[1].publish_lag_ms, shown.channels[1].safety_level),
            (None, None)
        );
        assert!(shown.locations.iter().all(|row| row.days_of_cover.is_none()));
        assert!(
            demand_text(&shown).contains("web        -       -      2.50"),
            "{}",
            demand_text(&shown)
        );
    }

    #[test]
    fn lags_and_levels_read_as_people_write_them() {
        assert_eq!((lag(0), lag(60_000), lag(1_500)), ("0".into(), "60s".into(), "1500ms".into()));
        assert_eq!(
            (percent(950), percent(999), percent(0)),
            ("95.0%".into(), "99.9%".into(), "0.0%".into())
        );
    }
}
