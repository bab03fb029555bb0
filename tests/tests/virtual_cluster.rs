//! The virtual cluster harness itself (`kollector_tests::virtual_cluster`):
//! N virtual brokers in front of one tansu, with rewritten topology answers
//! and per-broker faults. Later tests of kollector's partial-failure rule
//! rely on each behaviour checked here, so every check compares against
//! what the harness promises (and, for the rewrites, against tansu's own
//! answer, which says otherwise).
//!
//! librdkafka is the client where it shows what a real client sees
//! (metadata, produce, watermarks, commits); a tiny blocking client on the
//! kafka-protocol crate ([`Wire`]) where the detail matters: which broker
//! answered, error codes, throttle_time_ms, a connection refused or cut.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeClusterRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kollector_tests::kafka_fixtures::{client_config, commit_offsets, create_topic, produce_records};
use kollector_tests::poll::wait_for;
use kollector_tests::virtual_cluster::{
    ErrorApis, Fault, VirtualCluster, COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, TANSU_NODE_ID,
};
use rdkafka::consumer::{BaseConsumer, Consumer};

const T: Duration = Duration::from_secs(10);

/// A blocking Kafka client for one connection: encodes a request with the
/// kafka-protocol crate, reads the answer and decodes it.
struct Wire {
    stream: TcpStream,
    correlation: i32,
}

