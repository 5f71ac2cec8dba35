//! Reading many reservations: GetReservations (by id) and ListReservations
//! (a paged scan over every home shard in (shard, id) order).

use std::collections::BTreeMap;

use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::ReservationId;
use atp_core::reservation::{ReservationFilter, ReservationView, ScanPosition};
use futures::future::join_all;

use crate::error::NodeError;
use crate::node::Node;

/// Most reservation records one ListReservations page reads (matching or
/// not), so a filter that matches little still answers in bounded time; the
/// page then ends early with a position to go on from.
pub const MAX_RESERVATIONS_READ_PER_PAGE: usize = 10_000;

/// One page of a ListReservations scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationPage {
    /// Matching reservations in (home shard, id) order.
    pub reservations: Vec<ReservationView>,
    /// Where the next page starts; `None` when the scan is complete.
    pub next: Option<ScanPosition>,
}

impl Node {
    /// Many reservations by id, one answer per id in order (NOT_FOUND for an
    /// unknown one): one message per home shard. Ids whose Reserve is in
    /// flight are answered once it is done, as GetReservation does.
    pub async fn get_reservations(
        &self,
        ids: Vec<ReservationId>,
    ) -> Result<Vec<Result<ReservationView, NodeError>>, NodeError> {
        self.check_ready()?;
        for id in &ids {
            self.settled(id).await;
        }
        let mut by_home: BTreeMap<u32, Vec<(usize, ReservationId)>> = BTreeMap::new();
        for (index, id) in ids.iter().enumerate() {
            by_home.entry(shard_of(id.as_str())).or_default().push((index, id.clone()));
        }
        let answers = join_all(by_home.into_iter().map(|(home, items)| async move {
            let (indexes, ids): (Vec<usize>, Vec<ReservationId>) = items.into_iter().unzip();
            let answer = self.shard(home).try_call(move |state, _, _| state.get_many(&ids)).await;
            (indexes, answer)
        }))
        .await;
        let mut results: Vec<Option<Result<ReservationView, NodeError>>> =
            (0..ids.len()).map(|_| None).collect();
        for (indexes, answer) in answers {
            match answer {
                Ok(views) => {
                    for (index, view) in indexes.into_iter().zip(views) {
                        results[index] = Some(view.map_err(NodeError::from));
                    }
                }
                Err(error) => {
                    for index in indexes {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        Ok(results.into_iter().map(|result| result.expect("every id has an answer")).collect())
    }

    /// One page of reservations matching `filter`, from `from` on: at most
    /// `page_size` of them, reading at most [`MAX_RESERVATIONS_READ_PER_PAGE`]
    /// records. Shards are read one after another, each at one instant (one
    /// message to its actor), so the memory a page takes is bounded by the
    /// page, whatever the number of reservations.
    pub async fn list_reservations(
        &self,
        filter: ReservationFilter,
        from: ScanPosition,
        page_size: usize,
    ) -> Result<ReservationPage, NodeError> {
        self.list_reservations_of(filter, from, page_size, |_| true).await
    }

    /// [`Node::list_reservations`] over the home shards `listed` accepts
    /// only (in cluster mode: the shards this node serves); the others are
    /// passed over without reading them. The page is then a prefix of this
    /// node's part of the (home shard, id) order from `from`, and `next`
    /// says how far it got: every listed reservation before it is in the page.
    pub async fn list_reservations_of(
        &self,
        filter: ReservationFilter,
        from: ScanPosition,
        page_size: usize,
        listed: impl Fn(u32) -> bool,
    ) -> Result<ReservationPage, NodeError> {
        self.check_ready()?;
        let filter = std::sync::Arc::new(filter);
        let mut page = ReservationPage::default();
        let mut read = 0;
        let mut position = from;
        while position.shard < SHARD_COUNT {
            if !listed(position.shard) {
                position = ScanPosition { shard: position.shard + 1, after: None };
                continue;
            }
            let wanted = page_size - page.reservations.len();
            let budget = MAX_RESERVATIONS_READ_PER_PAGE - read;
            let after = position.after.clone();
            let filter = std::sync::Arc::clone(&filter);
            let part = self
                .shard(position.shard)
                .try_call(move |state, _, _| {
                    state.scan_reservations(&filter, after.as_ref(), wanted, budget)
                })
                .await?;
            read += part.scanned;
            page.reservations.extend(part.reservations);
            match part.resume_after {
                Some(after) => {
                    position.after = Some(after);
                    page.next = Some(position);
                    return Ok(page);
                }
                None => position = ScanPosition { shard: position.shard + 1, after: None },
            }
            if page.reservations.len() >= page_size || read >= MAX_RESERVATIONS_READ_PER_PAGE {
                if position.shard < SHARD_COUNT {
                    page.next = Some(position);
                }
                return Ok(page);
            }
        }
        Ok(page)
    }
}
