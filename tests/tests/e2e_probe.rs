//! The end-to-end probe against real brokers: tansu alone, and three
//! virtual brokers in front of tansu (`virtual_cluster.rs`) where one is
//! made to stop answering, then to answer late. What a user would see is
//! checked on `/metrics`: the counters and histograms fill; a broker that
//! stops answering raises failures (and a slow one lost messages) for the
//! partitions it leads and for no other; deleting or reconfiguring the
//! monitor closes the probe's producer and consumer (no socket left when
//! the call returns); and a monitor moved to another cluster never counts
//! one cluster's messages under the other.

use std::time::Duration;

use kollector_devkit::tansu::TansuBroker;
use kollector_proto::v1 as pb;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::metrics::Metrics;
use kollector_tests::net::established_connections_to;
use kollector_tests::poll::{wait_for, wait_for_async};
use kollector_tests::virtual_cluster::{Fault, VirtualCluster};

/// A probed monitor. Its timeout leaves room for a stuck broker's budget
/// (a third of the timeout, at least 1 s) and the rest of the cluster, so a
/// cycle with one broker stuck still publishes (the probe's numbers travel
/// with the snapshot).
fn probe_monitor(id: &str, bootstrap: &str) -> String {
    format!(
        "[[monitors]]\nid = \"{id}\"\nbootstrap = [{bootstrap}]\ninterval = \"2s\"\ntimeout = \"1800ms\"\n\
         [monitors.e2e_probe]\ninterval = \"200ms\"\nack_sla = \"4s\"\nroundtrip_sla = \"1500ms\"\n"
    )
}

/// A counter of one probe partition (0 when absent).
fn count(m: &Metrics, name: &str, partition: i32) -> f64 {
    m.value(name, &[("partition", &partition.to_string())]).unwrap_or(0.0)
}

