//! Retries racing their first attempt, over real gRPC against the real `atpd`
//! binary: 200 clients, each on its own connection, send the same
//! multi-shard Reserves with client deadlines of a few milliseconds and
//! retry each until it is answered. A retry that reaches the node while the
//! first attempt is still in flight waits for that attempt's answer, so
//! every answer is the first answer (the same reservation, the same expiry),
//! no call is refused as "in progress", and each id holds once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use atp_proto::v1;
use atp_proto::v1::stock_event::Kind;
use common::Atpd;
use tonic::Code;

const CLIENTS: usize = 200;
const IDS: usize = 20;
const SKUS: [&str; 4] = ["mug", "tee", "cap", "pin"];
/// Attempts per id with a deadline; attempt `k` waits at most `2^k` ms
/// (plus up to 2 ms), so the first ones give up while the first Reserve is
/// in flight and later ones outwait a busy node.
const MAX_ATTEMPTS: u32 = 12;

async fn configure(atpd: &Atpd) {
    let location = v1::Location {
        location_id: "dc-1".into(),
        kind: v1::LocationKind::Warehouse.into(),
        name: "warehouse".into(),
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    };
    let mut config = atpd.config();
    let request = v1::UpsertLocationRequest { location: Some(location) };
    config.upsert_location(request).await.expect("upsert location");
    let channel = v1::Channel {
        channel_id: "web".into(),
        name: "web shop".into(),
        location_ids: vec!["dc-1".into()],
        buffer: 0,
        cap: None,
        state: v1::LifecycleState::Active.into(),
        ..Default::default()
    };
    let request = v1::UpsertChannelRequest { channel: Some(channel) };
    config.upsert_channel(request).await.expect("upsert channel");
    let events = SKUS
        .iter()
        .map(|sku| v1::StockEvent {
            event_id: format!("recv-{sku}"),
            sku: (*sku).into(),
            location_id: "dc-1".into(),
            kind: Some(Kind::Received(v1::Received { quantity: 1_000_000 })),
        })
        .collect();
    let request = v1::ApplyStockEventsRequest { events };
    atpd.availability().apply_stock_events(request).await.expect("stock events");
}

/// Reservation `n`: two lines on two SKUs (so, usually, three shards).
fn reserve(n: usize) -> v1::ReserveRequest {
    let line = |sku: &str, quantity| v1::ReservationLine {
        sku: sku.into(),
        location_id: "dc-1".into(),
        quantity,
    };
    v1::ReserveRequest {
        reservation_id: format!("retry-{n}"),
        channel_id: "web".into(),
        lines: vec![line(SKUS[n % 4], 1 + (n % 3) as i64), line(SKUS[(n + 1) % 4], 1)],
        ttl_seconds: 600,
        metadata: None,
    }
}

/// What a client heard for one id: the reservation, or a final error.
type Heard = Result<v1::Reservation, (Code, String)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_the_same_ids_all_get_the_first_answer_and_hold_once() {
    let atpd = Atpd::start(&[]).await;
    configure(&atpd).await;

    let clients = (0..CLIENTS).map(|client| {
        let mut availability = atpd.availability();
        tokio::spawn(async move {
            let mut heard: Vec<(usize, Heard)> = Vec::with_capacity(IDS);
            let mut timeouts = 0usize;
            // Each client walks the ids from its own starting point, so every
            // id is sent by many clients at nearly the same time.
            for step in 0..IDS {
                let n = (client + step) % IDS;
                let mut answer = None;
                for attempt in 0..MAX_ATTEMPTS {
                    let mut request = tonic::Request::new(reserve(n));
                    let jitter = (client % 3) as u64;
                    request.set_timeout(Duration::from_millis((1 << attempt) + jitter));
                    match availability.reserve(request).await {
                        Ok(response) => {
                            let reservation = response.into_inner().reservation;
                            answer = Some(Ok(reservation.expect("a reservation")));
                            break;
                        }
                        Err(status)
                            if matches!(
                                status.code(),
                                Code::DeadlineExceeded | Code::Cancelled
                            ) =>
                        {
                            timeouts += 1;
                        }
                        Err(status) => {
                            answer = Some(Err((status.code(), status.message().to_owned())));
                            break;
                        }
                    }
                }
                // A last attempt without a deadline, if every short one timed out.
                let answer = match answer {
                    Some(answer) => answer,
                    None => match availability.reserve(reserve(n)).await {
                        Ok(response) => Ok(response.into_inner().reservation.expect("reservation")),
                        Err(status) => Err((status.code(), status.message().to_owned())),
                    },
                };
                heard.push((n, answer));
            }
            (heard, timeouts)
        })
    });
    let mut first: BTreeMap<usize, v1::Reservation> = BTreeMap::new();
    let mut timeouts = 0;
    for client in futures::future::join_all(clients).await {
        let (heard, timed_out) = client.expect("client task");
        timeouts += timed_out;
        for (n, answer) in heard {
            let reservation = match answer {
                Ok(reservation) => reservation,
                Err((code, message)) => panic!("retry-{n} answered {code:?}: {message}"),
            };
            assert_eq!(reservation.state(), v1::ReservationState::Held, "retry-{n}");
            match first.get(&n) {
                None => {
                    first.insert(n, reservation);
                }
                // Every answer is the first answer: same creation and expiry.
                Some(seen) => assert_eq!(seen, &reservation, "retry-{n}: not the first answer"),
            }
        }
    }
    assert_eq!(first.len(), IDS);
    // The test must have raced: some attempts gave up while one was in flight.
    assert!(timeouts > 0, "no attempt timed out: the retries did not race");

    // One hold per id: each SKU's reserved units are exactly the ids' lines.
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for n in 0..IDS {
        for line in reserve(n).lines {
            *expected
                .entry(SKUS.iter().find(|sku| **sku == line.sku).expect("a sku"))
                .or_default() += line.quantity;
        }
    }
    let request = v1::GetAvailabilityRequest {
        skus: SKUS.iter().map(|sku| (*sku).into()).collect(),
        ..Default::default()
    };
    let response = atpd.availability().get_availability(request).await.expect("availability");
    for sku in &response.get_ref().skus {
        let position = sku.locations.iter().find(|p| p.location_id == "dc-1").expect("dc-1");
        assert_eq!(position.reserved, expected[sku.sku.as_str()], "reserved units of {}", sku.sku);
    }
    eprintln!("{timeouts} attempts timed out and were retried");
}
