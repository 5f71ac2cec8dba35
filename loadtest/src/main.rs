//! `atp-loadgen`: set up, run, report, check. See `loadtest/README.md`.

// The report goes to stdout: that is the binary's job.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use anyhow::Context;
use atp_loadgen::{Config, check, run, setup};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    match load(&config).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("atp-loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every phase; `Ok(false)` when the check found a violation.
async fn load(config: &Config) -> anyhow::Result<bool> {
    config.validate()?;
    eprintln!("atp-loadgen: setting up {:?} on {}", config.scenario, config.endpoint);
    let setup = setup(config).await.context("setting up the run's data")?;
    let data = if setup.position_count() == 0 {
        "no data".to_owned()
    } else {
        format!(
            "{} skus × {} locations, {} units each",
            setup.skus.len(),
            setup.locations.len(),
            setup.stock_per_position
        )
    };
    eprintln!(
        "atp-loadgen: run {} — {data}; warm-up {:?}, measuring {:?}",
        setup.run_id, config.warmup, config.duration
    );
    let report = run(config, &setup).await.context("running the load")?;
    println!("{report}");
    let check_report = if config.check {
        let checked = check(&config.endpoint, &setup, &report.acks)
            .await
            .context("checking the invariants")?;
        println!("{checked}");
        Some(checked)
    } else {
        None
    };
    if let Some(path) = &config.json {
        let json = serde_json::json!({ "report": &report, "check": &check_report });
        let text = serde_json::to_string_pretty(&json).context("encoding the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &config.ack_log {
        let log = serde_json::json!({ "setup": &setup, "acks": &report.acks });
        let text = serde_json::to_string(&log).context("encoding the ack log")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(check_report.is_none_or(|checked| checked.passed()))
}
