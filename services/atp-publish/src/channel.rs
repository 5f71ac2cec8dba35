//! One channel's publisher: a task that follows the channel's
//! WatchAvailability stream, pushes what changed to the receiver (one push
//! in flight, the rest coalesced per SKU), and persists the cursor once
//! pushes are acknowledged. It owns all its state; the admin API reads a
//! [`Status`] copy and sends [`Command`]s.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_client::{Version, WatchView};
use atp_proto::v1;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Streaming;

use crate::config::ChannelConfig;
use crate::cursor;
use crate::push::{self, HttpClient, PushError};
use crate::tracker::{Checkpoint, Tracker};

/// SKUs owed before the stream is no longer read (the server coalesces
/// meanwhile, and tells RESYNC if it must).
pub const MAX_OWED_SKUS: usize = 1_000_000;
/// First pause after a failure (pushes and reconnects), doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// How long connecting to an atpd and opening the stream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest stream message accepted.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Commands queued for one channel.
pub const COMMAND_CAPACITY: usize = 16;

/// What the admin API sees of a channel.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The stream is open.
    pub connected: bool,
    /// The view is whole (SYNCED received on this stream).
    pub synced: bool,
    /// SKUs owed to the receiver.
    pub pending: usize,
    /// The highest version acknowledged.
    pub last_acked_version: Option<Version>,
    /// sent_at_ms of the oldest unacknowledged change.
    pub oldest_unacked_sent_at_ms: Option<i64>,
    /// Items acknowledged since the start.
    pub pushed_items: u64,
    /// Pushes that failed since the start.
    pub failed_requests: u64,
}

/// Asks a channel task to do something.
#[derive(Debug)]
pub enum Command {
    /// Push every SKU held again; answers how many.
    Republish(oneshot::Sender<usize>),
}

/// What a channel task needs.
pub struct Setup {
    /// Its configuration.
    pub config: ChannelConfig,
    /// The atpd nodes, tried in turn.
    pub endpoints: Vec<String>,
    /// Its cursor file.
    pub cursor_path: PathBuf,
    /// Its resume point as loaded at start.
    pub cursor: Option<Checkpoint>,
    /// The HTTP client.
    pub http: HttpClient,
    /// Where it publishes its status.
    pub status: Arc<Mutex<Status>>,
    /// Its commands.
    pub commands: mpsc::Receiver<Command>,
}

type Opening =
    Pin<Box<dyn Future<Output = Result<Streaming<v1::WatchAvailabilityResponse>, String>> + Send>>;

/// Exponential backoff with jitter, capped.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { next: FIRST_BACKOFF.min(max), max }
    }

    /// The pause before the next attempt: between half and all of the
    /// current step, which then doubles.
    fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let millis = u64::try_from(step.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(millis / 2 + fastrand::u64(0..=millis / 2))
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF.min(self.max);
    }
}

