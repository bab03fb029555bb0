//! What a monitor costs the process that runs it (prints figures; recorded
//! in BENCHMARKS.md):
//!
//!   cargo bench -p kollector-tests --bench monitor_cost
//!
//! (about 10 minutes; `COST_SIZES=1,100` picks the fleet sizes,
//! `COST_RECONFIGURE=0` skips the reconfiguration run, `COST_ROUNDS=400`
//! makes it longer.)
//!
//! One collector node in this process, monitors of one small tansu cluster
//! (a topic of 3 partitions, one consumer group) at a 30 s interval, grown
//! to 1, 100 and 1,000 monitors. At each size:
//! - RSS, threads, open sockets and `kollector_kafka_clients`;
//! - CPU while collecting: a 60 s window (two intervals), as % of one core,
//!   and CPU per collection (that window's CPU less the idle rate, over the
//!   collections it saw);
//! - idle CPU: the collect gate shut (clients open and connected, nothing
//!   collected), a 30 s window, with the thread groups that used it and
//!   their wake-ups (context switches) per second;
//! - the answers: every monitor reports the group's committed offsets and lag.
//!
//! Then the reconfiguration run: 100 monitors, each reconfigured 100 times
//! (10,000 reconfigurations, each closing one client and opening another
//! that collects once); threads, sockets, RSS and clients before and after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kollector_collector::{CollectGate, CollectorHandle, CollectorNode};
use kollector_core::{MonitorId, MonitorInput, MonitorSpec};
use kollector_kafka::ClientOptions;
use kollector_tests::counting_alloc::{live_bytes, Counting};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::net::{rss_kib, thread_count};
use kollector_tests::poll::{wait_for, wait_unchanged};
use kollector_tests::proc_stat::{cpu_seconds, socket_count, thread_use_between, threads};
use kollector_tests::tansu::TansuBroker;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const INTERVAL: &str = "30s";
const STEADY_WINDOW: Duration = Duration::from_secs(60);
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// The group's commits: (partition, committed); each partition holds 5 records.
const COMMITS: [(i32, i64); 3] = [(0, 2), (1, 5), (2, 0)];

fn spec(id: &str, bootstrap: &str, timeout: &str, generation: u64) -> MonitorSpec {
    MonitorInput {
        id: id.into(),
        bootstrap: vec![bootstrap.to_string()],
        interval: Some(INTERVAL.into()),
        timeout: Some(timeout.into()),
        ..Default::default()
    }
    .validate(generation)
    .expect("spec")
}

fn id(i: usize) -> MonitorId {
    MonitorId::new(format!("m{i:04}")).expect("id")
}

struct Resources {
    rss_mib: f64,
    /// Bytes malloc has handed out and not had back (glibc's `mallinfo2`,
    /// every arena, C and Rust allocations alike): a leak grows this, while
    /// RSS also grows with fragmentation and arenas that keep freed pages.
    heap_mib: f64,
    /// Of which Rust's allocations (the counting allocator): ours and
    /// rdkafka's Rust side.
    rust_heap_mib: f64,
    threads: u64,
    sockets: usize,
    clients: i64,
}

fn resources(pid: u32) -> Resources {
    Resources {
        rss_mib: rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
        heap_mib: heap_in_use() as f64 / (1024.0 * 1024.0),
        rust_heap_mib: live_bytes() as f64 / (1024.0 * 1024.0),
        threads: thread_count(pid).unwrap_or(0),
        sockets: socket_count(pid),
        clients: kollector_kafka::live_clients(),
    }
}

fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads malloc's statistics.
    let info = unsafe { libc::mallinfo2() };
    info.uordblks + info.hblkhd
}

/// Waits until monitors `0..n` all have a snapshot of generation `generation`.
fn wait_collected(node: &CollectorHandle, n: usize, generation: u64, within: Duration) {
    wait_for(&format!("{n} monitors collected at generation {generation}"), within, || {
        let done = (0..n)
            .filter(|&i| node.store().get(&id(i)).is_some_and(|r| r.generation == generation && r.snapshot.is_some()))
            .count();
        if done == n {
            Ok(())
        } else {
            Err(format!("{done}/{n}"))
        }
    });
}

/// Every monitor must report the group exactly: the cost figures are for
/// right answers only.
fn check_answers(node: &CollectorHandle, n: usize) {
    for i in 0..n {
        let r = node.store().get(&id(i)).expect("result");
        let s = r.snapshot.as_ref().expect("snapshot");
        let g = s.groups.iter().find(|g| g.group_id == "billing").unwrap_or_else(|| panic!("{}: no group", id(i)));
        for (p, committed) in COMMITS {
            let o = g.offsets.iter().find(|o| o.topic == "orders" && o.partition == p).expect("partition");
            assert_eq!(o.committed, committed, "{} orders/{p} committed", id(i));
            assert_eq!(o.lag, Some(5 - committed), "{} orders/{p} lag", id(i));
        }
    }
}

