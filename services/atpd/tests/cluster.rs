//! Cluster mode with real parts: one real etcd, three real `atpd` processes
//! sharing the 1024 shards. Every shard ends up served by exactly one node;
//! a request for shards one other node owns is forwarded to it (one hop),
//! one already forwarded is refused with `NOT_OWNER` naming the owner; a
//! reservation whose lines live on all three nodes works through any node; a killed node's shards are served by nobody until it is
//! back on its data directory, then under higher epochs. Skipped without an
//! etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::BTreeMap;
use std::time::Duration;

use atp_cluster::SHARD_COUNT;
use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_proto::v1::stock_event::Kind;
use atp_server::forward::WIRE_HEADER;
use common::{Atpd, eventually};
use futures::future::join_all;
use three_nodes::{Answer, Cluster, DEADLINE, answers, claims, forwarded, probe_ids, start};
use tonic::{Code, Request};
use tonic_types::StatusExt;

/// Location dc-1 in channel `web`, and 10 units of `sku` there.
async fn stock(atpd: &Atpd, sku: &str) {
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    atpd.receive(sku, "dc-1", 10).await;
}

fn reserve_request(id: &str, sku: &str) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: "dc-1".into(),
            quantity: 2,
        }],
        ttl_seconds: 0,
        metadata: None,
    }
}

