//! `import FILE.csv`: initial stock as counted events, sent in batches.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use atp_core::ids::MAX_EVENTS_PER_BATCH;
use atp_proto::v1::{ApplyStockEventsRequest, StockEventOutcome, StockEventResult};
use serde_json::json;
use tonic_types::StatusExt;

use super::event::rejection;
use crate::cli::ImportArgs;
use crate::client::Context;
use crate::format::{grpc_code, now_ms, time_ms};
use crate::import_file::{CountRow, parse_counts};
use crate::table::{Fields, Table};

/// Most times one batch is sent again after the server refused some of its events.
/// The server reports every bad field at once, so one retry is the usual case.
const MAX_SENDS_PER_BATCH: usize = 4;

/// Tally of one import.
#[derive(Debug, Default)]
struct Summary {
    /// Rows in the file.
    events: usize,
    /// The as_of_ms given to rows without one (`None` when every row has its own).
    default_as_of_ms: Option<i64>,
    applied: usize,
    duplicate: usize,
    rejected: Vec<(CountRow, StockEventResult)>,
}

pub async fn import(context: &Context, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let path = args.file.as_path();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let default_as_of_ms = args.as_of_ms.unwrap_or_else(now_ms);
    let rows = parse_counts(&text, default_as_of_ms)
        .with_context(|| format!("checking {}", path.display()))?;
    let clients = context.connect().await?;
    let client = clients.rpc();
    let mut summary = Summary {
        events: rows.len(),
        default_as_of_ms: rows.iter().any(|row| row.as_of_defaulted).then_some(default_as_of_ms),
        ..Summary::default()
    };
    // Rows without as_of_ms only repeat their first payload with the same default.
    let rerun = match summary.default_as_of_ms {
        Some(ms) => format!("running the import again with --as-of-ms {ms} is safe"),
        None => "running the import again is safe".to_owned(),
    };
    let batch_count = rows.len().div_ceil(MAX_EVENTS_PER_BATCH);
    let mut failure = None;
    for (batch_index, batch) in rows.chunks(MAX_EVENTS_PER_BATCH).enumerate() {
        if let Err(error) = send_batch(&client, batch, &mut summary).await {
            let (first_line, last_line) = (batch[0].line, batch[batch.len() - 1].line);
            let earlier =
                if batch_index == 0 { "" } else { "the batches before it were applied; " };
            failure = Some(error.context(format!(
                "sending batch {} of {batch_count} (lines {first_line}-{last_line}); {earlier}\
                 {rerun} (events are idempotent)",
                batch_index + 1
            )));
            break;
        }
    }
    let rejected = summary.rejected.len();
    context.print(
        || {
            let rejected_rows: Vec<_> = summary
                .rejected
                .iter()
                .map(|(row, result)| {
                    json!({
                        "line": row.line,
                        "event_id": row.event_id,
                        "sku": row.sku,
                        "location_id": row.location_id,
                        "error_code": result.error_code,
                        "error_name": format!("{:?}", tonic::Code::from(result.error_code)),
                        "error_code_name": result.error_code_name,
                        "error_reason": result.error_reason,
                        "error_message": result.error_message,
                    })
                })
                .collect();
            json!({
                "events": summary.events,
                "default_as_of_ms": summary.default_as_of_ms,
                "as_of_note": as_of_note(&summary),
                "applied": summary.applied,
                "duplicate": summary.duplicate,
                "rejected": rejected,
                "rejected_rows": rejected_rows,
            })
        },
        || summary_text(&summary),
    );
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::status::exit::PARTLY_REFUSED)
    })
}

