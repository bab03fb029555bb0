//! Benchmarks that print figures (not pass/fail): recorded in BENCHMARKS.md.
//!
//!   cargo bench -p kollector-tests --bench collection
//!
//! 1. Kafka requests per collection cycle, per API, for clusters with P
//!    partitions and G consumer groups, counted by librdkafka's own
//!    statistics (the client's request counters), against a real tansu
//!    broker and a 3-broker librdkafka mock cluster.
//!
//! What a monitor costs (memory, threads, sockets, CPU) is measured by the
//! `monitor_cost` bench.

use std::time::{Duration, Instant};

use kollector_core::{MonitorInput, MonitorSpec};
use kollector_kafka::{ClientOptions, KafkaClient, RequestCounts};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::tansu::TansuBroker;
use rdkafka::mocking::MockCluster;

fn spec(id: &str, bootstrap: &str) -> MonitorSpec {
    MonitorInput {
        id: id.into(),
        bootstrap: bootstrap.split(',').map(String::from).collect(),
        interval: Some("10s".into()),
        timeout: Some("8s".into()),
        ..Default::default()
    }
    .validate(1)
    .expect("spec")
}

fn diff(after: &RequestCounts, before: &RequestCounts, cycles: i64) -> Vec<(String, f64)> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0)) as f64 / cycles as f64))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// Requests per cycle: warm up (connections, ApiVersions), then count K cycles.
fn requests_per_cycle(bootstrap: &str) -> (Vec<(String, f64)>, Duration) {
    let options = ClientOptions { statistics_interval: Some(Duration::from_millis(50)), ..ClientOptions::default() };
    let spec = spec("bench", bootstrap);
    let client = KafkaClient::connect(&spec, &options).expect("client");
    client.collect(&spec).expect("warm-up collection");
    assert!(client.wait_for_statistics(Duration::from_secs(5)), "statistics");
    let before = client.request_counts().expect("counts");
    const K: i64 = 5;
    let started = Instant::now();
    for _ in 0..K {
        let s = client.collect(&spec).expect("collection");
        assert!(s.warnings.iter().all(|w| !w.contains("unavailable")), "{:?}", s.warnings);
    }
    let per_cycle_time = started.elapsed() / K as u32;
    assert!(client.wait_for_statistics(Duration::from_secs(5)), "statistics");
    let after = client.request_counts().expect("counts");
    if std::env::var_os("KOLLECTOR_BENCH_RAW").is_some() {
        eprintln!("raw request counters after the run: {after:?}");
    }
    (diff(&after, &before, K), per_cycle_time)
}