/// A reservation id and a SKU whose home and line shards `owner` owns.
fn owned_by(claims: &BTreeMap<u32, (String, i64)>, owner: &str) -> (String, String) {
    let owns = |key: &str| claims[&shard_of(key)].0 == owner;
    let id = (0..).map(|n| format!("order-{n}")).find(|id| owns(id)).expect("an id");
    let sku = (0..).map(|n| format!("sku-{n}")).find(|sku| owns(sku)).expect("a sku");
    (id, sku)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_split_the_shards_and_forward_to_the_owner() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Cluster::start(&etcd, "split").await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;

    // Every shard is served by exactly one node, and together they serve all.
    let mut served = vec![0; SHARD_COUNT as usize];
    for node in &cluster.nodes {
        for (shard, answer) in answers(node, &probes).await.iter().enumerate() {
            if *answer == Answer::Serving {
                served[shard] += 1;
            }
        }
    }
    assert!(served.iter().all(|&count| count == 1), "shards served not exactly once");
    for id in &cluster.ids {
        let owned = claims.values().filter(|(owner, _)| owner == id).count();
        assert!(owned > 0, "node {id} owns no shard");
    }

    // A Reserve already forwarded, on a node that does not own its shards:
    // not forwarded again, but NOT_OWNER naming the owner.
    let (owner, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (id, sku) = owned_by(&claims, &cluster.ids[0]);
    stock(owner, &sku).await;
    // The entry node checks a stock event's location before passing it on.
    other.configure_web(&["dc-1"], &["dc-1"]).await;
    let refused = other
        .availability()
        .reserve(forwarded(reserve_request(&id, &sku)))
        .await
        .expect_err("not the owner");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "NOT_OWNER");
    assert_eq!(info.metadata["owner"], cluster.ids[0]);
    assert_eq!(info.metadata["owner_address"], owner.address.to_string());
    let shard: u32 = info.metadata["shard"].parse().expect("a shard number");
    assert!([shard_of(&id), shard_of(&sku)].contains(&shard), "{info:?}");
    assert_eq!(info.metadata["epoch"], claims[&shard].1.to_string());
    // The SDK reads it as its typed error, not retried (the owner must be asked).
    let typed = atp_client::Error::from_status(&refused);
    assert!(!typed.is_retryable(), "{typed:?}");
    match typed {
        atp_client::Error::NotOwner {
            shard: named, owner: owner_id, owner_address, epoch, ..
        } => {
            assert_eq!(named, i64::from(shard));
            assert_eq!(
                (owner_id.as_str(), owner_address),
                (cluster.ids[0].as_str(), owner.address.to_string())
            );
            assert_eq!(epoch, Some(claims[&shard].1 as u64));
        }
        other => panic!("not read as NotOwner: {other:?}"),
    }

    // A wire version the node does not speak: refused, retryable.
    let mut request = Request::new(reserve_request(&id, &sku));
    request.metadata_mut().insert(WIRE_HEADER, "2".parse().expect("ascii"));
    let refused = other.availability().reserve(request).await.expect_err("wire version 2");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "NOT_OWNER");
    assert!(refused.message().contains("wire version \"2\""), "{refused:?}");

    // The same Reserve from a client on the other node is forwarded: the
    // owner holds it, under the home shard's epoch, and sees it as its own.
    let mut via_other = other.availability();
    let reserved =
        via_other.reserve(reserve_request(&id, &sku)).await.expect("forwarded").into_inner();
    assert_eq!(reserved.epoch, claims[&shard_of(&id)].1 as u64);
    assert!(!reserved.replayed);
    let again = owner
        .availability()
        .reserve(reserve_request(&id, &sku))
        .await
        .expect("the owner answers")
        .into_inner();
    assert!(again.replayed, "the owner holds the forwarded Reserve: {again:?}");
    let read = |node: &Atpd, id: &str| {
        let (mut client, id) = (node.availability(), id.to_owned());
        async move {
            let request = v1::GetReservationRequest { reservation_id: id };
            let read = client.get_reservation(request).await.expect("read").into_inner();
            read.reservation.expect("a reservation").state()
        }
    };
    assert_eq!(read(other, &id).await, v1::ReservationState::Held);
    let request = v1::CommitRequest { reservation_id: id.clone(), lines: vec![] };
    let committed = via_other.commit(request).await.expect("forwarded commit").into_inner();
    assert_eq!(
        committed.reservation.expect("a reservation").state(),
        v1::ReservationState::Committed
    );
    assert_eq!(read(owner, &id).await, v1::ReservationState::Committed);
    let second = (0..)
        .map(|n| format!("{id}-released-{n}"))
        .find(|id| claims[&shard_of(id)].0 == cluster.ids[0])
        .expect("an id");
    via_other.reserve(reserve_request(&second, &sku)).await.expect("forwarded reserve");
    let request = v1::ReleaseRequest { reservation_id: second.clone() };
    via_other.release(request).await.expect("forwarded release");
    assert_eq!(read(owner, &second).await, v1::ReservationState::Released);
    assert_eq!(read(other, &second).await, v1::ReservationState::Released);

    // The other RPCs that touch shards go through the same forward: a batch
    // and a read of ids all on the owner, Extend, Cancel (refused by the
    // owner), a stock event and an availability read.
    let ids: Vec<String> = (0..)
        .map(|n| format!("{id}-batch-{n}"))
        .filter(|id| claims[&shard_of(id)].0 == cluster.ids[0])
        .take(2)
        .collect();
    let reservations = ids.iter().map(|id| reserve_request(id, &sku)).collect();
    let request = v1::ReserveBatchRequest { reservations };
    let batch = via_other.reserve_batch(request).await.expect("forwarded batch").into_inner();
    assert_eq!(batch.results.len(), 2, "{batch:?}");
    let request = v1::GetReservationsRequest { reservation_ids: ids.clone() };
    let got = via_other.get_reservations(request).await.expect("forwarded read").into_inner();
    assert_eq!(got.results.len(), 2, "{got:?}");
    let request = v1::ExtendReservationRequest {
        reservation_id: ids[0].clone(),
        ttl_seconds: 600,
        request_id: "extend-1".into(),
    };
    via_other.extend_reservation(request).await.expect("forwarded extend");
    // The owner's error reaches the client with its details.
    let request = v1::CancelRequest { reservation_id: ids[1].clone() };
    let refused = via_other.cancel(request).await.expect_err("a held one is not cancelled");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_details_error_info().expect("the owner's ErrorInfo");
    assert_eq!((info.reason.as_str(), info.metadata["state"].as_str()), ("WRONG_STATE", "HELD"));
    let event = v1::StockEvent {
        event_id: format!("recv-more-{sku}"),
        sku: sku.clone(),
        location_id: "dc-1".into(),
        kind: Some(Kind::Received(v1::Received { quantity: 5 })),
    };
    let request = v1::ApplyStockEventsRequest { events: vec![event] };
    let applied = via_other.apply_stock_events(request).await.expect("forwarded events");
    assert_eq!(applied.get_ref().results[0].outcome(), v1::StockEventOutcome::Applied);
    let request = v1::GetAvailabilityRequest { skus: vec![sku.clone()], ..Default::default() };
    let seen = via_other.get_availability(request).await.expect("forwarded read").into_inner();
    assert_eq!(seen.skus.len(), 1, "{seen:?}");
    assert_eq!(seen.skus[0].sku, sku);
    cluster.check_epochs(&etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_cut_off_from_etcd_fail_closed_then_serve_again() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Cluster::start(&etcd, "cut").await;
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;

    // etcd stops answering: past its lease deadline each node refuses its
    // own shards with FAILING_CLOSED (and still names the owners of others).
    etcd.pause();
    for (node, id) in cluster.nodes.iter().zip(&cluster.ids) {
        let closed = eventually(DEADLINE, || async {
            let seen = answers(node, &probes).await;
            (0..SHARD_COUNT).zip(&seen).all(|(shard, answer)| {
                let owner = &before[&shard].0;
                match answer {
                    Answer::FailingClosed => owner == id,
                    Answer::NotOwner { owner: named, .. } => owner != id && named == owner,
                    Answer::Serving => false,
                }
            })
        })
        .await;
        assert!(closed, "node {id} kept serving without etcd; its log:\n{}", node.log());
    }
    // A read across nodes still answers, each SKU with FAILING_CLOSED: node
    // 0's own, and node 1's as node 1 answered the sub-request.
    let skus: Vec<String> = cluster.ids[..2].iter().map(|id| owned_by(&before, id).1).collect();
    let mut request =
        Request::new(v1::GetAvailabilityRequest { skus: skus.clone(), ..Default::default() });
    request.set_timeout(Duration::from_secs(5));
    let read = cluster.nodes[0].availability().get_availability(request).await.expect("a read");
    let read = read.into_inner();
    assert_eq!(read.skus.len(), 2, "{read:?}");
    for (sku, asked) in read.skus.iter().zip(&skus) {
        assert_eq!(&sku.sku, asked);
        let error = sku_error(sku);
        assert_eq!(error, Some((Code::Unavailable, "FAILING_CLOSED".to_owned())), "{read:?}");
    }

    // etcd is back: the nodes join again (or keep their leases) and serve.
    etcd.resume();
    let after = cluster.wait_until_consistent(&probes).await;
    for (shard, (owner, epoch)) in &after {
        assert_eq!(owner, &before[shard].0, "shard {shard} moved");
        assert!(*epoch >= before[shard].1, "shard {shard}: epoch went down");
    }
    cluster.check_epochs(&etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_shards_wait_for_it_and_return_under_higher_epochs() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let mut cluster = Cluster::start(&etcd, "sticky").await;
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;
    let victim = cluster.ids[2].clone();
    let (id, sku) = owned_by(&before, &victim);
    stock(&cluster.nodes[2], &sku).await;
    let mut availability = cluster.nodes[2].availability();
    let held = availability.reserve(reserve_request(&id, &sku)).await.expect("holds").into_inner();

    // Read through a survivor: forwarded to the owner.
    let mut survivor = cluster.nodes[0].availability();
    let request = v1::GetReservationRequest { reservation_id: id.clone() };
    survivor.get_reservation(request).await.expect("forwarded while the owner lives");

    // Killed: its key lingers until its lease expires, so the survivor
    // still forwards, finds nobody and answers NOT_OWNER at once; once the
    // key is gone it answers NOT_OWNER without trying.
    cluster.nodes[2].kill();
    let unreachable = || {
        let (mut survivor, id) = (survivor.clone(), id.clone());
        async move {
            let mut request = Request::new(v1::GetReservationRequest { reservation_id: id });
            request.set_timeout(Duration::from_secs(5));
            let started = tokio::time::Instant::now();
            let refused = survivor.get_reservation(request).await.expect_err("owner dead");
            // Within the 5-s deadline (else DEADLINE_EXCEEDED, not the
            // UNAVAILABLE below); milliseconds on an idle machine.
            let took = started.elapsed();
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
            let info = refused.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, "NOT_OWNER", "{refused:?}");
            took
        }
    };
    let took = unreachable().await;
    eprintln!("a request for the killed node's shard was refused in {took:?}");
    let gone = eventually(DEADLINE, || async {
        claims(&cluster.store, &cluster.keys).await.values().all(|(owner, _)| owner != &victim)
    })
    .await;
    assert!(gone, "the killed node's claims never expired");
    unreachable().await;
    // Sticky: nobody else claims them, and both survivors refuse them.
    let now = claims(&cluster.store, &cluster.keys).await;
    let orphaned: Vec<u32> =
        before.iter().filter(|(_, (owner, _))| owner == &victim).map(|(shard, _)| *shard).collect();
    assert!(orphaned.iter().all(|shard| !now.contains_key(shard)), "a survivor took a shard");
    for node in &cluster.nodes[..2] {
        let seen = answers(node, &probes).await;
        for shard in &orphaned {
            let answer = &seen[*shard as usize];
            assert!(
                matches!(answer, Answer::NotOwner { owner, address } if owner == &victim && address.is_empty()),
                "shard {shard}: {answer:?}"
            );
        }
    }

    // Back on its data directory: same node id, the same shards, higher epochs.
    cluster.nodes[2] = start(cluster.data[2].path(), &cluster.variables).await;
    let after = cluster.wait_until_consistent(&probes).await;
    for shard in &orphaned {
        let (owner, epoch) = &after[shard];
        assert_eq!(owner, &victim, "shard {shard}");
        assert!(*epoch > before[shard].1, "shard {shard}: epoch {epoch} after {before:?}");
    }
    let mut availability = cluster.nodes[2].availability();
    let request = v1::GetReservationRequest { reservation_id: id.clone() };
    let read = availability.get_reservation(request).await.expect("recovered").into_inner();
    assert_eq!(read.reservation.expect("a reservation").reservation_id, id);
    assert!(read.epoch > held.epoch, "epoch {} after {}", read.epoch, held.epoch);
    cluster.check_epochs(&etcd).await;
}

