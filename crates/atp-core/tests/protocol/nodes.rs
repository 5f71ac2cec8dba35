//! Several nodes (`docs/PROTOCOL.md`, "Across nodes"): shards are split
//! between nodes; one node dies and restarts on its own shards while the
//! others go on. Between nodes a message is resent until acknowledged, so it
//! arrives late, maybe twice, and is lost only with its sender (a Hold
//! already on the wire may still land). A restarted node recovers only its
//! shards (`recover_owned`), sends what it owes other owners, and settles
//! every reservation in doubt only from the owners' answers (`Query` →
//! `Facts` → `resolve`).

use std::collections::{BTreeMap, BTreeSet};

use atp_core::hash::shard_of;
use atp_core::ids::ReservationId;
use atp_core::shard::{Incarnation, LineOp, ShardFacts, needed, recover_owned, resolve};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{Message, PENDING_TIMEOUT_MS, Waiting, World, pick, restore};
use crate::checks;

/// A reservation in doubt on a node: the owners' answers so far.
#[derive(Default)]
pub(super) struct Doubt {
    facts: BTreeMap<u32, ShardFacts>,
    asked: BTreeSet<u32>,
    /// The node's own shards were read (after the home answered).
    own_read: bool,
}

/// The reservation a line op is about.
pub(super) fn op_id(op: &LineOp) -> &ReservationId {
    match op {
        LineOp::Hold { reservation, .. } => &reservation.request.id,
        LineOp::Replace { to, .. } => &to.request.id,
        LineOp::Release { id, .. }
        | LineOp::Abort { id, .. }
        | LineOp::Commit { id, .. }
        | LineOp::Cancel { id, .. }
        | LineOp::Settle { id, .. }
        | LineOp::Revert { id, .. } => id,
    }
}

impl World {
    /// Splits the shards between `nodes` nodes (shard i of the sorted list
    /// goes to node `(i + offset) % nodes`).
    pub fn split(&mut self, nodes: u8, offset: u8) {
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        for (index, shard) in shards.into_iter().enumerate() {
            let node = ((index + offset as usize) % nodes as usize) as u8;
            self.node_of.insert(shard, node);
        }
    }

    pub(super) fn node(&self, shard: u32) -> u8 {
        self.node_of.get(&shard).copied().unwrap_or(0)
    }

    pub(super) fn home_node(&self, id: &ReservationId) -> u8 {
        self.node(shard_of(id.as_str()))
    }

    fn nodes(&self) -> BTreeSet<u8> {
        self.node_of.values().copied().collect()
    }

    /// The node that sent `message`.
    fn sender(&self, message: &Message) -> u8 {
        match message {
            Message::Hold { op, .. } | Message::Replace { op, .. } => self.home_node(op_id(op)),
            Message::Finish { id, .. } | Message::ChangeFinish { id, .. } => self.home_node(id),
            Message::Line { from, .. }
            | Message::Notice { from, .. }
            | Message::Query { from, .. }
            | Message::Adopt { from, .. } => *from,
            Message::Facts { shard, .. } => self.node(*shard),
        }
    }

    /// The node that receives `message`.
    fn receiver(&self, message: &Message) -> u8 {
        match message {
            Message::Hold { shard, .. }
            | Message::Replace { shard, .. }
            | Message::Line { shard, .. }
            | Message::Query { shard, .. } => self.node(*shard),
            Message::Finish { id, .. } | Message::ChangeFinish { id, .. } => self.home_node(id),
            Message::Notice { notice, .. } => self.home_node(&notice.reservation),
            Message::Facts { to, .. } => *to,
            Message::Adopt { incarnation, .. } => self.home_node(&incarnation.request.id),
        }
    }

    /// Messages between two nodes (resent until acknowledged).
    fn crossing(&self) -> Vec<usize> {
        (0..self.network.len())
            .filter(|at| {
                let message = &self.network[*at];
                self.sender(message) != self.receiver(message)
            })
            .collect()
    }

