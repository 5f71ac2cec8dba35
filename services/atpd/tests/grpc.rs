//! The real `atpd` binary over real gRPC: races, multi-shard all-or-nothing,
//! input validation, expiry, the reservation lifecycle, admin calls, health,
//! reflection and a clean SIGTERM.

mod common;

use std::time::Duration;

use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_proto::v1::get_shard_request::Target;
use common::{Atpd, eventually};
use futures::future::join_all;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// Long enough for a loaded 2-core machine; conditions are polled, not waited out.
const DEADLINE: Duration = Duration::from_secs(10);

fn line(sku: &str, location: &str, quantity: i64) -> v1::ReservationLine {
    v1::ReservationLine { sku: sku.into(), location_id: location.into(), quantity }
}

fn reserve_request(id: &str, lines: Vec<v1::ReservationLine>) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines,
        ttl_seconds: 0,
        metadata: None,
    }
}

async fn availability(atpd: &Atpd, sku: &str) -> v1::SkuAvailability {
    let request = v1::GetAvailabilityRequest { skus: vec![sku.into()], ..Default::default() };
    let mut response = atpd.availability().get_availability(request).await.expect("availability");
    response.get_mut().skus.remove(0)
}

fn at<'a>(availability: &'a v1::SkuAvailability, location: &str) -> &'a v1::LocationAvailability {
    availability
        .locations
        .iter()
        .find(|position| position.location_id == location)
        .unwrap_or_else(|| panic!("no position at {location}: {availability:?}"))
}

fn channel_atp(availability: &v1::SkuAvailability, channel: &str) -> i64 {
    let found = availability.channels.iter().find(|c| c.channel_id == channel);
    found.unwrap_or_else(|| panic!("no channel {channel}: {availability:?}")).atp
}

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
    bad_request.field_violations.into_iter().map(|violation| violation.field).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_race_for_the_last_fifty_units() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    atpd.receive("last-units", "dc-1", 30).await;
    atpd.receive("last-units", "dc-2", 20).await;

    let attempts = (0..200).map(|client| {
        let address = atpd.address;
        tokio::spawn(async move {
            let location = if client % 2 == 0 { "dc-1" } else { "dc-2" };
            let request =
                reserve_request(&format!("race-{client}"), vec![line("last-units", location, 1)]);
            let uri = format!("http://{address}");
            let mut client =
                v1::availability_service_client::AvailabilityServiceClient::connect(uri)
                    .await
                    .expect("connect");
            let outcome = client.reserve(request.clone()).await.map(tonic::Response::into_inner);
            (request, location, outcome)
        })
    });
    let outcomes: Vec<_> =
        join_all(attempts).await.into_iter().map(|joined| joined.expect("client task")).collect();

    let mut won = Vec::new();
    let mut won_at = [0, 0];
    for (request, location, outcome) in outcomes {
        match outcome {
            Ok(response) => {
                won_at[usize::from(location == "dc-2")] += 1;
                won.push((request, response));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(status.message().contains("last-units"), "{}", status.message());
            }
        }
    }
    assert_eq!(won.len(), 50, "exactly the last 50 units are promised");
    assert_eq!(won_at, [30, 20], "each location promises exactly what it has");

    let after = availability(&atpd, "last-units").await;
    let reserved: i64 = after.locations.iter().map(|position| position.reserved).sum();
    assert_eq!(reserved, 50);
    assert!(after.locations.iter().all(|position| position.atp == 0), "{after:?}");
    assert_eq!(channel_atp(&after, "web"), 0);

    let mut client = atpd.availability();
    let (request, first) = &won[0];
    let retried = client.reserve(request.clone()).await.expect("a retry is accepted");
    assert_eq!(
        retried.get_ref().reservation,
        first.reservation,
        "a retry returns the first answer"
    );
    assert!(retried.get_ref().replayed, "and says it is a replay");

    let mut changed = request.clone();
    changed.lines[0].quantity = 2;
    let status = client.reserve(changed).await.expect_err("same id, other payload");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let after_retries = availability(&atpd, "last-units").await;
    assert_eq!(after_retries.locations.iter().map(|position| position.reserved).sum::<i64>(), 50);
}

/// Two SKUs whose positions live on different shards.
fn skus_on_two_shards() -> (String, String) {
    let first = "split-a".to_owned();
    let second = (0..)
        .map(|n| format!("split-b-{n}"))
        .find(|sku| shard_of(sku) != shard_of(&first))
        .expect("some sku hashes elsewhere");
    (first, second)
}

