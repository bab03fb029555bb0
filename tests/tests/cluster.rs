//! Cluster mode end to end: real etcd, real manager and collector processes,
//! a real tansu broker. Spread, join churn, SIGKILL failover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kollector_proto::v1 as pb;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;

/// The lease TTL the harness gives collectors.
const TTL: Duration = Duration::from_secs(3);

struct Cluster {
    etcd: EtcdServer,
    broker: TansuBroker,
    manager: KollectorProcess,
    collectors: BTreeMap<String, KollectorProcess>,
}

impl Cluster {
    fn start(collectors: usize) -> Cluster {
        let etcd = EtcdServer::start();
        let broker = TansuBroker::start("cluster-kafka");
        let manager = KollectorProcess::manager(&etcd.endpoint());
        let collectors = (1..=collectors)
            .map(|i| (format!("c{i}"), KollectorProcess::collector(&etcd.endpoint(), &format!("c{i}"))))
            .collect();
        Cluster { etcd, broker, manager, collectors }
    }

    fn add_collector(&mut self, id: &str) {
        self.collectors.insert(id.to_string(), KollectorProcess::collector(&self.etcd.endpoint(), id));
    }

    async fn create_monitors(&self, n: usize) {
        let mut client = self.manager.client().await;
        for i in 0..n {
            let spec = pb::MonitorSpecInput {
                id: format!("m{i:02}"),
                bootstrap: vec![self.broker.bootstrap()],
                interval: Some("1s".into()),
                ..Default::default()
            };
            client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.expect("create monitor");
        }
    }

    /// monitor -> collectors running it, from every live collector's ListRunning.
    async fn owners(&self) -> BTreeMap<String, Vec<String>> {
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, c) in &self.collectors {
            let Ok(mut client) = CollectorServiceClient::connect(c.grpc_url()).await else { continue };
            let Ok(r) = client.list_running(pb::ListRunningRequest {}).await else { continue };
            for m in r.into_inner().monitors {
                owners.entry(m.monitor_id).or_default().push(id.clone());
            }
        }
        owners
    }

    /// Waits until exactly `n` monitors run, each on exactly one collector.
    async fn settled(&self, n: usize, secs: u64) -> BTreeMap<String, String> {
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

fn loads(owner: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut l = BTreeMap::new();
    for c in owner.values() {
        *l.entry(c.clone()).or_default() += 1;
    }
    l
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_monitors_spread_over_three_collectors_and_a_fourth_takes_a_quarter() {
    let mut cluster = Cluster::start(3);
    cluster.create_monitors(30).await;
    let before = cluster.settled(30, 60).await;
    let l = loads(&before);
    assert_eq!(l.len(), 3, "every collector has work: {l:?}");
    let max = *l.values().max().unwrap() as f64;
    assert!(max <= 1.25 * 10.0, "max load {max} over mean 10: {l:?}");

    // The manager's view agrees with what runs.
    let mut client = cluster.manager.client().await;
    let a = client.get_assignments(pb::GetAssignmentsRequest {}).await.unwrap().into_inner();
    assert_eq!(a.assignments.len(), 30);
    for x in &a.assignments {
        assert_eq!(before[&x.monitor_id], x.collector_id);
    }

    // Join: a fourth collector takes about a quarter; nothing else moves.
    cluster.add_collector("c4");
    let after = wait_for_async("c4 to take its share", Duration::from_secs(30), || async {
        let owners = cluster.settled(30, 30).await;
        let on_c4 = owners.values().filter(|c| *c == "c4").count();
        if on_c4 >= 7 {
            Ok(owners)
        } else {
            Err(format!("c4 runs {on_c4}"))
        }
    })
    .await;
    let moved: Vec<&String> = after.keys().filter(|m| before[*m] != after[*m]).collect();
    assert!(moved.len() as f64 <= 1.1 * 30.0 / 4.0, "{} moved: {moved:?}", moved.len());
    assert!(moved.iter().all(|m| after[*m] == "c4"), "only moves to the new collector: {moved:?}");
    // Results come from the owners, under the current epochs.
    wait_for_async("results from c4", Duration::from_secs(15), || async {
        let mut client = cluster.manager.client().await;
        let r = client.get_latest(pb::GetLatestRequest { monitor_id: String::new() }).await.unwrap().into_inner();
        let from_c4 = r.results.iter().filter(|r| r.collector_id == "c4" && r.snapshot.is_some()).count();
        if from_c4 >= 7 {
            Ok(())
        } else {
            Err(format!("{from_c4} results from c4"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_a_collector_moves_only_its_monitors_within_ttl_plus_five_seconds() {
    let mut cluster = Cluster::start(3);
    cluster.create_monitors(30).await;
    let before = cluster.settled(30, 60).await;
    let victim = "c2".to_string();
    let orphans: Vec<String> = before.iter().filter(|(_, c)| **c == victim).map(|(m, _)| m.clone()).collect();
    assert!(!orphans.is_empty());

    let killed_at = Instant::now();
    let killed_ms = unix_ms();
    cluster.collectors.get_mut(&victim).unwrap().kill();
    cluster.collectors.remove(&victim);

    let after =
        wait_for_async("every orphan running elsewhere with a fresh result", Duration::from_secs(30), || async {
            let owners = cluster.settled(30, 30).await;
            let mut client = cluster.manager.client().await;
            let latest =
                client.get_latest(pb::GetLatestRequest { monitor_id: String::new() }).await.unwrap().into_inner();
            let fresh = orphans
                .iter()
                .filter(|m| {
                    latest.results.iter().any(|r| {
                        &r.monitor_id == *m
                            && r.collector_id != victim
                            && r.attempted_at_ms > killed_ms
                            && r.snapshot.is_some()
                    })
                })
                .count();
            if fresh == orphans.len() {
                Ok(owners)
            } else {
                Err(format!("{fresh}/{} orphans fresh", orphans.len()))
            }
        })
        .await;
    let took = killed_at.elapsed();
    assert!(took <= TTL + Duration::from_secs(5), "failover took {took:?}");
    for (m, c) in &before {
        if *c != victim {
            assert_eq!(&after[m], c, "{m} moved although its collector lived");
        }
    }
    let text = cluster.manager.http_get("/metrics").unwrap();
    assert!(text.contains("kollector_failover_seconds"), "{text}");
    eprintln!("failover after SIGKILL: {took:?}");
}
