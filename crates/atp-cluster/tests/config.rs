//! The cluster configuration in etcd, each body on both stores (the
//! in-memory etcd on paused time, a real etcd process): the first
//! configuration is published once (a second publisher writes nothing), a
//! watch sees every change, resumes after a broken stream from the last
//! revision + 1 without reading everything again, and reads everything again
//! after a compaction.

use atp_cluster::store::Store;
use atp_cluster::testing::Faulty;
use atp_cluster::{
    ClusterConfig, ClusterKeys, ConfigWatch, MembershipConfig, PUBLISHING_PREFIX, publish_initial,
    read_config,
};

#[macro_use]
mod common;
use common::{Fixture, WAIT, until};

fn membership() -> MembershipConfig {
    MembershipConfig {
        request_timeout_ms: 1_000,
        retry_backoff_ms: 50,
        ..MembershipConfig::new("test", "a", "a.local:7000")
    }
}

fn keys() -> ClusterKeys {
    ClusterKeys::new("test")
}

fn entry(id: &str, value: &str) -> (String, Vec<u8>) {
    (id.to_owned(), value.as_bytes().to_vec())
}

fn value_of(config: &ClusterConfig, location: &str) -> Option<String> {
    config.locations.get(location).map(|entry| String::from_utf8_lossy(&entry.value).into_owned())
}

on_both_stores!(the_first_configuration_is_published_once_and_watched);
async fn the_first_configuration_is_published_once_and_watched(fixture: impl Fixture) {
    let store = fixture.store().await;
    let watch = ConfigWatch::start(fixture.store().await, &membership());
    let mut seen = watch.config();
    let empty = until(&mut seen, "a first read", |config| config.revision > 0).await;
    assert!(!empty.initialized && empty.locations.is_empty(), "{empty:?}");

    let first = publish_initial(
        &store,
        &keys(),
        "node-a",
        vec![entry("dc-1", "one"), entry("dc-2", "two")],
        vec![entry("web", "web")],
    )
    .await
    .expect("publish");
    assert!(first, "the first publisher writes");
    let second = publish_initial(&store, &keys(), "node-b", vec![entry("dc-9", "nine")], vec![])
        .await
        .expect("publish again");
    assert!(!second, "a second publisher writes nothing");

    let published = until(&mut seen, "the published configuration", |config| {
        config.initialized && config.channels.contains_key("web")
    })
    .await;
    assert_eq!(value_of(&published, "dc-1").as_deref(), Some("one"));
    assert_eq!(value_of(&published, "dc-2").as_deref(), Some("two"));
    assert!(!published.locations.contains_key("dc-9"), "{published:?}");
    let (marker, _) = store.get(&keys().config_initialized()).await.expect("read the marker");
    let marker = marker.expect("the marker");
    assert_eq!(marker.value, b"node-a");
    assert_eq!(published.initialized_revision, marker.create_revision);

    let revision = store.put(&keys().config_location("dc-1"), b"uno", 0).await.expect("put");
    let changed = until(&mut seen, "the change", |config| config.revision >= revision).await;
    assert_eq!(value_of(&changed, "dc-1").as_deref(), Some("uno"));
    assert_eq!(changed.locations["dc-1"].mod_revision, revision);
    assert_eq!(changed, read_config(&store, &keys()).await.expect("read"), "watch = read");
}

