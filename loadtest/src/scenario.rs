//! One worker: the requests of a scenario, each call timed, each outcome
//! logged in the worker's own [`AckLog`] before and after it is sent.

use std::sync::Arc;
use std::time::Duration;

use atp_client::{Client, Code, Error};
use atp_proto::v1;
use atp_proto::v1::reserve_batch_result::Outcome;
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::acks::{AckLog, Acked, InDoubt, LineRef, OrderRef};
use crate::client::{passing, refused};
use crate::config::{Config, Scenario};
use crate::routing;
use crate::setup::{Names, Setup};
use crate::stats::{Failure, Recorder, Rpc, unix_ms};

/// Most lines of one checkout.
const MAX_CHECKOUT_LINES: usize = 3;
/// Most units of one checkout line.
const MAX_CHECKOUT_UNITS: i64 = 2;
/// Of 100 checkouts, how many commit; then how many release (the rest expire).
const COMMIT_PERCENT: u32 = 70;
const RELEASE_PERCENT: u32 = 20;
/// Of 100 routed orders, how many commit (the rest release).
const ROUTING_COMMIT_PERCENT: u32 = 70;
/// Most times an Allocate whose answer was lost is sent again (the same
/// request: the node answers the reservation it made) before its outcome is
/// left in doubt.
const MAX_ALLOCATE_RESENDS: u32 = 3;
/// Pause before the first resend; it doubles before each next one.
const FIRST_RESEND_PAUSE: Duration = Duration::from_millis(50);

/// What every worker of a run shares.
pub struct Plan {
    /// The data the run works on.
    pub setup: Setup,
    /// The traffic.
    pub scenario: Scenario,
    /// Reservations per ReserveBatch.
    pub batch_size: usize,
    /// TTL of holds that are committed, released or kept.
    pub hold_ttl_s: u32,
    /// TTL of checkout holds left to expire.
    pub expire_ttl_s: u32,
    /// The setup's ids → indexes, to read the lines an Allocate held.
    names: Names,
}

impl Plan {
    /// The plan of `config` over `setup`.
    pub fn new(config: &Config, setup: &Setup) -> Self {
        Self {
            setup: setup.clone(),
            scenario: config.scenario,
            batch_size: config.batch_size,
            hold_ttl_s: config.hold_ttl_s,
            expire_ttl_s: config.expire_ttl_s,
            names: Names::new(setup),
        }
    }
}

/// A client of the run: its connection, its random stream, its ids, its
/// numbers and its log.
pub struct Worker {
    client: Client,
    /// The endpoint `client` calls (named in each [`Failure`]).
    endpoint: String,
    plan: Arc<Plan>,
    rng: fastrand::Rng,
    prefix: String,
    next_id: u64,
    /// What it measured.
    pub recorder: Recorder,
    /// What the node acknowledged to it.
    pub acks: AckLog,
}

impl Worker {
    /// Worker `index` of the run segment `segment`, calling `endpoint`
    /// through `client`.
    pub fn new(
        plan: Arc<Plan>,
        (client, endpoint): (Client, String),
        segment: &str,
        index: usize,
        seed: u64,
    ) -> Self {
        let prefix = format!("{}-{segment}-{index}", plan.setup.run_id);
        Self {
            client,
            endpoint,
            plan,
            rng: fastrand::Rng::with_seed(seed),
            prefix,
            next_id: 0,
            recorder: Recorder::default(),
            acks: AckLog::new(),
        }
    }

    /// Runs one step of the scenario; returns whether the node could not
    /// take it (the caller then pauses before the next).
    pub async fn step(&mut self, measured: bool) -> bool {
        match self.plan.scenario {
            Scenario::Reserve => {
                let lines = vec![self.random_line(1)];
                let (_, code) = self.reserve(lines, self.plan.hold_ttl_s, measured).await;
                code.is_some_and(passing)
            }
            Scenario::FlashSale => {
                let lines = vec![LineRef { sku: 0, location: 0, quantity: 1 }];
                let (_, code) = self.reserve(lines, self.plan.hold_ttl_s, measured).await;
                code.is_some_and(passing)
            }
            Scenario::Checkout => self.checkout(measured).await,
            Scenario::Batch => self.batch(measured).await,
            Scenario::Ceiling => self.health_check(measured).await,
            Scenario::Routing => self.routing(measured).await,
        }
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{}-{}", self.prefix, self.next_id)
    }

