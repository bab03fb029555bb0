//! Failover time over repeated collector crashes (prints figures; recorded
//! in BENCHMARKS.md). Needs the release binary:
//!
//!   cargo build --release -p kollector && cargo bench -p kollector-tests --bench failover
//!
//! etcd, a tansu broker, one manager (reconcile period 500 ms) and three
//! collectors (lease TTL 3 s) run 30 monitors at a 1 s interval. Each round
//! SIGKILLs the busiest collector and measures the time until every one of
//! its monitors has a fresh result from a live collector; then the killed
//! collector is restarted with the same id and the cluster settles again.

use std::time::{Duration, Instant};

use kollector_tests::cluster::{fresh_elsewhere, latest, unix_ms, Cluster, TTL};
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;

const ROUNDS: usize = 10;

#[tokio::main]
async fn main() {
    let mut cluster = Cluster::start(3);
    cluster.create_monitors(30).await;
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let owners = cluster.settled(30, 120).await;
        let mut load: std::collections::BTreeMap<&String, usize> = Default::default();
        for c in owners.values() {
            *load.entry(c).or_default() += 1;
        }
        let (victim, _) =
            load.iter().max_by_key(|(c, n)| (**n, std::cmp::Reverse(String::clone(c)))).expect("a collector");
        let victim = (*victim).clone();
        let orphans: Vec<String> = owners.iter().filter(|(_, c)| **c == victim).map(|(m, _)| m.clone()).collect();
        let killed_ms = unix_ms();
        let killed = Instant::now();
        cluster.collectors.get_mut(&victim).expect("victim").kill();
        wait_for_async("orphans fresh elsewhere", Duration::from_secs(60), || async {
            let results = latest(&cluster.manager).await;
            let fresh = fresh_elsewhere(&results, &orphans, &victim, killed_ms);
            if fresh == orphans.len() {
                Ok(())
            } else {
                Err(format!("{fresh}/{}", orphans.len()))
            }
        })
        .await;
        let took = killed.elapsed();
        println!(
            "round {round:2}: killed {victim} ({} monitors) -> all fresh elsewhere after {:.2} s",
            orphans.len(),
            took.as_secs_f64()
        );
        times.push(took);
        // Bring it back under the same id; it starts empty and takes a share again.
        cluster.collectors.remove(&victim);
        cluster.collectors.insert(victim.clone(), KollectorProcess::collector(&cluster.etcd.endpoint(), &victim));
        wait_for_async("the rejoined collector to take its share back", Duration::from_secs(60), || async {
            let owners = cluster.settled(30, 60).await;
            let on_victim = owners.values().filter(|c| **c == victim).count();
            if on_victim == 10 {
                Ok(())
            } else {
                Err(format!("{victim} runs {on_victim}"))
            }
        })
        .await;
    }
    times.sort();
    let s = |d: Duration| d.as_secs_f64();
    println!();
    println!("| kills | lease TTL | min (s) | median (s) | p90 (s) | max (s) |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {ROUNDS} | {} s | {:.2} | {:.2} | {:.2} | {:.2} |",
        TTL.as_secs(),
        s(times[0]),
        s(times[ROUNDS / 2]),
        s(times[(ROUNDS * 9) / 10 - 1]),
        s(times[ROUNDS - 1])
    );
}
