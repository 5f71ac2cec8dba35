//! Named scenarios of DESIGN.md §2, run through the synchronous node of `common`.

mod common;

use atp_core::CoreError;
use atp_core::availability::sku_availability;
use atp_core::catalog::Lifecycle;
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::reservation::{ReservationState, ReservationView};

use common::{
    MARKET, MARKET_BUFFER, MARKET_CAP, Node, START_MS, WEB, catalog, commit_line, event_id, line,
    reservation, reserve_request, sku,
};

const TTL_MS: i64 = 60_000;

fn node() -> Node {
    let mut node = Node::new(catalog());
    node.tick(START_MS);
    node
}

fn event(id: &str, sku_id: &str, location_id: &str, kind: StockEventKind) -> StockEvent {
    StockEvent { id: event_id(id), sku: sku(sku_id), location: common::location(location_id), kind }
}

fn receive(node: &mut Node, id: &str, sku_id: &str, location_id: &str, quantity: i64, now: i64) {
    let kind = StockEventKind::Received { quantity };
    node.apply_event(&event(id, sku_id, location_id, kind), now).expect("receipt applies");
}

fn channel_atp(node: &Node, sku_id: &str, channel_id: &str) -> i64 {
    let shard = shard_of(sku_id);
    let positions =
        node.shards.get(&shard).map(|state| state.positions_of(&sku(sku_id))).unwrap_or_default();
    let availability =
        sku_availability(&sku(sku_id), shard, 1, &positions, &node.catalog, &[], &[]);
    availability
        .channels
        .iter()
        .find(|(channel, _)| channel.as_str() == channel_id)
        .map(|(_, atp)| *atp)
        .expect("the channel is configured")
}

fn is_insufficient(result: &Result<ReservationView, CoreError>) -> bool {
    matches!(result, Err(CoreError::InsufficientStock { .. }))
}

#[test]
fn channel_atp_applies_buffer_and_cap() {
    let mut node = node();
    // market = clamp(atp(central) + atp(south) − buffer, 0, cap); south keeps 2 as safety stock.
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    receive(&mut node, "e2", "sku-apple", "loc-south", 10, START_MS);
    assert_eq!(channel_atp(&node, "sku-apple", MARKET), MARKET_CAP);
    assert_eq!(channel_atp(&node, "sku-apple", WEB), 10);

    let too_many = reserve_request("r1", MARKET, vec![line("sku-apple", "loc-central", 7)], TTL_MS);
    let refused = node.reserve(&too_many, START_MS);
    let Err(CoreError::InsufficientStock { location, available, .. }) = refused else {
        panic!("the cap limits a reserve: {refused:?}");
    };
    assert_eq!((location.as_str(), available), ("channel market", MARKET_CAP));

    // The buffer: 3 units at central alone show as 3 − 2 on market.
    receive(&mut node, "e3", "sku-banana", "loc-central", 3, START_MS);
    assert_eq!(channel_atp(&node, "sku-banana", MARKET), 3 - MARKET_BUFFER);
    let two = reserve_request("r2", MARKET, vec![line("sku-banana", "loc-central", 2)], TTL_MS);
    assert!(is_insufficient(&node.reserve(&two, START_MS)));
    let one = reserve_request("r3", MARKET, vec![line("sku-banana", "loc-central", 1)], TTL_MS);
    node.reserve(&one, START_MS).expect("one unit is within the buffer");
    assert_eq!(channel_atp(&node, "sku-banana", MARKET), 0);
}

#[test]
fn hold_on_one_channel_lowers_the_other_at_a_shared_location() {
    let mut node = node();
    receive(&mut node, "e1", "sku-banana", "loc-central", 4, START_MS);
    assert_eq!(
        (channel_atp(&node, "sku-banana", WEB), channel_atp(&node, "sku-banana", MARKET)),
        (4, 2)
    );

    let web = reserve_request("web-1", WEB, vec![line("sku-banana", "loc-central", 3)], TTL_MS);
    node.reserve(&web, START_MS).expect("web holds 3");
    assert_eq!(
        (channel_atp(&node, "sku-banana", WEB), channel_atp(&node, "sku-banana", MARKET)),
        (1, 0)
    );
    let market =
        reserve_request("market-1", MARKET, vec![line("sku-banana", "loc-central", 1)], TTL_MS);
    assert!(is_insufficient(&node.reserve(&market, START_MS)), "the web hold is not sold twice");
}

