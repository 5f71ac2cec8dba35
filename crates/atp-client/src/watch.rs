//! Following a WatchAvailability stream (issue 13): [`WatchView`] applies
//! each message to a local copy of the figures, drops an update older than
//! the SKU's figure held (by version), keeps the latest mark per shard, and
//! builds the request that resumes after a cut.

use std::collections::{BTreeMap, HashMap};

use atp_proto::v1;

/// A version of a SKU's figures: (epoch, sequence), compared epoch first.
pub type Version = (u64, u64);

/// One SKU's figures as last received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figure {
    /// The channel's ATP (or the locations' sum).
    pub atp: i64,
    /// The figure safe to publish.
    pub published: i64,
    /// Its version.
    pub version: Version,
}

/// What one message did to a [`WatchView`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The SKUs whose figures changed, with their new figures.
    pub changed: Vec<(String, Figure)>,
    /// Updates dropped because the view held a newer version.
    pub stale: usize,
    /// The message was RESYNC: the view was emptied.
    pub resynced: bool,
    /// The message was SYNCED: the view is whole.
    pub synced: bool,
}

/// The figures and marks of one stream, as received so far.
#[derive(Clone, Debug, Default)]
pub struct WatchView {
    figures: HashMap<String, Figure>,
    marks: BTreeMap<u32, Version>,
    last_sent_at_ms: i64,
    synced: bool,
}

fn version(version: Option<&v1::Version>) -> Version {
    version.map_or((0, 0), |version| (version.epoch, version.sequence))
}

impl WatchView {
    /// An empty view (nothing received).
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one message.
    pub fn apply(&mut self, message: &v1::WatchAvailabilityResponse) -> Applied {
        let mut applied = Applied::default();
        let event = v1::WatchEvent::try_from(message.event).unwrap_or(v1::WatchEvent::Unspecified);
        if event == v1::WatchEvent::Resync {
            self.figures.clear();
            self.marks.clear();
            self.synced = false;
            applied.resynced = true;
        }
        for update in &message.updates {
            let figure = Figure {
                atp: update.atp,
                published: update.published,
                version: version(update.version.as_ref()),
            };
            match self.figures.get(&update.sku) {
                Some(held) if held.version > figure.version => applied.stale += 1,
                Some(held) if *held == figure => {}
                _ => {
                    self.figures.insert(update.sku.clone(), figure);
                    applied.changed.push((update.sku.clone(), figure));
                }
            }
        }
        for mark in &message.marks {
            let at = version(mark.version.as_ref());
            let held = self.marks.entry(mark.shard).or_default();
            *held = (*held).max(at);
        }
        if event == v1::WatchEvent::Synced {
            self.synced = true;
            applied.synced = true;
        }
        self.last_sent_at_ms = self.last_sent_at_ms.max(message.sent_at_ms);
        applied
    }

    /// The figures held, by SKU.
    pub fn figures(&self) -> &HashMap<String, Figure> {
        &self.figures
    }

    /// The latest mark per shard.
    pub fn marks(&self) -> &BTreeMap<u32, Version> {
        &self.marks
    }

    /// Whether a SYNCED was received since the start (or the last RESYNC).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// `request` made to resume after what this view received (a snapshot
    /// if nothing was received yet).
    pub fn resume(
        &self,
        mut request: v1::WatchAvailabilityRequest,
    ) -> v1::WatchAvailabilityRequest {
        request.resume = self.last_sent_at_ms > 0;
        request.resume_at_ms = if request.resume { self.last_sent_at_ms } else { 0 };
        request.resume_marks = if request.resume {
            self.marks
                .iter()
                .map(|(shard, (epoch, sequence))| v1::ShardMark {
                    shard: *shard,
                    version: Some(v1::Version { epoch: *epoch, sequence: *sequence }),
                })
                .collect()
        } else {
            Vec::new()
        };
        request
    }
}
