//! The atpctl binary against the real `atpd` (started by `atp-testkit`):
//! JSON errors, exit statuses by class of error, `reserve-batch`, `modify`,
//! `allocate`.

use std::process::Output;

use atp_testkit::Atpd;

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

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "--json prints one JSON document ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// Location dc-1 in channel web, and 5 tees received there.
async fn configure(addr: &str) {
    let steps: [&[&str]; 3] = [
        &["location", "upsert", "--id", "dc-1", "--kind", "warehouse"],
        &["channel", "upsert", "--id", "web", "--location", "dc-1"],
        &[
            "event",
            "received",
            "--id",
            "recv-1",
            "--sku",
            "tee",
            "--location",
            "dc-1",
            "--quantity",
            "5",
        ],
    ];
    for step in steps {
        let output = atpctl(addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

#[tokio::test]
async fn errors_are_json_on_stdout_and_exit_by_class() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await;

    // Refused by the rules: 4, with the ErrorInfo of the refusal.
    let short = atpctl(
        &addr,
        &["--json", "reserve", "--id", "r-1", "--channel", "web", "--line", "tee@dc-1=9"],
    )
    .await;
    assert_eq!(short.status.code(), Some(4));
    let error = &json(&short)["error"];
    assert_eq!(error["code"], "FAILED_PRECONDITION");
    assert_eq!(error["exit_code"], 4);
    assert_eq!(error["details"]["error_info"]["reason"], "INSUFFICIENT_STOCK");
    assert_eq!(error["details"]["error_info"]["metadata"]["available"], "5");
    assert!(
        error["message"].as_str().is_some_and(|message| message.starts_with("reserve r-1: ")),
        "{error}"
    );

    // Malformed: 3, naming the field.
    let bad = atpctl(
        &addr,
        &["--json", "reserve", "--id", "r-2", "--channel", "web", "--line", "tee@dc-1=0"],
    )
    .await;
    assert_eq!(bad.status.code(), Some(3));
    let error = &json(&bad)["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["details"]["field_violations"][0]["field"], "lines[0].quantity");

    // Not found: 5.
    let missing = atpctl(&addr, &["--json", "get-reservation", "--id", "nobody"]).await;
    assert_eq!(missing.status.code(), Some(5));
    assert_eq!(json(&missing)["error"]["code"], "NOT_FOUND");

    // Wrong state: 4 again, from another reason.
    let held =
        atpctl(&addr, &["reserve", "--id", "r-3", "--channel", "web", "--line", "tee@dc-1=1"])
            .await;
    assert!(held.status.success());
    assert!(atpctl(&addr, &["release", "--id", "r-3"]).await.status.success());
    let commit = atpctl(&addr, &["--json", "commit", "--id", "r-3"]).await;
    assert_eq!(commit.status.code(), Some(4));
    assert_eq!(json(&commit)["error"]["details"]["error_info"]["reason"], "WRONG_STATE");

    // atpctl's own error (a file that is not there): 2, code LOCAL.
    let local = atpctl(&addr, &["--json", "config", "apply", "/nonexistent/atp.toml"]).await;
    assert_eq!(local.status.code(), Some(2));
    assert_eq!(json(&local)["error"]["code"], "LOCAL");

    // Nobody listening: 6, try again later.
    let mut atpd = atpd;
    atpd.kill();
    let gone = atpctl(&addr, &["--json", "get-reservation", "--id", "r-3"]).await;
    assert_eq!(gone.status.code(), Some(6));
    assert_eq!(json(&gone)["error"]["code"], "UNAVAILABLE");
}

#[tokio::test]
async fn reserve_batch_answers_each_reservation() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await;

    let items = ["b-1:tee@dc-1=2", "b-2:tee@dc-1=2", "b-3:tee@dc-1=2", "b-4:tee@dc-1=0"];
    let output =
        atpctl(&addr, &[&["--json", "reserve-batch", "--channel", "web"][..], &items].concat())
            .await;
    assert_eq!(output.status.code(), Some(1), "some reservations were refused");
    let results = json(&output)["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 4);
    let ids: Vec<&str> =
        results.iter().map(|item| item["reservation_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, ["b-1", "b-2", "b-3", "b-4"], "in request order");
    // The items run concurrently: any two of the first three get the 5 units.
    let held = results[..3].iter().filter(|item| item["reservation"]["state"] == "HELD").count();
    let short = results[..3]
        .iter()
        .filter(|item| item["error"]["details"]["error_info"]["reason"] == "INSUFFICIENT_STOCK")
        .count();
    assert_eq!((held, short), (2, 1), "{results:?}");
    assert_eq!(results[3]["error"]["code"], "INVALID_ARGUMENT");
    assert_eq!(
        results[3]["error"]["details"]["field_violations"][0]["field"],
        "reservations[3].lines[0].quantity"
    );

    // The node agrees: 4 units held.
    let availability = atpctl(&addr, &["--json", "availability", "tee"]).await;
    assert_eq!(json(&availability)["skus"][0]["locations"][0]["reserved"], 4);

    // A malformed item is refused before anything is sent.
    let malformed = atpctl(&addr, &["reserve-batch", "--channel", "web", "b-5"]).await;
    assert_eq!(malformed.status.code(), Some(2));
    let table = atpctl(&addr, &["reserve-batch", "--channel", "web", "b-1:tee@dc-1=2"]).await;
    assert!(table.status.success(), "a replay answers the first reservation");
    assert!(String::from_utf8_lossy(&table.stdout).contains("b-1"), "{:?}", table);
}

#[tokio::test]
async fn config_check_reports_every_problem_and_locations_nobody_has() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await; // the node has dc-1
    let directory = std::env::temp_dir().join(format!("atpctl-check-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("a temp directory");

    let bad = directory.join("bad.toml");
    // Several problems in one channel entry: each is reported, naming it.
    let text = "[[location]]\nid = \"dc\"\nkind = \"depot\"\n\
                [[channel]]\nid = \"web\"\nlocations = [\"dc-1\", \"dc-1\"]\nbuffer = -2\n\
                cap = \"many\"\ncolour = \"red\"\n\
                [[channel]]\nid = \"pos\"\nlocations = [\"dc-1\"]\ncap = -1\n";
    std::fs::write(&bad, text).expect("write");
    let output = atpctl(&addr, &["config", "check", bad.to_str().expect("utf-8")]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("6 problems:"), "{stderr}");
    for part in [
        "location \"dc\": kind: unknown variant `depot`",
        "channel \"web\": locations[1]: location \"dc-1\" is listed twice",
        "channel \"web\": buffer: must be >= 0",
        "channel \"web\": cap: invalid type: string \"many\", expected i64",
        "channel \"web\": unknown field `colour`",
        "channel \"pos\": cap: must be >= 0",
    ] {
        assert!(stderr.contains(part), "{part} missing in {stderr}");
    }

    let unknown = directory.join("unknown.toml");
    let text = "[[location]]\nid = \"dc-2\"\nkind = \"store\"\n\
                [[channel]]\nid = \"web\"\nlocations = [\"dc-1\", \"dc-2\", \"dc-9\"]\n\
                [[channel]]\nid = \"pos\"\nlocations = [\"dc-8\"]\n";
    std::fs::write(&unknown, text).expect("write");
    let path = unknown.to_str().expect("utf-8");
    let output = atpctl(&addr, &["--json", "config", "check", path]).await;
    assert_eq!(output.status.code(), Some(2));
    let message = json(&output)["error"]["message"].as_str().expect("a message").to_owned();
    assert!(message.contains("2 problems:"), "{message}");
    assert!(message.contains("channel \"web\": locations[2]: location \"dc-9\""), "{message}");
    assert!(message.contains("channel \"pos\": locations[0]: location \"dc-8\""), "{message}");
    assert!(!message.contains("\"dc-1\"") && !message.contains("\"dc-2\""), "{message}");

    let offline = atpctl("http://127.0.0.1:1", &["config", "check", "--offline", path]).await;
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test]
async fn a_repeated_import_explains_the_as_of_rule() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await;
    let path = std::env::temp_dir().join(format!("atpctl-import-{}.csv", std::process::id()));
    std::fs::write(&path, "event_id,sku,location_id,on_hand\ninit-1,mug,dc-1,7\n").expect("write");
    let path = path.to_str().expect("utf-8").to_owned();

    let first = atpctl(&addr, &["--json", "import", &path]).await;
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let first = json(&first);
    assert_eq!((first["applied"].as_i64(), first["as_of_note"].is_null()), (Some(1), true));
    let as_of_ms = first["default_as_of_ms"].as_i64().expect("a default as_of_ms");

    // Again with a new default: refused as a reused id, and the note says why.
    let later = (as_of_ms + 1).to_string();
    let again = atpctl(&addr, &["import", &path, "--as-of-ms", &later]).await;
    assert_eq!(again.status.code(), Some(1));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("AlreadyExists"), "{text}");
    assert!(text.contains("note: 1 row(s) without as_of_ms were refused as reused ids"), "{text}");
    assert!(text.contains("pass the --as-of-ms its summary printed"), "{text}");

    // Again with the first default: a duplicate, nothing refused, no note.
    let same =
        atpctl(&addr, &["--json", "import", &path, "--as-of-ms", &as_of_ms.to_string()]).await;
    assert!(same.status.success());
    let same = json(&same);
    assert_eq!((same["duplicate"].as_i64(), same["as_of_note"].is_null()), (Some(1), true));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn every_command_takes_its_id_as_an_argument_or_with_id() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    let steps: [&[&str]; 7] = [
        &["location", "upsert", "dc-1", "--kind", "warehouse"],
        &["channel", "upsert", "web", "--location", "dc-1"],
        &["event", "received", "recv-1", "--sku", "tee", "--location", "dc-1", "--quantity", "5"],
        &["reserve", "r-1", "--channel", "web", "--line", "tee@dc-1=2"],
        &["extend", "r-1", "--ttl", "600"],
        &["commit", "r-1"],
        &["cancel", "--id", "r-1"],
    ];
    for step in steps {
        let output = atpctl(&addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    for form in
        [&["--json", "get-reservation", "r-1"][..], &["--json", "get-reservation", "--id", "r-1"]]
    {
        let output = atpctl(&addr, form).await;
        assert_eq!(json(&output)["reservation"]["state"], "CANCELLED", "{form:?}");
    }
    let both = atpctl(&addr, &["release", "r-1", "--id", "r-2"]).await;
    assert_eq!(both.status.code(), Some(2), "an id given twice is a usage error");
    let neither = atpctl(&addr, &["release"]).await;
    assert_eq!(neither.status.code(), Some(2), "a missing id is a usage error");
    let locations = atpctl(&addr, &["--json", "location", "list"]).await;
    assert_eq!(json(&locations)["locations"][0]["id"], "dc-1");
}

/// The ids of a `--json reservations list` page, in order.
fn listed_ids(page: &serde_json::Value) -> Vec<String> {
    let reservations = page["reservations"].as_array().expect("a reservations array");
    reservations
        .iter()
        .map(|item| item["reservation_id"].as_str().expect("an id").to_owned())
        .collect()
}

/// `reservations list --json FILTERS…`, which must succeed; its ids, sorted.
async fn list_sorted(addr: &str, filters: &[&str]) -> Vec<String> {
    let output = atpctl(addr, &[&["--json", "reservations", "list"][..], filters].concat()).await;
    assert!(output.status.success(), "{filters:?}: {}", String::from_utf8_lossy(&output.stderr));
    let page = json(&output);
    assert_eq!(page["next_page_token"], "", "{filters:?}: one page holds them all");
    let mut ids = listed_ids(&page);
    ids.sort();
    ids
}

#[tokio::test]
async fn reservations_get_and_list_show_many_reservations() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await; // 5 tees at dc-1
    let steps: [&[&str]; 9] = [
        &["event", "received", "recv-2", "--sku", "mug", "--location", "dc-1", "--quantity", "5"],
        &["reserve", "l-1", "--channel", "web", "--line", "tee@dc-1=1", "--order-id", "o-1"],
        &["reserve", "l-2", "--channel", "web", "--line", "tee@dc-1=1", "--label", "cart=c-2"],
        &["reserve", "l-3", "--channel", "web", "--line", "tee@dc-1=1"],
        &["reserve", "l-4", "--channel", "web", "--line", "mug@dc-1=1"],
        &["reserve", "l-5", "--channel", "web", "--line", "mug@dc-1=2", "--line", "tee@dc-1=1"],
        &["reserve", "l-6", "--channel", "web", "--line", "mug@dc-1=1"],
        &["release", "l-3"],
        &["commit", "l-4"],
    ];
    for step in steps {
        let output = atpctl(&addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let all = ["l-1", "l-2", "l-3", "l-4", "l-5", "l-6"];

    // Filters, alone and together.
    assert_eq!(list_sorted(&addr, &[]).await, all);
    assert_eq!(list_sorted(&addr, &["--sku", "tee"]).await, ["l-1", "l-2", "l-3", "l-5"]);
    assert_eq!(list_sorted(&addr, &["--state", "held"]).await, ["l-1", "l-2", "l-5", "l-6"]);
    let held_or_committed = list_sorted(&addr, &["--state", "held", "--state", "committed"]).await;
    assert_eq!(held_or_committed, ["l-1", "l-2", "l-4", "l-5", "l-6"]);
    assert_eq!(list_sorted(&addr, &["--sku", "mug", "--state", "held"]).await, ["l-5", "l-6"]);
    assert_eq!(list_sorted(&addr, &["--state", "released"]).await, ["l-3"]);
    assert_eq!(list_sorted(&addr, &["--order-id", "o-1"]).await, ["l-1"]);
    assert_eq!(list_sorted(&addr, &["--label", "cart=c-2"]).await, ["l-2"]);
    assert!(list_sorted(&addr, &["--sku", "nothing"]).await.is_empty());

    // Two at a time by hand: every reservation exactly once, in several pages.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= all.len() + 1, "the scan never ends: {seen:?}");
        let output = atpctl(
            &addr,
            &["--json", "reservations", "list", "--page-size", "2", "--page-token", &token],
        )
        .await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let page = json(&output);
        let ids = listed_ids(&page);
        assert!(ids.len() <= 2, "a page of at most 2: {ids:?}");
        seen.extend(ids);
        token = page["next_page_token"].as_str().expect("a token").to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert!(pages >= 3, "6 reservations in pages of 2 take 3 pages or more, not {pages}");
    seen.sort();
    assert_eq!(seen, all, "each reservation exactly once");

    // --all follows the tokens itself.
    let output =
        atpctl(&addr, &["--json", "reservations", "list", "--page-size", "2", "--all"]).await;
    let page = json(&output);
    assert_eq!(page["next_page_token"], "");
    let mut ids = listed_ids(&page);
    ids.sort();
    assert_eq!(ids, all, "each reservation exactly once");
    let first = page["reservations"]
        .as_array()
        .and_then(|list| list.iter().find(|item| item["reservation_id"] == "l-1").cloned());
    let first = first.expect("l-1 listed");
    assert_eq!(
        (first["state"].as_str(), first["channel_id"].as_str()),
        (Some("HELD"), Some("web"))
    );
    assert_eq!(first["metadata"]["order_id"], "o-1");

    // The table: one row per reservation, and the token of the next page.
    let output = atpctl(&addr, &["reservations", "list", "--page-size", "2"]).await;
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("RESERVATION"), "{text}");
    assert_eq!(text.lines().count(), 1 + 2 + 1, "a header, two rows, the next page: {text}");
    assert!(text.contains("next page: --page-token "), "{text}");

    // A token this server never gave: invalid, naming the field.
    let output =
        atpctl(&addr, &["--json", "reservations", "list", "--page-token", "garbage"]).await;
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(json(&output)["error"]["details"]["field_violations"][0]["field"], "page_token");

    // Get: one result per id, in order, a missing id among them (exit 1).
    let output =
        atpctl(&addr, &["--json", "reservations", "get", "l-4", "nobody", "l-1", "l-4"]).await;
    assert_eq!(output.status.code(), Some(1), "some found, some not");
    let answer = json(&output);
    let results = answer["results"].as_array().expect("results");
    let ids: Vec<&str> =
        results.iter().map(|item| item["reservation_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, ["l-4", "nobody", "l-1", "l-4"], "in request order, repeats included");
    assert_eq!(results[0]["reservation"]["state"], "COMMITTED");
    assert_eq!(results[1]["error"]["code"], "NOT_FOUND");
    assert!(results[1]["reservation"].is_null(), "{answer}");
    assert_eq!(results[2]["reservation"]["state"], "HELD");
    assert!(answer["epoch"].is_u64(), "{answer}");

    let output = atpctl(&addr, &["reservations", "get", "l-2", "l-3"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> =
        text.lines().skip(1).map(|row| row.split_whitespace().take(2).collect()).collect();
    assert_eq!(rows, [["l-2", "HELD"], ["l-3", "RELEASED"]], "{text}");

    // Nothing found: as get-reservation of a missing id, 5.
    let output = atpctl(&addr, &["reservations", "get", "nobody", "nobody-else"]).await;
    assert_eq!(output.status.code(), Some(5));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.lines().any(|row| row.starts_with("nobody-else  NotFound")), "{text}");

    // Too many ids for one call: refused before anything is sent.
    let many: Vec<String> = (0..101).map(|index| format!("id-{index}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let output = atpctl(&addr, &[&["reservations", "get"][..], &many].concat()).await;
    assert_eq!(output.status.code(), Some(2));
}

/// Units of `sku` reserved at dc-1, by `availability --json`.
async fn reserved(addr: &str, sku: &str) -> i64 {
    let output = atpctl(addr, &["--json", "availability", sku, "--location", "dc-1"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    json(&output)["skus"][0]["locations"][0]["reserved"].as_i64().expect("reserved units")
}

/// A reservation's lines from `--json` output, as (sku, location, quantity), sorted.
fn json_lines(reservation: &serde_json::Value) -> Vec<(String, String, i64)> {
    let lines = reservation["lines"].as_array().expect("lines");
    let mut lines: Vec<(String, String, i64)> = lines
        .iter()
        .map(|line| {
            (
                line["sku"].as_str().expect("sku").to_owned(),
                line["location_id"].as_str().expect("location").to_owned(),
                line["quantity"].as_i64().expect("quantity"),
            )
        })
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn modify_changes_lines_once_per_request_id() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure(&addr).await; // 5 tees at dc-1
    let steps: [&[&str]; 2] = [
        &["event", "received", "recv-2", "--sku", "mug", "--location", "dc-1", "--quantity", "5"],
        &["reserve", "m-1", "--channel", "web", "--line", "tee@dc-1=2"],
    ];
    for step in steps {
        let output = atpctl(&addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let change = ["modify", "m-1", "--request-id", "chg-1", "--line", "tee@dc-1=3"];
    let change = [&change[..], &["--line", "mug@dc-1=1"]].concat();
    let expected =
        vec![("mug".to_owned(), "dc-1".to_owned(), 1), ("tee".to_owned(), "dc-1".to_owned(), 3)];

    // The change: new lines, held at once.
    let output = atpctl(&addr, &[&["--json"][..], &change].concat()).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer = json(&output);
    assert_eq!((answer["replayed"].as_bool(), answer["current"].is_null()), (Some(false), true));
    assert_eq!(answer["reservation"]["state"], "HELD");
    assert_eq!(json_lines(&answer["reservation"]), expected);
    assert_eq!((reserved(&addr, "tee").await, reserved(&addr, "mug").await), (3, 1));

    // The same command again: the first answer, marked, with the reservation now.
    let output = atpctl(&addr, &[&["--json"][..], &change].concat()).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let again = json(&output);
    assert_eq!(again["replayed"], true);
    assert_eq!(again["reservation"], answer["reservation"], "the first answer");
    assert_eq!(json_lines(&again["current"]), expected);
    assert_eq!((reserved(&addr, "tee").await, reserved(&addr, "mug").await), (3, 1));
    let table = atpctl(&addr, &change).await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("note: replayed:"), "{text}");
    assert!(text.contains("the reservation now: HELD\n"), "{text}");

    // The same key with other lines: refused (4), ID_REUSED.
    let other = ["--json", "modify", "m-1", "--request-id", "chg-1", "--line", "tee@dc-1=1"];
    let output = atpctl(&addr, &other).await;
    assert_eq!(output.status.code(), Some(4));
    let error = &json(&output)["error"];
    assert_eq!(error["code"], "ALREADY_EXISTS");
    assert_eq!(error["details"]["error_info"]["reason"], "ID_REUSED");
    assert!(
        error["message"].as_str().is_some_and(|message| message.starts_with("modify m-1: ")),
        "{error}"
    );

    // More than there is: refused (4), and nothing changed.
    let greedy = ["--json", "modify", "m-1", "--request-id", "chg-2", "--line", "tee@dc-1=9"];
    let output = atpctl(&addr, &greedy).await;
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(json(&output)["error"]["details"]["error_info"]["reason"], "INSUFFICIENT_STOCK");
    let now = atpctl(&addr, &["--json", "get-reservation", "m-1"]).await;
    assert_eq!(json_lines(&json(&now)["reservation"]), expected);

    // A bad line the server sees: invalid (3), naming the field.
    let zero = ["--json", "modify", "m-1", "--request-id", "chg-3", "--line", "tee@dc-1=0"];
    let output = atpctl(&addr, &zero).await;
    assert_eq!(output.status.code(), Some(3));
    let violation = &json(&output)["error"]["details"]["field_violations"][0]["field"];
    assert_eq!(violation, "lines[0].quantity");

    // No such reservation: 5.
    let nobody = ["--json", "modify", "nobody", "--request-id", "chg-4", "--line", "tee@dc-1=1"];
    let output = atpctl(&addr, &nobody).await;
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(json(&output)["error"]["code"], "NOT_FOUND");

    // No request id (or an empty one), or no line: a usage error, nothing sent.
    for usage in [
        &["modify", "m-1", "--line", "tee@dc-1=1"][..],
        &["modify", "m-1", "--request-id", "", "--line", "tee@dc-1=1"],
        &["modify", "m-1", "--request-id", "chg-5"],
        &["modify", "m-1", "--request-id", "chg-5", "--line", "tee"],
    ] {
        let output = atpctl(&addr, usage).await;
        assert_eq!(output.status.code(), Some(2), "{usage:?}");
    }
    assert_eq!(reserved(&addr, "tee").await, 3, "nothing was sent");

    // A reservation that is no longer HELD does not change: refused (4), WRONG_STATE.
    assert!(atpctl(&addr, &["release", "m-1"]).await.status.success());
    let late = ["--json", "modify", "m-1", "--request-id", "chg-6", "--line", "tee@dc-1=1"];
    let output = atpctl(&addr, &late).await;
    assert_eq!(output.status.code(), Some(4));
    assert_eq!(json(&output)["error"]["details"]["error_info"]["reason"], "WRONG_STATE");
    assert_eq!(reserved(&addr, "tee").await, 0);
}

/// Locations on the equator (near, far, cheap ship to the US, berlin to DE
/// only), channel `web` over all four; tees at each. From (0, 0) a shipment
/// from near costs 500 + round(111.195 km × 1) = 611, from far 500 + 1112,
/// from cheap 100.
async fn configure_network(addr: &str) {
    let steps: [&[&str]; 9] = [
        &[
            "location",
            "upsert",
            "near",
            "--kind",
            "warehouse",
            "--lat",
            "0",
            "--lon",
            "1",
            "--ships-to",
            "US",
            "--cost-per-shipment",
            "500",
            "--cost-per-km",
            "1",
        ],
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
            "--ships-to",
            "US",
            "--cost-per-shipment",
            "500",
            "--cost-per-km",
            "1",
        ],
        &[
            "location",
            "upsert",
            "cheap",
            "--kind",
            "3pl",
            "--lat",
            "0",
            "--lon",
            "5",
            "--ships-to",
            "US",
            "--cost-per-shipment",
            "100",
        ],
        &["location", "upsert", "berlin", "--kind", "store", "--ships-to", "DE"],
        &[
            "channel",
            "upsert",
            "web",
            "--location",
            "near",
            "--location",
            "far",
            "--location",
            "cheap",
            "--location",
            "berlin",
        ],
        &["event", "received", "r-near", "--sku", "tee", "--location", "near", "--quantity", "5"],
        &["event", "received", "r-far", "--sku", "tee", "--location", "far", "--quantity", "5"],
        &["event", "received", "r-cheap", "--sku", "tee", "--location", "cheap", "--quantity", "1"],
        &["event", "received", "r-ber", "--sku", "tee", "--location", "berlin", "--quantity", "50"],
    ];
    for step in steps {
        let output = atpctl(addr, step).await;
        assert!(output.status.success(), "{step:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

/// Units of tee reserved in all, by `availability --json`.
async fn tees_reserved(addr: &str) -> i64 {
    let output = atpctl(addr, &["--json", "availability", "tee"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let locations = json(&output)["skus"][0]["locations"].as_array().expect("locations").clone();
    locations.iter().map(|location| location["reserved"].as_i64().expect("reserved")).sum()
}

/// `allocate ID` of `tees` tees to (0, 0) in the US, then `extra` options.
fn allocate_args<'a>(id: &'a str, tees: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let order = [
        "allocate",
        id,
        "--channel",
        "web",
        "--to-country",
        "US",
        "--to-region",
        "US-CA",
        "--lat",
        "0",
        "--lon",
        "0",
        "--line",
        tees,
        "--ttl",
        "600",
    ];
    [&order[..], extra].concat()
}

#[tokio::test]
async fn allocate_plans_holds_once_and_explains() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure_network(&addr).await;

    // A dry run: the plan (one shipment from near), the runner-up (cheap's
    // 1 + near's 2 = 711), berlin left out; nothing held.
    let dry = atpctl(&addr, &allocate_args("o-1", "tee=3", &["--dry-run"])).await;
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.starts_with("order      o-1\ncost       611\nunits      3\n"), "{text}");
    assert!(text.contains("\nnear      111.2   611      3  tee×3\n"), "{text}");
    let runner_up = text
        .lines()
        .find(|line| line.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("no runner-up: {text}"));
    let cells: Vec<&str> = runner_up.split_whitespace().collect();
    assert_eq!(cells[..3], ["1", "711", "2"], "{text}");
    assert!(text.contains("EXCLUDED  REASON\nberlin    DOES_NOT_SHIP_THERE\n"), "{text}");
    assert!(text.ends_with("\ndry run: nothing held\n"), "{text}");
    assert_eq!(tees_reserved(&addr).await, 0, "a dry run holds nothing");

    // The hold: the whole answer as JSON.
    let held =
        atpctl(&addr, &[&["--json"][..], &allocate_args("o-1", "tee=3", &[])].concat()).await;
    assert!(held.status.success(), "{}", String::from_utf8_lossy(&held.stderr));
    let answer = json(&held);
    assert_eq!(answer["reservation"]["reservation_id"], "o-1");
    assert_eq!(answer["reservation"]["state"], "HELD");
    assert_eq!(answer["reservation"]["metadata"]["order_id"], "o-1");
    assert_eq!(json_lines(&answer["reservation"]), [("tee".to_owned(), "near".to_owned(), 3)]);
    assert_eq!(answer["plan"]["cost"], 611);
    assert_eq!(answer["plan"]["shipments"][0]["lines"][0]["quantity"], 3);
    assert_eq!(answer["alternatives"][0]["cost"], 711);
    assert_eq!(answer["excluded"][0]["reason"], "DOES_NOT_SHIP_THERE");
    assert_eq!(
        (answer["dry_run"].as_bool(), answer["replayed"].as_bool()),
        (Some(false), Some(false))
    );
    assert!(answer["attempts"].as_u64().is_some_and(|attempts| attempts >= 1), "{answer}");
    assert_eq!(tees_reserved(&addr).await, 3);

    // The same command again: replayed, nothing more held.
    let again = atpctl(&addr, &allocate_args("o-1", "tee=3", &[])).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("reservation  o-1\nstate        HELD\n"), "{text}");
    assert!(text.contains("\nreplayed: this order was allocated before"), "{text}");
    assert_eq!(tees_reserved(&addr).await, 3, "held once");

    // Another request under the same order id: refused (4), ID_REUSED.
    let other =
        atpctl(&addr, &[&["--json"][..], &allocate_args("o-1", "tee=4", &[])].concat()).await;
    assert_eq!(other.status.code(), Some(4));
    let error = &json(&other)["error"];
    assert_eq!(error["details"]["error_info"]["reason"], "ID_REUSED");
    assert!(
        error["message"].as_str().is_some_and(|message| message.starts_with("allocate o-1: ")),
        "{error}"
    );

    // It is an ordinary reservation.
    assert!(atpctl(&addr, &["commit", "o-1"]).await.status.success());
}

#[tokio::test]
async fn allocate_refuses_or_backorders_a_short_order() {
    let atpd = Atpd::start(&[]).await;
    let addr = atpd.endpoint();
    configure_network(&addr).await; // 11 tees ship to the US

    // All or nothing: refused (4), nothing held.
    let short =
        atpctl(&addr, &[&["--json"][..], &allocate_args("o-2", "tee=12", &[])].concat()).await;
    assert_eq!(short.status.code(), Some(4));
    let error = &json(&short)["error"];
    assert_eq!(error["details"]["error_info"]["reason"], "INSUFFICIENT_STOCK");
    assert_eq!(error["details"]["error_info"]["metadata"]["available"], "11");
    assert_eq!(tees_reserved(&addr).await, 0);

    // One shipment only: at most 5.
    let single = atpctl(&addr, &allocate_args("o-3", "tee=6", &["--no-split"])).await;
    assert_eq!(single.status.code(), Some(4), "{}", String::from_utf8_lossy(&single.stderr));

    // Partial: what there is, the rest backordered.
    let partial = atpctl(&addr, &allocate_args("o-4", "tee=12", &["--partial"])).await;
    assert!(partial.status.success(), "{}", String::from_utf8_lossy(&partial.stderr));
    let text = String::from_utf8_lossy(&partial.stdout);
    assert!(text.contains("units      11\n"), "{text}");
    assert!(text.contains("\nbackordered: 1 unit(s): tee×1\n"), "{text}");
    assert!(text.contains("state        HELD\n"), "{text}");
    assert_eq!(tees_reserved(&addr).await, 11);

    // Malformed: invalid (3), naming the fields.
    let bad = ["--json", "allocate", "o-5", "--channel", "web", "--to-country", "usa"];
    let bad = [&bad[..], &["--lat", "91", "--lon", "0", "--line", "tee=0"]].concat();
    let output = atpctl(&addr, &bad).await;
    assert_eq!(output.status.code(), Some(3));
    let violations = json(&output)["error"]["details"]["field_violations"].clone();
    let fields: Vec<&str> = violations
        .as_array()
        .expect("field violations")
        .iter()
        .map(|violation| violation["field"].as_str().expect("a field"))
        .collect();
    for field in ["destination.latitude", "destination.country", "lines[0].quantity"] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
}

#[tokio::test]
async fn kits_are_defined_listed_and_shown_from_their_components() {
    let node = Atpd::start(&[]).await;
    let addr = node.endpoint();
    configure(&addr).await;
    let upsert = atpctl(
        &addr,
        &[
            "--json",
            "kit",
            "upsert",
            "box",
            "--name",
            "gift box",
            "--component",
            "mug=1",
            "--component",
            "tea=3",
        ],
    )
    .await;
    assert!(upsert.status.success(), "{upsert:?}");
    assert_eq!(json(&upsert)["changed"], true);
    let nested = atpctl(&addr, &["kit", "upsert", "crate", "--component", "box=2"]).await;
    assert_eq!(nested.status.code(), Some(3), "{nested:?}");
    let listed = atpctl(&addr, &["kit", "list"]).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("box") && text.contains("mug×1 tea×3"), "{text}");
    node.receive("mug", "dc-1", 4).await;
    node.receive("tea", "dc-1", 9).await;
    let figures = atpctl(&addr, &["--json", "availability", "box"]).await;
    assert!(figures.status.success(), "{figures:?}");
    let figures = json(&figures);
    let text = figures.to_string();
    // min(4 / 1, 9 / 3) = 3 at dc-1.
    assert!(text.contains("\"atp\":3"), "{text}");
}
