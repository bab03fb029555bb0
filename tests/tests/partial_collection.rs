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
#[test]
fn a_rolling_restart_keeps_every_healthy_part_published_every_cycle() {
    let vc = cluster("partial-rolling");
    let bs = vc.bootstrap();
    let spec = spec("partial-rolling", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
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
}

fn fault_is_none(vc: &VirtualCluster, broker: i32) -> bool {
    vc.fault(broker).is_none()
}