    fn random_line(&mut self, quantity: i64) -> LineRef {
        let sku = self.random_sku();
        let location = self.rng.usize(..self.plan.setup.locations.len());
        let location = u16::try_from(location).expect("validated: at most u16::MAX locations");
        LineRef { sku, location, quantity }
    }

    fn random_sku(&mut self) -> u32 {
        let sku = self.rng.usize(..self.plan.setup.skus.len());
        u32::try_from(sku).expect("validated: at most u32::MAX skus")
    }

    fn reserve_request(&self, id: &str, lines: &[LineRef], ttl_s: u32) -> v1::ReserveRequest {
        let setup = &self.plan.setup;
        v1::ReserveRequest {
            reservation_id: id.to_owned(),
            channel_id: setup.channel.clone(),
            lines: lines
                .iter()
                .map(|line| v1::ReservationLine {
                    sku: setup.skus[line.sku as usize].clone(),
                    location_id: setup.locations[usize::from(line.location)].clone(),
                    quantity: line.quantity,
                })
                .collect(),
            ttl_seconds: ttl_s,
            metadata: None,
        }
    }

    /// Logs what a failed operation means: refused (nothing changed) or
    /// unknown (it may have landed; the log keeps it in doubt).
    fn settle(&mut self, id: &str, attempt: InDoubt, code: Code) {
        if refused(code) {
            self.acks.refused(id, attempt);
        } else {
            self.recorder.unknown += 1;
        }
    }

    /// Records the failed call `rpc` about `id` over the SKUs (by index)
    /// `skus`, sent at `sent_unix_ms`.
    fn record_failure(
        &mut self,
        rpc: Rpc,
        (id, skus): (&str, impl Iterator<Item = u32>),
        error: &Error,
        sent_unix_ms: i64,
    ) {
        let shard = match error {
            Error::NotOwner { shard, .. } | Error::FailingClosed { shard, .. } => Some(*shard),
            _ => None,
        };
        let skus = skus.map(|sku| self.plan.setup.skus[sku as usize].clone());
        self.recorder.failure(Failure {
            rpc: rpc.name(),
            code: format!("{:?}", error.code()),
            reason: error.reason_name().map(str::to_owned),
            shard,
            reservation_id: id.to_owned(),
            skus: skus.collect(),
            endpoint: self.endpoint.clone(),
            sent_unix_ms,
            failed_unix_ms: unix_ms(),
            message: error.to_string(),
        });
    }

    /// One unary Reserve under a fresh id; returns its answer and the error
    /// code, if any.
    async fn reserve(
        &mut self,
        lines: Vec<LineRef>,
        ttl_s: u32,
        measured: bool,
    ) -> (Option<String>, Option<Code>) {
        let id = self.id();
        let request = self.reserve_request(&id, &lines, ttl_s);
        self.acks.reserve_sent(&id, lines.clone());
        let (sent, sent_unix_ms) = (Instant::now(), unix_ms());
        let result = self.client.rpc().reserve(request).await;
        self.recorder.call(Rpc::Reserve, sent.elapsed(), measured);
        if measured {
            self.recorder.reservations += 1;
        }
        match result {
            Ok(_) => {
                self.acks.acknowledged(&id, Acked::Held);
                if measured {
                    self.recorder.held += 1;
                }
                (Some(id), None)
            }
            Err(error) => {
                self.recorder.error(error.code());
                let skus = lines.iter().map(|line| line.sku);
                self.record_failure(Rpc::Reserve, (&id, skus), &error, sent_unix_ms);
                self.settle(&id, InDoubt::Reserve, error.code());
                (None, Some(error.code()))
            }
        }
    }

