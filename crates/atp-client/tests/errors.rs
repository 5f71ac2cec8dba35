//! Every reason a real `atpd` can be made to send, read by the SDK as its
//! typed error (the server builds them in `atp_proto::status` and
//! `atp-server`'s `error.rs` and `layers.rs`). DISK_FULL, STORAGE_FAILED,
//! RECOVERING, SHUTTING_DOWN and IN_PROGRESS cannot be caused on demand;
//! `src/error.rs` reads them from statuses built the server's way.

mod support;

use std::time::Duration;

use atp_client::proto as v1;
use atp_client::{Code, Error, Reason, Reserve, RetryPolicy};
use atp_testkit::Atpd;
use support::{client, configure};
use tokio::time::Instant;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn refusals_arrive_as_their_typed_errors() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 5).await;

    // INVALID_ARGUMENT names every bad field.
    let error = client.reserve(Reserve::new("", "web").line("", "dc-1", 0)).await.expect_err("bad");
    let Error::InvalidArgument { violations, .. } = &error else { panic!("{error:?}") };
    let fields: Vec<&str> = violations.iter().map(|violation| violation.field.as_str()).collect();
    for field in ["reservation_id", "lines[0].sku", "lines[0].quantity"] {
        assert!(fields.contains(&field), "{field} missing in {fields:?}");
    }
    assert_eq!(
        (error.code(), error.reason()),
        (Code::InvalidArgument, Some(Reason::InvalidArgument))
    );

    // INSUFFICIENT_STOCK with the SKU, location and both numbers.
    let error =
        client.reserve(Reserve::new("r-big", "web").line("tee", "dc-1", 7)).await.expect_err("");
    let Error::InsufficientStock { sku, location, requested, available, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!((sku.as_str(), location.as_str(), *requested, *available), ("tee", "dc-1", 7, 5));
    assert_eq!(error.reason(), Some(Reason::InsufficientStock));
    assert_eq!(error.reason_name(), Some("INSUFFICIENT_STOCK"));

    // ID_REUSED: the same id with another payload.
    client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 1)).await.expect("held");
    let error = client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 2)).await;
    let error = error.expect_err("another payload");
    assert!(matches!(error, Error::IdReused { .. }), "{error:?}");
    assert_eq!(error.code(), Code::AlreadyExists);

    // WRONG_STATE with the reservation, its state and the operation.
    client.release("r-1").await.expect("released");
    let error = client.commit("r-1").await.expect_err("released");
    let Error::WrongState { reservation_id, state, operation, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(
        (reservation_id.as_str(), state.as_str(), operation.as_str()),
        ("r-1", "RELEASED", "commit")
    );

    // NOT_FOUND.
    let error = client.get_reservation("r-nobody").await;
    assert!(matches!(error, Err(Error::NotFound { .. })), "{error:?}");

    // NOT_ACTIVE: a hold at a PAUSED location, with what the metadata says.
    let paused = support::location("dc-2", v1::LifecycleState::Paused);
    let request = v1::UpsertLocationRequest { location: Some(paused) };
    client.rpc().upsert_location(request).await.expect("pause dc-2");
    let error = client.reserve(Reserve::new("r-2", "web").line("tee", "dc-2", 1)).await;
    let error = error.expect_err("paused");
    let Error::NotActive { kind, id, state, .. } = &error else { panic!("{error:?}") };
    assert_eq!(
        (kind.as_str(), id.as_str(), *state),
        ("location", "dc-2", v1::LifecycleState::Paused)
    );
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn rejected_stock_events_read_as_their_typed_errors() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 5).await;
    let event = |id: &str, kind| v1::StockEvent {
        event_id: id.into(),
        sku: "tee".into(),
        location_id: "dc-1".into(),
        kind: Some(kind),
    };
    let events = vec![
        // PRECONDITION_FAILED: nothing is unavailable, so nothing can be released.
        event(
            "release-1",
            v1::stock_event::Kind::ReleasedUnavailable(v1::ReleasedUnavailable { quantity: 1 }),
        ),
        // ID_REUSED: configure received `recv-tee` with another quantity.
        event("recv-tee", v1::stock_event::Kind::Received(v1::Received { quantity: 1 })),
        event("recv-2", v1::stock_event::Kind::Received(v1::Received { quantity: 1 })),
    ];
    let request = v1::ApplyStockEventsRequest { events };
    let reply = client.rpc().apply_stock_events(request).await.expect("results");
    let errors: Vec<Option<Error>> = reply.results.iter().map(Error::from_rejected_event).collect();
    assert!(matches!(&errors[0], Some(Error::PreconditionFailed { .. })), "{errors:?}");
    assert!(matches!(&errors[1], Some(Error::IdReused { .. })), "{errors:?}");
    assert!(errors[2].is_none(), "applied: {errors:?}");
    let error = errors[0].as_ref().expect("rejected");
    assert_eq!((error.code(), error.is_retryable()), (Code::FailedPrecondition, false));
}

