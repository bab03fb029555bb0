//! The manager's writes to etcd: monitors (desired state), assignment
//! records, drain marks and revocations; and the decoding of a spec. Reads
//! go through the watched view (`cluster_view.rs`), never a scan here. See
//! `kollector_coordination::keys` for the layout.
//!
//! Monitor writes are compare-and-swap (create only if absent, update only
//! if unchanged since read), so two managers editing at once cannot lose an
//! update. A monitor's **generation** is the etcd revision of its spec's
//! latest write (its key's mod revision): it only grows, across updates and
//! across a delete followed by a re-create of the same id, so a collector can
//! never mistake a new spec for an old one.
//!
//! Assignment records (see `decisions.rs`) are written only by the leader,
//! in chunks that fit etcd's transaction limits, each guarded by the leader
//! key. A spec that does not decode is reported, never fatal to a read.
//! Secrets in specs are sealed before they reach etcd and opened when read.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use kollector_coordination::election::{guarded_txn, guarded_txn_if, LeaderToken};
use kollector_coordination::keys::Keys;
use kollector_coordination::membership::CollectorRecord;
use kollector_coordination::CoordinationError;
use kollector_core::{CollectorId, Epoch, MonitorId, MonitorSpec};
use kollector_security::sealing::{open_spec, seal_spec};
use kollector_security::{Keyring, SealError};

use crate::cluster_view::Kv;
use crate::decisions::{chunk_writes, RecordWrite, TxnLimits};

/// Largest etcd answer a read accepts (a page of specs).
const MAX_READ_BYTES: usize = 256 * 1024 * 1024;

/// A monitor as read; `spec.generation` is `mod_revision`; secrets opened.
#[derive(Clone, Debug)]
pub struct StoredMonitor {
    pub spec: MonitorSpec,
    pub mod_revision: i64,
    /// A secret of it is stored sealed with a key other than the first of
    /// this node's key file (or not sealed): the leader re-seals it.
    pub needs_reseal: bool,
}

/// The value of a revocation mark.
#[derive(serde::Serialize)]
struct RevocationMark {
    lease: i64,
}

/// A live collector: its record and the lease its key is bound to.
#[derive(Clone, Debug)]
pub struct LiveCollector {
    pub record: CollectorRecord,
    pub lease: i64,
}

/// The outcome of writing one chunk of assignment records.
#[derive(Debug)]
pub struct ChunkOutcome {
    pub writes: Vec<RecordWrite>,
    /// The revision of the write (the epoch of records it set), or why it failed.
    pub result: Result<Epoch, CoordinationError>,
}

#[derive(Clone)]
pub struct ClusterStore {
    client: Client,
    keys: Keys,
    /// Opens the sealed secrets of specs read (see `kollector_security::sealing`).
    secrets: Option<Arc<Keyring>>,
}

fn bad(key: &[u8], e: impl std::fmt::Display) -> CoordinationError {
    CoordinationError::BadData { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() }
}

impl ClusterStore {
    pub fn new(client: Client, keys: Keys) -> Self {
        ClusterStore { client, keys, secrets: None }
    }

    /// The key ring secrets are sealed with before they are written and
    /// opened with when read. Without one, a spec with a secret cannot be
    /// stored.
    pub fn with_secrets(self, secrets: Option<Arc<Keyring>>) -> Self {
        ClusterStore { secrets, ..self }
    }

