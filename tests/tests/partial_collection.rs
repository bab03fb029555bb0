//! A cluster that is partly down is collected partly, truthfully: what could
//! be read is published with its right value, what could not is missing
//! (never stale, never made up) and named by broker. Driven by a monitor's
//! real collection (`KafkaClient::collect`) against a 3-broker virtual
//! cluster in front of tansu (`virtual_cluster.rs`) whose brokers refuse or
//! stop answering on command.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_core::{BrokerErrorKind, MonitorInput, MonitorSpec, Snapshot};
use kollector_kafka::{ClientOptions, KafkaClient};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::virtual_cluster::{Fault, VirtualCluster};

/// The monitor's timeout; each broker's budget is a third of it.
const TIMEOUT: Duration = Duration::from_secs(6);

fn spec(id: &str, bootstrap: &str) -> MonitorSpec {
    MonitorInput {
        id: id.into(),
        bootstrap: bootstrap.split(',').map(String::from).collect(),
        interval: Some("10s".into()),
        timeout: Some("6s".into()),
        ..Default::default()
    }
    .validate(1)
    .expect("spec")
}

/// A 3-broker virtual cluster with topic `events` (6 partitions; partition
/// p holds p + 1 records) and groups `g1`, `g2`, `g3` coordinated by
/// brokers 1, 2, 3, each committed at 1 on every partition.
fn cluster(name: &str) -> VirtualCluster {
    let vc = VirtualCluster::start(name, 3);
    let bs = vc.bootstrap();
    create_topic(&bs, "events", 6);
    for p in 0..6 {
        produce_records(&bs, "events", p, p as usize + 1);
    }
    for (g, broker) in [("g1", 1), ("g2", 2), ("g3", 3)] {
        vc.pin_group(g, broker);
        let offsets: Vec<(&str, i32, i64)> = (0..6).map(|p| ("events", p, 1)).collect();
        commit_offsets(&bs, g, &offsets);
    }
    vc
}

/// (partition → latest) as the snapshot has it.
fn latest(s: &Snapshot) -> BTreeMap<i32, Option<i64>> {
    s.topics
        .iter()
        .filter(|t| t.name == "events")
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition, p.latest))
        .collect()
}

/// Checks a snapshot taken while `down` fails: every partition led by
/// another broker has its true latest offset, every partition `down` leads
/// has none (and says why), the groups of the other coordinators are read
/// with their true commits and lag, nothing of `down`'s group is shown as
/// read, and `down` is named with `kind`.
fn check_partial(vc: &VirtualCluster, s: &Snapshot, down: i32, kind: BrokerErrorKind) {
    for (p, latest) in latest(s) {
        if vc.leader_of("events", p) == down {
            assert_eq!(latest, None, "partition {p} is led by the failed broker {down}: no value, not a stale one");
            let part = s.topics.iter().flat_map(|t| &t.partitions).find(|x| x.partition == p).expect("partition");
            assert!(part.error.as_deref().is_some_and(|e| e.contains(&format!("broker {down}"))), "{part:?}");
        } else {
            assert_eq!(latest, Some(p as i64 + 1), "partition {p} is led by a healthy broker: its true latest offset");
        }
    }
    let expected_missing = (0..6).filter(|p| vc.leader_of("events", *p) == down).count();
    assert_eq!(s.missing_partitions(), expected_missing);
    assert!(s.partial());
    for g in ["g1", "g2", "g3"] {
        let read = s.groups.iter().find(|x| x.group_id == g);
        if vc.coordinator_of(g) == down {
            // Its coordinator failed: not listed, or listed and unread; never read.
            assert!(read.is_none_or(|x| !x.fully_read()), "{read:?}");
        } else {
            let read = read.unwrap_or_else(|| panic!("{g} is coordinated by a healthy broker: {:?}", s.groups));
            assert!(read.fully_read(), "{read:?}");
            let commits: BTreeMap<i32, (i64, Option<i64>)> =
                read.offsets.iter().map(|o| (o.partition, (o.committed, o.lag))).collect();
            for p in 0..6 {
                let lag = (vc.leader_of("events", p) != down).then_some(p as i64);
                assert_eq!(commits.get(&p), Some(&(1, lag)), "{g} on partition {p}");
            }
        }
    }
    assert_eq!(
        s.broker_errors.iter().map(|e| (e.broker, e.kind)).collect::<Vec<_>>(),
        vec![(down, kind)],
        "the failed broker, and only it, is named: {:?}",
        s.broker_errors
    );
}

