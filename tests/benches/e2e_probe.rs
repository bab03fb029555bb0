//! What the end-to-end probe costs (prints figures; recorded in BENCHMARKS.md):
//!
//!   cargo build --release -p kollector && KOLLECTOR_BIN=target/release/kollector \
//!     cargo bench -p kollector-tests --bench e2e_probe
//!
//! (about 3 minutes; `PROBE_MONITORS=10` sets the fleet, `PROBE_WINDOW=60`
//! the measuring window in seconds.)
//!
//! Two `kollector standalone` processes watch the same tansu broker through
//! a request-counting proxy, each with the same monitors (30 s interval):
//! one without the probe, one with it (default settings: one message per
//! partition per second; the probe topic gets one partition, tansu being one
//! broker). The difference is the probe's: threads, RSS, CPU over the
//! window, and Kafka requests per second counted by the broker side for the
//! probe clients (`kollector-<monitor>-e2e`), by API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_tests::kollector::KollectorProcess;
use kollector_tests::net::{rss_kib, thread_count};
use kollector_tests::poll::wait_for;
use kollector_tests::proc_stat::cpu_seconds;
use kollector_tests::request_counter::{api_name, RequestCounter};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(monitors: u64, bootstrap: &str, probe: bool) -> String {
    (0..monitors)
        .map(|i| {
            let probe = if probe { "[monitors.e2e_probe]\n" } else { "" };
            format!(
                "[[monitors]]\nid = \"m{i}\"\nbootstrap = [\"{bootstrap}\"]\ninterval = \"30s\"\ntimeout = \"10s\"\n{probe}"
            )
        })
        .collect()
}

struct Figures {
    threads: u64,
    rss_kib: u64,
    cpu_percent: f64,
}

fn measure(k: &KollectorProcess, window: Duration) -> Figures {
    let before = cpu_seconds(k.pid()).unwrap_or(0.0);
    let started = Instant::now();
    std::thread::sleep(window);
    let cpu = cpu_seconds(k.pid()).unwrap_or(0.0) - before;
    Figures {
        threads: thread_count(k.pid()).unwrap_or(0),
        rss_kib: rss_kib(k.pid()).unwrap_or(0),
        cpu_percent: 100.0 * cpu / started.elapsed().as_secs_f64(),
    }
}

fn main() {
    let monitors = env_or("PROBE_MONITORS", 10);
    let window = Duration::from_secs(env_or("PROBE_WINDOW", 60));
    let (_broker, counter) = RequestCounter::in_front_of_tansu("probe-cost");
    let bootstrap = counter.address();

    let without = KollectorProcess::standalone(&config(monitors, &bootstrap, false));
    let with = KollectorProcess::standalone(&config(monitors, &bootstrap, true));
    wait_for("every probe to carry messages back", Duration::from_secs(120), || {
        let m = with.metrics();
        let back = (0..monitors)
            .filter(|i| {
                m.value("kafka_e2e_messages_received_total", &[("monitor", &format!("m{i}"))]).unwrap_or(0.0) >= 3.0
            })
            .count() as u64;
        (back == monitors).then_some(()).ok_or(format!("{back}/{monitors} probes"))
    });
    counter.reset();
    let started = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| measure(&without, window));
        let b = s.spawn(|| measure(&with, window));
        (a.join().expect("measure"), b.join().expect("measure"))
    });
    let secs = started.elapsed().as_secs_f64();
    let mut probe_requests: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..monitors {
        for (api, n) in counter.counts_from(&format!("kollector-m{i}-e2e")) {
            *probe_requests.entry(api_name(api)).or_default() += n;
        }
    }
    let m = with.metrics();
    let lost = m.find("kafka_e2e_messages_lost_total", &[]).iter().map(|s| s.value).sum::<f64>();
    let received = m.find("kafka_e2e_messages_received_total", &[]).iter().map(|s| s.value).sum::<f64>();
    println!(
        "e2e probe cost, {monitors} monitors, {window:?} window (default probe: 1 message per partition per second)"
    );
    println!("| | without probe | with probe | per probe |");
    println!("|---|---|---|---|");
    println!(
        "| threads | {} | {} | {:.1} |",
        a.threads,
        b.threads,
        (b.threads as f64 - a.threads as f64) / monitors as f64
    );
    println!(
        "| RSS | {:.1} MiB | {:.1} MiB | {:.2} MiB |",
        a.rss_kib as f64 / 1024.0,
        b.rss_kib as f64 / 1024.0,
        (b.rss_kib as f64 - a.rss_kib as f64) / 1024.0 / monitors as f64
    );
    println!(
        "| CPU (% of a core) | {:.2} | {:.2} | {:.3} |",
        a.cpu_percent,
        b.cpu_percent,
        (b.cpu_percent - a.cpu_percent) / monitors as f64
    );
    let total: u64 = probe_requests.values().sum();
    println!("| probe requests/s | | {:.1} | {:.2} |", total as f64 / secs, total as f64 / secs / monitors as f64);
    for (api, n) in &probe_requests {
        println!("|   {api} | | {:.2}/s | {:.3}/s |", *n as f64 / secs, *n as f64 / secs / monitors as f64);
    }
    println!("messages received {received}, lost {lost}");
}