/// Sends one batch and tallies the results. When the server refuses the whole call
/// because of field violations naming some of its events (`events[3].location_id`),
/// those rows are counted as rejected and the others sent again: a refused call
/// stores nothing.
async fn send_batch(
    client: &atp_client::Rpc<'_>,
    batch: &[CountRow],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let mut pending: Vec<&CountRow> = batch.iter().collect();
    for _ in 0..MAX_SENDS_PER_BATCH {
        if pending.is_empty() {
            return Ok(());
        }
        let request =
            ApplyStockEventsRequest { events: pending.iter().map(|row| row.to_event()).collect() };
        let error = match client.apply_stock_events(request).await {
            Ok(response) => {
                let results = response.results;
                if results.len() != pending.len() {
                    bail!(
                        "the server answered {} results for {} events",
                        results.len(),
                        pending.len()
                    );
                }
                for (row, result) in pending.into_iter().zip(results) {
                    tally(summary, row, result);
                }
                return Ok(());
            }
            Err(error) => error,
        };
        let refused = error.status().and_then(|status| refused_events(status, pending.len()));
        let Some(refused) = refused else {
            return Err(error.into());
        };
        let mut still_pending = Vec::with_capacity(pending.len());
        for (index, row) in pending.into_iter().enumerate() {
            match refused.get(&index) {
                Some(reasons) => {
                    let result = StockEventResult {
                        event_id: row.event_id.clone(),
                        outcome: StockEventOutcome::Rejected as i32,
                        error_code: error.code() as i32,
                        error_message: reasons.join("; "),
                        ..Default::default()
                    };
                    summary.rejected.push((row.clone(), result));
                }
                None => still_pending.push(row),
            }
        }
        pending = still_pending;
    }
    bail!("the server kept refusing events of this batch after {MAX_SENDS_PER_BATCH} sends")
}

/// When `status` is InvalidArgument and every field violation names an event of the
/// request (`events[i]…`, `i < event_count`): the violations by event index, each as
/// `field: description` with the `events[i].` prefix dropped. Otherwise `None`.
fn refused_events(
    status: &tonic::Status,
    event_count: usize,
) -> Option<BTreeMap<usize, Vec<String>>> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let violations = status.get_details_bad_request()?.field_violations;
    let mut refused: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for violation in &violations {
        let rest = violation.field.strip_prefix("events[")?;
        let (index, field) = rest.split_once(']')?;
        let index: usize = index.parse().ok()?;
        if index >= event_count {
            return None;
        }
        let field = field.strip_prefix('.').unwrap_or(field);
        let reason = if field.is_empty() {
            violation.description.clone()
        } else {
            format!("{field}: {}", violation.description)
        };
        refused.entry(index).or_default().push(reason);
    }
    if refused.is_empty() { None } else { Some(refused) }
}

fn tally(summary: &mut Summary, row: &CountRow, result: StockEventResult) {
    match StockEventOutcome::try_from(result.outcome) {
        Ok(StockEventOutcome::Applied) => summary.applied += 1,
        Ok(StockEventOutcome::Duplicate) => summary.duplicate += 1,
        // An outcome this CLI does not know is reported like a rejection, never counted as done.
        Ok(StockEventOutcome::Rejected | StockEventOutcome::Unspecified) | Err(_) => {
            summary.rejected.push((row.clone(), result));
        }
    }
}

/// Rows refused as "reused with another payload" that took the default
/// as_of_ms: most likely a repeated import whose default differs from the
/// first run's. The rule, and how to repeat an import, in words.
fn as_of_note(summary: &Summary) -> Option<String> {
    let repeated = summary
        .rejected
        .iter()
        .filter(|(row, result)| {
            row.as_of_defaulted && result.error_code == tonic::Code::AlreadyExists as i32
        })
        .count();
    if repeated == 0 {
        return None;
    }
    let ms = summary.default_as_of_ms?;
    Some(format!(
        "{repeated} row(s) without as_of_ms were refused as reused ids: a count's payload \
         includes its as_of_ms, and these rows took this run's default ({ms}), not the one \
         of the import that first sent them. The first import still stands (nothing was \
         applied twice). To repeat an import, pass the --as-of-ms its summary printed; for \
         a new count, use new event ids."
    ))
}