impl Wire {
    fn connect(addr: &str) -> Wire {
        Wire::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    fn try_connect(addr: &str) -> std::io::Result<Wire> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(T))?;
        Ok(Wire { stream, correlation: 0 })
    }

    fn read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set read timeout");
    }

    fn send<R: Request>(&mut self, version: i16, request: &R) -> std::io::Result<()> {
        self.correlation += 1;
        let api = ApiKey::try_from(R::KEY).expect("a known API");
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("vc-test")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, api.request_header_version(version)).expect("encode header");
        request.encode(&mut buf, version).expect("encode request");
        let mut frame = (buf.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.stream.write_all(&frame)
    }

    fn receive<R: Request>(&mut self, version: i16) -> std::io::Result<R::Response> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame)?;
        let mut buf = Bytes::from(frame);
        let header =
            ResponseHeader::decode(&mut buf, R::Response::header_version(version)).map_err(std::io::Error::other)?;
        if header.correlation_id != self.correlation {
            return Err(std::io::Error::other(format!(
                "answer to {} while waiting for {}",
                header.correlation_id, self.correlation
            )));
        }
        R::Response::decode(&mut buf, version).map_err(std::io::Error::other)
    }

    fn try_call<R: Request>(&mut self, version: i16, request: &R) -> std::io::Result<R::Response> {
        self.send(version, request)?;
        self.receive::<R>(version)
    }

    fn call<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        self.try_call(version, request)
            .unwrap_or_else(|e| panic!("API {} v{version} at {:?}: {e}", R::KEY, self.stream.peer_addr()))
    }

    fn api_versions(&mut self) -> BTreeMap<i16, (i16, i16)> {
        let r = self.call(0, &ApiVersionsRequest::default());
        assert_eq!(r.error_code, 0, "ApiVersions: {r:?}");
        r.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect()
    }

    /// Whether the other side closed the connection (reads end), as opposed
    /// to keeping it open and silent.
    fn closed_by_peer(&mut self) -> bool {
        self.read_timeout(Duration::from_millis(200));
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn group(id: &str) -> GroupId {
    GroupId(StrBytes::from_string(id.to_string()))
}

fn topic_request(name: &str) -> kafka_protocol::messages::metadata_request::MetadataRequestTopic {
    kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
}

/// The highest version of `api` both tansu (asked through `wire`) and the
/// kafka-protocol crate speak.
fn highest(versions: &BTreeMap<i16, (i16, i16)>, api: ApiKey) -> i16 {
    let (_, tansu_max) = *versions.get(&(api as i16)).unwrap_or_else(|| panic!("tansu does not offer {api:?}"));
    tansu_max.min(api.valid_versions().max)
}

fn list_groups(wire: &mut Wire, version: i16) -> (i16, BTreeSet<String>) {
    let r = wire.call(version, &ListGroupsRequest::default());
    (r.error_code, r.groups.iter().map(|g| g.group_id.0.to_string()).collect())
}

fn metadata_consumer(bootstrap: &str) -> BaseConsumer {
    client_config(bootstrap).create().expect("consumer")
}

#[test]
fn tansu_api_versions_through_the_virtual_cluster() {
    let vc = VirtualCluster::start("vc-versions", 2);
    let versions = Wire::connect(&vc.address(1)).api_versions();
    let named: Vec<String> = versions
        .iter()
        .map(|(k, (lo, hi))| {
            let name = ApiKey::try_from(*k).map(|a| format!("{a:?}")).unwrap_or_else(|_| k.to_string());
            format!("{name} {lo}-{hi}")
        })
        .collect();
    eprintln!("tansu offers: {}", named.join(", "));
    // What the rest of these tests and kollector's own need.
    for api in [
        ApiKey::Metadata,
        ApiKey::FindCoordinator,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::OffsetFetch,
        ApiKey::OffsetCommit,
        ApiKey::DescribeCluster,
        ApiKey::ListOffsets,
    ] {
        assert!(versions.contains_key(&(api as i16)), "{api:?} missing from {named:?}");
    }
    assert_eq!(vc.request_count(1, ApiKey::ApiVersions), 1);
    assert_eq!(vc.request_count(2, ApiKey::ApiVersions), 0);
}

#[test]
fn metadata_shows_the_virtual_brokers_and_leaders_spread_over_them() {
    let vc = VirtualCluster::start("vc-metadata", 3);
    let bs = vc.bootstrap();
    assert_eq!(bs.split(',').count(), 3);
    create_topic(&bs, "six", 6);
    let consumer = metadata_consumer(&bs);
    let md = wait_for("topic six with 6 partitions in metadata", T, || {
        let md = consumer.fetch_metadata(Some("six"), T).map_err(|e| e.to_string())?;
        match md.topics().first() {
            Some(t) if t.partitions().len() == 6 => Ok(md),
            other => Err(format!("{:?}", other.map(|t| t.partitions().len()))),
        }
    });
    let brokers: Vec<(i32, String, i32)> =
        md.brokers().iter().map(|b| (b.id(), b.host().to_string(), b.port())).collect();
    let want: Vec<(i32, String, i32)> = (1..=3).map(|id| (id, "127.0.0.1".to_string(), vc.port(id) as i32)).collect();
    assert_eq!(brokers, want);
    let mut leaders = BTreeSet::new();
    for p in md.topics()[0].partitions() {
        let leader = vc.leader_of("six", p.id());
        assert_eq!(p.leader(), leader, "partition {}", p.id());
        assert_eq!(p.replicas(), &[leader]);
        assert_eq!(p.isr(), &[leader]);
        leaders.insert(p.leader());
    }
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]));

    // tansu itself says otherwise: the rewrite is what clients see.
    let mut direct = Wire::connect(&vc.tansu().bootstrap());
    let versions = direct.api_versions();
    let v = highest(&versions, ApiKey::Metadata);
    let request = MetadataRequest::default().with_topics(Some(vec![topic_request("six")]));
    let own = direct.call(v, &request);
    assert_eq!(own.brokers.iter().map(|b| b.node_id.0).collect::<Vec<_>>(), vec![TANSU_NODE_ID]);
    let seen = Wire::connect(&vc.address(2)).call(v, &request);
    assert_eq!(seen.brokers.iter().map(|b| b.node_id.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(seen.cluster_id.as_deref(), Some("vc-metadata"));

    // DescribeCluster: the same brokers, tansu's cluster id.
    let dv = highest(&versions, ApiKey::DescribeCluster);
    let d = Wire::connect(&vc.address(3)).call(dv, &DescribeClusterRequest::default());
    assert_eq!(d.error_code, 0);
    assert_eq!(d.cluster_id.as_str(), "vc-metadata");
    let brokers: Vec<(i32, String, i32)> =
        d.brokers.iter().map(|b| (b.broker_id.0, b.host.to_string(), b.port)).collect();
    assert_eq!(brokers, want);
    assert_eq!(d.controller_id.0, 1);
}

#[test]
fn produce_and_list_offsets_go_to_the_partition_leaders() {
    let vc = VirtualCluster::start("vc-produce", 3);
    let bs = vc.bootstrap();
    create_topic(&bs, "two", 2);
    let (l0, l1) = (vc.leader_of("two", 0), vc.leader_of("two", 1));
    assert_ne!(l0, l1, "consecutive partitions have different leaders");
    let idle = 6 - l0 - l1;
    vc.reset_counts();
    assert_eq!(produce_records(&bs, "two", 0, 3), 3);
    assert_eq!(produce_records(&bs, "two", 1, 5), 5);
    let consumer = metadata_consumer(&bs);
    for (p, n) in [(0, 3), (1, 5)] {
        let w = wait_for("watermarks", T, || consumer.fetch_watermarks("two", p, T).map_err(|e| e.to_string()));
        assert_eq!(w, (0, n), "partition {p}");
    }
    for leader in [l0, l1] {
        assert!(
            vc.request_count(leader, ApiKey::Produce) > 0,
            "no Produce at leader {leader}: {:?}",
            vc.requests(leader)
        );
        assert!(
            vc.request_count(leader, ApiKey::ListOffsets) > 0,
            "no ListOffsets at {leader}: {:?}",
            vc.requests(leader)
        );
    }
    assert_eq!(vc.request_count(idle, ApiKey::Produce), 0, "{:?}", vc.requests(idle));
    assert_eq!(vc.request_count(idle, ApiKey::ListOffsets), 0, "{:?}", vc.requests(idle));
}

#[test]
fn find_coordinator_names_coordinator_of_in_every_version() {
    let vc = VirtualCluster::start("vc-coordinator", 3);
    vc.pin_group("pinned-to-3", 3);
    vc.pin_group("pinned-to-1", 1);
    let groups = ["pinned-to-3", "pinned-to-1", "alpha", "beta", "gamma", "delta"];
    assert_eq!(vc.coordinator_of("pinned-to-3"), 3);
    assert_eq!(vc.coordinator_of("pinned-to-1"), 1);
    let placed: BTreeSet<i32> = groups.iter().map(|g| vc.coordinator_of(g)).collect();
    assert!(placed.len() >= 2, "groups all on one broker: {placed:?}");
    let mut wire = Wire::connect(&vc.address(2));
    let versions = wire.api_versions();
    let (lo, _) = versions[&(ApiKey::FindCoordinator as i16)];
    let hi = highest(&versions, ApiKey::FindCoordinator);
    assert!(hi >= 4, "tansu speaks FindCoordinator up to v{hi}: the batched form is untested");
    for v in lo..=hi {
        if v <= 3 {
            for g in groups {
                let r = wire.call(v, &FindCoordinatorRequest::default().with_key(StrBytes::from_string(g.into())));
                assert_eq!(r.error_code, 0, "v{v} {g}: {r:?}");
                let want = vc.coordinator_of(g);
                assert_eq!(
                    (r.node_id.0, r.host.as_str(), r.port),
                    (want, "127.0.0.1", vc.port(want) as i32),
                    "v{v} {g}"
                );
            }
        } else {
            let keys = groups.iter().map(|g| StrBytes::from_string(g.to_string())).collect();
            let r = wire.call(v, &FindCoordinatorRequest::default().with_coordinator_keys(keys));
            let got: Vec<(String, i16, i32, i32)> =
                r.coordinators.iter().map(|c| (c.key.to_string(), c.error_code, c.node_id.0, c.port)).collect();
            let want: Vec<(String, i16, i32, i32)> = groups
                .iter()
                .map(|g| (g.to_string(), 0, vc.coordinator_of(g), vc.port(vc.coordinator_of(g)) as i32))
                .collect();
            assert_eq!(got, want, "v{v}");
        }
    }
    // Pinning moves a group from then on.
    vc.pin_group("alpha", 2);
    let r = wire.call(hi, &FindCoordinatorRequest::default().with_coordinator_keys(vec!["alpha".into()]));
    assert_eq!(r.coordinators[0].node_id.0, 2);
}

#[test]
fn list_groups_at_each_broker_lists_only_the_groups_it_coordinates() {
    let vc = VirtualCluster::start("vc-groups", 3);
    let bs = vc.bootstrap();
    create_topic(&bs, "g", 2);
    // Nothing on broker 3, so an empty list is checked too.
    for (g, b) in [("a1", 1), ("a2", 1), ("b1", 2), ("b2", 2), ("b3", 2)] {
        vc.pin_group(g, b);
    }
    vc.reset_counts();
    for g in ["a1", "a2", "b1", "b2", "b3"] {
        // librdkafka finds the coordinator and commits there.
        commit_offsets(&bs, g, &[("g", 0, 1), ("g", 1, 2)]);
    }
    assert!(vc.request_count(1, ApiKey::OffsetCommit) > 0, "{:?}", vc.requests(1));
    assert!(vc.request_count(2, ApiKey::OffsetCommit) > 0, "{:?}", vc.requests(2));
    assert_eq!(vc.request_count(3, ApiKey::OffsetCommit), 0, "{:?}", vc.requests(3));
    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let mut wire1 = Wire::connect(&vc.address(1));
    let v = highest(&wire1.api_versions(), ApiKey::ListGroups);
    for version in [0, v] {
        assert_eq!(list_groups(&mut wire1, version), (0, want(&["a1", "a2"])), "v{version}");
        assert_eq!(list_groups(&mut Wire::connect(&vc.address(2)), version), (0, want(&["b1", "b2", "b3"])));
        assert_eq!(list_groups(&mut Wire::connect(&vc.address(3)), version), (0, want(&[])));
    }
    // tansu lists them all.
    assert_eq!(list_groups(&mut Wire::connect(&vc.tansu().bootstrap()), v).1, want(&["a1", "a2", "b1", "b2", "b3"]));
}

#[test]
fn a_refused_broker_refuses_connects_while_the_others_answer() {
    let vc = VirtualCluster::start("vc-refuse", 3);
    let mut before = Wire::connect(&vc.address(2));
    before.api_versions();
    vc.set_fault(2, Fault::Refuse);
    let e = TcpStream::connect(vc.address(2)).map(|_| ()).expect_err("connect to a refusing broker");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // Closed at once, not only when it next asks for something.
    wait_for("the open connection to broker 2 closed", T, || {
        before.closed_by_peer().then_some(()).ok_or("open".to_string())
    });
    wait_for("broker 2's connection threads gone", T, || {
        (vc.open_connections(2) == 0).then_some(()).ok_or(format!("{} open", vc.open_connections(2)))
    });
    for id in [1, 3] {
        Wire::connect(&vc.address(id)).api_versions();
    }
    // librdkafka with all three bootstrap addresses still gets metadata.
    let consumer = metadata_consumer(&vc.bootstrap());
    let md = wait_for("metadata with broker 2 refusing", T, || {
        consumer.fetch_metadata(None, Duration::from_secs(3)).map_err(|e| e.to_string())
    });
    assert_eq!(md.brokers().len(), 3);
    // Still refused, however often asked.
    for _ in 0..3 {
        assert!(TcpStream::connect(vc.address(2)).is_err());
    }

    vc.clear_fault(2);
    assert_eq!(vc.fault(2), None);
    Wire::connect(&vc.address(2)).api_versions();
    // Set and cleared again: the port is the same one throughout.
    vc.set_fault(2, Fault::Refuse);
    assert!(TcpStream::connect(vc.address(2)).is_err());
    vc.clear_fault(2);
    Wire::connect(&vc.address(2)).api_versions();
}

#[test]
fn a_stuck_broker_never_answers_while_the_others_do() {
    let vc = VirtualCluster::start("vc-stuck", 3);
    let mut before = Wire::connect(&vc.address(1));
    before.api_versions();
    vc.set_fault(1, Fault::Stuck);
    let mut during = Wire::connect(&vc.address(1));
    during.read_timeout(Duration::from_millis(1500));
    before.read_timeout(Duration::from_millis(1500));
    let requests = vc.request_count(1, ApiKey::ApiVersions);
    for wire in [&mut during, &mut before] {
        let e =
            wire.try_call(0, &ApiVersionsRequest::default()).map(|_| ()).expect_err("an answer from a stuck broker");
        assert!(timed_out(&e), "not a timeout: {e}");
    }
    // The requests did arrive.
    assert_eq!(vc.request_count(1, ApiKey::ApiVersions), requests + 2);
    for id in [2, 3] {
        Wire::connect(&vc.address(id)).api_versions();
    }
    vc.clear_fault(1);
    assert!(wait_for("the stuck connection closed", T, || if during.closed_by_peer() {
        Ok(true)
    } else {
        Err("still open".into())
    }));
    Wire::connect(&vc.address(1)).api_versions();
}

#[test]
fn a_coordinator_error_comes_back_on_group_reads_and_writes() {
    let vc = VirtualCluster::start("vc-errors", 3);
    let bs = vc.bootstrap();
    create_topic(&bs, "e", 2);
    vc.pin_group("ge", 1);
    commit_offsets(&bs, "ge", &[("e", 0, 5), ("e", 1, 7)]);
    let mut wire = Wire::connect(&vc.address(1));
    let versions = wire.api_versions();
    let fetch_v = highest(&versions, ApiKey::OffsetFetch);
    assert!(fetch_v >= 8, "tansu speaks OffsetFetch up to v{fetch_v}: the multi-group form is untested");
    // Null topics: every partition with a commit (v8+; tansu's answer to a
    // null list in v2-7 does not decode).
    let fetch = OffsetFetchRequest::default()
        .with_groups(vec![OffsetFetchRequestGroup::default().with_group_id(group("ge")).with_topics(None)]);
    let committed = |r: &kafka_protocol::messages::OffsetFetchResponse| -> BTreeMap<i32, i64> {
        r.groups[0].topics.iter().flat_map(|t| &t.partitions).map(|p| (p.partition_index, p.committed_offset)).collect()
    };
    let r = wire.call(fetch_v, &fetch);
    assert_eq!(r.groups[0].error_code, 0);
    assert_eq!(committed(&r), BTreeMap::from([(0, 5), (1, 7)]));

    vc.set_fault(1, Fault::coordinator_error(COORDINATOR_LOAD_IN_PROGRESS));
    // OffsetFetch, multi-group form: the group's own error code, no offsets.
    let r = wire.call(fetch_v, &fetch);
    assert_eq!(r.groups.len(), 1);
    assert_eq!((r.groups[0].group_id.0.as_str(), r.groups[0].error_code), ("ge", 14));
    assert!(r.groups[0].topics.is_empty());
    // Single-group form (v2-7): the top-level error code.
    let r = wire.call(7, &OffsetFetchRequest::default().with_group_id(group("ge")).with_topics(None));
    assert_eq!((r.error_code, r.topics.len()), (14, 0));
    let dv = highest(&versions, ApiKey::DescribeGroups);
    let d = wire.call(dv, &DescribeGroupsRequest::default().with_groups(vec![group("ge")]));
    assert_eq!(d.groups.iter().map(|g| g.error_code).collect::<Vec<_>>(), vec![14]);
    let lv = highest(&versions, ApiKey::ListGroups);
    assert_eq!(list_groups(&mut wire, lv), (14, BTreeSet::new()));
    // A write does not reach tansu: answered 14, not applied.
    let cv = highest(&versions, ApiKey::OffsetCommit);
    let commit = OffsetCommitRequest::default()
        .with_group_id(group("ge"))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("e")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(99)])]);
    let c = wire.call(cv, &commit);
    let codes: Vec<i16> = c.topics.iter().flat_map(|t| &t.partitions).map(|p| p.error_code).collect();
    assert_eq!(codes, vec![14]);
    // FindCoordinator is not a coordinator's API: still answered.
    let fv = highest(&versions, ApiKey::FindCoordinator);
    let f = wire.call(fv, &FindCoordinatorRequest::default().with_coordinator_keys(vec!["ge".into()]));
    assert_eq!((f.coordinators[0].error_code, f.coordinators[0].node_id.0), (0, 1));
    // Broker 2 has no fault: tansu's answer.
    let r = Wire::connect(&vc.address(2)).call(fetch_v, &fetch);
    assert_eq!((r.groups[0].error_code, committed(&r)), (0, BTreeMap::from([(0, 5), (1, 7)])));

    // Kafka's classic coordinator: 14 together with the groups loaded.
    vc.set_fault(
        1,
        Fault::ErrorCode { apis: ErrorApis::Coordinator, code: COORDINATOR_LOAD_IN_PROGRESS, keep_listed_groups: true },
    );
    assert_eq!(list_groups(&mut wire, lv), (14, BTreeSet::from(["ge".to_string()])));

    // All group APIs: FindCoordinator too.
    vc.set_fault(
        1,
        Fault::ErrorCode { apis: ErrorApis::AllGroup, code: COORDINATOR_NOT_AVAILABLE, keep_listed_groups: false },
    );
    let f = wire.call(fv, &FindCoordinatorRequest::default().with_coordinator_keys(vec!["ge".into()]));
    assert_eq!((f.coordinators[0].error_code, f.coordinators[0].node_id.0), (15, -1));
    let f = wire.call(3, &FindCoordinatorRequest::default().with_key("ge".into()));
    assert_eq!((f.error_code, f.node_id.0), (15, -1));

    // Only some APIs: DescribeGroups fails, OffsetFetch answers.
    vc.set_fault(
        1,
        Fault::ErrorCode { apis: ErrorApis::Only(vec![ApiKey::DescribeGroups]), code: 16, keep_listed_groups: false },
    );
    let d = wire.call(dv, &DescribeGroupsRequest::default().with_groups(vec![group("ge")]));
    assert_eq!(d.groups[0].error_code, 16);
    assert_eq!(wire.call(fetch_v, &fetch).groups[0].error_code, 0);

    vc.clear_fault(1);
    let r = wire.call(fetch_v, &fetch);
    assert_eq!(r.groups[0].error_code, 0);
    assert_eq!(committed(&r), BTreeMap::from([(0, 5), (1, 7)]), "the commit answered 14 was applied");
    assert_eq!(list_groups(&mut wire, lv), (0, BTreeSet::from(["ge".to_string()])));
}

