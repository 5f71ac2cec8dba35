//! `event <kind>`: send one stock event and show its result row.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use atp_proto::v1::stock_event::Kind;
use atp_proto::v1::{
    Adjusted, ApplyStockEventsRequest, Counted, IncomingExpected, IncomingReceived,
    MarkedUnavailable, Received, ReleasedUnavailable, Shipped, StockEvent, StockEventOutcome,
    StockEventResult,
};
use serde_json::{Value, json};

use super::availability::{POSITION_COLUMNS, position_cells, position_json};
use crate::cli::{EventCommand, EventTarget};
use crate::client::Context;
use crate::format::{grpc_code, stock_event_outcome};
use crate::table::Table;

pub async fn send(context: &Context, command: EventCommand) -> anyhow::Result<ExitCode> {
    let event = to_event(command);
    let event_id = event.event_id.clone();
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .apply_stock_events(ApplyStockEventsRequest { events: vec![event] })
        .await
        .with_context(|| format!("apply stock event {event_id}"))?;
    let [result] = response.results.as_slice() else {
        bail!("the server answered {} results for one event", response.results.len());
    };
    context.print(|| result_json(result), || result_text(result));
    Ok(if is_rejected(result) {
        ExitCode::from(crate::status::exit::PARTLY_REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The event a command line describes. A count without `--as-of-ms` is sent
/// without a time (0): the node counts it as of when it applies it, and a
/// repeat of the same command is the same payload (a DUPLICATE).
fn to_event(command: EventCommand) -> StockEvent {
    let (target, kind) = match command {
        EventCommand::Received { target, quantity } => {
            (target, Kind::Received(Received { quantity }))
        }
        EventCommand::Shipped { target, quantity, reservation } => (
            target,
            Kind::Shipped(Shipped { quantity, reservation_id: reservation.unwrap_or_default() }),
        ),
        EventCommand::Counted { target, on_hand, as_of_ms } => {
            (target, Kind::Counted(Counted { on_hand, as_of_ms: as_of_ms.unwrap_or(0) }))
        }
        EventCommand::Adjusted { target, delta, reason } => {
            (target, Kind::Adjusted(Adjusted { delta, reason }))
        }
        EventCommand::Unavailable { target, quantity, reason } => {
            (target, Kind::Unavailable(MarkedUnavailable { quantity, reason }))
        }
        EventCommand::ReleaseUnavailable { target, quantity } => {
            (target, Kind::ReleasedUnavailable(ReleasedUnavailable { quantity }))
        }
        EventCommand::Incoming { target, quantity, expected_at_ms } => {
            (target, Kind::Incoming(IncomingExpected { quantity, expected_at_ms }))
        }
        EventCommand::IncomingReceived { target, quantity } => {
            (target, Kind::IncomingReceived(IncomingReceived { quantity }))
        }
    };
    let EventTarget { id, sku, location } = target;
    StockEvent { event_id: id.to_string(), sku, location_id: location, kind: Some(kind) }
}

pub fn is_rejected(result: &StockEventResult) -> bool {
    result.outcome == StockEventOutcome::Rejected as i32
}

pub fn result_json(result: &StockEventResult) -> Value {
    let mut value = json!({
        "event_id": result.event_id,
        "outcome": stock_event_outcome(result.outcome),
        "position": result.position.as_ref().map(position_json),
        "epoch": result.epoch,
    });
    if is_rejected(result) {
        value["error_code"] = json!(result.error_code);
        value["error_name"] = json!(format!("{:?}", tonic::Code::from(result.error_code)));
        value["error_code_name"] = json!(result.error_code_name);
        value["error_reason"] = json!(result.error_reason);
        value["error_message"] = json!(result.error_message);
    }
    value
}

/// One row: the position after the event, or the error when it was rejected.
fn result_text(result: &StockEventResult) -> String {
    let outcome = stock_event_outcome(result.outcome);
    if is_rejected(result) {
        let mut table = Table::new(&["EVENT", "OUTCOME", "ERROR"]);
        table.row(vec![result.event_id.clone(), outcome, rejection(result)]);
        return table.render();
    }
    let mut columns = vec!["EVENT", "OUTCOME", "LOCATION"];
    columns.extend(POSITION_COLUMNS);
    let mut table = Table::new(&columns);
    let mut cells = vec![result.event_id.clone(), outcome];
    match &result.position {
        Some(position) => {
            cells.push(position.location_id.clone());
            cells.extend(position_cells(position));
        }
        None => cells.extend(std::iter::repeat_n("-".to_owned(), POSITION_COLUMNS.len() + 1)),
    }
    table.row(cells);
    table.render()
}

/// `FailedPrecondition (9): why`.
pub fn rejection(result: &StockEventResult) -> String {
    format!("{}: {}", grpc_code(result.error_code), result.error_message)
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::LocationAvailability;

    use super::*;

    fn target() -> EventTarget {
        EventTarget { id: "e1".into(), sku: "s".into(), location: "l".into() }
    }

    #[test]
    fn a_count_without_as_of_is_sent_without_a_time() {
        let event =
            to_event(EventCommand::Counted { target: target(), on_hand: 7, as_of_ms: None });
        assert_eq!(
            (event.event_id.as_str(), event.sku.as_str(), event.location_id.as_str()),
            ("e1", "s", "l")
        );
        assert_eq!(event.kind, Some(Kind::Counted(Counted { on_hand: 7, as_of_ms: 0 })));
        let event =
            to_event(EventCommand::Counted { target: target(), on_hand: 7, as_of_ms: Some(5) });
        assert_eq!(event.kind, Some(Kind::Counted(Counted { on_hand: 7, as_of_ms: 5 })));
    }

    #[test]
    fn a_shipment_without_reservation_sends_an_empty_id() {
        let event =
            to_event(EventCommand::Shipped { target: target(), quantity: 2, reservation: None });
        assert_eq!(
            event.kind,
            Some(Kind::Shipped(Shipped { quantity: 2, reservation_id: String::new() }))
        );
    }

    #[test]
    fn results_show_the_position_or_the_error() {
        let applied = StockEventResult {
            event_id: "e1".into(),
            outcome: StockEventOutcome::Applied as i32,
            position: Some(LocationAvailability {
                location_id: "l".into(),
                on_hand: 5,
                atp: 5,
                ..Default::default()
            }),
            epoch: 1,
            ..Default::default()
        };
        let text = result_text(&applied);
        assert!(text.starts_with("EVENT  OUTCOME  LOCATION  ON_HAND"), "{text}");
        assert!(text.contains("e1     APPLIED  l"), "{text}");
        assert!(!is_rejected(&applied));

        let rejected = StockEventResult {
            event_id: "e2".into(),
            outcome: StockEventOutcome::Rejected as i32,
            error_code: tonic::Code::InvalidArgument as i32,
            error_message: "quantity must be positive".into(),
            ..Default::default()
        };
        assert_eq!(
            result_text(&rejected),
            "EVENT  OUTCOME   ERROR\ne2     REJECTED  InvalidArgument (3): quantity must be positive\n"
        );
        let value = result_json(&rejected);
        assert_eq!(value["outcome"], "REJECTED");
        assert_eq!(value["error_name"], "InvalidArgument");
        assert!(value["position"].is_null());
    }
}
