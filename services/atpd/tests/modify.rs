//! ModifyReservation on the real `atpd` binary over real gRPC: a HELD
//! reservation's lines change all or nothing, keyed by a request id; 100
//! concurrent modifiers of one SKU never oversell; changes survive SIGKILL
//! at the highest complete version (see `docs/PROTOCOL.md`).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atp_proto::v1;
use common::Atpd;
use tonic::Code;
use tonic_types::StatusExt;

fn line(sku: &str, location: &str, quantity: i64) -> v1::ReservationLine {
    v1::ReservationLine { sku: sku.into(), location_id: location.into(), quantity }
}

fn reserve(id: &str, lines: Vec<v1::ReservationLine>) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines,
        ttl_seconds: 3600,
        metadata: Some(v1::ReservationMetadata {
            order_id: format!("order-{id}"),
            ..Default::default()
        }),
    }
}

fn modify(
    id: &str,
    request_id: &str,
    lines: Vec<v1::ReservationLine>,
) -> v1::ModifyReservationRequest {
    v1::ModifyReservationRequest { reservation_id: id.into(), request_id: request_id.into(), lines }
}

/// (sku, location) → (on_hand, reserved, atp).
async fn positions(atpd: &Atpd, skus: &[&str]) -> BTreeMap<(String, String), (i64, i64, i64)> {
    let request = v1::GetAvailabilityRequest {
        skus: skus.iter().map(|sku| (*sku).to_owned()).collect(),
        ..Default::default()
    };
    let reply = atpd.availability().get_availability(request).await.expect("availability");
    let mut positions = BTreeMap::new();
    for sku in reply.into_inner().skus {
        for location in sku.locations {
            positions.insert(
                (sku.sku.clone(), location.location_id.clone()),
                (location.on_hand, location.reserved, location.atp),
            );
        }
    }
    positions
}

/// A reservation's lines as (sku, location, quantity), sorted.
fn lines_of(reservation: &v1::Reservation) -> Vec<(String, String, i64)> {
    let mut lines: Vec<_> = reservation
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.location_id.clone(), l.quantity))
        .collect();
    lines.sort();
    lines
}

fn wire(lines: &[(String, String, i64)]) -> Vec<v1::ReservationLine> {
    lines.iter().map(|(sku, location, quantity)| line(sku, location, *quantity)).collect()
}

