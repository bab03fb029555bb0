//! Graceful shutdown with real processes: SIGTERM on a collector moves its
//! monitors to another collector before it exits; SIGTERM on the leading
//! manager hands leadership to a standby at once (it resigns instead of
//! letting its election lease run out).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::cluster::{Cluster, TTL};
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;

const INTERVAL_MS: u64 = 2000;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_a_collector_moves_its_monitors_before_it_exits() {
    let mut cluster = Cluster::start(2);
    cluster.create_monitors_with(4, "2s").await;
    let owners = cluster.settled(4, 60).await;
    let mut load: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (m, c) in &owners {
        load.entry(c).or_default().push(m);
    }
    let (victim, moved) = load
        .iter()
        .max_by_key(|(_, ms)| ms.len())
        .map(|(c, ms)| ((*c).clone(), ms.iter().map(|m| (*m).clone()).collect::<Vec<_>>()))
        .unwrap();
    let survivor = if victim == "c1" { "c2" } else { "c1" }.to_string();
    let mut client = cluster.manager.client().await;
    // (monitor, collector) -> last_success_ms values seen.
    let mut seen: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let sample = |latest: pb::GetLatestResponse, seen: &mut BTreeMap<(String, String), Vec<u64>>| {
        for r in latest.results {
            if r.last_success_ms > 0 {
                seen.entry((r.monitor_id, r.collector_id)).or_default().push(r.last_success_ms);
            }
        }
    };
    // Every moved monitor has collected on the victim first.
    wait_for_async("the victim's monitors to collect", Duration::from_secs(30), || {
        let mut client = client.clone();
        let (moved, victim) = (moved.clone(), victim.clone());
        async move {
            let l = client.get_latest(pb::GetLatestRequest::default()).await.map_err(|e| e.to_string())?.into_inner();
            let ok = moved.iter().all(|m| {
                l.results.iter().any(|r| &r.monitor_id == m && r.collector_id == victim && r.last_success_ms > 0)
            });
            ok.then_some(()).ok_or("not yet".to_string())
        }
    })
    .await;

    let mut process = cluster.collectors.remove(&victim).unwrap();
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let clean = process.terminate();
        (clean, Instant::now(), process.log())
    });
    // Watch the results until the victim has exited and every moved monitor
    // has collected on the survivor.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut exited = None;
    let mut exit = Some(exit);
    loop {
        if let Ok(l) = client.get_latest(pb::GetLatestRequest::default()).await {
            sample(l.into_inner(), &mut seen);
        }
        if let Some(handle) = exit.as_ref() {
            if handle.is_finished() {
                exited = Some(exit.take().unwrap().await.unwrap());
            }
        }
        let all_moved = moved.iter().all(|m| seen.contains_key(&(m.clone(), survivor.clone())));
        if exited.is_some() && all_moved {
            break;
        }
        assert!(Instant::now() < deadline, "no handover within 45 s: exited {}, seen {seen:?}", exited.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (clean, exited_at, log) = exited.unwrap();
    assert!(clean, "the collector did not exit cleanly:\n{log}");
    assert!(
        log.contains("drained: every monitor runs elsewhere"),
        "its monitors did not move before it stopped them:\n{log}"
    );
    let took = exited_at - signalled;
    let mut gaps = Vec::new();
    for m in &moved {
        let last_old = seen.get(&(m.clone(), victim.clone())).and_then(|v| v.iter().max().copied()).unwrap_or(0);
        let first_new = seen[&(m.clone(), survivor.clone())].iter().min().copied().unwrap();
        gaps.push((m.clone(), first_new.saturating_sub(last_old)));
    }
    eprintln!("graceful collector shutdown: exit after {took:?}; gap between the last collection on {victim} and the first on {survivor}: {gaps:?} (interval {INTERVAL_MS} ms)");
    for (m, gap) in &gaps {
        // The move stops the monitor at a random point of its interval and
        // starts it on the survivor at the next reconcile pass (500 ms):
        // at most one interval plus one pass.
        assert!(*gap <= INTERVAL_MS + 1500, "{m}: {gap} ms without a collection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leading_manager_hands_over_in_under_two_seconds() {
    let etcd = EtcdServer::start();
    let mut m1 = KollectorProcess::manager(&etcd.endpoint());
    let mut m2 = KollectorProcess::manager(&etcd.endpoint());
    let leader = wait_for_async("a leader", Duration::from_secs(15), || async {
        let r = m2.client().await.list_collectors(pb::ListCollectorsRequest {}).await.map_err(|e| e.to_string())?;
        let a = r.into_inner().leader_address;
        (!a.is_empty()).then_some(a).ok_or("no leader".to_string())
    })
    .await;
    if leader == format!("127.0.0.1:{}", m2.grpc_port) {
        std::mem::swap(&mut m1, &mut m2);
    }
    let standby = format!("127.0.0.1:{}", m2.grpc_port);
    let signalled = Instant::now();
    let exit = tokio::task::spawn_blocking(move || m1.terminate());
    wait_for_async("the standby to lead", Duration::from_secs(2 * TTL.as_secs() + 5), || async {
        let r = m2.client().await.list_collectors(pb::ListCollectorsRequest {}).await.map_err(|e| e.to_string())?;
        let a = r.into_inner().leader_address;
        (a == standby).then_some(()).ok_or(format!("leader is {a:?}"))
    })
    .await;
    let took = signalled.elapsed();
    eprintln!("leader SIGTERM → standby leads: {took:?} (election TTL 3 s)");
    assert!(exit.await.unwrap(), "the leader did not exit cleanly");
    assert!(took < Duration::from_secs(2), "handover took {took:?}");
}
