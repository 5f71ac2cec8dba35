//! `Reservation::replayed` and `Reservation::current` against a real `atpd`:
//! what the plain methods say when a call had been done before, and how
//! `modify` refuses a reused request id or too little stock.

mod support;

use atp_client::{Error, Line, Reservation, ReservationState, Reserve, RetryPolicy};
use atp_testkit::Atpd;
use support::{client, configure, position};

#[tokio::test]
async fn a_repeated_reserve_is_replayed_with_the_reservation_as_it_stands() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 5).await;
    let reserve = || Reserve::new("r-1", "web").line("tee", "dc-1", 2).order_id("o-1");

    let first = client.reserve(reserve()).await.expect("reserve");
    assert!(!first.replayed, "the first Reserve is not a replay");
    assert!(first.current.is_none(), "{first:?}");
    assert_eq!(first.state, ReservationState::Held);

    let again = client.reserve(reserve()).await.expect("the same reserve");
    assert!(again.replayed, "the same id and payload again is a replay");
    assert_eq!(again.state, ReservationState::Held);
    assert_eq!(again.created_at_ms, first.created_at_ms, "the first answer");
    let current = again.current.as_deref().expect("a replay carries the current reservation");
    assert_eq!((current.state, current.replayed), (ReservationState::Held, false));
    assert_eq!(position(&client, "tee").await.reserved, 2, "held once");

    let released = client.release("r-1").await.expect("release");
    assert!(!released.replayed);
    assert_eq!(released.state, ReservationState::Released);
    let released_again = client.release("r-1").await.expect("release again");
    assert!(released_again.replayed, "released already");
    assert_eq!(released_again.latest().state, ReservationState::Released);

    // The checkout retried after its hold was released: the first answer
    // (HELD) and, beside it, what the reservation is now.
    let late = client.reserve(reserve()).await.expect("the reserve retried");
    assert!(late.replayed);
    assert_eq!(late.state, ReservationState::Held, "the first answer");
    let current = late.current.as_deref().expect("the current reservation");
    assert_eq!(current.state, ReservationState::Released);
    assert!(current.ended_at_ms > 0, "{current:?}");
    assert_eq!(late.latest().state, ReservationState::Released);
    assert_eq!(position(&client, "tee").await.reserved, 0, "a replay holds nothing");

    // Another payload under the same id is no replay but a refusal.
    let other = client.reserve(Reserve::new("r-1", "web").line("tee", "dc-1", 3)).await;
    assert!(matches!(other, Err(Error::IdReused { .. })), "{other:?}");

    // A reservation read is never a replay.
    let read = client.get_reservation("r-1").await.expect("get");
    assert_eq!((read.replayed, read.current.is_none()), (false, true));
}

#[tokio::test]
async fn commit_cancel_and_batch_answers_say_when_they_were_replayed() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee"], 5).await;
    client.reserve(Reserve::new("r-2", "web").line("tee", "dc-1", 1)).await.expect("reserve");

    let committed = client.commit("r-2").await.expect("commit");
    assert!(!committed.replayed);
    let committed_again = client.commit("r-2").await.expect("commit again");
    assert!(committed_again.replayed);
    assert_eq!(committed_again.latest().state, ReservationState::Committed);

    let cancelled = client.cancel("r-2").await.expect("cancel");
    assert!(!cancelled.replayed);
    let cancelled_again = client.cancel("r-2").await.expect("cancel again");
    assert!(cancelled_again.replayed);
    assert_eq!(cancelled_again.latest().state, ReservationState::Cancelled);

    // A batch item answers as a unary Reserve does.
    let batch = || {
        vec![
            Reserve::new("b-1", "web").line("tee", "dc-1", 1),
            Reserve::new("r-2", "web").line("tee", "dc-1", 1),
        ]
    };
    let results = client.reserve_many(batch()).await.expect("reserve many");
    let replayed: Vec<bool> =
        results.iter().map(|result| result.as_ref().expect("reserved").replayed).collect();
    assert_eq!(replayed, [false, true], "b-1 is new, r-2 was reserved before");
    let r2 = results[1].as_ref().expect("reserved");
    assert_eq!(r2.latest().state, ReservationState::Cancelled, "{r2:?}");
    let results = client.reserve_many(batch()).await.expect("reserve many again");
    assert!(results.iter().all(|result| result.as_ref().is_ok_and(|held| held.replayed)));
}

/// A reservation's lines as (sku, location, quantity), sorted.
fn lines_of(reservation: &Reservation) -> Vec<(&str, &str, i64)> {
    let mut lines: Vec<_> = reservation
        .lines
        .iter()
        .map(|line| (line.sku.as_str(), line.location_id.as_str(), line.quantity))
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn a_repeated_modify_is_replayed_and_its_refusals_are_typed() {
    let atpd = Atpd::start(&[]).await;
    let client = client(&atpd.endpoint(), RetryPolicy::never());
    configure(&client, &["tee", "mug"], 5).await;
    client.reserve(Reserve::new("r-3", "web").line("tee", "dc-1", 2)).await.expect("reserve");
    let change = || vec![Line::new("tee", "dc-1", 3), Line::new("mug", "dc-1", 1)];

    let changed = client.modify("r-3", "chg-1", change()).await.expect("modify");
    assert!(!changed.replayed, "the first change is not a replay");
    assert!(changed.current.is_none(), "{changed:?}");
    assert_eq!(changed.state, ReservationState::Held);
    assert_eq!(lines_of(&changed), [("mug", "dc-1", 1), ("tee", "dc-1", 3)]);
    assert_eq!(position(&client, "tee").await.reserved, 3);
    assert_eq!(position(&client, "mug").await.reserved, 1);

    let again = client.modify("r-3", "chg-1", change()).await.expect("the same modify");
    assert!(again.replayed, "the same request id and lines again is a replay");
    assert_eq!(lines_of(&again), lines_of(&changed), "the first answer");
    let current = again.current.as_deref().expect("a replay carries the current reservation");
    assert_eq!((current.state, current.replayed), (ReservationState::Held, false));
    assert_eq!(lines_of(current), lines_of(&changed));
    assert_eq!(position(&client, "tee").await.reserved, 3, "changed once");

    // The same request id with other lines is no replay but a refusal.
    let other = client.modify("r-3", "chg-1", vec![Line::new("tee", "dc-1", 1)]).await;
    assert!(matches!(other, Err(Error::IdReused { .. })), "{other:?}");

    // More than there is: typed, in terms of the whole line: 9 asked for,
    // 5 available to it (2 free + its own 3).
    let greedy = client.modify("r-3", "chg-2", vec![Line::new("tee", "dc-1", 9)]).await;
    let Err(Error::InsufficientStock { sku, location, requested, available, .. }) = greedy else {
        panic!("insufficient stock: {greedy:?}")
    };
    assert_eq!((sku.as_str(), location.as_str()), ("tee", "dc-1"));
    assert_eq!((requested, available), (9, 5), "the line's new quantity and what it could have");
    let now = client.get_reservation("r-3").await.expect("get");
    assert_eq!(lines_of(&now), lines_of(&changed), "nothing changed");
}
