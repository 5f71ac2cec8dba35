//! The connection to a node and how results are printed (table or JSON).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::config_service_client::ConfigServiceClient;
use tonic::transport::{Channel, Endpoint};

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

    /// Connects to the node; called by each command only once its own input has been checked.
    pub async fn connect(&self) -> anyhow::Result<Clients> {
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("invalid --addr {:?}", self.addr))?
            .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECONDS))
            .timeout(Duration::from_secs(self.timeout_seconds));
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {} (set --addr or ATP_ADDR)", self.addr))?;
        Ok(Clients { channel })
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

/// One connection shared by the three service clients.
#[derive(Clone, Debug)]
pub struct Clients {
    channel: Channel,
}

impl Clients {
    pub fn availability(&self) -> AvailabilityServiceClient<Channel> {
        AvailabilityServiceClient::new(self.channel.clone())
    }

    pub fn config(&self) -> ConfigServiceClient<Channel> {
        ConfigServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
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
