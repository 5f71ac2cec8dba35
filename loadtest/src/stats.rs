//! Latency histograms and counters, kept per worker (no locks on the hot
//! path) and merged at the end into a [`Report`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::Code;

use crate::acks::{AckLog, Acked};
use crate::config::{Config, Mode, Scenario};

/// Largest latency a histogram tells apart (longer ones count as this), µs.
const MAX_TRACKED_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits of the histograms.
const HISTOGRAM_PRECISION: u8 = 3;
/// Most failed calls one worker records one by one ([`Failure`]); the
/// counters go on counting past it.
pub const MAX_FAILURES_PER_WORKER: usize = 10_000;

/// One failed call, as the worker saw it: enough to tell which node and
/// which shards a fault touched (a fault test checks that calls failed
/// only inside its window, and only for the faulted node's shards).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The method (`Reserve`, `Allocate`, `AllocateResend`, `Commit`,
    /// `Release`; ReserveBatch and health checks are only counted).
    pub rpc: &'static str,
    /// The gRPC code, as tonic names it (`Unavailable`).
    pub code: String,
    /// The atp reason, if the status carried one (`NOT_OWNER`).
    pub reason: Option<String>,
    /// The shard the refusal named (`NOT_OWNER`, `FAILING_CLOSED`).
    pub shard: Option<i64>,
    /// The reservation the call was about (its home shard is its hash).
    pub reservation_id: String,
    /// The SKUs of its lines (each line's shard is its SKU's hash).
    pub skus: Vec<String>,
    /// The endpoint the call went to.
    pub endpoint: String,
    /// When it was sent and when its failure was known, unix ms (this
    /// machine's clock, so a test can compare them with its own events).
    pub sent_unix_ms: i64,
    /// See `sent_unix_ms`.
    pub failed_unix_ms: i64,
    /// The error as the SDK shows it (its message names the node and why).
    pub message: String,
}

/// This machine's wall clock, unix ms.
pub fn unix_ms() -> i64 {
    let since_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// An empty latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, HISTOGRAM_PRECISION)
        .expect("constant histogram bounds are valid")
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The calls a scenario makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rpc {
    /// AvailabilityService.Reserve.
    Reserve,
    /// AvailabilityService.Commit.
    Commit,
    /// AvailabilityService.Release.
    Release,
    /// AvailabilityService.ReserveBatch.
    ReserveBatch,
    /// AvailabilityService.Allocate (the routing scenario), first send.
    Allocate,
    /// The same Allocate sent again after its answer was lost (a replay
    /// answers the reservation it made): timed apart, so `Allocate` stays
    /// the latency of an order's first send.
    AllocateResend,
    /// grpc.health.v1.Health.Check (the ceiling scenario).
    HealthCheck,
}

impl Rpc {
    /// The method name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "Reserve",
            Self::Commit => "Commit",
            Self::Release => "Release",
            Self::ReserveBatch => "ReserveBatch",
            Self::Allocate => "Allocate",
            Self::AllocateResend => "AllocateResend",
            Self::HealthCheck => "HealthCheck",
        }
    }
}

/// What one worker saw. Counters cover the measured window only, except
/// errors, which are counted over the whole run (warm-up included), since a
/// failure is news whenever it happens.
pub struct Recorder {
    /// Per scenario step, from the (intended) start to the last answer.
    pub latency: Histogram<u64>,
    /// Per call, from sending to the answer.
    pub calls: BTreeMap<Rpc, Histogram<u64>>,
    /// Scenario steps started in the measured window.
    pub steps: u64,
    /// Reservations asked for in the measured window (batch items count one
    /// each, an Allocate one).
    pub reservations: u64,
    /// Of those, held.
    pub held: u64,
    /// Failed calls and batch items, by gRPC code (as a number).
    pub errors: BTreeMap<i32, u64>,
    /// Operations whose answer was lost.
    pub unknown: u64,
    /// Workers that started at least one step.
    pub active_clients: u64,
    /// The first [`MAX_FAILURES_PER_WORKER`] failed calls, one by one.
    pub failures: Vec<Failure>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: histogram(),
            calls: BTreeMap::new(),
            steps: 0,
            reservations: 0,
            held: 0,
            errors: BTreeMap::new(),
            unknown: 0,
            active_clients: 0,
            failures: Vec::new(),
        }
    }
}

