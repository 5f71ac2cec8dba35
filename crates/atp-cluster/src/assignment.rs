//! The assignment table (shard → node), its encoding in etcd, rendezvous
//! hashing, and the keys of a cluster.
//!
//! The table is one etcd key, so it changes atomically and a change is
//! guarded by its mod revision. Encoding (version 1, binary, ~2 KiB for 1024
//! shards): the magic `ATPA`, a version byte (1), the shard count (u16 BE),
//! the number of distinct nodes (u16 BE), each node id (u16 BE length + UTF-8
//! bytes), then one u16 BE node index per shard, in shard order.

use std::collections::BTreeSet;

/// Number of virtual shards (the same fixed count as `atp_core::hash`).
pub const SHARD_COUNT: u32 = 1024;

const MAGIC: &[u8; 4] = b"ATPA";
const VERSION: u8 = 1;

/// The keys of one cluster, all under `/atp/<cluster>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterKeys {
    cluster: String,
}

impl ClusterKeys {
    /// The keys of `cluster` (checked by the callers' configs: no '/').
    pub fn new(cluster: impl Into<String>) -> Self {
        Self { cluster: cluster.into() }
    }

    /// `/atp/<cluster>/nodes/`.
    pub fn nodes_prefix(&self) -> String {
        format!("/atp/{}/nodes/", self.cluster)
    }

    /// `/atp/<cluster>/nodes/<node>`: the node's address, bound to its lease.
    pub fn node(&self, node: &str) -> String {
        format!("{}{node}", self.nodes_prefix())
    }

    /// `/atp/<cluster>/coordinator`: the elected coordinator's node id, bound
    /// to its lease.
    pub fn coordinator(&self) -> String {
        format!("/atp/{}/coordinator", self.cluster)
    }

    /// `/atp/<cluster>/shards/`: the assignment and every claim, watched as one.
    pub fn shards_prefix(&self) -> String {
        format!("/atp/{}/shards/", self.cluster)
    }

    /// `/atp/<cluster>/shards/assignment`: the encoded [`Assignment`].
    pub fn assignment(&self) -> String {
        format!("{}assignment", self.shards_prefix())
    }

    /// `/atp/<cluster>/shards/claims/`.
    pub fn claims_prefix(&self) -> String {
        format!("{}claims/", self.shards_prefix())
    }

    /// `/atp/<cluster>/shards/claims/<shard, 4 digits>` → the owner's node
    /// id, bound to its lease; its create revision is the shard's epoch.
    pub fn claim(&self, shard: u32) -> String {
        format!("{}{shard:04}", self.claims_prefix())
    }

    /// The shard of a claim key, if it is one.
    pub fn shard_of_claim(&self, key: &str) -> Option<u32> {
        let shard: u32 = key.strip_prefix(&self.claims_prefix())?.parse().ok()?;
        (shard < SHARD_COUNT).then_some(shard)
    }

    /// `/atp/<cluster>/down/`.
    pub fn down_prefix(&self) -> String {
        format!("/atp/{}/down/", self.cluster)
    }

    /// `/atp/<cluster>/down/<node>` → unix ms since when the coordinator has
    /// seen the node (which has shards) without its node key.
    pub fn down(&self, node: &str) -> String {
        format!("{}{node}", self.down_prefix())
    }

    /// `/atp/<cluster>/draining/`.
    pub fn draining_prefix(&self) -> String {
        format!("/atp/{}/draining/", self.cluster)
    }

    /// `/atp/<cluster>/draining/<node>`, bound to the node's lease: it is
    /// moving its shards away, so placement gives it none.
    pub fn draining(&self, node: &str) -> String {
        format!("{}{node}", self.draining_prefix())
    }

    /// `/atp/<cluster>/audit/`.
    pub fn audit_prefix(&self) -> String {
        format!("/atp/{}/audit/", self.cluster)
    }

