//! The control plane at 10,000 monitors over 20 simulated collectors
//! (`sim_collector.rs`: the real collector protocol, no Kafka), two real
//! managers and a real etcd: creates through the API, a collector killed,
//! another drained, each proven by convergence (every monitor on exactly
//! one live collector, where its record says, nothing moving), and a quiet
//! cluster costing etcd next to nothing (the managers watch; they used to
//! re-read every spec and record twice a second each).
//!
//! The figures at 100,000 monitors come from the `control_plane` bench
//! (BENCHMARKS.md); this is its CI-sized twin.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::metrics::Metrics;
use kollector_tests::poll::wait_for_async;
use kollector_tests::scale::{converged, create_through_api, etcd_sent_bytes, ids, latest, placement};
use kollector_tests::sim_collector::{SimCollector, SimConfig};

const MONITORS: usize = 10_000;
const COLLECTORS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_monitors_over_twenty_simulated_collectors_converge_through_a_kill_and_a_drain() {
    let etcd = EtcdServer::start();
    let config = SimConfig { result_every: Duration::from_secs(5), ..SimConfig::default() };
    let mut sims = BTreeMap::new();
    for i in 1..=COLLECTORS {
        let id = format!("s{i:02}");
        sims.insert(id.clone(), SimCollector::start(&etcd.endpoint(), &id, config.clone()).await);
    }
    let managers = [KollectorProcess::manager(&etcd.endpoint()), KollectorProcess::manager(&etcd.endpoint())];
    let clients = [managers[0].client().await, managers[1].client().await];
    let mut client = clients[0].clone();

    // Creates through both managers at once.
    let all = ids(0, MONITORS);
    let took = create_through_api(&clients, &all, 32).await;
    println!("created {MONITORS} monitors through the API in {took:?}");
    let placed = wait_for_async("10,000 monitors placed and running", Duration::from_secs(180), || async {
        converged(sims.values(), &mut client.clone(), MONITORS).await
    })
    .await;
    let mut loads: BTreeMap<&str, usize> = BTreeMap::new();
    for c in placed.values() {
        *loads.entry(c.as_str()).or_default() += 1;
    }
    let (least, most) = (loads.values().min().copied().unwrap_or(0), loads.values().max().copied().unwrap_or(0));
    assert!(loads.len() == COLLECTORS && most - least <= 2, "spread evenly: {loads:?}");

    // Quiet: with nothing changing, the managers cost etcd next to nothing.
    // One listing of the prefix is ~3 MB; before the watched view the two
    // managers read it about twenty times a second between them.
    let listing: usize = all.len() * 250;
    let quiet_passes =
        || -> f64 { managers.iter().filter_map(|m| own_metrics(m).value("kollector_quiet_passes_total", &[])).sum() };
    let passes_before = quiet_passes();
    let before = etcd_sent_bytes(&etcd);
    let quiet_started = Instant::now();
    // Not a sleep standing in for a condition: the measurement needs a window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let sent = etcd_sent_bytes(&etcd) - before;
    let per_second = sent / quiet_started.elapsed().as_secs_f64();
    println!("quiet: etcd sent {per_second:.0} B/s (one listing ≈ {listing} B)");
    assert!(sent < (listing / 10) as f64, "etcd sent {sent} B in 5 quiet seconds: someone scans");
    // And the leader's passes find nothing changed: they skip the plan.
    let skipped = quiet_passes() - passes_before;
    println!("quiet: {skipped} passes skipped in 5 s");
    assert!(skipped >= 4.0, "the leader re-planned an unchanged cluster ({skipped} passes skipped in 5 s)");

    // A monitor a collector drops on its own while all is quiet (its actor
    // died) runs again: the skipped passes hide no drift.
    let dropped = placed.iter().next().map(|(m, c)| (m.clone(), c.clone())).expect("a monitor");
    assert!(sims[&dropped.1].forget(&dropped.0));
    wait_for_async("a dropped monitor running again", Duration::from_secs(10), || async {
        match placement(sims.values())?.get(&dropped.0) {
            Some(c) => Ok(c.clone()),
            None => Err(format!("{} not running", dropped.0)),
        }
    })
    .await;

    // Every monitor's result is served, from its owner.
    wait_for_async("a current result for every monitor", Duration::from_secs(60), || async {
        let results = latest(&mut client.clone()).await?;
        let current = results
            .iter()
            .filter(|r| r.status.as_ref().is_some_and(|s| s.state() == pb::MonitorState::Running))
            .filter(|r| placed.get(&r.monitor_id) == Some(&r.collector_id))
            .count();
        if current == MONITORS {
            Ok(())
        } else {
            Err(format!("{current} of {MONITORS} monitors have a current result from their owner"))
        }
    })
    .await;

    // A kill: the victim's monitors run elsewhere, each exactly once.
    let victim = "s01";
    let before_kill = converged(sims.values(), &mut client.clone(), MONITORS).await.expect("converged before the kill");
    let its: Vec<String> = sims[victim].running().into_keys().collect();
    let killed_at = Instant::now();
    sims[victim].kill();
    let placed =
        wait_for_async("the killed collector's monitors running elsewhere", Duration::from_secs(60), || async {
            converged(sims.values(), &mut client.clone(), MONITORS).await
        })
        .await;
    println!(
        "{} monitors of a killed collector running elsewhere after {:?} (TTL 3 s)",
        its.len(),
        killed_at.elapsed()
    );
    // Only the victim's monitors moved.
    let moved: Vec<&String> = placed.iter().filter(|(m, c)| before_kill.get(*m) != Some(*c)).map(|(m, _)| m).collect();
    assert_eq!(moved.len(), its.len(), "exactly the killed collector's monitors moved");
    assert!(moved.iter().all(|m| its.contains(m)));

    // A drain: everything leaves s02; the rest converge on the others.
    let drained = "s02";
    client.drain(pb::DrainRequest { collector_id: drained.into(), undo: false }).await.expect("drain s02");
    let placed = wait_for_async("s02 drained", Duration::from_secs(60), || async {
        let placed = converged(sims.values(), &mut client.clone(), MONITORS).await?;
        match placed.values().filter(|c| c.as_str() == drained).count() {
            0 => Ok(placed),
            n => Err(format!("s02 still runs {n}")),
        }
    })
    .await;
    let used: std::collections::BTreeSet<&String> = placed.values().collect();
    assert_eq!(used.len(), COLLECTORS - 2, "every other live collector takes a share");

    // Paging: the pages of ListMonitors are whole and in order.
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = client
            .list_monitors(pb::ListMonitorsRequest { page_size: 3000, page_token })
            .await
            .expect("list a page")
            .into_inner();
        assert!(r.monitors.len() <= 3000);
        listed.extend(r.monitors.into_iter().filter_map(|m| m.spec.map(|s| s.id)));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    assert_eq!(listed, all, "every monitor once, in id order");
    let bad = client
        .list_monitors(pb::ListMonitorsRequest { page_size: 10, page_token: "not an id!".into() })
        .await
        .expect_err("a token this API never gave");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

/// A manager's own series (`/metrics/self`; `/metrics` renders every
/// monitor's series as well).
fn own_metrics(m: &KollectorProcess) -> Metrics {
    Metrics::parse(&m.http_get("/metrics/self").expect("GET /metrics/self")).expect("parse /metrics/self")
}