impl Recorder {
    /// One call's latency, if measured.
    pub fn call(&mut self, rpc: Rpc, elapsed: Duration, measured: bool) {
        if measured {
            let histogram = self.calls.entry(rpc).or_insert_with(histogram);
            histogram.saturating_record(micros(elapsed));
        }
    }

    /// One scenario step's latency, if measured.
    pub fn step(&mut self, elapsed: Duration, measured: bool) {
        if measured {
            self.steps += 1;
            self.latency.saturating_record(micros(elapsed));
        }
    }

    /// A failed call or batch item.
    pub fn error(&mut self, code: Code) {
        *self.errors.entry(code.into()).or_default() += 1;
    }

    /// A failed call, one by one (after the counters, see [`Recorder::error`]).
    pub fn failure(&mut self, failure: Failure) {
        if self.failures.len() < MAX_FAILURES_PER_WORKER {
            self.failures.push(failure);
        }
    }

    /// Adds `other`'s numbers to these.
    pub fn merge(&mut self, other: Recorder) {
        self.latency.add(&other.latency).expect("histograms share their bounds");
        for (rpc, histogram) in other.calls {
            let ours = self.calls.entry(rpc).or_insert_with(crate::stats::histogram);
            ours.add(&histogram).expect("histograms share their bounds");
        }
        self.steps += other.steps;
        self.reservations += other.reservations;
        self.held += other.held;
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
        self.unknown += other.unknown;
        self.active_clients += other.active_clients;
        self.failures.extend(other.failures);
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl From<&Histogram<u64>> for Latency {
    fn from(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What ran.
    pub scenario: Scenario,
    /// How it was paced.
    pub mode: Mode,
    /// Clients (closed) or most arrivals in flight (open).
    pub clients: usize,
    /// Clients that started at least one step (fewer than `clients` when the
    /// load generator itself could not keep up).
    pub active_clients: u64,
    /// gRPC connections.
    pub connections: usize,
    /// Open mode: the arrival rate asked for, per second.
    pub target_rate: Option<f64>,
    /// The run's id prefix.
    pub run_id: String,
    /// The measured window, seconds.
    pub measured_s: f64,
    /// Scenario steps started in the window (a Reserve, a checkout, a buyer,
    /// a batch call, a health check, a routed order).
    pub steps: u64,
    /// Steps per second.
    pub steps_per_s: f64,
    /// Calls per second, every kind.
    pub calls_per_s: f64,
    /// Reservations asked for per second (batch items count one each).
    pub reservations_per_s: f64,
    /// Reservations held per second.
    pub held_per_s: f64,
    /// Per step: from its intended start (open) or its start (closed) to its
    /// last answer.
    pub latency: Latency,
    /// Per call kind, from sending to the answer.
    pub calls: BTreeMap<String, Latency>,
    /// Failed calls and batch items by gRPC code (whole run).
    pub errors: BTreeMap<String, u64>,
    /// Operations whose answer was lost (whole run).
    pub unknown_outcomes: u64,
    /// Failed calls one by one, in the order they were sent (at most
    /// [`MAX_FAILURES_PER_WORKER`] per worker; in the JSON report).
    pub failures: Vec<Failure>,
    /// Reservations logged, and how many ended in each acknowledged state.
    pub acknowledged: BTreeMap<String, usize>,
    /// Every acknowledged operation, for [`crate::check()`] (written with
    /// `--ack-log`, not in the JSON report).
    #[serde(skip)]
    pub acks: AckLog,
}

impl Report {
    /// The report of a run of `config` whose workers recorded `recorder`
    /// over `measured` and logged `acks`.
    pub fn new(
        config: &Config,
        run_id: &str,
        measured: Duration,
        recorder: &Recorder,
        acks: AckLog,
    ) -> Self {
        let seconds = measured.as_secs_f64().max(f64::MIN_POSITIVE);
        let calls: u64 = recorder.calls.values().map(Histogram::len).sum();
        let mut acknowledged = BTreeMap::new();
        acknowledged.insert("logged".to_owned(), acks.len());
        for state in [Acked::Held, Acked::Committed, Acked::Released, Acked::Refused] {
            acknowledged.insert(format!("{state:?}").to_lowercase(), acks.count(state));
        }
        acknowledged.insert("in_doubt".to_owned(), acks.in_doubt());
        Self {
            scenario: config.scenario,
            mode: config.mode,
            clients: config.clients,
            active_clients: recorder.active_clients,
            connections: config.connections,
            target_rate: (config.mode == Mode::Open).then_some(config.rate),
            run_id: run_id.to_owned(),
            measured_s: measured.as_secs_f64(),
            steps: recorder.steps,
            steps_per_s: recorder.steps as f64 / seconds,
            calls_per_s: calls as f64 / seconds,
            reservations_per_s: recorder.reservations as f64 / seconds,
            held_per_s: recorder.held as f64 / seconds,
            latency: Latency::from(&recorder.latency),
            calls: recorder
                .calls
                .iter()
                .map(|(rpc, histogram)| (rpc.name().to_owned(), Latency::from(histogram)))
                .collect(),
            errors: recorder
                .errors
                .iter()
                .map(|(&code, count)| (format!("{:?}", Code::from(code)), *count))
                .collect(),
            unknown_outcomes: recorder.unknown,
            failures: {
                let mut failures = recorder.failures.clone();
                failures.sort_by_key(|failure| failure.sent_unix_ms);
                failures
            },
            acknowledged,
            acks,
        }
    }
}

fn latency_row(name: &str, latency: &Latency) -> String {
    format!(
        "{name:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        latency.count,
        format!("{:.0}", latency.mean_us),
        latency.p50_us,
        latency.p90_us,
        latency.p99_us,
        latency.p999_us,
        latency.max_us
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pacing = match self.target_rate {
            Some(rate) => format!("open loop at {rate}/s, at most {} in flight", self.clients),
            None => format!("closed loop, {} clients", self.clients),
        };
        writeln!(
            f,
            "scenario {:?}, {pacing}, {} connections, run id {}, measured {:.1} s",
            self.scenario, self.connections, self.run_id, self.measured_s
        )?;
        if self.active_clients < self.clients as u64 {
            writeln!(
                f,
                "warning: only {} of {} clients started a step (the load generator is short of CPU)",
                self.active_clients, self.clients
            )?;
        }
        writeln!(f, "steps/s          {:>12.1}  ({} steps)", self.steps_per_s, self.steps)?;
        writeln!(f, "calls/s          {:>12.1}", self.calls_per_s)?;
        writeln!(
            f,
            "reservations/s   {:>12.1}  (held {:.1}/s)",
            self.reservations_per_s, self.held_per_s
        )?;
        writeln!(
            f,
            "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "latency µs", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        )?;
        writeln!(f, "{}", latency_row("step", &self.latency))?;
        for (name, latency) in &self.calls {
            writeln!(f, "{}", latency_row(name, latency))?;
        }
        if self.errors.is_empty() {
            writeln!(f, "errors           none")?;
        } else {
            let errors: Vec<String> =
                self.errors.iter().map(|(code, count)| format!("{code}={count}")).collect();
            writeln!(f, "errors           {}", errors.join(" "))?;
        }
        writeln!(f, "unknown outcomes {}", self.unknown_outcomes)?;
        let acknowledged: Vec<String> =
            self.acknowledged.iter().map(|(state, count)| format!("{state}={count}")).collect();
        write!(f, "reservations     {}", acknowledged.join(" "))
    }
}
