//! ListReservations in cluster mode: one page of the whole cluster's
//! listing, from any node.
//!
//! The listing is ordered by (home shard, id) and a page token is the last
//! position covered ([`ScanPosition`]). The answering node routes every
//! shard from the token's shard on: the shards it serves are read here; the
//! others are asked of their owners, one sub-request per owner (forwarded,
//! one hop, the caller's deadline, all at once), each naming its shards in
//! [`LIST_SHARDS_HEADER`]. Every part is one page of its own shards from the
//! same position, so it is a prefix of that node's ordered stream: the
//! first `page_size` entries of the merge, up to the least position any part
//! reached, are the cluster's first `page_size` from the token ([`merge`]).
//!
//! A shard nobody serves now (its owner dead, unreachable or failing
//! closed) is never skipped: a page stops before it (a short page whose
//! token points at it) and a page that would start in it is refused with
//! that shard's UNAVAILABLE status (`NOT_OWNER` or `FAILING_CLOSED`), so
//! the client retries from there once the shard is served again.

use std::collections::{BTreeMap, BTreeSet};

use atp_core::CoreError;
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::ReservationId;
use atp_core::reservation::ScanPosition;
use atp_proto::requests::{ListQuery, decode_list_token, encode_list_token};
use atp_proto::{status_of, v1};
use atp_shard::Node;
use futures::future::join_all;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::error::node_status;
use crate::fence::{Fence, ShardRoute};
use crate::forward::{Forwarder, Incoming, Unreachable};

/// On a ListReservations one node forwards to another: the home shards it
/// is to list (it must serve every one of them), as ascending ranges
/// `a-b,c,...`.
pub const LIST_SHARDS_HEADER: &str = "x-atp-list-shards";

/// What a cluster-mode listing answers for `epoch`: a page spans shards,
/// each under its own epoch, so none is named.
const LISTING_EPOCH: u64 = 0;

/// A place in the (home shard, id) order; `None` before the shard's first id.
type Key = (u32, Option<ReservationId>);

fn key_of(position: &ScanPosition) -> Key {
    (position.shard, position.after.clone())
}

/// One node's page: a prefix of its part of the listing from the token, and
/// how far it reached (`None`: to the end).
#[derive(Debug, Default)]
pub(crate) struct Part {
    /// The listed reservations with their ids, in order.
    pub(crate) reservations: Vec<(ReservationId, v1::Reservation)>,
    /// Where that node would go on from.
    pub(crate) next: Option<ScanPosition>,
}

/// Merges the parts of a page from `from`: the first `page_size` entries
/// before the least position reached (a part's `next`, or the start of
/// `blocked`, the first shard no node listed), and the position to go on
/// from. `None` when no entry can be answered: `blocked` is `from`'s shard.
///
/// Why it is right: every entry before a part's `next` that is that node's
/// is in the part, and the parts' shards are disjoint, so every entry of the
/// cluster before the least bound is in some part; sorting those gives the
/// global order, and its first `page_size` are the page.
pub(crate) fn merge(
    from: &ScanPosition,
    parts: Vec<Part>,
    blocked: Option<u32>,
    page_size: usize,
) -> Option<(Vec<v1::Reservation>, Option<ScanPosition>)> {
    let mut bound: Option<Key> = blocked.map(|shard| (shard, None));
    if bound.as_ref().is_some_and(|bound| *bound <= key_of(from)) {
        return None;
    }
    let mut entries: Vec<(Key, v1::Reservation)> = Vec::new();
    for part in parts {
        if let Some(next) = &part.next {
            let next = key_of(next);
            if bound.as_ref().is_none_or(|bound| next < *bound) {
                bound = Some(next);
            }
        }
        for (id, reservation) in part.reservations {
            entries.push(((shard_of(id.as_str()), Some(id)), reservation));
        }
    }
    entries.sort_by(|left, right| left.0.cmp(&right.0));
    if let Some(bound) = &bound {
        entries.retain(|(key, _)| key <= bound);
    }
    let next = if entries.len() > page_size {
        entries.truncate(page_size);
        let (last, _) = entries.last().expect("a page of at least one");
        Some(ScanPosition { shard: last.0, after: last.1.clone() })
    } else {
        bound.map(|(shard, after)| ScanPosition { shard, after })
    };
    Some((entries.into_iter().map(|(_, reservation)| reservation).collect(), next))
}

