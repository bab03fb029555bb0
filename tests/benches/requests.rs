//! Kafka requests per collection cycle, counted on the broker side, next to
//! the floor: prints figures (not pass/fail), recorded in BENCHMARKS.md.
//!
//!   cargo bench -p kollector-tests --bench requests
//!
//! One tansu broker advertises the port of a counting proxy
//! (`request_counter.rs`), so every connection of the monitor's client,
//! librdkafka's and the direct group connections alike, is counted by API.
//! For P partitions (one topic) × G consumer groups, one monitor's client
//! runs a warm-up cycle and then K counted cycles, once with the batched
//! direct group requests (the default) and once with librdkafka's
//! per-group admin calls (`--librdkafka-groups`, the path before).
//!
//! The floor for one broker: Metadata 1 + ListOffsets 2 (earliest, latest)
//! + ListGroups 1 + DescribeGroups 1 + OffsetFetch 1 = 6.
//!
//! Then (alone: `-- pre-v8`) a broker before OffsetFetch v8 (a virtual cluster capping it at v7)
//! against v8, at 100 groups × 1,000 partitions: one request per group is
//! the protocol's floor there; the bytes should stay near v8's because each
//! request asks for every topic instead of naming every partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_core::{MonitorInput, MonitorSpec};
use kollector_kafka::{ClientOptions, KafkaClient};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic};
use kollector_tests::request_counter::{api_name, RequestCounter};

const K: u32 = 5;
const FLOOR: f64 = 6.0;
const PARTITIONS: [usize; 3] = [10, 1_000, 10_000];
const GROUPS: [usize; 3] = [1, 100, 1_000];

fn spec(bootstrap: &str, partitions: usize, groups: usize) -> MonitorSpec {
    MonitorInput {
        id: format!("p{partitions}-g{groups}"),
        bootstrap: vec![bootstrap.to_string()],
        interval: Some("30s".into()),
        timeout: Some("25s".into()),
        topic_include: Some(format!("^p{partitions}$")),
        // The first `groups` of g0000..g0999.
        group_include: Some(match groups {
            1 => "^g0000$".to_string(),
            100 => "^g00[0-9][0-9]$".to_string(),
            _ => "^g[0-9]{4}$".to_string(),
        }),
        ..Default::default()
    }
    .validate(1)
    .expect("spec")
}

/// Requests per cycle by API and the mean cycle time, after a warm-up cycle.
fn measure(counter: &RequestCounter, spec: &MonitorSpec, librdkafka_groups: bool) -> (BTreeMap<String, f64>, Duration) {
    let options = ClientOptions { librdkafka_groups, ..ClientOptions::default() };
    let client = KafkaClient::connect(spec, &options).expect("client");
    let warm = client.collect(spec).expect("warm-up cycle");
    counter.reset();
    let started = Instant::now();
    for _ in 0..K {
        let s = client.collect(spec).expect("cycle");
        assert_eq!(s.groups.len(), warm.groups.len());
        assert!(s.groups.iter().all(|g| g.error.is_none()), "{:?}", s.groups.iter().find(|g| g.error.is_some()));
    }
    let took = started.elapsed() / K;
    let counts = counter.counts().into_iter().map(|(k, n)| (api_name(k), n as f64 / K as f64)).collect();
    (counts, took)
}

fn main() {
    // `cargo bench -p kollector-tests --bench requests -- pre-v8`: only the pre-v8 comparison.
    if std::env::args().any(|a| a == "pre-v8") {
        pre_v8();
        return;
    }
    let (_broker, counter) = RequestCounter::in_front_of_tansu("bench-requests");
    let bs = counter.address();
    let setup = Instant::now();
    for p in PARTITIONS {
        create_topic(&bs, &format!("p{p}"), p as i32);
    }
    // 1,000 groups, each with a commit on partition 0 of every topic, four committers at a time.
    let ids: Vec<String> = (0..GROUPS[2]).map(|g| format!("g{g:04}")).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(ids.len() / 4) {
            let bs = &bs;
            s.spawn(move || {
                for id in chunk {
                    commit_offsets(bs, id, &[("p10", 0, 1), ("p1000", 0, 1), ("p10000", 0, 1)]);
                }
            });
        }
    });
    eprintln!("set-up (topics, 1,000 groups): {:.0?}", setup.elapsed());

    println!("| P | G | path | requests/cycle | × floor (6) | by API | cycle time |");
    println!("|---|---|---|---|---|---|---|");
    for p in PARTITIONS {
        for g in GROUPS {
            let spec = spec(&bs, p, g);
            for (path, librdkafka) in [("direct", false), ("librdkafka", true)] {
                let (counts, took) = measure(&counter, &spec, librdkafka);
                let total: f64 = counts.values().sum();
                let by: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("| {p} | {g} | {path} | {total} | {:.2} | {} | {:.0?} |", total / FLOOR, by.join(", "), took);
            }
        }
    }
    drop(counter);
    drop(_broker);
    pre_v8();
}

/// Groups and partitions of the pre-v8 comparison: every group commits on
/// every partition, the widest answer OffsetFetch gives.
const PRE_V8: (usize, i32) = (100, 1_000);

/// A broker before Kafka 2.8 (OffsetFetch v7 at most; the virtual cluster
/// caps it in ApiVersions and passes each request to tansu as v8) against
/// the same broker offering v8: requests and bytes per cycle, both
/// directions, counted where the client's connections arrive.
fn pre_v8() {
    use kollector_kafka::wire::ApiKey;
    use kollector_tests::virtual_cluster::VirtualCluster;
    let (groups, partitions) = PRE_V8;
    let vc = VirtualCluster::start("bench-pre-v8", 1);
    let bs = vc.bootstrap();
    create_topic(&bs, "wide", partitions);
    let ids: Vec<String> = (0..groups).map(|g| format!("w{g:03}")).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(ids.len().div_ceil(4)) {
            let bs = &bs;
            s.spawn(move || {
                for id in chunk {
                    let all: Vec<(&str, i32, i64)> = (0..partitions).map(|p| ("wide", p, 1)).collect();
                    commit_offsets(bs, id, &all);
                }
            });
        }
    });
    let spec = MonitorInput {
        id: "pre-v8".into(),
        bootstrap: vec![bs.clone()],
        interval: Some("30s".into()),
        timeout: Some("25s".into()),
        ..Default::default()
    }
    .validate(1)
    .expect("spec");
    let measure = || {
        let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
        client.collect(&spec).expect("warm-up cycle");
        vc.reset_counts();
        for _ in 0..K {
            let s = client.collect(&spec).expect("cycle");
            assert_eq!(s.groups.len(), groups);
            assert!(s.groups.iter().all(|g| g.fully_read() && g.offsets.len() == partitions as usize));
        }
        let (into, out) = vc.bytes(1);
        let requests: u64 = vc.requests(1).values().sum();
        let fetches = vc.request_count(1, ApiKey::OffsetFetch);
        (requests as f64 / K as f64, fetches as f64 / K as f64, (into + out) as f64 / K as f64)
    };
    let v8 = measure();
    vc.cap_version(ApiKey::OffsetFetch, 7);
    let v7 = measure();
    println!();
    println!("| OffsetFetch | groups × partitions | requests/cycle | OffsetFetch/cycle | bytes/cycle | × v8 bytes |");
    println!("|---|---|---|---|---|---|");
    for (name, (requests, fetches, bytes)) in [("v8", v8), ("v7 (before Kafka 2.8)", v7)] {
        println!("| {name} | {groups} × {partitions} | {requests} | {fetches} | {:.0} | {:.3} |", bytes, bytes / v8.2);
    }
}