    /// `/atp/<cluster>/audit/<revision, 20 digits>`.
    pub fn audit(&self, revision: i64) -> String {
        format!("{}{revision:020}", self.audit_prefix())
    }

    /// `/atp/<cluster>/config/`: the cluster's configuration, watched as one.
    pub fn config_prefix(&self) -> String {
        format!("/atp/{}/config/", self.cluster)
    }

    /// `/atp/<cluster>/config/initialized` → the id of the node (or
    /// `api`) that first wrote configuration; written once, by a
    /// create-if-absent transaction, together with the first entries.
    pub fn config_initialized(&self) -> String {
        format!("{}initialized", self.config_prefix())
    }

    /// `/atp/<cluster>/config/locations/`.
    pub fn config_locations_prefix(&self) -> String {
        format!("{}locations/", self.config_prefix())
    }

    /// `/atp/<cluster>/config/locations/<id>` → one encoded location.
    pub fn config_location(&self, id: &str) -> String {
        format!("{}{id}", self.config_locations_prefix())
    }

    /// `/atp/<cluster>/config/channels/`.
    pub fn config_channels_prefix(&self) -> String {
        format!("{}channels/", self.config_prefix())
    }

    /// `/atp/<cluster>/config/channels/<id>` → one encoded channel.
    pub fn config_channel(&self, id: &str) -> String {
        format!("{}{id}", self.config_channels_prefix())
    }

    /// `/atp/<cluster>/config/kits/`.
    pub fn config_kits_prefix(&self) -> String {
        format!("{}kits/", self.config_prefix())
    }

    /// `/atp/<cluster>/config/kits/<sku>` → one encoded kit.
    pub fn config_kit(&self, sku: &str) -> String {
        format!("{}{sku}", self.config_kits_prefix())
    }
}

/// Why an assignment value could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    /// Not the magic and version this code writes.
    #[error("not an assignment table of version {VERSION}")]
    UnknownFormat,
    /// Shorter than its header says, or with bytes left over.
    #[error("assignment table truncated or too long")]
    BadLength,
    /// A node id is not UTF-8, or a shard names a node that is not listed.
    #[error("assignment table is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// A table for another shard count.
    #[error("assignment table has {0} shards, expected {SHARD_COUNT}")]
    ShardCount(u32),
}

/// Which node each shard is assigned to (`SHARD_COUNT` entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    owners: Vec<String>,
}

impl Assignment {
    /// A table from one owner per shard, in shard order.
    pub fn new(owners: Vec<String>) -> Self {
        assert_eq!(owners.len(), SHARD_COUNT as usize, "one owner per shard");
        Self { owners }
    }

    /// The node `shard` is assigned to.
    pub fn owner(&self, shard: u32) -> &str {
        &self.owners[shard as usize]
    }

    /// Assigns `shard` to `node`.
    pub fn set_owner(&mut self, shard: u32, node: impl Into<String>) {
        self.owners[shard as usize] = node.into();
    }