#[test]
fn a_throttle_shows_in_every_answer_and_early_requests_are_counted() {
    let vc = VirtualCluster::start("vc-throttle", 2);
    let mut wire = Wire::connect(&vc.address(1));
    let versions = wire.api_versions();
    let v = highest(&versions, ApiKey::Metadata);
    let request = MetadataRequest::default().with_topics(Some(vec![]));
    assert_eq!(wire.call(v, &request).throttle_time_ms, 0);
    let throttle = Duration::from_millis(800);
    vc.set_fault(1, Fault::Throttle(throttle));
    assert_eq!(wire.call(v, &request).throttle_time_ms, 800);
    assert_eq!(vc.sent_while_throttled(1), 0);
    // Straight away: a client that ignores the throttle.
    let r = wire.call(v, &request);
    let answered = Instant::now();
    assert_eq!(r.throttle_time_ms, 800);
    assert_eq!(vc.sent_while_throttled(1), 1);
    // A client honouring it waits out the throttle (this wait is the
    // behaviour under test, not a stand-in for a condition).
    std::thread::sleep((answered + throttle + Duration::from_millis(50)).saturating_duration_since(Instant::now()));
    let lv = highest(&versions, ApiKey::ListGroups);
    let l = wire.call(lv, &ListGroupsRequest::default());
    let answered = Instant::now();
    assert_eq!(l.throttle_time_ms, 800);
    assert_eq!(vc.sent_while_throttled(1), 1);
    // Other brokers are not throttled.
    assert_eq!(Wire::connect(&vc.address(2)).call(v, &request).throttle_time_ms, 0);
    assert_eq!(vc.sent_while_throttled(2), 0);
    vc.clear_fault(1);
    std::thread::sleep((answered + throttle + Duration::from_millis(50)).saturating_duration_since(Instant::now()));
    assert_eq!(wire.call(v, &request).throttle_time_ms, 0);
    assert_eq!(vc.sent_while_throttled(1), 1);
}

