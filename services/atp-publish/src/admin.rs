//! The admin HTTP API: `GET /v1/status` (every channel's delivery state)
//! and `POST /v1/channels/{channel_id}/republish` (push everything held
//! again). JSON in both directions; errors are `{"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::channel::{self, Command, Status};

/// How long a channel task may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// One channel as the admin API sees it.
#[derive(Clone)]
pub struct ChannelHandle {
    /// Its status, as last published by its task.
    pub status: Arc<Mutex<Status>>,
    /// Its command queue.
    pub commands: mpsc::Sender<Command>,
}

/// The channels by id (ordered: the status lists them in id order).
pub type Channels = Arc<BTreeMap<String, ChannelHandle>>;

/// The admin API's routes.
pub fn router(channels: Channels) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/channels/{channel_id}/republish", post(republish))
        .with_state(channels)
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("a JSON value serializes");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn status(State(channels): State<Channels>) -> Response {
    let mut listed = Vec::with_capacity(channels.len());
    for (channel_id, handle) in channels.iter() {
        let status = handle.status.lock().expect("status lock never poisoned").clone();
        let last_acked_version = status
            .last_acked_version
            .map(|(epoch, sequence)| json!({"epoch": epoch, "sequence": sequence}));
        listed.push(json!({
            "channel_id": channel_id,
            "connected": status.connected,
            "synced": status.synced,
            "pending": status.pending,
            "last_acked_version": last_acked_version,
            "lag_ms": channel::lag_ms(&status),
            "pushed_items": status.pushed_items,
            "failed_requests": status.failed_requests,
        }));
    }
    json_response(StatusCode::OK, &json!({"channels": listed}))
}

async fn republish(State(channels): State<Channels>, Path(channel_id): Path<String>) -> Response {
    let Some(handle) = channels.get(&channel_id) else {
        let error = json!({"error": format!("unknown channel {channel_id:?}")});
        return json_response(StatusCode::NOT_FOUND, &error);
    };
    let (reply, answer) = oneshot::channel();
    let unavailable =
        |message: &str| json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": message}));
    if handle.commands.try_send(Command::Republish(reply)).is_err() {
        return unavailable("the channel is busy; try again");
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(skus)) => {
            json_response(StatusCode::ACCEPTED, &json!({"channel_id": channel_id, "skus": skus}))
        }
        _ => unavailable("the channel did not answer in time"),
    }
}
