//! Reading many reservations of a home shard: by id, and a bounded scan in
//! id order for ListReservations. Reads only; nothing here changes state.

use std::ops::Bound;

use super::super::ShardState;
use super::Record;
use crate::error::CoreError;
use crate::ids::ReservationId;
use crate::reservation::{ReservationFilter, ReservationState, ReservationView};

/// One shard's part of a ListReservations page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// Matching reservations, in id order.
    pub reservations: Vec<ReservationView>,
    /// The last id read when the scan stopped short of the shard's end (the
    /// page filled, or the read budget ran out); `None` when it reached it.
    pub resume_after: Option<ReservationId>,
    /// Records read (matching or not).
    pub scanned: usize,
}

impl Record {
    fn matches(&self, filter: &ReservationFilter) -> bool {
        let request = &self.request;
        let lines_match = request.lines.iter().any(|line| {
            filter.sku.as_ref().is_none_or(|sku| line.sku == *sku)
                && filter.location.as_ref().is_none_or(|location| line.location == *location)
        });
        lines_match
            && filter.channel.as_ref().is_none_or(|channel| request.channel == *channel)
            && (filter.states.is_empty() || filter.states.contains(&self.state))
            && filter.order_id.as_ref().is_none_or(|order| request.metadata.order_id == *order)
            && request.metadata.has_labels(&filter.labels)
    }
}

impl ShardState {
    /// Many reservations of this home shard, one answer per id, as
    /// [`ShardState::get`] would give it.
    pub fn get_many(&self, ids: &[ReservationId]) -> Vec<Result<ReservationView, CoreError>> {
        ids.iter().map(|id| self.get(id)).collect()
    }

    /// Reservations matching `filter` with ids after `after` (all when
    /// `None`), in id order: at most `max_matches`, reading at most
    /// `max_read` records (at least one). PENDING ones are never shown. The
    /// work and the memory are bounded by those two numbers, whatever the
    /// shard holds.
    pub fn scan_reservations(
        &self,
        filter: &ReservationFilter,
        after: Option<&ReservationId>,
        max_matches: usize,
        max_read: usize,
    ) -> ScanPage {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = ScanPage::default();
        for (id, record) in self.records.range::<ReservationId, _>((lower, Bound::Unbounded)) {
            if page.reservations.len() >= max_matches || page.scanned >= max_read.max(1) {
                return page;
            }
            page.scanned += 1;
            page.resume_after = Some(id.clone());
            if record.state != ReservationState::Pending && record.matches(filter) {
                page.reservations.push(record.current());
            }
        }
        page.resume_after = None;
        page
    }
}