on_both_stores!(a_large_first_configuration_is_published_in_parts);
/// More entries than one transaction takes: published in parts behind a
/// `publishing` marker that does not count as initialized; another
/// publisher meanwhile writes nothing; a publisher that stopped half-way
/// resumes under its own id.
async fn a_large_first_configuration_is_published_in_parts(fixture: impl Fixture) {
    let store = fixture.store().await;
    let keys = keys();
    let locations: Vec<_> = (0..300).map(|n| entry(&format!("dc-{n:03}"), "x")).collect();

    // node-a stopped after its first part.
    let marker = format!("{PUBLISHING_PREFIX}node-a");
    store.put(&keys.config_initialized(), marker.as_bytes(), 0).await.expect("put");
    store.put(&keys.config_location("dc-000"), b"x", 0).await.expect("put");
    let half = read_config(&store, &keys).await.expect("read");
    assert!(!half.initialized, "a publish under way is not a configuration");
    assert_eq!(half.publishing.as_deref(), Some("node-a"));

    let other = publish_initial(&store, &keys, "node-b", vec![entry("dc-b", "b")], vec![])
        .await
        .expect("publish");
    assert!(!other, "node-b waits for node-a");
    let watch = ConfigWatch::start(fixture.store().await, &membership());
    let mut seen = watch.config();
    let resumed = publish_initial(&store, &keys, "node-a", locations, vec![entry("web", "w")])
        .await
        .expect("resume");
    assert!(resumed, "node-a resumes its own publish");

    let published = until(&mut seen, "the whole configuration", |config| config.initialized).await;
    assert_eq!(published.locations.len(), 300, "every part before the marker says initialized");
    assert!(published.channels.contains_key("web"));
    assert!(!published.locations.contains_key("dc-b"));
    assert_eq!(published.publishing, None);
    let (marker, _) = store.get(&keys.config_initialized()).await.expect("read");
    assert_eq!(marker.expect("the marker").value, b"node-a");
    let again = publish_initial(&store, &keys, "node-b", vec![entry("dc-b", "b")], vec![])
        .await
        .expect("publish");
    assert!(!again, "initialized: nobody publishes again");
}

on_both_stores!(a_broken_config_watch_resumes_without_missing_a_change);
async fn a_broken_config_watch_resumes_without_missing_a_change(fixture: impl Fixture) {
    let store = fixture.store().await;
    let faulty = Faulty::new(fixture.store().await);
    publish_initial(&store, &keys(), "node-a", vec![entry("dc-1", "one")], vec![])
        .await
        .expect("publish");
    let watch = ConfigWatch::start(faulty.clone(), &membership());
    let mut seen = watch.config();
    let before = until(&mut seen, "the published configuration", |config| config.initialized).await;

    faulty.open_watches(false);
    faulty.break_watches();
    wait_until_held(&faulty).await;
    store.put(&keys().config_location("dc-2"), b"two", 0).await.expect("put while away");
    store.put(&keys().config_channel("web"), b"web", 0).await.expect("put while away");
    faulty.open_watches(true);

    let after =
        until(&mut seen, "both changes", |config| config.channels.contains_key("web")).await;
    assert_eq!(value_of(&after, "dc-2").as_deref(), Some("two"));
    let calls = faulty.calls();
    assert_eq!(calls.reads, 1, "resumed without a full read: {calls:?}");
    assert_eq!(calls.watch_starts.last(), Some(&(before.revision + 1)), "{calls:?}");
}

on_both_stores!(a_compacted_config_watch_reads_everything_again);
async fn a_compacted_config_watch_reads_everything_again(fixture: impl Fixture) {
    let store = fixture.store().await;
    let faulty = Faulty::new(fixture.store().await);
    publish_initial(&store, &keys(), "node-a", vec![entry("dc-1", "one")], vec![])
        .await
        .expect("publish");
    let watch = ConfigWatch::start(faulty.clone(), &membership());
    let mut seen = watch.config();
    until(&mut seen, "the published configuration", |config| config.initialized).await;

    faulty.open_watches(false);
    faulty.break_watches();
    wait_until_held(&faulty).await;
    store.put(&keys().config_location("dc-1"), b"uno", 0).await.expect("put while away");
    let revision = store.put(&keys().config_location("dc-2"), b"two", 0).await.expect("put");
    store.compact(revision).await.expect("compact");
    faulty.open_watches(true);

    let after =
        until(&mut seen, "the changes", |config| config.locations.contains_key("dc-2")).await;
    assert_eq!(value_of(&after, "dc-1").as_deref(), Some("uno"));
    assert!(after.revision >= revision);
    assert_eq!(faulty.calls().reads, 2, "a full read after the compaction");
}

/// Waits until the watch behind `faulty` is disconnected and held.
async fn wait_until_held<S: Store>(faulty: &Faulty<S>) {
    let faulty = faulty.clone();
    atp_cluster::testing::wait_for("the config watch to be held", WAIT, move || {
        faulty.held_watches() > 0
    })
    .await;
}