    /// A spec in the form it may be written in: secrets sealed.
    pub fn seal(&self, spec: &MonitorSpec) -> Result<MonitorSpec, SealError> {
        seal_spec(self.secrets.as_deref(), spec)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Every key under `dir`, read in pages at one revision, so a large
    /// directory never exceeds a response size limit and is still a
    /// consistent snapshot. Returns the kvs and the revision read at.
    pub(crate) async fn list(&self, dir: &str) -> Result<(Vec<etcd_client::KeyValue>, i64), CoordinationError> {
        const PAGE: i64 = 500;
        // The end of the prefix range: `dir` with its last byte incremented ('/' + 1 = '0').
        let mut end = dir.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        // etcd-client keeps tonic's 4 MiB default for answers; a page of
        // large specs may exceed it, so reads get room (pages bound the rest).
        let mut c = self.client.kv_client().max_decoding_message_size(MAX_READ_BYTES);
        let mut out = Vec::new();
        let mut start = dir.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_revision(revision);
            let resp = c.get(start.clone(), Some(opts)).await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            let kvs = resp.kvs();
            out.extend_from_slice(kvs);
            match (resp.more(), kvs.last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// Reads one monitor's value; the generation is the key's mod revision.
    pub(crate) fn decode_monitor(&self, kv: &Kv<'_>) -> Result<StoredMonitor, String> {
        let mut spec: MonitorSpec = serde_json::from_slice(kv.value).map_err(|e| e.to_string())?;
        if self.keys.id_in(&self.keys.monitors(), kv.key) != Some(spec.id.as_str()) {
            return Err(format!("the value names monitor {:?}, not the key's", spec.id.as_str()));
        }
        spec.generation = kv.mod_revision as u64;
        let needs_reseal =
            self.secrets.as_deref().is_some_and(|keys| kollector_security::sealing::sealed_with_other_key(keys, &spec));
        let spec = open_spec(self.secrets.as_deref(), spec).map_err(|e| e.to_string())?;
        Ok(StoredMonitor { spec, mod_revision: kv.mod_revision, needs_reseal })
    }

    /// etcd's revision now: one small read (no value).
    pub async fn current_revision(&self) -> Result<i64, CoordinationError> {
        let mut c = self.client.clone();
        let resp =
            c.get(self.keys.election(), Some(GetOptions::new().with_prefix().with_keys_only().with_limit(1))).await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Whether etcd answers: one key at most, no value (a readiness probe
    /// runs this every few seconds; reading every spec would not scale).
    pub async fn ping(&self) -> Result<(), CoordinationError> {
        let mut c = self.client.clone();
        c.get(self.keys.election(), Some(GetOptions::new().with_prefix().with_keys_only().with_limit(1))).await?;
        Ok(())
    }

    /// Creates a monitor; its generation (the write's revision), or None if
    /// the id is taken. `spec` must come from [`Self::seal`].
    pub async fn create_monitor(&self, spec: &MonitorSpec) -> Result<Option<u64>, CoordinationError> {
        let key = self.keys.monitor(spec.id.as_str());
        let value = serde_json::to_vec(spec).map_err(|e| bad(key.as_bytes(), e))?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        let resp = c.txn(txn).await?;
        Ok(resp.succeeded().then(|| resp.header().map(|h| h.revision() as u64).unwrap_or_default()))
    }

    /// Replaces a monitor if it is unchanged since `expected_revision`; its
    /// new generation, or None if it changed meanwhile. `spec` must come
    /// from [`Self::seal`].
    pub async fn update_monitor(
        &self,
        spec: &MonitorSpec,
        expected_revision: i64,
    ) -> Result<Option<u64>, CoordinationError> {
        let key = self.keys.monitor(spec.id.as_str());
        let value = serde_json::to_vec(spec).map_err(|e| bad(key.as_bytes(), e))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected_revision)])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        let resp = c.txn(txn).await?;
        Ok(resp.succeeded().then(|| resp.header().map(|h| h.revision() as u64).unwrap_or_default()))
    }

    /// The key this node seals with (its key file's first line), if any.
    pub fn sealing_key_id(&self) -> Option<String> {
        self.secrets.as_deref().map(|k| k.first_id().to_string())
    }

    /// What this manager announces next to its candidacy: the key it seals with.
    pub fn sealing_announcement(&self) -> String {
        serde_json::json!({ "first": self.sealing_key_id() }).to_string()
    }

    /// Whether every election candidate (every live manager) announced
    /// that it seals with `first`, read in one transaction: only then may
    /// the leader re-seal, or a manager not yet restarted with the new key
    /// file would lose the secrets it can no longer open. Each announcement
    /// sits under its candidate's campaign lease, keyed by that lease.
    pub async fn every_manager_seals_with(&self, first: &str) -> Result<bool, CoordinationError> {
        let candidates_dir = format!("{}/", self.keys.election());
        let announced_dir = self.keys.manager_keys();
        let range = |dir: &str| TxnOp::get(dir.to_string(), Some(GetOptions::new().with_prefix()));
        let mut c = self.client.clone();
        let resp = c.txn(Txn::new().and_then([range(&candidates_dir), range(&announced_dir)])).await?;
        let mut ranges = resp.op_responses().into_iter().filter_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(candidates), Some(announced)) = (ranges.next(), ranges.next()) else { return Ok(false) };
        let announced: BTreeMap<String, Option<String>> = announced
            .kvs()
            .iter()
            .map(|kv| {
                let lease = String::from_utf8_lossy(kv.key()).trim_start_matches(announced_dir.as_str()).to_string();
                let key = serde_json::from_slice::<serde_json::Value>(kv.value())
                    .ok()
                    .and_then(|v| v.get("first").and_then(|f| f.as_str()).map(str::to_string));
                (lease, key)
            })
            .collect();
        let announces_first = |kv: &etcd_client::KeyValue| {
            let lease = String::from_utf8_lossy(kv.key()).trim_start_matches(candidates_dir.as_str()).to_string();
            announced.get(&lease).and_then(|k| k.as_deref()) == Some(first)
        };
        Ok(!candidates.kvs().is_empty() && candidates.kvs().iter().all(announces_first))
    }

    /// Re-seals `m`'s secrets with the first key, leader-guarded and only if
    /// the monitor is unchanged since it was read (a concurrent update
    /// wins; the next pass looks again). Its generation changes, so its
    /// owner restarts it once. Ok(false): it changed meanwhile.
    pub async fn reseal(&self, token: &LeaderToken, m: &StoredMonitor) -> Result<bool, CoordinationError> {
        let key = self.keys.monitor(m.spec.id.as_str());
        let sealed = self.seal(&m.spec).map_err(|e| bad(key.as_bytes(), e))?;
        let value = serde_json::to_vec(&sealed).map_err(|e| bad(key.as_bytes(), e))?;
        let mut c = self.client.clone();
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, m.mod_revision);
        let written = guarded_txn_if(&mut c, token, vec![unchanged], vec![TxnOp::put(key, value, None)]).await?;
        Ok(written.is_some())
    }

