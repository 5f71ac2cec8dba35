//! `reservations get` and `reservations list`: answers of many reservations,
//! and the one-row-per-reservation table and JSON that `reserve-batch` shares.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use atp_client::Error;
use atp_proto::v1::{
    GetReservationsRequest, ListReservationsRequest, ListReservationsResponse, Reservation,
    ReservationState, get_reservation_result::Outcome,
};
use serde_json::{Value, json};

use crate::cli::{ReservationsGetArgs, ReservationsListArgs};
use crate::client::{Clients, Context};
use crate::commands::reservation::reservation_json;
use crate::format::{reservation_state, time_ms};
use crate::status::{code_name, details_json, exit, exit_code_of};
use crate::table::Table;

/// Most ids one GetReservations call takes (the server's limit).
const MAX_GET_IDS: usize = 100;
/// Most pages `reservations list --all` reads before giving up: at the
/// server's largest page that is ten million reservations.
const MAX_LIST_PAGES: usize = 10_000;

/// One reservation's result, as the batch and get commands print it.
pub type ReservationResult = Result<Reservation, Error>;

pub async fn get(context: &Context, args: ReservationsGetArgs) -> anyhow::Result<ExitCode> {
    if args.ids.len() > MAX_GET_IDS {
        bail!("{} ids; at most {MAX_GET_IDS} per command", args.ids.len());
    }
    let clients = context.connect().await?;
    let request = GetReservationsRequest { reservation_ids: args.ids.clone() };
    let response = clients.rpc().get_reservations(request).await.context("get reservations")?;
    if response.results.len() != args.ids.len() {
        bail!("the server answered {} results for {} ids", response.results.len(), args.ids.len());
    }
    let results: Vec<ReservationResult> = response
        .results
        .into_iter()
        .map(|result| match result.outcome {
            Some(Outcome::Reservation(reservation)) => Ok(reservation),
            Some(Outcome::Error(status)) => {
                Err(Error::from_status(&atp_proto::status_from_rpc(status)))
            }
            None => Err(Error::Other {
                code: tonic::Code::Internal,
                reason: None,
                message: "a GetReservations result carries no outcome".to_owned(),
                status: None,
            }),
        })
        .collect();
    let epoch = response.epoch;
    context.print(
        || {
            let mut value = results_json(&args.ids, &results);
            value["epoch"] = epoch.into();
            value
        },
        || results_text(&args.ids, &results),
    );
    Ok(get_exit_code(&results))
}

/// 0 when every id was found; 1 when some were and some were not (each
/// result printed); when none was, the status of the first error (5 for
/// NOT_FOUND), as `get-reservation` of that id would exit.
fn get_exit_code(results: &[ReservationResult]) -> ExitCode {
    let Some(first_error) = results.iter().find_map(|result| result.as_ref().err()) else {
        return ExitCode::SUCCESS;
    };
    if results.iter().any(Result::is_ok) {
        ExitCode::from(exit::PARTLY_REFUSED)
    } else {
        ExitCode::from(exit_code_of(first_error))
    }
}

