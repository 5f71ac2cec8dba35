//! ReserveBatch: the list is checked as a whole, each item on its own.

use atp_core::reservation::ReserveRequest;
use atp_core::{CoreError, FieldViolation};

use super::{Violations, parse_reserve, within_count};
use crate::v1;

/// Most reservations one ReserveBatch carries.
pub const MAX_RESERVATIONS_PER_BATCH: usize = 1_000;

/// ReserveBatch. The outer error refuses the whole call (no reservations, or
/// more than [`MAX_RESERVATIONS_PER_BATCH`]); otherwise every item gets its
/// own outcome, in request order: the parsed Reserve, or InvalidArgument
/// naming its fields as `reservations[i].field`.
pub fn parse_reserve_batch(
    message: v1::ReserveBatchRequest,
    default_ttl_ms: i64,
) -> Result<Vec<Result<ReserveRequest, CoreError>>, CoreError> {
    let mut violations = Violations::default();
    let count = message.reservations.len();
    if count == 0 {
        violations.push("reservations", "must have at least one reservation");
        return violations.finish(None);
    }
    if !within_count(&mut violations, "reservations", count, MAX_RESERVATIONS_PER_BATCH) {
        return violations.finish(None);
    }
    let items = message
        .reservations
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            // A batch is only ever a client's: atp's own names are refused.
            let skus = item.lines.iter().map(|line| line.sku.as_str());
            super::refuse_reserved_names("lines", skus, item.metadata.as_ref())
                .and_then(|()| parse_reserve(item, default_ttl_ms))
                .map_err(|error| within_item(error, index))
        })
        .collect();
    Ok(items)
}

/// Names the fields of an item's InvalidArgument from the batch's root
/// (`lines[0].sku` → `reservations[3].lines[0].sku`); other errors are
/// returned as they are. The node's own checks of an item (unknown channel or
/// location) go through this too.
pub fn within_item(error: CoreError, index: usize) -> CoreError {
    match error {
        CoreError::InvalidArgument(violations) => CoreError::InvalidArgument(
            violations
                .into_iter()
                .map(|violation| {
                    let field = format!("reservations[{index}].{}", violation.field);
                    FieldViolation::new(field, violation.description)
                })
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(id: &str, sku: &str, quantity: i64) -> v1::ReserveRequest {
        v1::ReserveRequest {
            reservation_id: id.into(),
            channel_id: "web".into(),
            lines: vec![v1::ReservationLine {
                sku: sku.into(),
                location_id: "dc-1".into(),
                quantity,
            }],
            ttl_seconds: 0,
            metadata: None,
        }
    }

    fn fields(error: &CoreError) -> Vec<String> {
        match error {
            CoreError::InvalidArgument(violations) => {
                violations.iter().map(|violation| violation.field.clone()).collect()
            }
            other => panic!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn refuses_an_empty_or_oversized_batch_as_a_whole() {
        let empty = parse_reserve_batch(v1::ReserveBatchRequest::default(), 60_000);
        assert_eq!(fields(&empty.expect_err("empty")), vec!["reservations"]);
        let reservations =
            (0..=MAX_RESERVATIONS_PER_BATCH).map(|index| reserve(&format!("r-{index}"), "", 0));
        let message = v1::ReserveBatchRequest { reservations: reservations.collect() };
        let error = parse_reserve_batch(message, 60_000).expect_err("too many");
        assert_eq!(fields(&error), vec!["reservations"]);
        assert!(error.to_string().contains("1001"), "{error}");
    }

    #[test]
    fn a_bad_item_is_refused_alone_with_its_path() {
        let message = v1::ReserveBatchRequest {
            reservations: vec![
                reserve("r-1", "mug", 1),
                reserve("", "mug", 0),
                reserve("r-3", "tee", 2),
            ],
        };
        let items = parse_reserve_batch(message, 60_000).expect("a batch");
        assert_eq!(items.len(), 3);
        let first = items[0].as_ref().expect("item 0 is good");
        assert_eq!((first.id.as_str(), first.ttl_ms), ("r-1", 60_000));
        let error = items[1].as_ref().expect_err("item 1 is bad");
        assert_eq!(
            fields(error),
            vec!["reservations[1].reservation_id", "reservations[1].lines[0].quantity"]
        );
        assert!(items[2].is_ok());
    }

    #[test]
    fn within_item_leaves_other_errors_alone() {
        let error = within_item(CoreError::NotFound("r-1".into()), 4);
        assert_eq!(error, CoreError::NotFound("r-1".into()));
    }
}
