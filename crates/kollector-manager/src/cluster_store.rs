//! The manager's view of etcd: monitors (desired state), live collectors,
//! assignments and drain marks. See `kollector_coordination::keys` for the
//! layout.
//!
//! Monitor writes are compare-and-swap (create only if absent, update only
//! if unchanged since read), so two managers editing at once cannot lose an
//! update. Assignment writes go through the leader guard. An assignment's
//! **epoch** is the etcd revision at which it was last written (its key's
//! mod revision): it grows with every move, which is what fencing needs.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use kollector_coordination::election::{guarded_txn, LeaderToken};
use kollector_coordination::keys::Keys;
use kollector_coordination::membership::CollectorRecord;
use kollector_coordination::CoordinationError;
use kollector_core::{CollectorId, Epoch, MonitorId, MonitorSpec};
use serde::{Deserialize, Serialize};

/// The value stored under `<prefix>/assignments/<monitor>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AssignmentValue {
    collector: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub collector: CollectorId,
    pub epoch: Epoch,
}

/// A monitor as stored, with the revision to compare against on update.
#[derive(Clone, Debug)]
pub struct StoredMonitor {
    pub spec: MonitorSpec,
    pub mod_revision: i64,
}

#[derive(Clone)]
pub struct ClusterStore {
    client: Client,
    keys: Keys,
}

fn bad(key: &[u8], e: impl std::fmt::Display) -> CoordinationError {
    CoordinationError::BadData { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() }
}

impl ClusterStore {
    pub fn new(client: Client, keys: Keys) -> Self {
        ClusterStore { client, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    async fn list(&self, dir: &str) -> Result<(Vec<etcd_client::KeyValue>, i64), CoordinationError> {
        let mut c = self.client.clone();
        let resp = c.get(dir, Some(GetOptions::new().with_prefix())).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((resp.kvs().to_vec(), rev))
    }

    pub async fn monitors(&self) -> Result<BTreeMap<MonitorId, StoredMonitor>, CoordinationError> {
        let (kvs, _) = self.list(&self.keys.monitors()).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let spec: MonitorSpec = serde_json::from_slice(kv.value()).map_err(|e| bad(kv.key(), e))?;
            out.insert(spec.id.clone(), StoredMonitor { spec, mod_revision: kv.mod_revision() });
        }
        Ok(out)
    }

    pub async fn monitor(&self, id: &MonitorId) -> Result<Option<StoredMonitor>, CoordinationError> {
        let mut c = self.client.clone();
        let resp = c.get(self.keys.monitor(id.as_str()), None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => {
                let spec: MonitorSpec = serde_json::from_slice(kv.value()).map_err(|e| bad(kv.key(), e))?;
                Ok(Some(StoredMonitor { spec, mod_revision: kv.mod_revision() }))
            }
        }
    }

    /// Creates a monitor; false if the id is taken.
    pub async fn create_monitor(&self, spec: &MonitorSpec) -> Result<bool, CoordinationError> {
        let key = self.keys.monitor(spec.id.as_str());
        let value = serde_json::to_vec(spec).map_err(|e| bad(key.as_bytes(), e))?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        Ok(c.txn(txn).await?.succeeded())
    }

    /// Replaces a monitor if it is unchanged since `expected_revision`.
    pub async fn update_monitor(&self, spec: &MonitorSpec, expected_revision: i64) -> Result<bool, CoordinationError> {
        let key = self.keys.monitor(spec.id.as_str());
        let value = serde_json::to_vec(spec).map_err(|e| bad(key.as_bytes(), e))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        Ok(c.txn(txn).await?.succeeded())
    }

    /// Deletes a monitor; false if it did not exist.
    pub async fn delete_monitor(&self, id: &MonitorId) -> Result<bool, CoordinationError> {
        let mut c = self.client.clone();
        Ok(c.delete(self.keys.monitor(id.as_str()), None).await?.deleted() > 0)
    }

    /// Live collectors (their lease-bound keys).
    pub async fn collectors(&self) -> Result<BTreeMap<CollectorId, CollectorRecord>, CoordinationError> {
        let dir = self.keys.collectors();
        let (kvs, _) = self.list(&dir).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(id) = self.keys.id_in(&dir, &key).and_then(|id| CollectorId::new(id).ok()) else { continue };
            match serde_json::from_slice::<CollectorRecord>(kv.value()) {
                Ok(rec) => {
                    out.insert(id, rec);
                }
                Err(e) => tracing::warn!("ignoring collector key {key}: {e}"),
            }
        }
        Ok(out)
    }

    /// Current assignments with their epochs, and the store revision read at.
    pub async fn assignments(&self) -> Result<(BTreeMap<MonitorId, Assignment>, i64), CoordinationError> {
        let dir = self.keys.assignments();
        let (kvs, rev) = self.list(&dir).await?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(id) = self.keys.id_in(&dir, &key).and_then(|id| MonitorId::new(id).ok()) else { continue };
            let v: AssignmentValue = serde_json::from_slice(kv.value()).map_err(|e| bad(kv.key(), e))?;
            let collector = CollectorId::new(v.collector).map_err(|e| bad(kv.key(), e))?;
            out.insert(id, Assignment { collector, epoch: kv.mod_revision() as Epoch });
        }
        Ok((out, rev))
    }

    /// Writes assignment changes (Some = assign, None = remove) in one
    /// leader-guarded transaction. Returns its revision: the new epoch.
    pub async fn write_assignments(
        &self,
        token: &LeaderToken,
        changes: &[(MonitorId, Option<CollectorId>)],
    ) -> Result<i64, CoordinationError> {
        let mut ops = Vec::with_capacity(changes.len());
        for (m, c) in changes {
            let key = self.keys.assignment(m.as_str());
            match c {
                Some(c) => {
                    let v = serde_json::to_vec(&AssignmentValue { collector: c.to_string() })
                        .map_err(|e| bad(key.as_bytes(), e))?;
                    ops.push(TxnOp::put(key, v, None));
                }
                None => ops.push(TxnOp::delete(key, None)),
            }
        }
        let mut c = self.client.clone();
        guarded_txn(&mut c, token, ops).await
    }

    fn drain_dir(&self) -> String {
        self.keys.draining()
    }

    pub async fn draining(&self) -> Result<BTreeSet<CollectorId>, CoordinationError> {
        let dir = self.drain_dir();
        let (kvs, _) = self.list(&dir).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                self.keys.id_in(&dir, &key).and_then(|id| CollectorId::new(id).ok())
            })
            .collect())
    }

    pub async fn set_draining(&self, id: &CollectorId, draining: bool) -> Result<(), CoordinationError> {
        let key = format!("{}{}", self.drain_dir(), id);
        let mut c = self.client.clone();
        if draining {
            c.put(key, "1", None).await?;
        } else {
            c.delete(key, None).await?;
        }
        Ok(())
    }

    /// The directories whose changes should trigger a re-plan.
    pub fn watched_prefixes(&self) -> Vec<String> {
        vec![self.keys.collectors(), self.keys.monitors(), self.drain_dir()]
    }
}