pub async fn list(context: &Context, args: ReservationsListArgs) -> anyhow::Result<ExitCode> {
    let mut request = ListReservationsRequest {
        sku: args.sku.unwrap_or_default(),
        location_id: args.location.unwrap_or_default(),
        channel_id: args.channel.unwrap_or_default(),
        states: args.states.into_iter().map(|state| ReservationState::from(state) as i32).collect(),
        order_id: args.order_id.unwrap_or_default(),
        labels: args.labels.into_iter().collect(),
        // 0 asks for the server's default.
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
    };
    let clients = context.connect().await?;
    let mut page = list_page(&clients, &request).await?;
    let mut reservations = std::mem::take(&mut page.reservations);
    let mut pages = 1;
    while args.all && !page.next_page_token.is_empty() {
        if pages == MAX_LIST_PAGES {
            bail!("list reservations: still not at the end after {MAX_LIST_PAGES} pages");
        }
        if page.next_page_token == request.page_token {
            bail!("list reservations: the server answered the same page token again");
        }
        request.page_token = std::mem::take(&mut page.next_page_token);
        page = list_page(&clients, &request).await?;
        reservations.append(&mut page.reservations);
        pages += 1;
    }
    let ids: Vec<String> = reservations.iter().map(|r| r.reservation_id.clone()).collect();
    let results: Vec<ReservationResult> = reservations.into_iter().map(Ok).collect();
    context.print(
        || {
            let reservations: Vec<Value> = results.iter().flatten().map(reservation_json).collect();
            json!({
                "reservations": reservations,
                "next_page_token": page.next_page_token,
                "epoch": page.epoch,
            })
        },
        || {
            let mut text = results_text(&ids, &results);
            if !page.next_page_token.is_empty() {
                text.push_str(&format!("next page: --page-token {}\n", page.next_page_token));
            }
            text
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn list_page(
    clients: &Clients,
    request: &ListReservationsRequest,
) -> anyhow::Result<ListReservationsResponse> {
    clients.rpc().list_reservations(request.clone()).await.context("list reservations")
}

/// `{"results": [{"reservation_id", "reservation"} or {"reservation_id", "error"}]}`,
/// one per id, in order.
pub fn results_json(ids: &[String], results: &[ReservationResult]) -> Value {
    let items: Vec<Value> = ids
        .iter()
        .zip(results)
        .map(|(id, result)| match result {
            Ok(reservation) => json!({
                "reservation_id": id,
                "reservation": reservation_json(reservation),
            }),
            Err(error) => json!({
                "reservation_id": id,
                "error": {
                    "code": code_name(error.code()),
                    "message": error.status().map_or_else(|| error.to_string(), |status| status.message().to_owned()),
                    "details": error.status().map(details_json).unwrap_or_else(|| json!({})),
                },
            }),
        })
        .collect();
    json!({ "results": items })
}

/// One row per id: its state, channel, lines and expiry (or end), or its
/// error's code and message.
pub fn results_text(ids: &[String], results: &[ReservationResult]) -> String {
    let mut table = Table::new(&["RESERVATION", "RESULT", "DETAIL"]);
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(reservation) => {
                table.row(vec![
                    id.clone(),
                    reservation_state(reservation.state),
                    reservation_summary(reservation),
                ]);
            }
            Err(error) => {
                table.row(vec![id.clone(), format!("{:?}", error.code()), error.to_string()]);
            }
        }
    }
    table.render()
}

/// `channel web, tee@dc-1=2 mug@dc-1=1, expires 2023-…` (`ended …` once it ended).
fn reservation_summary(reservation: &Reservation) -> String {
    let lines: Vec<String> = reservation
        .lines
        .iter()
        .map(|line| format!("{}@{}={}", line.sku, line.location_id, line.quantity))
        .collect();
    let when = if reservation.ended_at_ms == 0 {
        format!("expires {}", time_ms(reservation.expires_at_ms))
    } else {
        format!("ended {}", time_ms(reservation.ended_at_ms))
    };
    format!("channel {}, {}, {when}", reservation.channel_id, lines.join(" "))
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::ReservationLineState;

    use super::*;

    fn held(id: &str) -> Reservation {
        Reservation {
            reservation_id: id.into(),
            channel_id: "web".into(),
            state: ReservationState::Held as i32,
            lines: vec![ReservationLineState {
                sku: "tee".into(),
                location_id: "dc-1".into(),
                quantity: 2,
                ..Default::default()
            }],
            expires_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    fn missing(id: &str) -> ReservationResult {
        Err(Error::from_status(&tonic::Status::not_found(format!("no reservation {id}"))))
    }

    #[test]
    fn a_missing_id_is_a_row_of_its_own() {
        let ids = ["r-1".to_owned(), "nobody".to_owned()];
        let results = [Ok(held("r-1")), missing("nobody")];
        let text = results_text(&ids, &results);
        let mut lines = text.lines().skip(1);
        assert_eq!(
            lines.next(),
            Some(
                "r-1          HELD      channel web, tee@dc-1=2, expires 2023-11-14T22:13:20.000Z"
            )
        );
        assert!(lines.next().is_some_and(|row| row.starts_with("nobody       NotFound")), "{text}");
        let value = results_json(&ids, &results);
        assert_eq!(value["results"][0]["reservation"]["state"], "HELD");
        assert_eq!(value["results"][1]["error"]["code"], "NOT_FOUND");
    }

    #[test]
    fn get_exits_by_what_was_found() {
        let code = |results: &[ReservationResult]| format!("{:?}", get_exit_code(results));
        let status = |value: u8| format!("{:?}", ExitCode::from(value));
        assert_eq!(code(&[Ok(held("a")), Ok(held("b"))]), format!("{:?}", ExitCode::SUCCESS));
        assert_eq!(code(&[Ok(held("a")), missing("b")]), status(exit::PARTLY_REFUSED));
        assert_eq!(code(&[missing("a"), missing("b")]), status(exit::NOT_FOUND));
    }
}
