//! Crash test: real `atpd` processes under load, SIGKILLed at random moments
//! and restarted on the same data directory. Afterwards every acknowledged
//! Reserve/Commit/Release/Cancel is found in its acknowledged state or a
//! legal successor, nothing is oversold, held and committed units equal what
//! the reservations say, and on_hand equals what the stock events imply.
//!
//! `ATP_CRASH_CYCLES` (default 5) sets the kills, `ATP_CRASH_OPS` (default
//! 150) the acknowledged operations between two kills (at random around it),
//! `ATP_CRASH_SEED` replays a run (the seed is printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atp_proto::v1;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::stock_event::Kind;
use common::Atpd;
use tonic::Code;
use tonic::transport::Channel;

const SKUS: usize = 12;
const LOCATIONS: [&str; 2] = ["dc-1", "dc-2"];
const CLIENTS: usize = 12;
const STOCK: i64 = 30;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// xorshift64*: small, seeded, replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sku(index: usize) -> String {
    format!("crash-sku-{index}")
}

/// What the clients were told, per reservation.
#[derive(Clone, Debug, Default)]
struct Known {
    lines: Vec<(String, String, i64)>,
    /// The last state acknowledged (None: the Reserve's answer was lost).
    acked: Option<v1::ReservationState>,
    commit_sent: bool,
    release_sent: bool,
    cancel_sent: bool,
}

#[derive(Default)]
struct History {
    reservations: BTreeMap<String, Known>,
    /// Receipts sent (by id) with their position and units; all are re-sent at
    /// the end so each is applied exactly once whatever answers were lost.
    receipts: BTreeMap<String, (String, String, i64)>,
    acked_ops: u64,
}