async fn get(atpd: &Atpd, id: &str) -> v1::Reservation {
    let request = v1::GetReservationRequest { reservation_id: id.into() };
    let reply = atpd.availability().get_reservation(request).await.expect("get");
    reply.into_inner().reservation.expect("a reservation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_replaces_the_lines_all_or_nothing_and_a_retry_is_replayed() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    atpd.receive("cap", "dc-2", 4).await;
    atpd.receive("mug", "dc-1", 3).await;
    let mut client = atpd.availability();
    let first = reserve("r-1", vec![line("tee", "dc-1", 2), line("cap", "dc-2", 1)]);
    client.reserve(first.clone()).await.expect("reserved");

    // More tees, no cap, a new mug line.
    let change = modify("r-1", "chg-1", vec![line("tee", "dc-1", 5), line("mug", "dc-1", 1)]);
    let changed = client.modify_reservation(change.clone()).await.expect("changed").into_inner();
    assert!(!changed.replayed);
    let reservation = changed.reservation.expect("the reservation");
    assert_eq!(reservation.state(), v1::ReservationState::Held);
    assert_eq!(
        lines_of(&reservation),
        vec![("mug".into(), "dc-1".into(), 1), ("tee".into(), "dc-1".into(), 5)]
    );
    assert_eq!(reservation.metadata.as_ref().map(|m| m.order_id.as_str()), Some("order-r-1"));
    // The freed cap and the new holds show at once.
    let now = positions(&atpd, &["tee", "cap", "mug"]).await;
    assert_eq!(now[&("tee".into(), "dc-1".into())], (10, 5, 5));
    assert_eq!(now[&("cap".into(), "dc-2".into())], (4, 0, 4));
    assert_eq!(now[&("mug".into(), "dc-1".into())], (3, 1, 2));

    // The Reserve sent again no longer matches the reservation's payload.
    let status = client.reserve(first).await.expect_err("the lines changed");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(status.get_details_error_info().expect("info").reason, "ID_REUSED");

    // A retry with the same key and lines is the first answer, marked.
    let again = client.modify_reservation(change).await.expect("replayed").into_inner();
    assert!(again.replayed);
    assert_eq!(again.reservation, Some(reservation.clone()));
    assert_eq!(positions(&atpd, &["tee"]).await[&("tee".into(), "dc-1".into())], (10, 5, 5));
    // The same key with other lines is refused.
    let other = modify("r-1", "chg-1", vec![line("tee", "dc-1", 1)]);
    let status = client.modify_reservation(other).await.expect_err("same key, other lines");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // More than there is: refused, and nothing changed anywhere.
    let greedy = modify("r-1", "chg-2", vec![line("tee", "dc-1", 11), line("mug", "dc-1", 1)]);
    let status = client.modify_reservation(greedy).await.expect_err("insufficient");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "INSUFFICIENT_STOCK");
    assert_eq!(lines_of(&get(&atpd, "r-1").await), lines_of(&reservation));
    let now = positions(&atpd, &["tee", "mug"]).await;
    assert_eq!(now[&("tee".into(), "dc-1".into())], (10, 5, 5));
    assert_eq!(now[&("mug".into(), "dc-1".into())], (3, 1, 2));

    // Commit takes the changed lines.
    let commit = v1::CommitRequest { reservation_id: "r-1".into(), lines: vec![] };
    let committed = client.commit(commit).await.expect("committed").into_inner();
    assert_eq!(
        lines_of(committed.reservation.as_ref().expect("reservation")),
        lines_of(&reservation)
    );
    let now = positions(&atpd, &["tee"]).await;
    assert_eq!(now[&("tee".into(), "dc-1".into())], (10, 0, 5));
    // A committed reservation does not change.
    let late = modify("r-1", "chg-3", vec![line("tee", "dc-1", 1)]);
    let status = client.modify_reservation(late).await.expect_err("committed");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.get_details_error_info().expect("info").reason, "WRONG_STATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_naming_the_field() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 10).await;
    let mut client = atpd.availability();
    client.reserve(reserve("r-1", vec![line("tee", "dc-1", 2)])).await.expect("reserved");
    let cases = [
        (modify("r-1", "", vec![line("tee", "dc-1", 1)]), "request_id"),
        (modify("r-1", "k", vec![]), "lines"),
        (modify("r-1", "k", vec![line("tee", "dc-1", 0)]), "lines[0].quantity"),
        (modify("", "k", vec![line("tee", "dc-1", 1)]), "reservation_id"),
        (modify("r-1", "k", vec![line("tee", "dc-1", 1), line("tee", "dc-1", 2)]), "lines[1]"),
        (modify("r-1", "k", vec![line("tee", "nowhere", 1)]), "lines[0].location_id"),
    ];
    for (request, field) in cases {
        let status = client.modify_reservation(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert!(fields.iter().any(|f| f.starts_with(field)), "{field}: {fields:?}");
    }
    let status = client
        .modify_reservation(modify("nobody", "k", vec![line("tee", "dc-1", 1)]))
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(lines_of(&get(&atpd, "r-1").await), vec![("tee".into(), "dc-1".into(), 2)]);
    assert_eq!(positions(&atpd, &["tee"]).await[&("tee".into(), "dc-1".into())], (10, 2, 8));
}

/// 100 tasks keep changing reservations of one SKU — each its own, and
/// every tenth racing a neighbour on the same one — while a reader checks
/// that reserved never exceeds on-hand. At the end the position holds
/// exactly the sum of the reservations' lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_modifiers_of_one_sku_never_oversell() {
    const MODIFIERS: usize = 100;
    const ROUNDS: usize = 8;
    const STOCK: i64 = 150;
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", STOCK).await;
    let client = atpd.availability();
    let reservations = MODIFIERS - MODIFIERS / 10;
    for index in 0..reservations {
        let request = reserve(&format!("r-{index}"), vec![line("tee", "dc-1", 1)]);
        client.clone().reserve(request).await.expect("reserved");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, atpd_positions) = (Arc::clone(&stop), atpd.availability());
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let request =
                    v1::GetAvailabilityRequest { skus: vec!["tee".into()], ..Default::default() };
                let reply = atpd_positions.clone().get_availability(request).await.expect("read");
                for sku in reply.into_inner().skus {
                    for location in sku.locations {
                        assert!(
                            location.reserved + location.committed <= location.on_hand,
                            "oversold: {location:?}"
                        );
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    let mut tasks = Vec::new();
    for modifier in 0..MODIFIERS {
        // The last tenth race the first reservations.
        let id = format!("r-{}", modifier % reservations);
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut applied, mut refused) = (0, 0);
            for round in 0..ROUNDS {
                let quantity = 1 + ((modifier * 7 + round * 3) % 4) as i64;
                let request = modify(
                    &id,
                    &format!("m{modifier}-{round}"),
                    vec![line("tee", "dc-1", quantity)],
                );
                match client.modify_reservation(request).await {
                    Ok(_) => applied += 1,
                    Err(status) => {
                        let reason = status.get_details_error_info().map(|i| i.reason);
                        assert!(
                            matches!(
                                reason.as_deref(),
                                Some("INSUFFICIENT_STOCK" | "IN_PROGRESS" | "OVERLOADED")
                            ),
                            "{id}: {status:?}"
                        );
                        refused += 1;
                    }
                }
            }
            (applied, refused)
        }));
    }
    let (mut applied, mut refused) = (0, 0);
    for task in tasks {
        let (a, r) = task.await.expect("modifier");
        applied += a;
        refused += r;
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.expect("reader");
    assert!(applied > MODIFIERS, "most changes apply: {applied} applied, {refused} refused");
    assert!(refused > 0, "stock ran short at times: {applied} applied, {refused} refused");
    assert!(reads > 0);

    let mut held = 0;
    for index in 0..reservations {
        let reservation = get(&atpd, &format!("r-{index}")).await;
        assert_eq!(reservation.state(), v1::ReservationState::Held);
        held += reservation.lines.iter().map(|l| l.quantity).sum::<i64>();
    }
    let (on_hand, reserved, atp) = positions(&atpd, &["tee"]).await[&("tee".into(), "dc-1".into())];
    assert_eq!((on_hand, reserved, atp), (STOCK, held, STOCK - held));
}

