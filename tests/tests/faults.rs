//! Faults and scale, in process, against librdkafka's mock cluster (many
//! brokers, brokers going down, leaders lost): the monitor reports a reason,
//! never panics, recovers when the broker returns, and never publishes data
//! from a cluster it was not meant to watch.

use std::time::Duration;

use kollector_collector::{CollectorHandle, CollectorNode};
use kollector_core::MonitorResult as MonitorEntry;
use kollector_core::{ErrorKind, MonitorId, MonitorInput, MonitorSpec, MonitorState};
use kollector_kafka::ClientOptions;
use kollector_tests::kafka_fixtures::cluster_id;
use kollector_tests::poll::wait_for;
use rdkafka::mocking::MockCluster;

fn spec(id: &str, bootstrap: &str, expected_cluster_id: Option<&str>) -> MonitorSpec {
    MonitorInput {
        id: id.into(),
        bootstrap: bootstrap.split(',').map(String::from).collect(),
        interval: Some("1s".into()),
        timeout: Some("800ms".into()),
        expected_cluster_id: expected_cluster_id.map(String::from),
        ..Default::default()
    }
    .validate(1)
    .expect("valid spec")
}

struct Node {
    rt: tokio::runtime::Runtime,
    handle: CollectorHandle,
}

impl Node {
    fn start() -> Node {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let handle = CollectorNode::start(ClientOptions::default()).unwrap();
        Node { rt, handle }
    }
    fn assign(&self, spec: MonitorSpec) {
        self.rt.block_on(self.handle.assign(spec)).expect("assign");
    }
    fn entry(&self, id: &str) -> MonitorEntry {
        self.handle.store().get(&MonitorId::new(id).unwrap()).expect("entry")
    }
    fn wait(&self, id: &str, what: &str, secs: u64, ok: impl Fn(&MonitorEntry) -> bool) -> MonitorEntry {
        wait_for(what, Duration::from_secs(secs), || {
            let e = self.entry(id);
            if ok(&e) {
                Ok(e)
            } else {
                Err(format!("state {:?} reason {:?} error {:?}", e.status.state, e.status.reason, e.error))
            }
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.rt.block_on(self.handle.shutdown());
    }
}

fn all_offsets_known(e: &MonitorEntry) -> bool {
    e.current_snapshot().is_some_and(|s| {
        s.partition_count() == 6
            && s.topics.iter().flat_map(|t| &t.partitions).all(|p| p.latest.is_some() && p.error.is_none())
    })
}

#[test]
fn broker_down_reports_a_reason_and_recovers_when_it_returns() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("events", 6, 3).unwrap();
    for p in 0..6 {
        mock.partition_leader("events", p, Some(p % 3 + 1)).unwrap();
    }
    let node = Node::start();
    node.assign(spec("mock", &mock.bootstrap_servers(), None));
    let e = node.wait("mock", "a complete snapshot", 30, all_offsets_known);
    let s = e.current_snapshot().unwrap();
    assert_eq!(s.brokers.len(), 3);
    assert!(s.topics[0].partitions.iter().all(|p| p.replicas.len() == 3));

    mock.broker_down(2).unwrap();
    let e = node.wait("mock", "a degraded snapshot or an error with a reason", 30, |e| {
        let degraded =
            e.current_snapshot().is_some_and(|s| s.warnings.iter().any(|w| w.contains("offsets unavailable")));
        let failed = e.error.is_some() && e.status.reason.is_some();
        degraded || failed
    });
    assert!(matches!(e.status.state, MonitorState::Degraded | MonitorState::Failing), "{:?}", e.status);
    assert!(e.status.reason.as_deref().is_some_and(|r| !r.is_empty()));
    assert_eq!(e.errors_total.get(&ErrorKind::Panic), None);

    mock.broker_up(2).unwrap();
    let e = node.wait("mock", "recovery after the broker returns", 60, all_offsets_known);
    assert!(!e.current_snapshot().unwrap().warnings.iter().any(|w| w.contains("offsets unavailable")));
}

#[test]
fn lost_leader_shows_an_offline_partition_and_recovers() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("events", 6, 3).unwrap();
    let node = Node::start();
    node.assign(spec("mock", &mock.bootstrap_servers(), None));
    node.wait("mock", "a complete snapshot", 30, all_offsets_known);

    mock.partition_leader("events", 4, None).unwrap();
    let e = node.wait("mock", "partition 4 offline", 30, |e| {
        e.current_snapshot().is_some_and(|s| s.topics[0].partitions[4].leader.is_none())
    });
    let s = e.current_snapshot().unwrap();
    assert!(s.warnings.iter().any(|w| w.contains("1 partition(s) have no leader")), "{:?}", s.warnings);
    assert_eq!(e.status.state, MonitorState::Degraded);
    assert!(s.topics[0].partitions.iter().filter(|p| p.partition != 4).all(|p| p.latest.is_some()));
    let text = kollector_collector::metrics::render(node.handle.store(), Vec::new());
    assert!(text.contains("kafka_topic_partition_offline{monitor=\"mock\""), "{text}");