    pub(super) fn duplicate(&mut self, selector: u8) {
        let crossing = self.crossing();
        if let Some(at) = pick(&crossing, selector) {
            // Holds and Replaces are answered calls, not resent ops.
            // A resent op is acknowledged once: the copy completes nothing.
            let message = match self.network[*at].clone() {
                Message::Hold { .. } | Message::Replace { .. } => return,
                Message::Line { shard, op, from, .. } => {
                    Message::Line { shard, op, ack: None, from }
                }
                other => other,
            };
            self.network.push(message);
        }
    }

    /// Applies a Hold or Replace that crosses nodes, and loses its answer:
    /// the Reserve or change hears a refusal and rolls back.
    pub(super) fn deliver_without_reply(&mut self, selector: u8) -> Result<(), TestCaseError> {
        let calls: Vec<usize> = self
            .crossing()
            .into_iter()
            .filter(|at| {
                matches!(self.network[*at], Message::Hold { .. } | Message::Replace { .. })
            })
            .collect();
        let Some(at) = pick(&calls, selector).copied() else { return Ok(()) };
        let message = self.network.remove(at);
        let (shard, op) = match message {
            Message::Hold { shard, op } | Message::Replace { shard, op } => (shard, op),
            _ => unreachable!("calls only"),
        };
        let _ = self.on_shard(shard, |state, catalog, now| state.apply_line_op(&op, catalog, now));
        match &op {
            LineOp::Hold { reservation, .. } => {
                let key = (reservation.request.id.clone(), reservation.version);
                if let Some(reserving) = self.reserving.get_mut(&key) {
                    reserving.unanswered.insert(shard);
                }
                self.hold_outcome(&key, shard, false);
            }
            LineOp::Replace { to, .. } => {
                let key = (to.request.id.clone(), to.version);
                self.replace_outcome(&key, shard, false);
            }
            _ => {}
        }
        Ok(())
    }

    /// One node dies and restarts on its shards' durable records; the other
    /// nodes go on.
    pub(super) fn crash_node(&mut self, node: u8) -> Result<(), TestCaseError> {
        let nodes: Vec<u8> = self.nodes().into_iter().collect();
        let node = *pick(&nodes, node).expect("nodes");
        let owned: BTreeSet<u32> =
            self.node_of.iter().filter(|(_, n)| **n == node).map(|(s, _)| *s).collect();
        // What the node had in flight dies with it, except a Hold already
        // on the wire to another node (it may still land: line shards refuse
        // it once the pending timeout passed).
        let network = std::mem::take(&mut self.network);
        self.network = network
            .into_iter()
            .filter(|message| {
                self.sender(message) != node
                    || (matches!(message, Message::Hold { .. }) && self.receiver(message) != node)
            })
            .collect();
        let home_lost = |world: &World, id: &ReservationId| world.home_node(id) == node;
        let reserving: Vec<_> = self.reserving.keys().cloned().collect();
        for key in reserving {
            if home_lost(self, &key.0) {
                self.reserving.remove(&key);
            }
        }
        let changing: Vec<_> = self.changing.keys().cloned().collect();
        for key in changing {
            if home_lost(self, &key.0) {
                self.changing.remove(&key);
            }
        }
        let waiting: Vec<u32> = self.waiting.keys().copied().collect();
        for token in waiting {
            let id = match &self.waiting[&token].0 {
                Waiting::Client(id, _) | Waiting::Rollback(id, _) | Waiting::Change(id, _, _) => {
                    id.clone()
                }
            };
            if home_lost(self, &id) {
                self.waiting.remove(&token);
            }
        }
        self.doubts.retain(|(n, _), _| *n != node);
        self.confirmed.retain(|(shard, _, _)| !owned.contains(shard));
        self.unflushed.retain(|shard| !owned.contains(shard));
        self.hold_back.retain(|shard| !owned.contains(shard));

        let mut restored = BTreeMap::new();
        for shard in &owned {
            let records = self.durable[shard].replayed();
            restored.insert(*shard, restore(*shard, &records)?);
        }
        self.recover_on(node, restored, &owned)
    }