/// The shards one other node is asked for, and what to answer if it cannot be.
struct Asked {
    shards: BTreeSet<u32>,
    refusal: Status,
}

/// Answers a ListReservations in cluster mode (see the module docs). A
/// request another node forwarded lists only the shards it names here.
pub(crate) async fn list_split(
    node: &Node,
    fence: &Fence,
    forwarder: &Forwarder,
    incoming: &Incoming<v1::ListReservationsRequest>,
    message: &v1::ListReservationsRequest,
    query: ListQuery,
) -> Result<v1::ListReservationsResponse, Status> {
    if !incoming.may_forward() || incoming.is_forwarded() {
        return list_forwarded(node, fence, incoming.metadata(), query).await;
    }
    let from = query.from.clone();
    let mut local = BTreeSet::new();
    let mut asked: BTreeMap<String, Asked> = BTreeMap::new();
    let mut blocked: Option<(u32, Status)> = None;
    for shard in from.shard..SHARD_COUNT {
        match fence.route_shard(shard, true) {
            ShardRoute::Here => {
                local.insert(shard);
            }
            ShardRoute::Forward(peer) => {
                asked
                    .entry(peer.address)
                    .or_insert_with(|| Asked { shards: BTreeSet::new(), refusal: peer.refusal })
                    .shards
                    .insert(shard);
            }
            ShardRoute::Refused(status) => {
                blocked = Some((shard, status));
                break;
            }
        }
    }
    // Nothing past the first shard nobody serves is needed.
    let limit = blocked.as_ref().map_or(SHARD_COUNT, |(shard, _)| *shard);
    let sends =
        asked.into_iter().filter(|(_, asked)| !asked.shards.is_empty()).map(|(address, asked)| {
            let ranges = shard_ranges(&asked.shards);
            let sub_request = incoming.part(message.clone());
            async move {
                let answer = forwarder
                    .send(&address, sub_request, |mut client, mut request| async move {
                        let ranges = ranges.parse().map_err(|_| {
                            status_of(CoreError::invalid(
                                LIST_SHARDS_HEADER,
                                "shard ranges are not a header value",
                            ))
                        })?;
                        request.metadata_mut().insert(LIST_SHARDS_HEADER, ranges);
                        client.list_reservations(request).await
                    })
                    .await;
                (asked, answer)
            }
        });
    let remote = join_all(sends);
    let local_page =
        node.list_reservations_of(query.filter, from.clone(), query.page_size, |shard| {
            shard < limit && local.contains(&shard)
        });
    let (remote, local_page) = futures::join!(remote, local_page);
    let local_page = local_page.map_err(node_status)?;
    let mut parts = vec![Part {
        reservations: local_page
            .reservations
            .into_iter()
            .map(|view| (view.id.clone(), view.into()))
            .collect(),
        next: local_page.next,
    }];
    for (asked, answer) in remote {
        let first = *asked.shards.first().expect("a part asks for a shard");
        let status = match answer {
            Ok(Ok(response)) => match remote_part(response.into_inner(), &asked.shards) {
                Some(part) => {
                    parts.push(part);
                    continue;
                }
                None => asked.refusal,
            },
            // The owner judged the request invalid: so is the whole call.
            Ok(Err(status)) if status.code() == Code::InvalidArgument => return Err(status),
            Ok(Err(status)) => status,
            Err(Unreachable) => asked.refusal,
        };
        if blocked.as_ref().is_none_or(|(shard, _)| first < *shard) {
            blocked = Some((first, status));
        }
    }
    let (blocked_shard, blocked_status) = blocked.unzip();
    let Some((reservations, next)) = merge(&from, parts, blocked_shard, query.page_size) else {
        return Err(blocked_status.expect("only a blocked shard stops a listing"));
    };
    Ok(v1::ListReservationsResponse {
        reservations,
        next_page_token: next.as_ref().map(encode_list_token).unwrap_or_default(),
        epoch: LISTING_EPOCH,
    })
}