#[test]
fn the_probe_measures_a_cluster_and_a_stuck_or_slow_broker_only_marks_its_own_partitions() {
    let vc = VirtualCluster::start("e2e-kafka", 3);
    let bootstrap: Vec<String> = vc.bootstrap().split(',').map(|a| format!("\"{a}\"")).collect();
    let k = KollectorProcess::standalone(&probe_monitor("probed", &bootstrap.join(", ")));
    // The topic is created with one partition per broker, each led by another broker.
    let m = wait_for("every probe partition to carry messages back", Duration::from_secs(60), || {
        let m = k.metrics();
        let back = (0..3).filter(|p| count(&m, "kafka_e2e_messages_received_total", *p) >= 3.0).count();
        let committed = m.value("kafka_e2e_offset_commits_total", &[]).unwrap_or(0.0);
        if back == 3 && committed >= 1.0 {
            Ok(m)
        } else {
            let failed = m.value("kafka_e2e_offset_commits_failed_total", &[]);
            Err(format!("{back}/3 partitions back, {committed} commits, {failed:?} failed\n{}", k.log()))
        }
    });
    let leaders: Vec<i32> = (0..3).map(|p| vc.leader_of("kollector-e2e", p)).collect();
    for p in 0..3 {
        let l = [("partition", p.to_string()), ("leader", leaders[p as usize].to_string())];
        let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(m.value("kafka_e2e_partition_leader", &l), Some(1.0), "partition {p}");
        for bad in [
            "kafka_e2e_messages_produced_failed_total",
            "kafka_e2e_messages_lost_total",
            "kafka_e2e_messages_duplicate_total",
            "kafka_e2e_messages_out_of_order_total",
        ] {
            assert_eq!(count(&m, bad, p), 0.0, "{bad} of partition {p} on a healthy cluster");
        }
        let pl = p.to_string();
        assert!(m.value("kafka_e2e_produce_latency_seconds_count", &[("partition", &pl)]).unwrap_or(0.0) >= 3.0);
        assert!(m.value("kafka_e2e_roundtrip_latency_seconds_count", &[("partition", &pl)]).unwrap_or(0.0) >= 3.0);
    }
    assert!(m.value("kafka_e2e_offset_commit_latency_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(m.value("kafka_e2e_brokers_without_partition", &[]), Some(0.0));
    assert_eq!(m.value("kafka_e2e_sla_seconds", &[("sla", "roundtrip")]), Some(1.5));
    assert_eq!(m.value("kollector_e2e_probes", &[]), Some(1.0));

    // Broker `victim` stops answering: its partition's produces fail, and
    // no other partition fails or loses anything.
    let victim = leaders[1];
    let theirs: Vec<i32> = (0..3).filter(|p| leaders[*p as usize] == victim).collect();
    let others: Vec<i32> = (0..3).filter(|p| leaders[*p as usize] != victim).collect();
    let before = k.metrics();
    vc.set_fault(victim, Fault::Stuck);
    let during = wait_for("produce failures on the stuck broker's partitions", Duration::from_secs(30), || {
        let m = k.metrics();
        let failed: f64 = theirs.iter().map(|p| count(&m, "kafka_e2e_messages_produced_failed_total", *p)).sum();
        let produced: f64 = theirs.iter().map(|p| count(&m, "kafka_e2e_messages_produced_total", *p)).sum();
        let up = m.value("kollector_monitor_up", &[]);
        (failed >= 3.0).then_some(m).ok_or(format!("{failed} failed of {produced} produced so far (up {up:?})"))
    });
    for p in &others {
        for bad in ["kafka_e2e_messages_produced_failed_total", "kafka_e2e_messages_lost_total"] {
            assert_eq!(count(&during, bad, *p), 0.0, "{bad} of partition {p}, led by a healthy broker");
        }
        assert!(
            count(&during, "kafka_e2e_messages_received_total", *p)
                > count(&before, "kafka_e2e_messages_received_total", *p),
            "partition {p} stopped coming back while another broker was stuck"
        );
    }
    vc.clear_fault(victim);

    // Then it answers, each answer 2.5 s late: the produce is acknowledged
    // within the 4 s ack SLA, and the fetch answer that brings the message
    // back is 2.5 s late too, past the 1.5 s round-trip SLA: lost, then
    // late when it does come; and still nobody else's.
    wait_for("the stuck broker's partitions to come back", Duration::from_secs(30), || {
        let m = k.metrics();
        let back: f64 = theirs.iter().map(|p| count(&m, "kafka_e2e_messages_received_total", *p)).sum();
        let was: f64 = theirs.iter().map(|p| count(&during, "kafka_e2e_messages_received_total", *p)).sum();
        (back > was + 2.0).then_some(()).ok_or(format!("{back} received, {was} before"))
    });
    let before_slow = k.metrics();
    vc.set_fault(victim, Fault::Delay(Duration::from_millis(2500)));
    let slow = wait_for("lost, then late, messages on the slow broker's partitions", Duration::from_secs(40), || {
        let m = k.metrics();
        let grew =
            |name: &str| -> f64 { theirs.iter().map(|p| count(&m, name, *p) - count(&before_slow, name, *p)).sum() };
        let (lost, late) = (grew("kafka_e2e_messages_lost_total"), grew("kafka_e2e_messages_late_total"));
        (lost >= 2.0 && late >= 1.0).then_some(m.clone()).ok_or(format!("{lost} lost, {late} late so far"))
    });
    for p in &others {
        assert_eq!(count(&slow, "kafka_e2e_messages_lost_total", *p), 0.0, "partition {p} lost messages");
        assert_eq!(count(&slow, "kafka_e2e_messages_produced_failed_total", *p), 0.0);
    }
    vc.clear_fault(victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconfiguring_and_deleting_close_the_probe_and_never_mix_two_clusters() {
    let first = TansuBroker::start("e2e-first");
    let second = TansuBroker::start("e2e-second");
    let k = KollectorProcess::standalone("");
    let mut client = k.client().await;
    let spec = |bootstrap: String| pb::MonitorSpecInput {
        id: "moving".into(),
        bootstrap: vec![bootstrap],
        interval: Some("1s".into()),
        timeout: Some("900ms".into()),
        e2e_probe: Some(pb::E2eProbeInput { interval: Some("200ms".into()), ..Default::default() }),
        ..Default::default()
    };
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec(first.bootstrap())) }).await.expect("create");
    let received_on = |cluster: &'static str| {
        let k = &k;
        move || {
            let m = k.metrics();
            let n = m.value("kafka_e2e_messages_received_total", &[("cluster_id", cluster), ("partition", "0")]);
            n.filter(|n| *n >= 3.0).map(|_| m).ok_or(format!("{n:?} received on {cluster}"))
        }
    };
    wait_for("probe messages back from the first cluster", Duration::from_secs(60), received_on("e2e-first"));
    wait_for("a probe commit", Duration::from_secs(20), || {
        let m = k.metrics();
        let n = m.value("kafka_e2e_offset_commits_total", &[]);
        n.filter(|n| *n >= 1.0).ok_or(format!("{n:?} {:?}", m.value("kafka_e2e_offset_commits_failed_total", &[])))
    });
    assert!(established_connections_to(k.pid(), first.port()) > 0);

    // Reconfigured to another cluster: when the call returns, nothing of
    // the old client is connected to the first cluster.
    client.update_monitor(pb::UpdateMonitorRequest { spec: Some(spec(second.bootstrap())) }).await.expect("update");
    assert_eq!(established_connections_to(k.pid(), first.port()), 0, "a socket to the old cluster survived the update");
    let m = wait_for("probe messages back from the second cluster", Duration::from_secs(60), received_on("e2e-second"));
    // Only the second cluster's series, and its counts are its own run's.
    assert!(m.find("kafka_e2e_messages_received_total", &[("cluster_id", "e2e-first")]).is_empty());
    assert_eq!(m.value("kollector_e2e_probes", &[]), Some(1.0));
    // The first cluster's probe topic stopped growing at the update: while
    // the second cluster's probe makes 10 more round trips, not one more
    // message lands on the first.
    let end_of_first = || -> i64 {
        let c: rdkafka::consumer::BaseConsumer =
            kollector_tests::kafka_fixtures::client_config(&first.bootstrap()).create().expect("a client");
        rdkafka::consumer::Consumer::fetch_watermarks(&c, "kollector-e2e", 0, Duration::from_secs(5))
            .expect("the first cluster's probe topic")
            .1
    };
    let first_end = end_of_first();
    let back_then = m.value("kafka_e2e_messages_received_total", &[("cluster_id", "e2e-second")]).unwrap_or(0.0);
    wait_for("10 more round trips on the second cluster", Duration::from_secs(30), || {
        let n = k.metrics().value("kafka_e2e_messages_received_total", &[("cluster_id", "e2e-second")]).unwrap_or(0.0);
        (n >= back_then + 10.0).then_some(()).ok_or(format!("{n} received"))
    });
    assert_eq!(end_of_first(), first_end, "the first cluster's probe topic grew after the monitor moved away");
    client.delete_monitor(pb::DeleteMonitorRequest { id: "moving".into() }).await.expect("delete");
    assert_eq!(established_connections_to(k.pid(), second.port()), 0, "a socket survived the delete");
    wait_for_async("no probe left", Duration::from_secs(5), || async {
        let n = k.metrics().value("kollector_e2e_probes", &[]);
        (n == Some(0.0)).then_some(()).ok_or(format!("{n:?}"))
    })
    .await;
}
