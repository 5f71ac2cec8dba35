//! [`Store`] over a real etcd (etcd-client, plain gRPC, no TLS).
//!
//! etcd-client re-dials unary calls on its own but never re-creates a broken
//! keepalive or watch stream: the membership loop opens a new one after any
//! error (see `membership.rs`).

use std::time::Duration;

use etcd_client::{
    Client, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, PutOptions,
    WatchOptions, WatchStream,
};

use crate::store::{
    Compare, CompareTarget, Keeper, KeyValue, Lease, MAX_TXN_OPS, Snapshot, Store, StoreError, Txn,
    TxnOp, TxnOutcome, Watch, WatchEvent, ttl_seconds,
};

/// HTTP/2 pings on the connection, so a silently dead one (half-open TCP)
/// fails its streams instead of leaving a member watch waiting forever. Not
/// below etcd's `--grpc-keepalive-min-time` (5 s), or etcd closes the
/// connection for pinging too often.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is dropped.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster. Cloning shares it.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`). Only the connection
    /// attempt is bounded by `connect_timeout`; each call is bounded by its
    /// caller (a per-request timeout here would also cut long-lived streams).
    pub async fn connect(
        endpoints: &[String],
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_keep_alive(HTTP2_PING_INTERVAL, HTTP2_PING_TIMEOUT);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Self { client })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// etcd answers NOT_FOUND "etcdserver: requested lease not found".
fn lease_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("lease not found"))
}

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease_id: kv.lease(),
    }
}

fn etcd_compare(compare: Compare) -> etcd_client::Compare {
    let key = compare.key.into_bytes();
    match compare.target {
        CompareTarget::Absent => etcd_client::Compare::version(key, CompareOp::Equal, 0),
        CompareTarget::CreateRevision(revision) => {
            etcd_client::Compare::create_revision(key, CompareOp::Equal, revision)
        }
        CompareTarget::ModRevision(revision) => {
            etcd_client::Compare::mod_revision(key, CompareOp::Equal, revision)
        }
        CompareTarget::Version(version) => {
            etcd_client::Compare::version(key, CompareOp::Equal, version)
        }
        CompareTarget::Value(value) => etcd_client::Compare::value(key, CompareOp::Equal, value),
    }
}

fn etcd_op(op: TxnOp) -> etcd_client::TxnOp {
    match op {
        TxnOp::Put { key, value, lease_id } => {
            let options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
            etcd_client::TxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => etcd_client::TxnOp::delete(key, None),
    }
}

/// The lease a transaction puts to, for a `LeaseNotFound` error (etcd does
/// not say which).
fn first_lease(txn: &Txn) -> i64 {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            TxnOp::Put { lease_id, .. } if *lease_id != 0 => Some(*lease_id),
            _ => None,
        })
        .unwrap_or(0)
}

impl Store for EtcdStore {
    type Keeper = EtcdKeeper;
    type Watch = EtcdWatch;

    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let response = self.client().lease_grant(ttl_seconds(ttl), None).await?;
        let seconds = u64::try_from(response.ttl()).unwrap_or(0);
        Ok(Lease { id: response.id(), ttl: Duration::from_secs(seconds) })
    }

    async fn revoke(&self, lease_id: i64) -> Result<(), StoreError> {
        match self.client().lease_revoke(lease_id).await {
            Ok(_) => Ok(()),
            Err(error) if lease_not_found(&error) => Err(StoreError::LeaseNotFound(lease_id)),
            Err(error) => Err(error.into()),
        }
    }

    async fn put(&self, key: &str, value: &[u8], lease_id: i64) -> Result<i64, StoreError> {
        let options = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        match self.client().put(key, value, options).await {
            Ok(response) => Ok(header_revision(response.header())),
            Err(error) if lease_not_found(&error) => Err(StoreError::LeaseNotFound(lease_id)),
            Err(error) => Err(error.into()),
        }
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
        let response = self.client().get(key, None).await?;
        let kv = response.kvs().first().map(key_value);
        Ok((kv, header_revision(response.header())))
    }

    async fn delete(&self, key: &str) -> Result<i64, StoreError> {
        let response = self.client().delete(key, None).await?;
        Ok(header_revision(response.header()))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let largest = txn.compares.len().max(txn.success.len()).max(txn.failure.len());
        if largest > MAX_TXN_OPS {
            return Err(StoreError::TxnTooLarge(largest));
        }
        let lease_id = first_lease(&txn);
        let request = etcd_client::Txn::new()
            .when(txn.compares.into_iter().map(etcd_compare).collect::<Vec<_>>())
            .and_then(txn.success.into_iter().map(etcd_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(etcd_op).collect::<Vec<_>>());
        match self.client().txn(request).await {
            Ok(response) => Ok(TxnOutcome {
                succeeded: response.succeeded(),
                revision: header_revision(response.header()),
            }),
            Err(error) if lease_not_found(&error) => Err(StoreError::LeaseNotFound(lease_id)),
            Err(error) => Err(error.into()),
        }
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let response = self.client().get(prefix, Some(GetOptions::new().with_prefix())).await?;
        let kvs = response.kvs().iter().map(key_value).collect();
        Ok(Snapshot { revision: header_revision(response.header()), kvs })
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.client().compact(revision, None).await?;
        Ok(())
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<EtcdKeeper, StoreError> {
        // Opening the stream sends a first keepalive and reads its answer; an
        // unknown lease comes back as this error.
        match self.client().lease_keep_alive(lease_id).await {
            Ok((keeper, stream)) => Ok(EtcdKeeper { keeper, stream }),
            Err(etcd_client::Error::LeaseKeepAliveError(message))
                if message.contains("lease not found") =>
            {
                Err(StoreError::LeaseNotFound(lease_id))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<EtcdWatch, StoreError> {
        let options = WatchOptions::new().with_prefix().with_start_revision(start_revision);
        let stream = self.client().watch(prefix, Some(options)).await?;
        Ok(EtcdWatch { stream })
    }
}

/// A keepalive stream on a real etcd.
pub struct EtcdKeeper {
    keeper: etcd_client::LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Keeper for EtcdKeeper {
    async fn renew(&mut self) -> Result<Option<Duration>, StoreError> {
        self.keeper.keep_alive().await?;
        match self.stream.message().await? {
            // etcd answers a keepalive for an unknown lease with TTL 0 (or less).
            Some(response) if response.ttl() > 0 => {
                let seconds = u64::try_from(response.ttl()).unwrap_or(0);
                Ok(Some(Duration::from_secs(seconds)))
            }
            Some(_) => Ok(None),
            None => Err(StoreError::StreamClosed),
        }
    }
}

/// A watch stream on a real etcd.
pub struct EtcdWatch {
    stream: WatchStream,
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            let Some(response) = self.stream.message().await? else {
                return Err(StoreError::StreamClosed);
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Err(StoreError::Compacted {
                        compact_revision: response.compact_revision(),
                    });
                }
                return Err(StoreError::StreamClosed);
            }
            // The "created" answer and progress notifications carry no events.
            if response.events().is_empty() {
                continue;
            }
            let mut events = Vec::with_capacity(response.events().len());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let (value, create_revision, lease_id) = match event.event_type() {
                    EventType::Put => (Some(kv.value().to_vec()), kv.create_revision(), kv.lease()),
                    EventType::Delete => (None, 0, 0),
                };
                events.push(WatchEvent {
                    revision: kv.mod_revision(),
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value,
                    create_revision,
                    lease_id,
                });
            }
            return Ok(events);
        }
    }
}
