//! Cluster mode end to end: real etcd, real manager and collector processes,
//! a real tansu broker. Spread, join churn, SIGKILL failover.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::cluster::{fresh_elsewhere, latest, list_running, loads, unix_ms, Cluster, TTL};
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;

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
    let a = client.get_assignments(pb::GetAssignmentsRequest::default()).await.unwrap().into_inner();
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
        let r = client
            .get_latest(pb::GetLatestRequest { monitor_id: String::new(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
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
            let latest = client
                .get_latest(pb::GetLatestRequest { monitor_id: String::new(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            let fresh = fresh_elsewhere(&latest.results, &orphans, &victim, killed_ms);
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

/// The GC-pause case: a collector frozen past its lease TTL. Its monitors
/// fail over; when it wakes it does not collect (its gate is shut) and
/// fences itself at once, closing its Kafka connections; nothing it might
/// still send is accepted.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_paused_past_its_ttl_is_fenced_and_never_double_collects() {
    let cluster = Cluster::start(3);
    cluster.create_monitors(30).await;
    let before = cluster.settled(30, 60).await;
    let victim = "c2".to_string();
    let orphans: Vec<String> = before.iter().filter(|(_, c)| **c == victim).map(|(m, _)| m.clone()).collect();
    // What the victim holds before the pause: its lease and its monitors'
    // assignment epochs (an assignment it is given again later has a higher one).
    let held = list_running(&cluster.collectors[&victim]).await.expect("the victim answers");
    let held_epochs: BTreeMap<String, u64> = held.monitors.iter().map(|m| (m.monitor_id.clone(), m.epoch)).collect();
    assert!(held.lease != 0 && !held_epochs.is_empty(), "the victim holds a lease and monitors");
    let paused_ms = unix_ms();
    cluster.collectors[&victim].pause();

    // Failover while it sleeps; sample for double ownership among responsive collectors.
    wait_for_async("orphans running elsewhere with fresh results", Duration::from_secs(30), || async {
        let owners = cluster.owners().await;
        for (m, cs) in &owners {
            assert!(cs.len() <= 1, "{m} runs on {cs:?} at once");
        }
        let results = latest(&cluster.manager).await;
        let fresh = orphans
            .iter()
            .filter(|m| {
                results.iter().any(|r| &r.monitor_id == *m && r.collector_id != victim && r.attempted_at_ms > paused_ms)
            })
            .count();
        if fresh == orphans.len() {
            Ok(())
        } else {
            Err(format!("{fresh}/{} fresh", orphans.len()))
        }
    })
    .await;

    // Wake it: it must fence at once, keeping none of the assignments it
    // held and no Kafka connection of theirs. Once fenced it registers
    // again and may be given monitors anew (new epochs, new clients), so
    // the check is not "nothing runs" (a state that can last less than one
    // poll) but: a fence counted, the old lease gone, no old assignment
    // running, and connections only for what runs now (a monitor holds at
    // most 3: librdkafka's bootstrap and broker connections and the direct
    // group connection).
    cluster.collectors[&victim].resume();
    let woke = Instant::now();
    let c2 = &cluster.collectors[&victim];
    wait_for_async("the woken collector to have fenced", Duration::from_secs(10), || async {
        let fences = c2.metrics().value("kollector_lease_fences_total", &[]).unwrap_or(0.0);
        let Some(now) = list_running(c2).await else { return Err("no answer".to_string()) };
        let old: Vec<&str> = now
            .monitors
            .iter()
            .filter(|m| held_epochs.get(&m.monitor_id).is_some_and(|e| m.epoch <= *e))
            .map(|m| m.monitor_id.as_str())
            .collect();
        let conns = kollector_tests::net::established_connections_to(c2.pid(), cluster.broker.port());
        if fences >= 1.0 && now.lease != held.lease && old.is_empty() && conns <= 3 * now.monitors.len() {
            Ok(())
        } else {
            Err(format!(
                "fences {fences}, lease {} (was {}), old assignments still running {old:?}, {} running, {conns} Kafka connections",
                now.lease,
                held.lease,
                now.monitors.len()
            ))
        }
    })
    .await;
    assert!(woke.elapsed() < Duration::from_secs(3), "fencing after wake took {:?}", woke.elapsed());
    // No result the paused collector made under an assignment it held
    // before the pause was accepted after the pause began. Once fenced it
    // registers again and passes are change-driven, so it may already be
    // collecting monitors given to it anew (a higher epoch, a new client):
    // those results are legitimate and are not what this checks.
    let results = latest(&cluster.manager).await;
    let stale: Vec<String> = results
        .iter()
        .filter(|r| {
            r.collector_id == victim
                && r.attempted_at_ms > paused_ms
                && held_epochs.get(&r.monitor_id).is_some_and(|e| r.epoch <= *e)
        })
        .map(|r| format!("{} epoch {} at {}", r.monitor_id, r.epoch, r.attempted_at_ms))
        .collect();
    assert!(stale.is_empty(), "results from the fenced collector's old assignments were accepted: {stale:?}");
    // Every monitor still runs exactly once (c2 may take work again after re-registering).
    cluster.settled(30, 30).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_leader_sigkill_standby_takes_over_without_moving_anything() {
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("ha-kafka");
    let mut m1 = KollectorProcess::manager(&etcd.endpoint());
    let collectors: BTreeMap<String, KollectorProcess> =
        ["c1", "c2"].iter().map(|id| (id.to_string(), KollectorProcess::collector(&etcd.endpoint(), id))).collect();
    let m2 = KollectorProcess::manager(&etcd.endpoint());
    let mut cluster = Cluster { etcd, broker, manager: m2, collectors, ttl: TTL };
    cluster.create_monitors(10).await;
    cluster.settled(10, 60).await;
    // Whichever manager won the election is the one to kill; keep the
    // standby as `cluster.manager` so the test talks to the survivor.
    let leader_address = wait_for_async("a leader", Duration::from_secs(15), || async {
        let mut client = cluster.manager.client().await;
        let r = client.list_collectors(pb::ListCollectorsRequest {}).await.map_err(|e| e.to_string())?.into_inner();
        if r.leader_address.is_empty() {
            Err("no leader".to_string())
        } else {
            Ok(r.leader_address)
        }
    })
    .await;
    if leader_address == format!("127.0.0.1:{}", cluster.manager.grpc_port) {
        std::mem::swap(&mut m1, &mut cluster.manager);
    }
    // Now m1 leads and cluster.manager is the standby.
    assert_eq!(leader_address, format!("127.0.0.1:{}", m1.grpc_port));
    let standby_addr = format!("127.0.0.1:{}", cluster.manager.grpc_port);
    let mut client = cluster.manager.client().await;
    let before = client.get_assignments(pb::GetAssignmentsRequest::default()).await.unwrap().into_inner().assignments;

    let killed = Instant::now();
    m1.kill();
    wait_for_async("the standby to lead", Duration::from_secs(15), || async {
        let mut client = cluster.manager.client().await;
        let r = client.list_collectors(pb::ListCollectorsRequest {}).await.map_err(|e| e.to_string())?.into_inner();
        if r.leader_address == standby_addr {
            Ok(())
        } else {
            Err(format!("leader {:?}", r.leader_address))
        }
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(3 + 5), "takeover took {took:?}");
    // Give the new leader a few reconcile passes: nothing may move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut client = cluster.manager.client().await;
    let after = client.get_assignments(pb::GetAssignmentsRequest::default()).await.unwrap().into_inner().assignments;
    assert_eq!(before, after, "manager failover moved assignments");
    // CRUD works against the new leader.
    let spec = pb::MonitorSpecInput {
        id: "after-failover".into(),
        bootstrap: vec![cluster.broker.bootstrap()],
        interval: Some("1s".into()),
        ..Default::default()
    };
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.expect("create after failover");
    cluster.settled(11, 30).await;
    eprintln!("manager takeover after SIGKILL: {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reconfigure_through_the_manager_restarts_on_the_owner_before_answering() {
    let cluster = Cluster::start(2);
    cluster.create_monitors(4).await;
    let owners = cluster.settled(4, 60).await;
    let owner = &cluster.collectors[&owners["m01"]];
    let mut client = cluster.manager.client().await;
    let before = client.get_monitor(pb::GetMonitorRequest { id: "m01".into() }).await.unwrap().into_inner();
    let before = before.spec.unwrap().generation;
    let spec = pb::MonitorSpecInput {
        id: "m01".into(),
        bootstrap: vec![cluster.broker.bootstrap()],
        interval: Some("2s".into()),
        ..Default::default()
    };
    let info = client.update_monitor(pb::UpdateMonitorRequest { spec: Some(spec) }).await.unwrap().into_inner();
    // The generation is the etcd revision of the spec's write: it only grows.
    let generation = info.spec.unwrap().generation;
    assert!(generation > before, "generation {generation} after {before}");
    // When the update answers, the owner already runs the new generation (its
    // Assign answered after closing the old generation's client).
    let running = list_running(owner).await.expect("owner answers");
    let m01 = running.monitors.iter().find(|m| m.monitor_id == "m01").expect("m01 on its owner");
    assert_eq!(m01.generation, generation);
    let metrics = kollector_tests::metrics::Metrics::parse(&owner.http_get("/metrics").unwrap()).unwrap();
    assert_eq!(
        metrics.value("kollector_kafka_clients", &[]),
        Some(running.monitors.len() as f64),
        "one client per monitor"
    );
    let rtt = metrics.value("kollector_lease_keepalive_latency_seconds", &[]).expect("keepalive latency exported");
    assert!(rtt > 0.0 && rtt < 1.0, "keepalive round trip {rtt}");
    assert_eq!(metrics.value("kollector_lease_fences_total", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restart_loses_no_monitor() {
    let mut cluster = Cluster::start(2);
    cluster.create_monitors(10).await;
    cluster.settled(10, 60).await;
    cluster.etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.etcd.restart();
    let restarted_ms = unix_ms();
    cluster.settled(10, 60).await;
    wait_for_async("fresh results for all after the restart", Duration::from_secs(30), || async {
        let results = latest(&cluster.manager).await;
        let fresh = results.iter().filter(|r| r.attempted_at_ms > restarted_ms && r.snapshot.is_some()).count();
        if fresh == 10 {
            Ok(())
        } else {
            Err(format!("{fresh}/10 fresh"))
        }
    })
    .await;
    let mut client = cluster.manager.client().await;
    let list = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.monitors.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_moves_everything_off_a_collector_and_undo_lets_it_back() {
    let cluster = Cluster::start(2);
    cluster.create_monitors(6).await;
    cluster.settled(6, 60).await;
    let mut client = cluster.manager.client().await;
    client.drain(pb::DrainRequest { collector_id: "c1".into(), undo: false }).await.expect("drain");
    wait_for_async("c1 drained", Duration::from_secs(20), || async {
        let owners = cluster.settled(6, 20).await;
        let on_c1 = owners.values().filter(|c| *c == "c1").count();
        if on_c1 == 0 {
            Ok(())
        } else {
            Err(format!("c1 still runs {on_c1}"))
        }
    })
    .await;
    let list = client.list_collectors(pb::ListCollectorsRequest {}).await.unwrap().into_inner();
    let c1 = list.collectors.iter().find(|c| c.id == "c1").expect("c1 still live");
    assert!(c1.draining && c1.monitors == 0, "{c1:?}");
    client.drain(pb::DrainRequest { collector_id: "c1".into(), undo: true }).await.expect("undo");
    wait_for_async("c1 back to its share", Duration::from_secs(20), || async {
        let owners = cluster.settled(6, 20).await;
        let on_c1 = owners.values().filter(|c| *c == "c1").count();
        if on_c1 == 3 {
            Ok(())
        } else {
            Err(format!("c1 runs {on_c1}"))
        }
    })
    .await;
    let err = client.drain(pb::DrainRequest { collector_id: "nobody".into(), undo: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_and_label_constrained_monitors_run_where_they_must() {
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("placement-kafka");
    let manager = KollectorProcess::manager(&etcd.endpoint());
    let mut collectors = BTreeMap::new();
    collectors
        .insert("c1".to_string(), KollectorProcess::collector_with(&etcd.endpoint(), "c1", &["--label=zone=dmz"]));
    collectors.insert("c2".to_string(), KollectorProcess::collector(&etcd.endpoint(), "c2"));
    let cluster = Cluster { etcd, broker, manager, collectors, ttl: TTL };
    let mut client = cluster.manager.client().await;
    let spec = |id: &str| pb::MonitorSpecInput {
        id: id.into(),
        bootstrap: vec![cluster.broker.bootstrap()],
        interval: Some("1s".into()),
        ..Default::default()
    };
    let mut pinned = spec("pinned-to-c2");
    pinned.pinned_collector = Some("c2".into());
    let mut dmz = spec("needs-dmz");
    dmz.collector_labels.insert("zone".into(), "dmz".into());
    let mut nowhere = spec("needs-moon");
    nowhere.collector_labels.insert("zone".into(), "moon".into());
    for s in [pinned, dmz, nowhere] {
        client.create_monitor(pb::CreateMonitorRequest { spec: Some(s) }).await.expect("create");
    }
    let owners = cluster.settled(2, 30).await;
    assert_eq!(owners["pinned-to-c2"], "c2");
    assert_eq!(owners["needs-dmz"], "c1");
    let a = client.get_assignments(pb::GetAssignmentsRequest::default()).await.unwrap().into_inner();
    assert!(a.unplaced.contains_key("needs-moon"), "{:?}", a.unplaced);
    let got = client.get_monitor(pb::GetMonitorRequest { id: "pinned-to-c2".into() }).await.unwrap().into_inner();
    assert_eq!(got.spec.unwrap().pinned_collector.as_deref(), Some("c2"));
    assert_eq!(got.collector_id, "c2");
}
