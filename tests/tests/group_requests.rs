//! Group requests sent directly over the monitor's own connection
//! (`kollector_kafka::wire`), against real brokers, counted on the broker
//! side by a proxy that decodes request headers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_kafka::wire::connection::BrokerConnection;
use kollector_kafka::wire::groups::{describe_groups, fetch_offsets, list_groups};
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::request_counter::RequestCounter;
use kollector_tests::tansu::TansuBroker;
use rdkafka::mocking::MockCluster;

const T: Duration = Duration::from_secs(10);

/// Kafka API keys, for reading the counts.
const OFFSET_FETCH: i16 = 9;
const LIST_GROUPS: i16 = 16;
const DESCRIBE_GROUPS: i16 = 15;
const API_VERSIONS: i16 = 18;

/// Commits `want` (group → (topic, partition) → offset), four committers at a time.
fn commit_all(bootstrap: &str, want: &BTreeMap<String, BTreeMap<(String, i32), i64>>) {
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

/// 200 groups with known commits on three topics: one ListGroups, one
/// DescribeGroups and one OffsetFetch (v8, all groups) after ApiVersions,
/// and every committed offset equals what was committed.
#[test]
fn two_hundred_groups_in_four_requests_with_every_offset_right() {
    let broker = TansuBroker::start("wire-groups");
    let bs = broker.bootstrap();
    for t in ["orders", "payments", "audit"] {
        create_topic(&bs, t, 2);
        for p in 0..2 {
            produce_records(&bs, t, p, 30);
        }
    }
    // Group g017 commits (17 + p) on partition p of topics chosen by its number.
    let want: BTreeMap<String, BTreeMap<(String, i32), i64>> = (0..200)
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

    let counter = RequestCounter::start(&bs);
    let deadline = Instant::now() + T;
    let mut conn = BrokerConnection::connect(&counter.address(), T).expect("connect");
    let listed = list_groups(&mut conn, deadline).expect("ListGroups");
    let ids: Vec<String> = listed.iter().map(|g| g.id.clone()).filter(|id| want.contains_key(id)).collect();
    assert_eq!(ids.len(), 200, "listed {listed:?}");
    let described = describe_groups(&mut conn, &ids, deadline).expect("DescribeGroups");
    assert_eq!(described.len(), 200);
    assert!(described.iter().all(|d| d.error_code == 0), "{described:?}");
    let committed = fetch_offsets(&mut conn, &ids, None, deadline).expect("OffsetFetch");
    for (g, offsets) in &want {
        assert_eq!(committed.get(g), Some(&Ok(offsets.clone())), "group {g}");
    }
    let counts = counter.counts();
    eprintln!("requests for 200 groups: {counts:?} (API key → count)");
    assert_eq!(counts.get(&LIST_GROUPS), Some(&1));
    assert_eq!(counts.get(&DESCRIBE_GROUPS), Some(&1));
    assert!(counts.get(&API_VERSIONS).is_some_and(|n| *n <= 2), "{counts:?}");
    let batched = conn.versions().pick(kafka_protocol_api::OFFSET_FETCH, (8, 9)).is_some();
    assert!(batched, "tansu offers OffsetFetch v8+");
    assert_eq!(counts.get(&OFFSET_FETCH), Some(&1), "one OffsetFetch for 200 groups");
    assert_eq!(counts.values().sum::<u64>(), conn.requests(), "the broker saw what was sent");
}

/// A broker without OffsetFetch v8 (librdkafka's mock cluster speaks 0-6):
/// one request per group, chosen from ApiVersions, with the same answers.
#[test]
fn a_broker_without_offset_fetch_v8_gets_one_request_per_group() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 3, 1).expect("topic");
    let bs = mock.bootstrap_servers();
    let want: BTreeMap<String, BTreeMap<(String, i32), i64>> = (0..10)
        .map(|i| {
            (format!("old-{i}"), (0..3).map(|p| (("events".to_string(), p), (i * 10 + p as usize) as i64)).collect())
        })
        .collect();
    commit_all(&bs, &want);
    let counter = RequestCounter::start(&bs);
    let deadline = Instant::now() + T;
    let mut conn = BrokerConnection::connect(&counter.address(), T).expect("connect");
    assert_eq!(conn.versions().pick(kafka_protocol_api::OFFSET_FETCH, (8, 9)), None);
    let ids: Vec<String> = want.keys().cloned().collect();
    // The mock does not answer "every topic" (a null list) before v8: name them.
    let topics = [("events".to_string(), vec![0, 1, 2])];
    let committed = fetch_offsets(&mut conn, &ids, Some(&topics), deadline).expect("OffsetFetch per group");
    for (g, offsets) in &want {
        assert_eq!(committed.get(g), Some(&Ok(offsets.clone())), "group {g}");
    }
    assert_eq!(counter.counts().get(&OFFSET_FETCH), Some(&10));
}

/// The API keys the tests name, as `kafka-protocol` spells them.
mod kafka_protocol_api {
    pub const OFFSET_FETCH: kollector_kafka::wire::ApiKey = kollector_kafka::wire::ApiKey::OffsetFetch;
}
