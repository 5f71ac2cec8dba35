//! Issue 9's API rules against the real `atpd` binary: the lifecycle of
//! locations and channels (and its durability across a restart), the id
//! rules, counts without `as_of`, named codes in stock-event results, and the
//! reason of an oversized message.

mod common;

use atp_proto::v1;
use atp_proto::v1::stock_event::Kind;
use atp_proto::{Reason, reason_of};
use common::Atpd;
use tonic::Code;
use tonic_types::StatusExt;

fn location(id: &str, state: v1::LifecycleState) -> v1::Location {
    v1::Location { location_id: id.into(), state: state.into(), ..Default::default() }
}

async fn upsert_location(
    atpd: &Atpd,
    location: v1::Location,
) -> Result<v1::Location, tonic::Status> {
    let request = v1::UpsertLocationRequest { location: Some(location) };
    let response = atpd.config().upsert_location(request).await?;
    Ok(response.into_inner().location.expect("the stored location"))
}

async fn upsert_channel(atpd: &Atpd, state: v1::LifecycleState) -> Result<(), tonic::Status> {
    let channel = v1::Channel {
        channel_id: "web".into(),
        location_ids: vec!["dc-1".into(), "dc-2".into()],
        state: state.into(),
        ..Default::default()
    };
    atpd.config().upsert_channel(v1::UpsertChannelRequest { channel: Some(channel) }).await?;
    Ok(())
}

async fn apply(atpd: &Atpd, id: &str, sku: &str, kind: Kind) -> v1::StockEventResult {
    let event = v1::StockEvent {
        event_id: id.into(),
        sku: sku.into(),
        location_id: "dc-1".into(),
        kind: Some(kind),
    };
    let request = v1::ApplyStockEventsRequest { events: vec![event] };
    let mut response = atpd.availability().apply_stock_events(request).await.expect("events");
    response.get_mut().results.remove(0)
}

fn reserve(id: &str, sku: &str, location: &str, quantity: i64) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: location.into(),
            quantity,
        }],
        ttl_seconds: 0,
        metadata: None,
    }
}

/// (on_hand, reserved, committed, atp) at `location`, and the channel's ATP.
async fn view(atpd: &Atpd, sku: &str, location: &str) -> ((i64, i64, i64, i64), i64) {
    let request = v1::GetAvailabilityRequest {
        skus: vec![sku.into()],
        location_ids: vec![location.into()],
        channel_ids: vec!["web".into()],
    };
    let response = atpd.availability().get_availability(request).await.expect("availability");
    let sku = &response.get_ref().skus[0];
    let at = &sku.locations[0];
    ((at.on_hand, at.reserved, at.committed, at.atp), sku.channels[0].atp)
}

fn reason(status: &tonic::Status) -> Option<Reason> {
    reason_of(status)
}

#[tokio::test]
async fn a_paused_location_keeps_its_stock_and_holds_and_the_state_survives_a_restart() {
    let data = tempfile::tempdir().expect("a data directory");
    let atpd = Atpd::start_in(data.path(), &[]).await;
    // No state given: ACTIVE (before issue 9 this location was silently inactive).
    let stored =
        upsert_location(&atpd, v1::Location { location_id: "dc-1".into(), ..Default::default() })
            .await
            .expect("upsert dc-1");
    assert_eq!((stored.state(), stored.active), (v1::LifecycleState::Active, true));
    upsert_location(&atpd, location("dc-2", v1::LifecycleState::Active)).await.expect("dc-2");
    upsert_channel(&atpd, v1::LifecycleState::Unspecified).await.expect("web");
    apply(&atpd, "recv-1", "mug", Kind::Received(v1::Received { quantity: 10 })).await;
    let mut availability = atpd.availability();
    availability.reserve(reserve("r-1", "mug", "dc-1", 3)).await.expect("held while active");
    availability.reserve(reserve("r-2", "mug", "dc-1", 2)).await.expect("held while active");
    assert_eq!(view(&atpd, "mug", "dc-1").await, ((10, 5, 0, 5), 5));

    let paused = upsert_location(&atpd, location("dc-1", v1::LifecycleState::Paused))
        .await
        .expect("pause dc-1");
    assert_eq!((paused.state(), paused.active), (v1::LifecycleState::Paused, false));
    assert_eq!(view(&atpd, "mug", "dc-1").await, ((10, 5, 0, 0), 0), "on_hand stays visible");
    let refused = availability.reserve(reserve("r-3", "mug", "dc-1", 1)).await.expect_err("paused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::NotActive), "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(
        (info.metadata["kind"].as_str(), info.metadata["state"].as_str()),
        ("location", "PAUSED")
    );
    // Existing holds at the paused location end as they would.
    let commit = v1::CommitRequest { reservation_id: "r-1".into(), lines: vec![] };
    availability.commit(commit).await.expect("commit at a paused location");
    availability
        .release(v1::ReleaseRequest { reservation_id: "r-2".into() })
        .await
        .expect("release at a paused location");
    assert_eq!(view(&atpd, "mug", "dc-1").await, ((10, 0, 3, 0), 0));

    // A paused channel shows 0 and refuses holds even at an active location.
    upsert_location(&atpd, location("dc-1", v1::LifecycleState::Active)).await.expect("resume");
    upsert_channel(&atpd, v1::LifecycleState::Paused).await.expect("pause web");
    assert_eq!(view(&atpd, "mug", "dc-1").await, ((10, 0, 3, 7), 0));
    let refused = availability.reserve(reserve("r-4", "mug", "dc-1", 1)).await.expect_err("paused");
    assert_eq!(reason(&refused), Some(Reason::NotActive), "{refused:?}");

    // Retiring is final.
    upsert_location(&atpd, location("dc-2", v1::LifecycleState::Retired)).await.expect("retire");
    let refused = upsert_location(&atpd, location("dc-2", v1::LifecycleState::Active))
        .await
        .expect_err("final");
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::FailedPrecondition, Some(Reason::NotActive))
    );
    let refused = upsert_location(
        &atpd,
        v1::Location { state: 7, ..location("dc-9", v1::LifecycleState::Active) },
    )
    .await
    .expect_err("unknown state");
    let fields = refused.get_details_bad_request().expect("a BadRequest").field_violations;
    assert_eq!(fields[0].field, "location.state");

    // The states are durable: a restart finds them.
    drop(atpd);
    let atpd = Atpd::start_in(data.path(), &[]).await;
    let listed = atpd.config().list_locations(v1::ListLocationsRequest {}).await.expect("list");
    let states: Vec<_> =
        listed.get_ref().locations.iter().map(|l| (l.location_id.as_str(), l.state())).collect();
    assert_eq!(
        states,
        [("dc-1", v1::LifecycleState::Active), ("dc-2", v1::LifecycleState::Retired)]
    );
    let channels = atpd.config().list_channels(v1::ListChannelsRequest {}).await.expect("list");
    assert_eq!(channels.get_ref().channels[0].state(), v1::LifecycleState::Paused);
    assert_eq!(view(&atpd, "mug", "dc-1").await, ((10, 0, 3, 7), 0));
}

