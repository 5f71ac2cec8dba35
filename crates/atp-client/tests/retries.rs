//! The retry rules against a fault proxy in front of a real `atpd`: the
//! proxy counts every attempt and can let a call reach the node but answer
//! UNAVAILABLE instead of the reply (the reply was lost), or answer
//! RESOURCE_EXHAUSTED `OVERLOADED` itself.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use atp_client::{Client, Error, Reason, ReservationState, Reserve, RetryPolicy};
use atp_testkit::Atpd;
use support::{Fault, FaultProxy, client, configure, position, quick_retries};

#[tokio::test]
async fn refusals_are_sent_exactly_once() {
    let atpd = Atpd::start(&[("ATP_MAX_MESSAGE_BYTES", "1024")]).await;
    configure(&client(&atpd.endpoint(), RetryPolicy::never()), &["tee"], 5).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::None).await;
    let client = client(&format!("http://{address}"), quick_retries(5));

    let once = |id: &'static str, error: Result<_, Error>, expected: fn(&Error) -> bool| {
        let error = error.expect_err(id);
        assert!(expected(&error), "{id}: {error:?}");
        assert_eq!(proxy.attempts_for(id), 1, "{id}: {error:?} was sent again");
    };
    let error = client.reserve(Reserve::new("r-big", "web").line("tee", "dc-1", 6)).await;
    once("r-big", error, |error| matches!(error, Error::InsufficientStock { .. }));
    let error = client.reserve(Reserve::new("r-bad", "web").line("tee", "dc-1", 0)).await;
    once("r-bad", error, |error| matches!(error, Error::InvalidArgument { .. }));
    let error = client.get_reservation("r-nobody").await;
    once("r-nobody", error, |error| matches!(error, Error::NotFound { .. }));
    let mut large = Reserve::new("r-large", "web");
    for index in 0..100 {
        large = large.line(format!("sku-{index:04}"), "dc-1", 1);
    }
    let error = client.reserve(large).await;
    once("r-large", error, |error| {
        matches!(error, Error::MessageTooLarge { limit_bytes: Some(1024), .. })
    });

    client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 1)).await.expect("held");
    let error = client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 2)).await;
    assert!(matches!(error, Err(Error::IdReused { .. })), "{error:?}");
    assert_eq!(proxy.attempts_for("r-1"), 2, "one Reserve, one mismatched Reserve");
    client.release("r-1").await.expect("released");
    let error = client.commit("r-1").await;
    assert!(matches!(error, Err(Error::WrongState { .. })), "{error:?}");
    assert_eq!(proxy.attempts_for("r-1"), 4, "a release, then one commit");
}

#[tokio::test]
async fn a_lost_reply_is_sent_again_and_holds_once() {
    let atpd = Atpd::start(&[]).await;
    let direct = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&direct, &["tee"], 5).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropFirstReply).await;
    let client = client(&format!("http://{address}"), quick_retries(3));

    let held =
        client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 2)).await.expect("held");
    assert_eq!(proxy.attempts_for("r-1"), 2, "the first reply was dropped");
    assert_eq!(held.state, ReservationState::Held);
    let position = position(&direct, "tee").await;
    assert_eq!((position.reserved, position.atp), (2, 3), "held once");
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    let atpd = Atpd::start(&[]).await;
    configure(&client(&atpd.endpoint(), RetryPolicy::never()), &["tee"], 5).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropEveryReply).await;
    let client = client(&format!("http://{address}"), quick_retries(3));
    let error = client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 1)).await;
    assert!(matches!(error, Err(Error::Unavailable { .. })), "{error:?}");
    assert_eq!(proxy.attempts_for("r-1"), 3);

    proxy.set_fault(Fault::Overloaded);
    let error = client.get_reservation("r-2").await.expect_err("overloaded");
    assert!(matches!(error, Error::Overloaded { retry_after: Some(_), .. }), "{error:?}");
    assert_eq!(proxy.attempts_for("r-2"), 3, "overload is retried");
}

#[tokio::test]
async fn each_reason_is_retried_by_its_rule() {
    let atpd = Atpd::start(&[]).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::None).await;
    let policy = RetryPolicy { budget_min_retries_per_second: 1_000, ..quick_retries(3) };
    let client = client(&format!("http://{address}"), policy);
    let retried = [
        Reason::InProgress,
        Reason::Overloaded,
        Reason::StorageFailed,
        Reason::Recovering,
        Reason::ShuttingDown,
        Reason::RequestTimeout,
        Reason::FailingClosed,
    ];
    for &reason in Reason::ALL {
        proxy.set_fault(Fault::Refuse(reason));
        let id = format!("r-{}", reason.name());
        let error = client.get_reservation(&id).await.expect_err("refused by the proxy");
        assert_eq!(error.reason(), Some(reason), "{error:?}");
        let expected = if retried.contains(&reason) { 3 } else { 1 };
        assert_eq!(proxy.attempts_for(&id), expected, "{reason:?}");
    }
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let atpd = Atpd::start(&[]).await;
    configure(&client(&atpd.endpoint(), RetryPolicy::never()), &["tee"], 5).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropEveryReply).await;
    // No floor, one retry per two calls, counted over 60 s: 20 calls that
    // all fail may retry 10 times, not the 9 × 20 their attempts allow.
    let policy = RetryPolicy {
        budget_window: Duration::from_secs(60),
        budget_min_retries_per_second: 0,
        budget_retry_ratio: 0.5,
        ..quick_retries(10)
    };
    let client = client(&format!("http://{address}"), policy);
    const CALLS: u32 = 20;
    for index in 0..CALLS {
        let id = format!("r-{index}");
        let error = client.get_reservation(&id).await.expect_err("reply dropped");
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    }
    let retries = proxy.attempts() - CALLS;
    assert!((1..=CALLS / 2).contains(&retries), "{retries} retries for {CALLS} calls");
}