    /// The shards assigned to `node`, ascending.
    pub fn shards_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = u32> + 'a {
        (0..SHARD_COUNT).filter(move |shard| self.owner(*shard) == node)
    }

    /// The distinct nodes in the table, sorted.
    pub fn nodes(&self) -> BTreeSet<&str> {
        self.owners.iter().map(String::as_str).collect()
    }

    /// The version-1 encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let nodes: Vec<&str> = self.nodes().into_iter().collect();
        let mut bytes = Vec::with_capacity(16 + nodes.len() * 16 + self.owners.len() * 2);
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&u16_of(self.owners.len()).to_be_bytes());
        bytes.extend_from_slice(&u16_of(nodes.len()).to_be_bytes());
        for node in &nodes {
            bytes.extend_from_slice(&u16_of(node.len()).to_be_bytes());
            bytes.extend_from_slice(node.as_bytes());
        }
        for owner in &self.owners {
            let index = nodes.binary_search(&owner.as_str()).expect("every owner is listed");
            bytes.extend_from_slice(&u16_of(index).to_be_bytes());
        }
        bytes
    }

    /// Reads a version-1 encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, AssignmentError> {
        let mut reader = Reader(bytes);
        if reader.take(4)? != MAGIC || reader.take(1)? != [VERSION] {
            return Err(AssignmentError::UnknownFormat);
        }
        let shard_count = u32::from(reader.u16()?);
        if shard_count != SHARD_COUNT {
            return Err(AssignmentError::ShardCount(shard_count));
        }
        let node_count = reader.u16()?;
        let mut nodes = Vec::with_capacity(usize::from(node_count));
        for _ in 0..node_count {
            let length = usize::from(reader.u16()?);
            let node = std::str::from_utf8(reader.take(length)?)
                .map_err(|_| AssignmentError::Inconsistent("a node id is not UTF-8"))?;
            nodes.push(node.to_owned());
        }
        let mut owners = Vec::with_capacity(SHARD_COUNT as usize);
        for _ in 0..SHARD_COUNT {
            let index = usize::from(reader.u16()?);
            let node = nodes
                .get(index)
                .ok_or(AssignmentError::Inconsistent("a shard names an unlisted node"))?;
            owners.push(node.clone());
        }
        if !reader.0.is_empty() {
            return Err(AssignmentError::BadLength);
        }
        Ok(Self { owners })
    }
}

/// Sizes in the encoding are u16; tables are built from far fewer nodes.
fn u16_of(value: usize) -> u16 {
    u16::try_from(value).expect("assignment sizes fit in u16")
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], AssignmentError> {
        if self.0.len() < length {
            return Err(AssignmentError::BadLength);
        }
        let (head, tail) = self.0.split_at(length);
        self.0 = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, AssignmentError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }
}

/// The rendezvous (highest random weight) score of `node` for `shard`:
/// XXH3-64 (seed 0) of the shard as 4 bytes big-endian followed by the node
/// id's UTF-8 bytes. Documented, so any tool computes the same table.
pub fn rendezvous_score(shard: u32, node: &str) -> u64 {
    let mut bytes = Vec::with_capacity(4 + node.len());
    bytes.extend_from_slice(&shard.to_be_bytes());
    bytes.extend_from_slice(node.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The node with the highest score for `shard` (ties to the smaller id);
/// `None` if `nodes` is empty.
pub fn rendezvous_owner<'a>(
    shard: u32,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    nodes
        .into_iter()
        .map(|node| (rendezvous_score(shard, node), std::cmp::Reverse(node)))
        .max()
        .map(|(_, std::cmp::Reverse(node))| node)
}

/// Every shard to its rendezvous owner among `nodes`; `None` if `nodes` is
/// empty. Independent of the order of `nodes`.
pub fn rendezvous<'a>(nodes: impl IntoIterator<Item = &'a str>) -> Option<Assignment> {
    let nodes: BTreeSet<&str> = nodes.into_iter().collect();
    if nodes.is_empty() {
        return None;
    }
    let owners = (0..SHARD_COUNT)
        .map(|shard| {
            rendezvous_owner(shard, nodes.iter().copied()).expect("nodes is not empty").to_owned()
        })
        .collect();
    Some(Assignment::new(owners))
}

