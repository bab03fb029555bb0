//! Consumer groups read with the batched direct requests
//! (`kollector_kafka::wire`), through a monitor's real collection, against
//! real brokers, counted on the broker side by a proxy that decodes request
//! headers (the broker advertises the proxy, so every connection, also
//! librdkafka's, goes through it).

use std::collections::BTreeMap;
use std::time::Duration;

use kollector_core::{MonitorInput, MonitorSpec};
use kollector_kafka::wire::connection::BrokerConnection;
use kollector_kafka::wire::group_cycle::GroupConnections;
use kollector_kafka::wire::groups::{fetch_offsets, AllTopics, ListedGroup};
use kollector_kafka::wire::security::WireSecurity;
use kollector_kafka::{ClientOptions, Deadline, KafkaClient};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::request_counter::RequestCounter;
use kollector_tests::tansu::TansuBroker;
use rdkafka::mocking::MockCluster;

const T: Duration = Duration::from_secs(10);

/// Kafka API keys, for reading the counts.
const OFFSET_FETCH: i16 = 9;
const FIND_COORDINATOR: i16 = 10;
const LIST_GROUPS: i16 = 16;
const DESCRIBE_GROUPS: i16 = 15;
const API_VERSIONS: i16 = 18;

fn spec(id: &str, bootstrap: &str) -> MonitorSpec {
    MonitorInput {
        id: id.into(),
        bootstrap: vec![bootstrap.to_string()],
        interval: Some("10s".into()),
        timeout: Some("8s".into()),
        ..Default::default()
    }
    .validate(1)
    .expect("spec")
}

/// Commits: group → (topic, partition) → offset.
type Commits = BTreeMap<String, BTreeMap<(String, i32), i64>>;

/// Commits `want`, four committers at a time.
fn commit_all(bootstrap: &str, want: &Commits) {
    let groups: Vec<_> = want.iter().collect();
    std::thread::scope(|s| {
        for chunk in groups.chunks(groups.len().div_ceil(4).max(1)) {
            s.spawn(move || {
                for (g, offsets) in chunk {
                    let list: Vec<(&str, i32, i64)> = offsets.iter().map(|((t, p), o)| (t.as_str(), *p, *o)).collect();
                    commit_offsets(bootstrap, g, &list);
                }
            });
        }
    });
}

/// Groups committed on librdkafka's mock cluster: `brokers` brokers, topic
/// `events` (3 partitions), groups `{prefix}-0..n`, group i at offset
/// `i × step + p` on partition p. Returns the mock, its bootstrap address
/// and the commits.
fn mock_with_commits(
    brokers: i32,
    prefix: &str,
    n: usize,
    step: usize,
) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String, Commits) {
    let mock = MockCluster::new(brokers).expect("mock cluster");
    mock.create_topic("events", 3, 1).expect("topic");
    let bs = mock.bootstrap_servers();
    let want: Commits = (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i}"),
                (0..3).map(|p| (("events".to_string(), p), (i * step + p as usize) as i64)).collect(),
            )
        })
        .collect();
    commit_all(&bs, &want);
    (mock, bs, want)
}

