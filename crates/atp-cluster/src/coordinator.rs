//! The coordinator: one node at a time, elected through etcd, writes the
//! assignment table once and keeps the "down since" marks the reassign
//! grace period is measured from.
//!
//! Election: a transaction "`/atp/<cluster>/coordinator` absent → put my
//! node id bound to my lease". The winner's key create revision fences every
//! write it makes (each is a transaction comparing it), so a coordinator
//! whose lease expired cannot write after its successor was elected. Losers
//! watch the key and campaign again when it is deleted (its lease expired
//! or was revoked).
//!
//! The table is written once, by rendezvous hashing over the members
//! present when at least `initial_members` are; afterwards it is sticky: a
//! node that leaves keeps its shards (they wait for it), a node that joins
//! gets none (moves are a later step). Only `reassign` rewrites entries.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::assignment::{Assignment, ClusterKeys, rendezvous};
use crate::membership::{LeaseState, Members, MembershipConfig, MembershipError, ms};
use crate::store::{Compare, Store, StoreError, Txn, TxnOp, Watch, describe};

/// Milliseconds since the Unix epoch, as the caller's clock says (injected
/// so tests on paused time can move it).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// A node's candidacy for coordinator. Dropping it stops the task (the
/// coordinator key stays until the lease goes).
pub struct Coordinator {
    leading: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Coordinator {
    /// Campaigns whenever `lease` is held and the coordinator key is free;
    /// while elected, writes the table once `initial_members` nodes are in
    /// `members`, and keeps the down marks. Must be called inside a tokio
    /// runtime.
    pub fn new<S: Store>(
        store: S,
        config: MembershipConfig,
        initial_members: usize,
        clock: Clock,
        lease: watch::Receiver<LeaseState>,
        members: watch::Receiver<Members>,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        if initial_members == 0 {
            return Err(MembershipError::InvalidConfig("initial_members must be at least 1"));
        }
        let (leading, _) = watch::channel(false);
        let candidate = Candidate {
            store,
            keys: ClusterKeys::new(&config.cluster),
            config,
            initial_members,
            clock,
            leading: leading.clone(),
        };
        let task = tokio::spawn(candidate.run(lease, members));
        Ok(Self { leading, task })
    }

    /// Whether this node is the coordinator (as of its last election or step-down).
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Candidate<S> {
    store: S,
    keys: ClusterKeys,
    config: MembershipConfig,
    initial_members: usize,
    clock: Clock,
    leading: watch::Sender<bool>,
}

/// What a campaign found.
enum Campaign {
    /// Elected (or already elected under this lease): the key's create revision.
    Elected(i64),
    /// Another node leads, as of this revision.
    Follower(i64),
    /// The key was deleted between the transaction and the read: try again.
    Vacant,
}

/// Why leading stopped.
enum Stop {
    /// The lease changed or the stores' answers say another node leads.
    Deposed,
    /// The lease or members sender is gone: the node shuts down.
    Closed,
}

impl<S: Store> Candidate<S> {
    async fn run(
        self,
        mut lease: watch::Receiver<LeaseState>,
        mut members: watch::Receiver<Members>,
    ) {
        let backoff = ms(self.config.retry_backoff_ms);
        loop {
            self.leading.send_replace(false);
            let held = lease.wait_for(|state| matches!(state, LeaseState::Held { .. })).await;
            let Ok(state) = held.map(|state| state.clone()) else { return };
            let LeaseState::Held { lease_id, .. } = state else { unreachable!("waited for held") };
            match self.campaign(lease_id).await {
                Ok(Campaign::Elected(election)) => {
                    tracing::info!(node = %self.config.node_id, election, "elected coordinator");
                    self.leading.send_replace(true);
                    match self.lead(lease_id, election, &mut lease, &mut members).await {
                        Stop::Deposed => {
                            tracing::info!(node = %self.config.node_id, "no longer coordinator");
                        }
                        Stop::Closed => return,
                    }
                }
                Ok(Campaign::Follower(revision)) => {
                    if self.wait_for_vacancy(revision, lease_id, &mut lease).await.is_err() {
                        return;
                    }
                }
                Ok(Campaign::Vacant) => {}
                Err(error) => {
                    tracing::debug!(error = describe(&error), "campaign failed; retrying");
                    sleep(backoff).await;
                }
            }
        }
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = ms(self.config.request_timeout_ms);
        timeout(limit, call).await.unwrap_or(Err(StoreError::Timeout(limit)))
    }

    /// Tries to become the coordinator under `lease_id`.
    async fn campaign(&self, lease_id: i64) -> Result<Campaign, StoreError> {
        let key = self.keys.coordinator();
        let txn = Txn {
            compares: vec![Compare::absent(&key)],
            success: vec![TxnOp::put(&key, self.config.node_id.as_bytes(), lease_id)],
            failure: Vec::new(),
        };
        let outcome = self.call(self.store.txn(txn)).await?;
        if outcome.succeeded {
            return Ok(Campaign::Elected(outcome.revision));
        }
        let (current, revision) = self.call(self.store.get(&key)).await?;
        match current {
            Some(kv) if kv.lease_id == lease_id => Ok(Campaign::Elected(kv.create_revision)),
            Some(_) => Ok(Campaign::Follower(revision)),
            None => Ok(Campaign::Vacant),
        }
    }

    /// Waits until the coordinator key is deleted after `revision`, or the
    /// lease changes. `Err` when the node shuts down.
    async fn wait_for_vacancy(
        &self,
        revision: i64,
        lease_id: i64,
        lease: &mut watch::Receiver<LeaseState>,
    ) -> Result<(), ()> {
        let key = self.keys.coordinator();
        let mut stream = match self.call(self.store.watch_prefix(&key, revision + 1)).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(error = describe(&error), "watching the coordinator key failed");
                sleep(ms(self.config.retry_backoff_ms)).await;
                return Ok(());
            }
        };
        loop {
            tokio::select! {
                changed = lease.changed() => {
                    changed.map_err(|_| ())?;
                    if !matches!(*lease.borrow(), LeaseState::Held { lease_id: id, .. } if id == lease_id) {
                        return Ok(());
                    }
                }
                events = stream.next() => match events {
                    Ok(events) => {
                        if events.iter().any(|event| event.key == key && event.value.is_none()) {
                            return Ok(());
                        }
                    }
                    Err(_) => {
                        sleep(ms(self.config.retry_backoff_ms)).await;
                        return Ok(());
                    }
                },
            }
        }
    }