/// The moves that give the nodes in `joined` their rendezvous share over
/// `eligible` (the live members that are not draining, `joined` among
/// them), as (shard, from, to), in shard order: a shard moves when
/// rendezvous hashing over `eligible` places it on a joined node and it
/// is another eligible node's. Nothing else moves: a dead node's shards
/// wait for it, a draining node moves its own, and placements made by hand
/// stay.
pub fn placement_moves(
    table: &Assignment,
    eligible: &BTreeSet<&str>,
    joined: &BTreeSet<&str>,
) -> Vec<(u32, String, String)> {
    (0..SHARD_COUNT)
        .filter_map(|shard| {
            let owner = table.owner(shard);
            if !eligible.contains(owner) {
                return None;
            }
            let target = rendezvous_owner(shard, eligible.iter().copied())?;
            (target != owner && joined.contains(target))
                .then(|| (shard, owner.to_owned(), target.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joining_node_gets_its_rendezvous_share_and_nothing_else_moves() {
        let table = rendezvous(["a", "b", "c"]).expect("nodes");
        let none: Vec<(u32, String, String)> = Vec::new();
        let all = BTreeSet::from(["a", "b", "c", "d"]);
        assert_eq!(placement_moves(&table, &BTreeSet::from(["a", "b", "c"]), &all), none);
        let moves = placement_moves(&table, &all, &BTreeSet::from(["d"]));
        assert!(moves.iter().all(|(_, _, to)| to == "d"), "only to the new node");
        assert!((180..340).contains(&moves.len()), "about a quarter: {}", moves.len());
        let mut after = table.clone();
        for (shard, _, to) in &moves {
            after.set_owner(*shard, to.clone());
        }
        assert_eq!(after, rendezvous(["a", "b", "c", "d"]).expect("nodes"));
        // c dead or draining: its shards stay, nothing else moves.
        assert_eq!(placement_moves(&table, &BTreeSet::from(["a", "b"]), &all), none);
        // A shard moved by hand from a to b stays when c restarts (joins).
        let mut by_hand = table.clone();
        let shard = table.shards_of("a").next().expect("a has shards");
        by_hand.set_owner(shard, "b");
        let abc = BTreeSet::from(["a", "b", "c"]);
        assert_eq!(placement_moves(&by_hand, &abc, &BTreeSet::from(["c"])), none);
        let back = placement_moves(&by_hand, &abc, &BTreeSet::from(["a"]));
        assert_eq!(back.len(), 1, "a rejoining takes it back");
    }

    #[test]
    fn rendezvous_spreads_shards_and_ignores_order() {
        let table = rendezvous(["c", "a", "b"]).expect("nodes");
        assert_eq!(table, rendezvous(["a", "b", "c"]).expect("nodes"));
        for node in ["a", "b", "c"] {
            let count = table.shards_of(node).count();
            assert!((250..430).contains(&count), "{node} has {count} shards");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_shards() {
        let three = rendezvous(["a", "b", "c"]).expect("nodes");
        let two = rendezvous(["a", "b"]).expect("nodes");
        for shard in 0..SHARD_COUNT {
            if three.owner(shard) != "c" {
                assert_eq!(three.owner(shard), two.owner(shard), "shard {shard} moved");
            }
        }
        assert!(rendezvous([]).is_none());
    }

    #[test]
    fn the_encoding_round_trips_and_refuses_damage() {
        let table = rendezvous(["node-1", "node-2", "node-3"]).expect("nodes");
        let bytes = table.encode();
        assert!(bytes.len() < 2_200, "{} bytes", bytes.len());
        assert_eq!(Assignment::decode(&bytes), Ok(table));
        assert_eq!(Assignment::decode(&bytes[..bytes.len() - 1]), Err(AssignmentError::BadLength));
        assert_eq!(Assignment::decode(b"no"), Err(AssignmentError::BadLength));
        assert_eq!(Assignment::decode(b"nope!"), Err(AssignmentError::UnknownFormat));
        assert_eq!(Assignment::decode(b"ATPA\x02"), Err(AssignmentError::UnknownFormat));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Assignment::decode(&longer), Err(AssignmentError::BadLength));
    }

    #[test]
    fn claim_keys_sort_by_shard_and_parse_back() {
        let keys = ClusterKeys::new("prod");
        assert_eq!(keys.claim(7), "/atp/prod/shards/claims/0007");
        assert_eq!(keys.shard_of_claim(&keys.claim(1023)), Some(1023));
        assert_eq!(keys.shard_of_claim("/atp/prod/shards/claims/1024"), None);
        assert_eq!(keys.shard_of_claim(&keys.assignment()), None);
    }
}
