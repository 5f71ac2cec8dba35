//! The atpctl binary against an in-process fake server: real processes, real gRPC.

mod fake_server;

use std::path::PathBuf;
use std::process::Output;

use fake_server::Fake;

/// Runs `atpctl --addr ADDR ARGS…` to completion.
async fn atpctl(addr: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_atpctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("ATP_ADDR")
        .output()
        .await
        .expect("run the atpctl binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON document")
}

/// A file in the temp directory, unique to this process and test; removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(name: &str, contents: &str) -> TempFile {
    let path = std::env::temp_dir().join(format!("atpctl-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write a temp file");
    TempFile(path)
}

fn path_str(file: &TempFile) -> &str {
    file.0.to_str().expect("temp paths are UTF-8")
}

const CONFIG: &str = include_str!("../config.example.toml");

#[tokio::test]
async fn config_apply_is_idempotent_and_lists_what_it_applied() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let file = temp_file("apply.toml", CONFIG);

    let first = atpctl(&addr, &["config", "apply", path_str(&file)]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(
        text.starts_with("KIND      ID        RESULT\nlocation  dc-east   changed\n"),
        "{text}"
    );
    assert_eq!(text.matches(" changed").count(), 4, "{text}");

    let second = atpctl(&addr, &["--json", "config", "apply", path_str(&file)]).await;
    assert!(second.status.success(), "{}", stderr(&second));
    let applied = json(&second)["applied"].as_array().expect("an array").clone();
    assert_eq!(applied.len(), 4);
    assert!(applied.iter().all(|item| item["changed"] == false));
    assert_eq!(applied[3]["kind"], "channel");

    let locations = atpctl(&addr, &["location", "list"]).await;
    assert!(
        stdout(&locations).contains("store-12  store      Store 12, Main St"),
        "{}",
        stdout(&locations)
    );
    let channels = atpctl(&addr, &["--json", "channel", "list"]).await;
    assert_eq!(
        json(&channels)["channels"][1]["locations"],
        serde_json::json!(["dc-east", "store-12"])
    );
}

