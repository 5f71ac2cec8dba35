//! `reserve-batch`: many Reserves in ReserveBatch calls (the SDK's
//! `reserve_many`), one result per reservation.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use atp_client::Reserve;

use crate::cli::ReserveBatchArgs;
use crate::client::Context;
use crate::commands::reservations::{ReservationResult, results_json, results_text};
use crate::status::exit;

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
    let results: Vec<ReservationResult> =
        results.into_iter().map(|result| result.map(Into::into)).collect();
    context.print(|| results_json(&ids, &results), || results_text(&ids, &results));
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::PARTLY_REFUSED) })
}