#[test]
fn a_delay_holds_every_answer() {
    let vc = VirtualCluster::start("vc-delay", 2);
    let delay = Duration::from_millis(1500);
    let round_trip = |id: i32| {
        let mut wire = Wire::connect(&vc.address(id));
        let start = Instant::now();
        wire.api_versions();
        start.elapsed()
    };
    vc.set_fault(2, Fault::Delay(delay));
    assert!(round_trip(2) >= delay);
    assert!(round_trip(1) < delay);
    vc.clear_fault(2);
    assert!(round_trip(2) < delay);
}

#[test]
fn close_mid_answer_sends_part_of_an_answer_then_closes() {
    let vc = VirtualCluster::start("vc-cut", 2);
    vc.set_fault(1, Fault::CloseMidAnswer);
    let mut wire = Wire::connect(&vc.address(1));
    wire.send(0, &ApiVersionsRequest::default()).expect("send");
    let mut len = [0u8; 4];
    wire.stream.read_exact(&mut len).expect("the length of the answer");
    let claimed = u32::from_be_bytes(len) as usize;
    let mut got = Vec::new();
    wire.stream.read_to_end(&mut got).expect("read until closed");
    assert!(!got.is_empty() && got.len() < claimed, "got {} of {claimed} bytes", got.len());
    Wire::connect(&vc.address(2)).api_versions();
    vc.clear_fault(1);
    Wire::connect(&vc.address(1)).api_versions();
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let vc = VirtualCluster::start("vc-malformed", 1);
    let mut healthy = Wire::connect(&vc.address(1));
    healthy.api_versions();
    for garbage in [&[0xff, 0xff, 0xff, 0xff][..], &[0, 0, 0, 3, 0, 18, 0][..], &[0x7f, 0xff, 0xff, 0xff, 1][..]] {
        let mut bad = Wire::connect(&vc.address(1));
        bad.stream.write_all(garbage).expect("write");
        wait_for(&format!("the connection closed after {garbage:?}"), T, || {
            bad.closed_by_peer().then_some(()).ok_or("open".to_string())
        });
    }
    healthy.api_versions();
    Wire::connect(&vc.address(1)).api_versions();
}

