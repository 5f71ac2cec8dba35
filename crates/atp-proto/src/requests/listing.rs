//! GetReservations and ListReservations: ids, filters, page sizes and page
//! tokens.

use atp_core::CoreError;
use atp_core::hash::SHARD_COUNT;
use atp_core::ids::{ChannelId, LocationId, MAX_ID_BYTES, ReservationId, Sku, validate_id};
use atp_core::reservation::{ReservationFilter, ReservationState, ScanPosition, validate_labels};

use super::{Violations, parse_ids, within_count};
use crate::v1;

/// Most ids one GetReservations names.
pub const MAX_IDS_PER_GET: usize = 100;
/// Reservations per ListReservations page when the request names no size.
pub const DEFAULT_LIST_PAGE_SIZE: usize = 100;
/// Most reservations per ListReservations page (a larger size is lowered to it).
pub const MAX_LIST_PAGE_SIZE: usize = 1_000;
/// First byte of a page token: its layout (shard u32 big-endian, then the id).
const PAGE_TOKEN_VERSION: u8 = 1;

/// GetReservations: 1..=[`MAX_IDS_PER_GET`] ids.
pub fn parse_get_reservations(
    message: v1::GetReservationsRequest,
) -> Result<Vec<ReservationId>, CoreError> {
    let mut violations = Violations::default();
    let ids = &message.reservation_ids;
    if ids.is_empty() {
        violations.push("reservation_ids", "must name at least one reservation");
        return violations.finish(None);
    }
    if !within_count(&mut violations, "reservation_ids", ids.len(), MAX_IDS_PER_GET) {
        return violations.finish(None);
    }
    let parsed = parse_ids(&mut violations, "reservation_ids", ids, ReservationId::parse);
    violations.finish(parsed)
}

/// A validated ListReservations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    /// What to show.
    pub filter: ReservationFilter,
    /// Where to start (from the page token).
    pub from: ScanPosition,
    /// 1..=[`MAX_LIST_PAGE_SIZE`].
    pub page_size: usize,
}

/// ListReservations. A page size of 0 is [`DEFAULT_LIST_PAGE_SIZE`]; one above
/// [`MAX_LIST_PAGE_SIZE`] is lowered to it.
pub fn parse_list_reservations(
    message: v1::ListReservationsRequest,
) -> Result<ListQuery, CoreError> {
    let mut violations = Violations::default();
    let optional = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    let sku = optional(&message.sku).and_then(|sku| violations.parse(Sku::parse("sku", &sku)));
    let location = optional(&message.location_id)
        .and_then(|location| violations.parse(LocationId::parse("location_id", &location)));
    let channel = optional(&message.channel_id)
        .and_then(|channel| violations.parse(ChannelId::parse("channel_id", &channel)));
    let order_id = optional(&message.order_id);
    if let Some(order_id) = &order_id {
        violations.check(validate_id("order_id", order_id));
    }
    let mut states = Vec::new();
    if within_count(&mut violations, "states", message.states.len(), 7) {
        for (index, state) in message.states.iter().enumerate() {
            match parse_state(*state) {
                Some(state) => states.push(state),
                None => violations.push(
                    format!("states[{index}]"),
                    format!("is {state}; must be a ReservationState other than UNSPECIFIED"),
                ),
            }
        }
    }
    let labels = message.labels.into_iter().collect();
    violations.extend(validate_labels("labels", &labels));
    let from = decode_page_token(&message.page_token);
    if from.is_none() {
        violations.push("page_token", "is not a token this server returned");
    }
    let page_size = match usize::try_from(message.page_size) {
        Ok(0) => DEFAULT_LIST_PAGE_SIZE,
        Ok(size) => size.min(MAX_LIST_PAGE_SIZE),
        Err(_) => MAX_LIST_PAGE_SIZE,
    };
    let filter = ReservationFilter { sku, location, channel, states, order_id, labels };
    violations.finish(from.map(|from| ListQuery { filter, from, page_size }))
}

