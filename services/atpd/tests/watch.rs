//! WatchAvailability (issue 13) on the real `atpd` binary over real gRPC:
//! a snapshot then every change, figures equal to GetAvailability's,
//! versions that never go backwards, a resume after a cut (and after a
//! SIGKILL restart) that sends only what changed, RESYNC beyond the window,
//! and a receiver that stops reading is told RESYNC (its pending updates
//! are bounded) while another, reading, keeps up through the same bursts.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use atp_client::WatchView;
use atp_proto::v1;
use common::Atpd;
use tonic::Code;
use tonic::Streaming;

const DEADLINE: Duration = Duration::from_secs(20);

fn web() -> v1::WatchAvailabilityRequest {
    v1::WatchAvailabilityRequest { channel_id: "web".into(), ..Default::default() }
}

async fn open(
    atpd: &Atpd,
    request: v1::WatchAvailabilityRequest,
) -> Streaming<v1::WatchAvailabilityResponse> {
    atpd.availability().watch_availability(request).await.expect("watch").into_inner()
}

/// Reads `stream` into `view` until `done(view)` holds (within DEADLINE);
/// returns the messages read.
async fn follow(
    stream: &mut Streaming<v1::WatchAvailabilityResponse>,
    view: &mut WatchView,
    mut done: impl FnMut(&WatchView, &v1::WatchAvailabilityResponse) -> bool,
) -> Vec<v1::WatchAvailabilityResponse> {
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the stream answered within the deadline")
            .expect("the stream is healthy")
            .expect("the stream is open");
        let applied = view.apply(&message);
        assert_eq!(applied.stale, 0, "a version went backwards: {message:?}");
        let finished = done(view, &message);
        read.push(message);
        if finished {
            return read;
        }
    }
}

fn synced(_: &WatchView, message: &v1::WatchAvailabilityResponse) -> bool {
    message.event() == v1::WatchEvent::Synced
}

/// web's (atp, published) of every SKU by GetAvailability.
async fn truth(atpd: &Atpd, skus: &[String]) -> HashMap<String, (i64, i64)> {
    let mut figures = HashMap::new();
    for chunk in skus.chunks(500) {
        let request = v1::GetAvailabilityRequest {
            skus: chunk.to_vec(),
            channel_ids: vec!["web".into()],
            ..Default::default()
        };
        let reply = atpd.availability().get_availability(request).await.expect("availability");
        for sku in reply.into_inner().skus {
            let channel = &sku.channels[0];
            figures.insert(sku.sku, (channel.atp, channel.published));
        }
    }
    figures
}

fn seen(view: &WatchView, skus: &[String]) -> HashMap<String, (i64, i64)> {
    skus.iter()
        .map(|sku| {
            let figure = view.figures().get(sku).map_or((0, 0), |f| (f.atp, f.published));
            (sku.clone(), figure)
        })
        .collect()
}

fn skus(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("sku-{n:05}")).collect()
}

