//! One push: an HTTP POST of a batch of figures to a channel's receiver.
//! A 2xx answer within the timeout acknowledges the batch; anything else is
//! a failure the caller retries.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::tracker::Item;

/// The HTTP client every push goes through (plain HTTP, pooled).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest answer body read (it is read and dropped, so the connection can
/// be reused).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A client for pushes.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Why a push was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the request failed.
    #[error("sending the push")]
    Send(#[source] hyper_util::client::legacy::Error),
    /// The receiver answered with a status other than 2xx.
    #[error("the receiver answered {0}")]
    Status(hyper::StatusCode),
}

/// The JSON body of a push.
pub fn body(channel_id: &str, items: &[Item]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|item| {
            let (epoch, sequence) = item.figure.version;
            json!({
                "sku": item.sku,
                "atp": item.figure.atp,
                "published": item.figure.published,
                "version": {"epoch": epoch, "sequence": sequence},
            })
        })
        .collect();
    serde_json::to_vec(&json!({"channel_id": channel_id, "items": items}))
        .expect("a JSON value serializes")
}

/// POSTs `body` to `url`; Ok once a 2xx answer was read within `timeout`.
pub async fn push(
    client: &HttpClient,
    url: &hyper::Uri,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), PushError> {
    let request = hyper::Request::post(url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid URI and header make a valid request");
    let exchange = async {
        let response = client.request(request).await.map_err(PushError::Send)?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        // The answer's content is not used; a body over the limit is not an error.
        let _ = limited.collect().await;
        if status.is_success() { Ok(()) } else { Err(PushError::Status(status)) }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| PushError::Timeout(timeout))?
}