/// `read`'s per-SKU error: its code and ErrorInfo reason.
fn sku_error(read: &v1::SkuAvailability) -> Option<(Code, String)> {
    let status = atp_proto::status_from_rpc(read.error.clone()?);
    let reason = status.get_details_error_info().map(|info| info.reason).unwrap_or_default();
    Some((status.code(), reason))
}

/// The web channel's ATP in `read` (10 after [`stock`]).
fn web_atp(read: &v1::SkuAvailability) -> Option<i64> {
    read.channels.iter().find(|channel| channel.channel_id == "web").map(|channel| channel.atp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_across_nodes_answers_every_sku_it_can() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let mut cluster = Cluster::start(&etcd, "fanout").await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;
    let skus: Vec<String> = cluster.ids.iter().map(|id| owned_by(&claims, id).1).collect();
    for (node, sku) in cluster.nodes.iter().zip(&skus) {
        stock(node, sku).await;
    }
    // Node 2's SKU first, then node 0's (read here), then node 1's.
    let asked = vec![skus[2].clone(), skus[0].clone(), skus[1].clone()];
    let request = || {
        let mut request =
            Request::new(v1::GetAvailabilityRequest { skus: asked.clone(), ..Default::default() });
        request.set_timeout(Duration::from_secs(5));
        request
    };

    // All three owners live: every SKU with its figures, in request order.
    let mut through = cluster.nodes[0].availability();
    let read = through.get_availability(request()).await.expect("a read").into_inner();
    let order: Vec<&str> = read.skus.iter().map(|sku| sku.sku.as_str()).collect();
    assert_eq!(order, asked.iter().map(String::as_str).collect::<Vec<_>>());
    for sku in &read.skus {
        assert_eq!(sku_error(sku), None, "{sku:?}");
        assert_eq!(web_atp(sku), Some(10), "{sku:?}");
        assert_eq!(sku.locations[0].on_hand, 10, "{sku:?}");
        assert_eq!(sku.shard, shard_of(&sku.sku));
        // Under the epoch of its owner's claim, wherever it was read.
        assert_eq!(sku.epoch, claims[&sku.shard].1 as u64, "{sku:?}");
    }

    // Already forwarded: only this node's SKU is read, no second hop.
    let mut marked =
        forwarded(v1::GetAvailabilityRequest { skus: asked.clone(), ..Default::default() });
    marked.set_timeout(Duration::from_secs(5));
    let read = through.get_availability(marked).await.expect("a read").into_inner();
    assert_eq!(web_atp(&read.skus[1]), Some(10), "{read:?}");
    for index in [0, 2] {
        let error = sku_error(&read.skus[index]);
        assert_eq!(error, Some((Code::Unavailable, "NOT_OWNER".to_owned())), "{read:?}");
        assert!(read.skus[index].locations.is_empty(), "{read:?}");
    }

    // Node 2 killed: the call still succeeds, fast; its SKU gets an error.
    cluster.nodes[2].kill();
    let started = tokio::time::Instant::now();
    let read = through.get_availability(request()).await.expect("a read").into_inner();
    let took = started.elapsed();
    // Within its 5-s deadline (else the call fails above); milliseconds
    // on an idle machine.
    eprintln!("a read with one owner dead took {took:?}");
    let (code, reason) = sku_error(&read.skus[0]).expect("an error for the dead owner's sku");
    assert_eq!(code, Code::Unavailable, "{read:?}");
    assert!(["NOT_OWNER", "FAILING_CLOSED"].contains(&reason.as_str()), "{read:?}");
    assert!(read.skus[0].locations.is_empty() && read.skus[0].channels.is_empty());
    assert_eq!(read.skus[0].sku, skus[2]);
    for sku in &read.skus[1..] {
        assert_eq!(sku_error(sku), None, "{sku:?}");
        assert_eq!(web_atp(sku), Some(10), "{sku:?}");
    }

    // A batch of stock events is split the same way: the live owners apply
    // theirs, the dead owner's event is rejected on its own (retryable).
    let received = |sku: &str| v1::StockEvent {
        event_id: format!("more-{sku}"),
        sku: sku.to_owned(),
        location_id: "dc-1".into(),
        kind: Some(Kind::Received(v1::Received { quantity: 1 })),
    };
    let events =
        v1::ApplyStockEventsRequest { events: asked.iter().map(|s| received(s)).collect() };
    let applied = through.apply_stock_events(events).await.expect("applied").into_inner();
    let outcomes: Vec<_> = applied.results.iter().map(|result| result.outcome()).collect();
    assert_eq!(
        outcomes,
        [
            v1::StockEventOutcome::Rejected,
            v1::StockEventOutcome::Applied,
            v1::StockEventOutcome::Applied
        ],
        "{applied:?}"
    );
    assert_eq!(applied.results[0].error_code_name, "UNAVAILABLE", "{applied:?}");
    assert!(
        ["NOT_OWNER", "FAILING_CLOSED"].contains(&applied.results[0].error_reason.as_str()),
        "{applied:?}"
    );
    let read = through.get_availability(request()).await.expect("a read").into_inner();
    assert_eq!(read.skus[1..].iter().map(web_atp).collect::<Vec<_>>(), [Some(11), Some(11)]);
    cluster.check_epochs(&etcd).await;
}

/// Lines of `quantity` units of each of `skus` at dc-1.
fn lines(skus: &[String], quantity: i64) -> Vec<v1::ReservationLine> {
    skus.iter()
        .map(|sku| v1::ReservationLine { sku: sku.clone(), location_id: "dc-1".into(), quantity })
        .collect()
}

/// The web ATP of each of `skus`, read through `node`.
async fn web_atps(node: &Atpd, skus: &[String]) -> Vec<Option<i64>> {
    let request = v1::GetAvailabilityRequest { skus: skus.to_vec(), ..Default::default() };
    let read = node.availability().get_availability(request).await.expect("a read").into_inner();
    read.skus.iter().map(web_atp).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_with_lines_on_three_nodes_works_through_any_node() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Cluster::start(&etcd, "across").await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;
    // One SKU owned by each node, 5 units each.
    let skus: Vec<String> = cluster.ids.iter().map(|id| owned_by(&claims, id).1).collect();
    for node in &cluster.nodes {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
    }
    // Received in one batch through node 0: each owner applies its own.
    let events = skus
        .iter()
        .map(|sku| v1::StockEvent {
            event_id: format!("recv-{sku}"),
            sku: sku.clone(),
            location_id: "dc-1".into(),
            kind: Some(Kind::Received(v1::Received { quantity: 5 })),
        })
        .collect();
    let request = v1::ApplyStockEventsRequest { events };
    let applied = cluster.nodes[0].availability().apply_stock_events(request).await;
    let applied = applied.expect("applied").into_inner();
    for (result, sku) in applied.results.iter().zip(&skus) {
        assert_eq!(result.outcome(), v1::StockEventOutcome::Applied, "{applied:?}");
        assert_eq!(result.epoch, claims[&shard_of(sku)].1 as u64, "{applied:?}");
    }
    // `name`, homed on node `home`.
    let homed = |name: &str, home: usize| {
        (0..)
            .map(|n| format!("{name}-{n}"))
            .find(|id| claims[&shard_of(id)].0 == cluster.ids[home])
            .expect("an id")
    };
    let reserve = |id: &str, quantity: i64| v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: lines(&skus, quantity),
        ttl_seconds: 600,
        metadata: None,
    };
    let state = |reservation: Option<v1::Reservation>| reservation.expect("a reservation").state();
    let (a, b, c) = (homed("a", 1), homed("b", 2), homed("c", 0));

    // Through node 0, homed on node 1: held on all three nodes.
    let held = cluster.nodes[0].availability().reserve(reserve(&a, 2)).await.expect("held");
    let held = held.into_inner();
    assert_eq!(held.epoch, claims[&shard_of(&a)].1 as u64);
    assert_eq!(state(held.reservation), v1::ReservationState::Held);
    for node in &cluster.nodes {
        assert_eq!(web_atps(node, &skus).await, vec![Some(3); 3]);
    }
    // Through node 1, homed on node 2.
    cluster.nodes[1].availability().reserve(reserve(&b, 2)).await.expect("held");
    assert_eq!(web_atps(&cluster.nodes[2], &skus).await, vec![Some(1); 3]);

    // Short on every line: all or nothing, the refusal names a SKU short.
    let refused = cluster.nodes[2]
        .availability()
        .reserve(reserve(&c, 2))
        .await
        .expect_err("1 unit left of each");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "INSUFFICIENT_STOCK", "{refused:?}");
    assert!(skus.contains(&info.metadata["sku"]), "{info:?}");
    assert_eq!(web_atps(&cluster.nodes[0], &skus).await, vec![Some(1); 3]);

    // Commit a through node 2, release b through node 0.
    let request = v1::CommitRequest { reservation_id: a.clone(), lines: vec![] };
    let committed = cluster.nodes[2].availability().commit(request).await.expect("committed");
    assert_eq!(state(committed.into_inner().reservation), v1::ReservationState::Committed);
    let request = v1::ReleaseRequest { reservation_id: b.clone() };
    let released = cluster.nodes[0].availability().release(request).await.expect("released");
    assert_eq!(state(released.into_inner().reservation), v1::ReservationState::Released);
    for node in &cluster.nodes {
        assert_eq!(web_atps(node, &skus).await, vec![Some(3); 3]);
    }

    // Now c holds, is read through another node, and is changed.
    cluster.nodes[2].availability().reserve(reserve(&c, 2)).await.expect("held");
    let request = v1::GetReservationRequest { reservation_id: c.clone() };
    let read = cluster.nodes[1].availability().get_reservation(request).await.expect("read");
    let read = read.into_inner().reservation.expect("a reservation");
    assert_eq!((read.state(), read.lines.len()), (v1::ReservationState::Held, 3));
    let request = v1::ModifyReservationRequest {
        reservation_id: c.clone(),
        request_id: "smaller".into(),
        lines: lines(&skus, 1),
    };
    cluster.nodes[0].availability().modify_reservation(request).await.expect("changed");
    assert_eq!(web_atps(&cluster.nodes[1], &skus).await, vec![Some(2); 3]);

    // A batch whose items are homed on all three nodes, through node 1:
    // split by home owner, each answered under its home's epoch.
    let request = v1::ReleaseRequest { reservation_id: c.clone() };
    cluster.nodes[1].availability().release(request).await.expect("released");
    let ids: Vec<String> = (0..3).map(|home| homed(&format!("batch{home}"), home)).collect();
    let request =
        v1::ReserveBatchRequest { reservations: ids.iter().map(|id| reserve(id, 1)).collect() };
    let batch = cluster.nodes[1].availability().reserve_batch(request).await.expect("a batch");
    for (result, id) in batch.get_ref().results.iter().zip(&ids) {
        match &result.outcome {
            Some(v1::reserve_batch_result::Outcome::Reserved(reserved)) => {
                assert_eq!(reserved.epoch, claims[&shard_of(id)].1 as u64, "{batch:?}");
                assert_eq!(state(reserved.reservation.clone()), v1::ReservationState::Held);
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(web_atps(&cluster.nodes[2], &skus).await, vec![Some(0); 3]);
    // Read back through node 2, with an unknown id among them.
    let mut asked = ids.clone();
    asked.extend([a.clone(), homed("unknown", 1)]);
    let request = v1::GetReservationsRequest { reservation_ids: asked.clone() };
    let got = cluster.nodes[2].availability().get_reservations(request).await.expect("read");
    let states: Vec<String> = got
        .get_ref()
        .results
        .iter()
        .map(|result| match &result.outcome {
            Some(v1::get_reservation_result::Outcome::Reservation(r)) => {
                r.state().as_str_name().into()
            }
            Some(v1::get_reservation_result::Outcome::Error(status)) => {
                format!("code {}", status.code)
            }
            None => "none".into(),
        })
        .collect();
    let held = v1::ReservationState::Held.as_str_name();
    let committed = v1::ReservationState::Committed.as_str_name();
    let not_found = format!("code {}", Code::NotFound as i32);
    assert_eq!(states, [held, held, held, committed, not_found.as_str()], "{got:?}");
    cluster.check_epochs(&etcd).await;
}

/// Units of `sku` reserved (held, uncommitted) at dc-1, read through `node`.
async fn reserved(node: &Atpd, skus: &[String]) -> Vec<Option<i64>> {
    let request = v1::GetAvailabilityRequest { skus: skus.to_vec(), ..Default::default() };
    let read = node.availability().get_availability(request).await.expect("a read").into_inner();
    read.skus
        .iter()
        .map(|sku| sku.locations.iter().find(|l| l.location_id == "dc-1").map(|l| l.reserved))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_line_owner_mid_reserve_never_oversells_and_ends_all_or_nothing() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    // A short pending timeout: doubts about Reserves with no record are
    // decided soon after it.
    let extra = [("ATP_RESERVE_PENDING_TIMEOUT_MS", "1500")];
    let mut cluster = Cluster::start_with(&etcd, "midreserve", &extra).await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;
    let skus: Vec<String> = cluster.ids.iter().map(|id| owned_by(&claims, id).1).collect();
    const STOCK: i64 = 60;
    for (node, sku) in cluster.nodes.iter().zip(&skus) {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
        node.receive(sku, "dc-1", STOCK).await;
    }
    // Clients on nodes 0 and 1 reserve one unit of each SKU per id, homes
    // anywhere, while node 2 (owner of the third SKU) is killed and restarted.
    let entries = [cluster.nodes[0].availability(), cluster.nodes[1].availability()];
    let attempt = |client: &v1::availability_service_client::AvailabilityServiceClient<_>,
                   id: String| {
        let mut client = client.clone();
        let request = v1::ReserveRequest {
            reservation_id: id.clone(),
            channel_id: "web".into(),
            lines: lines(&skus, 1),
            ttl_seconds: 600,
            metadata: None,
        };
        async move {
            let mut request = Request::new(request);
            request.set_timeout(Duration::from_secs(8));
            (id, client.reserve(request).await.map(|_| ()))
        }
    };
    let mut acknowledged = Vec::new();
    let mut attempted = Vec::new();
    let round = |from: usize, count: usize| {
        let calls: Vec<_> =
            (from..from + count).map(|n| attempt(&entries[n % 2], format!("mid-{n}"))).collect();
        join_all(calls)
    };
    for (id, outcome) in round(0, 12).await {
        assert!(outcome.is_ok(), "{id} before the kill: {outcome:?}");
        acknowledged.push(id.clone());
        attempted.push(id);
    }
    // Kill node 2 while a round is in flight.
    let in_flight = tokio::spawn(round(12, 12));
    tokio::task::yield_now().await;
    cluster.nodes[2].kill();
    for (id, outcome) in in_flight.await.expect("the round") {
        if outcome.is_ok() {
            acknowledged.push(id.clone());
        }
        attempted.push(id);
    }
    eprintln!(
        "{} of the 12 Reserves in flight at the kill were acknowledged",
        acknowledged.len() - 12
    );
    // While it is down, Reserves needing it are refused (retryable).
    let (id, outcome) = attempt(&entries[0], "mid-down".into()).await;
    let refused = outcome.expect_err("a line's owner is down");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    attempted.push(id);

    // Back on its data directory.
    cluster.nodes[2] = start(cluster.data[2].path(), &cluster.variables).await;
    cluster.wait_until_consistent(&probes).await;

    // Every acknowledged Reserve still holds; every other id holds all its
    // lines or none; the units reserved are exactly the held ids' units.
    let settled = eventually(Duration::from_secs(30), || async {
        let mut held = 0;
        for id in &attempted {
            let request = v1::GetReservationRequest { reservation_id: id.clone() };
            match cluster.nodes[0].availability().get_reservation(request).await {
                Ok(read) => {
                    let read = read.into_inner().reservation.expect("a reservation");
                    if read.state() == v1::ReservationState::Held {
                        held += 1;
                    }
                }
                Err(status) if status.code() == Code::NotFound => {}
                Err(_) => return false,
            }
        }
        let reserved = reserved(&cluster.nodes[1], &skus).await;
        reserved.iter().all(|units| *units == Some(held))
    })
    .await;
    let reserved_now = reserved(&cluster.nodes[1], &skus).await;
    let log = cluster.nodes.iter().map(Atpd::log).collect::<Vec<_>>().join("\n");
    let decided = log.matches("decided a reservation in doubt").count();
    eprintln!("{decided} reservations in doubt were decided after the restart");
    assert!(settled, "holds never matched the held reservations: {reserved_now:?}");
    for id in &acknowledged {
        let request = v1::GetReservationRequest { reservation_id: id.clone() };
        let read = cluster.nodes[1].availability().get_reservation(request).await;
        let read = read.expect("an acknowledged Reserve is known").into_inner();
        assert_eq!(read.reservation.expect("a reservation").state(), v1::ReservationState::Held);
    }
    for units in reserved_now {
        let units = units.expect("dc-1");
        assert!(units <= STOCK, "oversold: {units} of {STOCK}");
        assert!(units >= acknowledged.len() as i64, "{units} < {}", acknowledged.len());
    }
    cluster.check_epochs(&etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_whose_notice_died_with_its_sender_is_confirmed_by_the_home() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let started = tokio::time::Instant::now();
    let mut cluster = Cluster::start(&etcd, "confirm").await;
    let probes = probe_ids();
    let claims = cluster.wait_until_consistent(&probes).await;
    // Homed on node 0, its one line on node 1's SKU.
    let (id, _) = owned_by(&claims, &cluster.ids[0]);
    let (_, sku) = owned_by(&claims, &cluster.ids[1]);
    for node in &cluster.nodes {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
    }
    cluster.nodes[1].receive(&sku, "dc-1", 5).await;
    let mut through = cluster.nodes[2].availability();
    through.reserve(reserve_request(&id, &sku)).await.expect("held");
    let request = v1::CommitRequest { reservation_id: id.clone(), lines: vec![] };
    through.commit(request).await.expect("committed");

    // The home is down when the line ships in full: the ship notice waits
    // in node 1's outbox, and dies with node 1.
    cluster.nodes[0].kill();
    let shipped = v1::StockEvent {
        event_id: format!("ship-{id}"),
        sku: sku.clone(),
        location_id: "dc-1".into(),
        kind: Some(Kind::Shipped(v1::Shipped { quantity: 2, reservation_id: id.clone() })),
    };
    let request = v1::ApplyStockEventsRequest { events: vec![shipped] };
    let applied = cluster.nodes[1].availability().apply_stock_events(request).await;
    let applied = applied.expect("applied at the line's owner").into_inner();
    assert_eq!(applied.results[0].outcome(), v1::StockEventOutcome::Applied, "{applied:?}");
    cluster.nodes[1].kill();
    eprintln!("shipped, both killed at {:?}", started.elapsed());

    // Both back: the home's recovery asks the line's owner about its
    // committed line, finds it gone, and records the shipment.
    cluster.nodes[0] = start(cluster.data[0].path(), &cluster.variables).await;
    cluster.nodes[1] = start(cluster.data[1].path(), &cluster.variables).await;
    cluster.wait_until_consistent(&probes).await;
    eprintln!("restarted at {:?}", started.elapsed());
    let fulfilled = eventually(DEADLINE, || async {
        let request = v1::GetReservationRequest { reservation_id: id.clone() };
        let Ok(read) = cluster.nodes[2].availability().get_reservation(request).await else {
            return false;
        };
        let read = read.into_inner().reservation.expect("a reservation");
        read.state() == v1::ReservationState::Fulfilled
    })
    .await;
    assert!(
        fulfilled,
        "the home never learned of the shipment; its log:\n{}",
        cluster.nodes[0].log()
    );
    eprintln!("fulfilled at {:?}", started.elapsed());
    cluster.check_epochs(&etcd).await;
}