#[tokio::test]
async fn a_watcher_sees_the_snapshot_then_every_change_and_resumes_without_a_gap() {
    let data = tempfile::tempdir().expect("a data directory");
    let mut atpd = Atpd::start_in(data.path(), &[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(200);
    atpd.receive_all(&all, 10, "a").await;

    // The snapshot: every SKU, then SYNCED; figures equal GetAvailability's.
    let mut stream = open(&atpd, web()).await;
    let mut view = WatchView::new();
    let read = follow(&mut stream, &mut view, synced).await;
    assert!(read[..read.len() - 1].iter().all(|m| m.event() == v1::WatchEvent::Snapshot));
    assert_eq!(view.figures().len(), all.len());
    assert_eq!(seen(&view, &all), truth(&atpd, &all).await);

    // Changes stream in: holds on 20 SKUs.
    for (n, sku) in all.iter().take(20).enumerate() {
        atpd.hold_on_web(&format!("r-{n}"), sku, 3).await;
    }
    let want = truth(&atpd, &all).await;
    follow(&mut stream, &mut view, |view, _| seen(view, &all) == want).await;

    // Cut the stream; 30 more SKUs change; a resume sends only those.
    drop(stream);
    let changed: Vec<String> = all[100..130].to_vec();
    atpd.receive_all(&changed, 5, "b").await;
    let mut stream = open(&atpd, view.resume(web())).await;
    let read = follow(&mut stream, &mut view, synced).await;
    let sent: usize = read.iter().map(|m| m.updates.len()).sum();
    assert!(
        read.iter()
            .all(|m| m.event() != v1::WatchEvent::Snapshot && m.event() != v1::WatchEvent::Resync)
    );
    assert_eq!(sent, changed.len(), "only the SKUs changed during the cut are sent");
    assert_eq!(seen(&view, &all), truth(&atpd, &all).await);
    drop(stream);

    // Across a SIGKILL restart: change 10 SKUs, kill, restart, resume.
    atpd.receive_all(&all[150..160], 7, "c").await;
    atpd.kill();
    let atpd = Atpd::start_in(data.path(), &[]).await;
    let mut stream = open(&atpd, view.resume(web())).await;
    let read = follow(&mut stream, &mut view, synced).await;
    assert!(
        read.iter()
            .all(|m| m.event() != v1::WatchEvent::Snapshot && m.event() != v1::WatchEvent::Resync)
    );
    assert_eq!(seen(&view, &all), truth(&atpd, &all).await);
    let sent: usize = read.iter().map(|m| m.updates.len()).sum();
    assert!(sent < all.len(), "a resume after a restart is no full resync ({sent} sent)");

    // Live again after the restart.
    atpd.hold_on_web("after-restart", &all[199], 4).await;
    let want = truth(&atpd, &all).await;
    follow(&mut stream, &mut view, |view, _| seen(view, &all) == want).await;
}

#[tokio::test]
async fn a_resume_beyond_the_window_is_told_resync_and_gets_a_snapshot() {
    let atpd = Atpd::start(&[("ATP_WATCH_RESUME_WINDOW_MS", "60000")]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(50);
    atpd.receive_all(&all, 10, "a").await;
    let mut stream = open(&atpd, web()).await;
    let mut view = WatchView::new();
    let read = follow(&mut stream, &mut view, synced).await;
    drop(stream);
    // A cursor whose last message is 2 minutes old.
    let mut resume = view.resume(web());
    resume.resume_at_ms = read.last().expect("messages").sent_at_ms - 120_000;
    let mut stream = open(&atpd, resume).await;
    let mut view = view.clone();
    let read = follow(&mut stream, &mut view, synced).await;
    assert_eq!(read[0].event(), v1::WatchEvent::Resync, "{:?}", read[0]);
    assert!(read[1..read.len() - 1].iter().all(|m| m.event() == v1::WatchEvent::Snapshot));
    assert_eq!(seen(&view, &all), truth(&atpd, &all).await);
}

#[tokio::test]
async fn a_receiver_that_stops_reading_is_told_resync_while_another_keeps_up() {
    let atpd = Atpd::start(&[("ATP_WATCH_MAX_PENDING_SKUS", "100")]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let all = skus(10_000);
    atpd.receive_all(&all, 10, "a").await;
    // `slow` has HTTP/2 windows of 64 KiB (tonic's default is 2 MiB).
    let channel = tonic::transport::Endpoint::from_shared(atpd.endpoint())
        .expect("an endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut slow = v1::availability_service_client::AvailabilityServiceClient::new(channel)
        .watch_availability(web())
        .await
        .expect("watch")
        .into_inner();
    let mut slow_view = WatchView::new();
    follow(&mut slow, &mut slow_view, synced).await;
    // `fast` reads all the time (its own connection), counting RESYNCs.
    let mut fast = open(&atpd, web()).await;
    let fast_view = std::sync::Arc::new(std::sync::Mutex::new((WatchView::new(), 0_usize)));
    let reader = {
        let fast_view = std::sync::Arc::clone(&fast_view);
        tokio::spawn(async move {
            while let Ok(Some(message)) = fast.message().await {
                let mut held = fast_view.lock().expect("not poisoned");
                let applied = held.0.apply(&message);
                assert_eq!(applied.stale, 0, "a version went backwards");
                held.1 += usize::from(applied.resynced);
            }
        })
    };
    let fast_matches = |want: HashMap<String, (i64, i64)>| {
        let fast_view = std::sync::Arc::clone(&fast_view);
        let all = all.clone();
        async move {
            common::eventually(DEADLINE, || {
                let matches = seen(&fast_view.lock().expect("not poisoned").0, &all) == want;
                async move { matches }
            })
            .await
        }
    };

    // Every SKU changes 4 times while `slow` reads nothing: more than the
    // transport buffers (its HTTP/2 windows, the server's send buffer) hold,
    // so its updates wait at the node, which stops at 100 SKUs.
    for round in ["b", "c", "d", "e"] {
        atpd.receive_all(&all, 1, round).await;
    }
    let want = truth(&atpd, &all).await;
    assert!(fast_matches(want.clone()).await, "the reading watcher keeps up");

    // `slow` fell more than 100 SKUs behind: it reads on, is told RESYNC,
    // and the snapshot after it equals GetAvailability.
    let mut resynced = false;
    follow(&mut slow, &mut slow_view, |view, message| {
        resynced |= message.event() == v1::WatchEvent::Resync;
        resynced && view.is_synced() && seen(view, &all) == want
    })
    .await;
    // The reading one was never told to resync, and is still live.
    atpd.hold_on_web("late", &all[7], 2).await;
    assert!(fast_matches(truth(&atpd, &all).await).await);
    assert_eq!(fast_view.lock().expect("not poisoned").1, 0, "the reading watcher never resynced");
    reader.abort();
}

#[tokio::test]
async fn bad_watch_requests_name_their_field() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let cases = [
        (v1::WatchAvailabilityRequest::default(), "channel_id"),
        (
            v1::WatchAvailabilityRequest { channel_id: "nope".into(), ..Default::default() },
            "channel_id",
        ),
        (
            v1::WatchAvailabilityRequest {
                channel_id: "web".into(),
                location_ids: vec!["dc-1".into()],
                ..Default::default()
            },
            "location_ids",
        ),
        (
            v1::WatchAvailabilityRequest {
                location_ids: vec!["dc-9".into()],
                ..Default::default()
            },
            "location_ids[0]",
        ),
        (
            v1::WatchAvailabilityRequest {
                channel_id: "web".into(),
                skus: vec![String::new()],
                ..Default::default()
            },
            "skus[0]",
        ),
        (
            v1::WatchAvailabilityRequest {
                channel_id: "web".into(),
                resume: true,
                resume_at_ms: 1,
                resume_marks: vec![v1::ShardMark { shard: 5000, version: None }],
                ..Default::default()
            },
            "resume_marks[0].shard",
        ),
        (
            v1::WatchAvailabilityRequest {
                channel_id: "web".into(),
                resume: true,
                ..Default::default()
            },
            "resume_at_ms",
        ),
    ];
    for (request, field) in cases {
        let status = atpd
            .availability()
            .watch_availability(request.clone())
            .await
            .expect_err("a bad request is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}: {status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let fields: Vec<String> = details
            .bad_request()
            .map(|bad| bad.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert!(fields.contains(&field.to_owned()), "{request:?}: {fields:?}");
    }
    // A location watch works and its figure is the locations' sum.
    atpd.receive("tee", "dc-1", 9).await;
    let request = v1::WatchAvailabilityRequest {
        location_ids: vec!["dc-1".into()],
        skus: vec!["tee".into()],
        ..Default::default()
    };
    let mut stream = open(&atpd, request).await;
    let mut view = WatchView::new();
    follow(&mut stream, &mut view, synced).await;
    let tee = view.figures()["tee"];
    assert_eq!((tee.atp, tee.published), (9, 9));
}

/// A kit's figures in the stream (issue 13 carries kit figures): made from
/// its components' (min over components of ⌊ATP / units⌋), sent when a
/// component changes, equal to GetAvailability's; the components are not
/// sent unless asked for.
#[tokio::test]
async fn a_kit_is_streamed_from_its_components() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    let kit = v1::Kit {
        sku: "gift".into(),
        name: "gift box".into(),
        components: vec![
            v1::KitComponent { sku: "tee".into(), quantity: 2 },
            v1::KitComponent { sku: "mug".into(), quantity: 1 },
        ],
    };
    atpd.config().upsert_kit(v1::UpsertKitRequest { kit: Some(kit) }).await.expect("kit");
    atpd.receive("tee", "dc-1", 9).await;
    atpd.receive("mug", "dc-1", 3).await;
    let gift = vec!["gift".to_owned()];
    let request = v1::WatchAvailabilityRequest { skus: gift.clone(), ..web() };
    let mut stream = open(&atpd, request).await;
    let mut view = WatchView::new();
    follow(&mut stream, &mut view, synced).await;
    assert_eq!(view.figures().keys().collect::<Vec<_>>(), vec!["gift"], "only the kit is sent");
    // min(⌊9 / 2⌋, ⌊3 / 1⌋) = 3.
    assert_eq!(seen(&view, &gift), truth(&atpd, &gift).await);
    assert_eq!(view.figures()["gift"].atp, 3);

    // Two tees held: ⌊7 / 2⌋ = 3, no change; two more: ⌊5 / 2⌋ = 2.
    atpd.hold_on_web("t-1", "tee", 2).await;
    atpd.hold_on_web("t-2", "tee", 2).await;
    follow(&mut stream, &mut view, |view, _| view.figures()["gift"].atp == 2).await;
    assert_eq!(seen(&view, &gift), truth(&atpd, &gift).await);

    // Watching every SKU carries the kit too.
    let mut all = open(&atpd, web()).await;
    let mut all_view = WatchView::new();
    follow(&mut all, &mut all_view, synced).await;
    let skus: Vec<String> = ["gift", "tee", "mug"].map(str::to_owned).to_vec();
    assert_eq!(seen(&all_view, &skus), truth(&atpd, &skus).await);

    // A resume of a stream with a kit starts over, said RESYNC.
    drop(stream);
    let request = v1::WatchAvailabilityRequest { skus: gift.clone(), ..web() };
    let mut stream = open(&atpd, view.resume(request)).await;
    let read = follow(&mut stream, &mut view, synced).await;
    assert_eq!(read[0].event(), v1::WatchEvent::Resync);
    assert_eq!(seen(&view, &gift), truth(&atpd, &gift).await);
}