fn now_ms() -> i64 {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A channel task's state.
struct Worker {
    config: ChannelConfig,
    endpoints: Vec<String>,
    cursor_path: PathBuf,
    http: HttpClient,
    status: Arc<Mutex<Status>>,
    tracker: Tracker,
    view: WatchView,
    stream: Option<Streaming<v1::WatchAvailabilityResponse>>,
    opening: Option<Opening>,
    connect_at: Instant,
    connect_backoff: Backoff,
    next_endpoint: usize,
    pushing: Option<JoinHandle<Result<(), PushError>>>,
    push_at: Option<Instant>,
    push_backoff: Backoff,
    pushed_items: u64,
    failed_requests: u64,
}

/// Runs the channel until the process ends.
pub async fn run(setup: Setup) {
    let Setup { config, endpoints, cursor_path, cursor, http, status, mut commands } = setup;
    let mut worker = Worker {
        connect_backoff: Backoff::new(config.max_backoff),
        push_backoff: Backoff::new(config.max_backoff),
        config,
        endpoints,
        cursor_path,
        http,
        status,
        tracker: Tracker::new(cursor),
        view: WatchView::new(),
        stream: None,
        opening: None,
        connect_at: Instant::now(),
        next_endpoint: 0,
        pushing: None,
        push_at: None,
        pushed_items: 0,
        failed_requests: 0,
    };
    loop {
        // Schedule a push of what waits, unless one is in flight or due.
        if worker.pushing.is_none() && worker.push_at.is_none() && worker.tracker.waiting() > 0 {
            worker.push_at = Some(Instant::now() + worker.config.flush_interval);
        }
        let reading = worker.stream.is_some() && worker.tracker.owed() < MAX_OWED_SKUS;
        let connect_due = worker.stream.is_none() && worker.opening.is_none();
        let push_due = worker.pushing.is_none() && worker.push_at.is_some();
        tokio::select! {
            message = async { worker.stream.as_mut().expect("reading").message().await }, if reading => {
                worker.on_message(message).await;
            }
            () = tokio::time::sleep_until(worker.connect_at), if connect_due => worker.start_opening(),
            opened = async { worker.opening.as_mut().expect("opening").await }, if worker.opening.is_some() => {
                worker.on_opened(opened);
            }
            () = async { tokio::time::sleep_until(worker.push_at.expect("due")).await }, if push_due => {
                worker.start_push();
            }
            outcome = async { worker.pushing.as_mut().expect("pushing").await }, if worker.pushing.is_some() => {
                let outcome = outcome.unwrap_or_else(|error| panic!("a push task failed: {error}"));
                worker.on_pushed(outcome).await;
            }
            command = commands.recv() => match command {
                Some(Command::Republish(reply)) => {
                    let _ = reply.send(worker.republish());
                }
                None => return,
            },
        }
        worker.publish_status();
    }
}

impl Worker {
    fn channel_id(&self) -> &str {
        &self.config.channel_id
    }

    async fn on_message(
        &mut self,
        message: Result<Option<v1::WatchAvailabilityResponse>, tonic::Status>,
    ) {
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => {
                tracing::warn!(channel = %self.channel_id(), "the watch stream ended; reconnecting");
                self.cut();
                return;
            }
            Err(status) => {
                tracing::warn!(
                    channel = %self.channel_id(),
                    code = ?status.code(),
                    error = %status.message(),
                    "the watch stream broke; reconnecting"
                );
                self.cut();
                return;
            }
        };
        self.connect_backoff.reset();
        let applied = self.view.apply(&message);
        let marks: Vec<(u32, Version)> = message
            .marks
            .iter()
            .map(|mark| (mark.shard, mark.version.map_or((0, 0), |v| (v.epoch, v.sequence))))
            .collect();
        if applied.resynced {
            tracing::info!(channel = %self.channel_id(), "resync: pushing the snapshot that follows");
        }
        self.tracker.received(applied.resynced, &marks, message.sent_at_ms, &applied.changed);
        // A full batch goes at once (not during a retry's backoff).
        if self.tracker.waiting() >= self.config.batch_max
            && self.pushing.is_none()
            && !self.tracker.in_flight()
        {
            self.push_at = Some(Instant::now());
        }
        self.persist().await;
    }

    /// The stream is gone: reopen it after a pause.
    fn cut(&mut self) {
        self.stream = None;
        self.connect_at = Instant::now() + self.connect_backoff.pause();
    }

    /// Opens the stream on the next endpoint, from the acknowledged state.
    fn start_opening(&mut self) {
        let endpoint = self.endpoints[self.next_endpoint % self.endpoints.len()].clone();
        self.next_endpoint += 1;
        let request = v1::WatchAvailabilityRequest {
            channel_id: self.config.channel_id.clone(),
            ..Default::default()
        };
        let request = resume_request(self.tracker.acknowledged(), request);
        tracing::info!(
            channel = %self.channel_id(),
            %endpoint,
            resume = request.resume,
            "opening the watch stream"
        );
        self.opening = Some(Box::pin(open(endpoint, request)));
    }

    fn on_opened(&mut self, opened: Result<Streaming<v1::WatchAvailabilityResponse>, String>) {
        self.opening = None;
        match opened {
            Ok(opened) => {
                // The stream restarts from the acknowledged state: the
                // figures held stay (what is owed stays owed), and SYNCED
                // comes again.
                self.view = resume_view(&self.view);
                self.stream = Some(opened);
            }
            Err(error) => {
                tracing::warn!(channel = %self.channel_id(), %error, "could not open the watch stream; retrying");
                self.connect_at = Instant::now() + self.connect_backoff.pause();
            }
        }
    }

    /// Sends the batch in flight again, or a new one.
    fn start_push(&mut self) {
        self.push_at = None;
        let mut batch = self.tracker.batch();
        if batch.is_empty() {
            batch = self.tracker.take_batch(self.config.batch_max);
        }
        if batch.is_empty() {
            return;
        }
        let body = push::body(self.channel_id(), &batch);
        let (http, url) = (self.http.clone(), self.config.url.clone());
        let timeout = self.config.request_timeout;
        self.pushing =
            Some(tokio::spawn(async move { push::push(&http, &url, body, timeout).await }));
    }

    async fn on_pushed(&mut self, outcome: Result<(), PushError>) {
        self.pushing = None;
        match outcome {
            Ok(()) => {
                self.push_backoff.reset();
                self.pushed_items += self.tracker.acked() as u64;
                self.persist().await;
            }
            Err(error) => {
                self.failed_requests += 1;
                self.tracker.failed();
                let pause = self.push_backoff.pause();
                tracing::warn!(
                    channel = %self.channel_id(),
                    error = %error_chain(&error),
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "a push failed; retrying"
                );
                self.push_at = Some(Instant::now() + pause);
            }
        }
    }

    /// Owes every SKU held again; returns how many.
    fn republish(&mut self) -> usize {
        for (sku, figure) in self.view.figures() {
            self.tracker.republish(sku, *figure);
        }
        let skus = self.view.figures().len();
        tracing::info!(channel = %self.channel_id(), skus, "republishing");
        skus
    }

    fn publish_status(&self) {
        let mut shared = self.status.lock().expect("status lock never poisoned");
        *shared = Status {
            connected: self.stream.is_some(),
            synced: self.stream.is_some() && self.view.is_synced(),
            pending: self.tracker.owed(),
            last_acked_version: self.tracker.last_acked_version(),
            oldest_unacked_sent_at_ms: self.tracker.oldest_unacked_sent_at_ms(),
            pushed_items: self.pushed_items,
            failed_requests: self.failed_requests,
        };
    }

    /// Persists the resume point if it moved.
    async fn persist(&mut self) {
        let Some(checkpoint) = self.tracker.advance() else { return };
        let path = self.cursor_path.clone();
        let stored = tokio::task::spawn_blocking(move || cursor::store(&path, &checkpoint)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                // The cursor on disk stays older: a restart pushes more again.
                tracing::warn!(channel = %self.channel_id(), error = %error_chain(&error), "could not persist the cursor");
            }
            Err(error) => panic!("the cursor writer failed: {error}"),
        }
    }
}

