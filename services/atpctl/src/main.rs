//! `atpctl`: the operator CLI for atp.
//!
//! One subcommand per gRPC call of `atp.v1` (reservations, availability, stock
//! events, locations and channels, shards and the ledger), plus two bulk tools:
//! `config apply` (a declarative TOML file of locations and channels, see
//! [`config_file`]) and `import` (initial stock from a CSV of counts, see
//! [`import_file`]). Output is an aligned table, or JSON with `--json`.
//! Every call goes through the SDK, `atp-client` (deadline, safe retries,
//! typed errors that keep the server's status).
//!
//! Errors print the gRPC code, the message and any `google.rpc` details (field
//! violations first) on stderr (and, with `--json`, as one JSON object on
//! stdout), and the exit status says the class of error ([`status::exit_code`]).

// A CLI's job is to print to stdout; the workspace lint is meant for libraries.
#![allow(clippy::print_stdout)]

mod cli;
mod client;
mod commands;
mod config_file;
mod format;
mod import_file;
mod line;
mod status;
mod table;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.json;
    match commands::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            if json {
                client::print_json(&status::error_json(&error));
            }
            eprintln!("{}", status::describe_error(&error));
            ExitCode::from(status::exit_code(&error))
        }
    }
}
