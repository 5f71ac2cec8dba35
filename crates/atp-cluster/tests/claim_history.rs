//! The epoch checker's etcd side on a real etcd: `claim_history` returns
//! every put of a claim key since revision 1 (also of keys deleted since),
//! each with its create revision, and nothing else.

use atp_cluster::ClusterKeys;
use atp_cluster::store::Store;
use atp_cluster::testing::EtcdProcess;
use atp_cluster::testing::epochs::{ClaimPut, claim_history};

#[tokio::test]
async fn the_history_holds_every_claim_put_even_deleted_ones() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let store = etcd.store().await;
    let keys = ClusterKeys::new("history");
    let other = ClusterKeys::new("other");
    let first = store.put(&keys.claim(7), b"node-a", 0).await.expect("put");
    store.put(&other.claim(7), b"node-x", 0).await.expect("another cluster");
    store.put(&keys.assignment(), b"table", 0).await.expect("not a claim");
    store.delete(&keys.claim(7)).await.expect("delete");
    let second = store.put(&keys.claim(7), b"node-b", 0).await.expect("put again");
    let third = store.put(&keys.claim(9), b"node-b", 0).await.expect("put");
    let history = claim_history(&etcd.endpoint(), "history").await.expect("the history");
    let claim = |shard, epoch, node: &str| ClaimPut { shard, epoch, node: node.to_owned() };
    assert_eq!(
        history,
        [claim(7, first, "node-a"), claim(7, second, "node-b"), claim(9, third, "node-b")]
    );
}
