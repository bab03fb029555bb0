//! Planner benchmark (prints figures; recorded in BENCHMARKS.md):
//!
//!   cargo bench -p kollector-tests --bench planner
//!
//! Time to plan 100,000 monitors over 100 collectors from scratch, to re-plan
//! with unchanged inputs, and after one collector joins or leaves, with the
//! number of monitors each change moves and the resulting max/mean load.
//! Then the leader's whole decision step of a reconcile pass (plan, record
//! writes, Unassigns, safe Assigns; no I/O) for a steady cluster, a dead
//! collector and a drained one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use kollector_core::{CollectorId, Generation, MonitorId};
use kollector_manager::decisions::{
    assign_actions, assignment_changes, survey, unassign_actions, AssignmentRecord, Confirmed, Report, Running,
};
use kollector_manager::planner::{plan, plan_borrowed, CollectorSlot, Placement, Plan};

/// One pass's decisions, as the reconciler makes them (the records are
/// updated in place with the writes); returns (writes, unassigns, assigns,
/// pending).
fn decide(
    monitors: &BTreeMap<MonitorId, Placement>,
    slots: &[CollectorSlot],
    live: &BTreeSet<CollectorId>,
    records: &mut BTreeMap<MonitorId, AssignmentRecord>,
    reports: &BTreeMap<CollectorId, Report>,
    generations: &BTreeMap<MonitorId, Generation>,
) -> (usize, usize, usize, usize) {
    let previous = records.iter().filter_map(|(m, r)| r.collector.as_ref().map(|c| (m, c)));
    let (planned, _) = plan_borrowed(monitors, slots, previous);
    let none = BTreeSet::new();
    let writes = assignment_changes(planned, records, live, &Confirmed::new(), &none);
    for w in &writes {
        match &w.value {
            Some(v) => {
                records.insert(w.monitor.clone(), AssignmentRecord::written(v, 1));
            }
            None => {
                records.remove(&w.monitor);
            }
        }
    }
    let survey = survey(records, live, reports);
    let unassigns = unassign_actions(&survey, generations, &none);
    let confirmed: Confirmed = unassigns.iter().map(|u| (u.collector.clone(), u.monitor.clone())).collect();
    let (assigns, pending) = assign_actions(&survey, generations, &confirmed, &none);
    (writes.len(), unassigns.len(), assigns.len(), pending.len())
}

/// Best of 3; each run starts from its own copy of the records (made
/// outside the timing, as the reconciler reads them from etcd).
fn timed_pass(
    records: &BTreeMap<MonitorId, AssignmentRecord>,
    f: impl Fn(&mut BTreeMap<MonitorId, AssignmentRecord>) -> (usize, usize, usize, usize),
) -> ((usize, usize, usize, usize), Duration) {
    let mut best = Duration::MAX;
    let mut out = (0, 0, 0, 0);
    for _ in 0..3 {
        let mut copy = records.clone();
        let t = Instant::now();
        out = f(&mut copy);
        best = best.min(t.elapsed());
    }
    (out, best)
}

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

    // The leader's decisions for a whole pass, steady and after a change.
    let generations: BTreeMap<MonitorId, Generation> = monitors.keys().map(|m| (m.clone(), 1)).collect();
    let records: BTreeMap<MonitorId, AssignmentRecord> = first
        .assignments
        .iter()
        .map(|(m, c)| {
            (m.clone(), AssignmentRecord { collector: Some(c.clone()), releasing: BTreeSet::new(), epoch: 1 })
        })
        .collect();
    let report_of = |records: &BTreeMap<MonitorId, AssignmentRecord>, c: &CollectorId| {
        Report::Answered(std::sync::Arc::new(
            records
                .iter()
                .filter(|(_, r)| r.collector.as_ref() == Some(c))
                .map(|(m, _)| (m.clone(), Running { generation: 1, epoch: 1, stopping: false }))
                .collect(),
        ))
    };
    let all_live: BTreeSet<CollectorId> = cs.iter().map(|c| c.id.clone()).collect();
    let reports: BTreeMap<CollectorId, Report> =
        cs.iter().map(|c| (c.id.clone(), report_of(&records, &c.id))).collect();
    println!();
    println!("| reconcile pass decisions ({M} monitors, {N} collectors) | time (ms) | writes | unassigns | assigns | waiting |");
    println!("|---|---|---|---|---|---|");
    let ((w, u, a, p), t) = timed_pass(&records, |r| decide(&monitors, &cs, &all_live, r, &reports, &generations));
    println!("| steady (nothing to do) | {:.0} | {w} | {u} | {a} | {p} |", t.as_secs_f64() * 1e3);
    let mut dead_live = all_live.clone();
    dead_live.remove(&cs[0].id);
    let mut dead_reports = reports.clone();
    dead_reports.remove(&cs[0].id);
    let ((w, u, a, p), t) =
        timed_pass(&records, |r| decide(&monitors, &left, &dead_live, r, &dead_reports, &generations));
    println!("| a collector died | {:.0} | {w} | {u} | {a} | {p} |", t.as_secs_f64() * 1e3);
    let ((w, u, a, p), t) = timed_pass(&records, |r| decide(&monitors, &left, &all_live, r, &reports, &generations));
    println!("| a collector drains | {:.0} | {w} | {u} | {a} | {p} |", t.as_secs_f64() * 1e3);
}