#[tokio::test]
async fn two_hundred_callers_retrying_hold_once_per_id_and_oversell_nothing() {
    const CALLERS: usize = 200;
    const STOCK: i64 = 150;
    let atpd = Atpd::start(&[]).await;
    let direct = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&direct, &["tee"], STOCK).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropFirstReply).await;
    let policy = RetryPolicy { budget_min_retries_per_second: 1_000, ..quick_retries(6) };
    let client = Client::builder([format!("http://{address}")])
        .connections_per_endpoint(4)
        .deadline(Duration::from_secs(60))
        .retry(policy)
        .build()
        .expect("client");

    let calls = (0..CALLERS).map(|index| {
        let client = client.clone();
        async move {
            let id = format!("r-{index}");
            (id.clone(), client.reserve(Reserve::new(id, "web").line("tee", "dc-1", 1)).await)
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut held = BTreeSet::new();
    for (id, result) in results {
        match result {
            Ok(reservation) => {
                assert_eq!(reservation.reservation_id, id);
                held.insert(id);
            }
            Err(Error::InsufficientStock { available: 0, .. }) => {}
            Err(error) => panic!("{id}: {error:?}"),
        }
    }
    assert_eq!(held.len(), STOCK as usize, "every unit sold once, no more");
    for index in 0..CALLERS {
        let id = format!("r-{index}");
        let attempts = proxy.attempts_for(&id);
        assert!((2..=6).contains(&attempts), "{id}: {attempts} attempts");
        match direct.get_reservation(&id).await {
            Ok(reservation) => {
                assert!(held.contains(&id), "{id} holds but its caller was refused");
                assert_eq!(reservation.state, ReservationState::Held);
                assert_eq!(reservation.lines[0].quantity, 1);
            }
            Err(Error::NotFound { .. }) => assert!(!held.contains(&id), "{id} lost its hold"),
            Err(error) => panic!("{id}: {error:?}"),
        }
    }
    let position = position(&direct, "tee").await;
    assert_eq!((position.reserved, position.atp), (STOCK, 0), "one hold per id");
}

#[tokio::test]
async fn reserve_many_answers_each_item_and_retries_lost_replies() {
    let atpd = Atpd::start(&[]).await;
    let direct = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&direct, &["tee"], 5).await;
    direct.reserve(Reserve::new("r-taken", "web").line("tee", "dc-1", 1)).await.expect("held");
    let (proxy, address) = FaultProxy::start(&atpd, Fault::DropFirstReply).await;
    let client = client(&format!("http://{address}"), quick_retries(3));

    let mut reserves: Vec<Reserve> = (0..6)
        .map(|index| Reserve::new(format!("r-{index}"), "web").line("tee", "dc-1", 1))
        .collect();
    reserves.push(Reserve::new("r-taken", "web").line("tee", "dc-1", 2));
    reserves.push(Reserve::new("r-bad", "web").line("tee", "dc-1", 0));
    let results = client.reserve_many(reserves).await.expect("the batch call");
    assert_eq!(results.len(), 8);
    assert_eq!(proxy.attempts_for("r-0"), 2, "the first batch reply was dropped");
    let held = results[..6].iter().filter(|result| result.is_ok()).count();
    assert_eq!(held, 4, "4 units were left");
    for result in &results[..6] {
        if let Err(error) = result {
            assert!(matches!(error, Error::InsufficientStock { .. }), "{error:?}");
        }
    }
    assert!(matches!(results[6], Err(Error::IdReused { .. })), "{:?}", results[6]);
    assert!(
        matches!(&results[7], Err(Error::InvalidArgument { violations, .. })
        if violations[0].field.starts_with("reservations[7]")),
        "{:?}",
        results[7]
    );
    let position = position(&direct, "tee").await;
    assert_eq!((position.reserved, position.atp), (5, 0));

    let empty = client.reserve_many(Vec::new()).await.expect("nothing to send");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn reserve_many_resends_only_items_refused_for_overload() {
    let atpd = Atpd::start(&[]).await;
    let direct = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&direct, &["tee"], 100).await;
    let (proxy, address) = FaultProxy::start(&atpd, Fault::OverloadOddItemsOnce).await;
    let reserves: Vec<Reserve> = (0..10)
        .map(|index| Reserve::new(format!("r-{index}"), "web").line("tee", "dc-1", 1))
        .collect();

    let once = client(&format!("http://{address}"), RetryPolicy::never());
    let results = once.reserve_many(reserves).await.expect("the batch call");
    for (index, result) in results.iter().enumerate() {
        match index % 2 {
            1 => assert!(matches!(result, Err(Error::Overloaded { .. })), "{index}: {result:?}"),
            _ => assert!(result.is_ok(), "{index}: {result:?}"),
        }
    }

    let more: Vec<Reserve> = (10..20)
        .map(|index| Reserve::new(format!("r-{index}"), "web").line("tee", "dc-1", 1))
        .collect();
    let retrying = client(&format!("http://{address}"), quick_retries(3));
    let results = retrying.reserve_many(more).await.expect("the batch call");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for index in 10..20 {
        let expected = if index % 2 == 1 { 2 } else { 1 };
        assert_eq!(proxy.attempts_for(&format!("r-{index}")), expected, "r-{index}");
    }
    let position = position(&direct, "tee").await;
    assert_eq!(position.reserved, 5 + 10, "each id held once");
}
