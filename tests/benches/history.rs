//! Memory and time cost of the offset history behind lag in seconds and
//! verdicts (prints figures; recorded in BENCHMARKS.md):
//!
//!   cargo bench -p kollector-tests --bench history
//!
//! Heap bytes are counted by a counting global allocator around the system
//! one, so the figures are exact for the history's own data structures.
//! For P partitions (one group committing on each) at the default 1-hour
//! history and a 30 s interval: the history when every partition is busy
//! (a new offset every cycle: 122 points each) and when every one is idle
//! (a flat run: 2 points), the time of one cycle's `observe`, and the size
//! of the handover copy a collector sends to the managers in cluster mode.

use std::time::{Duration, Instant};

use kollector_core::history::{HistoryLimits, MonitorHistory, DEFAULT_HISTORY, DEFAULT_WINDOW, HANDOVER_MAX_POINTS};
use kollector_tests::counting_alloc::{live_bytes, Counting};
use prost::Message as _;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const INTERVAL: Duration = Duration::from_secs(30);

/// A history after a full window of cycles; returns it, its heap bytes and
/// the mean time of one `observe` once full.
fn build(partitions: i32, busy: bool) -> (MonitorHistory, usize, Duration) {
    let limits = HistoryLimits::for_monitor(DEFAULT_HISTORY, INTERVAL);
    let cycles = limits.max_points as u64 + 5;
    let before = live_bytes();
    let mut h = MonitorHistory::default();
    let mut timed = Duration::ZERO;
    let mut s = kollector_core::testing::one_group_snapshot("events", "billing", partitions, (0, 1_000), 970);
    for cycle in 0..cycles {
        let latest = if busy { 1_000 + cycle as i64 * 100 } else { 1_000 };
        for p in &mut s.topics[0].partitions {
            p.latest = Some(latest);
        }
        for o in &mut s.groups[0].offsets {
            o.committed = latest - 30;
        }
        let started = Instant::now();
        h.observe(&mut s, cycle * INTERVAL.as_millis() as u64, limits, DEFAULT_WINDOW);
        if cycle + 5 >= cycles {
            timed += started.elapsed();
        }
    }
    drop(s);
    let bytes = (live_bytes() - before).max(0) as usize;
    (h, bytes, timed / 5)
}

fn main() {
    println!("offset history at a {}s interval, {} of history", INTERVAL.as_secs(), humantime(DEFAULT_HISTORY));
    println!(
        "| partitions | state | points | heap (MiB) | bytes per partition | observe (ms/cycle) | handover (points) | handover wire (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for partitions in [1, 1_000, 10_000] {
        for busy in [true, false] {
            let (h, bytes, observe) = build(partitions, busy);
            let copy = h.for_handover(HANDOVER_MAX_POINTS);
            let wire = kollector_proto::history_to_proto(&copy).encoded_len();
            println!(
                "| {partitions} | {} | {} | {:.2} | {} | {:.2} | {} | {:.1} |",
                if busy { "busy" } else { "idle" },
                h.points(),
                bytes as f64 / (1024.0 * 1024.0),
                bytes / partitions as usize,
                observe.as_secs_f64() * 1000.0,
                copy.points() + copy.observations(),
                wire as f64 / 1024.0,
            );
        }
    }
}

fn humantime(d: Duration) -> String {
    format!("{}h", d.as_secs() / 3600)
}