#[tokio::test]
async fn a_reservation_across_shards_holds_all_or_nothing() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    let (plenty, scarce) = skus_on_two_shards();
    atpd.receive(&plenty, "dc-1", 10).await;
    atpd.receive(&scarce, "dc-1", 1).await;

    let mut client = atpd.availability();
    let request =
        reserve_request("split-1", vec![line(&plenty, "dc-1", 5), line(&scarce, "dc-1", 3)]);
    let status = client.reserve(request).await.expect_err("one line lacks stock");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for part in [scarce.as_str(), "dc-1", "requested 3", "available 1"] {
        assert!(status.message().contains(part), "{part:?} missing in {}", status.message());
    }
    let failure = status.get_details_precondition_failure().expect("a PreconditionFailure");
    assert_eq!(failure.violations[0].r#type, "INSUFFICIENT_STOCK");

    for (sku, on_hand) in [(&plenty, 10), (&scarce, 1)] {
        let position = availability(&atpd, sku).await;
        assert_eq!(at(&position, "dc-1").reserved, 0, "nothing held on {sku}");
        assert_eq!(at(&position, "dc-1").atp, on_hand);
    }
    let request = v1::GetReservationRequest { reservation_id: "split-1".into() };
    let status =
        client.get_reservation(request).await.expect_err("a refused reserve stores nothing");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn malformed_requests_name_the_bad_field() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    atpd.receive("tee", "dc-1", 5).await;
    let mut client = atpd.availability();

    let many_lines = (0..10_000).map(|n| line(&format!("s{n}"), "dc-1", 1)).collect();
    let cases: Vec<(&str, v1::ReserveRequest, &str)> = vec![
        ("empty sku", reserve_request("bad-1", vec![line("", "dc-1", 1)]), "lines[0].sku"),
        ("quantity 0", reserve_request("bad-2", vec![line("tee", "dc-1", 0)]), "lines[0].quantity"),
        (
            "quantity -5",
            reserve_request("bad-3", vec![line("tee", "dc-1", -5)]),
            "lines[0].quantity",
        ),
        ("10,000 lines", reserve_request("bad-4", many_lines), "lines"),
        (
            "1 MB sku",
            reserve_request("bad-5", vec![line(&"x".repeat(1_000_000), "dc-1", 1)]),
            "lines[0].sku",
        ),
        (
            "unknown channel",
            v1::ReserveRequest {
                channel_id: "nowhere".into(),
                ..reserve_request("bad-6", vec![line("tee", "dc-1", 1)])
            },
            "channel_id",
        ),
        (
            "unknown location",
            reserve_request("bad-7", vec![line("tee", "dc-9", 1)]),
            "lines[0].location_id",
        ),
        (
            "location outside the channel",
            reserve_request("bad-8", vec![line("tee", "dc-3", 1)]),
            "lines[0].location_id",
        ),
    ];
    for (case, request, field) in cases {
        let status = client.reserve(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(bad_fields(&status), vec![field], "{case}");
    }

    // 100 bad lines with long ids: the answer must still fit in the trailers
    // a tonic client accepts (16 KiB), not fail as a protocol error.
    let long_ids = (0..100)
        .map(|n| line(&format!("s{n}"), &format!("dc-{n:03}-{}", "x".repeat(120)), 1))
        .collect();
    let status = client.reserve(reserve_request("bad-10", long_ids)).await.expect_err("bad lines");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(&status)[0], "lines[0].location_id");

    let oversized = reserve_request("bad-9", vec![line(&"x".repeat(5 << 20), "dc-1", 1)]);
    let status = client.reserve(oversized).await.expect_err("over the message cap");
    assert_eq!(status.code(), Code::OutOfRange, "a clean error for a message over the cap");
    assert!(status.message().contains("4194304"), "names the limit: {}", status.message());

    let valid = reserve_request("good-1", vec![line("tee", "dc-1", 2)]);
    let response = client.reserve(valid).await.expect("the node still serves");
    assert_eq!(
        response.get_ref().reservation.as_ref().expect("a reservation").state(),
        v1::ReservationState::Held
    );
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly() {
    let mut atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    // An open, idle connection must not hold the shutdown up.
    let mut client = atpd.config();
    client.list_locations(v1::ListLocationsRequest {}).await.expect("list locations");

    atpd.terminate();
    let status = atpd.wait_for_exit(DEADLINE).await.expect("atpd exits after SIGTERM");
    assert!(status.success(), "exit status {status}; stderr:\n{}", atpd.log());
    let log = atpd.log();
    assert!(log.contains("shutdown requested") && log.contains("atpd stopped"), "{log}");
}

#[tokio::test]
async fn a_hold_expires_over_grpc() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    atpd.receive("brief", "dc-1", 4).await;
    let mut client = atpd.availability();
    let request = v1::ReserveRequest {
        ttl_seconds: 1,
        ..reserve_request("brief-1", vec![line("brief", "dc-1", 3)])
    };
    client.reserve(request).await.expect("reserve");
    assert_eq!(at(&availability(&atpd, "brief").await, "dc-1").reserved, 3);

    let expired = eventually(DEADLINE, || {
        let mut client = client.clone();
        async move {
            let request = v1::GetReservationRequest { reservation_id: "brief-1".into() };
            let Ok(response) = client.get_reservation(request).await else { return false };
            let reservation = response.into_inner().reservation.expect("a reservation");
            reservation.state() == v1::ReservationState::Expired
        }
    })
    .await;
    assert!(expired, "the reservation reached EXPIRED");
    let freed = eventually(DEADLINE, || async {
        let position = availability(&atpd, "brief").await;
        at(&position, "dc-1").reserved == 0 && at(&position, "dc-1").atp == 4
    })
    .await;
    assert!(freed, "the expired hold's units came back");
}

