//! Restore from stored records and recovery of what a crash cut short between
//! shards: an unfinished Reserve, a lost commit delivery, holds that expired
//! while the node was down, and a lost ship notice.

mod common;

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::hash::shard_of;
use atp_core::ledger::LedgerKind;
use atp_core::reservation::{ReservationState, ReserveRequest};
use atp_core::shard::{Begin, LineOp, ShardState, recover};

use common::{Node, START_MS, WEB, catalog, event_id, line, reservation, reserve_request, sku};

const TTL_MS: i64 = 60_000;

/// Per shard, the records its drained changes wrote.
type Stores = BTreeMap<u32, BTreeMap<Vec<u8>, Vec<u8>>>;
const SKU: &str = "sku-apple";
/// A SKU on another shard than `SKU`.
const OTHER_SKU: &str = "sku-banana";
const LOCATION: &str = "loc-central";

/// A node with 10 units of `SKU` at `LOCATION`, every change drained to `stores`.
fn node() -> (Node, Stores) {
    let mut node = Node::new(catalog());
    node.tick(START_MS);
    let event = StockEvent {
        id: event_id("receipt-1"),
        sku: sku(SKU),
        location: common::location(LOCATION),
        kind: StockEventKind::Received { quantity: 10 },
    };
    node.apply_event(&event, START_MS).expect("receipt applies");
    let mut stores = BTreeMap::new();
    persist(&mut node, &mut stores);
    (node, stores)
}

fn persist(node: &mut Node, stores: &mut Stores) {
    for (shard, state) in &mut node.shards {
        let store: &mut BTreeMap<Vec<u8>, Vec<u8>> = stores.entry(*shard).or_default();
        for (key, value) in state.drain_changes().records {
            match value {
                Some(value) => store.insert(key, value),
                None => store.remove(&key),
            };
        }
    }
}

/// "Crash": rebuild every shard from its records and recover at `now`.
fn restart(stores: &Stores, now: i64) -> Node {
    let mut node = Node::new(catalog());
    for (shard, store) in stores {
        let records = store.iter().map(|(k, v)| (k.clone(), v.clone()));
        let state = ShardState::restore(*shard, 1, common::settings(), records).expect("restores");
        node.shards.insert(*shard, state);
    }
    recover(&mut node.shards, &node.catalog, now);
    node
}

/// A reservation id whose home is not the SKU's shard.
fn remote_id(name: &str) -> String {
    (0..)
        .map(|n| format!("{name}-{n}"))
        .find(|id| shard_of(id) != shard_of(SKU))
        .expect("some id lives elsewhere")
}

#[test]
fn restored_state_answers_like_the_live_one() {
    let (mut node, mut stores) = node();
    let id = remote_id("order");
    let request = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 3)], TTL_MS);
    let first = node.reserve(&request, START_MS + 1).expect("reserves");
    persist(&mut node, &mut stores);

    let mut node = restart(&stores, START_MS + 2);
    assert_eq!(node.position(SKU, LOCATION).reserved, 3);
    // A retry after the restart gets the first answer; the id is remembered.
    assert_eq!(node.reserve(&request, START_MS + 3).expect("replays"), first);
    let other = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 4)], TTL_MS);
    assert!(node.reserve(&other, START_MS + 3).is_err(), "same id, other payload");
}

/// Receives 10 units of `sku_id` at `LOCATION`.
fn receive(node: &mut Node, sku_id: &str, now: i64) {
    let event = StockEvent {
        id: event_id(&format!("receipt-{sku_id}")),
        sku: sku(sku_id),
        location: common::location(LOCATION),
        kind: StockEventKind::Received { quantity: 10 },
    };
    node.apply_event(&event, now).expect("receipt applies");
}

