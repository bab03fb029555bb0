//! A whole kollector cluster for tests and benchmarks: etcd, a tansu
//! broker, a manager and collectors as real processes, with helpers to read
//! who runs what.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kollector_proto::v1 as pb;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;

use crate::etcd::EtcdServer;
use crate::kollector::KollectorProcess;
use crate::poll::wait_for_async;
use crate::tansu::TansuBroker;

/// The lease TTL the harness gives collectors.
pub const TTL: Duration = Duration::from_secs(3);

pub struct Cluster {
    pub etcd: EtcdServer,
    pub broker: TansuBroker,
    pub manager: KollectorProcess,
    pub collectors: BTreeMap<String, KollectorProcess>,
    /// The collectors' lease TTL.
    pub ttl: Duration,
}

impl Cluster {
    pub fn start(collectors: usize) -> Cluster {
        Self::start_ttl(collectors, TTL)
    }

    /// A cluster whose collectors hold leases of `ttl`.
    pub fn start_ttl(collectors: usize, ttl: Duration) -> Cluster {
        let etcd = EtcdServer::start();
        let broker = TansuBroker::start("cluster-kafka");
        let manager = KollectorProcess::manager(&etcd.endpoint());
        let collectors = (1..=collectors)
            .map(|i| (format!("c{i}"), KollectorProcess::collector_ttl(&etcd.endpoint(), &format!("c{i}"), ttl, &[])))
            .collect();
        Cluster { etcd, broker, manager, collectors, ttl }
    }

    pub fn add_collector(&mut self, id: &str) {
        let c = KollectorProcess::collector_ttl(&self.etcd.endpoint(), id, self.ttl, &[]);
        self.collectors.insert(id.to_string(), c);
    }

    /// Waits until the manager lists every collector of the cluster as live
    /// (registered in etcd): a monitor created before a collector registered
    /// is placed without it, and only a later rebalance gives it a share.
    pub async fn registered(&self, secs: u64) {
        let want: Vec<&String> = self.collectors.keys().collect();
        wait_for_async("every collector registered", Duration::from_secs(secs), || async {
            let mut client = self.manager.client().await;
            let live = client
                .list_collectors(pb::ListCollectorsRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .collectors;
            let ids: Vec<&String> = live.iter().map(|c| &c.id).collect();
            if want.iter().all(|w| ids.contains(w)) {
                Ok(())
            } else {
                Err(format!("live: {ids:?}, want {want:?}"))
            }
        })
        .await
    }

    pub async fn create_monitors(&self, n: usize) {
        self.create_monitors_with(n, "1s").await
    }

    /// Creates `m00`, `m01`, … with `interval`, 16 requests in flight at a time.
    pub async fn create_monitors_with(&self, n: usize, interval: &str) {
        let client = self.manager.client().await;
        let width = if n > 100 { 4 } else { 2 };
        let ids: Vec<String> = (0..n).map(|i| format!("m{i:0width$}")).collect();
        for batch in ids.chunks(16) {
            let calls = batch.iter().map(|id| {
                let mut client = client.clone();
                let spec = pb::MonitorSpecInput {
                    id: id.clone(),
                    bootstrap: vec![self.broker.bootstrap()],
                    interval: Some(interval.into()),
                    ..Default::default()
                };
                async move {
                    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.expect("create monitor")
                }
            });
            futures::future::join_all(calls).await;
        }
    }

    /// monitor -> collectors running it, from every live collector's ListRunning.
    pub async fn owners(&self) -> BTreeMap<String, Vec<String>> {
        owners_among(self.collectors.iter()).await
    }

    /// Waits until exactly `n` monitors run, each on exactly one collector.
    pub async fn settled(&self, n: usize, secs: u64) -> BTreeMap<String, String> {
        wait_for_async(&format!("{n} monitors each on exactly one collector"), Duration::from_secs(secs), || async {
            let owners = self.owners().await;
            let dup: Vec<_> = owners.iter().filter(|(_, c)| c.len() > 1).collect();
            if owners.len() == n && dup.is_empty() {
                Ok(owners.into_iter().map(|(m, c)| (m, c[0].clone())).collect())
            } else {
                Err(format!("{} running, duplicates {dup:?}", owners.len()))
            }
        })
        .await
    }
}

impl Cluster {
    /// Waits until `n` monitors run, each on exactly one collector, exactly
    /// where the manager's records say, with no move still in progress.
    pub async fn stable(&self, n: usize, secs: u64) -> BTreeMap<String, String> {
        wait_for_async(&format!("{n} monitors settled where the records say"), Duration::from_secs(secs), || async {
            let owners = self.settled(n, secs).await;
            let mut client = self.manager.client().await;
            let records = client
                .get_assignments(pb::GetAssignmentsRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .assignments;
            let moving = records.iter().filter(|a| !a.releasing.is_empty()).count();
            let differ = records.iter().filter(|a| owners.get(&a.monitor_id) != Some(&a.collector_id)).count();
            if moving == 0 && differ == 0 && records.len() == n {
                Ok(owners)
            } else {
                Err(format!("{moving} moves in progress, {differ} monitors not where recorded"))
            }
        })
        .await
    }
}

/// A collector's ListRunning, or None if it does not answer within 1 s (frozen, dead).
pub async fn list_running(c: &KollectorProcess) -> Option<pb::ListRunningResponse> {
    let call = async {
        let mut client = CollectorServiceClient::connect(c.grpc_url()).await.ok()?;
        client
            .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(1), call).await.ok().flatten()
}

/// monitor → collectors that list it in ListRunning (stopping included),
/// over the given collectors; a collector that does not answer lists nothing.
pub async fn owners_among<'a>(
    collectors: impl Iterator<Item = (&'a String, &'a KollectorProcess)>,
) -> BTreeMap<String, Vec<String>> {
    let calls = collectors.map(|(id, c)| async move { (id.clone(), list_running(c).await) });
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, r) in futures::future::join_all(calls).await {
        for m in r.map(|r| r.monitors).unwrap_or_default() {
            owners.entry(m.monitor_id).or_default().push(id.clone());
        }
    }
    owners
}

pub async fn latest(manager: &KollectorProcess) -> Vec<pb::MonitorResult> {
    let mut client = manager.client().await;
    client
        .get_latest(pb::GetLatestRequest { monitor_id: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results
}

pub fn loads(owner: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut l = BTreeMap::new();
    for c in owner.values() {
        *l.entry(c.clone()).or_default() += 1;
    }
    l
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// How many of `monitors` have a result with a snapshot from a collector
/// other than `not_from`, attempted after `since_ms`.
pub fn fresh_elsewhere(results: &[pb::MonitorResult], monitors: &[String], not_from: &str, since_ms: u64) -> usize {
    monitors
        .iter()
        .filter(|m| {
            results.iter().any(|r| {
                &r.monitor_id == *m
                    && r.collector_id != not_from
                    && r.attempted_at_ms > since_ms
                    && r.snapshot.is_some()
            })
        })
        .count()
}
