//! The node's configuration: one typed struct, read from an optional TOML
//! file, then overridden by `ATP_<KEY>` environment variables, then checked
//! as a whole. `docs/CONFIGURATION.md` documents every key; keep both in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use atp_cluster::MembershipConfig;
use atp_core::ids::{MAX_ID_BYTES, MAX_TTL_MS, MIN_TTL_MS};
use atp_core::shard::ShardSettings;
use atp_server::ServerConfig;
use atp_shard::NodeConfig;
use serde::Deserialize;

/// Prefix of the environment variables that override keys (`ATP_LISTEN_ADDR`).
pub const ENV_PREFIX: &str = "ATP_";
/// The variable naming the config file (also `--config`); not a key.
pub const CONFIG_FILE_ENV: &str = "ATP_CONFIG";

/// The default log filter: the store's engine (fjall, lsm-tree) logs every
/// file it opens and flush it finishes at INFO; an operator wants atp's.
pub const DEFAULT_LOG: &str = "info,fjall=warn,lsm_tree=warn";

const DAY_S: u64 = 24 * 60 * 60;
/// Largest per-shard retention budget accepted (entries).
const MAX_BUDGET: u64 = 100_000_000;
/// The longest `reassign_grace_ms` (one day).
const MAX_REASSIGN_GRACE_MS: u64 = DAY_S * 1000;

