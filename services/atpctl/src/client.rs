//! The connection to a node and how results are printed (table or JSON).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use atp_client::{Client, Rpc};

use crate::cli::Cli;

/// How long to wait for the TCP/HTTP2 connection before giving up.
const CONNECT_TIMEOUT_SECONDS: u64 = 5;

/// What every command needs: where the server is and how to print.
#[derive(Debug)]
pub struct Context {
    addr: String,
    timeout_seconds: u64,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Context {
    pub fn new(cli: &Cli) -> Self {
        Context {
            addr: normalize_addr(&cli.addr),
            timeout_seconds: cli.timeout_seconds,
            json: cli.json,
        }
    }

    /// Connects to the node through the SDK (its deadline is `--timeout-seconds`,
    /// its retries the SDK's default: only what is safe); called by each command
    /// only once its own input has been checked.
    pub async fn connect(&self) -> anyhow::Result<Clients> {
        // One call to the node asked: a shard map would only cost a stream.
        let client = Client::builder([self.addr.as_str()])
            .route_by_shard_map(false)
            .connections_per_endpoint(1)
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECONDS))
            .deadline(Duration::from_secs(self.timeout_seconds))
            .connect()
            .await
            .with_context(|| format!("connecting to {} (set --addr or ATP_ADDR)", self.addr))?;
        Ok(Clients { client })
    }

    /// Prints `json` with `--json`, otherwise the text `table` builds.
    pub fn print(&self, json: impl FnOnce() -> serde_json::Value, table: impl FnOnce() -> String) {
        let text = if self.json {
            // Serializing a `serde_json::Value` cannot fail.
            let mut text = serde_json::to_string_pretty(&json()).unwrap_or_default();
            text.push('\n');
            text
        } else {
            table()
        };
        write_stdout(&text);
    }
}

/// Prints `value` as pretty JSON and a newline on stdout.
pub fn print_json(value: &serde_json::Value) {
    // Serializing a `serde_json::Value` cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    write_stdout(&text);
}

/// Writes to stdout; a closed pipe (`atpctl shards | head`) ends the output quietly
/// instead of panicking as `print!` would.
fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    match result {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: writing to stdout: {error}");
        }
        _ => {}
    }
}

/// The SDK client every command uses.
#[derive(Clone, Debug)]
pub struct Clients {
    client: Client,
}

impl Clients {
    /// Every RPC with its generated messages, under the SDK's deadline,
    /// retries and typed errors.
    pub fn rpc(&self) -> Rpc<'_> {
        self.client.rpc()
    }

    /// The SDK client itself, for its plain-typed methods (`reserve_many`).
    pub fn sdk(&self) -> &Client {
        &self.client
    }
}

/// `host:port` means `http://host:port`.
fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_port_gets_http() {
        assert_eq!(normalize_addr("10.0.0.1:50051"), "http://10.0.0.1:50051");
        assert_eq!(normalize_addr("https://atp:443"), "https://atp:443");
    }
}