    mock.partition_leader("events", 4, Some(1)).unwrap();
    node.wait("mock", "leader back", 30, all_offsets_known);
}

#[test]
fn expected_cluster_id_mismatch_is_refused_from_the_first_cycle() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("t", 1, 1).unwrap();
    let node = Node::start();
    node.assign(spec("strict", &mock.bootstrap_servers(), Some("the-real-cluster")));
    let e = node.wait("strict", "identity mismatch", 30, |e| e.errors_total.contains_key(&ErrorKind::IdentityMismatch));
    assert!(e.snapshot.is_none(), "a snapshot from the wrong cluster was stored");
    assert_eq!(e.status.pinned_cluster_id.as_deref(), Some("the-real-cluster"));
    let text = kollector_collector::metrics::render(node.handle.store(), Vec::new());
    assert!(!text.contains("kafka_brokers{monitor=\"strict\""), "{text}");
}

#[test]
fn fifty_monitors_each_report_only_their_own_cluster() {
    const N: usize = 50;
    let mocks: Vec<MockCluster<'static, _>> = (0..N).map(|_| MockCluster::new(1).unwrap()).collect();
    let mut expected = Vec::new();
    for (i, m) in mocks.iter().enumerate() {
        m.create_topic(&format!("topic-{i}"), 2, 1).unwrap();
        expected.push(cluster_id(&m.bootstrap_servers()));
    }
    let node = Node::start();
    for (i, m) in mocks.iter().enumerate() {
        node.assign(spec(&format!("m{i:02}"), &m.bootstrap_servers(), None));
    }
    wait_for("all 50 monitors to collect", Duration::from_secs(90), || {
        let ready = (0..N).filter(|i| node.entry(&format!("m{i:02}")).current_snapshot().is_some()).count();
        if ready == N {
            Ok(())
        } else {
            Err(format!("{ready}/{N} ready"))
        }
    });
    for (i, cluster) in expected.iter().enumerate() {
        let e = node.entry(&format!("m{i:02}"));
        let s = e.current_snapshot().unwrap();
        assert_eq!(&s.cluster_id, cluster, "monitor m{i:02}");
        let topics: Vec<&str> = s.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(topics, vec![format!("topic-{i}").as_str()], "monitor m{i:02}");
    }
    assert_eq!(kollector_kafka::live_clients(), N as i64);
    let text = kollector_collector::metrics::render(node.handle.store(), Vec::new());
    for (i, cid) in expected.iter().enumerate() {
        for line in text.lines().filter(|l| l.contains(&format!("cluster_id=\"{cid}\""))) {
            assert!(line.contains(&format!("monitor=\"m{i:02}\"")), "{line}");
        }
    }
    drop(node);
    assert_eq!(kollector_kafka::live_clients(), 0, "every client closed at shutdown");
}

/// A cluster that is not there yet: the monitor fails with a reason, closes and
/// rebuilds its client with backoff (never more than one client), and recovers
/// by itself once the broker appears.
#[test]
fn unreachable_cluster_fails_with_reason_rebuilds_its_client_and_recovers() {
    let port = kollector_tests::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let node = Node::start();
    node.assign(spec("late", &bootstrap, None));
    let e = node.wait("late", "a client rebuild after repeated failures", 30, |e| e.restarts_total >= 1);
    assert!(matches!(e.status.state, MonitorState::Failing), "{:?}", e.status);
    assert!(
        e.status.reason.as_deref().is_some_and(|r| r.contains(&bootstrap) || r.contains("timed out")),
        "{:?}",
        e.status.reason
    );
    assert!(e.current_snapshot().is_none());
    assert!(kollector_kafka::live_clients() <= 1, "a monitor never holds more than one client");
    let failures: u64 = e.errors_total.values().sum();
    assert!(failures >= 3, "rebuild only after repeated failures, saw {failures}");

    let _broker = kollector_tests::tansu::TansuBroker::start_on_port("late-cluster", port);
    let e = node.wait("late", "recovery once the broker is up", 60, |e| e.current_snapshot().is_some());
    assert_eq!(e.current_snapshot().unwrap().cluster_id, "late-cluster");
    assert_eq!(e.status.state, MonitorState::Running);
    assert_eq!(e.status.consecutive_failures, 0);
    assert_eq!(kollector_kafka::live_clients(), 1);
}