// Over `max_message_bytes`: OUT_OF_RANGE `MESSAGE_TOO_LARGE` with the limit.
#[tokio::test]
async fn a_message_over_the_limit_is_message_too_large_with_the_limit() {
    let atpd = Atpd::start(&[("ATP_MAX_MESSAGE_BYTES", "1024")]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    let mut reserve = Reserve::new("r-large", "web");
    for index in 0..100 {
        reserve = reserve.line(format!("sku-{index:04}"), "dc-1", 1);
    }
    let error = client.reserve(reserve).await.expect_err("too large");
    assert!(
        matches!(&error, Error::MessageTooLarge { limit_bytes: Some(1024), .. }
            if error.message().contains("1024")),
        "{error:?}"
    );
    assert_eq!((error.code(), error.reason()), (Code::OutOfRange, Some(Reason::MessageTooLarge)));
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn too_many_requests_in_flight_is_overloaded() {
    let atpd = Atpd::start(&[("ATP_MAX_CONCURRENT_REQUESTS", "1")]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 1_000).await;
    // One request in flight at a time: a burst of calls is shed. Bursts are
    // repeated until one is (a condition with a deadline, not a sleep).
    let until = Instant::now() + DEADLINE;
    let error = loop {
        let calls = (0..32).map(|_| client.get_availability(&["tee"]));
        let results = futures::future::join_all(calls).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            break error;
        }
        assert!(Instant::now() < until, "no call was shed");
    };
    assert!(matches!(error, Error::Overloaded { retry_after: Some(_), .. }), "{error:?}");
    assert_eq!(error.reason(), Some(Reason::Overloaded));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn the_server_timeout_is_request_timeout() {
    let atpd = Atpd::start(&[("ATP_REQUEST_TIMEOUT_MS", "1")]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    // A batch of 1000 Reserves takes longer than 1 ms in any build.
    let reserves: Vec<v1::ReserveRequest> = (0..1000)
        .map(|index| Reserve::new(format!("r-{index}"), "web").line("tee", "dc-1", 1).into())
        .collect();
    let until = Instant::now() + DEADLINE;
    let error = loop {
        let request = v1::ReserveBatchRequest { reservations: reserves.clone() };
        if let Err(error) = client.rpc().reserve_batch(request).await {
            break error;
        }
        assert!(Instant::now() < until, "every batch finished within 1 ms");
    };
    assert!(matches!(error, Error::RequestTimeout { .. }), "{error:?}");
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert!(error.is_retryable(), "the same ids are safe to send again");
}

#[tokio::test]
async fn the_client_deadline_and_a_dead_node_are_retryable() {
    let mut atpd = Atpd::start(&[]).await;
    let endpoint = atpd.endpoint();
    let impatient = client(&endpoint, RetryPolicy::never()).with_deadline(Duration::from_nanos(1));
    let error = impatient.get_reservation("r-1").await.expect_err("no time");
    assert!(matches!(error, Error::DeadlineExceeded { .. }), "{error:?}");
    assert!(error.is_retryable());

    atpd.kill();
    let error = client(&endpoint, RetryPolicy::never()).get_reservation("r-1").await;
    let error = error.expect_err("nobody listens");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_full_shard_mailbox_is_overloaded() {
    let atpd = Atpd::start(&[("ATP_MAILBOX_CAPACITY", "1")]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 1_000_000).await;
    // One operation fits in the shard's mailbox: concurrent Reserves of one
    // SKU overflow it. Bursts are repeated until one does.
    let until = Instant::now() + DEADLINE;
    let mut round = 0;
    let error = loop {
        round += 1;
        let calls = (0..64).map(|index| {
            let reserve = Reserve::new(format!("r-{round}-{index}"), "web").line("tee", "dc-1", 1);
            client.reserve(reserve)
        });
        let results = futures::future::join_all(calls).await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            break error;
        }
        assert!(Instant::now() < until, "the mailbox never overflowed");
    };
    assert!(
        matches!(&error, Error::Overloaded { retry_after: Some(_), .. } if error.message().contains("shard")),
        "{error:?}"
    );
}