/// Broker-side request counts from librdkafka's mock cluster (request
/// tracking): exact, independent of the client's own statistics, which do
/// not count the admin API's OffsetFetch requests.
fn mock_group_requests(groups: usize) -> (f64, f64, f64) {
    use rdkafka::config::ClientConfig;
    use rdkafka_sys::bindings as ffi;
    // A client configured with test.mock.num.brokers owns an in-process mock cluster.
    let host: rdkafka::producer::BaseProducer =
        ClientConfig::new().set("test.mock.num.brokers", "3").set("log_level", "3").create().expect("mock host");
    // SAFETY: the mock cluster belongs to `host`, which outlives every use below.
    let (mcluster, bootstrap) = unsafe {
        let m = ffi::rd_kafka_handle_mock_cluster(rdkafka::producer::Producer::client(&host).native_ptr());
        (m, kollector_devkit::fixtures::c_str(ffi::rd_kafka_mock_cluster_bootstraps(m)))
    };
    create_topic_on_mock(&bootstrap);
    let ids: Vec<String> = (0..groups).map(|g| format!("group-{g}")).collect();
    for id in &ids {
        commit_offsets(&bootstrap, id, &[("events", 0, 1)]);
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kollector_devkit::fixtures::client_config(&bootstrap).create().expect("admin");
    let t = Duration::from_secs(10);
    // Warm-up (connections, coordinator lookups), then count three calls.
    kollector_kafka::admin::list_consumer_group_offsets(admin.inner(), &ids, t).expect("warm-up");
    const K: usize = 3;
    // SAFETY: mcluster is live (owned by `host`); the request array is destroyed after reading.
    let counts = unsafe {
        ffi::rd_kafka_mock_start_request_tracking(mcluster);
        for _ in 0..K {
            let r = kollector_kafka::admin::list_consumer_group_offsets(admin.inner(), &ids, t).expect("offsets");
            // The mock answers a fetch of "all partitions" with none, so only success is checked here;
            // the values are checked against tansu in tests/tests/kafka_admin.rs.
            assert!(r.iter().all(|(_, o)| o.is_ok()), "{:?}", &r[..1]);
        }
        let mut cnt = 0usize;
        let reqs = ffi::rd_kafka_mock_get_requests(mcluster, &mut cnt);
        let keys: Vec<i16> = (0..cnt).map(|i| ffi::rd_kafka_mock_request_api_key(*reqs.add(i))).collect();
        ffi::rd_kafka_mock_request_destroy_array(reqs, cnt);
        ffi::rd_kafka_mock_stop_request_tracking(mcluster);
        keys
    };
    let per = |key: i16| counts.iter().filter(|k| **k == key).count() as f64 / K as f64;
    const OFFSET_FETCH: i16 = 9;
    const FIND_COORDINATOR: i16 = 10;
    (per(OFFSET_FETCH), per(FIND_COORDINATOR), counts.len() as f64 / K as f64)
}

fn create_topic_on_mock(bootstrap: &str) {
    // The mock auto-creates topics on first use (4 partitions); a metadata request for it is enough.
    let c: rdkafka::consumer::BaseConsumer = kollector_devkit::fixtures::client_config(bootstrap)
        .set("allow.auto.create.topics", "true")
        .create()
        .expect("client");
    let _ = rdkafka::consumer::Consumer::fetch_metadata(&c, Some("events"), Duration::from_secs(5));
}

fn print_requests(label: &str, counts: &[(String, f64)], took: Duration) {
    let total: f64 = counts.iter().map(|(_, v)| v).sum();
    let detail: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("| {label} | {total} | {} | {:.1} |", detail.join(", "), took.as_secs_f64() * 1000.0);
}

fn main() {
    // Allow `cargo bench -- <filter>` style invocations without failing.
    println!("## Kafka requests per collection cycle (librdkafka statistics, mean of 5 cycles)");
    println!("| cluster | requests/cycle | by API | ms/cycle |");
    println!("|---|---|---|---|");
    for (topics, partitions, groups) in [(1usize, 10i32, 1usize), (10, 10, 10), (10, 10, 100), (50, 20, 10)] {
        let broker = TansuBroker::start("bench-req");
        let bs = broker.bootstrap();
        for t in 0..topics {
            create_topic(&bs, &format!("topic-{t}"), partitions);
        }
        produce_records(&bs, "topic-0", 0, 3);
        for g in 0..groups {
            commit_offsets(&bs, &format!("group-{g}"), &[("topic-0", 0, 1), ("topic-0", 1, 0)]);
        }
        let (counts, took) = requests_per_cycle(&bs);
        let p = topics as i32 * partitions;
        print_requests(&format!("tansu, 1 broker, P={p}, G={groups}"), &counts, took);
    }
    {
        let mock = MockCluster::new(3).expect("mock");
        mock.create_topic("events", 60, 3).expect("topic");
        let (counts, took) = requests_per_cycle(&mock.bootstrap_servers());
        print_requests("mock, 3 brokers, P=60, G=n/a (no ListGroups)", &counts, took);
    }

    println!();
    println!("## Committed offsets of G groups: broker-side counts (mock cluster request tracking), per cycle");
    println!("| groups | OffsetFetch | FindCoordinator | all requests |");
    println!("|---|---|---|---|");
    for g in [1usize, 10, 100] {
        let (fetch, find, all) = mock_group_requests(g);
        println!("| {g} | {fetch} | {find} | {all} |");
    }
}