/// Everything `atpd` can be told. Every key has a default, so no file and no
/// variable at all gives a working single node on `127.0.0.1:50051`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds, `IP:PORT`. Port 0 picks a free port; the
    /// bound address is printed as `atpd listening on IP:PORT` on stderr.
    /// Default `127.0.0.1:50051`.
    pub listen_addr: SocketAddr,
    /// Name of this node in the admin API (1..=128 bytes). Default `atpd-0`.
    pub node_name: String,
    /// Directory of the node's durable store (created if missing). Relative
    /// paths are relative to the working directory. Default `atp-data`.
    pub data_dir: PathBuf,
    /// How long the durable ledger keeps an entry, in seconds
    /// (60..=315360000). Default 2592000 (30 days).
    pub ledger_retention_s: u64,
    /// Operations each shard's mailbox holds before callers get
    /// RESOURCE_EXHAUSTED (1..=1048576). Default 4096.
    pub mailbox_capacity: usize,
    /// Most operations a shard applies per batch (1..=65536). Default 256.
    pub batch_max: usize,
    /// Hold lifetime when a Reserve (or Extend) says `ttl_seconds = 0`
    /// (1..=86400). Default 900.
    pub reservation_ttl_default_s: u64,
    /// How long an ended reservation's id, and a stock event's id, is
    /// remembered for idempotent retries (1..=2592000). Default 86400.
    pub retention_s: u64,
    /// Ledger entries kept in memory per shard, oldest dropped first
    /// (1..=1000000). Default 64.
    pub ledger_tail_capacity: usize,
    /// How far back a count's `as_of_ms` may reach; movements are kept this
    /// long (1..=2592000). Default 86400.
    pub count_window_s: u64,
    /// Movements kept per position for late counts, oldest dropped first
    /// (1..=1000000). Default 10000.
    pub movements_per_position: usize,
    /// Ended reservations each shard remembers for `retention_s`; past it the
    /// oldest that ended at least 60 s ago are forgotten early, and a retry of a forgotten id is treated
    /// as new (0..=100000000, 0 = no limit). Default 1024 (about 1 GiB per
    /// node for 3-line reservations; see docs/CONFIGURATION.md).
    pub max_ended_reservations: usize,
    /// Stock-event ids each shard remembers for `retention_s`; past it the
    /// oldest are forgotten early, and a repeated event with a forgotten id
    /// is applied again (0..=100000000, 0 = no limit). Default 2048.
    pub max_event_memos: usize,
    /// How long a Reserve may stay PENDING (in flight) before its home
    /// abandons it and aborts its holds (1000..=600000). Default 30000.
    pub reserve_pending_timeout_ms: u64,
    /// A checkpoint round starts once the log grew this many bytes since the
    /// last one; bounds the log kept on disk and replayed at restart
    /// (1048576..=68719476736). Default 67108864 (64 MiB).
    pub checkpoint_log_bytes: u64,
    /// A checkpoint round starts at least this often while anything was
    /// written (1..=86400). Default 300.
    pub checkpoint_interval_s: u64,
    /// Longest a request may run before DEADLINE_EXCEEDED (1..=3600000).
    /// Default 10000.
    pub request_timeout_ms: u64,
    /// Requests in flight on the node; more are refused at once with
    /// RESOURCE_EXHAUSTED (1..=1000000). Default 4096.
    pub max_concurrent_requests: usize,
    /// Largest request message accepted, in bytes (1024..=67108864).
    /// Default 4194304 (4 MiB).
    pub max_message_bytes: usize,
    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish
    /// before the node stops anyway (0..=3600). Default 10.
    pub shutdown_grace_s: u64,
    /// WatchAvailability: a resume whose last message is older than this
    /// gets RESYNC and a snapshot (1000..=7 days in ms). Default 600000.
    pub watch_resume_window_ms: u64,
    /// WatchAvailability: SKUs a receiver may have waiting (changed, not
    /// yet sent) before it is told RESYNC (1..=10000000). Default 100000.
    pub watch_max_pending_skus: usize,
    /// WatchAvailability: how long a node gathers changes after the first
    /// before sending them (0..=1000 ms; 0 sends at once). Default 0.
    pub watch_flush_interval_ms: u64,
    /// Log filter in `tracing-subscriber` `EnvFilter` syntax
    /// (`info`, `atp_server=debug,info`). `RUST_LOG`, when set, wins.
    /// Default `info,fjall=warn,lsm_tree=warn`: atp's own INFO lines, not
    /// the storage engine's (`info` shows those too).
    pub log: String,
    /// Address the Prometheus metrics endpoint (`GET /metrics`) binds,
    /// `IP:PORT`; port 0 picks a free port (printed as `atpd metrics on
    /// IP:PORT` on stderr). Empty (the default): no metrics endpoint.
    pub metrics_listen_addr: String,
    /// OTLP/gRPC collector to export trace spans to (`http://host:4317`;
    /// plain HTTP/2, no TLS yet). Empty (the default): tracing off.
    pub otlp_endpoint: String,
    /// With tracing on, the share of requests without a parent that are
    /// traced (0.0..=1.0); a caller's `traceparent` is always followed
    /// (sampled: traced, not sampled: not). Default 0.01.
    pub trace_sample_ratio: f64,
    /// Cluster mode: etcd endpoints, comma-separated (`http://10.0.0.9:2379`).
    /// Empty (the default) runs a single node serving all shards under epoch 1.
    pub etcd_endpoints: String,
    /// Cluster mode: the cluster's name; its keys live under `/atp/<name>/`
    /// (no `/`). Default `atp`.
    pub cluster_name: String,
    /// Cluster mode: this node's id (no `/`, 1..=128 bytes). Empty (the
    /// default): the id stored in `<data_dir>/cluster-node-id`, written at the
    /// first start from the host name and the time, so a restart on the same
    /// data directory is the same node.
    pub node_id: String,
    /// Cluster mode: the address other nodes and clients reach this node at
    /// (`host:port`), published in the member list. Empty (the default): the
    /// bound listen address.
    pub advertised_addr: String,
    /// Cluster mode: how many members must have joined before the
    /// coordinator writes the shard assignment (once; it is sticky after).
    /// 1..=1024. Default 1.
    pub initial_members: usize,
    /// Cluster mode: the etcd lease TTL (1000..=600000; etcd counts whole
    /// seconds). Default 10000.
    pub lease_ttl_ms: u64,
    /// Cluster mode: time between two lease keepalives (1..=60000). Default 2000.
    pub keepalive_interval_ms: u64,
    /// Cluster mode: subtracted from the lease's end, so the node stops
    /// serving before etcd can give its shards away (0..lease_ttl_ms; the
    /// remainder must fit two keepalive intervals). Default 2000.
    pub lease_safety_margin_ms: u64,
    /// Cluster mode: how long the coordinator must have seen a node down
    /// before `atpctl shard reassign --accept-loss` through this node may
    /// move its shards (0..=86400000). Default 60000.
    pub reassign_grace_ms: u64,
    /// Cluster mode: on SIGTERM or Ctrl-C the node first moves its shards
    /// to the other live members (planned handoffs), for at most this long,
    /// then stops (0: no drain; 0..=3600000). Default 60000.
    pub drain_timeout_ms: u64,
    /// Cluster mode: when the coordinator sees a node join (or the live,
    /// not draining members change), it moves the shards rendezvous
    /// hashing gives another node, this many at a time (0: never; 0..=16).
    /// Default 4.
    pub placement_parallel: usize,
}

