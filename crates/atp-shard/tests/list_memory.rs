//! ListReservations' memory does not grow with the number of reservations:
//! a full paged scan's heap growth is measured (a counting global
//! allocator, alone in this test binary) at 10,000 and 100,000.

mod common;

use atp_core::ids::ChannelId;
use atp_core::reservation::{ReservationFilter, ReserveLine, ReserveRequest, ScanPosition};
use atp_shard::{Clock, Node, NodeConfig};
use peak_alloc::PeakAlloc;

use common::{loc, rid, sku};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const START_MS: i64 = 1_700_000_000_000;
/// The largest page, as a client paging at MAX_LIST_PAGE_SIZE would ask.
const PAGE_SIZE: usize = 1_000;
const SKUS: usize = 64;

/// A node holding `count` HELD reservations of one unit each.
async fn node_with(count: usize) -> Node {
    let node = Node::start(NodeConfig::default(), Clock::starting_at(START_MS));
    let names: Vec<String> = (0..SKUS).map(|n| format!("sku-{n}")).collect();
    let stock: Vec<(&str, i64)> = names.iter().map(|name| (name.as_str(), 1_000_000)).collect();
    common::stock(&node, &stock).await;
    let requests: Vec<ReserveRequest> = (0..count)
        .map(|n| ReserveRequest {
            id: rid(&format!("reservation-{n:06}")),
            channel: ChannelId::parse("channel", "web").expect("valid"),
            lines: vec![ReserveLine {
                sku: sku(&names[n % SKUS]),
                location: loc("dc-1"),
                quantity: 1,
            }],
            ttl_ms: 60 * 60 * 1000,
            metadata: Default::default(),
        })
        .collect();
    for chunk in requests.chunks(1_000) {
        for result in node.reserve_batch(chunk.to_vec()).await.expect("a batch") {
            result.expect("reserved");
        }
    }
    node
}

/// Scans everything page by page, keeping nothing; returns the reservations
/// seen and the heap's peak growth over where it stood before the scan.
async fn scan(node: &Node) -> (usize, usize) {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let mut seen = 0;
    let mut from = ScanPosition::default();
    loop {
        let page = node
            .list_reservations(ReservationFilter::default(), from, PAGE_SIZE)
            .await
            .expect("a page");
        seen += page.reservations.len();
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    (seen, ALLOCATOR.peak_usage().saturating_sub(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scan_grows_the_heap_the_same_at_ten_and_a_hundred_thousand() {
    let mut growth = Vec::new();
    for count in [10_000, 100_000] {
        let node = node_with(count).await;
        let (seen, grown) = scan(&node).await;
        assert_eq!(seen, count, "a full scan shows every reservation");
        growth.push(grown);
        node.shutdown();
    }
    let (small, large) = (growth[0], growth[1]);
    eprintln!("heap growth of a full scan: {small} bytes at 10,000, {large} at 100,000");
    // One page of 1,000 views is a few hundred KiB; allow the runtime's own
    // allocations some room, but nothing that scales with the count (10×
    // more reservations are tens of MiB more state).
    assert!(large < 4 * 1024 * 1024, "a scan of 100,000 grew the heap {large} bytes");
    assert!(
        large <= small + small / 2 + 256 * 1024,
        "heap growth of a full scan: {small} bytes at 10,000, {large} at 100,000"
    );
}
