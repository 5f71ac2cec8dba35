//! The node's change feed (issue 13): after a shard's batch is durable and
//! its SKUs' figures are in the read view, one [`Changed`] names them with
//! the batch's version. Watchers subscribe to it (a bounded broadcast: a
//! watcher that falls behind is told it lagged, never blocks a shard) and
//! read the figures themselves from the read view, so a burst of changes to
//! one SKU costs a watcher one read (the latest value wins).

use std::sync::{Arc, Mutex};

use atp_core::ids::Sku;
use atp_core::shard::{SkuView, Version};
use tokio::sync::broadcast;

/// Events the feed keeps for watchers that have not read them yet.
pub const CHANGE_FEED_CAPACITY: usize = 16_384;

/// SKUs of one shard whose figures changed, as of `version`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The shard.
    pub shard: u32,
    /// The batch (or republish) every SKU's figures are now at or past.
    pub version: Version,
    /// The SKUs.
    pub skus: Vec<Sku>,
}

/// The feed and, per shard, the version of its last published batch.
pub(crate) struct Feed {
    sender: broadcast::Sender<Arc<Changed>>,
    published: Vec<Mutex<Version>>,
    clock: crate::clock::Clock,
}

impl Feed {
    pub(crate) fn new(shards: u32, clock: crate::clock::Clock) -> Self {
        let (sender, _) = broadcast::channel(CHANGE_FEED_CAPACITY);
        let published = (0..shards).map(|_| Mutex::new(Version::default())).collect();
        Self { sender, published, clock }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Changed>> {
        self.sender.subscribe()
    }

    /// The version of `shard`'s last published batch.
    pub(crate) fn published(&self, shard: u32) -> Version {
        self.published
            .get(shard as usize)
            .map_or_else(Version::default, |version| *version.lock().expect("never poisoned"))
    }

    /// Puts `views` of `shard` in the read view at `version` (changed now,
    /// by the node's clock), then tells
    /// the watchers (in this order: a watcher that reads the view after
    /// the event sees these figures or later ones).
    pub(crate) fn publish(
        &self,
        view: &dashmap::DashMap<Sku, Arc<SkuView>>,
        shard: u32,
        version: Version,
        views: Vec<(Sku, SkuView)>,
    ) {
        let mut skus = Vec::with_capacity(views.len());
        let now = self.clock.now_ms();
        for (sku, mut figures) in views {
            figures.version = version;
            figures.changed_at_ms = now;
            view.insert(sku.clone(), Arc::new(figures));
            skus.push(sku);
        }
        if let Some(published) = self.published.get(shard as usize) {
            let mut published = published.lock().expect("never poisoned");
            *published = (*published).max(version);
        }
        if !skus.is_empty() && self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(Changed { shard, version, skus }));
        }
    }
}