/// The figures of `view` in a fresh view (not synced, no marks): what a
/// reopened stream is applied to.
fn resume_view(view: &WatchView) -> WatchView {
    let mut fresh = WatchView::new();
    let updates = view
        .figures()
        .iter()
        .map(|(sku, figure)| v1::AvailabilityUpdate {
            sku: sku.clone(),
            atp: figure.atp,
            published: figure.published,
            version: Some(v1::Version { epoch: figure.version.0, sequence: figure.version.1 }),
            ..Default::default()
        })
        .collect();
    let message = v1::WatchAvailabilityResponse { updates, ..Default::default() };
    fresh.apply(&message);
    fresh
}

/// `request` resuming from `acked` (a snapshot without one), built by the
/// SDK's [`WatchView::resume`] from a view holding the acknowledged marks.
pub fn resume_request(
    acked: Option<&Checkpoint>,
    request: v1::WatchAvailabilityRequest,
) -> v1::WatchAvailabilityRequest {
    let mut view = WatchView::new();
    if let Some(acked) = acked {
        let marks = acked
            .marks
            .iter()
            .map(|(shard, (epoch, sequence))| v1::ShardMark {
                shard: *shard,
                version: Some(v1::Version { epoch: *epoch, sequence: *sequence }),
            })
            .collect();
        let message = v1::WatchAvailabilityResponse {
            marks,
            sent_at_ms: acked.sent_at_ms,
            ..Default::default()
        };
        view.apply(&message);
    }
    view.resume(request)
}

async fn open(
    endpoint: String,
    request: v1::WatchAvailabilityRequest,
) -> Result<Streaming<v1::WatchAvailabilityResponse>, String> {
    let attempt = async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|error| format!("{endpoint} is not an endpoint: {error}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|error| format!("connecting to {endpoint}: {}", error_chain(&error)))?;
        let mut client =
            AvailabilityServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let stream = client.watch_availability(request).await.map_err(|status| {
            format!("opening the stream at {endpoint}: {:?} {}", status.code(), status.message())
        })?;
        Ok(stream.into_inner())
    };
    tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("opening the stream at {endpoint} timed out")))
}

/// `error` and its causes, as one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// The lag of `status` at `now_ms`: 0 when nothing is owed.
pub fn lag_ms(status: &Status) -> i64 {
    status.oldest_unacked_sent_at_ms.map_or(0, |sent_at_ms| (now_ms() - sent_at_ms).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(300));
        let pauses: Vec<Duration> = (0..6).map(|_| backoff.pause()).collect();
        let steps = [50, 100, 200, 300, 300, 300].map(Duration::from_millis);
        for (pause, step) in pauses.iter().zip(steps) {
            assert!(*pause >= step / 2 && *pause <= step, "{pause:?} for a step of {step:?}");
        }
        backoff.reset();
        assert!(backoff.pause() <= Duration::from_millis(50));
    }

    #[test]
    fn a_resume_request_carries_the_acknowledged_marks() {
        let request =
            v1::WatchAvailabilityRequest { channel_id: "web".into(), ..Default::default() };
        assert!(!resume_request(None, request.clone()).resume);
        let marks = crate::tracker::Marks::from([(7, (2, 9))]);
        let acked = Checkpoint { seq: 0, marks: Arc::new(marks), sent_at_ms: 1234 };
        let resumed = resume_request(Some(&acked), request);
        assert!(resumed.resume);
        assert_eq!(resumed.resume_at_ms, 1234);
        assert_eq!(resumed.resume_marks.len(), 1);
        assert_eq!(resumed.resume_marks[0].shard, 7);
        assert_eq!(resumed.resume_marks[0].version, Some(v1::Version { epoch: 2, sequence: 9 }));
    }
}