    /// Deletes a monitor; the generation it had and the revision of the
    /// delete, or None if it did not exist.
    pub async fn delete_monitor(&self, id: &MonitorId) -> Result<Option<(u64, i64)>, CoordinationError> {
        let mut c = self.client.clone();
        let resp =
            c.delete(self.keys.monitor(id.as_str()), Some(etcd_client::DeleteOptions::new().with_prev_key())).await?;
        if resp.deleted() == 0 {
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Some((resp.prev_kvs().first().map(|kv| kv.mod_revision() as u64).unwrap_or(u64::MAX), revision)))
    }

    /// Writes assignment records in chunks that fit `limits`, each chunk in
    /// its own transaction guarded by the leader key. A failed chunk does not
    /// stop the others; a chunk refused because this manager no longer leads
    /// stops the rest (they would be refused too).
    pub async fn write_assignments(
        &self,
        token: &LeaderToken,
        writes: Vec<RecordWrite>,
        limits: TxnLimits,
    ) -> Vec<ChunkOutcome> {
        let keys = &self.keys;
        let encoded = |w: &RecordWrite| -> (String, Option<Vec<u8>>) {
            let key = keys.assignment(w.monitor.as_str());
            (key, w.value.as_ref().map(|v| serde_json::to_vec(v).unwrap_or_default()))
        };
        let size = |w: &RecordWrite| {
            let (k, v) = encoded(w);
            k.len() + v.map(|v| v.len()).unwrap_or(0)
        };
        let mut outcomes = Vec::new();
        let mut deposed = false;
        for chunk in chunk_writes(writes, size, limits) {
            if deposed {
                outcomes.push(ChunkOutcome { writes: chunk, result: Err(CoordinationError::NotLeader) });
                continue;
            }
            let ops = chunk
                .iter()
                .map(|w| match encoded(w) {
                    (key, Some(value)) => TxnOp::put(key, value, None),
                    (key, None) => TxnOp::delete(key, None),
                })
                .collect();
            let mut c = self.client.clone();
            let result = guarded_txn(&mut c, token, ops).await.map(|rev| rev as Epoch);
            deposed = matches!(result, Err(CoordinationError::NotLeader));
            outcomes.push(ChunkOutcome { writes: chunk, result });
        }
        outcomes
    }