impl Default for Config {
    fn default() -> Self {
        let node = NodeConfig::default();
        let server = ServerConfig::default();
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            node_name: node.node_name,
            data_dir: PathBuf::from("atp-data"),
            ledger_retention_s: seconds(node.ledger_retention_ms),
            mailbox_capacity: node.mailbox_capacity,
            batch_max: node.batch_max,
            reservation_ttl_default_s: seconds(node.default_ttl_ms),
            retention_s: seconds(node.shard.retention_ms),
            ledger_tail_capacity: node.shard.ledger_capacity,
            count_window_s: seconds(node.shard.count_window_ms),
            movements_per_position: node.shard.movements_per_position,
            max_ended_reservations: node.shard.max_ended_reservations,
            max_event_memos: node.shard.max_event_memos,
            reserve_pending_timeout_ms: u64::try_from(node.shard.pending_timeout_ms)
                .unwrap_or(30_000),
            checkpoint_log_bytes: node.checkpoint_log_bytes,
            checkpoint_interval_s: node.checkpoint_interval_ms / 1000,
            request_timeout_ms: millis(server.request_timeout),
            max_concurrent_requests: server.max_concurrent_requests,
            max_message_bytes: server.max_message_bytes,
            shutdown_grace_s: server.shutdown_grace.as_secs(),
            watch_resume_window_ms: u64::try_from(server.watch.resume_window_ms).unwrap_or(600_000),
            watch_max_pending_skus: server.watch.max_pending_skus,
            watch_flush_interval_ms: server.watch.flush_interval_ms,
            log: DEFAULT_LOG.to_owned(),
            metrics_listen_addr: String::new(),
            otlp_endpoint: String::new(),
            trace_sample_ratio: 0.01,
            etcd_endpoints: String::new(),
            cluster_name: "atp".to_owned(),
            node_id: String::new(),
            advertised_addr: String::new(),
            initial_members: 1,
            lease_ttl_ms: 10_000,
            keepalive_interval_ms: 2_000,
            lease_safety_margin_ms: 2_000,
            reassign_grace_ms: 60_000,
            drain_timeout_ms: 60_000,
            placement_parallel: 4,
        }
    }
}

fn seconds(ms: i64) -> u64 {
    u64::try_from(ms / 1000).expect("default durations are positive")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("default durations fit in u64 ms")
}

/// A loaded configuration and what was odd about its sources.
#[derive(Debug)]
pub struct Loaded {
    /// The checked configuration.
    pub config: Config,
    /// `ATP_*` variables that name no key (ignored; logged once logging is up).
    pub unknown_variables: Vec<String>,
}