/// Waits until `n` clients are open in this process.
fn wait_clients(what: &str, n: usize) {
    wait_for(what, Duration::from_secs(60), || match kollector_kafka::live_clients() {
        open if open == n as i64 => Ok(()),
        open => Err(format!("{open} open")),
    });
}

fn main() {
    let pid = std::process::id();
    let sizes: Vec<usize> = std::env::var("COST_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    let reconfigure = std::env::var("COST_RECONFIGURE").map(|v| v != "0").unwrap_or(true);

    let broker = TansuBroker::start("bench-cost");
    let bs = broker.bootstrap();
    create_topic(&bs, "orders", 3);
    for p in 0..3 {
        produce_records(&bs, "orders", p, 5);
    }
    let commits: Vec<(&str, i32, i64)> = COMMITS.iter().map(|(p, c)| ("orders", *p, *c)).collect();
    commit_offsets(&bs, "billing", &commits);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // The gate lets the bench stop collections while every client stays
    // open (the idle measurement); shut and reopened like a lease would.
    let gate = CollectGate::shut();
    let far = || Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    gate.open_until(far());
    let node = CollectorNode::start_gated(ClientOptions::default(), gate.clone()).expect("node");

    // Every published result (success or failure) counts as one collection.
    let collections = Arc::new(AtomicU64::new(0));
    {
        let mut changes = node.store().subscribe();
        let counter = collections.clone();
        std::thread::spawn(move || loop {
            match changes.blocking_recv() {
                Ok(_) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    counter.fetch_add(n, Ordering::SeqCst);
                }
                Err(_) => return,
            }
        });
    }

    let empty = resources(pid);
    println!(
        "no monitors: RSS {:.1} MiB, {} threads, {} sockets, {} clients",
        empty.rss_mib, empty.threads, empty.sockets, empty.clients
    );
    println!();
    println!("| monitors | RSS (MiB) | threads | sockets | clients | CPU collecting (% core) | CPU per collection (ms) | idle CPU (% core) | idle wake-ups/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut running = 0;
    let mut idle_breakdowns = Vec::new();
    for &n in &sizes {
        let started = Instant::now();
        for i in running..n {
            rt.block_on(node.assign(spec(id(i).as_str(), &bs, "8s", 1))).expect("assign");
        }
        running = running.max(n);
        wait_collected(&node, n, 1, Duration::from_secs(300));
        check_answers(&node, n);
        let ready = started.elapsed();

        // Collecting: every monitor at its 30 s interval.
        let (cpu0, k0) = (cpu_seconds(pid).unwrap_or(0.0), collections.load(Ordering::SeqCst));
        std::thread::sleep(STEADY_WINDOW); // the measurement window itself
        let (cpu1, k1) = (cpu_seconds(pid).unwrap_or(0.0), collections.load(Ordering::SeqCst));
        let steady_cpu = cpu1 - cpu0;
        let seen = k1 - k0;

        // Idle: gate shut, clients open. Shutting the gate fences the
        // collections in flight, and a fenced monitor closes its client
        // until the gate opens (rare: a collection takes milliseconds), so
        // the table's `clients` column is the number the idle window saw.
        gate.close();
        // After the gate shut, collections already started run to their end.
        wait_unchanged("collections to stop", Duration::from_secs(10), Duration::from_secs(120), || {
            collections.load(Ordering::SeqCst)
        });
        let r = resources(pid);
        if r.clients != n as i64 {
            eprintln!("  note: {} of {n} clients open in the idle window (the rest were fenced)", r.clients);
        }
        // The thread walks (thousands of /proc reads) stay outside the window.
        let t0 = threads(pid);
        let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
        std::thread::sleep(IDLE_WINDOW); // the measurement window itself
        let cpu1 = cpu_seconds(pid).unwrap_or(0.0);
        let t1 = threads(pid);
        let idle_rate = (cpu1 - cpu0) / IDLE_WINDOW.as_secs_f64();
        let by_group = thread_use_between(&t0, &t1);
        let wakeups: u64 = by_group.values().map(|u| u.switches).sum();
        gate.open_until(far());

        let per_collection_ms = if seen > 0 {
            (steady_cpu - idle_rate * STEADY_WINDOW.as_secs_f64()).max(0.0) / seen as f64 * 1e3
        } else {
            f64::NAN
        };
        println!(
            "| {n} | {:.1} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.0} |",
            r.rss_mib,
            r.threads,
            r.sockets,
            r.clients,
            steady_cpu / STEADY_WINDOW.as_secs_f64() * 100.0,
            per_collection_ms,
            idle_rate * 100.0,
            wakeups as f64 / IDLE_WINDOW.as_secs_f64(),
        );
        eprintln!(
            "  {n} monitors ready in {ready:.1?}; {seen} collections in the {STEADY_WINDOW:?} window; per monitor: {:.2} MiB, {:.2} threads, {:.2} sockets",
            (r.rss_mib - empty.rss_mib) / n as f64,
            (r.threads - empty.threads) as f64 / n as f64,
            (r.sockets - empty.sockets) as f64 / n as f64,
        );
        idle_breakdowns.push((n, by_group));
    }

    println!();
    println!("Idle CPU by thread group (gate shut, 30 s):");
    println!();
    println!("| monitors | thread group | threads | CPU (% core) | wake-ups/s |");
    println!("|---|---|---|---|---|");
    for (n, by_group) in &idle_breakdowns {
        let mut groups: Vec<_> = by_group.iter().collect();
        groups.sort_by(|a, b| b.1.cpu_seconds.total_cmp(&a.1.cpu_seconds).then(b.1.switches.cmp(&a.1.switches)));
        for (name, u) in groups.into_iter().filter(|(_, u)| u.switches > 0 || u.cpu_seconds > 0.0) {
            println!(
                "| {n} | {name} | {} | {:.2} | {:.0} |",
                u.threads,
                u.cpu_seconds / IDLE_WINDOW.as_secs_f64() * 100.0,
                u.switches as f64 / IDLE_WINDOW.as_secs_f64()
            );
        }
    }

    if reconfigure {
        reconfiguration_run(&rt, &node, &bs, running, pid);
    }

    rt.block_on(node.shutdown());
    wait_clients("clients closed", 0);
}

/// 100 monitors, 100 rounds: each round reconfigures every monitor (a new
/// timeout, so a new generation and a new client) and waits until all have
/// collected with it.
fn reconfiguration_run(rt: &tokio::runtime::Runtime, node: &CollectorHandle, bs: &str, running: usize, pid: u32) {
    const N: usize = 100;
    let rounds: u64 = std::env::var("COST_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(100);
    for i in running..N {
        rt.block_on(node.assign(spec(id(i).as_str(), bs, "8s", 1))).expect("assign");
    }
    for i in N..running {
        rt.block_on(node.unassign(id(i))).expect("unassign");
    }
    wait_collected(node, N, 1, Duration::from_secs(120));
    wait_clients("one client per monitor", N);
    // One warm-up round, so allocator arenas and the blocking pool have
    // grown to what a reconfiguration needs before the baseline.
    let mut generation = 1;
    let round = |generation: u64| {
        let timeout = if generation.is_multiple_of(2) { "7s" } else { "8s" };
        for i in 0..N {
            rt.block_on(node.assign(spec(id(i).as_str(), bs, timeout, generation))).expect("reconfigure");
        }
        wait_collected(node, N, generation, Duration::from_secs(120));
    };
    generation += 1;
    round(generation);
    // Settled: one client per monitor, and the blocking pool (which runs
    // collections and client drops, and lets an idle thread go after 10 s)
    // back to its resting size, i.e. the thread count unchanged for 12 s.
    let settle = |what: &str| {
        wait_clients(what, N);
        wait_unchanged("the thread count to settle", Duration::from_secs(12), Duration::from_secs(120), || {
            thread_count(pid).unwrap_or(0)
        });
        resources(pid)
    };
    println!();
    println!(
        "Reconfiguration run: {N} monitors, {rounds} rounds of reconfiguring every one ({} in all)",
        N as u64 * rounds
    );
    println!();
    println!(
        "| reconfigurations | RSS (MiB) | malloc in use (MiB) | of which Rust (MiB) | threads | sockets | clients |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |done: u64, r: &Resources| {
        println!(
            "| {done} | {:.1} | {:.1} | {:.2} | {} | {} | {} |",
            r.rss_mib, r.heap_mib, r.rust_heap_mib, r.threads, r.sockets, r.clients
        );
    };
    row(0, &settle("clients after the warm-up round"));
    let started = Instant::now();
    for r in 1..=rounds {
        generation += 1;
        round(generation);
        if r.is_multiple_of(25) {
            row(r * N as u64, &settle("clients after 25 rounds"));
        }
    }
    eprintln!("reconfiguration run took {:.0?} (settling included)", started.elapsed());
    check_answers(node, N);
    let by_monitor: BTreeMap<_, _> = (0..N).map(|i| (i, node.store().get(&id(i)).map(|r| r.generation))).collect();
    assert!(by_monitor.values().all(|g| *g == Some(generation)), "every monitor at generation {generation}");
}
