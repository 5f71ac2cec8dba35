//! `atp-publish`: pushes channels' availability to HTTP receivers.
//!
//! For each configured channel it follows `WatchAvailability` on any atpd
//! node and POSTs what changed to the channel's URL as JSON batches
//! (`{"channel_id", "items": [{"sku", "atp", "published", "version"}]}`),
//! coalesced per SKU while a push is in flight, retried with backoff until
//! a 2xx acknowledges it: delivery is at least once, and a receiver keeps
//! the highest version per SKU. After each acknowledgement the resume point
//! every earlier change of which was acknowledged is persisted as the
//! channel's cursor, so a restart (even a SIGKILL) resumes without a gap.
//!
//! Main parts: [`config`] (the TOML file), [`channel`] (one task per
//! channel), [`tracker`] (what is owed, and the safe resume point),
//! [`cursor`] (its file), [`push`] (one HTTP POST), [`admin`] (the admin
//! HTTP API). docs/PUBLISHER.md is the user's guide.

mod admin;
mod channel;
mod config;
mod cursor;
mod push;
mod tracker;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

const USAGE: &str = "usage: atp-publish [--config] PATH";

/// The config file's path: the first argument, or `--config PATH`.
fn config_path(arguments: &[String]) -> Result<PathBuf, String> {
    match arguments {
        [flag] if flag == "--help" || flag == "-h" => Err(USAGE.to_owned()),
        [flag, path] if flag == "--config" => Ok(PathBuf::from(path)),
        [path] if !path.starts_with('-') => Ok(PathBuf::from(path)),
        _ => Err(format!("give the config file; {USAGE}")),
    }
}

fn main() -> ExitCode {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let path = match config_path(&arguments) {
        Ok(path) => path,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: bad config: {}", channel::error_chain(&error));
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let http = push::client();
    let mut handles = BTreeMap::new();
    let mut tasks = Vec::new();
    for channel_config in &config.channels {
        let cursor_path = cursor::path_of(&config.state_dir, &channel_config.channel_id);
        let cursor = cursor::load(&cursor_path)
            .with_context(|| format!("loading the cursor of {}", channel_config.channel_id))?;
        tracing::info!(
            channel = %channel_config.channel_id,
            resume = cursor.is_some(),
            "following the channel"
        );
        let status = Arc::new(Mutex::new(channel::Status::default()));
        let (commands, receiver) = mpsc::channel(channel::COMMAND_CAPACITY);
        let setup = channel::Setup {
            config: channel_config.clone(),
            endpoints: config.atp_endpoints.clone(),
            cursor_path,
            cursor,
            http: http.clone(),
            status: Arc::clone(&status),
            commands: receiver,
        };
        tasks.push(tokio::spawn(channel::run(setup)));
        handles
            .insert(channel_config.channel_id.clone(), admin::ChannelHandle { status, commands });
    }
    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin_listen {}", config.admin_listen))?;
    let address = listener.local_addr().context("reading the admin address")?;
    // Tests and scripts read this line to find the port (admin_listen may say :0).
    tracing::info!(%address, "atp-publish admin API listening");
    eprintln!("atp-publish admin listening on {address}");
    let router = admin::router(Arc::new(handles));
    let server = axum::serve(listener, router);
    tokio::select! {
        served = server => served.context("serving the admin API")?,
        () = shutdown() => tracing::info!("stopping"),
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// SIGINT or SIGTERM. Stopping needs no flush: the cursor on disk is always
/// a safe resume point.
async fn shutdown() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_path_is_the_argument_or_after_config() {
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(config_path(&args(&["a.toml"])), Ok(PathBuf::from("a.toml")));
        assert_eq!(config_path(&args(&["--config", "b.toml"])), Ok(PathBuf::from("b.toml")));
        assert!(config_path(&args(&[])).is_err());
        assert!(config_path(&args(&["--verbose"])).is_err());
    }
}