#[test]
fn commit_of_part_of_a_hold_frees_the_remainder() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    receive(&mut node, "e2", "sku-cherry", "loc-north", 5, START_MS);
    let lines = vec![line("sku-apple", "loc-central", 5), line("sku-cherry", "loc-north", 2)];
    node.reserve(&reserve_request("r1", WEB, lines, TTL_MS), START_MS).expect("held");

    let view = node
        .commit(&reservation("r1"), &[commit_line("sku-apple", "loc-central", 3)], START_MS)
        .expect("committed");
    assert_eq!(view.state, ReservationState::Committed);
    let committed: Vec<i64> = view.lines.iter().map(|line| line.committed).collect();
    assert_eq!(committed, vec![3, 2], "a line not named commits all it holds");
    let apple = node.position("sku-apple", "loc-central");
    assert_eq!((apple.on_hand, apple.reserved, apple.committed), (10, 0, 3));
    let cherry = node.position("sku-cherry", "loc-north");
    assert_eq!((cherry.on_hand, cherry.reserved, cherry.committed), (5, 0, 2));
    assert_eq!(channel_atp(&node, "sku-apple", WEB), 7, "the 2 units not committed are free again");
}

#[test]
fn commit_twice_is_the_same_answer_and_other_quantities_are_refused() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let id = reservation("r1");
    let hold = vec![line("sku-apple", "loc-central", 4)];
    node.reserve(&reserve_request("r1", WEB, hold, TTL_MS), START_MS).expect("held");

    let first = node.commit(&id, &[], START_MS + 1_000).expect("committed");
    let again = node.commit(&id, &[], START_MS + 2_000).expect("a retry is answered");
    assert_eq!(again, first);
    let spelled_out = [commit_line("sku-apple", "loc-central", 4)];
    assert_eq!(node.commit(&id, &spelled_out, START_MS + 2_000), Ok(first), "the same quantities");
    let other = [commit_line("sku-apple", "loc-central", 3)];
    assert!(matches!(node.commit(&id, &other, START_MS + 3_000), Err(CoreError::AlreadyExists(_))));
    assert_eq!(node.position("sku-apple", "loc-central").committed, 4, "committed once");
}

#[test]
fn commit_after_expiry_is_refused() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let hold = vec![line("sku-apple", "loc-central", 4)];
    node.reserve(&reserve_request("r1", WEB, hold, 1_000), START_MS).expect("held");

    let later = START_MS + 1_000;
    node.tick(later);
    let refused = node.commit(&reservation("r1"), &[], later);
    assert!(
        matches!(refused, Err(CoreError::WrongState { state: ReservationState::Expired, .. })),
        "{refused:?}"
    );
    let position = node.position("sku-apple", "loc-central");
    assert_eq!((position.reserved, position.committed), (0, 0));
}

#[test]
fn a_refused_request_does_not_lose_the_releases_of_an_expiry() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let hold = vec![line("sku-apple", "loc-central", 4)];
    node.reserve(&reserve_request("r1", WEB, hold, 1_000), START_MS).expect("held");

    // No tick since the TTL passed: the commit's own tick expires the hold, then refuses.
    let later = START_MS + 5_000;
    let refused = node.commit(&reservation("r1"), &[], later);
    assert!(matches!(refused, Err(CoreError::WrongState { .. })), "{refused:?}");
    let home = node.shard_mut(shard_of("r1"));
    assert_eq!(home.next_deadline(), Some(later), "the releases are due at once");
    node.tick(later);
    assert_eq!(node.position("sku-apple", "loc-central").reserved, 0, "the expired hold is freed");
}