#[tokio::test]
async fn commit_cancel_extend_and_the_admin_view() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1", "dc-2", "dc-3"], &["dc-1", "dc-2"]).await;
    atpd.receive("mug", "dc-1", 10).await;
    let mut client = atpd.availability();

    // Commit 3 of 5 held: the remainder returns.
    client
        .reserve(reserve_request("order-1", vec![line("mug", "dc-1", 5)]))
        .await
        .expect("reserve");
    let commit = v1::CommitRequest {
        reservation_id: "order-1".into(),
        lines: vec![v1::CommitLine { sku: "mug".into(), location_id: "dc-1".into(), quantity: 3 }],
    };
    let committed = client.commit(commit).await.expect("commit").into_inner();
    assert_eq!(committed.epoch, 1);
    let reservation = committed.reservation.expect("a reservation");
    assert_eq!(reservation.state(), v1::ReservationState::Committed);
    assert_eq!((reservation.lines[0].quantity, reservation.lines[0].committed), (5, 3));
    let position = availability(&atpd, "mug").await;
    let dc1 = at(&position, "dc-1");
    assert_eq!((dc1.reserved, dc1.committed, dc1.atp), (0, 3, 7));

    // Cancel frees the committed units.
    let cancelled = client
        .cancel(v1::CancelRequest { reservation_id: "order-1".into() })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(
        cancelled.reservation.expect("a reservation").state(),
        v1::ReservationState::Cancelled
    );
    let position = availability(&atpd, "mug").await;
    assert_eq!((at(&position, "dc-1").committed, at(&position, "dc-1").atp), (0, 10));

    // Extend moves the expiry.
    let held = v1::ReserveRequest {
        ttl_seconds: 60,
        ..reserve_request("order-2", vec![line("mug", "dc-1", 2)])
    };
    let first = client
        .reserve(held)
        .await
        .expect("reserve")
        .into_inner()
        .reservation
        .expect("a reservation");
    let extend = v1::ExtendReservationRequest {
        reservation_id: "order-2".into(),
        ttl_seconds: 600,
        ..Default::default()
    };
    let extended = client.extend_reservation(extend).await.expect("extend").into_inner();
    let extended = extended.reservation.expect("a reservation");
    assert_eq!(extended.state(), v1::ReservationState::Held);
    assert!(extended.expires_at_ms >= first.expires_at_ms + 500_000, "{first:?} → {extended:?}");

    // The admin view: the SKU's shard holds one open hold; by number or by sku.
    let mut admin = atpd.admin();
    let by_sku = v1::GetShardRequest { target: Some(Target::Sku("mug".into())) };
    let shard =
        admin.get_shard(by_sku).await.expect("shard by sku").into_inner().shard.expect("info");
    assert_eq!(shard.shard, shard_of("mug"));
    assert_eq!((shard.epoch, shard.open_holds), (1, 1));
    assert!(shard.sku_count >= 1 && shard.position_count >= 1, "{shard:?}");
    let by_number = v1::GetShardRequest { target: Some(Target::Shard(shard_of("mug"))) };
    let same = admin.get_shard(by_number).await.expect("shard by number").into_inner().shard;
    assert_eq!(same.expect("info").sku_count, shard.sku_count);
    let listed = admin.list_shards(v1::ListShardsRequest { include_empty: false }).await;
    let listed = listed.expect("list shards").into_inner();
    assert_eq!(listed.shard_count, 1024);
    assert!(listed.shards.iter().any(|info| info.shard == shard_of("mug")));

    // The ledger names each change's cause.
    let query = v1::QueryLedgerRequest {
        sku: "mug".into(),
        location_id: "dc-1".into(),
        ..Default::default()
    };
    let ledger = admin.query_ledger(query).await.expect("ledger").into_inner();
    assert_eq!(ledger.epoch, 1);
    let causes: Vec<(&str, &str)> =
        ledger.entries.iter().map(|entry| (entry.cause_id.as_str(), entry.kind.as_str())).collect();
    for expected in [
        ("recv-mug-dc-1", "received"),
        ("order-1", "reserve"),
        ("order-1", "commit"),
        ("order-1", "cancel"),
        ("order-2", "reserve"),
    ] {
        assert!(causes.contains(&expected), "{expected:?} missing in {causes:?}");
    }
    assert!(ledger.entries.windows(2).all(|pair| pair[0].sequence < pair[1].sequence));

    // Paged, two at a time: every entry once, in the same order.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let query = v1::QueryLedgerRequest {
            sku: "mug".into(),
            location_id: "dc-1".into(),
            limit: 2,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = admin.query_ledger(query).await.expect("ledger page").into_inner();
        assert!(page.entries.len() <= 2);
        paged.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, ledger.entries);
    // By cause, and a time range that ends before everything.
    let query = v1::QueryLedgerRequest { cause_id: "order-1".into(), ..Default::default() };
    let by_cause = admin.query_ledger(query).await.expect("by cause").into_inner();
    assert!(by_cause.entries.iter().all(|entry| entry.cause_id == "order-1"));
    assert!(by_cause.entries.len() >= 3, "{:?}", by_cause.entries);
    let first_at = ledger.entries[0].at_ms;
    let query = v1::QueryLedgerRequest { sku: "mug".into(), to_ms: first_at, ..Default::default() };
    let before = admin.query_ledger(query).await.expect("time range").into_inner();
    assert!(before.entries.is_empty(), "{:?}", before.entries);
    let bad =
        v1::QueryLedgerRequest { sku: "mug".into(), page_token: "zz".into(), ..Default::default() };
    let refused = admin.query_ledger(bad).await.expect_err("bad token");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Health: the server and every atp service are SERVING.
    let mut health = atpd.health();
    for service in ["", "atp.v1.AvailabilityService", "atp.v1.ConfigService", "atp.v1.AdminService"]
    {
        let request = HealthCheckRequest { service: service.into() };
        let response = health.check(request).await.expect("health check");
        assert_eq!(response.get_ref().status(), ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_lists_the_services_to_grpcurl() {
    let atpd = Atpd::start(&[]).await;
    let output = match std::process::Command::new("grpcurl")
        .args(["-plaintext", &atpd.address.to_string(), "list"])
        .output()
    {
        Ok(output) => output,
        // CI must run this test (.ci/run and scripts/test install grpcurl);
        // on a developer machine without grpcurl it is skipped, loudly.
        Err(error) if running_in_ci() => {
            panic!("grpcurl is not installed ({error}) and CI is set; scripts/test installs it")
        }
        Err(error) => {
            eprintln!("skipping: grpcurl is not installed ({error}); scripts/test installs it");
            return;
        }
    };
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "grpcurl failed: {}", String::from_utf8_lossy(&output.stderr));
    for service in [
        "atp.v1.AvailabilityService",
        "atp.v1.ConfigService",
        "atp.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.lines().any(|line| line == service), "{service} missing in:\n{listed}");
    }
}

/// Whether the environment variable `CI` is set, as CI runners do (`CI=true`);
/// empty, `false` and `0` count as unset.
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}
