//! ListReservations in cluster mode with real parts (one real etcd, three
//! real `atpd` processes): any node lists the whole cluster, page by page,
//! every reservation exactly once in (home shard, id) order with the
//! filters applied; a shard nobody serves (its owner SIGKILLed) stops the
//! listing with UNAVAILABLE naming it, never skipped. Skipped without an
//! etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::BTreeMap;
use std::time::Duration;

use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_core::reservation::ScanPosition;
use atp_proto::requests::encode_list_token;
use atp_proto::v1;
use atp_server::LIST_SHARDS_HEADER;
use common::Atpd;
use three_nodes::{Cluster, forwarded, probe_ids};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// Reservations homed on each node.
const PER_NODE: usize = 8;
/// Most pages one listing may take before the test calls it a loop.
const MAX_PAGES: usize = 200;

/// A reservation the test made: its id, home shard, state and line's SKU.
#[derive(Clone, Debug)]
struct Made {
    id: String,
    state: v1::ReservationState,
    sku: String,
}

/// For each node, a SKU it owns stocked with 100 at dc-1, and `PER_NODE`
/// reservations homed on its shards plus one on each of `shards` it owns
/// (2 units each, reserved through it): one in three stays held, one is
/// committed, one released. Returns them in listing order: (home shard, id).
async fn populate(
    cluster: &Cluster,
    claims: &BTreeMap<u32, (String, i64)>,
    shards: &[u32],
) -> Vec<Made> {
    let mut made = Vec::new();
    for (index, (node, owner)) in cluster.nodes.iter().zip(&cluster.ids).enumerate() {
        let owns = |key: &str| claims[&shard_of(key)].0 == *owner;
        let sku = (0..).map(|n| format!("sku-{n}")).find(|sku| owns(sku)).expect("a sku");
        node.configure_web(&["dc-1"], &["dc-1"]).await;
        node.receive(&sku, "dc-1", 100).await;
        let mut ids: Vec<String> = (0..)
            .map(|n| format!("list-{index}-{n}"))
            .filter(|id| owns(id))
            .take(PER_NODE)
            .collect();
        for &shard in shards.iter().filter(|shard| claims[shard].0 == *owner) {
            let homed = (0..).map(|n| format!("on-{shard}-{n}")).find(|id| shard_of(id) == shard);
            ids.push(homed.expect("an id homed on the shard"));
        }
        let mut availability = node.availability();
        // Writes go through the next node: forwarded to the home's owner.
        let mut via_next = cluster.nodes[(index + 1) % 3].availability();
        for (n, id) in ids.into_iter().enumerate() {
            let line =
                v1::ReservationLine { sku: sku.clone(), location_id: "dc-1".into(), quantity: 2 };
            let request = v1::ReserveRequest {
                reservation_id: id.clone(),
                channel_id: "web".into(),
                lines: vec![line],
                ttl_seconds: 600,
                metadata: None,
            };
            availability.reserve(request).await.expect("reserved");
            let state = match n % 3 {
                0 => v1::ReservationState::Held,
                1 => {
                    let commit = v1::CommitRequest { reservation_id: id.clone(), lines: vec![] };
                    via_next.commit(commit).await.expect("committed");
                    v1::ReservationState::Committed
                }
                _ => {
                    let release = v1::ReleaseRequest { reservation_id: id.clone() };
                    via_next.release(release).await.expect("released");
                    v1::ReservationState::Released
                }
            };
            made.push(Made { id, state, sku: sku.clone() });
        }
    }
    made.sort_by_key(|made| (shard_of(&made.id), made.id.clone()));
    made
}

fn with_timeout<T>(mut request: Request<T>) -> Request<T> {
    request.set_timeout(Duration::from_secs(5));
    request
}