/// Changes keep running while the node is SIGKILLed at a random moment:
/// after the restart every reservation has the lines of its last
/// acknowledged change or of the one in flight at the kill (the highest
/// complete version), and the positions hold exactly what the reservations
/// say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_survive_sigkill_at_the_highest_complete_version() {
    const RESERVATIONS: usize = 20;
    let data = tempfile::tempdir().expect("data directory");
    let skus = ["tee", "cap", "mug"];
    let mut acked: BTreeMap<String, Vec<(String, String, i64)>> = BTreeMap::new();
    let mut in_flight: BTreeMap<String, Vec<(String, String, i64)>> = BTreeMap::new();
    let mut seed = 0x9e37_79b9_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    {
        let atpd = Atpd::start_in(data.path(), &[]).await;
        atpd.configure_web(&["dc-1", "dc-2"], &["dc-1", "dc-2"]).await;
        for sku in skus {
            atpd.receive(sku, "dc-1", 200).await;
            atpd.receive(sku, "dc-2", 200).await;
        }
        for index in 0..RESERVATIONS {
            let id = format!("r-{index}");
            let lines = vec![line("tee", "dc-1", 1), line("cap", "dc-2", 1)];
            let reply = atpd.availability().reserve(reserve(&id, lines)).await.expect("reserved");
            acked.insert(id, lines_of(&reply.into_inner().reservation.expect("reservation")));
        }
    }
    for round in 0..3 {
        let mut atpd = Atpd::start_in(data.path(), &[]).await;
        // Changes from several tasks; the kill lands after a random number of answers.
        let kill_after = 20 + next() % 60;
        let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for task in 0..4 {
            let client = atpd.availability();
            let sender = sender.clone();
            let mut plans = Vec::new();
            for step in 0..100 {
                let id = format!("r-{}", (task + step * 4) % RESERVATIONS);
                let mut lines = Vec::new();
                for (at, sku) in skus.iter().enumerate() {
                    let quantity = ((step + at + task + round) % 3) as i64;
                    if quantity > 0 {
                        let location = if (step + at) % 2 == 0 { "dc-1" } else { "dc-2" };
                        lines.push(((*sku).to_owned(), location.to_owned(), quantity));
                    }
                }
                if lines.is_empty() {
                    lines.push(("mug".into(), "dc-1".into(), 1));
                }
                lines.sort();
                plans.push((id, format!("k{round}-{task}-{step}"), lines));
            }
            tasks.push(tokio::spawn(async move {
                for (id, key, lines) in plans {
                    sender.send((id.clone(), lines.clone(), None)).expect("collector");
                    let answer =
                        client.clone().modify_reservation(modify(&id, &key, wire(&lines))).await;
                    let ok = answer.is_ok();
                    if sender.send((id, lines, Some(ok))).is_err() || !ok {
                        return;
                    }
                }
            }));
        }
        drop(sender);
        let mut answered = 0;
        while let Some((id, lines, outcome)) = answers.recv().await {
            match outcome {
                None => {
                    in_flight.insert(id, lines);
                }
                Some(true) => {
                    in_flight.remove(&id);
                    acked.insert(id, lines);
                    answered += 1;
                    if answered == kill_after {
                        atpd.kill();
                        break;
                    }
                }
                // Refused or cut by the kill: the change may or may not be there.
                Some(false) => {}
            }
        }
        atpd.kill();
        for task in tasks {
            let _ = task.await;
        }
        while let Ok((id, lines, outcome)) = answers.try_recv() {
            if outcome.is_none() {
                in_flight.insert(id, lines);
            }
        }

        let atpd = Atpd::start_in(data.path(), &[]).await;
        let mut totals: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (id, last) in acked.clone() {
            let reservation = get(&atpd, &id).await;
            assert_eq!(reservation.state(), v1::ReservationState::Held, "{id}");
            let now = lines_of(&reservation);
            let pending = in_flight.remove(&id);
            assert!(
                now == last || Some(&now) == pending.as_ref(),
                "round {round}: {id} has {now:?}; acknowledged {last:?}, in flight {pending:?}"
            );
            acked.insert(id, now.clone());
            for (sku, location, quantity) in now {
                *totals.entry((sku, location)).or_default() += quantity;
            }
        }
        in_flight.clear();
        for ((sku, location), (on_hand, reserved, _)) in positions(&atpd, &skus).await {
            let held = totals.get(&(sku.clone(), location.clone())).copied().unwrap_or(0);
            assert_eq!(
                reserved, held,
                "round {round}: {sku}/{location} holds what the reservations say"
            );
            assert_eq!(on_hand, 200);
        }
    }
}
