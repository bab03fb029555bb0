//! The control plane at 100,000 monitors over 100 simulated collectors
//! (`sim_collector.rs`: the real collector protocol, no Kafka), two real
//! managers and a real etcd (prints figures; recorded in BENCHMARKS.md).
//! Needs the release binary:
//!
//!   cargo build --release -p kollector && cargo bench -p kollector-tests --bench control_plane
//!
//! 1. The bulk (all but the API's share) is written straight into etcd and
//!    placed; then `KOLLECTOR_BENCH_CREATES` (10,000) monitors are created
//!    through the ManagerService, 32 calls in flight over both managers.
//! 2. Steady state over `KOLLECTOR_BENCH_STEADY_SECS` (30 s) of a converged
//!    cluster: bytes etcd sent (its own counter: managers and collectors'
//!    keepalives together), the managers' CPU (from /proc), their RSS. Each
//!    simulated monitor sends a result every 30 s (12 partitions, ~1 KB) and
//!    a handover history with every fourth.
//! 3. `KOLLECTOR_BENCH_KILLS` (10) kills, each of the busiest collector (about
//!    1,000 monitors; not replaced, so the next victim has a few more):
//!    the time until every monitor it ran runs on another live collector.
//!
//! `KOLLECTOR_BENCH_MONITORS` and `KOLLECTOR_BENCH_COLLECTORS` size it;
//! `KOLLECTOR_BENCH_RESULT_SECS` sets the simulated monitors' interval (30).
//! `KOLLECTOR_BIN` runs another build of the managers (an older commit, for
//! a before/after: it must answer paged calls, or ignore the paging fields
//! and answer within gRPC's limit).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::metrics::Metrics;
use kollector_tests::net::rss_kib;
use kollector_tests::poll::wait_for_async;
use kollector_tests::proc_stat::cpu_seconds;
use kollector_tests::scale::{
    converged, create_through_api, etcd_sent_by_method, etcd_sent_bytes, ids, load_into_etcd, placement,
};
use kollector_tests::sim_collector::{SimCollector, SimConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let monitors = env("KOLLECTOR_BENCH_MONITORS", 100_000);
    let collectors = env("KOLLECTOR_BENCH_COLLECTORS", 100);
    let creates = env("KOLLECTOR_BENCH_CREATES", 10_000).min(monitors);
    let steady = Duration::from_secs(env("KOLLECTOR_BENCH_STEADY_SECS", 30) as u64);
    let kills = env("KOLLECTOR_BENCH_KILLS", 10).min(collectors.saturating_sub(1));
    println!("control plane: {monitors} monitors, {collectors} simulated collectors, 2 managers, TTL 3 s");

    let etcd = EtcdServer::start();
    let result_secs = env("KOLLECTOR_BENCH_RESULT_SECS", 30) as u64;
    let config = SimConfig { result_every: Duration::from_secs(result_secs), ..SimConfig::default() };
    let mut sims = BTreeMap::new();
    for i in 1..=collectors {
        let id = format!("s{i:03}");
        sims.insert(id.clone(), SimCollector::start(&etcd.endpoint(), &id, config.clone()).await);
    }
    let bulk = ids(creates, monitors - creates);
    let loaded = Instant::now();
    load_into_etcd(&etcd.endpoint(), &config.prefix, &bulk).await;
    println!("loaded {} monitors into etcd in {:?}", bulk.len(), loaded.elapsed());
    // The harness's managers: election TTL 3 s, reconcile period 500 ms.
    let managers = [KollectorProcess::manager(&etcd.endpoint()), KollectorProcess::manager(&etcd.endpoint())];
    let clients = [managers[0].client().await, managers[1].client().await];
    let client = clients[0].clone();
    let placed_at = Instant::now();
    wait_for_async("the bulk placed", Duration::from_secs(900), || async {
        converged(sims.values(), &mut client.clone(), bulk.len()).await
    })
    .await;
    println!("placed the bulk in {:?}", placed_at.elapsed());

    let api = ids(0, creates);
    let took = create_through_api(&clients, &api, 32).await;
    println!("created {creates} monitors through the API in {took:.1?} ({:.0}/s)", creates as f64 / took.as_secs_f64());
    let settle = Instant::now();
    wait_for_async("every monitor placed", Duration::from_secs(900), || async {
        converged(sims.values(), &mut client.clone(), monitors).await
    })
    .await;
    println!("… all {monitors} running where recorded {:?} after the last create", settle.elapsed());

    // Steady state: histories have come in (every fourth result, 30 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pids: Vec<u32> = managers.iter().map(|m| m.pid()).collect();
    let cpu = |pids: &[u32]| pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>();
    let each: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p).unwrap_or(0.0)).collect();
    let quiet =
        || -> f64 { managers.iter().filter_map(|m| own_metrics(m).value("kollector_quiet_passes_total", &[])).sum() };
    let quiet0 = quiet();
    let methods0 = etcd_sent_by_method(&etcd);
    let (bytes0, cpu0, t0) = (etcd_sent_bytes(&etcd), cpu(&pids), Instant::now());
    // The measurement window itself.
    tokio::time::sleep(steady).await;
    let secs = t0.elapsed().as_secs_f64();
    let (bytes, used) = (etcd_sent_bytes(&etcd) - bytes0, cpu(&pids) - cpu0);
    let results: u64 = sims.values().map(|s| s.counts().2).sum();
    let by_method: Vec<String> = etcd_sent_by_method(&etcd)
        .into_iter()
        .map(|(m, n)| (m.clone(), n - methods0.get(&m).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .map(|(m, n)| format!("{m} {:.1}/s", n / secs))
        .collect();
    println!("steady: etcd messages sent by method: {}", by_method.join(", "));
    let lists: f64 = managers.iter().filter_map(|m| own_metrics(m).value("kollector_etcd_view_lists_total", &[])).sum();
    println!("steady: the managers' views listed etcd {lists} times in all (2: once each at start)");
    let pass_secs: f64 = managers
        .iter()
        .filter_map(|m| own_metrics(m).value("kollector_reconcile_pass_seconds", &[]))
        .fold(0.0, f64::max);
    println!("steady: {:.0} passes skipped as unchanged; the latest full pass took {pass_secs:.2} s", quiet() - quiet0);
    println!(
        "steady: etcd sent {:.1} KiB/s; managers used {:.1} % of a core together ({:.1} % each); results sent so far {results}",
        bytes / secs / 1024.0,
        used / secs * 100.0,
        used / secs * 50.0
    );
    for (i, pid) in pids.iter().enumerate() {
        let rss = rss_kib(*pid).unwrap_or(0);
        let own = (cpu_seconds(*pid).unwrap_or(0.0) - each[i]) / secs * 100.0;
        println!(
            "manager {i} ({own:.1} % of a core): RSS {:.0} MiB = {:.2} MiB per 1,000 monitors (histories on)",
            rss as f64 / 1024.0,
            rss as f64 / 1024.0 / (monitors as f64 / 1000.0)
        );
    }

    let mut times = Vec::new();
    for round in 1..=kills {
        let placed = placement(sims.values()).expect("no monitor on two collectors");
        let mut loads: BTreeMap<&str, usize> = BTreeMap::new();
        for c in placed.values() {
            *loads.entry(c.as_str()).or_default() += 1;
        }
        let (victim, n) = loads.iter().max_by_key(|(_, n)| **n).map(|(c, n)| (c.to_string(), *n)).expect("a collector");
        let orphans: Vec<String> = placed.iter().filter(|(_, c)| **c == victim).map(|(m, _)| m.clone()).collect();
        let killed = Instant::now();
        sims[&victim].kill();
        let took = wait_for_async("the victim's monitors running elsewhere", Duration::from_secs(120), || async {
            let now = placement(sims.values())?;
            let left = orphans.iter().filter(|m| !now.contains_key(*m)).count();
            if left == 0 {
                Ok(killed.elapsed())
            } else {
                Err(format!("{left} of {} not running yet", orphans.len()))
            }
        })
        .await;
        println!("kill {round}: {victim} with {n} monitors: all running elsewhere after {took:.2?}");
        times.push(took);
        wait_for_async("settled after the kill", Duration::from_secs(300), || async {
            converged(sims.values(), &mut client.clone(), monitors).await
        })
        .await;
    }
    if !times.is_empty() {
        let max = times.iter().max().copied().unwrap_or_default();
        println!("failover (TTL 3 s): median {:.2?}, max {max:.2?} over {} kills", median(times.clone()), times.len());
    }
}

/// A manager's own series (`/metrics/self`: its `/metrics` renders every
/// monitor's series, 100,000 of them).
fn own_metrics(m: &KollectorProcess) -> Metrics {
    Metrics::parse(&m.http_get("/metrics/self").expect("GET /metrics/self")).expect("parse /metrics/self")
}