impl Config {
    /// Reads `file` (if any), applies `ATP_<KEY>` overrides from `variables`,
    /// and checks the result. Every problem is reported at once.
    pub fn load(
        file: Option<&Path>,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Loaded> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        let mut problems = Vec::new();
        let mut unknown_variables = Vec::new();
        for (name, value) in variables {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else { continue };
            if name == CONFIG_FILE_ENV {
                continue;
            }
            match config.set(&key.to_ascii_lowercase(), &value) {
                Ok(true) => {}
                Ok(false) => unknown_variables.push(name),
                Err(problem) => problems.push(format!("{name}: {problem}")),
            }
        }
        problems.extend(config.problems());
        if !problems.is_empty() {
            bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(Loaded { config, unknown_variables })
    }

    /// Sets `key` from its text form; `Ok(false)` when there is no such key.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "listen_addr" => self.listen_addr = parse(value, "an IP:PORT address")?,
            "node_name" => self.node_name = value.to_owned(),
            "mailbox_capacity" => self.mailbox_capacity = parse(value, "a whole number")?,
            "batch_max" => self.batch_max = parse(value, "a whole number")?,
            "reservation_ttl_default_s" => {
                self.reservation_ttl_default_s = parse(value, "a whole number of seconds")?;
            }
            "retention_s" => self.retention_s = parse(value, "a whole number of seconds")?,
            "data_dir" => self.data_dir = PathBuf::from(value),
            "ledger_retention_s" => {
                self.ledger_retention_s = parse(value, "a whole number of seconds")?;
            }
            "ledger_tail_capacity" => self.ledger_tail_capacity = parse(value, "a whole number")?,
            "count_window_s" => self.count_window_s = parse(value, "a whole number of seconds")?,
            "movements_per_position" => {
                self.movements_per_position = parse(value, "a whole number")?;
            }
            "max_ended_reservations" => {
                self.max_ended_reservations = parse(value, "a whole number")?;
            }
            "max_event_memos" => self.max_event_memos = parse(value, "a whole number")?,
            "reserve_pending_timeout_ms" => {
                self.reserve_pending_timeout_ms = parse(value, "a whole number of ms")?;
            }
            "checkpoint_log_bytes" => {
                self.checkpoint_log_bytes = parse(value, "a whole number of bytes")?;
            }
            "checkpoint_interval_s" => {
                self.checkpoint_interval_s = parse(value, "a whole number of seconds")?;
            }
            "request_timeout_ms" => {
                self.request_timeout_ms = parse(value, "a whole number of milliseconds")?;
            }
            "max_concurrent_requests" => {
                self.max_concurrent_requests = parse(value, "a whole number")?;
            }
            "max_message_bytes" => {
                self.max_message_bytes = parse(value, "a whole number of bytes")?
            }
            "shutdown_grace_s" => {
                self.shutdown_grace_s = parse(value, "a whole number of seconds")?
            }
            "watch_resume_window_ms" => {
                self.watch_resume_window_ms = parse(value, "a whole number of milliseconds")?;
            }
            "watch_flush_interval_ms" => {
                self.watch_flush_interval_ms = parse(value, "a whole number of milliseconds")?;
            }
            "watch_max_pending_skus" => {
                self.watch_max_pending_skus = parse(value, "a whole number")?;
            }
            "log" => self.log = value.to_owned(),
            "metrics_listen_addr" => self.metrics_listen_addr = value.to_owned(),
            "otlp_endpoint" => self.otlp_endpoint = value.to_owned(),
            "trace_sample_ratio" => {
                self.trace_sample_ratio = parse(value, "a number from 0.0 to 1.0")?;
            }
            "etcd_endpoints" => self.etcd_endpoints = value.to_owned(),
            "cluster_name" => self.cluster_name = value.to_owned(),
            "node_id" => self.node_id = value.to_owned(),
            "advertised_addr" => self.advertised_addr = value.to_owned(),
            "initial_members" => self.initial_members = parse(value, "a whole number")?,
            "lease_ttl_ms" => self.lease_ttl_ms = parse(value, "a whole number of ms")?,
            "keepalive_interval_ms" => {
                self.keepalive_interval_ms = parse(value, "a whole number of ms")?;
            }
            "lease_safety_margin_ms" => {
                self.lease_safety_margin_ms = parse(value, "a whole number of ms")?;
            }
            "reassign_grace_ms" => self.reassign_grace_ms = parse(value, "a whole number of ms")?,
            "drain_timeout_ms" => self.drain_timeout_ms = parse(value, "a whole number of ms")?,
            "placement_parallel" => self.placement_parallel = parse(value, "a whole number")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every key out of its bounds, as `key: what is wrong`.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut within = |key: &str, value: u64, low: u64, high: u64| {
            if !(low..=high).contains(&value) {
                problems.push(format!("{key}: must be {low}..={high}, got {value}"));
            }
        };
        let ttl_low = seconds(MIN_TTL_MS);
        let ttl_high = seconds(MAX_TTL_MS);
        within("mailbox_capacity", as_u64(self.mailbox_capacity), 1, 1 << 20);
        within("batch_max", as_u64(self.batch_max), 1, 1 << 16);
        within("reservation_ttl_default_s", self.reservation_ttl_default_s, ttl_low, ttl_high);
        within("retention_s", self.retention_s, 1, 30 * DAY_S);
        within("ledger_retention_s", self.ledger_retention_s, 60, 3650 * DAY_S);
        within("ledger_tail_capacity", as_u64(self.ledger_tail_capacity), 1, 1_000_000);
        within("count_window_s", self.count_window_s, 1, 30 * DAY_S);
        within("movements_per_position", as_u64(self.movements_per_position), 1, 1_000_000);
        within("max_ended_reservations", as_u64(self.max_ended_reservations), 0, MAX_BUDGET);
        within("max_event_memos", as_u64(self.max_event_memos), 0, MAX_BUDGET);
        within("reserve_pending_timeout_ms", self.reserve_pending_timeout_ms, 1000, 600_000);
        within("checkpoint_log_bytes", self.checkpoint_log_bytes, 1 << 20, 64 << 30);
        within("checkpoint_interval_s", self.checkpoint_interval_s, 1, DAY_S);
        within("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000);
        within("max_concurrent_requests", as_u64(self.max_concurrent_requests), 1, 1_000_000);
        within("max_message_bytes", as_u64(self.max_message_bytes), 1024, 64 << 20);
        within("shutdown_grace_s", self.shutdown_grace_s, 0, 3600);
        within("watch_resume_window_ms", self.watch_resume_window_ms, 1000, 7 * DAY_S * 1000);
        within("watch_max_pending_skus", as_u64(self.watch_max_pending_skus), 1, 10_000_000);
        within("watch_flush_interval_ms", self.watch_flush_interval_ms, 0, 1000);
        if let Err(violation) = atp_core::ids::validate_id("node_name", &self.node_name) {
            problems.push(format!(
                "node_name: {} (at most {MAX_ID_BYTES} bytes)",
                violation.description
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            problems.push("data_dir: must not be empty".to_owned());
        }
        if let Err(error) = tracing_subscriber::EnvFilter::builder().parse(&self.log) {
            problems.push(format!("log: {error}"));
        }
        if let Err(problem) = self.metrics_addr() {
            problems.push(format!("metrics_listen_addr: {problem}"));
        }
        if !self.otlp_endpoint.is_empty() {
            // No TLS yet (it comes with the security work): plain HTTP/2,
            // to a host (and port) given.
            let host =
                self.otlp_endpoint.strip_prefix("http://").and_then(|rest| rest.split('/').next());
            let valid = host.is_some_and(|host| {
                !host.is_empty() && host.chars().all(|c| c.is_ascii_graphic() && c != '@')
            }) && self.otlp_endpoint.chars().all(|c| c.is_ascii_graphic());
            if !valid || self.otlp_endpoint.len() > 2048 {
                problems.push(format!(
                    "otlp_endpoint: must be an http://HOST[:PORT] URL of at most 2048 bytes (no TLS yet), got {:?}",
                    self.otlp_endpoint
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            problems.push(format!(
                "trace_sample_ratio: must be 0.0..=1.0, got {}",
                self.trace_sample_ratio
            ));
        }
        if self.is_cluster() {
            problems.extend(self.cluster_problems());
        }
        problems
    }

    /// The metrics endpoint's address (None: no endpoint).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics_listen_addr.is_empty() {
            return Ok(None);
        }
        parse(&self.metrics_listen_addr, "an IP:PORT address").map(Some)
    }

    /// Whether etcd is configured: cluster mode.
    pub fn is_cluster(&self) -> bool {
        !self.etcd_endpoints().is_empty()
    }

    /// The etcd endpoints, `http://` added where no scheme is given.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| {
                if endpoint.contains("://") {
                    endpoint.to_owned()
                } else {
                    format!("http://{endpoint}")
                }
            })
            .collect()
    }

    /// The membership settings for `node_id` advertising `address`.
    pub fn membership_config(&self, node_id: &str, address: &str) -> MembershipConfig {
        let mut membership = MembershipConfig::new(&self.cluster_name, node_id, address);
        membership.lease_ttl_ms = self.lease_ttl_ms;
        membership.keepalive_interval_ms = self.keepalive_interval_ms;
        membership.keepalive_timeout_ms =
            membership.keepalive_timeout_ms.min(self.keepalive_interval_ms);
        membership.safety_margin_ms = self.lease_safety_margin_ms;
        membership.request_timeout_ms = membership.request_timeout_ms.min(self.lease_ttl_ms);
        membership
    }

    fn cluster_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut within = |key: &str, value: u64, low: u64, high: u64| {
            if !(low..=high).contains(&value) {
                problems.push(format!("{key}: must be {low}..={high}, got {value}"));
            }
        };
        within("initial_members", as_u64(self.initial_members), 1, 1024);
        within("lease_ttl_ms", self.lease_ttl_ms, 1000, 600_000);
        within("keepalive_interval_ms", self.keepalive_interval_ms, 1, 60_000);
        if !problems.is_empty() {
            return problems;
        }
        for (key, value) in [("cluster_name", &self.cluster_name), ("node_id", &self.node_id)] {
            if value.contains('/') || value.len() > MAX_ID_BYTES {
                problems.push(format!("{key}: must have no '/' and at most {MAX_ID_BYTES} bytes"));
            }
        }
        if self.cluster_name.is_empty() {
            problems.push("cluster_name: must not be empty in cluster mode".to_owned());
        }
        let node_id = if self.node_id.is_empty() { "check" } else { &self.node_id };
        if let Err(error) = self.membership_config(node_id, "check").validate() {
            problems.push(format!(
                "lease_ttl_ms, keepalive_interval_ms, lease_safety_margin_ms: {error}"
            ));
        }
        if self.placement_parallel > 16 {
            problems.push(format!(
                "placement_parallel: must be 0..=16, got {}",
                self.placement_parallel
            ));
        }
        if self.drain_timeout_ms > 3_600_000 {
            problems.push(format!(
                "drain_timeout_ms: must be 0..=3600000, got {}",
                self.drain_timeout_ms
            ));
        }
        if self.reassign_grace_ms > MAX_REASSIGN_GRACE_MS {
            problems.push(format!(
                "reassign_grace_ms: must be 0..={MAX_REASSIGN_GRACE_MS}, got {}",
                self.reassign_grace_ms
            ));
        }
        problems
    }