fn collect_timed(client: &KafkaClient, spec: &MonitorSpec) -> (Snapshot, Duration) {
    let started = Instant::now();
    let s =
        client.collect(spec).unwrap_or_else(|e| panic!("a partly down cluster is collected partly, not failed: {e}"));
    (s, started.elapsed())
}

#[test]
fn a_stuck_broker_costs_only_its_own_part_of_the_cycle() {
    let vc = cluster("partial-stuck");
    let spec = spec("partial-stuck", &vc.bootstrap());
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let (s, _) = collect_timed(&client, &spec);
    assert!(!s.partial(), "all brokers answer: {:?} {:?}", s.broker_errors, s.warnings);
    for down in [3, 1] {
        vc.set_fault(down, Fault::Stuck);
        for _ in 0..2 {
            let (s, took) = collect_timed(&client, &spec);
            check_partial(&vc, &s, down, BrokerErrorKind::Timeout);
            // The broker's budget (2 s) and some, not twice it, not the whole timeout.
            let bound = kollector_kafka::broker_budget(TIMEOUT) + Duration::from_millis(900);
            assert!(took < bound, "a cycle with broker {down} stuck took {took:?}");
            eprintln!("broker {down} stuck: cycle took {took:?}");
        }
        vc.clear_fault(down);
        let (s, _) = collect_timed(&client, &spec);
        assert!(!s.partial(), "broker {down} is back: {:?} {:?}", s.broker_errors, s.warnings);
        assert_eq!(s.groups.len(), 3);
    }
}

#[test]
fn a_refusing_broker_costs_only_its_own_part_of_the_cycle() {
    let vc = cluster("partial-refuse");
    let spec = spec("partial-refuse", &vc.bootstrap());
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let (s, _) = collect_timed(&client, &spec);
    assert!(!s.partial(), "all brokers answer: {:?}", s.broker_errors);
    vc.set_fault(2, Fault::Refuse);
    let (s, took) = collect_timed(&client, &spec);
    let kind = s.broker_errors.first().map(|e| e.kind).unwrap_or(BrokerErrorKind::Connection);
    assert!(matches!(kind, BrokerErrorKind::Connection | BrokerErrorKind::Timeout), "{:?}", s.broker_errors);
    check_partial(&vc, &s, 2, kind);
    assert!(took < TIMEOUT - Duration::from_millis(1500), "a cycle with broker 2 refusing took {took:?}");
    vc.clear_fault(2);
    let (s, _) = collect_timed(&client, &spec);
    assert!(!s.partial(), "broker 2 is back: {:?}", s.broker_errors);
}

/// A broker address that now reaches another cluster (a DNS change, a
/// broker replaced behind the same name) is refused when the connection is
/// made, and named `wrong_cluster`: none of its answers is used, so no
/// sample mixes the other cluster's offsets or commits with this one's.
/// The other cluster here has the same topic and group names and other
/// values (50 records a partition, commits at 7), so a mixed sample would
/// show.
#[test]
fn a_broker_address_that_reaches_another_cluster_is_refused_and_named() {
    let vc = cluster("partial-home");
    let other = kollector_tests::tansu::TansuBroker::start("partial-other");
    let elsewhere = other.bootstrap();
    create_topic(&elsewhere, "events", 6);
    for p in 0..6 {
        produce_records(&elsewhere, "events", p, 50);
    }
    for g in ["g1", "g2", "g3"] {
        let offsets: Vec<(&str, i32, i64)> = (0..6).map(|p| ("events", p, 7)).collect();
        commit_offsets(&elsewhere, g, &offsets);
    }
    let spec = spec("partial-home", &vc.bootstrap());
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let (s, _) = collect_timed(&client, &spec);
    assert!(!s.partial(), "all brokers answer: {:?}", s.broker_errors);
    vc.route_to(2, &elsewhere);
    for _ in 0..2 {
        let (s, _) = collect_timed(&client, &spec);
        assert_eq!(s.cluster_id, vc.cluster_id());
        check_partial(&vc, &s, 2, BrokerErrorKind::WrongCluster);
        let named = &s.broker_errors[0].message;
        assert!(named.contains("partial-other") && named.contains("partial-home"), "{named}");
    }
}