/// 200 groups with known commits on three topics, read by a monitor's
/// collection: every committed offset and lag equals what was committed
/// and produced, and a cycle sends one ListGroups, one DescribeGroups and
/// one OffsetFetch (v8, all 200 groups) on the connection it keeps.
#[test]
fn two_hundred_groups_in_three_group_requests_per_cycle_with_every_offset_and_lag_right() {
    let (broker, counter) = RequestCounter::in_front_of_tansu("wire-groups");
    let bs = counter.address();
    for t in ["orders", "payments", "audit"] {
        create_topic(&bs, t, 2);
        for p in 0..2 {
            produce_records(&bs, t, p, 30);
        }
    }
    // Group g017 commits (17 % 29 + p) on partition p of topics chosen by its number.
    let want: Commits = (0..200)
        .map(|i| {
            let topics: Vec<&str> = ["orders", "payments", "audit"].into_iter().take(1 + i % 3).collect();
            let offsets = topics
                .into_iter()
                .flat_map(|t| (0..2).map(move |p| ((t.to_string(), p), ((i % 29) as i64 + p as i64))))
                .collect();
            (format!("g{i:03}"), offsets)
        })
        .collect();
    commit_all(&bs, &want);

    let spec = spec("wire", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    client.collect(&spec).expect("first cycle");
    counter.reset();
    let snapshot = client.collect(&spec).expect("second cycle");
    let counts = counter.counts();
    eprintln!("requests in one cycle for 200 groups: {counts:?} (API key → count)");

    assert!(snapshot.warnings.is_empty() && snapshot.notes.is_empty(), "{snapshot:#?}");
    let got: BTreeMap<&str, &kollector_core::GroupSnapshot> =
        snapshot.groups.iter().map(|g| (g.group_id.as_str(), g)).collect();
    for (g, offsets) in &want {
        let group = got.get(g.as_str()).unwrap_or_else(|| panic!("group {g} missing"));
        assert_eq!(group.error, None, "{g}");
        assert_eq!(group.protocol_type.as_deref(), Some("consumer"), "{g}");
        let read: BTreeMap<(String, i32), (i64, Option<i64>)> =
            group.offsets.iter().map(|o| ((o.topic.clone(), o.partition), (o.committed, o.lag))).collect();
        let truth: BTreeMap<(String, i32), (i64, Option<i64>)> =
            offsets.iter().map(|(tp, c)| (tp.clone(), (*c, Some(30 - c)))).collect();
        assert_eq!(read, truth, "group {g}: committed offsets and lag");
    }
    assert_eq!(counts.get(&LIST_GROUPS), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&DESCRIBE_GROUPS), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&OFFSET_FETCH), Some(&1), "one OffsetFetch for 200 groups: {counts:?}");
    assert_eq!(counts.get(&FIND_COORDINATOR), None, "{counts:?}");
    assert_eq!(counts.get(&API_VERSIONS), None, "connections are kept between cycles: {counts:?}");
    assert_eq!(client.direct_connections(), 1);
    // The floor for one broker: Metadata, ListOffsets ×2 (earliest, latest),
    // ListGroups, DescribeGroups, OffsetFetch = 6 (DescribeCluster, for
    // racks, comes every 10th cycle: not in this one).
    let total: u64 = counts.values().sum();
    assert!(total <= 7, "{total} requests in a cycle, the floor is 6: {counts:?}");
    drop(client);
    drop(broker);
}

/// A broker without OffsetFetch v8 (librdkafka's mock cluster speaks 0-6):
/// one request per group, chosen from ApiVersions, with the same answers.
/// Each asks for every topic (`topics = null`); the mock answers that with
/// nothing, so the first group is asked again by name, which finds its
/// commits, and the connection names topics from then on: 10 groups cost
/// 11 requests, and every offset is right.
#[test]
fn a_broker_without_offset_fetch_v8_gets_one_request_per_group() {
    // The mock lives to the end of the test.
    let (_mock, bs, want) = mock_with_commits(1, "old", 10, 10);
    let counter = RequestCounter::start(&bs);
    let deadline = Deadline::after(T);
    let mut conn =
        BrokerConnection::connect(&counter.address(), &WireSecurity::plaintext(), &deadline).expect("connect");
    assert_eq!(conn.versions().pick(kafka_protocol_api::OFFSET_FETCH, (8, 9)), None);
    let ids: Vec<String> = want.keys().cloned().collect();
    let topics = [("events".to_string(), vec![0, 1, 2])];
    let mut all_topics = AllTopics::default();
    let committed =
        fetch_offsets(&mut conn, &ids, Some(&topics), &mut all_topics, &deadline).expect("OffsetFetch per group");
    for (g, offsets) in &want {
        assert_eq!(committed.get(g), Some(&Ok(offsets.clone())), "group {g}");
    }
    assert_eq!(counter.counts().get(&OFFSET_FETCH), Some(&11), "the first group asked twice, the others once");
    // The next cycle, with what the first learnt about this broker, names the topics at once.
    counter.reset();
    let again =
        fetch_offsets(&mut conn, &ids, Some(&topics), &mut all_topics, &deadline).expect("OffsetFetch per group");
    assert_eq!(again, committed);
    assert_eq!(counter.counts().get(&OFFSET_FETCH), Some(&10));
}