    /// The shard layer's settings.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            node_name: self.node_name.clone(),
            mailbox_capacity: self.mailbox_capacity,
            batch_max: self.batch_max,
            default_ttl_ms: ms(self.reservation_ttl_default_s),
            ledger_retention_ms: ms(self.ledger_retention_s),
            ledger_sweep_interval_ms: NodeConfig::default().ledger_sweep_interval_ms,
            shard: ShardSettings {
                retention_ms: ms(self.retention_s),
                ledger_capacity: self.ledger_tail_capacity,
                count_window_ms: ms(self.count_window_s),
                movements_per_position: self.movements_per_position,
                max_ended_reservations: self.max_ended_reservations,
                max_event_memos: self.max_event_memos,
                pending_timeout_ms: i64::try_from(self.reserve_pending_timeout_ms)
                    .unwrap_or(i64::MAX),
            },
            checkpoint_log_bytes: self.checkpoint_log_bytes,
            checkpoint_interval_ms: self.checkpoint_interval_s * 1000,
            write_log: None,
        }
    }

    /// The gRPC server's limits.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_concurrent_requests: self.max_concurrent_requests,
            max_message_bytes: self.max_message_bytes,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_s),
            watch: atp_server::watch_availability::WatchSettings {
                resume_window_ms: i64::try_from(self.watch_resume_window_ms).unwrap_or(i64::MAX),
                max_pending_skus: self.watch_max_pending_skus,
                flush_interval_ms: self.watch_flush_interval_ms,
            },
        }
    }
}

