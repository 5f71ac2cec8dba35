//! `publish status` and `publish republish`: the admin HTTP API of an
//! `atp-publish` process (docs/PUBLISHER.md), not atpd's gRPC. Plain
//! HTTP/1.1 over a TCP connection of our own: two requests without a body
//! need no HTTP client library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::Context;
use crate::status::exit;
use crate::table::Table;

/// Where `atp-publish` serves its admin API by default.
pub const DEFAULT_PUBLISHER: &str = "http://127.0.0.1:7080";
/// Largest answer read from the publisher.
const MAX_ANSWER_BYTES: u64 = 16 << 20;
/// How long the whole exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// `atpctl publish ...`.
#[derive(Debug, Subcommand)]
pub enum PublishCommand {
    /// Every channel's delivery state: connected, pending SKUs, lag.
    Status(PublisherArgs),
    /// Push every SKU the publisher holds for CHANNEL again.
    Republish(RepublishArgs),
}

/// Where the publisher is.
#[derive(Debug, Args)]
pub struct PublisherArgs {
    /// The publisher's admin API (`http://host:port`; `host:port` means http).
    #[arg(long, env = "ATP_PUBLISHER", default_value = DEFAULT_PUBLISHER, value_name = "URL")]
    pub publisher: String,
}

/// `publish republish CHANNEL`.
#[derive(Debug, Args)]
pub struct RepublishArgs {
    /// The channel id.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,
    #[command(flatten)]
    pub publisher: PublisherArgs,
}

/// Runs one `publish` subcommand.
pub async fn run(context: &Context, command: PublishCommand) -> anyhow::Result<ExitCode> {
    match command {
        PublishCommand::Status(args) => status(context, &args.publisher).await,
        PublishCommand::Republish(args) => republish(context, &args).await,
    }
}

async fn status(context: &Context, publisher: &str) -> anyhow::Result<ExitCode> {
    let (code, body) = match call(publisher, "GET", "/v1/status").await {
        Ok(answer) => answer,
        Err(error) => return Ok(unreachable(context, &error)),
    };
    if code != 200 {
        bail!("the publisher answered {code}: {}", body.trim());
    }
    let answer: Value = serde_json::from_str(&body).context("reading the publisher's status")?;
    context.print(
        || answer.clone(),
        || {
            let mut table = Table::new(&[
                "CHANNEL",
                "CONNECTED",
                "SYNCED",
                "PENDING>",
                "LAST_ACKED",
                "LAG_MS>",
                "PUSHED>",
                "FAILED>",
            ]);
            for channel in answer["channels"].as_array().into_iter().flatten() {
                let version = &channel["last_acked_version"];
                let last_acked = match (version["epoch"].as_u64(), version["sequence"].as_u64()) {
                    (Some(epoch), Some(sequence)) => format!("{epoch}.{sequence}"),
                    _ => "-".to_owned(),
                };
                table.row(vec![
                    text(&channel["channel_id"]),
                    text(&channel["connected"]),
                    text(&channel["synced"]),
                    text(&channel["pending"]),
                    last_acked,
                    text(&channel["lag_ms"]),
                    text(&channel["pushed_items"]),
                    text(&channel["failed_requests"]),
                ]);
            }
            table.render()
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn republish(context: &Context, args: &RepublishArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/channels/{}/republish", percent_encode(&args.channel));
    let (code, body) = match call(&args.publisher.publisher, "POST", &path).await {
        Ok(answer) => answer,
        Err(error) => return Ok(unreachable(context, &error)),
    };
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    match code {
        202 => {
            context.print(
                || answer.clone(),
                || {
                    format!(
                        "republishing {} SKUs of channel {}\n",
                        text(&answer["skus"]),
                        text(&answer["channel_id"])
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        404 => Ok(failed(context, "NOT_FOUND", exit::NOT_FOUND, &message(&answer, &body))),
        _ => bail!("the publisher answered {code}: {}", message(&answer, &body)),
    }
}

fn message(answer: &Value, body: &str) -> String {
    answer["error"].as_str().map_or_else(|| body.trim().to_owned(), str::to_owned)
}

/// A value as a table cell (strings without quotes).
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Reports the publisher unreachable: try again later.
fn unreachable(context: &Context, error: &anyhow::Error) -> ExitCode {
    failed(context, "UNAVAILABLE", exit::TRY_AGAIN, &format!("{error:#}"))
}

/// Prints an error the way atpctl does (stderr, and one JSON object with
/// `--json`) and gives its exit status.
fn failed(context: &Context, code: &str, exit_code: u8, message: &str) -> ExitCode {
    if context.json {
        crate::client::print_json(&json!({
            "error": {"code": code, "message": message, "exit_code": exit_code, "details": {}}
        }));
    }
    eprintln!("error: {message}");
    ExitCode::from(exit_code)
}

/// A path segment with everything but unreserved characters escaped.
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `host:port` of `http://host:port[/]` (or of a bare `host:port`).
fn authority(publisher: &str) -> anyhow::Result<&str> {
    let rest = match publisher.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            bail!("--publisher {publisher:?}: only http:// is supported, not {scheme}://")
        }
        None => publisher,
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("--publisher {publisher:?}: give http://HOST:PORT");
    }
    Ok(authority)
}

/// One HTTP/1.1 request without a body: (status code, body).
async fn call(publisher: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let authority = authority(publisher)?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.with_context(|| {
            format!("connecting to the publisher at {authority} (set --publisher)")
        })?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.context("sending the request")?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_end(&mut answer)
            .await
            .context("reading the answer")?;
        parse_answer(&answer)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await.map_err(|_| {
        anyhow!("the publisher at {authority} did not answer within {EXCHANGE_TIMEOUT:?}")
    })?
}

/// The status code and body of a whole HTTP/1.1 answer.
fn parse_answer(answer: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(|| anyhow!("a bad chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| anyhow!("a bad chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or_else(|| anyhow!("a short chunk"))?;
        out.push_str(chunk);
        body = rest.get(size..).unwrap_or_default().trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(plain).expect("parsed"), (202, "{}".to_owned()));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).expect("parsed"), (200, "abcde".to_owned()));
    }

    #[test]
    fn the_publisher_address_is_http_host_port() {
        assert_eq!(authority("http://127.0.0.1:7080").expect("ok"), "127.0.0.1:7080");
        assert_eq!(authority("127.0.0.1:7080/").expect("ok"), "127.0.0.1:7080");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://x:1/v1").is_err());
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