    /// `node` recovers `restored` (the shards of `owned` it holds, read from
    /// their durable records) and serves them: what it owes other owners
    /// goes out, and its doubts are asked about.
    fn recover_on(
        &mut self,
        node: u8,
        mut restored: BTreeMap<u32, atp_core::shard::ShardState>,
        owned: &BTreeSet<u32>,
    ) -> Result<(), TestCaseError> {
        let recovered =
            recover_owned(&mut restored, &|shard| owned.contains(&shard), &self.catalog, self.now);
        for (shard, state) in restored {
            prop_assert!(owned.contains(&shard), "recovery made shard {} it does not own", shard);
            self.shards.insert(shard, state);
        }
        for (shard, op) in recovered.remote_ops {
            self.network.push(Message::Line { shard, op, ack: None, from: node });
        }
        for notice in recovered.remote_notices {
            self.network.push(Message::Notice { notice, from: node });
        }
        for id in recovered.in_doubt {
            self.ask(node, id);
        }
        self.persist()?;
        checks::positions_match_holds(&self.shards, &self.catalog)
    }

    /// A planned handoff of a shard to node `to`: skipped while a Reserve,
    /// a change or a rollback homed on it is still running, or its last
    /// step is not durable (the drain waits for those). Otherwise its
    /// records are made durable, it leaves its node's memory (confirmed
    /// holds), and the new node recovers it from those records alone, as
    /// at a restart, and serves it. Messages on their way to it reach the
    /// new owner (the old one forwards them).
    pub(super) fn move_shard(&mut self, shard: u8, to: u8) -> Result<(), TestCaseError> {
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        let shard = *pick(&shards, shard).expect("shards");
        let nodes: Vec<u8> = self.nodes().into_iter().collect();
        let to = *pick(&nodes, to).expect("nodes");
        if to == self.node(shard) {
            return Ok(());
        }
        let homed_here = |id: &ReservationId| shard_of(id.as_str()) == shard;
        let busy = self.reserving.keys().any(|(id, _)| homed_here(id))
            || self.changing.keys().any(|(id, _)| homed_here(id))
            || self.waiting.values().any(|(waiting, _)| match waiting {
                Waiting::Client(id, _) | Waiting::Rollback(id, _) | Waiting::Change(id, _, _) => {
                    homed_here(id)
                }
            })
            || self.unflushed.contains(&shard)
            || self.hold_back.contains(&shard);
        if busy {
            return Ok(());
        }
        self.persist_shard(shard)?;
        self.confirmed.retain(|(of, _, _)| *of != shard);
        self.node_of.insert(shard, to);
        let records = self.durable[&shard].replayed();
        let restored = BTreeMap::from([(shard, restore(shard, &records)?)]);
        self.recover_on(to, restored, &BTreeSet::from([shard]))
    }