    pub async fn set_draining(&self, id: &CollectorId, draining: bool) -> Result<(), CoordinationError> {
        let key = format!("{}{}", self.keys.draining(), id);
        let mut c = self.client.clone();
        if draining {
            c.put(key, "1", None).await?;
        } else {
            c.delete(key, None).await?;
        }
        Ok(())
    }

    /// Revokes `collector`'s `lease`, safely: first a mark, guarded by the
    /// leader key and bound to a lease of its own, then the revocation,
    /// all within `budget`. While the mark exists the collector still
    /// counts as holding its monitors (`liveness.rs`). The collector may
    /// renew its lease any time until the revocation lands and then keeps
    /// collecting up to one TTL; the revocation lands within `budget` of
    /// the mark's grant (or never: every call here is cut off at the
    /// budget), so the mark lives the collector's granted TTL plus the
    /// budget plus a second, counted by etcd's clock. Returns false if the
    /// lease was already gone (nothing to revoke).
    pub async fn revoke_collector(
        &self,
        token: &LeaderToken,
        collector: &CollectorId,
        lease: i64,
        budget: std::time::Duration,
    ) -> Result<bool, CoordinationError> {
        let deadline = tokio::time::Instant::now() + budget;
        let late = || CoordinationError::Etcd(format!("revoking lease {lease} took longer than {budget:?}"));
        let mut c = self.client.clone();
        let ttl = tokio::time::timeout_at(deadline, c.lease_time_to_live(lease, None)).await.map_err(|_| late())??;
        if ttl.ttl() <= 0 {
            return Ok(false);
        }
        let budget_secs = i64::try_from(budget.as_secs()).unwrap_or(i64::MAX / 4) + 1;
        let mark_ttl = ttl.granted_ttl().max(1).saturating_add(budget_secs).saturating_add(1);
        let mark_lease =
            tokio::time::timeout_at(deadline, c.lease_grant(mark_ttl, None)).await.map_err(|_| late())??.id();
        let value = serde_json::to_vec(&RevocationMark { lease }).unwrap_or_default();
        let put = TxnOp::put(
            format!("{}{}", self.keys.revoked(), collector),
            value,
            Some(PutOptions::new().with_lease(mark_lease)),
        );
        match tokio::time::timeout_at(deadline, guarded_txn(&mut c, token, vec![put])).await {
            Ok(Ok(_)) => {}
            failed => {
                // No mark (or an unknown outcome): no revocation. A mark
                // left behind only delays this collector's monitors.
                let _ = tokio::time::timeout(budget, c.lease_revoke(mark_lease)).await;
                return Err(match failed {
                    Ok(Err(e)) => e,
                    _ => late(),
                });
            }
        }
        // Past the deadline the mark might not cover a revocation landing
        // later: do not send it (the next pass tries again).
        tokio::time::timeout_at(deadline, c.lease_revoke(lease)).await.map_err(|_| late())??;
        Ok(true)
    }
}
