//! `Node::list_reservations_of`: a listing over some home shards only (a
//! cluster node's served shards) reads exactly those, in (home shard, id)
//! order, page by page, and its `next` never skips one of them.

mod common;

use atp_core::hash::shard_of;
use atp_core::ids::ChannelId;
use atp_core::reservation::{ReservationFilter, ReserveLine, ReserveRequest, ScanPosition};
use atp_shard::{Clock, Node, NodeConfig};

use common::{loc, rid, sku};

const START_MS: i64 = 1_700_000_000_000;
const COUNT: usize = 300;

/// Every page of the listing over the shards `listed` accepts, from the start.
async fn list_all(node: &Node, page_size: usize, listed: impl Fn(u32) -> bool) -> Vec<String> {
    let mut ids = Vec::new();
    let mut from = ScanPosition::default();
    for _ in 0..COUNT * 2 {
        let page = node
            .list_reservations_of(ReservationFilter::default(), from, page_size, &listed)
            .await
            .expect("a page");
        assert!(page.reservations.len() <= page_size);
        ids.extend(page.reservations.into_iter().map(|view| view.id.as_str().to_owned()));
        match page.next {
            Some(next) => from = next,
            None => return ids,
        }
    }
    panic!("still listing after {} pages", COUNT * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_some_shards_reads_exactly_those_in_order() {
    let node = Node::start(NodeConfig::default(), Clock::starting_at(START_MS));
    common::stock(&node, &[("mug", 1_000_000)]).await;
    let mut made: Vec<String> = (0..COUNT).map(|n| format!("r-{n}")).collect();
    for id in &made {
        let request = ReserveRequest {
            id: rid(id),
            channel: ChannelId::parse("channel", "web").expect("valid"),
            lines: vec![ReserveLine { sku: sku("mug"), location: loc("dc-1"), quantity: 1 }],
            ttl_ms: 60 * 60 * 1000,
            metadata: Default::default(),
        };
        node.reserve(request).await.expect("reserved");
    }
    made.sort_by_key(|id| (shard_of(id), id.clone()));
    let even = |shard: u32| shard.is_multiple_of(2);
    for page_size in [1, 7, 1000] {
        let listed = list_all(&node, page_size, even).await;
        let expected: Vec<String> = made.iter().filter(|id| even(shard_of(id))).cloned().collect();
        assert!(!expected.is_empty() && expected.len() < COUNT);
        assert_eq!(listed, expected, "page size {page_size}");
        assert_eq!(list_all(&node, page_size, |_| true).await, made, "page size {page_size}");
    }
    assert!(list_all(&node, 10, |_| false).await.is_empty());
    node.shutdown();
}
