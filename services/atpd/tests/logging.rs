//! The default log filter keeps the store engine's INFO lines out; `info`
//! lets them in (the control, so the first check can fail).

mod common;

use std::time::Duration;

use atp_proto::v1;
use common::{Atpd, eventually};

/// Runs a ledger query until it is answered: by then the ledger index (the
/// fjall database) has been opened, and its INFO lines written if allowed.
async fn open_the_ledger_index(atpd: &Atpd) {
    let mut admin = atpd.admin();
    let answered = eventually(Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let request = v1::QueryLedgerRequest { sku: "tee".into(), ..Default::default() };
            admin.query_ledger(request).await.is_ok()
        }
    })
    .await;
    assert!(answered, "the ledger never answered; log:\n{}", atpd.log());
    let request = v1::QueryLedgerRequest { sku: "tee".into(), ..Default::default() };
    admin.query_ledger(request).await.expect("ledger");
}

#[tokio::test]
async fn the_store_engine_logs_no_info_by_default() {
    let control = Atpd::start(&[("ATP_LOG", "info")]).await;
    open_the_ledger_index(&control).await;
    let engine_logged =
        eventually(Duration::from_secs(30), || std::future::ready(control.log().contains("fjall")))
            .await;
    assert!(engine_logged, "with log=info the engine's lines show:\n{}", control.log());

    let atpd = Atpd::start(&[]).await;
    open_the_ledger_index(&atpd).await;
    let log = atpd.log();
    assert!(log.contains("recovered; serving"), "atp's own INFO lines stay:\n{log}");
    assert!(!log.contains("fjall") && !log.contains("lsm_tree"), "{log}");
}