    /// Sends the queries `needed` names that were not asked yet: the
    /// home's first, then (once it answered) every line shard's, the
    /// node's own shards read afresh then — no hold is read before the
    /// home's answer (docs/PROTOCOL.md, "Facts are read home first").
    fn ask(&mut self, node: u8, id: ReservationId) {
        let home = shard_of(id.as_str());
        let home_here = self.node(home) == node;
        let home_facts = home_here.then(|| self.shards.get(&home).map(|state| state.facts(&id)));
        let own: Vec<(u32, ShardFacts)> = self
            .shards
            .iter()
            .filter(|(shard, _)| self.node(**shard) == node)
            .map(|(shard, state)| (*shard, state.facts(&id)))
            .filter(|(_, facts)| facts.hold.is_some() || facts.record.is_some())
            .collect();
        let doubt = self.doubts.entry((node, id.clone())).or_default();
        if let std::collections::btree_map::Entry::Vacant(entry) = doubt.facts.entry(home) {
            let Some(facts) = home_facts else {
                if doubt.asked.insert(home) {
                    self.network.push(Message::Query { from: node, id, shard: home });
                }
                return;
            };
            entry.insert(facts.unwrap_or(ShardFacts { record: None, hold: None }));
            doubt.asked.insert(home);
        }
        if !doubt.own_read {
            doubt.own_read = true;
            for (shard, facts) in own {
                doubt.facts.insert(shard, facts);
                doubt.asked.insert(shard);
            }
        }
        let missing: Vec<u32> =
            needed(&id, &doubt.facts).into_iter().filter(|s| !doubt.asked.contains(s)).collect();
        let asked_all = missing.is_empty();
        for shard in missing {
            doubt.asked.insert(shard);
            self.network.push(Message::Query { from: node, id: id.clone(), shard });
        }
        if asked_all {
            self.try_resolve(node, id);
        }
    }

    pub(super) fn answer_query(&mut self, from: u8, id: ReservationId, shard: u32) {
        // The owner's actor ticks before it answers, as every batch does
        // (a PENDING Reserve past its timeout is abandoned first).
        let facts = if self.shards.contains_key(&shard) {
            self.on_shard(shard, |state, _, _| state.facts(&id))
        } else {
            ShardFacts { record: None, hold: None }
        };
        self.network.push(Message::Facts { to: from, id, shard, facts });
    }

    pub(super) fn facts_arrived(
        &mut self,
        to: u8,
        id: ReservationId,
        shard: u32,
        facts: ShardFacts,
    ) -> Result<(), TestCaseError> {
        let key = (to, id.clone());
        let Some(doubt) = self.doubts.get_mut(&key) else { return Ok(()) };
        doubt.facts.insert(shard, facts);
        self.ask(to, id);
        Ok(())
    }

    /// Decides the doubt of `id` on `to` if every shard it needs answered.
    fn try_resolve(&mut self, to: u8, id: ReservationId) {
        let key = (to, id.clone());
        let doubt = &self.doubts[&key];
        if !needed(&id, &doubt.facts).iter().all(|s| doubt.facts.contains_key(s)) {
            return;
        }
        let Some(resolution) = resolve(&id, &doubt.facts, Some((self.now, PENDING_TIMEOUT_MS)))
        else {
            return; // not yet: a Requery asks again
        };
        let doubt = self.doubts.remove(&key).expect("present");
        // Holds the resolution leaves as they are, of the version the home's
        // record stands at, were confirmed by their home: a sweep does not
        // ask about them again. (A hold whose record is to be adopted is
        // not: the adopt may find a new incarnation of the id begun.)
        let recorded =
            doubt.facts.get(&shard_of(id.as_str())).and_then(|home| home.record).map(|r| r.version);
        for (shard, facts) in &doubt.facts {
            if let Some((base, None)) = &facts.hold
                && Some(base.version) == recorded
                && !resolution.ops.iter().any(|(s, _)| s == shard)
            {
                self.confirmed.insert((*shard, id.clone(), base.version));
            }
        }
        for (shard, op) in resolution.ops {
            self.network.push(Message::Line { shard, op, ack: None, from: to });
        }
        let home = shard_of(id.as_str());
        match resolution.adopt {
            Some(incarnation) if self.node(home) == to => self.adopt(&incarnation),
            Some(incarnation) => self.network.push(Message::Adopt { from: to, incarnation }),
            None if self.node(home) == to => {
                self.on_shard(home, |state, _, _| state.settled_doubt(&id));
            }
            None => {}
        }
    }

    pub(super) fn adopt(&mut self, incarnation: &Incarnation) {
        let home = shard_of(incarnation.request.id.as_str());
        self.on_shard(home, |state, _, now| state.adopt(incarnation, now));
    }

