//! `reserve-batch`: many Reserves in ReserveBatch calls (the SDK's
//! `reserve_many`), one result per reservation.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use atp_client::{Error, Reservation, Reserve};
use serde_json::{Value, json};

use crate::cli::ReserveBatchArgs;
use crate::client::Context;
use crate::commands::reservation::reservation_json;
use crate::format::reservation_state;
use crate::status::{code_name, details_json, exit};
use crate::table::Table;

/// Most reservations one command sends (one ReserveBatch call).
const MAX_RESERVATIONS: usize = 1000;

pub async fn reserve_batch(context: &Context, args: ReserveBatchArgs) -> anyhow::Result<ExitCode> {
    if args.reservations.len() > MAX_RESERVATIONS {
        bail!("{} reservations; at most {MAX_RESERVATIONS} per command", args.reservations.len());
    }
    let reserves: Vec<Reserve> = args
        .reservations
        .into_iter()
        .map(|item| {
            let mut reserve = Reserve::new(item.id, args.channel.as_str())
                .ttl_seconds(args.ttl_seconds.unwrap_or(0));
            for line in item.lines {
                reserve = reserve.line(line.sku, line.location_id, line.quantity);
            }
            reserve
        })
        .collect();
    let ids: Vec<String> = reserves.iter().map(|reserve| reserve.reservation_id.clone()).collect();
    let clients = context.connect().await?;
    let results = clients.sdk().reserve_many(reserves).await.context("reserve batch")?;
    let refused = results.iter().filter(|result| result.is_err()).count();
    context.print(|| batch_json(&ids, &results), || batch_text(&ids, &results));
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::PARTLY_REFUSED) })
}

fn batch_json(ids: &[String], results: &[Result<Reservation, Error>]) -> Value {
    let items: Vec<Value> = ids
        .iter()
        .zip(results)
        .map(|(id, result)| match result {
            Ok(reservation) => json!({
                "reservation_id": id,
                "reservation": reservation_json(&reservation.clone().into()),
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

fn batch_text(ids: &[String], results: &[Result<Reservation, Error>]) -> String {
    let mut table = Table::new(&["reservation", "result", "detail"]);
    for (id, result) in ids.iter().zip(results) {
        match result {
            Ok(reservation) => {
                let lines = reservation.lines.len();
                table.row(vec![
                    id.clone(),
                    reservation_state(reservation.state.into()),
                    format!(
                        "{lines} line(s), expires {}",
                        crate::format::time_ms(reservation.expires_at_ms)
                    ),
                ]);
            }
            Err(error) => {
                table.row(vec![id.clone(), format!("{:?}", error.code()), error.to_string()]);
            }
        }
    }
    table.render()
}
