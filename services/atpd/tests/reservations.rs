//! The reservation API of issue 9 on the real `atpd` binary over real gRPC:
//! caller metadata, replies to replays (`replayed` + the reservation now),
//! Extend keyed by a request id, GetReservations and ListReservations
//! (paging, filters, bounds, and a scan under concurrent writes).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atp_proto::v1;
use common::Atpd;
use tonic::Code;
use tonic_types::StatusExt;

fn reserve(
    id: &str,
    sku: &str,
    location: &str,
    metadata: Option<v1::ReservationMetadata>,
) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: location.into(),
            quantity: 1,
        }],
        ttl_seconds: 0,
        metadata,
    }
}

fn metadata(order_id: &str, labels: &[(&str, &str)]) -> v1::ReservationMetadata {
    v1::ReservationMetadata {
        order_id: order_id.into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
    bad_request.field_violations.into_iter().map(|violation| violation.field).collect()
}

fn state(reservation: &Option<v1::Reservation>) -> v1::ReservationState {
    reservation.as_ref().expect("a reservation").state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_replays_say_so_and_show_the_reservation_now() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    let request = reserve("order-1", "tee", "dc-1", Some(metadata("cart-9", &[("team", "a")])));

    let first = client.reserve(request.clone()).await.expect("reserved").into_inner();
    assert!(!first.replayed && first.current.is_none(), "{first:?}");
    let shown = first.reservation.as_ref().and_then(|r| r.metadata.clone()).expect("metadata");
    assert_eq!(shown, metadata("cart-9", &[("team", "a")]));

    let again = client.reserve(request.clone()).await.expect("replayed").into_inner();
    assert!(again.replayed);
    assert_eq!(again.reservation, first.reservation, "the first answer");
    assert_eq!(state(&again.current), v1::ReservationState::Held);

    let released = client
        .release(v1::ReleaseRequest { reservation_id: "order-1".into() })
        .await
        .expect("released")
        .into_inner();
    assert!(!released.replayed);
    let released_again = client
        .release(v1::ReleaseRequest { reservation_id: "order-1".into() })
        .await
        .expect("replayed")
        .into_inner();
    assert!(released_again.replayed);
    assert_eq!(state(&released_again.current), v1::ReservationState::Released);

    // The case of the issue: a retried Reserve after a Release.
    let late = client.reserve(request.clone()).await.expect("replayed").into_inner();
    assert!(late.replayed);
    assert_eq!(state(&late.reservation), v1::ReservationState::Held, "the first answer");
    assert_eq!(state(&late.current), v1::ReservationState::Released, "the reservation now");
    assert_eq!(late.current.and_then(|r| r.metadata), Some(shown.clone()));

    // Metadata is part of the payload.
    let other = reserve("order-1", "tee", "dc-1", Some(metadata("cart-10", &[])));
    let refused = client.reserve(other).await.expect_err("another payload");
    assert_eq!(refused.code(), Code::AlreadyExists);

    // ReserveBatch items say so too.
    let batch = v1::ReserveBatchRequest {
        reservations: vec![request.clone(), reserve("order-2", "tee", "dc-1", None)],
    };
    let results = client.reserve_batch(batch).await.expect("batch").into_inner().results;
    let reserved = |index: usize| match &results[index].outcome {
        Some(v1::reserve_batch_result::Outcome::Reserved(response)) => response.clone(),
        other => panic!("item {index}: {other:?}"),
    };
    assert!(reserved(0).replayed);
    assert_eq!(state(&reserved(0).current), v1::ReservationState::Released);
    assert!(!reserved(1).replayed);

    // Commit replays too.
    let commit = v1::CommitRequest { reservation_id: "order-2".into(), lines: vec![] };
    let committed = client.commit(commit.clone()).await.expect("committed").into_inner();
    assert!(!committed.replayed);
    let committed_again = client.commit(commit).await.expect("replayed").into_inner();
    assert!(committed_again.replayed);
    assert_eq!(committed_again.reservation, committed.reservation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_refused_naming_the_field_and_writes_nothing() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    let too_many: Vec<(String, String)> =
        (0..9).map(|n| (format!("k{n}"), "v".to_owned())).collect();
    let cases = [
        (metadata(&"o".repeat(129), &[]), "metadata.order_id"),
        (metadata("o\n", &[]), "metadata.order_id"),
        (
            v1::ReservationMetadata {
                order_id: String::new(),
                labels: too_many.into_iter().collect(),
            },
            "metadata.labels",
        ),
        (metadata("", &[("bad key", "v")]), "metadata.labels[\"bad key\"]"),
        (metadata("", &[("", "v")]), "metadata.labels[\"\"]"),
    ];
    for (bad, field) in cases {
        let status = client
            .reserve(reserve("order-bad", "tee", "dc-1", Some(bad)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_fields(&status), vec![field.to_owned()]);
    }
    let long_value = metadata("", &[("k", &"v".repeat(129))]);
    let status = client
        .reserve(reserve("order-bad", "tee", "dc-1", Some(long_value)))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let missing = client
        .get_reservation(v1::GetReservationRequest { reservation_id: "order-bad".into() })
        .await
        .expect_err("nothing was written");
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_keyed_by_a_request_id_moves_the_expiry_once() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    client.reserve(reserve("order-1", "tee", "dc-1", None)).await.expect("reserved");
    let extend = |request_id: &str, ttl_seconds| v1::ExtendReservationRequest {
        reservation_id: "order-1".into(),
        ttl_seconds,
        request_id: request_id.into(),
    };
    let first =
        client.extend_reservation(extend("ext-1", 600)).await.expect("extended").into_inner();
    assert!(!first.replayed);
    let again =
        client.extend_reservation(extend("ext-1", 600)).await.expect("replayed").into_inner();
    assert!(again.replayed);
    assert_eq!(again.reservation, first.reservation, "the first answer: the expiry did not move");
    assert_eq!(again.current, first.reservation);
    let other = client.extend_reservation(extend("ext-1", 700)).await.expect_err("another ttl");
    assert_eq!(other.code(), Code::AlreadyExists);
    let bad = client.extend_reservation(extend("ext\n", 700)).await.expect_err("a bad key");
    assert_eq!(bad_fields(&bad), vec!["request_id".to_owned()]);
    // After a Commit, a retry of the Extend still gets its answer, beside the order.
    client
        .commit(v1::CommitRequest { reservation_id: "order-1".into(), lines: vec![] })
        .await
        .expect("committed");
    let late =
        client.extend_reservation(extend("ext-1", 600)).await.expect("replayed").into_inner();
    assert!(late.replayed);
    assert_eq!(state(&late.reservation), v1::ReservationState::Held);
    assert_eq!(state(&late.current), v1::ReservationState::Committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reservations_answers_each_id_in_order() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    for id in ["a", "b"] {
        client.reserve(reserve(id, "tee", "dc-1", None)).await.expect("reserved");
    }
    let ids = ["b", "missing", "a", "b"].map(String::from).to_vec();
    let request = v1::GetReservationsRequest { reservation_ids: ids };
    let response = client.get_reservations(request).await.expect("answered").into_inner();
    let outcomes: Vec<Result<String, i32>> = response
        .results
        .into_iter()
        .map(|result| match result.outcome {
            Some(v1::get_reservation_result::Outcome::Reservation(r)) => Ok(r.reservation_id),
            Some(v1::get_reservation_result::Outcome::Error(status)) => Err(status.code),
            None => panic!("no outcome"),
        })
        .collect();
    let not_found = Code::NotFound as i32;
    assert_eq!(outcomes, vec![Ok("b".into()), Err(not_found), Ok("a".into()), Ok("b".into())]);

    for (ids, field) in [
        (vec![], "reservation_ids"),
        ((0..101).map(|n| format!("r{n}")).collect(), "reservation_ids"),
        (vec!["ok".into(), "".into()], "reservation_ids[1]"),
    ] {
        let status = client
            .get_reservations(v1::GetReservationsRequest { reservation_ids: ids })
            .await
            .expect_err("refused");
        assert_eq!(bad_fields(&status), vec![field.to_owned()]);
    }
}

/// Every page of a scan with `request`'s filters, `page_size` at a time.
async fn scan(atpd: &Atpd, mut request: v1::ListReservationsRequest) -> Vec<v1::Reservation> {
    let mut client = atpd.availability();
    let mut all = Vec::new();
    loop {
        let page = client.list_reservations(request.clone()).await.expect("a page").into_inner();
        let limit = if request.page_size == 0 { 100 } else { request.page_size.min(1_000) };
        assert!(page.reservations.len() <= limit as usize, "a page is bounded by its size");
        all.extend(page.reservations);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

fn ids(reservations: &[v1::Reservation]) -> Vec<String> {
    reservations.iter().map(|r| r.reservation_id.clone()).collect()
}

/// What the listing test made of a reservation: its sku, whether it was
/// released, its order id.
type Made = (String, bool, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reservations_pages_through_every_match_once() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 1_000).await;
    atpd.receive("mug", "dc-2", 1_000).await;
    let mut client = atpd.availability();
    let mut expected: BTreeMap<String, Made> = BTreeMap::new();
    let mut batch = Vec::new();
    for n in 0..120 {
        let id = format!("r-{n}");
        let (sku, location) = if n % 3 == 0 { ("mug", "dc-2") } else { ("tee", "dc-1") };
        let order = format!("order-{}", n % 10);
        let labels: &[(&str, &str)] = if n % 2 == 0 { &[("parity", "even")] } else { &[] };
        batch.push(reserve(&id, sku, location, Some(metadata(&order, labels))));
        expected.insert(id, (sku.to_owned(), n % 4 == 0, order));
    }
    client.reserve_batch(v1::ReserveBatchRequest { reservations: batch }).await.expect("reserved");
    for (id, (_, released, _)) in &expected {
        if *released {
            client
                .release(v1::ReleaseRequest { reservation_id: id.clone() })
                .await
                .expect("released");
        }
    }
    let all = scan(&atpd, v1::ListReservationsRequest { page_size: 7, ..Default::default() }).await;
    let seen = ids(&all);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len(), "each once");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected.keys().cloned().collect());

    let filtered = |request: v1::ListReservationsRequest| async {
        let mut found = ids(&scan(&atpd, request).await);
        found.sort();
        found
    };
    let matching = |keep: &dyn Fn(&Made, &str) -> bool| {
        expected.iter().filter(|(id, v)| keep(v, id)).map(|(id, _)| id.clone()).collect::<Vec<_>>()
    };
    let held = v1::ReservationState::Held as i32;
    let request =
        v1::ListReservationsRequest { states: vec![held], page_size: 5, ..Default::default() };
    assert_eq!(filtered(request).await, matching(&|(_, released, _), _| !released));
    let request = v1::ListReservationsRequest { sku: "mug".into(), ..Default::default() };
    assert_eq!(filtered(request).await, matching(&|(sku, _, _), _| sku == "mug"));
    let request = v1::ListReservationsRequest { location_id: "dc-1".into(), ..Default::default() };
    assert_eq!(filtered(request).await, matching(&|(sku, _, _), _| sku == "tee"));
    let request = v1::ListReservationsRequest { order_id: "order-3".into(), ..Default::default() };
    assert_eq!(filtered(request).await, matching(&|(_, _, order), _| order == "order-3"));
    let request = v1::ListReservationsRequest {
        labels: [("parity".to_owned(), "even".to_owned())].into(),
        channel_id: "web".into(),
        ..Default::default()
    };
    let even = |id: &str| id.trim_start_matches("r-").parse::<u32>().expect("a number") % 2 == 0;
    assert_eq!(filtered(request).await, matching(&|_, id| even(id)));
    let request = v1::ListReservationsRequest { channel_id: "other".into(), ..Default::default() };
    assert!(filtered(request).await.is_empty());

    let bad = v1::ListReservationsRequest { page_token: "00ff".into(), ..Default::default() };
    let status = client.list_reservations(bad).await.expect_err("a token we never wrote");
    assert_eq!(bad_fields(&status), vec!["page_token".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_under_concurrent_writes_shows_every_survivor_exactly_once() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 1_000_000).await;
    let mut client = atpd.availability();
    let stable: Vec<String> = (0..1_500).map(|n| format!("stable-{n}")).collect();
    for chunk in stable.chunks(500) {
        let reservations = chunk.iter().map(|id| reserve(id, "tee", "dc-1", None)).collect();
        client.reserve_batch(v1::ReserveBatchRequest { reservations }).await.expect("reserved");
    }
    // Writers create and release other reservations all through the scan.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let mut client = atpd.availability();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("churn-{writer}-{n}");
                    client.reserve(reserve(&id, "tee", "dc-1", None)).await.expect("reserved");
                    if n % 2 == 0 {
                        let release = v1::ReleaseRequest { reservation_id: id };
                        client.release(release).await.expect("released");
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let all =
        scan(&atpd, v1::ListReservationsRequest { page_size: 40, ..Default::default() }).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    assert!(written > 0, "the writers ran during the scan");
    let seen = ids(&all);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no reservation twice");
    for id in &stable {
        assert!(unique.contains(id), "{id} lived through the scan and was not shown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_a_keyed_extend_survive_sigkill() {
    let data = tempfile::tempdir().expect("data directory");
    let mut atpd = Atpd::start_in(data.path(), &[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    let labelled = metadata("cart-1", &[("team", "b")]);
    let request = reserve("order-1", "tee", "dc-1", Some(labelled.clone()));
    client.reserve(request.clone()).await.expect("reserved");
    let extend = v1::ExtendReservationRequest {
        reservation_id: "order-1".into(),
        ttl_seconds: 600,
        request_id: "ext-1".into(),
    };
    let extended = client.extend_reservation(extend.clone()).await.expect("extended").into_inner();

    atpd.kill();
    let atpd = Atpd::start_in(data.path(), &[]).await;
    let mut client = atpd.availability();
    let get = v1::GetReservationRequest { reservation_id: "order-1".into() };
    let found = client.get_reservation(get).await.expect("found").into_inner().reservation;
    assert_eq!(found.and_then(|r| r.metadata), Some(labelled.clone()));
    let again = client.extend_reservation(extend).await.expect("replayed").into_inner();
    assert!(again.replayed, "the keyed Extend is remembered across the crash");
    assert_eq!(again.reservation, extended.reservation);
    let replay = client.reserve(request).await.expect("replayed").into_inner();
    assert!(replay.replayed);
    let listed = scan(
        &atpd,
        v1::ListReservationsRequest { order_id: "cart-1".into(), ..Default::default() },
    )
    .await;
    assert_eq!(ids(&listed), vec!["order-1".to_owned()]);
}
