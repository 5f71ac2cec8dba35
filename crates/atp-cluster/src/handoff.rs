//! The etcd step of a planned handoff (`docs/PROTOCOL.md`, "Planned
//! handoff", step 4): the old owner, holding the shard's claim under epoch
//! `e`, assigns the shard to the new owner and deletes its claim in one
//! transaction guarded by that claim's create revision and the table's mod
//! revision. Nothing else deletes a live claim, so exactly one node owns
//! the shard before and after: the old one until the transaction, the new
//! one once it claims (a claim needs the key absent).

use tokio::time::timeout;

use crate::assignment::{Assignment, ClusterKeys, SHARD_COUNT};
use crate::membership::ms;
use crate::store::{Compare, Store, StoreError, Txn, TxnOp};

/// Tries of the transaction when other changes of the table race it.
const MAX_TABLE_RACES: usize = 32;

/// One handoff's etcd step, as the old owner asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandOver {
    /// The shard.
    pub shard: u32,
    /// The old owner (the caller).
    pub from: String,
    /// Its claim's create revision (its epoch of the shard).
    pub epoch: i64,
    /// The new owner.
    pub to: String,
    /// How long each store call may take.
    pub request_timeout_ms: u64,
}

/// How the etcd step ended.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// Nothing changed: the caller's claim or the table is not what the
    /// move assumed (the caller still owns the shard if its claim stands).
    #[error("refused: {0}")]
    Refused(String),
    /// etcd did not answer in time or failed: the transaction may or may
    /// not have been applied (read the claim to know).
    #[error("etcd did not confirm the handoff of shard {shard}: {source}")]
    Unknown {
        /// The shard.
        shard: u32,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

/// Assigns `request.shard` to `request.to` and deletes the caller's claim
/// in one transaction; returns its revision.
pub async fn hand_over<S: Store>(
    store: &S,
    keys: &ClusterKeys,
    request: &HandOver,
) -> Result<i64, HandOverError> {
    let shard = request.shard;
    if shard >= SHARD_COUNT {
        return Err(HandOverError::Refused(format!("shard {shard} does not exist")));
    }
    let limit = ms(request.request_timeout_ms);
    let unknown = |source| HandOverError::Unknown { shard, source };
    let claim = keys.claim(shard);
    // Other moves change the one table too: a refusal while the claim
    // still stands is such a race, and the transaction is tried again.
    for _ in 0..MAX_TABLE_RACES {
        let read = timeout(limit, store.get(&keys.assignment())).await;
        let (table_kv, _) =
            read.map_err(|_| unknown(StoreError::Timeout(limit)))?.map_err(unknown)?;
        let Some(table_kv) = table_kv else {
            return Err(HandOverError::Refused("no assignment table yet".into()));
        };
        let mut table = Assignment::decode(&table_kv.value).map_err(|error| {
            HandOverError::Refused(format!("unreadable assignment table: {error}"))
        })?;
        if table.owner(shard) != request.from {
            return Err(HandOverError::Refused(format!(
                "shard {shard} is assigned to {:?}, not to {:?}",
                table.owner(shard),
                request.from
            )));
        }
        table.set_owner(shard, request.to.clone());
        let txn = Txn {
            compares: vec![
                Compare::mod_revision(keys.assignment(), table_kv.mod_revision),
                Compare::create_revision(&claim, request.epoch),
                Compare::value(&claim, request.from.as_bytes()),
            ],
            success: vec![TxnOp::put(keys.assignment(), table.encode(), 0), TxnOp::delete(&claim)],
            failure: Vec::new(),
        };
        let outcome = timeout(limit, store.txn(txn)).await;
        let outcome = outcome.map_err(|_| unknown(StoreError::Timeout(limit)))?.map_err(unknown)?;
        if outcome.succeeded {
            return Ok(outcome.revision);
        }
        let held =
            claim_of(store, keys, shard, request.request_timeout_ms).await.map_err(unknown)?;
        if held != Some((request.from.clone(), request.epoch)) {
            return Err(HandOverError::Refused(format!(
                "shard {shard}: the claim under epoch {} is gone or another's",
                request.epoch
            )));
        }
    }
    Err(HandOverError::Refused(format!(
        "shard {shard}: the assignment table kept changing ({MAX_TABLE_RACES} tries)"
    )))
}

/// The node the assignment table gives `shard` (None: no table yet, or an
/// unreadable one). After
/// a handover whose outcome is unknown this says which way it went: the
/// claim alone does not (it also goes when its lease expires).
pub async fn assigned_owner<S: Store>(
    store: &S,
    keys: &ClusterKeys,
    shard: u32,
    request_timeout_ms: u64,
) -> Result<Option<String>, StoreError> {
    let limit = ms(request_timeout_ms);
    let (table, _) = timeout(limit, store.get(&keys.assignment()))
        .await
        .map_err(|_| StoreError::Timeout(limit))??;
    let Some(table) = table else { return Ok(None) };
    Ok(Assignment::decode(&table.value).ok().map(|table| table.owner(shard).to_owned()))
}

/// The node holding `shard`'s claim and its epoch, if claimed.
pub async fn claim_of<S: Store>(
    store: &S,
    keys: &ClusterKeys,
    shard: u32,
    request_timeout_ms: u64,
) -> Result<Option<(String, i64)>, StoreError> {
    let limit = ms(request_timeout_ms);
    let (claim, _) = timeout(limit, store.get(&keys.claim(shard)))
        .await
        .map_err(|_| StoreError::Timeout(limit))??;
    Ok(claim.map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryEtcd;

    #[tokio::test]
    async fn only_the_claim_holder_under_its_epoch_hands_a_shard_over() {
        let store = MemoryEtcd::new();
        let keys = ClusterKeys::new("c");
        let table = Assignment::new(vec!["a".to_owned(); SHARD_COUNT as usize]);
        store.put(&keys.assignment(), &table.encode(), 0).await.expect("table");
        store.put(&keys.claim(5), b"a", 0).await.expect("claim");
        let (_, epoch) = claim_of(&store, &keys, 5, 1_000).await.expect("read").expect("claimed");
        let request = HandOver {
            shard: 5,
            from: "a".into(),
            epoch,
            to: "b".into(),
            request_timeout_ms: 1_000,
        };

        let stale = HandOver { epoch: epoch - 1, ..request.clone() };
        let refused = hand_over(&store, &keys, &stale).await.expect_err("a stale epoch");
        assert!(matches!(refused, HandOverError::Refused(_)), "{refused}");
        let not_mine = HandOver { from: "b".into(), ..request.clone() };
        assert!(matches!(
            hand_over(&store, &keys, &not_mine).await,
            Err(HandOverError::Refused(_))
        ));
        assert!(
            claim_of(&store, &keys, 5, 1_000).await.expect("read").is_some(),
            "nothing changed"
        );

        hand_over(&store, &keys, &request).await.expect("handed over");
        assert_eq!(claim_of(&store, &keys, 5, 1_000).await.expect("read"), None, "claim deleted");
        let (table, _) = store.get(&keys.assignment()).await.expect("read");
        let table = Assignment::decode(&table.expect("table").value).expect("decodes");
        assert_eq!(table.owner(5), "b");
        assert_eq!(table.owner(6), "a", "only that shard moved");
        assert!(
            matches!(hand_over(&store, &keys, &request).await, Err(HandOverError::Refused(_))),
            "a second time: the claim is gone"
        );
    }
}
