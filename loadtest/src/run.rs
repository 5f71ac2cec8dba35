//! Pacing: closed loop (each client sends when its last answer came) or open
//! loop (arrivals on a fixed schedule, latency from the scheduled time).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::LoadError;
use crate::acks::AckLog;
use crate::client;
use crate::config::{Config, Mode};
use crate::scenario::{Plan, Worker};
use crate::setup::Setup;
use crate::stats::{Recorder, Report};

/// Pause of a worker after the node could not take its request (down,
/// restarting, overloaded), so a dead node is not spun against.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(20);

/// When steps start.
#[derive(Clone)]
enum Pacing {
    /// Each worker starts its next step when the last one ended.
    Closed,
    /// Arrival `k` is due at `start + k / rate`; a free worker claims the
    /// next arrival and waits for its time. An arrival no worker is free for
    /// starts late, and the delay counts in its latency.
    Open { start: Instant, rate: f64, next: Arc<AtomicU64> },
}

impl Pacing {
    /// The (intended) start of the worker's next step, or `None` once the
    /// run is over (its end passed, or `stop` was set).
    async fn next(&self, end: Instant, stop: &AtomicBool) -> Option<Instant> {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        match self {
            Self::Closed => {
                let now = Instant::now();
                (now < end).then_some(now)
            }
            Self::Open { start, rate, next } => {
                let arrival = next.fetch_add(1, Ordering::Relaxed);
                let due = *start + Duration::from_secs_f64(arrival as f64 / rate);
                if due >= end {
                    return None;
                }
                tokio::time::sleep_until(due).await;
                Some(due)
            }
        }
    }
}

/// Drives the node at `config.endpoint` with `config.scenario` over the data
/// of `setup` for the warm-up plus the measured duration, then waits for
/// every step in flight to end (at most the request timeout per call).
/// Connection failures never stop it: calls fail, are counted by code, their
/// operations are logged as unknown, and the channels reconnect on next use.
pub async fn run(config: &Config, setup: &Setup) -> Result<Report, LoadError> {
    run_until(config, setup, Arc::new(AtomicBool::new(false))).await
}

/// [`run`], ending early once `stop` is set: no step starts after that,
/// steps in flight end as usual. `config.duration` is then the longest the
/// run lasts, and the report's measured time is what really ran. For tests
/// that stop the load once a fault has played out.
pub async fn run_until(
    config: &Config,
    setup: &Setup,
    stop: Arc<AtomicBool>,
) -> Result<Report, LoadError> {
    config.validate()?;
    // Connection c to endpoint e is clients[c * endpoints + e], so worker i
    // sends to endpoint i mod endpoints.
    let endpoints = config.endpoints();
    let clients = (0..config.connections)
        .flat_map(|_| endpoints.iter())
        .map(|endpoint| {
            let client = client::routed_client(endpoint, config.request_timeout, config.route)?;
            Ok((client, endpoint.clone()))
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    // Reservation ids are unique per run, so the logs of several runs over
    // one setup merge without clashes.
    let segment = format!("{:04x}", fastrand::u16(..));
    let seed = config.seed.unwrap_or_else(|| fastrand::u64(..));
    let plan = Arc::new(Plan::new(config, setup));

    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let pacing = match config.mode {
        Mode::Closed => Pacing::Closed,
        Mode::Open => Pacing::Open { start, rate: config.rate, next: Arc::new(AtomicU64::new(0)) },
    };
    let workers = (0..config.clients).map(|index| {
        let client = clients[index % clients.len()].clone();
        let worker_seed = seed.wrapping_add(index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let worker = Worker::new(Arc::clone(&plan), client, &segment, index, worker_seed);
        tokio::spawn(drive(worker, pacing.clone(), measure_from, end, Arc::clone(&stop)))
    });
    let workers: Vec<_> = workers.collect();

    let mut recorder = Recorder::default();
    let mut acks = AckLog::new();
    for worker in workers {
        let (worker_recorder, worker_acks) = worker.await.map_err(LoadError::Worker)?;
        recorder.merge(worker_recorder);
        acks.merge(worker_acks);
    }
    // Stopped early: the measured window is what ran of it.
    let measured = config.duration.min(Instant::now().saturating_duration_since(measure_from));
    Ok(Report::new(config, &setup.run_id, measured, &recorder, acks))
}

async fn drive(
    mut worker: Worker,
    pacing: Pacing,
    measure_from: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> (Recorder, AckLog) {
    while let Some(due) = pacing.next(end, &stop).await {
        worker.recorder.active_clients = 1;
        let measured = due >= measure_from;
        let pause = worker.step(measured).await;
        worker.recorder.step(due.elapsed(), measured);
        if pause {
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
    }
    (worker.recorder, worker.acks)
}