#[tokio::test]
async fn ids_events_and_oversized_messages_follow_the_input_rules() {
    let atpd = Atpd::start(&[("ATP_MAX_MESSAGE_BYTES", "4096")]).await;
    upsert_location(&atpd, location("dc-1", v1::LifecycleState::Active)).await.expect("dc-1");
    upsert_location(&atpd, location("dc-2", v1::LifecycleState::Active)).await.expect("dc-2");
    upsert_channel(&atpd, v1::LifecycleState::Active).await.expect("web");
    let mut availability = atpd.availability();

    for (case, sku) in [
        ("zero width space", "mug\u{200B}"),
        ("right-to-left override", "\u{202E}gum"),
        ("not NFC", "cafe\u{301}"),
    ] {
        let refused = availability.reserve(reserve("r-1", sku, "dc-1", 1)).await.expect_err(case);
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::InvalidArgument, Some(Reason::InvalidArgument))
        );
        let fields = refused.get_details_bad_request().expect("a BadRequest").field_violations;
        assert_eq!(fields[0].field, "lines[0].sku", "{case}");
    }
    let refused = upsert_location(&atpd, location("dc\u{2066}3", v1::LifecycleState::Active))
        .await
        .expect_err("bidi isolate in a location id");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // A count without as_of is as of now; its retry is a duplicate.
    apply(&atpd, "recv-1", "mug", Kind::Received(v1::Received { quantity: 9 })).await;
    let count = Kind::Counted(v1::Counted { on_hand: 4, as_of_ms: 0 });
    let counted = apply(&atpd, "count-1", "mug", count.clone()).await;
    assert_eq!(counted.outcome(), v1::StockEventOutcome::Applied, "{counted:?}");
    assert_eq!(counted.position.expect("a position").on_hand, 4);
    let again = apply(&atpd, "count-1", "mug", count).await;
    assert_eq!(again.outcome(), v1::StockEventOutcome::Duplicate, "{again:?}");

    // A rejected event names its code and reason, not only the number.
    let reused = apply(&atpd, "count-1", "mug", Kind::Received(v1::Received { quantity: 1 })).await;
    assert_eq!(reused.outcome(), v1::StockEventOutcome::Rejected);
    assert_eq!(reused.error_code, i32::from(Code::AlreadyExists));
    assert_eq!(
        (reused.error_code_name.as_str(), reused.error_reason.as_str()),
        ("ALREADY_EXISTS", "ID_REUSED")
    );
    let short = apply(
        &atpd,
        "release-1",
        "mug",
        Kind::ReleasedUnavailable(v1::ReleasedUnavailable { quantity: 1 }),
    )
    .await;
    assert_eq!(
        (short.outcome(), short.error_code_name.as_str(), short.error_reason.as_str()),
        (v1::StockEventOutcome::Rejected, "FAILED_PRECONDITION", "PRECONDITION_FAILED")
    );
    assert_eq!(counted.error_code_name, "", "an applied event has no code name");

    // Over max_message_bytes: OUT_OF_RANGE with the reason and the limit.
    let oversized = reserve("r-2", &"x".repeat(8 * 1024), "dc-1", 1);
    let refused = availability.reserve(oversized).await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert_eq!(reason(&refused), Some(Reason::MessageTooLarge), "{refused:?}");
    assert!(refused.message().contains("4096"), "{}", refused.message());
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.metadata["limit_bytes"], "4096");
    availability.reserve(reserve("r-3", "mug", "dc-1", 1)).await.expect("the node still serves");
}