/// A Reserve of 2 units of apple and 3 of banana (two line shards) whose home
/// is neither; `begin_reserve` has run, none of its holds is applied yet.
fn begin_two_shard_reserve(
    node: &mut Node,
    stores: &mut Stores,
    name: &str,
) -> (ReserveRequest, Vec<(u32, LineOp)>) {
    receive(node, OTHER_SKU, START_MS);
    persist(node, stores);
    let id = (0..)
        .map(|n| format!("{name}-{n}"))
        .find(|id| shard_of(id) != shard_of(SKU) && shard_of(id) != shard_of(OTHER_SKU))
        .expect("some id lives elsewhere");
    let lines = vec![line(SKU, LOCATION, 2), line(OTHER_SKU, LOCATION, 3)];
    let request = reserve_request(&id, WEB, lines, TTL_MS);
    let begin = node.shard_mut(shard_of(&id)).begin_reserve(&request, START_MS + 1);
    let Ok(Begin::Started { holds, .. }) = begin else { panic!("a new id starts: {begin:?}") };
    assert_eq!(holds.len(), 2, "one hold per line shard");
    (request, holds)
}

fn apply_hold(node: &mut Node, (shard, hold): &(u32, LineOp)) {
    node.shard_mut(*shard).apply_line_op(hold, &catalog(), START_MS + 1).expect("holds");
}

#[test]
fn a_reserve_whose_holds_are_all_durable_recovers_held() {
    let (mut node, mut stores) = node();
    let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, "durable");
    for hold in &holds {
        apply_hold(&mut node, hold);
    }
    // The crash comes before `finish_reserve`: the holds are durable, the
    // home record (PENDING, never stored) is not.
    persist(&mut node, &mut stores);

    let mut node = restart(&stores, START_MS + 2);
    let view = node.get(&request.id).expect("rebuilt from its holds");
    assert_eq!(view.state, ReservationState::Held);
    assert_eq!((view.created_at_ms, view.expires_at_ms), (START_MS + 1, START_MS + 1 + TTL_MS));
    assert_eq!(node.position(SKU, LOCATION).reserved, 2);
    assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 3);
    // A retry with the same payload gets the answer the Reserve would have
    // got; another payload under the id is refused.
    let replay = node.reserve(&request, START_MS + 3).expect("replays");
    assert_eq!(replay, view);
    assert_eq!(node.position(SKU, LOCATION).reserved, 2, "the replay held nothing more");
    let mut other = request.clone();
    other.lines[0].quantity = 1;
    assert!(matches!(node.reserve(&other, START_MS + 3), Err(CoreError::AlreadyExists(_))));
    // The rebuilt record is durable like any other, and expires on its TTL.
    persist(&mut node, &mut stores);
    let mut node = restart(&stores, START_MS + 1 + TTL_MS);
    assert_eq!(node.get(&request.id).expect("found").state, ReservationState::Expired);
    assert_eq!(node.position(SKU, LOCATION).reserved, 0);
    assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 0);
}

#[test]
fn a_rebuilt_reserve_whose_ttl_passed_while_down_expires() {
    let (mut node, mut stores) = node();
    let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, "late");
    for hold in &holds {
        apply_hold(&mut node, hold);
    }
    persist(&mut node, &mut stores);

    let now = START_MS + 1 + TTL_MS;
    let mut node = restart(&stores, now);
    // Rebuilt HELD and written by recovery; the first tick after it expires
    // it (never within recovery, whose writes may be cut short).
    assert_eq!(node.get(&request.id).expect("rebuilt").state, ReservationState::Held);
    node.tick(now + 1);
    assert_eq!(node.get(&request.id).expect("rebuilt").state, ReservationState::Expired);
    assert_eq!(node.position(SKU, LOCATION).reserved, 0);
    assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 0);
}

