//! Failover time when a collector that owned 250 monitors dies (prints
//! figures; recorded in BENCHMARKS.md). Needs the release binary:
//!
//!   cargo build --release -p kollector && cargo bench -p kollector-tests --bench failover
//!
//! etcd, a tansu broker, one manager (reconcile period 500 ms) and four
//! collectors run 1,000 monitors (60 s interval: the load is in the moves).
//! Each round SIGKILLs the busiest collector (about 250 monitors) and
//! measures the time until every one of its monitors runs on exactly one
//! live collector with a fresh result accepted by the manager; then the
//! killed collector is restarted under the same id and the cluster settles.
//! Runs with lease TTL 3 s and 10 s, 10 kills each
//! (`KOLLECTOR_BENCH_TTLS=3,10` and `KOLLECTOR_BENCH_ROUNDS=10` change that).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_tests::cluster::{fresh_elsewhere, latest, loads, unix_ms, Cluster};
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;

const MONITORS: usize = 1000;

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

async fn run(ttl: Duration, rounds: usize) -> Vec<(usize, Duration)> {
    let mut cluster = Cluster::start_ttl(4, ttl);
    cluster.create_monitors_with(MONITORS, "60s").await;
    let mut out = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let owners = cluster.stable(MONITORS, 300).await;
        let (victim, _) =
            loads(&owners).into_iter().max_by_key(|(c, n)| (*n, std::cmp::Reverse(c.clone()))).expect("a collector");
        let orphans: Vec<String> = owners.iter().filter(|(_, c)| **c == victim).map(|(m, _)| m.clone()).collect();
        let killed_ms = unix_ms();
        let killed = Instant::now();
        cluster.collectors.get_mut(&victim).expect("victim").kill();
        wait_for_async("orphans on one live collector each, fresh", ttl * 4 + Duration::from_secs(30), || async {
            let live = cluster.collectors.iter().filter(|(id, _)| **id != victim);
            let on = kollector_tests::cluster::owners_among(live).await;
            if let Some((m, c)) = on.iter().find(|(_, c)| c.len() > 1) {
                panic!("{m} on {c:?} at once");
            }
            let results = latest(&cluster.manager).await;
            let fresh = fresh_elsewhere(&results, &orphans, &victim, killed_ms);
            let placed = orphans.iter().filter(|m| on.get(*m).is_some_and(|c| c.len() == 1)).count();
            if fresh == orphans.len() && placed == orphans.len() {
                Ok(())
            } else {
                Err(format!("{fresh}/{} fresh, {placed} placed", orphans.len()))
            }
        })
        .await;
        let took = killed.elapsed();
        println!(
            "TTL {:>2} s round {round:2}: killed {victim} ({} monitors) -> all fresh elsewhere after {:.2} s",
            ttl.as_secs(),
            orphans.len(),
            took.as_secs_f64()
        );
        out.push((orphans.len(), took));
        // Bring it back under the same id; it starts empty and takes a share again.
        cluster.collectors.remove(&victim);
        let back = KollectorProcess::collector_ttl(&cluster.etcd.endpoint(), &victim, ttl, &[]);
        cluster.collectors.insert(victim.clone(), back);
        wait_for_async("the rejoined collector to take its share back", Duration::from_secs(120), || async {
            let owners = cluster.stable(MONITORS, 120).await;
            let on_victim = owners.values().filter(|c| **c == victim).count();
            if on_victim >= MONITORS / 4 - 10 {
                Ok(())
            } else {
                Err(format!("{victim} runs {on_victim}"))
            }
        })
        .await;
    }
    out
}

#[tokio::main]
async fn main() {
    let ttls = env_list("KOLLECTOR_BENCH_TTLS", &[3, 10]);
    let rounds = env_list("KOLLECTOR_BENCH_ROUNDS", &[10])[0] as usize;
    let mut table = BTreeMap::new();
    for ttl in ttls {
        let mut r = run(Duration::from_secs(ttl), rounds).await;
        r.sort_by_key(|(_, d)| *d);
        table.insert(ttl, r);
    }
    let s = |d: Duration| d.as_secs_f64();
    println!();
    println!("| lease TTL | kills | monitors per kill | min (s) | median (s) | p90 (s) | max (s) |");
    println!("|---|---|---|---|---|---|---|");
    for (ttl, r) in table {
        let n = r.len();
        let (lo, hi) = (r.iter().map(|x| x.0).min().unwrap_or(0), r.iter().map(|x| x.0).max().unwrap_or(0));
        println!(
            "| {ttl} s | {n} | {lo}–{hi} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s(r[0].1),
            s(r[n / 2].1),
            s(r[((n * 9) / 10).saturating_sub(1)].1),
            s(r[n - 1].1)
        );
    }
}