    /// `node` asks about its holds older than the pending timeout that no
    /// home confirmed yet (the home may be on this node or another).
    pub(super) fn sweep(&mut self, node: u8) {
        let cutoff = self.now - PENDING_TIMEOUT_MS;
        let mut ids = BTreeSet::new();
        for (shard, state) in &self.shards {
            if self.node(*shard) == node {
                let facts = |id: &ReservationId| state.facts(id).hold.map(|(base, _)| base.version);
                ids.extend(state.uncommitted_holds_begun_before(cutoff).into_iter().filter(|id| {
                    !facts(id).is_some_and(|version| {
                        self.confirmed.contains(&(*shard, id.clone(), version))
                    })
                }));
            }
        }
        for id in ids {
            if !self.doubts.contains_key(&(node, id.clone())) {
                self.ask(node, id);
            }
        }
    }

    /// A doubt that could not be decided is asked about afresh.
    pub(super) fn requery(&mut self, selector: u8) {
        let keys: Vec<(u8, ReservationId)> = self.doubts.keys().cloned().collect();
        let Some((node, id)) = pick(&keys, selector).cloned() else { return };
        let doubt = self.doubts.get_mut(&(node, id.clone())).expect("picked");
        let answered: BTreeSet<u32> = doubt.facts.keys().copied().collect();
        if !needed(&id, &doubt.facts).iter().all(|s| answered.contains(s)) {
            return; // answers still on their way
        }
        self.doubts.remove(&(node, id.clone()));
        self.ask(node, id);
    }

    /// Heals a cluster run: delivers everything, lets time pass until every
    /// doubt is decided, confirms committed lines whose hold is gone (the
    /// notice died with its sender), lets every TTL pass; then no hold is
    /// open, every hold ended once, and nothing acknowledged was lost.
    pub fn finish_cluster(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..50 {
            while !self.network.is_empty() {
                let message = self.network.remove(0);
                self.deliver(message, false)?;
                self.persist()?;
            }
            // Time passes; every shard's actor ticks (abandoning Reserves
            // left PENDING past their timeout, expiring holds).
            self.now += PENDING_TIMEOUT_MS;
            let shards: Vec<u32> = self.shards.keys().copied().collect();
            for shard in shards {
                self.on_shard(shard, |_, _, _| ());
            }
            let before = self.doubts.len();
            for node in self.nodes() {
                self.sweep(node);
            }
            if self.doubts.is_empty() && before == 0 {
                break;
            }
            let keys: Vec<(u8, ReservationId)> = self.doubts.keys().cloned().collect();
            for (node, id) in keys {
                self.doubts.remove(&(node, id.clone()));
                self.ask(node, id);
            }
        }
        let stuck: Vec<_> = self.doubts.iter().map(|(k, d)| (k.clone(), d.facts.clone())).collect();
        prop_assert!(self.doubts.is_empty(), "doubts never decided: {:?}", stuck);
        self.confirm_shipped();
        self.pass_every_ttl(3)?;
        self.check_all_ended()
    }

    /// A committed line whose line shard no longer holds it shipped in full
    /// (the home asks; its notice may have died with the line's node).
    fn confirm_shipped(&mut self) {
        for id in self.ids.clone() {
            let home = shard_of(id.as_str());
            let Ok(view) = self.shards[&home].get(&id) else { continue };
            if view.state != atp_core::reservation::ReservationState::Committed {
                continue;
            }
            for line in view.lines.iter().filter(|l| l.shipped < l.committed) {
                let shard = shard_of(line.sku.as_str());
                let held = self
                    .shards
                    .get(&shard)
                    .is_some_and(|state| state.has_line(&id, &line.sku, &line.location));
                if !held {
                    let notice = atp_core::shard::ShipNotice {
                        reservation: id.clone(),
                        sku: line.sku.clone(),
                        location: line.location.clone(),
                        shipped_total: line.committed,
                    };
                    self.on_shard(home, |state, _, now| state.note_shipped(&notice, now));
                }
            }
        }
    }
}