#[test]
fn a_reserve_with_a_hold_missing_is_rolled_back() {
    for missing in 0..2 {
        let (mut node, mut stores) = node();
        let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, "partial");
        apply_hold(&mut node, &holds[1 - missing]);
        persist(&mut node, &mut stores);
        let (held_sku, held_units) = if missing == 0 { (OTHER_SKU, 3) } else { (SKU, 2) };
        assert_eq!(node.position(held_sku, LOCATION).reserved, held_units);

        let mut node = restart(&stores, START_MS + 2);
        assert_eq!(node.position(SKU, LOCATION).reserved, 0, "the orphan hold is released");
        assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 0);
        assert!(node.get(&request.id).is_err(), "the unfinished reservation is unknown");
        let entries: Vec<_> = node.shards[&shard_of(held_sku)].ledger_entries().cloned().collect();
        assert!(
            entries.iter().any(|e| e.kind == LedgerKind::Abort && &*e.cause == request.id.as_str())
        );
        // Nothing was promised, so the retry is judged afresh.
        let view = node.reserve(&request, START_MS + 3).expect("reserves afresh");
        assert_eq!(view.created_at_ms, START_MS + 3);
    }
}

#[test]
fn holds_of_two_incarnations_do_not_rebuild_a_reservation() {
    let (mut node, mut stores) = node();
    let (request, first) = begin_two_shard_reserve(&mut node, &mut stores, "reused");
    // The first incarnation holds on one shard only and fails; its hold
    // stays (as if its rollback was lost). The id is then used again and the
    // second holds only the other shard: together they cover every line
    // shard, but not with one version, so nothing is rebuilt.
    apply_hold(&mut node, &first[0]);
    let home = shard_of(request.id.as_str());
    let LineOp::Hold { reservation, .. } = &first[0].1 else { panic!("a hold") };
    let version = reservation.version;
    let finished = node.shard_mut(home).finish_reserve(&request.id, version, false, START_MS + 1);
    assert_eq!(finished, None);
    let again = node.shard_mut(home).begin_reserve(&request, START_MS + 1);
    let Ok(Begin::Started { holds: second, .. }) = again else { panic!("starts again: {again:?}") };
    apply_hold(&mut node, &second[1]);
    persist(&mut node, &mut stores);

    let mut node = restart(&stores, START_MS + 2);
    assert!(node.get(&request.id).is_err(), "no record from mixed incarnations");
    assert_eq!(node.position(SKU, LOCATION).reserved, 0);
    assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 0);
}

#[test]
fn a_stale_hold_of_an_abandoned_reserve_is_rolled_back_beside_the_next_incarnation() {
    let (mut node, mut stores) = node();
    let (request, first) = begin_two_shard_reserve(&mut node, &mut stores, "abandoned");
    // The first incarnation holds on SKU's shard, then its task is lost: the
    // home abandons it after the pending timeout, and the process dies before
    // the Abort reaches the line shard (it is never delivered).
    apply_hold(&mut node, &first[0]);
    let home = shard_of(request.id.as_str());
    let past_timeout = START_MS + 1 + common::settings().pending_timeout_ms + 1;
    let aborts = node.shard_mut(home).tick(past_timeout);
    assert!(
        aborts.iter().any(|(_, op)| matches!(op, LineOp::Abort { .. })),
        "abandoning sends Aborts: {aborts:?}"
    );
    // The id begins again at once, with other lines (OTHER_SKU only), and holds.
    let retry =
        reserve_request(request.id.as_str(), WEB, vec![line(OTHER_SKU, LOCATION, 1)], TTL_MS);
    let again = node.shard_mut(home).begin_reserve(&retry, past_timeout);
    let Ok(Begin::Started { holds, version }) = again else { panic!("starts again: {again:?}") };
    node.shard_mut(holds[0].0).apply_line_op(&holds[0].1, &catalog(), past_timeout).expect("holds");
    node.shard_mut(home).finish_reserve(&retry.id, version, true, past_timeout).expect("held");
    persist(&mut node, &mut stores);
    assert_eq!(node.position(SKU, LOCATION).reserved, 2, "the stale hold is still there");

    let mut node = restart(&stores, past_timeout + 1);
    assert_eq!(node.position(SKU, LOCATION).reserved, 0, "the stale hold is rolled back");
    assert_eq!(node.position(OTHER_SKU, LOCATION).reserved, 1, "the new incarnation holds");
    assert_eq!(node.get(&retry.id).expect("known").state, ReservationState::Held);
}