/// A broker that throttles this monitor (its quota exceeded, KIP-219) gets
/// no request on a connection before the throttle it asked has ended, and
/// the throttle is reported per broker. A short throttle only slows the
/// broker's part (everything is read); one longer than the broker's budget
/// leaves its part unread and names it, without a request sent early.
#[test]
fn a_throttling_broker_gets_no_request_before_its_throttle_ends() {
    let vc = cluster("partial-throttle");
    let spec = spec("partial-throttle", &vc.bootstrap());
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let (s, _) = collect_timed(&client, &spec);
    assert!(!s.partial(), "all brokers answer: {:?}", s.broker_errors);
    assert!(s.broker_throttle_ms.is_empty(), "{:?}", s.broker_throttle_ms);

    vc.set_fault(2, Fault::Throttle(Duration::from_millis(300)));
    vc.reset_counts();
    for _ in 0..2 {
        let (s, _) = collect_timed(&client, &spec);
        assert!(!s.partial(), "a 300 ms throttle fits the broker's budget: {:?}", s.broker_errors);
        assert_eq!(s.broker_throttle_ms, BTreeMap::from([(2, 300)]));
        for (p, latest) in latest(&s) {
            assert_eq!(latest, Some(p as i64 + 1), "partition {p}");
        }
    }
    let asked: u64 = vc.requests(2).values().sum();
    assert!(asked >= 6, "broker 2 was asked its part each cycle: {:?}", vc.requests(2));
    assert_eq!(vc.sent_while_throttled(2), 0, "no request before a throttle ended");

    vc.set_fault(2, Fault::Throttle(Duration::from_secs(5)));
    for _ in 0..2 {
        let (s, took) = collect_timed(&client, &spec);
        let named: Vec<_> = s.broker_errors.iter().map(|e| (e.broker, e.kind)).collect();
        assert_eq!(named, vec![(2, BrokerErrorKind::Timeout)], "{:?}", s.broker_errors);
        assert!(s.broker_errors[0].message.contains("throttled"), "{:?}", s.broker_errors);
        assert!(took < TIMEOUT, "a throttle past the budget is not waited for: {took:?}");
    }
    assert_eq!(vc.sent_while_throttled(2), 0, "no request before a throttle ended");
}

/// The same on librdkafka's mock cluster (3 real brokers in-process, the
/// Metadata and ListOffsets paths; it has no group listing): broker 3 leads
/// partitions 2 and 5 and answers nothing for 30 s (its round-trip time),
/// then goes down. The other leaders' offsets are published each cycle,
/// broker 3's partitions have none, and broker 3 is named.
#[test]
fn a_stuck_then_down_broker_of_librdkafkas_mock_costs_only_its_part() {
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    mock.create_topic("events", 6, 1).expect("topic");
    for p in 0..6 {
        mock.partition_leader("events", p, Some(p % 3 + 1)).expect("leader");
    }
    let bs = mock.bootstrap_servers();
    for p in 0..6 {
        produce_records(&bs, "events", p, p as usize + 1);
    }
    let spec = spec("partial-mock", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let want = |s: &Snapshot, down: Option<i32>| {
        for (p, latest) in latest(s) {
            let expected = (Some(p % 3 + 1) != down).then_some(p as i64 + 1);
            assert_eq!(latest, expected, "partition {p} (leader {}), broker {down:?} failing", p % 3 + 1);
        }
    };
    let (s, _) = collect_timed(&client, &spec);
    want(&s, None);
    assert!(!s.partial(), "{:?}", s.broker_errors);
    mock.broker_round_trip_time(3, Duration::from_secs(30)).expect("rtt");
    for _ in 0..2 {
        let (s, took) = collect_timed(&client, &spec);
        want(&s, Some(3));
        assert_eq!(s.broker_errors.iter().map(|e| e.broker).collect::<Vec<_>>(), vec![3], "{:?}", s.broker_errors);
        assert_eq!(s.broker_errors[0].kind, BrokerErrorKind::Timeout);
        assert!(took < TIMEOUT - Duration::from_millis(1500), "a cycle with broker 3 stuck took {took:?}");
    }
    mock.broker_down(3).expect("down");
    let (s, took) = collect_timed(&client, &spec);
    want(&s, Some(3));
    // Down, the mock may report broker 3's partitions leaderless (offline)
    // rather than led by a broker that cannot be reached: either way they
    // are named, never shown with a value.
    let named = s.broker_errors.iter().map(|e| e.broker).collect::<Vec<_>>() == vec![3];
    let offline: Vec<i32> =
        s.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.offline()).map(|p| p.partition).collect();
    assert!(named || offline == vec![2, 5], "broker 3 down: errors {:?}, offline {offline:?}", s.broker_errors);
    assert!(took < TIMEOUT - Duration::from_millis(1500), "a cycle with broker 3 down took {took:?}");
}