/// Names of this process's threads starting with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            if comm.starts_with(prefix) {
                names.push(comm.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn drop_stops_every_thread_listener_and_tansu() {
    let vc = VirtualCluster::start("vc-drop", 3);
    let prefix = vc.thread_name_prefix();
    let ports: Vec<u16> = (1..=3).map(|id| vc.port(id)).collect();
    let tansu_pid = vc.tansu().pid().expect("tansu runs");
    // Connections in every state a thread can wait in.
    let mut idle = Wire::connect(&vc.address(1));
    idle.api_versions();
    vc.set_fault(2, Fault::Stuck);
    let mut stuck = Wire::connect(&vc.address(2));
    stuck.send(0, &ApiVersionsRequest::default()).expect("send");
    wait_for("the swallowed request at broker 2", T, || {
        (vc.request_count(2, ApiKey::ApiVersions) == 1).then_some(()).ok_or("not yet".to_string())
    });
    vc.set_fault(3, Fault::Delay(Duration::from_secs(60)));
    let mut delayed = Wire::connect(&vc.address(3));
    delayed.send(0, &ApiVersionsRequest::default()).expect("send");
    wait_for("the delayed request at broker 3", T, || {
        (vc.request_count(3, ApiKey::ApiVersions) == 1).then_some(()).ok_or("not yet".to_string())
    });
    let running = threads_named(&prefix);
    // 3 accept threads and 2 per connection.
    assert_eq!(running.len(), 9, "{running:?}");
    let start = Instant::now();
    drop(vc);
    assert!(start.elapsed() < Duration::from_secs(5), "drop took {:?}", start.elapsed());
    assert_eq!(threads_named(&prefix), Vec::<String>::new());
    for port in ports {
        let e = TcpStream::connect(("127.0.0.1", port)).map(|_| ()).expect_err("a listener left");
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    }
    assert!(!std::path::Path::new(&format!("/proc/{tansu_pid}")).exists(), "tansu still runs");
    for wire in [&mut idle, &mut stuck, &mut delayed] {
        assert!(wire.closed_by_peer(), "a client connection left open");
    }
}

/// CPU time (user + system, in clock ticks) of this process's threads whose
/// names start with `prefix`.
fn cpu_ticks_of_threads(prefix: &str) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task").flatten() {
        let named = std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.starts_with(prefix));
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if named {
            ticks += fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            ticks += fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks
}

#[test]
fn waiting_threads_do_not_spin() {
    let vc = VirtualCluster::start("vc-idle", 3);
    let prefix = vc.thread_name_prefix();
    vc.set_fault(1, Fault::Refuse);
    vc.set_fault(2, Fault::Stuck);
    let mut stuck = Wire::connect(&vc.address(2));
    stuck.send(0, &ApiVersionsRequest::default()).expect("send");
    let mut idle = Wire::connect(&vc.address(3));
    idle.api_versions();
    wait_for("the swallowed request at broker 2", T, || {
        (vc.request_count(2, ApiKey::ApiVersions) == 1).then_some(()).ok_or("not yet".to_string())
    });
    let before = cpu_ticks_of_threads(&prefix);
    // The measurement window: a spinning thread would burn ~100 ticks in it.
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks_of_threads(&prefix) - before;
    assert!(used <= 2, "the harness's threads used {used} ticks of CPU in 1 s while waiting");
}
