//! ReserveBatch over real gRPC against the real `atpd` binary: every item is a
//! Reserve of its own, with its own result in request order and the same
//! error mapping as the unary call.

mod common;

use atp_proto::v1;
use atp_proto::v1::reserve_batch_result::Outcome;
use common::Atpd;
use tonic::Code;
use tonic_types::{RpcStatusExt, StatusExt};

fn reserve(id: &str, sku: &str, location: &str, quantity: i64) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: location.into(),
            quantity,
        }],
        ttl_seconds: 600,
        metadata: None,
    }
}

fn reserved(result: &v1::ReserveBatchResult) -> &v1::Reservation {
    match &result.outcome {
        Some(Outcome::Reserved(response)) => {
            response.reservation.as_ref().expect("a reserved item carries its reservation")
        }
        other => panic!("not reserved: {other:?}"),
    }
}

fn error(result: &v1::ReserveBatchResult) -> &tonic_types::pb::Status {
    match &result.outcome {
        Some(Outcome::Error(status)) => status,
        other => panic!("not an error: {other:?}"),
    }
}

fn bad_fields(status: &tonic_types::pb::Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
    bad_request.field_violations.into_iter().map(|violation| violation.field).collect()
}

async fn reserved_at_dc1(atpd: &Atpd, sku: &str) -> (i64, i64) {
    let request = v1::GetAvailabilityRequest { skus: vec![sku.into()], ..Default::default() };
    let response = atpd.availability().get_availability(request).await.expect("availability");
    let sku = &response.get_ref().skus[0];
    let position = sku.locations.iter().find(|position| position.location_id == "dc-1");
    let position = position.expect("a position at dc-1");
    (position.reserved, position.atp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_item_gets_its_own_result_in_request_order() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1"]).await;
    atpd.receive("mug", "dc-1", 5).await;
    atpd.receive("tee", "dc-1", 2).await;
    let mut client = atpd.availability();
    let first = client.reserve(reserve("prior", "mug", "dc-1", 1)).await.expect("unary reserve");
    let first = first.into_inner().reservation.expect("a reservation");

    let reservations = vec![
        reserve("b-1", "mug", "dc-1", 2),
        // More tee than there is.
        reserve("b-2", "tee", "dc-1", 3),
        // Malformed: no id, quantity 0.
        reserve("", "mug", "dc-1", 0),
        // A retry of the unary Reserve above: its first answer again.
        reserve("prior", "mug", "dc-1", 1),
        reserve("b-3", "tee", "dc-1", 2),
        // A retry of item 0 within the same call.
        reserve("b-1", "mug", "dc-1", 2),
        // dc-2 does not feed `web`: the node's own check, named from the root.
        reserve("b-4", "mug", "dc-2", 1),
        // The id of the unary Reserve with another payload.
        reserve("prior", "mug", "dc-1", 2),
    ];
    let request = v1::ReserveBatchRequest { reservations };
    let results = client.reserve_batch(request).await.expect("reserve batch").into_inner().results;
    assert_eq!(results.len(), 8, "{results:?}");

    let b1 = reserved(&results[0]);
    assert_eq!((b1.reservation_id.as_str(), b1.state()), ("b-1", v1::ReservationState::Held));
    assert_eq!(b1.lines[0].quantity, 2);

    let short = error(&results[1]);
    assert_eq!(Code::from(short.code), Code::FailedPrecondition, "{short:?}");
    for part in ["tee", "dc-1", "requested 3", "available 2"] {
        assert!(short.message.contains(part), "{part} missing in {}", short.message);
    }
    let failure = short.get_details_precondition_failure().expect("a PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, atp_proto::status::INSUFFICIENT_STOCK);

    let malformed = error(&results[2]);
    assert_eq!(Code::from(malformed.code), Code::InvalidArgument, "{malformed:?}");
    assert_eq!(
        bad_fields(malformed),
        vec!["reservations[2].reservation_id", "reservations[2].lines[0].quantity"]
    );

    assert_eq!(reserved(&results[3]), &first, "a retry returns the first answer");
    assert_eq!(reserved(&results[4]).reservation_id, "b-3");
    assert_eq!(reserved(&results[5]), b1, "a repeat within the call returns the first answer");

    let not_fed = error(&results[6]);
    assert_eq!(Code::from(not_fed.code), Code::InvalidArgument, "{not_fed:?}");
    assert_eq!(bad_fields(not_fed), vec!["reservations[6].lines[0].location_id"]);

    let reused = error(&results[7]);
    assert_eq!(Code::from(reused.code), Code::AlreadyExists, "{reused:?}");

    // What the batch held, and nothing of what it refused.
    assert_eq!(reserved_at_dc1(&atpd, "mug").await, (3, 2));
    assert_eq!(reserved_at_dc1(&atpd, "tee").await, (2, 0));
    for refused in ["b-2", "b-4"] {
        let request = v1::GetReservationRequest { reservation_id: refused.into() };
        let status = client.get_reservation(request).await.expect_err("refused: stored nothing");
        assert_eq!(status.code(), Code::NotFound, "{refused}: {status:?}");
    }
    let request = v1::GetReservationRequest { reservation_id: "b-3".into() };
    let b3 = client.get_reservation(request).await.expect("b-3 is stored").into_inner();
    assert_eq!(b3.reservation.expect("a reservation").state(), v1::ReservationState::Held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_oversized_batch_is_refused_as_a_whole() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1"]).await;
    atpd.receive("mug", "dc-1", 5).await;
    let mut client = atpd.availability();

    let empty = v1::ReserveBatchRequest { reservations: Vec::new() };
    let status = client.reserve_batch(empty).await.expect_err("an empty batch");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<_> = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect();
    assert_eq!(fields, vec!["reservations"]);

    let limit = atp_proto::requests::MAX_RESERVATIONS_PER_BATCH;
    let reservations =
        (0..=limit).map(|index| reserve(&format!("big-{index}"), "mug", "dc-1", 1)).collect();
    let request = v1::ReserveBatchRequest { reservations };
    let status = client.reserve_batch(request).await.expect_err("one over the limit");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("reservations"), "{}", status.message());
    assert_eq!(reserved_at_dc1(&atpd, "mug").await, (0, 5), "nothing was held");

    // Exactly at the limit: every item answered, in order.
    let reservations =
        (0..limit).map(|index| reserve(&format!("full-{index}"), "mug", "dc-1", 1)).collect();
    let request = v1::ReserveBatchRequest { reservations };
    let results = client.reserve_batch(request).await.expect("a full batch").into_inner().results;
    assert_eq!(results.len(), limit);
    let held = results.iter().filter(|result| matches!(result.outcome, Some(Outcome::Reserved(_))));
    assert_eq!(held.count(), 5, "five units, five holds");
    for (index, result) in results.iter().enumerate() {
        if let Some(Outcome::Reserved(response)) = &result.outcome {
            let reservation = response.reservation.as_ref().expect("a reservation");
            assert_eq!(reservation.reservation_id, format!("full-{index}"));
        } else {
            assert_eq!(Code::from(error(result).code), Code::FailedPrecondition, "{result:?}");
        }
    }
    assert_eq!(reserved_at_dc1(&atpd, "mug").await, (5, 0));
}