/// A pre-v8 broker (Kafka before 2.8: the virtual cluster caps OffsetFetch
/// at v7 in its ApiVersions answers) costs one OffsetFetch per group, the
/// protocol's floor before v8, each asking for every topic (`topics =
/// null`) instead of naming every partition: the bytes of a cycle stay
/// within 1.2× of v8's one batched request. 20 groups × 200 partitions here;
/// `cargo bench -p kollector-tests --bench requests` measures 100 × 1,000.
#[test]
fn a_pre_v8_broker_costs_about_the_bytes_of_v8_per_cycle() {
    use kollector_tests::virtual_cluster::VirtualCluster;
    let vc = VirtualCluster::start("wire-pre-v8", 1);
    let bs = vc.bootstrap();
    create_topic(&bs, "wide", 200);
    let want: Commits = (0..20)
        .map(|g| (format!("old-{g:02}"), (0..200).map(|p| (("wide".to_string(), p), 1 + g as i64)).collect()))
        .collect();
    commit_all(&bs, &want);
    let spec = spec("pre-v8", &bs);
    // Bytes and requests per cycle after a warm-up cycle, for a new client.
    let measure = || {
        let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
        client.collect(&spec).expect("warm-up");
        vc.reset_counts();
        let s = client.collect(&spec).expect("cycle");
        for (g, offsets) in &want {
            let read = s.groups.iter().find(|x| &x.group_id == g).unwrap_or_else(|| panic!("{g}"));
            let got: BTreeMap<(String, i32), i64> =
                read.offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.committed)).collect();
            assert_eq!(&got, offsets, "{g}");
        }
        let (into, out) = vc.bytes(1);
        (into + out, vc.request_count(1, kollector_kafka::wire::ApiKey::OffsetFetch))
    };
    let (v8_bytes, v8_fetches) = measure();
    vc.cap_version(kollector_kafka::wire::ApiKey::OffsetFetch, 7);
    let (old_bytes, old_fetches) = measure();
    eprintln!("one cycle, 20 groups × 200 partitions: v8 {v8_bytes} B in {v8_fetches} OffsetFetch; v7 {old_bytes} B in {old_fetches}");
    assert_eq!(v8_fetches, 1, "v8: one OffsetFetch for every group");
    assert_eq!(old_fetches, 20, "v7: one per group, no more");
    assert!((old_bytes as f64) <= 1.2 * v8_bytes as f64, "pre-v8 cycle {old_bytes} B, v8 {v8_bytes} B: more than 1.2×");
}

/// Groups whose coordinator moved between the listing and the fetch
/// (librdkafka's 3-broker mock, which answers NOT_COORDINATOR for the next
/// four OffsetFetch requests, and names broker 2 as those groups'
/// coordinator): only they go to FindCoordinator (one per group: the mock
/// has no v4) and get one retry at the coordinator named, and every
/// committed offset comes out right.
#[test]
fn groups_whose_coordinator_moved_are_found_and_read_at_their_new_coordinator() {
    use rdkafka::mocking::MockCoordinator;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (mock, bs, want) = mock_with_commits(3, "moved", 12, 7);
    // Asked in id order: the first four are the ones that moved to broker 2.
    let moved = ["moved-0", "moved-1", "moved-10", "moved-11"];
    for id in want.keys() {
        let to = if moved.contains(&id.as_str()) { 2 } else { 1 };
        mock.coordinator(MockCoordinator::Group(id.clone()), to).expect("coordinator");
    }
    // Every broker behind its own counter; the cycle believes all groups are on broker 1.
    let brokers: Vec<(i32, String)> = bs.split(',').enumerate().map(|(i, a)| (i as i32 + 1, a.to_string())).collect();
    let counters: Vec<RequestCounter> = brokers.iter().map(|(_, a)| RequestCounter::start(a)).collect();
    let addresses: Vec<(i32, String)> = brokers.iter().zip(&counters).map(|((id, _), c)| (*id, c.address())).collect();
    let listed = BTreeMap::from([(
        1,
        want.keys()
            .map(|id| ListedGroup { id: id.clone(), protocol_type: "consumer".into(), group_type: None })
            .collect(),
    )]);
    let topics = [("events".to_string(), vec![0, 1, 2])];
    // Five errors for four groups: the first group is asked twice (for
    // every topic, which the mock cannot answer, then by name).
    mock.request_errors(RDKafkaApiKey::OffsetFetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 5]);
    let mut conns = GroupConnections::new(WireSecurity::plaintext());
    let cycle = conns.read_listed(&addresses, &listed, &|_| true, &topics, &Deadline::after(T));
    assert!(cycle.broker_errors.is_empty() && cycle.stopped.is_none(), "{cycle:?}");
    assert_eq!(cycle.groups.len(), want.len());
    for g in &cycle.groups {
        assert_eq!(g.committed.as_ref(), Ok(&want[&g.id]), "group {}", g.id);
        let coordinator = if moved.contains(&g.id.as_str()) { 2 } else { 1 };
        assert_eq!(g.coordinator, Some(coordinator), "group {}", g.id);
    }
    let sum = |key: i16| counters.iter().map(|c| c.counts().get(&key).copied().unwrap_or(0)).sum::<u64>();
    let fetches = counters[0].counts().get(&OFFSET_FETCH).copied().unwrap_or(0);
    assert_eq!(sum(FIND_COORDINATOR), 4, "one FindCoordinator per moved group, no more");
    assert_eq!(fetches, 13, "each group asked once at broker 1, the first twice");
    // The retries go where FindCoordinator pointed: the mock's own address
    // for broker 2, which is not behind a counter; they are in the answers above.
}