    async fn lead(
        &self,
        lease_id: i64,
        election: i64,
        lease: &mut watch::Receiver<LeaseState>,
        members: &mut watch::Receiver<Members>,
    ) -> Stop {
        let backoff = ms(self.config.retry_backoff_ms);
        loop {
            let current = members.borrow_and_update().clone();
            let retry = match self.tend(election, &current).await {
                Ok(true) => false,
                Ok(false) => return Stop::Deposed,
                Err(error) => {
                    tracing::debug!(error = describe(&error), "coordinator write failed; retrying");
                    true
                }
            };
            // Renewals change the lease state every keepalive; only a new
            // member list, a lost lease or a retry calls for another round.
            loop {
                tokio::select! {
                    changed = lease.changed() => {
                        if changed.is_err() {
                            return Stop::Closed;
                        }
                        if !matches!(*lease.borrow(), LeaseState::Held { lease_id: id, .. } if id == lease_id) {
                            return Stop::Deposed;
                        }
                    }
                    changed = members.changed() => {
                        if changed.is_err() {
                            return Stop::Closed;
                        }
                        break;
                    }
                    () = sleep(backoff), if retry => break,
                }
            }
        }
    }

    /// One round of the coordinator's duties; `Ok(false)` if a fenced write
    /// was refused because another node leads.
    async fn tend(&self, election: i64, members: &Members) -> Result<bool, StoreError> {
        if members.revision == 0 {
            return Ok(true);
        }
        let fence = Compare::create_revision(self.keys.coordinator(), election);
        let (table, _) = self.call(self.store.get(&self.keys.assignment())).await?;
        let Some(table) = table else {
            return self.write_table(fence, members).await;
        };
        let table = match Assignment::decode(&table.value) {
            Ok(table) => table,
            Err(error) => {
                tracing::error!(error = %error, "unreadable assignment table; not touching it");
                return Ok(true);
            }
        };
        self.mark_down(fence, &table, members).await
    }

    async fn write_table(&self, fence: Compare, members: &Members) -> Result<bool, StoreError> {
        if members.nodes.len() < self.initial_members {
            return Ok(true);
        }
        let table = rendezvous(members.nodes.keys().map(String::as_str))
            .expect("at least one member (initial_members >= 1)");
        let key = self.keys.assignment();
        let txn = Txn {
            compares: vec![fence.clone(), Compare::absent(&key)],
            success: vec![TxnOp::put(&key, table.encode(), 0)],
            failure: Vec::new(),
        };
        let outcome = self.call(self.store.txn(txn)).await?;
        if outcome.succeeded {
            let nodes: Vec<&String> = members.nodes.keys().collect();
            tracing::info!(revision = outcome.revision, ?nodes, "wrote the assignment table");
            return Ok(true);
        }
        // Written by a previous coordinator in between, or deposed.
        self.still_leading(&fence).await
    }

    /// Marks every node of the table that has no node key as down since now
    /// (if not yet marked), and clears the marks of nodes that are back.
    async fn mark_down(
        &self,
        fence: Compare,
        table: &Assignment,
        members: &Members,
    ) -> Result<bool, StoreError> {
        let marks = self.call(self.store.get_prefix(&self.keys.down_prefix())).await?;
        let marked: BTreeSet<&str> = marks
            .kvs
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(&self.keys.down_prefix()))
            .collect();
        let assigned = table.nodes();
        let mut compares = vec![fence.clone()];
        let mut success = Vec::new();
        let now = (self.clock)();
        for node in &assigned {
            if !members.nodes.contains_key(*node) && !marked.contains(node) {
                compares.push(Compare::absent(self.keys.down(node)));
                success.push(TxnOp::put(self.keys.down(node), now.to_string(), 0));
                tracing::warn!(node, "a node with shards is down; its shards wait for it");
            }
        }
        for node in &marked {
            if members.nodes.contains_key(*node) || !assigned.contains(node) {
                success.push(TxnOp::delete(self.keys.down(node)));
            }
        }
        if success.is_empty() {
            return Ok(true);
        }
        let outcome = self.call(self.store.txn(Txn { compares, success, failure: Vec::new() }));
        if outcome.await?.succeeded {
            return Ok(true);
        }
        self.still_leading(&fence).await
    }

    async fn still_leading(&self, fence: &Compare) -> Result<bool, StoreError> {
        let (current, _) = self.call(self.store.get(&fence.key)).await?;
        let election = match fence.target {
            crate::store::CompareTarget::CreateRevision(revision) => revision,
            _ => unreachable!("the fence compares the create revision"),
        };
        Ok(current.is_some_and(|kv| kv.create_revision == election))
    }
}
