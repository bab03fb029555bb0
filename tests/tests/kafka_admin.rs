//! The librdkafka admin wrappers against real brokers: tansu (groups, admin
//! APIs) and librdkafka's mock cluster (several brokers; lacks group APIs).

use std::time::{Duration, Instant};

use kollector_kafka::admin::{self, OffsetSpec};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::tansu::TansuBroker;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;

const T: Duration = Duration::from_secs(10);

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("log_level", "3")
        .create()
        .expect("admin client")
}

fn tp(topic: &str, parts: i32) -> Vec<(String, i32)> {
    (0..parts).map(|p| (topic.to_string(), p)).collect()
}

#[test]
fn tansu_describe_cluster_reports_id_and_broker() {
    let broker = TansuBroker::start("admin-cluster");
    let a = admin(&broker.bootstrap());
    let d = admin::describe_cluster(a.inner(), T).expect("describe cluster");
    assert_eq!(d.cluster_id.as_deref(), Some("admin-cluster"));
    assert_eq!(d.brokers.len(), 1);
    assert_eq!((d.brokers[0].id, d.brokers[0].port), (111, broker.port()));
    assert_eq!(d.controller_id, Some(111));
}

#[test]
fn tansu_list_offsets_earliest_and_latest_in_one_call_each() {
    let broker = TansuBroker::start("admin-offsets");
    let bs = broker.bootstrap();
    create_topic(&bs, "o", 3);
    for (p, n) in [(0, 5), (1, 7), (2, 0)] {
        produce_records(&bs, "o", p, n);
    }
    let a = admin(&bs);
    let mut latest = admin::list_offsets(a.inner(), &tp("o", 3), OffsetSpec::Latest, T).expect("latest");
    latest.sort_by_key(|o| o.partition);
    let v: Vec<i64> = latest.iter().map(|o| *o.result.as_ref().expect("ok")).collect();
    assert_eq!(v, vec![5, 7, 0]);
    let earliest = admin::list_offsets(a.inner(), &tp("o", 3), OffsetSpec::Earliest, T).expect("earliest");
    assert!(earliest.iter().all(|o| o.result == Ok(0)), "{earliest:?}");
}

#[test]
fn tansu_groups_list_describe_and_committed_offsets() {
    let broker = TansuBroker::start("admin-groups");
    let bs = broker.bootstrap();
    create_topic(&bs, "g", 3);
    produce_records(&bs, "g", 0, 4);
    commit_offsets(&bs, "g1", &[("g", 0, 3), ("g", 1, 7)]);
    commit_offsets(&bs, "g2", &[("g", 2, 1)]);
    let a = admin(&bs);
    let listed = admin::list_consumer_groups(a.inner(), T).expect("list groups");
    eprintln!("listed: {listed:?}");
    let ids: Vec<String> = vec!["g1".into(), "g2".into(), "never-seen".into()];
    let described = admin::describe_consumer_groups(a.inner(), &ids, T).expect("describe");
    eprintln!("described: {described:?}");
    let offsets = admin::list_consumer_group_offsets(a.inner(), &ids, T).expect("offsets");
    eprintln!("offsets: {offsets:?}");
    let g1 = offsets.iter().find(|(g, _)| g == "g1").unwrap().1.as_ref().expect("g1 offsets");
    let mut got: Vec<(i32, Option<i64>)> =
        g1.iter().filter(|c| c.offset.is_some()).map(|c| (c.partition, c.offset)).collect();
    got.sort();
    assert_eq!(got, vec![(0, Some(3)), (1, Some(7))]);
    let g2 = offsets.iter().find(|(g, _)| g == "g2").unwrap().1.as_ref().expect("g2 offsets");
    assert_eq!(
        g2.iter().filter(|c| c.offset.is_some()).map(|c| (c.partition, c.offset)).collect::<Vec<_>>(),
        vec![(2, Some(1))]
    );
    let listed_ids: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert!(listed_ids.contains(&"g1") && listed_ids.contains(&"g2"), "{listed_ids:?}");
}

#[test]
fn mock_cluster_offsets_work_and_missing_apis_fail_within_the_deadline() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("m", 6, 3).unwrap();
    let a = admin(&mock.bootstrap_servers());
    let latest = admin::list_offsets(a.inner(), &tp("m", 6), OffsetSpec::Latest, T).expect("latest");
    assert_eq!(latest.len(), 6);
    assert!(latest.iter().all(|o| o.result == Ok(0)), "{latest:?}");
    // The mock lacks the group APIs: librdkafka refuses ListGroups at once
    // (every broker reports "unsupported"), and DescribeGroups per group.
    let started = Instant::now();
    let err = admin::list_consumer_groups(a.inner(), T).expect_err("mock has no ListGroups");
    assert!(err.is_unsupported(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "ListGroups took {:?}", started.elapsed());
    let described = admin::describe_consumer_groups(a.inner(), &["x".into()], T).expect("call completes");
    assert!(matches!(&described[0].1, Err(e) if e.code == rdkafka::types::RDKafkaErrorCode::UnsupportedFeature));
    // DescribeCluster is never answered by the mock: the wrapper gives up at its deadline.
    let short = Duration::from_millis(300);
    let started = Instant::now();
    let err = admin::describe_cluster(a.inner(), short).expect_err("mock has no DescribeCluster");
    assert!(matches!(err, admin::AdminError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < short + Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[test]
fn bad_input_and_empty_lists() {
    let mock = MockCluster::new(1).unwrap();
    let a = admin(&mock.bootstrap_servers());
    let e = admin::list_offsets(a.inner(), &[("a\0b".into(), 0)], OffsetSpec::Latest, T).unwrap_err();
    assert!(matches!(e, admin::AdminError::InvalidInput(_)), "{e:?}");
    let e = admin::describe_consumer_groups(a.inner(), &["x\0".into()], T).unwrap_err();
    assert!(matches!(e, admin::AdminError::InvalidInput(_)));
    assert!(admin::list_offsets(a.inner(), &[], OffsetSpec::Latest, T).unwrap().is_empty());
    assert!(admin::describe_consumer_groups(a.inner(), &[], T).unwrap().is_empty());
    assert!(admin::list_consumer_group_offsets(a.inner(), &[], T).unwrap().is_empty());
}

#[test]
fn a_dead_broker_gives_an_error_within_the_timeout() {
    let mut broker = TansuBroker::start("admin-dead");
    let a = admin(&broker.bootstrap());
    admin::describe_cluster(a.inner(), T).expect("alive first");
    broker.kill();
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let r = admin::list_offsets(a.inner(), &tp("nope", 1), OffsetSpec::Latest, timeout);
    let took = started.elapsed();
    assert!(took <= timeout + Duration::from_secs(2), "took {took:?}");
    match r {
        Err(_) => {}
        Ok(v) => assert!(v.iter().all(|o| o.result.is_err()), "{v:?}"),
    }
}
