//! The member watch: a full read, then a watch that resumes after errors.

use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use crate::membership::{Members, MembershipConfig, ms};
use crate::store::{Store, StoreError, Watch, describe};

/// Keeps `members` equal to the node keys in the store: a full read, then a
/// watch from the next revision. A broken watch resumes from the last seen
/// revision + 1; a compacted one starts over with a full read.
pub(crate) async fn watch_members<S: Store>(
    store: S,
    config: MembershipConfig,
    members: watch::Sender<Members>,
) {
    let prefix = config.nodes_prefix();
    let request_timeout = ms(config.request_timeout_ms);
    let backoff = ms(config.retry_backoff_ms);
    // The revision the published list reflects; None: read everything again.
    let mut resume_from: Option<i64> = None;
    loop {
        let revision = match resume_from {
            Some(revision) => revision,
            None => match timeout(request_timeout, store.get_prefix(&prefix)).await {
                Ok(Ok(snapshot)) => {
                    let mut nodes = BTreeMap::new();
                    for kv in snapshot.kvs {
                        if let Some(node) = kv.key.strip_prefix(&prefix) {
                            nodes.insert(
                                node.to_owned(),
                                String::from_utf8_lossy(&kv.value).into_owned(),
                            );
                        }
                    }
                    members.send_replace(Members { revision: snapshot.revision, nodes });
                    snapshot.revision
                }
                Ok(Err(error)) => {
                    tracing::warn!(
                        error = describe(&error),
                        "reading the member list failed; retrying"
                    );
                    sleep(backoff).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!(?request_timeout, "reading the member list timed out; retrying");
                    sleep(backoff).await;
                    continue;
                }
            },
        };
        resume_from = Some(revision);
        let mut stream = match timeout(request_timeout, store.watch_prefix(&prefix, revision + 1))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(StoreError::Compacted { compact_revision })) => {
                tracing::info!(revision, compact_revision, "member watch compacted; reading again");
                resume_from = None;
                continue;
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error = describe(&error),
                    "opening the member watch failed; retrying"
                );
                sleep(backoff).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(?request_timeout, "opening the member watch timed out; retrying");
                sleep(backoff).await;
                continue;
            }
        };
        loop {
            match stream.next().await {
                Ok(events) => {
                    members.send_modify(|list| {
                        for event in events {
                            let Some(node) = event.key.strip_prefix(&prefix) else { continue };
                            match event.value {
                                Some(value) => {
                                    list.nodes.insert(
                                        node.to_owned(),
                                        String::from_utf8_lossy(&value).into_owned(),
                                    );
                                }
                                None => {
                                    list.nodes.remove(node);
                                }
                            }
                            list.revision = list.revision.max(event.revision);
                        }
                    });
                    resume_from = Some(members.borrow().revision);
                }
                Err(StoreError::Compacted { compact_revision }) => {
                    tracing::info!(compact_revision, "member watch compacted; reading again");
                    resume_from = None;
                    break;
                }
                Err(error) => {
                    tracing::warn!(error = describe(&error), "member watch broke; resuming");
                    sleep(backoff).await;
                    break;
                }
            }
        }
    }
}