    /// One Health/Check of the whole server (service `""`), timed like a
    /// Reserve over the same channel. It writes nothing, so nothing goes in
    /// the log and no failure leaves an outcome unknown; an answer other than
    /// SERVING counts as UNAVAILABLE (a recovering or stopping node).
    async fn health_check(&mut self, measured: bool) -> bool {
        let request = HealthCheckRequest { service: String::new() };
        let sent = Instant::now();
        let result = self.client.rpc().check(request).await;
        self.recorder.call(Rpc::HealthCheck, sent.elapsed(), measured);
        let code = match result {
            Ok(response) if response.status() == ServingStatus::Serving => return false,
            Ok(_) => Code::Unavailable,
            Err(error) => error.code(),
        };
        self.recorder.error(code);
        passing(code)
    }

    /// Reserve 1–3 lines, then commit, release or leave the hold to expire.
    async fn checkout(&mut self, measured: bool) -> bool {
        let count = self.rng.usize(1..=MAX_CHECKOUT_LINES).min(self.plan.setup.position_count());
        let mut lines: Vec<LineRef> = Vec::with_capacity(count);
        while lines.len() < count {
            let quantity = self.rng.i64(1..=MAX_CHECKOUT_UNITS);
            let line = self.random_line(quantity);
            let repeated =
                lines.iter().any(|other| (other.sku, other.location) == (line.sku, line.location));
            if !repeated {
                lines.push(line);
            }
        }
        let fate = self.rng.u32(..100);
        let expire = fate >= COMMIT_PERCENT + RELEASE_PERCENT;
        let ttl_s = if expire { self.plan.expire_ttl_s } else { self.plan.hold_ttl_s };
        let (held, code) = self.reserve(lines.clone(), ttl_s, measured).await;
        let Some(id) = held else {
            return code.is_some_and(passing);
        };
        if expire {
            return false;
        }
        self.finish(&id, &lines, fate < COMMIT_PERCENT, measured).await
    }

    /// Commits (`commit`) or releases the HELD reservation `id` of `lines`;
    /// returns whether the node could not take it.
    async fn finish(&mut self, id: &str, lines: &[LineRef], commit: bool, measured: bool) -> bool {
        let (rpc, attempt, state) = if commit {
            (Rpc::Commit, InDoubt::Commit, Acked::Committed)
        } else {
            (Rpc::Release, InDoubt::Release, Acked::Released)
        };
        self.acks.sent(id, attempt);
        let (sent, sent_unix_ms) = (Instant::now(), unix_ms());
        let result = if commit {
            // No lines named: every line commits all it holds.
            let request = v1::CommitRequest { reservation_id: id.to_owned(), lines: Vec::new() };
            self.client.rpc().commit(request).await.map(drop)
        } else {
            let request = v1::ReleaseRequest { reservation_id: id.to_owned() };
            self.client.rpc().release(request).await.map(drop)
        };
        self.recorder.call(rpc, sent.elapsed(), measured);
        match result {
            Ok(()) => {
                self.acks.acknowledged(id, state);
                false
            }
            Err(error) => {
                self.recorder.error(error.code());
                let skus = lines.iter().map(|line| line.sku);
                self.record_failure(rpc, (id, skus), &error, sent_unix_ms);
                self.settle(id, attempt, error.code());
                passing(error.code())
            }
        }
    }

    /// Allocate an order to a random destination, then commit or release
    /// what it holds.
    async fn routing(&mut self, measured: bool) -> bool {
        let count = self.rng.usize(1..=MAX_CHECKOUT_LINES).min(self.plan.setup.skus.len());
        let mut order: Vec<OrderRef> = Vec::with_capacity(count);
        while order.len() < count {
            let sku = self.random_sku();
            if order.iter().all(|other| other.sku != sku) {
                order.push(OrderRef { sku, quantity: self.rng.i64(1..=MAX_CHECKOUT_UNITS) });
            }
        }
        let commit = self.rng.u32(..100) < ROUTING_COMMIT_PERCENT;
        let (held, code) = self.allocate(order, measured).await;
        let Some((id, lines)) = held else {
            return code.is_some_and(passing);
        };
        self.finish(&id, &lines, commit, measured).await
    }