#[test]
fn a_late_count_does_not_erase_a_later_sale() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let sale = StockEventKind::Shipped { quantity: 3, reservation: None };
    node.apply_event(&event("sale", "sku-apple", "loc-central", sale), START_MS + 10_000)
        .expect("sold");

    // Counted 10 as of before the sale, reported after it.
    let count = StockEventKind::Counted { on_hand: 10, as_of_ms: START_MS + 5_000 };
    let applied = node
        .apply_event(&event("count-1", "sku-apple", "loc-central", count), START_MS + 20_000)
        .expect("counted");
    assert_eq!(applied.position.on_hand, 7);

    // An older count than the one applied changes nothing.
    let older = StockEventKind::Counted { on_hand: 50, as_of_ms: START_MS + 1_000 };
    node.apply_event(&event("count-0", "sku-apple", "loc-central", older), START_MS + 30_000)
        .expect("recorded");
    assert_eq!(node.position("sku-apple", "loc-central").on_hand, 7);
}

#[test]
fn a_count_without_as_of_is_a_count_now_and_its_retry_is_a_duplicate() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let sale = StockEventKind::Shipped { quantity: 3, reservation: None };
    node.apply_event(&event("sale", "sku-apple", "loc-central", sale), START_MS + 10_000)
        .expect("sold");

    // Counted 4 now: the sale before it is in the count, not added to it.
    let now = StockEventKind::Counted { on_hand: 4, as_of_ms: atp_core::events::COUNTED_NOW };
    let count = event("count-now", "sku-apple", "loc-central", now);
    let applied = node.apply_event(&count, START_MS + 20_000).expect("counted");
    assert_eq!((applied.position.on_hand, applied.duplicate), (4, false));
    let again = node.apply_event(&count, START_MS + 40_000).expect("the same event");
    assert_eq!((again.position.on_hand, again.duplicate), (4, true));

    // A count as of before it is older than this one: superseded.
    let late = StockEventKind::Counted { on_hand: 50, as_of_ms: START_MS + 15_000 };
    node.apply_event(&event("count-late", "sku-apple", "loc-central", late), START_MS + 50_000)
        .expect("recorded");
    assert_eq!(node.position("sku-apple", "loc-central").on_hand, 4);
}

fn committed_order(
    node: &mut Node,
    id: &str,
    lines: Vec<atp_core::reservation::ReserveLine>,
) -> ReservationId {
    node.reserve(&reserve_request(id, WEB, lines, TTL_MS), START_MS).expect("held");
    node.commit(&reservation(id), &[], START_MS).expect("committed");
    reservation(id)
}

fn ship(
    node: &mut Node,
    id: &str,
    sku_id: &str,
    location_id: &str,
    quantity: i64,
    order: &ReservationId,
) {
    let kind = StockEventKind::Shipped { quantity, reservation: Some(order.clone()) };
    node.apply_event(&event(id, sku_id, location_id, kind), START_MS + 1_000).expect("shipped");
}

#[test]
fn shipping_every_committed_unit_fulfils_the_order() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    receive(&mut node, "e2", "sku-cherry", "loc-north", 5, START_MS);
    let lines = vec![line("sku-apple", "loc-central", 2), line("sku-cherry", "loc-north", 1)];
    let order = committed_order(&mut node, "o1", lines);

    ship(&mut node, "ship-1", "sku-apple", "loc-central", 2, &order);
    assert_eq!(node.get(&order).expect("known").state, ReservationState::Committed);
    ship(&mut node, "ship-2", "sku-cherry", "loc-north", 1, &order);
    let view = node.get(&order).expect("known");
    assert_eq!(view.state, ReservationState::Fulfilled);
    assert_eq!(view.lines.iter().map(|line| line.shipped).collect::<Vec<_>>(), vec![2, 1]);

    let apple = node.position("sku-apple", "loc-central");
    assert_eq!((apple.on_hand, apple.committed), (8, 0), "on_hand and committed fall together");
    let extra = StockEventKind::Shipped { quantity: 1, reservation: Some(order.clone()) };
    let refused =
        node.apply_event(&event("ship-3", "sku-apple", "loc-central", extra), START_MS + 2_000);
    assert!(matches!(refused, Err(CoreError::FailedPrecondition(_))), "nothing is left to ship");
}