/// A rolling restart, broker by broker, while records keep arriving and the
/// groups commit: each broker in turn refuses (2 cycles), is stuck (2
/// cycles), comes back. In every cycle every partition led by a healthy
/// broker and every group coordinated by one is published with its true
/// value, nothing of the failing broker's is, and it is the one named.
/// Prints the share of the healthy parts published and the cycle times
/// (BENCHMARKS.md, "Partial collections").
///
/// And a lag alert that should fire keeps firing throughout: group
/// `laggard` (coordinated by broker 2) never commits past 1, so its lag
/// only grows; its `kafka_consumergroup_lag` series as `/metrics` renders
/// them each cycle (none for a partition or coordinator that could not be
/// read) go, one cycle a minute, through promtool with the shipped
/// KafkaConsumerGroupLagHigh rule (threshold lowered to 10, `for: 10m`
/// kept): it fires after ten healthy cycles and at every cycle after, the
/// restart included. The same series through the rule without
/// `last_over_time` clear the alert (checked, so this test can fail).
#[test]
fn a_rolling_restart_keeps_every_healthy_part_published_every_cycle() {
    let vc = cluster("partial-rolling");
    let bs = vc.bootstrap();
    vc.pin_group("laggard", 2);
    commit_offsets(&bs, "laggard", &(0..6).map(|p| ("events", p, 1)).collect::<Vec<_>>());
    let spec = spec("partial-rolling", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    // The laggard's series, cycle by cycle: ten healthy cycles first, so
    // the alert is firing when the restart begins.
    let mut lag_series = Vec::new();
    for _ in 0..LAG_ALERT_FOR_MINUTES {
        let (s, _) = collect_timed(&client, &spec);
        assert!(!s.partial(), "{:?}", s.broker_errors);
        lag_series.push(laggard_series(&spec, &s));
    }
    let mut records = [1i64, 2, 3, 4, 5, 6];
    let mut committed = 1i64;
    let (mut expected, mut published) = (0usize, 0usize);
    let mut stuck_cycles = Vec::new();
    let mut refused_cycles = Vec::new();
    for down in 1..=3 {
        for (fault, cycles) in [(Some(Fault::Refuse), 2), (Some(Fault::Stuck), 2), (None, 1)] {
            let stuck = matches!(fault, Some(Fault::Stuck));
            match fault {
                Some(f) => vc.set_fault(down, f),
                None => vc.clear_fault(down),
            }
            for _ in 0..cycles {
                // New records and commits, written through healthy brokers only.
                for p in 0..6 {
                    if vc.leader_of("events", p) != down || fault_is_none(&vc, down) {
                        produce_records(&bs, "events", p, 1);
                        records[p as usize] += 1;
                    }
                }
                committed += 1;
                for g in
                    ["g1", "g2", "g3"].into_iter().filter(|g| vc.coordinator_of(g) != down || fault_is_none(&vc, down))
                {
                    let offsets: Vec<(&str, i32, i64)> = (0..6).map(|p| ("events", p, committed)).collect();
                    commit_offsets(&bs, g, &offsets);
                }
                let (s, took) = collect_timed(&client, &spec);
                lag_series.push(laggard_series(&spec, &s));
                let failing = !fault_is_none(&vc, down);
                for (p, latest) in latest(&s) {
                    let healthy = !failing || vc.leader_of("events", p) != down;
                    if healthy {
                        expected += 1;
                        published += usize::from(latest == Some(records[p as usize]));
                        assert_eq!(
                            latest,
                            Some(records[p as usize]),
                            "partition {p}, broker {down} failing: {failing}"
                        );
                    } else {
                        assert_eq!(latest, None, "partition {p} of the failing broker {down}");
                    }
                }
                for g in ["g1", "g2", "g3"] {
                    let read = s.groups.iter().find(|x| x.group_id == g && x.fully_read());
                    if !failing || vc.coordinator_of(g) != down {
                        expected += 1;
                        let right = read.is_some_and(|r| r.offsets.iter().all(|o| o.committed == committed));
                        published += usize::from(right);
                        assert!(right, "{g} while broker {down} fails ({failing}): {:?}", s.groups);
                    } else {
                        assert!(read.is_none(), "{g} is coordinated by the failing broker {down}");
                    }
                }
                if failing {
                    assert_eq!(s.broker_errors.iter().map(|e| e.broker).collect::<Vec<_>>(), vec![down]);
                    if stuck {
                        stuck_cycles.push(took)
                    } else {
                        refused_cycles.push(took)
                    }
                } else {
                    assert!(s.broker_errors.is_empty(), "{:?}", s.broker_errors);
                }
            }
        }
    }
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    eprintln!(
        "rolling restart: {published}/{expected} healthy parts published ({:.1} %); cycle with a stuck broker: max {:?} \
         (budget {:?}, timeout {TIMEOUT:?}); with a refusing broker: max {:?}",
        published as f64 * 100.0 / expected as f64,
        max(&stuck_cycles),
        kollector_kafka::broker_budget(TIMEOUT),
        max(&refused_cycles),
    );
    assert_eq!(published, expected);
    assert!(max(&stuck_cycles) < kollector_kafka::broker_budget(TIMEOUT) + Duration::from_millis(1500));

    // The restart left gaps in the laggard's series (else the alert check proves nothing).
    let all: std::collections::BTreeSet<&String> = lag_series.iter().flat_map(|c| c.keys()).collect();
    assert_eq!(all.len(), 6, "one lag series per partition: {all:?}");
    assert!(lag_series.iter().any(|c| c.is_empty()), "cycles without any laggard series (its coordinator down)");
    assert!(lag_series.iter().any(|c| !c.is_empty() && c.len() < 6), "cycles without a partition's series");
    let (held, ok) = lag_alert_fires_throughout(&lag_series, true);
    assert!(ok, "KafkaConsumerGroupLagHigh must keep firing through the restart:\n{held}");
    let (_, ok) = lag_alert_fires_throughout(&lag_series, false);
    assert!(!ok, "without last_over_time the gaps would clear the alert: the check can fail");
}

/// The `for:` of KafkaConsumerGroupLagHigh, in cycles (one a minute in promtool).
const LAG_ALERT_FOR_MINUTES: usize = 10;

/// Group `laggard`'s `kafka_consumergroup_lag` series as `/metrics` renders
/// the snapshot (series text → value); a partition not read has none.
fn laggard_series(spec: &MonitorSpec, s: &Snapshot) -> BTreeMap<String, f64> {
    let mut result = kollector_core::MonitorResult::starting(spec.id.clone(), 1, None);
    result.status.state = kollector_core::MonitorState::Running;
    result.snapshot = Some(std::sync::Arc::new(s.clone()));
    let text = kollector_collector::metrics::render_entries(vec![result], Vec::new(), false);
    text.lines()
        .filter(|l| l.starts_with("kafka_consumergroup_lag{") && l.contains("consumergroup=\"laggard\""))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs promtool over `cycles` (one a minute; a series missing from a
/// cycle is stale there, as a scrape without it makes it) with the shipped
/// rules (`hold`) or the lag rule without `last_over_time`, threshold 10,
/// checking that the alert fires for the laggard at every minute from its
/// `for:` to the end. promtool's output, and whether it passed.
fn lag_alert_fires_throughout(cycles: &[BTreeMap<String, f64>], hold: bool) -> (String, bool) {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/kollector-rules.yml"),
    )
    .expect("the shipped rules");
    let held =
        "(max by (monitor, consumergroup, topic, partition) (last_over_time(kafka_consumergroup_lag[5m]))) > 1000";
    assert!(shipped.contains(held), "the lag rule changed; update this test");
    let rules = shipped.replace(
        held,
        if hold {
            "(max by (monitor, consumergroup, topic, partition) (last_over_time(kafka_consumergroup_lag[5m]))) > 10"
        } else {
            "(kafka_consumergroup_lag) > 10"
        },
    );
    let series: std::collections::BTreeSet<&String> = cycles.iter().flat_map(|c| c.keys()).collect();
    let mut test =
        String::from("rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n");
    for name in &series {
        let values: Vec<String> =
            cycles.iter().map(|c| c.get(*name).map_or_else(|| "stale".to_string(), |v| v.to_string())).collect();
        test.push_str(&format!("      - series: '{name}'\n        values: '{}'\n", values.join(" ")));
    }
    test.push_str("    promql_expr_test:\n");
    for minute in LAG_ALERT_FOR_MINUTES..cycles.len() {
        test.push_str(&format!(
            "      - expr: 'ALERTS{{alertname=\"KafkaConsumerGroupLagHigh\",alertstate=\"firing\",consumergroup=\"laggard\"}}'\n        \
             eval_time: {minute}m\n        exp_samples:\n          - labels: 'ALERTS{{alertname=\"KafkaConsumerGroupLagHigh\",\
             alertstate=\"firing\",consumergroup=\"laggard\",monitor=\"partial-rolling\",severity=\"warning\",topic=\"events\"}}'\n            \
             value: 1\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.yml"), rules).expect("rules");
    std::fs::write(dir.path().join("test.yml"), &test).expect("test");
    let out = std::process::Command::new("promtool")
        .args(["test", "rules", "test.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool (install-test-deps.sh)");
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), out.status.success())
}

fn fault_is_none(vc: &VirtualCluster, broker: i32) -> bool {
    vc.fault(broker).is_none()
}

/// A coordinator that answers COORDINATOR_LOAD_IN_PROGRESS (as a broker
/// just restarted does while it loads its groups) is asked again, backing
/// off, within its budget: when it is ready part-way through the cycle, its
/// group is read in that cycle. One that stays loading past the budget
/// leaves only its own group unread, named with the broker's error; the
/// other groups are read as usual. Also for NOT_COORDINATOR (16), which
/// sends the group back to FindCoordinator each round.
#[test]
fn a_loading_coordinator_is_asked_again_within_its_budget_and_only_its_group_waits() {
    let vc = cluster("partial-loading");
    let spec = spec("partial-loading", &vc.bootstrap());
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let (s, _) = collect_timed(&client, &spec);
    assert_eq!(s.groups.iter().filter(|g| g.fully_read()).count(), 3, "{:?}", s.groups);

    for code in [14i16, 16] {
        // Loading (listing what it has) until it refused twice, well within the 2 s budget.
        let loading = Fault::ErrorCode {
            apis: kollector_tests::virtual_cluster::ErrorApis::Coordinator,
            code,
            keep_listed_groups: true,
        };
        vc.set_fault(2, loading.clone());
        vc.reset_counts();
        // Ready once it has refused two OffsetFetch requests (the first
        // read and a retry): the next retry, within the budget, reads it.
        let s = std::thread::scope(|scope| {
            let vc = &vc;
            scope.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while vc.request_count(2, kollector_kafka::wire::ApiKey::OffsetFetch) < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                vc.clear_fault(2);
            });
            collect_timed(&client, &spec).0
        });
        let g2 = s.groups.iter().find(|g| g.group_id == "g2").expect("g2 is listed");
        assert!(g2.fully_read(), "code {code}: ready within the budget, read in the same cycle: {g2:?}");
        assert!(g2.offsets.iter().all(|o| o.committed == 1), "{g2:?}");
        assert!(
            vc.request_count(2, kollector_kafka::wire::ApiKey::OffsetFetch) >= 3,
            "code {code}: asked again: {:?}",
            vc.requests(2)
        );
        assert_eq!(s.groups.iter().filter(|g| g.fully_read()).count(), 3, "{:?}", s.groups);

        // Loading for longer than the budget: g2 unread and named, the others read.
        vc.set_fault(2, loading);
        let (s, took) = collect_timed(&client, &spec);
        vc.clear_fault(2);
        let g2 = s.groups.iter().find(|g| g.group_id == "g2").expect("g2 is listed");
        assert!(!g2.fully_read() && g2.verdict.is_none(), "code {code}: {g2:?}");
        let name = if code == 14 { "CoordinatorLoadInProgress" } else { "NotCoordinator" };
        assert!(g2.error.as_deref().is_some_and(|e| e.contains(name)), "code {code}: {g2:?}");
        for g in ["g1", "g3"] {
            let read = s.groups.iter().find(|x| x.group_id == g).expect("listed");
            assert!(read.fully_read() && read.offsets.iter().all(|o| o.committed == 1), "{read:?}");
        }
        let budget = kollector_kafka::broker_budget(TIMEOUT);
        assert!(took < budget + Duration::from_millis(1500), "retries stay within the broker's budget: {took:?}");
    }
}