/// The API keys the tests name, as `kafka-protocol` spells them.
mod kafka_protocol_api {
    pub const OFFSET_FETCH: kollector_kafka::wire::ApiKey = kollector_kafka::wire::ApiKey::OffsetFetch;
}

/// The direct group connections belong to the monitor's client: open after
/// a collection, beside librdkafka's, and closed by the time dropping the
/// client returns (what reconfigure, delete and fencing do), with no socket
/// to the broker left in this process.
#[test]
fn dropping_the_client_closes_its_direct_group_connections_with_librdkafkas() {
    let broker = TansuBroker::start("wire-close");
    let bs = broker.bootstrap();
    create_topic(&bs, "orders", 2);
    commit_offsets(&bs, "billing", &[("orders", 0, 0)]);
    let pid = std::process::id();
    kollector_tests::poll::wait_for("the fixtures' clients to close", T, || {
        match kollector_tests::net::established_connections_to(pid, broker.port()) {
            0 => Ok(()),
            n => Err(n.to_string()),
        }
    });
    let spec = spec("wire-close", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    let snapshot = client.collect(&spec).expect("collection");
    assert!(snapshot.groups.iter().any(|g| g.group_id == "billing"), "{:?}", snapshot.groups);
    assert!(snapshot.notes.is_empty(), "direct path expected: {:?}", snapshot.notes);
    assert_eq!(client.direct_connections(), 1, "one direct connection to the one broker");
    let open = kollector_tests::net::established_connections_to(pid, broker.port());
    // The cycle speaks over the direct connection alone; librdkafka's
    // client connects only when used (the fallback paths).
    assert!(open >= 1, "the direct connection: {open}");
    drop(client);
    assert_eq!(kollector_tests::net::established_connections_to(pid, broker.port()), 0, "sockets left after the drop");
}

/// A DescribeGroups answer too large for one frame (groups with thousands
/// of members and their assignments) is refused by the client and closes
/// the connection: the groups are described again in smaller requests on
/// a fresh connection, in the same cycle, and every group is read in full;
/// the size is remembered, so later cycles send no request that large
/// again. The virtual broker answers any DescribeGroups of more than 10
/// groups with a 64 MiB + 1 frame.
#[test]
fn describe_groups_answers_over_the_frame_cap_are_split_within_the_cycle() {
    use kollector_tests::virtual_cluster::{Fault, VirtualCluster};
    let vc = VirtualCluster::start("wire-oversized", 1);
    let bs = vc.bootstrap();
    create_topic(&bs, "events", 2);
    let want: Commits =
        (0..30).map(|g| (format!("big-{g:02}"), BTreeMap::from([(("events".to_string(), 0), g as i64)]))).collect();
    commit_all(&bs, &want);
    vc.set_fault(1, Fault::OversizedDescribe { above_groups: 10 });
    let spec = spec("oversized", &bs);
    let client = KafkaClient::connect(&spec, &ClientOptions::default()).expect("client");
    for cycle in 0..3 {
        vc.reset_counts();
        let s = client.collect(&spec).expect("cycle");
        assert_eq!(s.groups.len(), 30, "cycle {cycle}");
        for g in &s.groups {
            assert!(g.fully_read(), "cycle {cycle}: {g:?}");
            assert_eq!(g.state, "Empty", "cycle {cycle}: described: {g:?}");
            let committed: Vec<i64> = g.offsets.iter().map(|o| o.committed).collect();
            assert_eq!(committed, vec![want[&g.group_id][&("events".to_string(), 0)]]);
        }
        let describes = vc.request_count(1, kollector_kafka::wire::ApiKey::DescribeGroups);
        let reconnects = vc.connections_accepted(1);
        eprintln!("cycle {cycle}: {describes} DescribeGroups, {reconnects} new connections");
        if cycle == 0 {
            // 30 refused, 3, then 15 refused (the ceiling halves), then at most 7.
            assert!(reconnects >= 1, "the refused answer cost the connection");
        } else {
            // Learnt: no request over the cap again, no reconnect.
            assert_eq!(reconnects, 0, "cycle {cycle}: no refusal once the size is learnt");
            assert_eq!(describes, 5, "cycle {cycle}: 30 groups in requests of 7 at most");
        }
    }
}