#[test]
fn a_commit_whose_delivery_was_lost_reaches_its_lines() {
    let (mut node, mut stores) = node();
    let id = remote_id("commit");
    let request = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 5)], TTL_MS);
    node.reserve(&request, START_MS + 1).expect("reserves");
    // The home commits; the crash comes before the lines hear of it.
    let (_, ops) = node
        .shard_mut(shard_of(&id))
        .commit(&reservation(&id), &[], START_MS + 2)
        .expect("commits");
    assert!(!ops.is_empty());
    persist(&mut node, &mut stores);
    assert_eq!(node.position(SKU, LOCATION).committed, 0);

    let mut node = restart(&stores, START_MS + 3);
    let position = node.position(SKU, LOCATION);
    assert_eq!((position.reserved, position.committed), (0, 5));
    assert_eq!(node.get(&reservation(&id)).expect("found").state, ReservationState::Committed);
}

#[test]
fn holds_that_expired_while_down_are_released() {
    let (mut node, mut stores) = node();
    let id = remote_id("expiring");
    let request = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 2)], TTL_MS);
    node.reserve(&request, START_MS + 1).expect("reserves");
    persist(&mut node, &mut stores);

    let mut node = restart(&stores, START_MS + 1 + TTL_MS);
    assert_eq!(node.position(SKU, LOCATION).reserved, 0);
    assert_eq!(node.get(&reservation(&id)).expect("found").state, ReservationState::Expired);
}

#[test]
fn a_lost_ship_notice_fulfils_the_order_on_recovery() {
    let (mut node, mut stores) = node();
    let id = remote_id("shipped");
    let request = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 2)], TTL_MS);
    node.reserve(&request, START_MS + 1).expect("reserves");
    node.commit(&reservation(&id), &[], START_MS + 2).expect("commits");
    // The SKU's shard applies the shipment; its notice to the home is lost.
    let ship = StockEvent {
        id: event_id("ship-1"),
        sku: sku(SKU),
        location: common::location(LOCATION),
        kind: StockEventKind::Shipped { quantity: 2, reservation: Some(reservation(&id)) },
    };
    let applied = node.shard_mut(shard_of(SKU)).apply_event(&ship, &catalog(), START_MS + 3);
    assert!(applied.expect("ships").notice.is_some());
    persist(&mut node, &mut stores);
    assert_eq!(node.get(&reservation(&id)).expect("found").state, ReservationState::Committed);

    let mut node = restart(&stores, START_MS + 4);
    assert_eq!(node.get(&reservation(&id)).expect("found").state, ReservationState::Fulfilled);
    assert_eq!(node.position(SKU, LOCATION).on_hand, 8);
}

#[test]
fn a_cancel_that_overtakes_its_commit_frees_the_hold() {
    let (mut node, _) = node();
    let id = remote_id("raced");
    let request = reserve_request(&id, WEB, vec![line(SKU, LOCATION, 3)], TTL_MS);
    node.reserve(&request, START_MS + 1).expect("reserves");
    let home = shard_of(&id);
    let (_, commit_ops) =
        node.shard_mut(home).commit(&reservation(&id), &[], START_MS + 2).expect("commits");
    let (_, cancel_ops) =
        node.shard_mut(home).cancel(&reservation(&id), START_MS + 3).expect("cancels");
    // The Cancel's line op arrives first, the Commit's after it.
    node.deliver(cancel_ops, START_MS + 4);
    node.deliver(commit_ops, START_MS + 5);
    let position = node.position(SKU, LOCATION);
    assert_eq!((position.reserved, position.committed), (0, 0));
    assert_eq!(node.get(&reservation(&id)).expect("found").state, ReservationState::Cancelled);
}