    /// One Allocate of `order` under a fresh id; returns the id and the lines
    /// held, or the last error code. An answer lost (a code that proves
    /// nothing) is resolved by sending the same request again, at most
    /// [`MAX_ALLOCATE_RESENDS`] times: a replay answers the reservation the
    /// first send made, or the resend makes it. Only an answer settles a
    /// resend (a refusal proves nothing while the first send may still
    /// land), so past the last the outcome stays in doubt, lines unknown.
    async fn allocate(
        &mut self,
        order: Vec<OrderRef>,
        measured: bool,
    ) -> (Option<(String, Vec<LineRef>)>, Option<Code>) {
        let id = self.id();
        let destination = routing::destination(&mut self.rng);
        let request =
            routing::request(&self.plan.setup, &id, &order, destination, self.plan.hold_ttl_s);
        let skus: Vec<u32> = order.iter().map(|line| line.sku).collect();
        self.acks.allocate_sent(&id, order);
        if measured {
            self.recorder.reservations += 1;
        }
        let (mut rpc, mut resends, mut pause) = (Rpc::Allocate, 0, FIRST_RESEND_PAUSE);
        loop {
            let (sent, sent_unix_ms) = (Instant::now(), unix_ms());
            let result = self.client.rpc().allocate(request.clone()).await;
            self.recorder.call(rpc, sent.elapsed(), measured);
            let error = match result {
                Ok(answer) => {
                    // Lines unreadable: logged as held with lines unknown,
                    // so the checker compares what the node holds with the order.
                    let lines = routing::held_lines(&self.plan.names, &answer).unwrap_or_default();
                    self.acks.allocated(&id, lines.clone());
                    if measured {
                        self.recorder.held += 1;
                    }
                    return (Some((id, lines)), None);
                }
                Err(error) => error,
            };
            let code = error.code();
            self.recorder.error(code);
            self.record_failure(rpc, (&id, skus.iter().copied()), &error, sent_unix_ms);
            if rpc == Rpc::Allocate && refused(code) {
                // Nothing was held under the id, and nothing else carries it.
                self.acks.refused(&id, InDoubt::Reserve);
                return (None, Some(code));
            }
            if resends == MAX_ALLOCATE_RESENDS {
                self.recorder.unknown += 1;
                return (None, Some(code));
            }
            tokio::time::sleep(pause).await;
            (rpc, resends, pause) = (Rpc::AllocateResend, resends + 1, pause * 2);
        }
    }

    /// One ReserveBatch of one-line reservations.
    async fn batch(&mut self, measured: bool) -> bool {
        let mut ids = Vec::with_capacity(self.plan.batch_size);
        let mut reservations = Vec::with_capacity(self.plan.batch_size);
        for _ in 0..self.plan.batch_size {
            let id = self.id();
            let lines = vec![self.random_line(1)];
            reservations.push(self.reserve_request(&id, &lines, self.plan.hold_ttl_s));
            self.acks.reserve_sent(&id, lines);
            ids.push(id);
        }
        if measured {
            self.recorder.reservations += ids.len() as u64;
        }
        let sent = Instant::now();
        let result =
            self.client.rpc().reserve_batch(v1::ReserveBatchRequest { reservations }).await;
        self.recorder.call(Rpc::ReserveBatch, sent.elapsed(), measured);
        let results = match result {
            Ok(response) => response.results,
            Err(error) => {
                self.recorder.error(error.code());
                for id in &ids {
                    self.settle(id, InDoubt::Reserve, error.code());
                }
                return passing(error.code());
            }
        };
        let mut pause = false;
        let mut results = results.into_iter();
        for id in &ids {
            match results.next().and_then(|result| result.outcome) {
                Some(Outcome::Reserved(_)) => {
                    self.acks.acknowledged(id, Acked::Held);
                    if measured {
                        self.recorder.held += 1;
                    }
                }
                Some(Outcome::Error(status)) => {
                    let code = Code::from(status.code);
                    self.recorder.error(code);
                    self.settle(id, InDoubt::Reserve, code);
                    pause |= passing(code);
                }
                // A reply with fewer results than items: the rest are unknown.
                None => {
                    self.recorder.error(Code::Internal);
                    self.settle(id, InDoubt::Reserve, Code::Internal);
                }
            }
        }
        pause
    }
}
