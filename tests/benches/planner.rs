//! Planner benchmark (prints figures; recorded in BENCHMARKS.md):
//!
//!   cargo bench -p kollector-tests --bench planner
//!
//! Time to plan 100,000 monitors over 100 collectors from scratch, to re-plan
//! with unchanged inputs, and after one collector joins or leaves, with the
//! number of monitors each change moves and the resulting max/mean load.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_core::{CollectorId, MonitorId};
use kollector_manager::planner::{plan, CollectorSlot, Placement, Plan};

fn collectors(n: usize) -> Vec<CollectorSlot> {
    (0..n)
        .map(|i| CollectorSlot {
            id: CollectorId::new(format!("collector-{i:03}")).unwrap(),
            weight: 1.0,
            labels: BTreeMap::new(),
        })
        .collect()
}

fn timed(f: impl Fn() -> Plan) -> (Plan, Duration) {
    // Best of 3, to keep one-off scheduling noise out.
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let p = f();
        best = best.min(t.elapsed());
        out = Some(p);
    }
    (out.expect("ran"), best)
}

fn max_over_mean(p: &Plan, cs: &[CollectorSlot]) -> f64 {
    let loads = p.loads(cs);
    let max = *loads.values().max().unwrap_or(&0) as f64;
    max / (p.assignments.len() as f64 / cs.len() as f64)
}

fn main() {
    const M: usize = 100_000;
    const N: usize = 100;
    let monitors: BTreeMap<MonitorId, Placement> =
        (0..M).map(|i| (MonitorId::new(format!("monitor-{i:06}")).unwrap(), Placement::default())).collect();
    let cs = collectors(N);
    let none = BTreeMap::new();
    println!("| case ({M} monitors) | time (ms) | moved | max/mean load |");
    println!("|---|---|---|---|");
    let (first, t) = timed(|| plan(&monitors, &cs, &none));
    println!(
        "| plan from scratch, {N} collectors | {:.0} | - | {:.3} |",
        t.as_secs_f64() * 1e3,
        max_over_mean(&first, &cs)
    );
    let (again, t) = timed(|| plan(&monitors, &cs, &first.assignments));
    println!(
        "| re-plan, same inputs | {:.0} | {} | {:.3} |",
        t.as_secs_f64() * 1e3,
        again.moves_from(&first.assignments),
        max_over_mean(&again, &cs)
    );
    let joined = collectors(N + 1);
    let (join, t) = timed(|| plan(&monitors, &joined, &first.assignments));
    println!(
        "| collector joins ({N} -> {}) | {:.0} | {} (ideal {}) | {:.3} |",
        N + 1,
        t.as_secs_f64() * 1e3,
        join.moves_from(&first.assignments),
        M / (N + 1),
        max_over_mean(&join, &joined)
    );
    let left: Vec<CollectorSlot> = cs.iter().skip(1).cloned().collect();
    let owned = first.assignments.values().filter(|c| **c == cs[0].id).count();
    let (leave, t) = timed(|| plan(&monitors, &left, &first.assignments));
    println!(
        "| collector leaves ({N} -> {}) | {:.0} | {} (it owned {owned}) | {:.3} |",
        N - 1,
        t.as_secs_f64() * 1e3,
        leave.moves_from(&first.assignments),
        max_over_mean(&leave, &left)
    );
}