fn with_metadata(mut request: ReserveRequest) -> ReserveRequest {
    request.metadata.order_id = "order-77".to_owned();
    request.metadata.labels.insert("cart".to_owned(), "c-9".to_owned());
    request
}

#[test]
fn metadata_survives_a_restart_with_the_record_and_without_it() {
    // With the record: stored after it.
    let (mut node, mut stores) = node();
    let id = remote_id("labelled");
    let request = with_metadata(reserve_request(&id, WEB, vec![line(SKU, LOCATION, 3)], TTL_MS));
    let first = node.reserve(&request, START_MS + 1).expect("reserves");
    assert_eq!(first.metadata, request.metadata);
    persist(&mut node, &mut stores);
    let mut node = restart(&stores, START_MS + 2);
    assert_eq!(node.get(&request.id).expect("found").metadata, request.metadata);
    assert_eq!(node.reserve(&request, START_MS + 3).expect("replays"), first);
    let mut other = request.clone();
    other.metadata.order_id = "order-78".to_owned();
    assert!(
        matches!(node.reserve(&other, START_MS + 3), Err(CoreError::AlreadyExists(_))),
        "metadata is part of the payload"
    );

    // Without the record: rebuilt from the holds, which carry it too.
    let (mut node, mut stores) = self::node();
    let id = remote_id("rebuilt");
    let request = with_metadata(reserve_request(&id, WEB, vec![line(SKU, LOCATION, 2)], TTL_MS));
    let begin = node.shard_mut(shard_of(&id)).begin_reserve(&request, START_MS + 1);
    let Ok(Begin::Started { holds, .. }) = begin else { panic!("a new id starts: {begin:?}") };
    for hold in &holds {
        apply_hold(&mut node, hold);
    }
    // The crash comes before `finish_reserve`: only the holds are durable.
    persist(&mut node, &mut stores);
    let mut node = restart(&stores, START_MS + 2);
    let view = node.get(&request.id).expect("rebuilt from its holds");
    assert_eq!(view.metadata, request.metadata);
}

/// A HELD record (shard 649) and its hold (shard 524) of `order-golden`, as
/// main at `fcd6c4b` (before metadata and keyed Extends) wrote them: 3 units
/// of sku-apple at loc-central, reserved at START_MS + 1 for 60 s, extended
/// at START_MS + 2 by 90 s.
const RECORD_WRITTEN_BEFORE_METADATA: &str = "0c6f726465722d676f6c64656e037765620109736b752d6170706c650b6c6f632d63656e7472616c06c0a9070182a0abfef962a49eb6fef962c2c9b2fef9620000010001";
const HOLD_WRITTEN_BEFORE_METADATA: &str = "000109736b752d6170706c650b6c6f632d63656e7472616c0600000c6f726465722d676f6c64656e037765620109736b752d6170706c650b6c6f632d63656e7472616c06c0a90782a0abfef962c2c9b2fef96201";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn keyed(tag: u8, id: &str) -> Vec<u8> {
    let mut key = vec![tag];
    key.extend_from_slice(id.as_bytes());
    key
}