/// Pages through the listing `request` names, each page through the next of
/// `nodes` in turn, until the last page or a refusal: the ids listed (with
/// their states), and the refusal if one stopped it.
async fn list_through(
    nodes: &[&Atpd],
    mut request: v1::ListReservationsRequest,
) -> (Vec<(String, v1::ReservationState)>, Option<Status>) {
    let mut listed = Vec::new();
    for page_number in 0..MAX_PAGES {
        let mut client = nodes[page_number % nodes.len()].availability();
        let page = match client.list_reservations(with_timeout(Request::new(request.clone()))).await
        {
            Ok(page) => page.into_inner(),
            Err(status) => return (listed, Some(status)),
        };
        assert!(page.reservations.len() <= request.page_size as usize, "{page:?}");
        listed.extend(page.reservations.iter().map(|r| (r.reservation_id.clone(), r.state())));
        if page.next_page_token.is_empty() {
            return (listed, None);
        }
        assert_ne!(page.next_page_token, request.page_token, "the same token again");
        request.page_token = page.next_page_token;
    }
    panic!("still listing after {MAX_PAGES} pages");
}

fn ids_of(made: &[Made], keep: impl Fn(&Made) -> bool) -> Vec<(String, v1::ReservationState)> {
    made.iter().filter(|made| keep(made)).map(|made| (made.id.clone(), made.state)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_lists_the_whole_cluster_once_in_order() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let started = tokio::time::Instant::now();
    let cluster = Cluster::start(&etcd, "listing").await;
    let claims = cluster.wait_until_consistent(&probe_ids()).await;
    let made = populate(&cluster, &claims, &[]).await;
    assert_eq!(made.len(), 3 * PER_NODE);
    let [first, second, third] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    // Every page through another node; page sizes that split nodes' runs.
    for (rotation, page_size) in [([first, second, third], 3), ([third, first, second], 5)] {
        let request = v1::ListReservationsRequest { page_size, ..Default::default() };
        let (listed, refused) = list_through(&rotation, request).await;
        assert!(refused.is_none(), "{refused:?}");
        assert_eq!(listed, ids_of(&made, |_| true), "page size {page_size}");
    }
    // Each node alone, one page of everything.
    for node in [first, second, third] {
        let request = v1::ListReservationsRequest { page_size: 1000, ..Default::default() };
        let (listed, refused) = list_through(&[node], request).await;
        assert!(refused.is_none(), "{refused:?}");
        assert_eq!(listed, ids_of(&made, |_| true));
    }

    // Filters as on one node: by state, by SKU (one node's reservations).
    let held = v1::ReservationState::Held;
    let request = v1::ListReservationsRequest {
        states: vec![held as i32],
        page_size: 2,
        ..Default::default()
    };
    let (listed, _) = list_through(&[second, third, first], request).await;
    assert_eq!(listed, ids_of(&made, |made| made.state == held));
    let sku = made.iter().find(|made| claims[&shard_of(&made.sku)].0 == cluster.ids[1]);
    let sku = sku.expect("node 1's sku").sku.clone();
    let request =
        v1::ListReservationsRequest { sku: sku.clone(), page_size: 2, ..Default::default() };
    let (listed, _) = list_through(&[third, first, second], request).await;
    assert_eq!(listed, ids_of(&made, |made| made.sku == sku));
    assert_eq!(listed.len(), PER_NODE);

    // A request another node forwarded: only the shards its receiver serves.
    let request = v1::ListReservationsRequest { page_size: 1000, ..Default::default() };
    let page = first.availability().list_reservations(forwarded(request)).await;
    let page = page.expect("a page").into_inner();
    let listed: Vec<(String, v1::ReservationState)> =
        page.reservations.iter().map(|r| (r.reservation_id.clone(), r.state())).collect();
    assert_eq!(listed, ids_of(&made, |made| claims[&shard_of(&made.id)].0 == cluster.ids[0]));
    assert!(page.next_page_token.is_empty(), "{page:?}");

    // Forwarded with shards named, one of them not the receiver's: its
    // page ends before that shard, and a page starting there is refused.
    let owned_by = |node: usize| -> Vec<u32> {
        let owner = &cluster.ids[node];
        claims.iter().filter(|(_, (holder, _))| holder == owner).map(|(shard, _)| *shard).collect()
    };
    let homes: Vec<u32> = listed.iter().map(|(id, _)| shard_of(id)).collect();
    let (low, high) = (homes[0], homes[homes.len() - 1]);
    let foreign = owned_by(1).into_iter().find(|shard| (low + 1..high).contains(shard));
    let foreign = foreign.expect("a node 1 shard between node 0's reservations");
    let mut named = owned_by(0);
    named.push(foreign);
    named.sort_unstable();
    let named: Vec<String> = named.iter().map(u32::to_string).collect();
    let with_shards = |page_token: String| {
        let message =
            v1::ListReservationsRequest { page_size: 1000, page_token, ..Default::default() };
        let mut request = forwarded(message);
        let value = named.join(",").parse().expect("ascii");
        request.metadata_mut().insert(LIST_SHARDS_HEADER, value);
        request
    };
    let page = first.availability().list_reservations(with_shards(String::new())).await;
    let page = page.expect("a page up to the foreign shard").into_inner();
    let before: Vec<(String, v1::ReservationState)> =
        listed.iter().filter(|(id, _)| shard_of(id) < foreign).cloned().collect();
    let got: Vec<(String, v1::ReservationState)> =
        page.reservations.iter().map(|r| (r.reservation_id.clone(), r.state())).collect();
    assert_eq!(got, before, "before shard {foreign}");
    let at_foreign = encode_list_token(&ScanPosition { shard: foreign, after: None });
    assert_eq!(page.next_page_token, at_foreign);
    let refused = first.availability().list_reservations(with_shards(at_foreign)).await;
    let refused = refused.expect_err("node 1's shard");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.metadata["shard"].clone()),
        ("NOT_OWNER", foreign.to_string())
    );
    eprintln!("listing across three nodes took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_shards_stop_the_listing_instead_of_being_skipped() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let started = tokio::time::Instant::now();
    let mut cluster = Cluster::start(&etcd, "listing-dead").await;
    let claims = cluster.wait_until_consistent(&probe_ids()).await;
    let victim = cluster.ids[2].clone();
    let victims: Vec<u32> = claims
        .iter()
        .filter(|(_, (owner, _))| **owner == victim)
        .map(|(shard, _)| *shard)
        .collect();
    // The longest run of live nodes' shards: a listing from its start
    // reads all of it, then stops at the victim's shard after it.
    let (run_start, gap) = victims
        .windows(2)
        .map(|pair| (pair[0] + 1, pair[1]))
        .max_by_key(|(start, end)| end - start)
        .expect("the victim owns two shards");
    assert!(gap - run_start >= 4, "a run of {} shards", gap - run_start);
    let run: Vec<u32> = (run_start..gap).collect();
    let made = populate(&cluster, &claims, &run).await;
    assert!(made.len() >= 3 * PER_NODE + run.len());

    cluster.nodes[2].kill();
    let through = [&cluster.nodes[0], &cluster.nodes[1]];
    let from_run = encode_list_token(&ScanPosition { shard: run_start, after: None });
    // From the start: stopped at the victim's first shard.
    let request = v1::ListReservationsRequest { page_size: 2, ..Default::default() };
    let (listed, refused) = list_through(&through, request).await;
    let info = refused.expect("refused").get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.metadata["shard"], victims[0].to_string(), "{info:?}");
    assert_eq!(listed, ids_of(&made, |made| shard_of(&made.id) < victims[0]));

    for request in [
        v1::ListReservationsRequest {
            page_size: 2,
            page_token: from_run.clone(),
            ..Default::default()
        },
        // A filter matching only live nodes' reservations stops there too:
        // the dead node's shards may hold matches.
        v1::ListReservationsRequest {
            states: vec![v1::ReservationState::Committed as i32],
            page_size: 1,
            page_token: from_run.clone(),
            ..Default::default()
        },
    ] {
        let asked = tokio::time::Instant::now();
        let (listed, refused) = list_through(&through, request.clone()).await;
        let took = asked.elapsed();
        let refused = refused.expect("refused at the dead node's first shard");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        let info = refused.get_details_error_info().expect("an ErrorInfo");
        assert!(["NOT_OWNER", "FAILING_CLOSED"].contains(&info.reason.as_str()), "{info:?}");
        assert_eq!(info.metadata["shard"], gap.to_string(), "{info:?}");
        let states = request.states.clone();
        let wanted = |made: &Made| {
            (run_start..gap).contains(&shard_of(&made.id))
                && (states.is_empty() || states.contains(&(made.state as i32)))
        };
        assert_eq!(listed, ids_of(&made, wanted), "before shard {gap}");
        assert!(!listed.is_empty(), "nothing listed before shard {gap}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        eprintln!("{} listed before shard {gap}, refused in {took:?}", listed.len());
    }
    eprintln!("listing with a dead node took {:?}", started.elapsed());
}