fn summary_text(summary: &Summary) -> String {
    let mut fields = Fields::new();
    fields.add("events", summary.events);
    if let Some(ms) = summary.default_as_of_ms {
        // Printed so that the import can be repeated with the same payloads.
        fields.add(
            "default as_of_ms",
            format!("{ms} ({}); repeat with --as-of-ms {ms}", time_ms(ms)),
        );
    }
    fields
        .add("applied", summary.applied)
        .add("duplicate", summary.duplicate)
        .add("rejected", summary.rejected.len());
    let mut out = fields.render();
    if !summary.rejected.is_empty() {
        let mut table = Table::new(&["LINE>", "EVENT", "SKU", "LOCATION", "ERROR"]);
        for (row, result) in &summary.rejected {
            let error = if result.outcome == StockEventOutcome::Rejected as i32 {
                rejection(result)
            } else {
                format!("unexpected outcome {} ({})", result.outcome, grpc_code(result.error_code))
            };
            table.row(vec![
                row.line.to_string(),
                row.event_id.clone(),
                row.sku.clone(),
                row.location_id.clone(),
                error,
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    if let Some(note) = as_of_note(summary) {
        out.push_str(&format!("\nnote: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    fn invalid(fields: &[&str]) -> tonic::Status {
        let violations: Vec<FieldViolation> =
            fields.iter().map(|field| FieldViolation::new(*field, "is bad")).collect();
        tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "invalid argument",
            ErrorDetails::with_bad_request(violations),
        )
    }

    #[test]
    fn violations_naming_events_pick_the_rows_to_set_aside() {
        let refused = refused_events(
            &invalid(&[
                "events[3].location_id",
                "events[0].sku",
                "events[3].counted.on_hand",
                "events[1]",
            ]),
            5,
        )
        .expect("every violation names an event");
        let expected = BTreeMap::from([
            (0, vec!["sku: is bad".to_owned()]),
            (1, vec!["is bad".to_owned()]),
            (3, vec!["location_id: is bad".to_owned(), "counted.on_hand: is bad".to_owned()]),
        ]);
        assert_eq!(refused, expected);
    }

    #[test]
    fn other_refusals_fail_the_batch() {
        assert_eq!(refused_events(&invalid(&["events"]), 5), None);
        assert_eq!(refused_events(&invalid(&["events[5].sku"]), 5), None);
        assert_eq!(refused_events(&invalid(&["events[0].sku", "other"]), 5), None);
        assert_eq!(refused_events(&tonic::Status::invalid_argument("no details"), 5), None);
        assert_eq!(refused_events(&tonic::Status::unavailable("down"), 5), None);
    }

    fn row(line: usize, event_id: &str) -> CountRow {
        CountRow {
            line,
            event_id: event_id.into(),
            sku: "s".into(),
            location_id: "l".into(),
            on_hand: 1,
            as_of_ms: 1,
            as_of_defaulted: false,
        }
    }

    fn result(outcome: StockEventOutcome) -> StockEventResult {
        StockEventResult { outcome: outcome as i32, ..Default::default() }
    }

    #[test]
    fn outcomes_are_counted_and_rejections_listed() {
        let mut summary = Summary { events: 4, ..Summary::default() };
        tally(&mut summary, &row(2, "a"), result(StockEventOutcome::Applied));
        tally(&mut summary, &row(3, "b"), result(StockEventOutcome::Duplicate));
        let mut refused = result(StockEventOutcome::Rejected);
        refused.error_code = tonic::Code::FailedPrecondition as i32;
        refused.error_message = "unknown location l".into();
        tally(&mut summary, &row(4, "c"), refused);
        tally(&mut summary, &row(5, "d"), result(StockEventOutcome::Unspecified));
        assert_eq!((summary.applied, summary.duplicate, summary.rejected.len()), (1, 1, 2));
        let text = summary_text(&summary);
        assert!(
            text.starts_with("events     4\napplied    1\nduplicate  1\nrejected   2\n\n"),
            "{text}"
        );
        assert!(
            text.contains("4  c      s    l         FailedPrecondition (9): unknown location l"),
            "{text}"
        );
        assert!(text.contains("5  d      s    l         unexpected outcome 0 (Ok (0))"), "{text}");
        summary.default_as_of_ms = Some(1_700_000_000_000);
        assert!(
            summary_text(&summary).starts_with(
                "events            4\ndefault as_of_ms  1700000000000 (2023-11-14T22:13:20.000Z); \
                 repeat with --as-of-ms 1700000000000\napplied           1\n"
            ),
            "{}",
            summary_text(&summary)
        );
    }
}