#[test]
fn cancel_frees_only_the_unshipped_units() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let order = committed_order(&mut node, "o1", vec![line("sku-apple", "loc-central", 4)]);
    ship(&mut node, "ship-1", "sku-apple", "loc-central", 1, &order);

    let cancelled = node.cancel(&order, START_MS + 2_000).expect("cancelled");
    assert_eq!(cancelled.state, ReservationState::Cancelled);
    assert_eq!(cancelled.lines[0].shipped, 1);
    let position = node.position("sku-apple", "loc-central");
    assert_eq!((position.on_hand, position.committed), (9, 0));
    assert_eq!(channel_atp(&node, "sku-apple", WEB), 9);
    assert_eq!(
        node.cancel(&order, START_MS + 3_000),
        Ok(cancelled),
        "a retry gets the first answer"
    );
}

#[test]
fn a_refused_reserve_stores_nothing() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 3, START_MS);
    let too_many = reserve_request("r1", WEB, vec![line("sku-apple", "loc-central", 4)], TTL_MS);
    assert!(is_insufficient(&node.reserve(&too_many, START_MS)));
    assert!(matches!(node.get(&reservation("r1")), Err(CoreError::NotFound(_))));
    assert_eq!(node.position("sku-apple", "loc-central").reserved, 0);

    // The id is free: another payload is a new reserve, not AlreadyExists.
    let fits = reserve_request("r1", WEB, vec![line("sku-apple", "loc-central", 3)], TTL_MS);
    node.reserve(&fits, START_MS).expect("held");
}

fn set_location_state(
    node: &mut Node,
    location_id: &str,
    state: Lifecycle,
) -> Result<bool, CoreError> {
    let mut location = node.catalog.locations[&common::location(location_id)].clone();
    location.state = state;
    node.catalog.upsert_location(location)
}

fn location_atp(node: &Node, sku_id: &str, location_id: &str) -> (i64, i64) {
    let shard = shard_of(sku_id);
    let positions =
        node.shards.get(&shard).map(|state| state.positions_of(&sku(sku_id))).unwrap_or_default();
    let filter = [common::location(location_id)];
    let availability =
        sku_availability(&sku(sku_id), shard, 1, &positions, &node.catalog, &filter, &[]);
    let view = &availability.locations[0];
    (view.on_hand, view.atp)
}

#[test]
fn a_paused_location_shows_its_stock_promises_nothing_and_keeps_its_holds() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-central", 10, START_MS);
    let held = reserve_request("r1", WEB, vec![line("sku-apple", "loc-central", 4)], TTL_MS);
    node.reserve(&held, START_MS).expect("held while active");
    let other = reserve_request("r2", WEB, vec![line("sku-apple", "loc-central", 1)], TTL_MS);
    node.reserve(&other, START_MS).expect("held while active");

    assert!(set_location_state(&mut node, "loc-central", Lifecycle::Paused).expect("paused"));
    assert_eq!(location_atp(&node, "sku-apple", "loc-central"), (10, 0), "on_hand stays visible");
    assert_eq!(channel_atp(&node, "sku-apple", WEB), 0);
    let refused = node.reserve(
        &reserve_request("r3", WEB, vec![line("sku-apple", "loc-central", 1)], TTL_MS),
        START_MS,
    );
    assert!(
        matches!(
            &refused,
            Err(CoreError::NotActive { kind: "location", state: Lifecycle::Paused, .. })
        ),
        "{refused:?}"
    );
    // Existing holds end as they would; stock events still apply.
    let view = node.commit(&reservation("r1"), &[], START_MS).expect("commit at a paused location");
    assert_eq!(view.state, ReservationState::Committed);
    node.release(&reservation("r2"), START_MS).expect("release at a paused location");
    receive(&mut node, "e2", "sku-apple", "loc-central", 1, START_MS);
    let position = node.position("sku-apple", "loc-central");
    assert_eq!((position.on_hand, position.reserved, position.committed), (11, 0, 4));

    assert!(set_location_state(&mut node, "loc-central", Lifecycle::Active).expect("resumed"));
    assert_eq!(location_atp(&node, "sku-apple", "loc-central"), (11, 7));
}