#[tokio::test]
async fn a_refused_item_is_named_with_its_field_violations() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let file = temp_file(
        "refused.toml",
        "[[location]]\nid = \"dc\"\nkind = \"warehouse\"\n\n[[channel]]\nid = \"web\"\nlocations = [\"dc\", \"nowhere\"]\n",
    );
    let output = atpctl(&addr, &["config", "apply", path_str(&file)]).await;
    assert_eq!(output.status.code(), Some(3));
    assert!(stdout(&output).contains("location  dc  changed"), "{}", stdout(&output));
    let error = stderr(&output);
    assert!(error.starts_with("error: applying /"), "{error}");
    assert!(
        error.contains(": upsert channel web: InvalidArgument: invalid argument\n  channel.location_ids[1]: unknown location nowhere\n"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_config_file_is_refused_before_connecting() {
    let file = temp_file("bad.toml", "[[location]]\nid = \"dc\"\nkind = \"depot\"\n");
    // Nothing listens on port 1: the error must come from the file, not the connection.
    let output = atpctl("http://127.0.0.1:1", &["config", "apply", path_str(&file)]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("location \"dc\": kind: unknown variant `depot`"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn import_sends_batches_of_a_thousand_and_lists_rejected_rows() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let config = temp_file("import.toml", CONFIG);
    assert!(atpctl(&addr, &["config", "apply", path_str(&config)]).await.status.success());

    let header = "event_id,sku,location_id,on_hand,as_of_ms\n";
    let mut rows: Vec<String> = (0..2500)
        .map(|index| format!("init-{index},sku-{index},dc-east,{index},1600000000000\n"))
        .collect();
    rows.insert(1500, "init-x,sku-x,nowhere,5,\n".to_owned());
    let file = temp_file("stock.csv", &format!("{header}{}", rows.concat()));

    let output = atpctl(&addr, &["import", path_str(&file), "--as-of-ms", "1650000000000"]).await;
    assert_eq!(output.status.code(), Some(1), "a rejected row fails the import");
    // The second call names the unknown location; its other 999 events are sent again.
    assert_eq!(fake.state().batch_sizes, [1000, 1000, 999, 501]);
    let text = stdout(&output);
    assert!(
        text.starts_with(
            "events            2501\n\
             default as_of_ms  1650000000000 (2022-04-15T05:20:00.000Z); repeat with --as-of-ms 1650000000000\n\
             applied           2500\nduplicate         0\nrejected          1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("1502  init-x  sku-x  nowhere   InvalidArgument (3): location_id: unknown location nowhere"),
        "{text}"
    );

    // A second run: everything is a duplicate, except an event id now carrying another payload.
    rows[0] = "init-0,sku-0,dc-east,99,1600000000000\n".to_owned();
    let file = temp_file("stock-again.csv", &format!("{header}{}", rows.concat()));
    let again = atpctl(&addr, &["--json", "import", path_str(&file)]).await;
    assert_eq!(again.status.code(), Some(1));
    let summary = json(&again);
    assert_eq!(summary["applied"], 0);
    assert_eq!(summary["default_as_of_ms"].as_i64().map(|ms| ms > 1_650_000_000_000), Some(true));
    assert_eq!(summary["duplicate"], 2499);
    assert_eq!(summary["rejected"], 2);
    assert_eq!(summary["rejected_rows"][0]["line"], 2);
    assert_eq!(summary["rejected_rows"][0]["error_name"], "AlreadyExists");
    assert_eq!(summary["rejected_rows"][1]["line"], 1502);
    assert_eq!(summary["rejected_rows"][1]["error_name"], "InvalidArgument");
}

#[tokio::test]
async fn a_bad_csv_row_stops_the_import_before_anything_is_sent() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let file = temp_file("bad.csv", "event_id,sku,location_id,on_hand\ne1,s,l,3\ne2,\"s\",l,4\n");
    let output = atpctl(&addr, &["import", path_str(&file)]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output)
            .contains("1 bad row; nothing was sent\n  line 3: quoted fields are not supported"),
        "{}",
        stderr(&output)
    );
    assert!(fake.state().batch_sizes.is_empty());
}

#[tokio::test]
async fn reservation_lifecycle_and_errors() {
    let fake = Fake::default();
    let addr = fake.start().await;

    let reserve = atpctl(
        &addr,
        &[
            "reserve",
            "--id",
            "r1",
            "--channel",
            "web",
            "--line",
            "sku-1@dc-east=2",
            "--line",
            "sku-2@dc-east=1",
            "--ttl",
            "60",
        ],
    )
    .await;
    assert!(reserve.status.success(), "{}", stderr(&reserve));
    let text = stdout(&reserve);
    assert!(text.contains("state        HELD\n"), "{text}");
    assert!(text.contains("sku-1  dc-east          2          0        0\n"), "{text}");

    let commit =
        atpctl(&addr, &["--json", "commit", "--id", "r1", "--line", "sku-2@dc-east=0"]).await;
    let value = json(&commit);
    assert_eq!(value["reservation"]["state"], "COMMITTED");
    assert_eq!(value["reservation"]["lines"][0]["committed"], 2);
    assert_eq!(value["reservation"]["lines"][1]["committed"], 0);
    assert_eq!(value["epoch"], 1);

    let extend = atpctl(&addr, &["--json", "extend", "--id", "r1", "--ttl", "120"]).await;
    assert_eq!(json(&extend)["reservation"]["expires_at_ms"], 1_700_000_120_000_i64);
    for (command, state) in
        [("release", "RELEASED"), ("cancel", "CANCELLED"), ("reservation", "CANCELLED")]
    {
        let output = atpctl(&addr, &["--json", command, "--id", "r1"]).await;
        assert_eq!(json(&output)["reservation"]["state"], state, "{command}");
    }

    let missing = atpctl(&addr, &["get-reservation", "--id", "nope"]).await;
    assert_eq!(missing.status.code(), Some(5));
    assert_eq!(
        stderr(&missing),
        "error: get reservation nope: NotFound: reservation nope not found\n"
    );

    let bad = atpctl(
        &addr,
        &["reserve", "--id", "r2", "--channel", "web", "--line", "a@dc=1", "--line", "b@dc=0"],
    )
    .await;
    assert_eq!(bad.status.code(), Some(3));
    assert_eq!(
        stderr(&bad),
        "error: reserve r2: InvalidArgument: invalid argument\n  lines[1].quantity: must be 1..=1000000\n"
    );
}

/// Runs each step, which must succeed.
async fn run_steps(addr: &str, steps: &[&[&str]]) {
    for step in steps {
        let output = atpctl(addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", stderr(&output));
    }
}

#[tokio::test]
async fn allocate_prints_the_plan_and_holds_unless_dry() {
    let fake = Fake::default();
    let addr = fake.start().await;
    run_steps(
        &addr,
        &[
            &["location", "upsert", "near", "--kind", "warehouse", "--lat", "0", "--lon", "1"],
            &[
                "location",
                "upsert",
                "far",
                "--kind",
                "warehouse",
                "--lat",
                "0",
                "--lon",
                "10",
                "--cost-per-shipment",
                "500",
            ],
            &["location", "upsert", "berlin", "--kind", "store", "--ships-to", "DE"],
            &["channel", "upsert", "web", "--location", "near", "--location", "far"],
            &["channel", "upsert", "all", "--location", "near", "--location", "berlin"],
            &["event", "received", "e-1", "--sku", "tee", "--location", "near", "--quantity", "5"],
            &["event", "received", "e-2", "--sku", "tee", "--location", "far", "--quantity", "5"],
        ],
    )
    .await;
    let order = |id: &'static str, channel: &'static str| {
        vec![
            "allocate",
            id,
            "--channel",
            channel,
            "--to-country",
            "US",
            "--lat",
            "0",
            "--lon",
            "0",
            "--line",
            "tee=3",
        ]
    };

    let dry = atpctl(&addr, &[&order("o-1", "web")[..], &["--dry-run"]].concat()).await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(
        text.starts_with(
            "order      o-1
cost       0
units      3
"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "
near      111.2     0      3  tee×3
"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "
          1   500          1  1111.9      3  far
"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "
dry run: nothing held
"
        ),
        "{text}"
    );
    assert!(fake.state().reservations.is_empty(), "a dry run holds nothing");

    let held = atpctl(&addr, &[&["--json"][..], &order("o-1", "web")].concat()).await;
    assert!(held.status.success(), "{}", stderr(&held));
    let value = json(&held);
    assert_eq!(value["reservation"]["reservation_id"], "o-1");
    assert_eq!(value["reservation"]["lines"][0]["location_id"], "near");
    assert_eq!(value["plan"]["shipments"][0]["lines"][0]["quantity"], 3);
    assert_eq!(value["alternatives"][0]["shipments"][0]["location_id"], "far");
    assert_eq!(
        (value["dry_run"].as_bool(), value["replayed"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(fake.state().reservations["o-1"].lines[0].quantity, 3);

    let again = atpctl(&addr, &order("o-1", "web")).await;
    assert!(again.status.success(), "{}", stderr(&again));
    let text = stdout(&again);
    assert!(
        text.contains(
            "reservation  o-1
state        HELD
"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "
replayed: this order was allocated before"
        ),
        "{text}"
    );

    // berlin does not ship to the US and near has the stock: berlin is left out.
    let excluded = atpctl(&addr, &[&order("o-2", "all")[..], &["--dry-run"]].concat()).await;
    assert!(stdout(&excluded).contains("EXCLUDED  REASON\nberlin    DOES_NOT_SHIP_THERE\n"));

    let unknown = atpctl(&addr, &order("o-3", "nowhere")).await;
    assert_eq!(unknown.status.code(), Some(3));
    assert_eq!(
        stderr(&unknown),
        "error: allocate o-3: InvalidArgument: invalid argument\n  channel_id: unknown channel nowhere\n"
    );
    // A line without a quantity: refused before anything is sent.
    let no_quantity = [&order("o-4", "web")[..], &["--line", "mug"]].concat();
    let bad_line = atpctl(&addr, &no_quantity).await;
    assert_eq!(bad_line.status.code(), Some(2));
    assert!(stderr(&bad_line).contains("expected SKU=QUANTITY"), "{}", stderr(&bad_line));
    assert!(!fake.state().reservations.contains_key("o-4"));
}

#[tokio::test]
async fn events_show_applied_duplicate_and_rejected() {
    let fake = Fake::default();
    let addr = fake.start().await;
    assert!(
        atpctl(&addr, &["location", "upsert", "--id", "dc", "--kind", "warehouse"])
            .await
            .status
            .success()
    );

    let args = [
        "event",
        "counted",
        "--id",
        "c1",
        "--sku",
        "s",
        "--location",
        "dc",
        "--on-hand",
        "12",
        "--as-of-ms",
        "1600000000000",
    ];
    let applied = atpctl(&addr, &args).await;
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert!(stdout(&applied).contains("c1     APPLIED  dc             12"), "{}", stdout(&applied));
    let duplicate = atpctl(&addr, &args).await;
    assert!(stdout(&duplicate).contains("DUPLICATE"), "{}", stdout(&duplicate));

    let received = atpctl(
        &addr,
        &[
            "--json",
            "event",
            "received",
            "--id",
            "g1",
            "--sku",
            "s",
            "--location",
            "dc",
            "--quantity",
            "3",
        ],
    )
    .await;
    assert_eq!(json(&received)["position"]["on_hand"], 15);

    // The id of the count, reused with another payload.
    let reused = ["events", "adjusted", "--id", "c1", "--sku", "s", "--location", "dc"];
    let rejected =
        atpctl(&addr, &[&reused[..], &["--delta", "-2", "--reason", "cycle count"]].concat()).await;
    assert_eq!(rejected.status.code(), Some(1));
    assert!(
        stdout(&rejected)
            .contains("c1     REJECTED  AlreadyExists (6): event c1 reused with another payload"),
        "{}",
        stdout(&rejected)
    );

    let unknown = ["event", "received", "--id", "g2", "--sku", "s", "--location", "elsewhere"];
    let refused = atpctl(&addr, &[&unknown[..], &["--quantity", "1"]].concat()).await;
    assert_eq!(refused.status.code(), Some(3));
    assert_eq!(
        stderr(&refused),
        "error: apply stock event g2: InvalidArgument: invalid argument\n  \
         events[0].location_id: unknown location elsewhere\n"
    );

    let availability = atpctl(&addr, &["availability", "s"]).await;
    let text = stdout(&availability);
    assert!(text.starts_with("s  (shard 7, epoch 1)\nLOCATION  ON_HAND"), "{text}");
    assert!(text.contains("\ndc             15 "), "{text}");

    let ledger = atpctl(&addr, &["ledger", "s", "--limit", "10"]).await;
    assert!(stdout(&ledger).contains("counted  c1"), "{}", stdout(&ledger));
}

#[tokio::test]
async fn demand_shows_each_channels_rate_and_each_locations_cover() {
    let fake = Fake::default();
    {
        let mut state = fake.state();
        for location in ["dc-east", "dc-west", "store-12"] {
            let entry =
                atp_proto::v1::Location { location_id: location.into(), ..Default::default() };
            state.locations.insert(location.into(), entry);
        }
        for (id, locations, lag) in
            [("pos-12", &["store-12"][..], 0), ("web", &["dc-east", "store-12"][..], 60_000)]
        {
            let channel = atp_proto::v1::Channel {
                channel_id: id.into(),
                location_ids: locations.iter().map(|location| (*location).to_owned()).collect(),
                publish_lag_ms: lag,
                safety_level: Some(900),
                ..Default::default()
            };
            state.channels.insert(id.into(), channel);
        }
        for (location, units) in [("dc-east", 48), ("dc-west", 3), ("store-12", 6)] {
            state.on_hand.insert(("tee".into(), location.into()), units);
        }
        state.demand_per_hour.insert(("tee".into(), "web".into()), 1.0);
    }
    let addr = fake.start().await;

    let output = atpctl(&addr, &["demand", "tee"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "\
tee  (shard 7, epoch 1)
CHANNEL  LAG  SAFETY  DEMAND/H  DEMAND/DAY  ATP  PUBLISHED
pos-12     0   90.0%      0.00         0.0    6          0
web      60s   90.0%      1.00        24.0   54          0

LOCATION  ATP  DEMAND/DAY  DAYS_OF_COVER
dc-east    48        24.0           2.00
dc-west     3         0.0              ∞
store-12    6        24.0           0.25
"
    );

    let output = atpctl(&addr, &["--json", "demand", "tee"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let value = json(&output);
    let web = &value["channels"][1];
    assert_eq!((&web["channel_id"], &web["publish_lag_ms"]), (&"web".into(), &60_000.into()));
    assert_eq!(
        (web["demand_per_hour"].as_f64(), web["demand_per_day"].as_f64()),
        (Some(1.0), Some(24.0))
    );
    assert_eq!(value["channels"][0]["demand_per_hour"].as_f64(), Some(0.0));
    let cover: Vec<(String, Option<f64>)> = value["locations"]
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| {
            (
                row["location_id"].as_str().unwrap_or_default().to_owned(),
                row["days_of_cover"].as_f64(),
            )
        })
        .collect();
    assert_eq!(
        cover,
        [("dc-east".into(), Some(2.0)), ("dc-west".into(), None), ("store-12".into(), Some(0.25))]
    );

    let help = atpctl(&addr, &["demand", "--help"]).await;
    assert!(stdout(&help).contains("counted against each of its locations"), "{}", stdout(&help));
}

#[tokio::test]
async fn shards_and_shard() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let shards = atpctl(&addr, &["shards", "--all"]).await;
    assert!(stdout(&shards).ends_with("3 of 1024 shards listed\n"), "{}", stdout(&shards));
    let by_sku = atpctl(&addr, &["--json", "shard", "--sku", "s"]).await;
    assert_eq!(json(&by_sku)["shard"], 7);
    let by_number = atpctl(&addr, &["shard", "12"]).await;
    assert!(
        stdout(&by_number).starts_with("shard                  12\n"),
        "{}",
        stdout(&by_number)
    );
    let out_of_range = atpctl(&addr, &["shard", "5000"]).await;
    assert_eq!(out_of_range.status.code(), Some(3));
    assert!(
        stderr(&out_of_range).contains("\n  shard: 5000 is not below 1024"),
        "{}",
        stderr(&out_of_range)
    );
}

#[tokio::test]
async fn shard_reassign_prints_the_moves_and_needs_accept_loss() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let moved = atpctl(&addr, &["shard", "reassign", "--node", "node-3", "--accept-loss"]).await;
    assert!(moved.status.success(), "{}", stderr(&moved));
    let text = stdout(&moved);
    assert!(text.starts_with("5: node-3 \u{2192} node-1\n9: node-3 \u{2192} node-2\n"), "{text}");
    assert!(text.contains("2 shards reassigned at revision 42; audit entry /atp/atp/audit/"));
    // The operator defaults to $USER@hostname (the fake echoes it in the key).
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown-user".into());
    assert!(text.contains(&format!(" by {user}@")), "{text}");

    let one =
        ["--json", "shard", "reassign", "--shard", "17", "--accept-loss", "--operator", "ops"];
    let one = json(&atpctl(&addr, &one).await);
    assert_eq!(one["moves"][0]["shard"], 17);
    assert_eq!(
        (one["moves"][0]["from"].as_str(), one["moves"][0]["to"].as_str()),
        (Some("node-3"), Some("node-1"))
    );
    assert_eq!(one["revision"], 42);
    assert!(one["audit_key"].as_str().is_some_and(|key| key.ends_with(" by ops")), "{one}");

    // Without --accept-loss nothing is sent (the fake would answer 4).
    let refused = atpctl(&addr, &["shard", "reassign", "--shard", "17"]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("without --accept-loss"), "{}", stderr(&refused));
    assert!(stdout(&refused).is_empty());
}

#[tokio::test]
async fn shard_move_prints_the_handoff_and_the_refusal() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let moved = atpctl(&addr, &["shard", "move", "17", "--to", "node-2"]).await;
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert_eq!(
        stdout(&moved),
        "shard 17: node-1 (epoch 7) \u{2192} node-2 (epoch 42), 3 records, 120 ms\n"
    );
    let moved = json(&atpctl(&addr, &["--json", "shard", "move", "17", "--to", "node-2"]).await);
    assert_eq!((moved["shard"].as_u64(), moved["to_epoch"].as_i64()), (Some(17), Some(42)));
    assert_eq!(moved["elapsed_ms"], 120);

    let refused = atpctl(&addr, &["shard", "move", "17", "--to", "node-1"]).await;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("owns shard already"), "{}", stderr(&refused));
    assert!(
        atpctl(&addr, &["shard", "move", "17"]).await.status.code() == Some(2),
        "--to is required"
    );
}

#[tokio::test]
async fn node_drain_lists_what_did_not_move_and_fails_then() {
    let fake = Fake::default();
    let addr = fake.start().await;
    let drained = atpctl(&addr, &["node", "drain", "node-3", "--parallel", "2"]).await;
    assert_eq!(drained.status.code(), Some(1), "a shard did not move: {}", stderr(&drained));
    assert_eq!(
        stdout(&drained),
        "shard 5: not moved: stayed busy (2 at a time)\nnode node-3: 2 shards moved, 1 not, in 300 ms\n"
    );
    let drained = json(&atpctl(&addr, &["--json", "node", "drain", "node-3"]).await);
    assert_eq!(drained["moves"][1]["to"], "node-2");
    assert_eq!(drained["failures"][0]["message"], "stayed busy (0 at a time)");
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let output = atpctl("127.0.0.1:1", &["shards"]).await;
    assert_eq!(output.status.code(), Some(6));
    assert!(
        stderr(&output).starts_with("error: connecting to http://127.0.0.1:1"),
        "{}",
        stderr(&output)
    );
}