fn parse_state(state: i32) -> Option<ReservationState> {
    use v1::ReservationState as Wire;
    match Wire::try_from(state).ok()? {
        Wire::Unspecified => None,
        Wire::Held => Some(ReservationState::Held),
        Wire::Committed => Some(ReservationState::Committed),
        Wire::Released => Some(ReservationState::Released),
        Wire::Expired => Some(ReservationState::Expired),
        Wire::Cancelled => Some(ReservationState::Cancelled),
        Wire::Fulfilled => Some(ReservationState::Fulfilled),
    }
}

/// A scan position as the page token a reply carries (lowercase hex of a
/// version byte, the shard, then the last id read).
pub fn encode_list_token(position: &ScanPosition) -> String {
    let mut bytes = vec![PAGE_TOKEN_VERSION];
    bytes.extend_from_slice(&position.shard.to_be_bytes());
    if let Some(after) = &position.after {
        bytes.extend_from_slice(after.as_str().as_bytes());
    }
    super::encode_page_token(&bytes)
}

/// The position a page token names (the start for an empty token); `None`
/// for anything this server did not write. (A node reads the tokens of the
/// pages other nodes answered it with this.)
pub fn decode_list_token(token: &str) -> Option<ScanPosition> {
    decode_page_token(token)
}

/// [`decode_list_token`].
fn decode_page_token(token: &str) -> Option<ScanPosition> {
    if token.is_empty() {
        return Some(ScanPosition::default());
    }
    if token.len() > 2 * (5 + MAX_ID_BYTES) {
        return None;
    }
    let bytes = super::decode_hex(token)?;
    let (&version, rest) = bytes.split_first()?;
    if version != PAGE_TOKEN_VERSION || rest.len() < 4 {
        return None;
    }
    let (shard, id) = rest.split_at(4);
    let shard = u32::from_be_bytes(shard.try_into().ok()?);
    if shard >= SHARD_COUNT {
        return None;
    }
    let after = if id.is_empty() {
        None
    } else {
        Some(ReservationId::parse("page_token", std::str::from_utf8(id).ok()?).ok()?)
    };
    Some(ScanPosition { shard, after })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_what_was_not_written() {
        let id = ReservationId::parse("id", "order-1").expect("valid id");
        for position in [
            ScanPosition::default(),
            ScanPosition { shard: 1023, after: Some(id) },
            ScanPosition { shard: 7, after: None },
        ] {
            assert_eq!(decode_page_token(&encode_list_token(&position)), Some(position));
        }
        for bad in ["zz", "02000000", "01000004", "01", &"0".repeat(10_000)] {
            assert_eq!(decode_page_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_list_request_names_every_bad_field() {
        let message = v1::ListReservationsRequest {
            sku: "bad\nsku".into(),
            states: vec![0, 99],
            order_id: "x".repeat(200),
            labels: [("bad key".to_owned(), "v".to_owned())].into(),
            page_token: "nope".into(),
            ..Default::default()
        };
        let Err(CoreError::InvalidArgument(violations)) = parse_list_reservations(message) else {
            panic!("refused");
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        for field in ["sku", "states[0]", "states[1]", "order_id", "page_token"] {
            assert!(fields.contains(&field), "{field} in {fields:?}");
        }
        assert!(fields.iter().any(|f| f.starts_with("labels")), "{fields:?}");
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        let size = |page_size| {
            let message = v1::ListReservationsRequest { page_size, ..Default::default() };
            parse_list_reservations(message).expect("valid").page_size
        };
        assert_eq!(size(0), DEFAULT_LIST_PAGE_SIZE);
        assert_eq!(size(5), 5);
        assert_eq!(size(u32::MAX), MAX_LIST_PAGE_SIZE);
    }

    #[test]
    fn get_reservations_is_bounded() {
        let message = |count: usize| v1::GetReservationsRequest {
            reservation_ids: (0..count).map(|n| format!("r-{n}")).collect(),
        };
        assert!(parse_get_reservations(message(0)).is_err());
        assert_eq!(parse_get_reservations(message(MAX_IDS_PER_GET)).map(|ids| ids.len()), Ok(100));
        assert!(parse_get_reservations(message(MAX_IDS_PER_GET + 1)).is_err());
    }
}