/// A page another node answered for `shards`; `None` if it is not one (a
/// token it could not have written, an entry of a shard it was not asked
/// for, or an id that is not one).
fn remote_part(response: v1::ListReservationsResponse, shards: &BTreeSet<u32>) -> Option<Part> {
    let next = if response.next_page_token.is_empty() {
        None
    } else {
        Some(decode_list_token(&response.next_page_token)?)
    };
    let mut reservations = Vec::with_capacity(response.reservations.len());
    for reservation in response.reservations {
        let id = ReservationId::parse("reservation_id", &reservation.reservation_id).ok()?;
        if !shards.contains(&shard_of(id.as_str())) {
            tracing::warn!(id = %id.as_str(), "a peer listed a reservation of a shard it was not asked for");
            return None;
        }
        reservations.push((id, reservation));
    }
    Some(Part { reservations, next })
}

/// A request forwarded by another node: lists the shards it names up to
/// the first one this node does not serve now (the page then ends there,
/// its token at that shard; a page starting in it gets that shard's
/// refusal), or without [`LIST_SHARDS_HEADER`] every shard this node serves
/// (refused while one assigned here fails closed).
async fn list_forwarded(
    node: &Node,
    fence: &Fence,
    metadata: &MetadataMap,
    query: ListQuery,
) -> Result<v1::ListReservationsResponse, Status> {
    let mut limit = SHARD_COUNT;
    let shards: BTreeSet<u32> = match metadata.get(LIST_SHARDS_HEADER) {
        Some(value) => {
            let shards = value.to_str().ok().and_then(parse_shard_ranges).ok_or_else(|| {
                status_of(CoreError::invalid(LIST_SHARDS_HEADER, "is not a list of shards"))
            })?;
            for &shard in shards.range(query.from.shard..) {
                let refusal = match fence.route_shard(shard, false) {
                    ShardRoute::Here => continue,
                    ShardRoute::Forward(peer) => peer.refusal,
                    ShardRoute::Refused(status) => status,
                };
                if shard == query.from.shard {
                    return Err(refusal);
                }
                limit = shard;
                break;
            }
            shards
        }
        None => {
            fence.admit_local()?;
            (0..SHARD_COUNT)
                .filter(|&shard| matches!(fence.route_shard(shard, false), ShardRoute::Here))
                .collect()
        }
    };
    let page = node
        .list_reservations_of(query.filter, query.from, query.page_size, |shard| {
            shard < limit && shards.contains(&shard)
        })
        .await
        .map_err(node_status)?;
    // Everything named before `limit` was read: the page goes that far.
    let stopped = (limit < SHARD_COUNT).then_some(ScanPosition { shard: limit, after: None });
    let next = page.next.or(stopped);
    Ok(v1::ListReservationsResponse {
        reservations: page.reservations.into_iter().map(Into::into).collect(),
        next_page_token: next.as_ref().map(encode_list_token).unwrap_or_default(),
        epoch: LISTING_EPOCH,
    })
}

/// `shards` as ascending ranges: `0-3,7,9-12`.
fn shard_ranges(shards: &BTreeSet<u32>) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &shard in shards {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == shard => *end = shard,
            _ => ranges.push((shard, shard)),
        }
    }
    let texts: Vec<String> = ranges
        .into_iter()
        .map(|(start, end)| if start == end { start.to_string() } else { format!("{start}-{end}") })
        .collect();
    texts.join(",")
}

