//! What to run: one typed struct, parsed from the command line (the binary)
//! or built in code (tests, the crash test).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use serde::Serialize;

use crate::LoadError;

/// Most reservations per ReserveBatch call (the server's limit).
pub const MAX_BATCH_SIZE: usize = 1_000;
/// Most units one stock event may carry (the server's limit).
pub const MAX_EVENT_QUANTITY: i64 = 1_000_000_000;
/// Most locations of one run (the server's limit of locations per channel).
pub const MAX_LOCATIONS: usize = 1_000;
/// Longest hold TTL the server takes, in seconds.
pub const MAX_TTL_S: u32 = 24 * 60 * 60;

/// The traffic to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Unary Reserve of 1 unit of a random SKU at a random location, never
    /// freed: the plain throughput figure, the way the Redis and PostgreSQL
    /// baselines measure "reserve if available".
    Reserve,
    /// Reserve 1–3 lines, then commit (70%), release (20%) or let the hold
    /// expire on a short TTL (10%).
    Checkout,
    /// One SKU at one location with `--flash-stock` units; every arrival is a
    /// new buyer (own reservation id) holding 1 unit.
    FlashSale,
    /// ReserveBatch of `--batch-size` one-line reservations per call.
    Batch,
    /// grpc.health.v1.Health/Check of the whole server (service `""`) per
    /// step: no data, no shard, no disk. The most steps/s this node's gRPC
    /// stack and this load generator reach together over the same
    /// connections: the ceiling every other scenario runs under.
    Ceiling,
    /// Allocate an order of 1–3 distinct SKUs × 1–2 units to a destination
    /// drawn uniformly over the setup's service area (lowest cost, default
    /// rules: atp chooses the locations), then commit (70%) or release (30%)
    /// the reservation it holds.
    Routing,
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `--clients` concurrent clients, each sending its next request when
    /// the previous one answered (like redis-benchmark and pgbench).
    Closed,
    /// A fixed arrival rate (`--rate`); latency counts from each arrival's
    /// intended send time, so queueing is never hidden (no coordinated
    /// omission).
    Open,
}

/// One load run: target, scenario, pacing, data sizes and what to do after.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "atp-loadgen",
    version,
    about = "Drives atpd with realistic traffic, reports throughput and latency, then checks \
             that nothing was oversold or lost."
)]
pub struct Config {
    /// atpd's gRPC endpoint, or several separated by commas (the nodes of a
    /// cluster): client i sends to endpoint i mod N, setup configures the
    /// run's locations and channel on each, the check reads through any.
    #[arg(long, env = "ATP_LOADGEN_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// Traffic to send.
    #[arg(long, value_enum, default_value_t = Scenario::Reserve)]
    pub scenario: Scenario,
    /// Closed loop (N clients) or open loop (fixed arrival rate).
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Closed: concurrent clients. Open: most arrivals in flight at once (an
    /// arrival finding none free waits, and the wait counts as latency).
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Open mode: arrivals per second (an arrival is one scenario step:
    /// a Reserve, a checkout, a buyer, a batch call, a health check, a
    /// routed order).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Send each call straight to its shard's owner by the cluster's shard
    /// map (the SDK's routing; `--route false`: round-robin over the
    /// endpoints, which forward what they do not own).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub route: bool,
    /// gRPC connections (HTTP/2 channels) per endpoint; clients are spread
    /// round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured time, after the warm-up (`10s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Load sent before measuring (its operations are still checked).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// SKUs (every one stocked at every location); flash-sale uses one,
    /// ceiling none.
    #[arg(long, default_value_t = 10_000)]
    pub skus: usize,
    /// Locations, all feeding the run's channel; flash-sale uses one.
    #[arg(long, default_value_t = 4)]
    pub locations: usize,
    /// Units received per position (every scenario but flash-sale).
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    /// Units of the flash-sale SKU.
    #[arg(long, default_value_t = 100)]
    pub flash_stock: i64,
    /// Reservations per ReserveBatch call (`batch` scenario).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// TTL of holds that are committed, released or never freed, in seconds.
    #[arg(long, default_value_t = 600)]
    pub hold_ttl_s: u32,
    /// TTL of the checkout holds left to expire, in seconds.
    #[arg(long, default_value_t = 1)]
    pub expire_ttl_s: u32,
    /// Prefix of every id the run creates (locations, channel, SKUs, events,
    /// reservations); random by default, so runs never collide.
    #[arg(long)]
    pub run_id: Option<String>,
    /// Seed of the request mix (random by default).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Check the invariants through the API after the run (`--check false` skips it).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub check: bool,
    /// Longest wait for one answer before the operation counts as unknown.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub request_timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the log of acknowledged operations as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub ack_log: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse_from(["atp-loadgen"])
    }
}

impl Config {
    /// The endpoints `endpoint` lists (comma-separated), in order.
    pub fn endpoints(&self) -> Vec<String> {
        split_endpoints(&self.endpoint)
    }

