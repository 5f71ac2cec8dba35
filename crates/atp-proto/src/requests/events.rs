//! ApplyStockEvents → domain stock events.

use atp_core::CoreError;
use atp_core::events::{COUNTED_NOW, StockEvent, StockEventKind};
use atp_core::ids::{
    EventId, LocationId, MAX_EVENT_QUANTITY, MAX_EVENTS_PER_BATCH, MAX_POSITION_UNITS,
    ReservationId, Sku, validate_event_quantity, validate_text,
};

use super::{Violations, within_count};
use crate::v1;
use crate::v1::stock_event::Kind;

/// ApplyStockEvents: every event well formed, at most [`MAX_EVENTS_PER_BATCH`].
///
/// One malformed event refuses the whole batch (the caller fixes and resends
/// it); events that are well formed but refused by the domain (e.g. releasing
/// more than is unavailable) get their own REJECTED result instead.
pub fn parse_stock_events(
    message: v1::ApplyStockEventsRequest,
) -> Result<Vec<StockEvent>, CoreError> {
    let mut violations = Violations::default();
    if !within_count(&mut violations, "events", message.events.len(), MAX_EVENTS_PER_BATCH) {
        return violations.finish(None);
    }
    let mut events = Vec::with_capacity(message.events.len());
    for (index, event) in message.events.into_iter().enumerate() {
        if let Some(event) = parse_event(&mut violations, &format!("events[{index}]"), event) {
            events.push(event);
        }
    }
    violations.finish(Some(events))
}

fn parse_event(
    violations: &mut Violations,
    prefix: &str,
    event: v1::StockEvent,
) -> Option<StockEvent> {
    let id = violations.parse(EventId::parse(&format!("{prefix}.event_id"), &event.event_id));
    let sku = violations.parse(Sku::parse(&format!("{prefix}.sku"), &event.sku));
    let location =
        violations.parse(LocationId::parse(&format!("{prefix}.location_id"), &event.location_id));
    let kind = parse_kind(violations, prefix, event.kind);
    match (id, sku, location, kind) {
        (Some(id), Some(sku), Some(location), Some(kind)) => {
            Some(StockEvent { id, sku, location, kind })
        }
        _ => None,
    }
}

fn parse_kind(
    violations: &mut Violations,
    prefix: &str,
    kind: Option<Kind>,
) -> Option<StockEventKind> {
    let quantity = |violations: &mut Violations, name: &str, quantity: i64| {
        violations.check(validate_event_quantity(&format!("{prefix}.{name}.quantity"), quantity))
    };
    let reason = |violations: &mut Violations, name: &str, reason: &str| {
        violations.check(validate_text(&format!("{prefix}.{name}.reason"), reason))
    };
    let Some(kind) = kind else {
        violations.push(
            format!("{prefix}.kind"),
            "must be set: one of received, shipped, counted, adjusted, unavailable, \
             released_unavailable, incoming, incoming_received",
        );
        return None;
    };
    match kind {
        Kind::Received(received) => quantity(violations, "received", received.quantity)
            .then_some(StockEventKind::Received { quantity: received.quantity }),
        Kind::Shipped(shipped) => {
            let quantity_ok = quantity(violations, "shipped", shipped.quantity);
            let reservation = if shipped.reservation_id.is_empty() {
                Some(None)
            } else {
                let field = format!("{prefix}.shipped.reservation_id");
                violations.parse(ReservationId::parse(&field, &shipped.reservation_id)).map(Some)
            };
            let reservation = reservation.filter(|_| quantity_ok)?;
            Some(StockEventKind::Shipped { quantity: shipped.quantity, reservation })
        }
        Kind::Counted(counted) => {
            let on_hand_ok = (0..=MAX_POSITION_UNITS).contains(&counted.on_hand);
            if !on_hand_ok {
                violations.push(
                    format!("{prefix}.counted.on_hand"),
                    format!("is {}; must be 0..={MAX_POSITION_UNITS}", counted.on_hand),
                );
            }
            // 0 (omitted) is a count as of now (`COUNTED_NOW`), resolved by
            // the shard that applies it.
            let as_of_ok = counted.as_of_ms == COUNTED_NOW
                || timestamp(violations, &format!("{prefix}.counted.as_of_ms"), counted.as_of_ms);
            (on_hand_ok && as_of_ok).then_some(StockEventKind::Counted {
                on_hand: counted.on_hand,
                as_of_ms: counted.as_of_ms,
            })
        }
        Kind::Adjusted(adjusted) => {
            let delta_ok = adjusted.delta != 0
                && adjusted.delta.unsigned_abs() <= MAX_EVENT_QUANTITY.unsigned_abs();
            if !delta_ok {
                violations.push(
                    format!("{prefix}.adjusted.delta"),
                    format!(
                        "is {}; must be non-zero and within -{MAX_EVENT_QUANTITY}..={MAX_EVENT_QUANTITY}",
                        adjusted.delta
                    ),
                );
            }
            let reason_ok = reason(violations, "adjusted", &adjusted.reason);
            (delta_ok && reason_ok).then_some(StockEventKind::Adjusted {
                delta: adjusted.delta,
                reason: adjusted.reason,
            })
        }
        Kind::Unavailable(marked) => {
            let quantity_ok = quantity(violations, "unavailable", marked.quantity);
            let reason_ok = reason(violations, "unavailable", &marked.reason);
            (quantity_ok && reason_ok).then_some(StockEventKind::MarkedUnavailable {
                quantity: marked.quantity,
                reason: marked.reason,
            })
        }
        Kind::ReleasedUnavailable(released) => {
            quantity(violations, "released_unavailable", released.quantity)
                .then_some(StockEventKind::ReleasedUnavailable { quantity: released.quantity })
        }
        Kind::Incoming(incoming) => {
            let quantity_ok = quantity(violations, "incoming", incoming.quantity);
            let field = format!("{prefix}.incoming.expected_at_ms");
            let expected_ok = timestamp(violations, &field, incoming.expected_at_ms);
            (quantity_ok && expected_ok).then_some(StockEventKind::IncomingExpected {
                quantity: incoming.quantity,
                expected_at_ms: incoming.expected_at_ms,
            })
        }
        Kind::IncomingReceived(received) => {
            quantity(violations, "incoming_received", received.quantity)
                .then_some(StockEventKind::IncomingReceived { quantity: received.quantity })
        }
    }
}

/// A time in ms since the Unix epoch: 0 (unset) or negative is refused.
fn timestamp(violations: &mut Violations, field: &str, at_ms: i64) -> bool {
    if at_ms <= 0 {
        violations.push(field, format!("is {at_ms}; must be a time in ms since the Unix epoch"));
        return false;
    }
    true
}
