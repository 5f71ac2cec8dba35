//! Names atp keeps for itself: capacity counters are SKUs beginning
//! [`CAPACITY_PREFIX`], and Allocate and late binding keep their
//! fingerprints in labels beginning [`RESERVED_LABEL_PREFIX`]. A client
//! naming them could take a location's capacity or pose as another call's
//! retry, so the node a client's request reaches refuses them.

use atp_core::capacity::CAPACITY_PREFIX;
use atp_core::{CoreError, FieldViolation};

use crate::v1;

/// Label keys beginning with this are atp's own (`atp.allocate`,
/// `atp.late_bound`).
pub const RESERVED_LABEL_PREFIX: &str = "atp.";

/// Refuses reserved names among a client's SKUs (named `field[i].sku`) and
/// label keys (`metadata.labels[key]`): INVALID_ARGUMENT listing each.
pub fn refuse_reserved_names<'a>(
    field: &str,
    skus: impl IntoIterator<Item = &'a str>,
    metadata: Option<&v1::ReservationMetadata>,
) -> Result<(), CoreError> {
    let violations = reserved_names(field, skus, metadata);
    if violations.is_empty() { Ok(()) } else { Err(CoreError::InvalidArgument(violations)) }
}

/// The reserved names among `skus` and `metadata`'s label keys.
pub(crate) fn reserved_names<'a>(
    field: &str,
    skus: impl IntoIterator<Item = &'a str>,
    metadata: Option<&v1::ReservationMetadata>,
) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    for (index, sku) in skus.into_iter().enumerate() {
        if sku.starts_with(CAPACITY_PREFIX) {
            violations.push(FieldViolation::new(
                format!("{field}[{index}].sku"),
                format!("is reserved: SKUs beginning {CAPACITY_PREFIX:?} are capacity counters"),
            ));
        }
    }
    let labels = metadata.into_iter().flat_map(|metadata| metadata.labels.keys());
    for key in labels.filter(|key| key.starts_with(RESERVED_LABEL_PREFIX)) {
        violations.push(FieldViolation::new(
            format!("metadata.labels[{key}]"),
            format!("is reserved: label keys beginning {RESERVED_LABEL_PREFIX:?} are atp's own"),
        ));
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_atp_labels_are_refused_by_field() {
        let metadata = v1::ReservationMetadata {
            order_id: String::new(),
            labels: [("atp.allocate".to_owned(), "x".to_owned()), ("mine".into(), "y".into())]
                .into(),
        };
        let skus = ["tee", "~cap/orders/dc/2026-12-02"];
        let error = refuse_reserved_names("lines", skus, Some(&metadata)).expect_err("reserved");
        let CoreError::InvalidArgument(violations) = error else { panic!("{error:?}") };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["lines[1].sku", "metadata.labels[atp.allocate]"]);
        assert!(refuse_reserved_names("lines", ["tee", "cap/x", "~capx"], None).is_ok());
        let plain =
            v1::ReservationMetadata { labels: [("atpx".into(), "1".into())].into(), ..metadata };
        assert!(refuse_reserved_names("lines", [], Some(&plain)).is_ok());
    }
}