/// An answer that says nothing about whether the request was applied.
fn outcome_unknown(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

async fn client_loop(
    id: usize,
    seed: u64,
    channel: Arc<RwLock<Channel>>,
    history: Arc<Mutex<History>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut rng = Rng(seed ^ ((id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    let mut serial = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let channel = channel.read().expect("channel lock").clone();
        let mut client = AvailabilityServiceClient::new(channel);
        serial += 1;
        let choice = rng.below(100);
        if choice < 45 {
            // Reserve 1–2 lines; a short TTL for some so holds expire, also across restarts.
            let reservation_id = format!("c{id}-r{serial}");
            let lines = dedupe(
                (0..1 + rng.below(2))
                    .map(|_| {
                        let s = sku(rng.below(SKUS as u64) as usize);
                        let l = LOCATIONS[rng.below(2) as usize].to_owned();
                        (s, l, 1 + rng.below(3) as i64)
                    })
                    .collect(),
            );
            let ttl_seconds = if rng.below(4) == 0 { 1 } else { 120 };
            history
                .lock()
                .expect("history")
                .reservations
                .insert(reservation_id.clone(), Known { lines: lines.clone(), ..Known::default() });
            let request = v1::ReserveRequest {
                reservation_id: reservation_id.clone(),
                channel_id: "web".into(),
                lines: lines
                    .iter()
                    .map(|(s, l, q)| v1::ReservationLine {
                        sku: s.clone(),
                        location_id: l.clone(),
                        quantity: *q,
                    })
                    .collect(),
                ttl_seconds,
                metadata: None,
            };
            match client.reserve(request).await {
                Ok(_) => {
                    let mut history = history.lock().expect("history");
                    history.acked_ops += 1;
                    let known = history.reservations.get_mut(&reservation_id).expect("known");
                    known.acked = Some(v1::ReservationState::Held);
                }
                Err(status) if outcome_unknown(&status) => {}
                Err(_) => {
                    // A refusal stores nothing: forget it.
                    history.lock().expect("history").reservations.remove(&reservation_id);
                }
            }
        } else if choice < 85 {
            // Commit, Release or Cancel one the client was told about.
            let target = {
                let history = history.lock().expect("history");
                let mine: Vec<_> = history
                    .reservations
                    .iter()
                    .filter(|(rid, known)| {
                        rid.starts_with(&format!("c{id}-"))
                            && matches!(
                                known.acked,
                                Some(v1::ReservationState::Held | v1::ReservationState::Committed)
                            )
                    })
                    .map(|(rid, known)| (rid.clone(), known.acked))
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                mine[rng.below(mine.len() as u64) as usize].clone()
            };
            let (rid, state) = target;
            let kind = rng.below(10);
            let (result, next) = if state == Some(v1::ReservationState::Held) && kind < 7 {
                mark(&history, &rid, |known| known.commit_sent = true);
                let request = v1::CommitRequest { reservation_id: rid.clone(), lines: vec![] };
                (client.commit(request).await.map(|_| ()), v1::ReservationState::Committed)
            } else if state == Some(v1::ReservationState::Held) {
                mark(&history, &rid, |known| known.release_sent = true);
                let request = v1::ReleaseRequest { reservation_id: rid.clone() };
                (client.release(request).await.map(|_| ()), v1::ReservationState::Released)
            } else {
                mark(&history, &rid, |known| known.cancel_sent = true);
                let request = v1::CancelRequest { reservation_id: rid.clone() };
                (client.cancel(request).await.map(|_| ()), v1::ReservationState::Cancelled)
            };
            if result.is_ok() {
                let mut history = history.lock().expect("history");
                history.acked_ops += 1;
                history.reservations.get_mut(&rid).expect("known").acked = Some(next);
            }
        } else {
            // A receipt of 1–4 units.
            let event_id = format!("c{id}-e{serial}");
            let s = sku(rng.below(SKUS as u64) as usize);
            let l = LOCATIONS[rng.below(2) as usize].to_owned();
            let units = 1 + rng.below(4) as i64;
            history
                .lock()
                .expect("history")
                .receipts
                .insert(event_id.clone(), (s.clone(), l.clone(), units));
            let request =
                v1::ApplyStockEventsRequest { events: vec![receipt(&event_id, &s, &l, units)] };
            if client.apply_stock_events(request).await.is_ok() {
                history.lock().expect("history").acked_ops += 1;
            }
        }
    }
}

/// Records on a reservation what was sent for it (before the answer comes).
fn mark(history: &Mutex<History>, rid: &str, sent: impl FnOnce(&mut Known)) {
    sent(history.lock().expect("history").reservations.get_mut(rid).expect("known"));
}

fn dedupe(lines: Vec<(String, String, i64)>) -> Vec<(String, String, i64)> {
    let mut seen = BTreeSet::new();
    lines.into_iter().filter(|(s, l, _)| seen.insert((s.clone(), l.clone()))).collect()
}

fn receipt(event_id: &str, sku: &str, location: &str, quantity: i64) -> v1::StockEvent {
    v1::StockEvent {
        event_id: event_id.into(),
        sku: sku.into(),
        location_id: location.into(),
        kind: Some(Kind::Received(v1::Received { quantity })),
    }
}

async fn configure_and_stock(atpd: &Atpd, history: &Mutex<History>) {
    let mut config = atpd.config();
    for id in LOCATIONS {
        let location = v1::Location {
            location_id: id.into(),
            kind: v1::LocationKind::Warehouse.into(),
            state: v1::LifecycleState::Active.into(),
            ..Default::default()
        };
        config
            .upsert_location(v1::UpsertLocationRequest { location: Some(location) })
            .await
            .expect("location");
    }
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: LOCATIONS.iter().map(|l| (*l).to_owned()).collect(),
        ..Default::default()
    };
    config
        .upsert_channel(v1::UpsertChannelRequest { channel: Some(channel) })
        .await
        .expect("channel");
    let mut events = Vec::new();
    for index in 0..SKUS {
        for location in LOCATIONS {
            let event_id = format!("stock-{index}-{location}");
            events.push(receipt(&event_id, &sku(index), location, STOCK));
            let position = (sku(index), location.to_owned(), STOCK);
            history.lock().expect("history").receipts.insert(event_id, position);
        }
    }
    let request = v1::ApplyStockEventsRequest { events };
    atpd.availability().apply_stock_events(request).await.expect("initial stock");
}

/// States a reservation may legally be in, given what its client was told.
fn legal(known: &Known, found: v1::ReservationState) -> bool {
    use v1::ReservationState::{Cancelled, Committed, Expired, Fulfilled, Held, Released};
    let after_commit = |state| match state {
        Committed => true,
        Cancelled => known.cancel_sent,
        Fulfilled => false,
        _ => false,
    };
    match known.acked {
        None => true,
        Some(Held) => match found {
            Held | Expired => true,
            Released => known.release_sent,
            Committed | Cancelled => known.commit_sent && after_commit(found),
            _ => false,
        },
        Some(Committed) => after_commit(found),
        Some(Released) => found == Released,
        Some(Cancelled) => found == Cancelled,
        Some(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let cycles = env_number("ATP_CRASH_CYCLES", 5);
    let ops_per_cycle = env_number("ATP_CRASH_OPS", 150);
    let seed = env_number(
        "ATP_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1,
    );
    eprintln!("crash test: seed {seed} (ATP_CRASH_SEED replays it), {cycles} kills");
    let mut rng = Rng(seed);
    let data = tempfile::tempdir().expect("data directory");
    let history = Arc::new(Mutex::new(History::default()));

    let mut atpd = Atpd::start_in(data.path(), &[]).await;
    configure_and_stock(&atpd, &history).await;
    let channel = Arc::new(RwLock::new(atpd.channel()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                seed,
                Arc::clone(&channel),
                Arc::clone(&history),
                Arc::clone(&stop),
            ))
        })
        .collect();

    for cycle in 0..cycles {
        // Kill at a random moment: after a random number of acknowledged ops.
        let target = history.lock().expect("history").acked_ops
            + ops_per_cycle / 2
            + rng.below(ops_per_cycle);
        let reached = common::eventually(Duration::from_secs(60), || {
            let history = Arc::clone(&history);
            async move { history.lock().expect("history").acked_ops >= target }
        })
        .await;
        assert!(reached, "cycle {cycle}: the load made no progress; atpd log:\n{}", atpd.log());
        atpd.kill();
        atpd = Atpd::start_in(data.path(), &[]).await;
        *channel.write().expect("channel lock") = atpd.channel();
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for client in clients {
        client.await.expect("client task");
    }

    // Every receipt is re-sent: applied now if its answer was lost before the
    // crash and it was not durable, a duplicate otherwise.
    let history =
        Arc::try_unwrap(history).ok().expect("clients stopped").into_inner().expect("history");
    let mut availability = atpd.availability();
    let events: Vec<_> =
        history.receipts.iter().map(|(id, (s, l, q))| receipt(id, s, l, *q)).collect();
    for chunk in events.chunks(500) {
        let request = v1::ApplyStockEventsRequest { events: chunk.to_vec() };
        let response = availability.apply_stock_events(request).await.expect("re-send receipts");
        for result in &response.get_ref().results {
            assert!(
                matches!(
                    result.outcome(),
                    v1::StockEventOutcome::Applied | v1::StockEventOutcome::Duplicate
                ),
                "{result:?}"
            );
        }
    }

    // Every reservation ever attempted: acknowledged ones must be there in a
    // legal state; the units held and committed must add up per position.
    // Holds with a 1 s TTL may still be expiring while this reads (the record
    // first, its lines' release just after), so the sums are compared until
    // they agree, up to a deadline; a real loss never agrees.
    let mut on_hand: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (s, l, q) in history.receipts.values() {
        *on_hand.entry((s.clone(), l.clone())).or_default() += q;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let acknowledged = loop {
        let (acknowledged, mismatch) = verify(&mut availability, &history, &on_hand).await;
        match mismatch {
            None => break acknowledged,
            Some(mismatch) if std::time::Instant::now() < deadline => {
                eprintln!("crash test: not settled yet ({mismatch}); reading again");
            }
            Some(mismatch) => panic!("{mismatch}"),
        }
    };
    assert!(acknowledged > 0, "no reservation was acknowledged");
    eprintln!(
        "crash test: {cycles} kills, {} reservations tried, {acknowledged} acknowledged, {} acknowledged ops",
        history.reservations.len(),
        history.acked_ops
    );
}

/// Reads every reservation (asserting what cannot change any more) and every
/// position; returns the acknowledged count and the first unit mismatch.
async fn verify(
    availability: &mut AvailabilityServiceClient<Channel>,
    history: &History,
    on_hand: &BTreeMap<(String, String), i64>,
) -> (usize, Option<String>) {
    let mut held: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut committed: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut acknowledged = 0;
    for (rid, known) in &history.reservations {
        let request = v1::GetReservationRequest { reservation_id: rid.clone() };
        let found = match availability.get_reservation(request).await {
            Ok(response) => response.into_inner().reservation.expect("reservation"),
            Err(status) => {
                assert!(
                    known.acked.is_none() && status.code() == Code::NotFound,
                    "acknowledged reservation {rid} ({known:?}) is gone: {status:?}"
                );
                continue;
            }
        };
        if known.acked.is_some() {
            acknowledged += 1;
        }
        assert!(
            legal(known, found.state()),
            "reservation {rid}: told {known:?}, found {:?}",
            found.state()
        );
        let lines: Vec<_> = found
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.location_id.clone(), l.quantity))
            .collect();
        assert_eq!(lines, known.lines, "reservation {rid}'s lines");
        for line in &found.lines {
            let key = (line.sku.clone(), line.location_id.clone());
            match found.state() {
                v1::ReservationState::Held => *held.entry(key).or_default() += line.quantity,
                v1::ReservationState::Committed => {
                    *committed.entry(key).or_default() += line.committed - line.shipped;
                }
                _ => {}
            }
        }
    }
    let request =
        v1::GetAvailabilityRequest { skus: (0..SKUS).map(sku).collect(), ..Default::default() };
    let response = availability.get_availability(request).await.expect("availability").into_inner();
    for sku_availability in &response.skus {
        for position in &sku_availability.locations {
            let key = (sku_availability.sku.clone(), position.location_id.clone());
            assert_eq!(position.on_hand, on_hand[&key], "on_hand of {key:?}");
            assert!(
                position.reserved + position.committed + position.unavailable <= position.on_hand,
                "oversold at {key:?}: {position:?}"
            );
            assert_eq!(position.shortfall, 0, "{key:?}");
            let expected =
                (held.get(&key).copied().unwrap_or(0), committed.get(&key).copied().unwrap_or(0));
            if (position.reserved, position.committed) != expected {
                let mismatch = format!(
                    "at {key:?} the node has reserved {} committed {}; its reservations say {expected:?}",
                    position.reserved, position.committed
                );
                return (acknowledged, Some(mismatch));
            }
        }
    }
    (acknowledged, None)
}