fn parse<T: FromStr>(value: &str, what: &str) -> Result<T, String> {
    value.trim().parse().map_err(|_| format!("cannot read {value:?} as {what}"))
}

fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Seconds (already checked to be at most 30 days) as ms.
fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn defaults_serve_on_50051() {
        let loaded = Config::load(None, Vec::new()).expect("defaults are valid");
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.config.listen_addr.to_string(), "127.0.0.1:50051");
        let node = loaded.config.node_config();
        assert_eq!(node.default_ttl_ms, NodeConfig::default().default_ttl_ms);
        assert_eq!(node.shard.retention_ms, ShardSettings::default().retention_ms);
        assert_eq!(node.shard.max_ended_reservations, 1024);
        assert_eq!(node.shard.max_event_memos, 2048);
    }

    #[test]
    fn file_then_environment() {
        let mut file = tempfile();
        writeln!(
            file.1,
            "listen_addr = \"127.0.0.1:6000\"\nmailbox_capacity = 64\nlog = \"debug\""
        )
        .expect("write config");
        let loaded = Config::load(
            Some(&file.0),
            variables(&[
                ("ATP_LISTEN_ADDR", "127.0.0.1:0"),
                ("ATP_BATCH_MAX", "8"),
                ("ATP_MAX_ENDED_RESERVATIONS", "0"),
                ("ATP_MAX_EVENT_MEMOS", "1000"),
                ("ATP_CONFIG", "ignored"),
                ("ATP_ADDR", "for atpctl"),
                ("HOME", "/root"),
            ]),
        )
        .expect("valid");
        assert_eq!(loaded.config.listen_addr.to_string(), "127.0.0.1:0");
        assert_eq!(loaded.config.mailbox_capacity, 64);
        assert_eq!(loaded.config.batch_max, 8);
        assert_eq!(loaded.config.log, "debug");
        let shard = loaded.config.node_config().shard;
        assert_eq!((shard.max_ended_reservations, shard.max_event_memos), (0, 1000));
        assert_eq!(loaded.unknown_variables, vec!["ATP_ADDR"]);
        std::fs::remove_file(&file.0).expect("remove temp file");
    }

    #[test]
    fn telemetry_keys_are_off_by_default_and_checked() {
        let defaults = Config::load(None, variables(&[])).expect("defaults").config;
        assert_eq!(defaults.metrics_addr(), Ok(None), "no metrics endpoint by default");
        assert!(defaults.otlp_endpoint.is_empty(), "tracing off by default");
        assert_eq!(defaults.trace_sample_ratio, 0.01);
        let on = Config::load(
            None,
            variables(&[
                ("ATP_METRICS_LISTEN_ADDR", "127.0.0.1:9464"),
                ("ATP_OTLP_ENDPOINT", "http://collector:4317"),
                ("ATP_TRACE_SAMPLE_RATIO", "1"),
            ]),
        )
        .expect("valid")
        .config;
        assert_eq!(on.metrics_addr(), Ok(Some(SocketAddr::from(([127, 0, 0, 1], 9464)))));
        assert_eq!(on.trace_sample_ratio, 1.0);
        assert_refused(
            &[
                ("ATP_METRICS_LISTEN_ADDR", "localhost:9464"),
                ("ATP_OTLP_ENDPOINT", "http://bad host:4317"),
                ("ATP_TRACE_SAMPLE_RATIO", "NaN"),
            ],
            &[
                "metrics_listen_addr: cannot read \"localhost:9464\" as an IP:PORT address",
                "otlp_endpoint: must be an http://HOST[:PORT] URL",
                "trace_sample_ratio: must be 0.0..=1.0, got NaN",
            ],
        );
    }

    /// Loading with `pairs` fails, naming every one of `problems`.
    fn assert_refused(pairs: &[(&str, &str)], problems: &[&str]) {
        let error = Config::load(None, variables(pairs)).expect_err("invalid");
        let message = format!("{error:#}");
        for part in problems {
            assert!(message.contains(part), "{part:?} missing in:\n{message}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        assert_refused(
            &[
                ("ATP_MAILBOX_CAPACITY", "0"),
                ("ATP_RESERVATION_TTL_DEFAULT_S", "100000"),
                ("ATP_REQUEST_TIMEOUT_MS", "soon"),
                ("ATP_NODE_NAME", ""),
                ("ATP_MAX_EVENT_MEMOS", "100000001"),
            ],
            &[
                "ATP_REQUEST_TIMEOUT_MS: cannot read \"soon\"",
                "mailbox_capacity: must be 1..=1048576, got 0",
                "reservation_ttl_default_s: must be 1..=86400, got 100000",
                "node_name: must not be empty",
                "max_event_memos: must be 0..=100000000, got 100000001",
            ],
        );
    }

    #[test]
    fn cluster_keys_are_read_and_checked_only_with_etcd() {
        let single = Config::load(None, variables(&[("ATP_LEASE_TTL_MS", "10")])).expect("valid");
        assert!(!single.config.is_cluster(), "no etcd: a single node, cluster keys unchecked");
        let loaded = Config::load(
            None,
            variables(&[
                ("ATP_ETCD_ENDPOINTS", "127.0.0.1:2379, http://10.0.0.9:2379"),
                ("ATP_CLUSTER_NAME", "prod"),
                ("ATP_NODE_ID", "n1"),
                ("ATP_INITIAL_MEMBERS", "3"),
                ("ATP_LEASE_TTL_MS", "2000"),
                ("ATP_KEEPALIVE_INTERVAL_MS", "300"),
                ("ATP_LEASE_SAFETY_MARGIN_MS", "500"),
                ("ATP_REASSIGN_GRACE_MS", "1500"),
            ]),
        )
        .expect("valid");
        let config = loaded.config;
        assert!(config.is_cluster());
        assert_eq!(config.reassign_grace_ms, 1500);
        assert_eq!(config.etcd_endpoints(), ["http://127.0.0.1:2379", "http://10.0.0.9:2379"]);
        let membership = config.membership_config("n1", "127.0.0.1:7000");
        assert_eq!((membership.cluster.as_str(), membership.lease_ttl_ms), ("prod", 2000));
        membership.validate().expect("the test timings are valid");

        let error = Config::load(
            None,
            variables(&[
                ("ATP_ETCD_ENDPOINTS", "127.0.0.1:2379"),
                ("ATP_NODE_ID", "a/b"),
                ("ATP_LEASE_SAFETY_MARGIN_MS", "9500"),
                ("ATP_REASSIGN_GRACE_MS", "86400001"),
            ]),
        )
        .expect_err("invalid");
        let message = format!("{error:#}");
        assert!(message.contains("reassign_grace_ms: must be 0..=86400000"), "{message}");
        assert!(message.contains("node_id: must have no '/'"), "{message}");
        assert!(message.contains("lease_safety_margin_ms"), "{message}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let mut file = tempfile();
        writeln!(file.1, "listen_adr = \"127.0.0.1:6000\"").expect("write config");
        let error = Config::load(Some(&file.0), Vec::new()).expect_err("unknown key");
        assert!(format!("{error:#}").contains("listen_adr"), "{error:#}");
        std::fs::remove_file(&file.0).expect("remove temp file");
    }

    fn tempfile() -> (std::path::PathBuf, std::fs::File) {
        let path = std::env::temp_dir().join(format!(
            "atpd-config-test-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::File::create(&path).expect("create temp file");
        (path, file)
    }
}
