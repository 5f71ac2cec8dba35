//! The Python checkout example (`examples/python/checkout.py`, grpcio with
//! stubs generated from `proto/` when it starts) against a real `atpd`.

mod common;

use std::path::Path;
use std::process::Command;

use common::Atpd;

#[tokio::test]
async fn the_python_checkout_example_runs_against_atpd() {
    let ready = Command::new("python3").args(["-c", "import grpc, grpc_tools"]).output();
    match ready {
        Ok(output) if output.status.success() => {}
        // CI must run this test (.ci/run and scripts/test install grpcio);
        // on a developer machine without them it is skipped, loudly.
        outcome if running_in_ci() => {
            panic!("python3 with grpcio and grpcio-tools is needed and CI is set: {outcome:?}")
        }
        outcome => {
            eprintln!(
                "skipping: python3 with grpcio and grpcio-tools is missing ({outcome:?}); \
                 scripts/test installs them"
            );
            return;
        }
    }
    let atpd = Atpd::start(&[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python/checkout.py");
    let address = atpd.address.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(script).args(["--addr", &address]).output()
    })
    .await
    .expect("the example's thread")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "checkout.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    for step in [
        "ok  a repeated Reserve returns the first answer",
        "ok  its reason is INSUFFICIENT_STOCK",
        "checkout.py: all checks passed",
    ] {
        assert!(stdout.lines().any(|line| line == step), "{step:?} missing in:\n{stdout}");
    }
}

/// Whether the environment variable `CI` is set, as CI runners do (`CI=true`);
/// empty, `false` and `0` count as unset.
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}