#[test]
fn values_written_before_metadata_load_and_are_written_the_same() {
    let id = "order-golden";
    let (record_shard, hold_shard) = (shard_of(id), shard_of(SKU));
    assert_eq!((record_shard, hold_shard), (649, 524), "the fixture's shards");
    // Today's code reads them...
    let home = ShardState::restore(
        record_shard,
        1,
        common::settings(),
        [(keyed(b'r', id), hex(RECORD_WRITTEN_BEFORE_METADATA))],
    )
    .expect("an old record loads");
    let view = home.get(&reservation(id)).expect("found");
    assert_eq!(view.state, ReservationState::Held);
    assert_eq!((view.created_at_ms, view.expires_at_ms), (START_MS + 1, START_MS + 2 + 90_000));
    assert!(view.metadata.is_empty());
    let lines = ShardState::restore(
        hold_shard,
        1,
        common::settings(),
        [(keyed(b'h', id), hex(HOLD_WRITTEN_BEFORE_METADATA))],
    )
    .expect("an old hold loads");
    let holds = lines.line_holds();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].id.as_str(), id);

    // ...and, for a reservation without metadata, writes exactly those bytes.
    let (mut node, mut stores) = node();
    let request = reserve_request(id, WEB, vec![line(SKU, LOCATION, 3)], 60_000);
    node.reserve(&request, START_MS + 1).expect("reserves");
    node.extend(&request.id, 90_000, START_MS + 2).expect("extends");
    persist(&mut node, &mut stores);
    assert_eq!(stores[&record_shard][&keyed(b'r', id)], hex(RECORD_WRITTEN_BEFORE_METADATA));
    assert_eq!(stores[&hold_shard][&keyed(b'h', id)], hex(HOLD_WRITTEN_BEFORE_METADATA));
}

/// Restores only the shards `owned` from `stores` and recovers them as one
/// node of a cluster would.
fn restart_owned(
    stores: &Stores,
    owned: &[u32],
    now: i64,
) -> (BTreeMap<u32, ShardState>, atp_core::shard::Recovered) {
    let mut shards = BTreeMap::new();
    for shard in owned {
        let records = stores.get(shard).into_iter().flatten().map(|(k, v)| (k.clone(), v.clone()));
        let state = ShardState::restore(*shard, 1, common::settings(), records).expect("restores");
        shards.insert(*shard, state);
    }
    let recovered = atp_core::shard::recover_owned(
        &mut shards,
        &|shard| owned.contains(&shard),
        &catalog(),
        now,
    );
    (shards, recovered)
}

#[test]
fn a_node_owning_one_line_shard_keeps_an_unknown_hold_in_doubt_and_resolve_decides_it() {
    let (mut node, mut stores) = node();
    let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, "doubt");
    // Both holds durable, the record never written (the home died first).
    for hold in &holds {
        apply_hold(&mut node, hold);
    }
    persist(&mut node, &mut stores);
    let apple = shard_of(SKU);
    let banana = shard_of(OTHER_SKU);
    let home = shard_of(request.id.as_str());

    // The apple shard's node alone: neither "no record = roll back" nor
    // anything else is decided from what it sees.
    let (apple_node, recovered) = restart_owned(&stores, &[apple], START_MS + 2);
    assert_eq!(recovered.in_doubt, vec![request.id.clone()]);
    let holds = apple_node[&apple].line_holds();
    assert_eq!(holds.len(), 1, "the hold is kept: {holds:?}");
    assert_eq!(holds[0].lines[0].held, 2);

    // Facts from every owner: the home has no record, both shards hold the
    // same version: complete, so the home adopts it HELD and no hold moves.
    let (others, _) = restart_owned(&stores, &[banana, home], START_MS + 2);
    // The node starts from its own shard's facts, then asks whom `needed` names.
    let mut facts = BTreeMap::new();
    facts.insert(apple, apple_node[&apple].facts(&request.id));
    assert_eq!(atp_core::shard::needed(&request.id, &facts), [home].into_iter().collect());
    facts.insert(home, others[&home].facts(&request.id));
    assert!(atp_core::shard::resolve(&request.id, &facts, None).is_none(), "banana not asked yet");
    let needed = atp_core::shard::needed(&request.id, &facts);
    assert_eq!(needed, [apple, banana, home].into_iter().collect());
    facts.insert(banana, others[&banana].facts(&request.id));
    let resolution = atp_core::shard::resolve(&request.id, &facts, None).expect("decided");
    assert!(resolution.ops.is_empty(), "{resolution:?}");
    let adopted = resolution.adopt.expect("the home rebuilds the record");
    let mut home_state = others.into_iter().find(|(shard, _)| *shard == home).expect("home").1;
    assert!(home_state.adopt(&adopted, START_MS + 3));
    assert_eq!(home_state.get(&request.id).expect("rebuilt").state, ReservationState::Held);
}

