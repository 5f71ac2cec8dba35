//! Reserve, commit, release, cancel, extend, modify and get: every answer is one reservation.

use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use atp_proto::v1::{
    CancelRequest, CommitRequest, ExtendReservationRequest, GetReservationRequest,
    ModifyReservationRequest, ReleaseRequest, Reservation, ReservationMetadata, ReserveRequest,
};
use serde_json::{Value, json};

use crate::cli::{CommitArgs, ExtendArgs, IdArgs, ModifyArgs, ReserveArgs};
use crate::client::Context;
use crate::format::{reservation_state, time_ms};
use crate::table::{Fields, Table};

pub async fn reserve(context: &Context, args: ReserveArgs) -> anyhow::Result<ExitCode> {
    let request = ReserveRequest {
        reservation_id: args.id.clone(),
        channel_id: args.channel,
        lines: args.lines.into_iter().map(Into::into).collect(),
        // 0 asks for the server's default lifetime.
        ttl_seconds: args.ttl_seconds.unwrap_or(0),
        metadata: (args.order_id.is_some() || !args.labels.is_empty()).then(|| {
            ReservationMetadata {
                order_id: args.order_id.unwrap_or_default(),
                labels: args.labels.into_iter().collect(),
            }
        }),
    };
    let clients = context.connect().await?;
    let response =
        clients.rpc().reserve(request).await.with_context(|| format!("reserve {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

pub async fn commit(context: &Context, args: CommitArgs) -> anyhow::Result<ExitCode> {
    let request = CommitRequest {
        reservation_id: args.id.clone(),
        lines: args.lines.into_iter().map(Into::into).collect(),
    };
    let clients = context.connect().await?;
    let response =
        clients.rpc().commit(request).await.with_context(|| format!("commit {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

pub async fn release(context: &Context, args: IdArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .release(ReleaseRequest { reservation_id: args.id.clone() })
        .await
        .with_context(|| format!("release {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

pub async fn cancel(context: &Context, args: IdArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .cancel(CancelRequest { reservation_id: args.id.clone() })
        .await
        .with_context(|| format!("cancel {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

pub async fn extend(context: &Context, args: ExtendArgs) -> anyhow::Result<ExitCode> {
    let request = ExtendReservationRequest {
        reservation_id: args.id.clone(),
        ttl_seconds: args.ttl_seconds,
        ..Default::default()
    };
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .extend_reservation(request)
        .await
        .with_context(|| format!("extend {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

pub async fn modify(context: &Context, args: ModifyArgs) -> anyhow::Result<ExitCode> {
    let request = ModifyReservationRequest {
        reservation_id: args.id.clone(),
        request_id: args.request_id,
        lines: args.lines.into_iter().map(Into::into).collect(),
    };
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .modify_reservation(request)
        .await
        .with_context(|| format!("modify {}", args.id))?;
    let reservation =
        response.reservation.ok_or_else(|| anyhow!("the server's answer has no reservation"))?;
    let (epoch, replayed, current) = (response.epoch, response.replayed, response.current);
    context.print(
        || {
            json!({
                "reservation": reservation_json(&reservation),
                "epoch": epoch,
                "replayed": replayed,
                "current": current.as_ref().map(reservation_json),
            })
        },
        || {
            let mut text = reservation_text(&reservation, epoch);
            if replayed {
                text.push_str(&replay_note(&reservation, current.as_ref()));
            }
            text
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// Under a replayed answer's table: it is the first answer of a request done
/// before, and how the reservation stands now.
fn replay_note(first: &Reservation, current: Option<&Reservation>) -> String {
    let now = match current {
        Some(current) if current.lines != first.lines => {
            format!("{}, its lines changed since", reservation_state(current.state))
        }
        Some(current) => reservation_state(current.state),
        None => "not in the answer".to_owned(),
    };
    format!(
        "\nnote: replayed: this request id was done before and the table is its first answer; \
         the reservation now: {now}\n"
    )
}

pub async fn get(context: &Context, args: IdArgs) -> anyhow::Result<ExitCode> {
    let clients = context.connect().await?;
    let response = clients
        .rpc()
        .get_reservation(GetReservationRequest { reservation_id: args.id.clone() })
        .await
        .with_context(|| format!("get reservation {}", args.id))?;
    print_reservation(context, response.reservation, response.epoch)
}

fn print_reservation(
    context: &Context,
    reservation: Option<Reservation>,
    epoch: u64,
) -> anyhow::Result<ExitCode> {
    let reservation =
        reservation.ok_or_else(|| anyhow!("the server's answer has no reservation"))?;
    context.print(
        || json!({ "reservation": reservation_json(&reservation), "epoch": epoch }),
        || reservation_text(&reservation, epoch),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn reservation_json(reservation: &Reservation) -> Value {
    let lines: Vec<Value> = reservation
        .lines
        .iter()
        .map(|line| {
            json!({
                "sku": line.sku,
                "location_id": line.location_id,
                "quantity": line.quantity,
                "committed": line.committed,
                "shipped": line.shipped,
            })
        })
        .collect();
    json!({
        "reservation_id": reservation.reservation_id,
        "channel_id": reservation.channel_id,
        "state": reservation_state(reservation.state),
        "lines": lines,
        "created_at_ms": reservation.created_at_ms,
        "expires_at_ms": reservation.expires_at_ms,
        "ended_at_ms": reservation.ended_at_ms,
        "metadata": metadata_json(reservation.metadata.as_ref()),
    })
}

/// `{"order_id", "labels"}`, with the defaults when the reservation has none.
fn metadata_json(metadata: Option<&ReservationMetadata>) -> Value {
    let metadata = metadata.cloned().unwrap_or_default();
    let labels: serde_json::Map<String, Value> =
        metadata.labels.into_iter().map(|(key, value)| (key, value.into())).collect();
    json!({ "order_id": metadata.order_id, "labels": labels })
}

/// `k=v k2=v2`, sorted by key.
fn labels_text(metadata: Option<&ReservationMetadata>) -> String {
    let Some(metadata) = metadata else { return String::new() };
    let mut labels: Vec<String> =
        metadata.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
    labels.sort();
    labels.join(" ")
}

fn reservation_text(reservation: &Reservation, epoch: u64) -> String {
    let mut fields = Fields::new();
    fields
        .add("reservation", &reservation.reservation_id)
        .add("channel", &reservation.channel_id)
        .add("state", reservation_state(reservation.state))
        .add("created", time_ms(reservation.created_at_ms))
        .add("expires", time_ms(reservation.expires_at_ms))
        .add("ended", time_ms(reservation.ended_at_ms))
        .add("order", reservation.metadata.as_ref().map_or("", |metadata| &metadata.order_id))
        .add("labels", labels_text(reservation.metadata.as_ref()))
        .add("epoch", epoch);
    let mut lines = Table::new(&["SKU", "LOCATION", "QUANTITY>", "COMMITTED>", "SHIPPED>"]);
    for line in &reservation.lines {
        lines.row(vec![
            line.sku.clone(),
            line.location_id.clone(),
            line.quantity.to_string(),
            line.committed.to_string(),
            line.shipped.to_string(),
        ]);
    }
    format!("{}\n{}", fields.render(), lines.render())
}

#[cfg(test)]
mod tests {
    use atp_proto::v1::{ReservationLineState, ReservationState};

    use super::*;

    fn sample() -> Reservation {
        Reservation {
            reservation_id: "r1".into(),
            channel_id: "web".into(),
            state: ReservationState::Committed as i32,
            lines: vec![ReservationLineState {
                sku: "sku-1".into(),
                location_id: "dc-east".into(),
                quantity: 3,
                committed: 2,
                shipped: 0,
            }],
            created_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_900_000,
            ended_at_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn json_names_the_state() {
        let value = reservation_json(&sample());
        assert_eq!(value["state"], "COMMITTED");
        assert_eq!(value["lines"][0]["committed"], 2);
    }

    #[test]
    fn a_replay_note_says_how_the_reservation_stands_now() {
        let first = sample();
        let mut current = sample();
        assert!(replay_note(&first, Some(&current)).ends_with("the reservation now: COMMITTED\n"));
        current.lines[0].quantity = 1;
        let note = replay_note(&first, Some(&current));
        assert!(note.ends_with("now: COMMITTED, its lines changed since\n"), "{note}");
    }

    #[test]
    fn text_has_fields_then_lines() {
        let text = reservation_text(&sample(), 1);
        assert!(text.starts_with("reservation  r1\nchannel      web\nstate        COMMITTED\n"));
        assert!(text.contains("ended        -\n"));
        assert!(text.contains("SKU    LOCATION  QUANTITY  COMMITTED  SHIPPED\nsku-1  dc-east          3          2        0\n"), "{text}");
    }
}