    /// Checks the values that no flag parser can: a clear message instead of
    /// a run that measures nothing.
    pub fn validate(&self) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        if self.endpoints().is_empty() {
            problems.push("--endpoint must name at least one endpoint".to_owned());
        }
        if self.clients == 0 {
            problems.push("--clients must be at least 1".to_owned());
        }
        if self.connections == 0 {
            problems.push("--connections must be at least 1".to_owned());
        }
        if self.mode == Mode::Open && !(self.rate.is_finite() && self.rate > 0.0) {
            problems.push(format!("--rate must be a positive number, not {}", self.rate));
        }
        if self.duration.is_zero() {
            problems.push("--duration must be more than 0".to_owned());
        }
        if self.skus == 0 || self.skus > u32::MAX as usize {
            problems.push(format!("--skus must be 1..={}", u32::MAX));
        }
        if !(1..=MAX_LOCATIONS).contains(&self.locations) {
            problems.push(format!("--locations must be 1..={MAX_LOCATIONS}"));
        }
        for (flag, units) in [("--stock", self.stock), ("--flash-stock", self.flash_stock)] {
            if !(1..=MAX_EVENT_QUANTITY).contains(&units) {
                problems.push(format!("{flag} must be 1..={MAX_EVENT_QUANTITY}"));
            }
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            problems.push(format!("--batch-size must be 1..={MAX_BATCH_SIZE}"));
        }
        for (flag, ttl) in
            [("--hold-ttl-s", self.hold_ttl_s), ("--expire-ttl-s", self.expire_ttl_s)]
        {
            if !(1..=MAX_TTL_S).contains(&ttl) {
                problems.push(format!("{flag} must be 1..={MAX_TTL_S}"));
            }
        }
        if let Some(run_id) = &self.run_id {
            let good = !run_id.is_empty()
                && run_id.len() <= 40
                && run_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !good {
                problems.push("--run-id must be 1-40 letters, digits, '-' or '_'".to_owned());
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(LoadError::Config(problems.join("; "))) }
    }
}

/// `a,b, c` → `["a", "b", "c"]` (blanks dropped).
pub fn split_endpoints(endpoints: &str) -> Vec<String> {
    endpoints
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a plain number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a duration"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" => value * 60.0,
        "h" => value * 3_600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_common_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1_500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn defaults_mirror_the_baselines() {
        let config = Config::default();
        assert_eq!((config.clients, config.skus, config.batch_size), (50, 10_000, 16));
        assert_eq!((config.scenario, config.mode), (Scenario::Reserve, Mode::Closed));
        assert!(config.check);
        config.validate().expect("the defaults are valid");
    }

    #[test]
    fn endpoints_are_comma_separated() {
        let config = Config { endpoint: "http://a:1, http://b:2,".into(), ..Config::default() };
        assert_eq!(config.endpoints(), ["http://a:1", "http://b:2"]);
        assert_eq!(Config::default().endpoints(), ["http://127.0.0.1:50051"]);
        let none = Config { endpoint: " , ".into(), ..Config::default() };
        assert!(none.validate().expect_err("no endpoint").to_string().contains("--endpoint"));
    }

    #[test]
    fn bad_values_are_named() {
        let config = Config { clients: 0, batch_size: 5_000, ..Config::default() };
        let message = config.validate().expect_err("invalid").to_string();
        assert!(message.contains("--clients") && message.contains("--batch-size"), "{message}");
    }
}