/// The shards of [`shard_ranges`]' text; `None` for anything else, or a
/// shard out of range.
fn parse_shard_ranges(text: &str) -> Option<BTreeSet<u32>> {
    let mut shards = BTreeSet::new();
    for range in text.split(',') {
        let (start, end) = match range.split_once('-') {
            Some((start, end)) => (start.parse::<u32>().ok()?, end.parse::<u32>().ok()?),
            None => {
                let shard = range.parse::<u32>().ok()?;
                (shard, shard)
            }
        };
        if start > end || end >= SHARD_COUNT {
            return None;
        }
        shards.extend(start..=end);
    }
    Some(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ReservationId {
        ReservationId::parse("id", text).expect("a valid id")
    }

    /// `count` ids homed on `shards`, each shard's in id order.
    fn ids_on(shards: &[u32], count: usize) -> Vec<ReservationId> {
        let mut ids: Vec<ReservationId> = (0..)
            .map(|n| id(&format!("r-{n}")))
            .filter(|id| shards.contains(&shard_of(id.as_str())))
            .take(count)
            .collect();
        ids.sort_by_key(|id| (shard_of(id.as_str()), id.clone()));
        ids
    }

    fn reservation(id: &ReservationId) -> v1::Reservation {
        v1::Reservation { reservation_id: id.as_str().to_owned(), ..Default::default() }
    }

    /// What one node answers: its entries from `from` on, at most `size`.
    fn page_of(ids: &[ReservationId], from: &ScanPosition, size: usize) -> Part {
        let after: Vec<&ReservationId> = ids
            .iter()
            .filter(|id| (shard_of(id.as_str()), Some((*id).clone())) > key_of(from))
            .collect();
        let taken: Vec<_> =
            after.iter().take(size).map(|id| ((*id).clone(), reservation(id))).collect();
        let next = (after.len() > size).then(|| {
            let last = &taken.last().expect("one").0;
            ScanPosition { shard: shard_of(last.as_str()), after: Some(last.clone()) }
        });
        Part { reservations: taken, next }
    }

    #[test]
    fn merged_pages_list_every_node_entry_once_in_order() {
        let nodes = [ids_on(&[0, 3, 6, 9], 23), ids_on(&[1, 4, 7], 5), ids_on(&[2, 5, 8], 17)];
        let mut expected: Vec<ReservationId> = nodes.iter().flatten().cloned().collect();
        expected.sort_by_key(|id| (shard_of(id.as_str()), id.clone()));
        for size in [1, 2, 3, 7, 100] {
            let mut from = ScanPosition::default();
            let mut listed = Vec::new();
            for _ in 0..100 {
                let parts = nodes.iter().map(|ids| page_of(ids, &from, size)).collect();
                let (page, next) = merge(&from, parts, None, size).expect("nothing blocked");
                assert!(page.len() <= size);
                listed.extend(page.into_iter().map(|r| r.reservation_id));
                match next {
                    Some(next) => from = next,
                    None => break,
                }
            }
            let expected: Vec<&str> = expected.iter().map(|id| id.as_str()).collect();
            assert_eq!(listed, expected, "page size {size}");
        }
    }

    #[test]
    fn a_listing_stops_before_a_shard_nobody_serves() {
        let served = ids_on(&[0, 1, 3], 12);
        let from = ScanPosition::default();
        let (page, next) =
            merge(&from, vec![page_of(&served, &from, 100)], Some(2), 100).expect("shards 0, 1");
        assert!(page.iter().all(|r| shard_of(&r.reservation_id) < 2), "{page:?}");
        let before = served.iter().filter(|id| shard_of(id.as_str()) < 2).count();
        assert_eq!(page.len(), before);
        assert_eq!(next, Some(ScanPosition { shard: 2, after: None }));
        let at_blocked = ScanPosition { shard: 2, after: None };
        assert_eq!(
            merge(&at_blocked, vec![page_of(&served, &at_blocked, 100)], Some(2), 100),
            None
        );
    }

    #[test]
    fn a_part_that_ended_early_bounds_the_page() {
        let from = ScanPosition::default();
        let slow =
            Part { reservations: Vec::new(), next: Some(ScanPosition { shard: 1, after: None }) };
        let fast = page_of(&ids_on(&[0, 2], 6), &from, 100);
        let (page, next) = merge(&from, vec![slow, fast], None, 100).expect("not blocked");
        assert!(page.iter().all(|r| shard_of(&r.reservation_id) == 0), "{page:?}");
        assert_eq!(next, Some(ScanPosition { shard: 1, after: None }));
    }

    #[test]
    fn shard_ranges_round_trip() {
        let shards: BTreeSet<u32> = [0, 1, 2, 3, 7, 9, 10, 1023].into();
        assert_eq!(shard_ranges(&shards), "0-3,7,9-10,1023");
        assert_eq!(parse_shard_ranges(&shard_ranges(&shards)), Some(shards));
        for bad in ["", "1-", "3-1", "1024", "a", "1,,2"] {
            assert_eq!(parse_shard_ranges(bad), None, "{bad}");
        }
    }
}