#[test]
fn retiring_is_final_and_a_paused_channel_takes_no_holds() {
    let mut node = node();
    receive(&mut node, "e1", "sku-apple", "loc-north", 10, START_MS);
    assert!(set_location_state(&mut node, "loc-north", Lifecycle::Retired).expect("retired"));
    assert_eq!(location_atp(&node, "sku-apple", "loc-north"), (10, 0));
    assert!(!set_location_state(&mut node, "loc-north", Lifecycle::Retired).expect("unchanged"));
    for state in [Lifecycle::Active, Lifecycle::Paused] {
        let refused = set_location_state(&mut node, "loc-north", state);
        assert!(matches!(refused, Err(CoreError::NotActive { state: Lifecycle::Retired, .. })));
    }

    receive(&mut node, "e2", "sku-apple", "loc-central", 5, START_MS);
    let mut web = node.catalog.channels[&common::channel(WEB)].clone();
    web.state = Lifecycle::Paused;
    node.catalog.upsert_channel(web).expect("paused");
    assert_eq!(channel_atp(&node, "sku-apple", WEB), 0);
    assert_eq!(
        location_atp(&node, "sku-apple", "loc-central"),
        (5, 5),
        "the location still promises"
    );
    let refused = node.reserve(
        &reserve_request("r1", WEB, vec![line("sku-apple", "loc-central", 1)], TTL_MS),
        START_MS,
    );
    assert!(matches!(&refused, Err(CoreError::NotActive { kind: "channel", .. })), "{refused:?}");
    let market = reserve_request("r2", MARKET, vec![line("sku-apple", "loc-central", 1)], TTL_MS);
    node.reserve(&market, START_MS).expect("another channel over the same location still holds");
}

/// Safe to publish (issue 13): a SKU's demand rate decays on the shard's
/// own ticks, without new holds: each tick writes its rate record and names
/// the SKU as changed (so the node publishes and streams it again), and
/// the published figure rises back towards the channel ATP.
#[test]
fn demand_rates_decay_on_ticks_without_new_holds() {
    let mut catalog = catalog();
    let mut web = catalog.channels[&common::channel(WEB)].clone();
    web.publish.lag_ms = 60_000;
    catalog.upsert_channel(web.clone()).expect("valid channel");
    let mut node = Node::new(catalog);
    node.tick(START_MS);
    receive(&mut node, "e1", "sku-apple", "loc-north", 100, START_MS);
    for n in 0..30 {
        let request = reserve_request(
            &format!("r-{n}"),
            WEB,
            vec![line("sku-apple", "loc-north", 1)],
            3_600_000,
        );
        node.reserve(&request, START_MS).expect("held");
    }
    let shard = shard_of("sku-apple");
    node.shard_mut(shard).drain_changes();
    let published = |node: &mut Node, now: i64| {
        let state = node.shard_mut(shard);
        let demand = state.demand_of(&sku("sku-apple")).to_vec();
        atp_core::availability::published(&web, 70, &demand, now)
    };
    // 120 an hour over a 60 s lag: Poisson(2) holds back 5.
    assert_eq!(published(&mut node, START_MS), 65);

    // Nothing due before the interval; one tick after it.
    let interval = atp_core::publish::DEMAND_DECAY_INTERVAL_MS;
    node.tick(START_MS + interval - 1);
    assert!(node.shard_mut(shard).drain_changes().skus.is_empty());
    let mut now = START_MS + interval;
    node.tick(now);
    let changes = node.shard_mut(shard).drain_changes();
    assert_eq!(changes.skus, vec![sku("sku-apple")], "the decayed SKU is published again");
    assert!(!changes.records.is_empty(), "its rate is written");
    let rate = node.shard_mut(shard).demand_of(&sku("sku-apple"))[0].1;
    assert_eq!(rate.at_ms, now, "the rate was advanced to the tick");

    // Hours of ticks without holds: the rate decays and the figure rises
    // back to the ATP, tick by tick (never down).
    let mut last = published(&mut node, now);
    for _ in 0..(6 * 60) {
        now += interval;
        node.tick(now);
        let figure = published(&mut node, now);
        assert!(figure >= last, "{figure} < {last}");
        last = figure;
    }
    assert_eq!(last, 70, "after 6 h without holds nothing is held back");
}