#[test]
fn an_incomplete_reserve_across_nodes_waits_out_late_holds_before_rolling_back() {
    let (mut node, mut stores) = node();
    let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, "late");
    // Only the apple hold landed; the banana Hold may still be on its way.
    let apple_hold = holds.iter().find(|(shard, _)| *shard == shard_of(SKU)).expect("apple");
    apply_hold(&mut node, apple_hold);
    persist(&mut node, &mut stores);
    let shards = [shard_of(SKU), shard_of(OTHER_SKU), shard_of(request.id.as_str())];
    let (all, _) = restart_owned(&stores, &shards[1..], START_MS + 2);
    let (apple, _) = restart_owned(&stores, &shards[..1], START_MS + 2);
    let mut facts = BTreeMap::new();
    for shard in shards {
        let state = all.get(&shard).or_else(|| apple.get(&shard)).expect("owned somewhere");
        facts.insert(shard, state.facts(&request.id));
    }
    let timeout = common::settings().pending_timeout_ms;
    let early = atp_core::shard::resolve(&request.id, &facts, Some((START_MS + 2, timeout)));
    assert!(early.is_none(), "a late Hold could still land");
    let late =
        atp_core::shard::resolve(&request.id, &facts, Some((START_MS + 1 + timeout, timeout)))
            .expect("decided once late Holds are refused");
    assert_eq!(resolution_ops(&late), vec![(shard_of(SKU), "abort")]);
    assert!(late.adopt.is_none());
}

fn resolution_ops(resolution: &atp_core::shard::Resolution) -> Vec<(u32, &'static str)> {
    resolution
        .ops
        .iter()
        .map(|(shard, op)| {
            let kind = match op {
                LineOp::Abort { .. } => "abort",
                LineOp::Settle { .. } => "settle",
                LineOp::Revert { .. } => "revert",
                _ => "other",
            };
            (*shard, kind)
        })
        .collect()
}

/// A home that refused or abandoned a Reserve never adopts that version
/// (`docs/PROTOCOL.md`, "A home never adopts a version it dropped"): a
/// resolver that read a hold before its `Abort` landed must not rebuild a
/// HELD record the hold is leaving.
#[test]
fn a_home_refuses_to_adopt_a_version_it_refused_or_abandoned() {
    let timeout = common::settings().pending_timeout_ms;
    for abandoned in [false, true] {
        let (mut node, mut stores) = node();
        let name = if abandoned { "abandoned" } else { "refused" };
        let (request, holds) = begin_two_shard_reserve(&mut node, &mut stores, name);
        let Some((_, LineOp::Hold { reservation: incarnation, .. })) = holds.first().cloned()
        else {
            panic!("a Reserve starts with holds: {holds:?}");
        };
        let home = node.shard_mut(shard_of(request.id.as_str()));
        if abandoned {
            let aborts = home.tick(START_MS + 1 + timeout);
            assert_eq!(aborts.len(), 2, "the abandoned Reserve's holds are aborted: {aborts:?}");
        } else {
            let answer = home.finish_reserve(&request.id, incarnation.version, false, START_MS + 2);
            assert!(answer.is_none(), "a refusal is not answered HELD");
        }
        assert!(!home.adopt(&incarnation, START_MS + 2 + timeout), "{name}: adopted");
        let record = home.get(&request.id);
        assert!(record.is_err(), "{name}: a record came back: {record:?}");
        // A new Reserve of the id starts afresh at a higher version, and
        // that version can be adopted.
        let begin = home.begin_reserve(&request, START_MS + 3 + timeout);
        let Ok(Begin::Started { version, .. }) = begin else { panic!("starts: {begin:?}") };
        assert!(version > incarnation.version);
    }
}
