//! End-to-end tests of `kollector standalone` against real tansu brokers:
//! exact values, isolation between monitors, reconfigure and delete closing
//! real TCP connections, and the identity guard.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::kollector::{monitor_toml, run_cli, KollectorProcess};
use kollector_tests::metrics::Metrics;
use kollector_tests::net::established_connections_to;
use kollector_tests::poll::{wait_for, wait_for_async};
use kollector_tests::tansu::TansuBroker;

fn spec(id: &str, bootstrap: &str, interval: &str) -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: id.into(),
        bootstrap: vec![bootstrap.into()],
        interval: Some(interval.into()),
        ..Default::default()
    }
}

/// Waits until `monitor` has published Kafka series (a successful collection) and returns the scrape.
fn wait_for_series(k: &KollectorProcess, monitor: &str, series: &str) -> Metrics {
    wait_for(&format!("{series} for monitor {monitor}"), Duration::from_secs(30), || {
        let m = k.metrics();
        if m.find(series, &[("monitor", monitor)]).is_empty() {
            Err(format!("no {series}; up={:?}", m.value("kollector_monitor_up", &[("monitor", monitor)])))
        } else {
            Ok(m)
        }
    })
}

#[test]
fn values_in_metrics_and_get_latest_equal_what_was_produced_and_committed() {
    let broker = TansuBroker::start("values-cluster");
    let bs = broker.bootstrap();
    create_topic(&bs, "orders", 3);
    create_topic(&bs, "audit", 1);
    let produced = [5usize, 7, 0];
    for (p, n) in produced.iter().enumerate() {
        produce_records(&bs, "orders", p as i32, *n);
    }
    produce_records(&bs, "audit", 0, 2);
    // p0 behind by 2, p1 caught up, p2 never committed.
    commit_offsets(&bs, "billing", &[("orders", 0, 3), ("orders", 1, 7)]);

    let k = KollectorProcess::standalone(&monitor_toml("shop", &bs, "1s"));
    // The group may appear a cycle after the topics; wait for its lag.
    let m = wait_for("billing lag series", Duration::from_secs(30), || {
        let m = k.metrics();
        if m.find("kafka_consumergroup_lag", &[("consumergroup", "billing")]).len() == 2 {
            Ok(m)
        } else {
            Err(format!("{:?}\n{}", m.find("kafka_consumergroup_lag", &[]), k.log()))
        }
    });
    let base = [("monitor", "shop"), ("cluster_id", "values-cluster")];
    let with = |more: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        base.iter().chain(more.iter()).copied().collect()
    };
    assert_eq!(m.value("kafka_brokers", &base), Some(1.0));
    assert_eq!(m.value("kafka_topic_partitions", &with(&[("topic", "orders")])), Some(3.0));
    assert_eq!(m.value("kafka_topic_partitions", &with(&[("topic", "audit")])), Some(1.0));
    for (p, n) in [("0", 5.0), ("1", 7.0), ("2", 0.0)] {
        let l = with(&[("topic", "orders"), ("partition", p)]);
        assert_eq!(m.value("kafka_topic_partition_current_offset", &l), Some(n), "latest of orders/{p}");
        assert_eq!(m.value("kafka_topic_partition_oldest_offset", &l), Some(0.0), "oldest of orders/{p}");
        assert_eq!(m.value("kafka_topic_partition_leader", &l), Some(111.0));
        assert_eq!(m.value("kafka_topic_partition_in_sync_replica", &l), Some(1.0));
        assert_eq!(m.value("kafka_topic_partition_under_replicated_partition", &l), Some(0.0));
    }
    assert_eq!(
        m.value("kafka_topic_partition_current_offset", &with(&[("topic", "audit"), ("partition", "0")])),
        Some(2.0)
    );
    let g = |p: &'static str| with(&[("consumergroup", "billing"), ("topic", "orders"), ("partition", p)]);
    assert_eq!(m.value("kafka_consumergroup_current_offset", &g("0")), Some(3.0));
    assert_eq!(m.value("kafka_consumergroup_current_offset", &g("1")), Some(7.0));
    assert_eq!(m.value("kafka_consumergroup_lag", &g("0")), Some(2.0));
    assert_eq!(m.value("kafka_consumergroup_lag", &g("1")), Some(0.0));
    assert!(m.find("kafka_consumergroup_lag", &g("2")).is_empty(), "no commit on p2 means no lag series");
    assert!(m.find("kafka_consumergroup_current_offset", &g("2")).is_empty());
    let gt = with(&[("consumergroup", "billing"), ("topic", "orders")]);
    assert_eq!(m.value("kafka_consumergroup_lag_sum", &gt), Some(2.0));
    assert_eq!(m.value("kafka_consumergroup_current_offset_sum", &gt), Some(10.0));
    assert_eq!(m.value("kafka_consumergroup_members", &with(&[("consumergroup", "billing")])), Some(0.0));
    assert_eq!(m.value("kollector_kafka_clients", &[]), Some(1.0));
    assert_eq!(m.value("kollector_monitor_up", &[("monitor", "shop")]), Some(1.0));

    // GetLatest returns the same numbers.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        let latest = client
            .get_latest(pb::GetLatestRequest { monitor_id: "shop".into(), ..Default::default() })
            .await
            .expect("GetLatest")
            .into_inner();
        let r = &latest.results[0];
        let s = r.snapshot.as_ref().expect("snapshot");
        assert_eq!(s.cluster_id, "values-cluster");
        let orders = s.topics.iter().find(|t| t.name == "orders").expect("orders topic");
        let latest_offsets: Vec<Option<i64>> = orders.partitions.iter().map(|p| p.latest).collect();
        assert_eq!(latest_offsets, vec![Some(5), Some(7), Some(0)]);
        let billing = s.groups.iter().find(|g| g.group_id == "billing").expect("billing group");
        let offs: Vec<(i32, i64, Option<i64>)> =
            billing.offsets.iter().map(|o| (o.partition, o.committed, o.lag)).collect();
        assert_eq!(offs, vec![(0, 3, Some(2)), (1, 7, Some(0))]);
        assert!(billing.offsets.iter().all(|o| !o.data_loss));
    });
}

/// The HertzBeat bug: two monitors in one process must never show each other's data.
#[test]
fn two_monitors_never_carry_each_others_cluster_or_topics() {
    let a = TansuBroker::start("iso-a");
    let b = TansuBroker::start("iso-b");
    create_topic(&a.bootstrap(), "alpha-only", 2);
    create_topic(&b.bootstrap(), "beta-only", 3);
    produce_records(&a.bootstrap(), "alpha-only", 0, 1);
    produce_records(&b.bootstrap(), "beta-only", 0, 2);
    let k = KollectorProcess::standalone(&format!(
        "{}\n{}",
        monitor_toml("mon-a", &a.bootstrap(), "1s"),
        monitor_toml("mon-b", &b.bootstrap(), "1s")
    ));
    let allowed = [("mon-a", "iso-a", "alpha-only"), ("mon-b", "iso-b", "beta-only")];
    let started = Instant::now();
    let mut checked_scrapes = 0;
    loop {
        let m = k.metrics();
        for (monitor, cluster, topic) in allowed {
            for s in m.with_label("monitor", monitor) {
                if let Some(c) = s.labels.get("cluster_id") {
                    assert_eq!(c, cluster, "{monitor} carried {c}: {s:?}");
                }
                if let Some(t) = s.labels.get("topic") {
                    assert_eq!(t, topic, "{monitor} carried topic {t}: {s:?}");
                }
            }
            // And the other cluster's id appears under no other monitor.
            for s in m.with_label("cluster_id", cluster) {
                assert_eq!(s.labels.get("monitor").map(String::as_str), Some(monitor), "{s:?}");
            }
        }
        let collections = |mon: &str| m.value("kollector_collections_total", &[("monitor", mon)]).unwrap_or(0.0);
        let both_up = !m.find("kafka_brokers", &[("monitor", "mon-a")]).is_empty()
            && !m.find("kafka_brokers", &[("monitor", "mon-b")]).is_empty();
        if both_up {
            checked_scrapes += 1;
        }
        if collections("mon-a") >= 21.0 && collections("mon-b") >= 21.0 && checked_scrapes >= 20 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "not 20 cycles within 90s: {checked_scrapes} scrapes");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn reconfigure_points_monitor_at_other_cluster_and_closes_old_connections() {
    let a = TansuBroker::start("reconf-a");
    let b = TansuBroker::start("reconf-b");
    let k = KollectorProcess::standalone(&format!(
        "{}\n{}",
        monitor_toml("mon-a", &a.bootstrap(), "2s"),
        monitor_toml("mon-b", &b.bootstrap(), "2s")
    ));
    wait_for_series(&k, "mon-a", "kafka_brokers");
    assert!(established_connections_to(k.pid(), a.port()) > 0, "monitor A should hold connections to broker A");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        let updated = client
            .update_monitor(pb::UpdateMonitorRequest { spec: Some(spec("mon-a", &b.bootstrap(), "2s")) })
            .await
            .expect("UpdateMonitor")
            .into_inner();
        let acked = Instant::now();
        // The generation is the store's revision of the write: it only grows.
        let generation = updated.spec.as_ref().unwrap().generation;
        assert!(generation >= 2, "generation {generation}");
        // The ack comes after the old client closed: no connection to A remains, right now.
        assert_eq!(established_connections_to(k.pid(), a.port()), 0, "connections to broker A after the ack");

        // Within one interval, A reports B's cluster id.
        let snapshot = wait_for_async("mon-a to report reconf-b", Duration::from_secs(10), || {
            let mut client = client.clone();
            async move {
                let r = client
                    .get_latest(pb::GetLatestRequest { monitor_id: "mon-a".into(), ..Default::default() })
                    .await
                    .map_err(|e| e.to_string())?;
                let r = r.into_inner().results.remove(0);
                match r.snapshot {
                    Some(s) if r.generation == generation && s.cluster_id == "reconf-b" && r.error.is_none() => Ok(s),
                    other => Err(format!("generation {} {:?}", r.generation, other.map(|s| s.cluster_id))),
                }
            }
        })
        .await;
        let took = acked.elapsed();
        assert!(took <= Duration::from_secs(2), "new cluster reported after {took:?}, beyond one interval");
        assert_eq!(snapshot.monitor_id, "mon-a");
    });
    let m = k.metrics();
    assert_eq!(m.value("kollector_kafka_clients", &[]), Some(2.0), "one client per monitor");
    assert!(m.find("kafka_brokers", &[("monitor", "mon-a"), ("cluster_id", "reconf-a")]).is_empty());
    assert_eq!(established_connections_to(k.pid(), a.port()), 0);
}

#[test]
fn delete_closes_connections_and_removes_series() {
    let a = TansuBroker::start("del-a");
    let b = TansuBroker::start("del-b");
    create_topic(&b.bootstrap(), "bt", 1);
    let mut k = KollectorProcess::standalone(&format!(
        "{}\n{}",
        monitor_toml("keep", &a.bootstrap(), "1s"),
        monitor_toml("gone", &b.bootstrap(), "1s")
    ));
    wait_for_series(&k, "gone", "kafka_topic_partitions");
    assert!(established_connections_to(k.pid(), b.port()) > 0);
    let (ok, out, err) = run_cli(&["monitor", "--server", &k.grpc_url(), "rm", "gone"]);
    assert!(ok, "rm failed: {out} {err}");
    assert_eq!(established_connections_to(k.pid(), b.port()), 0, "connections to the deleted monitor's broker");
    let m = k.metrics();
    assert!(
        m.with_label("monitor", "gone").is_empty(),
        "series of a deleted monitor: {:?}",
        m.with_label("monitor", "gone")
    );
    assert!(m.with_label("cluster_id", "del-b").is_empty());
    assert_eq!(m.value("kollector_kafka_clients", &[]), Some(1.0));
    assert_eq!(m.value("kollector_monitors", &[]), Some(1.0));
    // A clean shutdown closes the remaining client and exits 0.
    assert!(k.terminate(), "kollector did not exit cleanly on SIGTERM");
}

/// A broker replaced under the same address by another cluster trips the identity guard.
#[test]
fn identity_guard_refuses_a_different_cluster_at_the_same_address() {
    let mut first = TansuBroker::start("ident-original");
    let port = first.port();
    create_topic(&first.bootstrap(), "original-topic", 1);
    let k = KollectorProcess::standalone(&monitor_toml("guarded", &first.bootstrap(), "1s"));
    wait_for_series(&k, "guarded", "kafka_topic_partitions");
    first.kill();
    let second = TansuBroker::start_on_port("ident-impostor", port);
    create_topic(&second.bootstrap(), "impostor-topic", 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = k.metrics();
            assert!(m.with_label("cluster_id", "ident-impostor").is_empty(), "impostor data was published");
            let topics: BTreeSet<&str> = m
                .with_label("monitor", "guarded")
                .iter()
                .filter_map(|s| s.labels.get("topic").map(String::as_str))
                .collect();
            assert!(!topics.contains("impostor-topic"));
            let r = client
                .get_latest(pb::GetLatestRequest { monitor_id: "guarded".into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            if let Some(e) = &r.results[0].error {
                if e.kind == "identity_mismatch" {
                    assert!(
                        e.message.contains("ident-impostor") && e.message.contains("ident-original"),
                        "{}",
                        e.message
                    );
                    assert!(
                        m.find("kafka_brokers", &[("monitor", "guarded")]).is_empty(),
                        "no series while mismatched"
                    );
                    break;
                }
            }
            assert!(Instant::now() < deadline, "identity guard did not trip: {:?}", r.results[0].error);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let m = k.metrics();
        assert!(
            m.value("kollector_collection_errors_total", &[("monitor", "guarded"), ("kind", "identity_mismatch")])
                .unwrap_or(0.0)
                >= 1.0
        );
        assert_eq!(m.value("kollector_monitor_up", &[("monitor", "guarded")]), Some(0.0));
    });
}

#[test]
fn probe_collects_once_with_a_temporary_client_and_stores_nothing() {
    let broker = TansuBroker::start("probe-cluster");
    create_topic(&broker.bootstrap(), "probed", 2);
    let k = KollectorProcess::standalone("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        let r = client
            .probe(pb::ProbeRequest { spec: Some(spec("try-me", &broker.bootstrap(), "10s")) })
            .await
            .expect("Probe")
            .into_inner();
        let s = r.snapshot.expect("snapshot");
        assert_eq!(s.cluster_id, "probe-cluster");
        assert_eq!(s.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["probed"]);
        // Unreachable settings come back as an error result, not a gRPC failure.
        let free = kollector_tests::free_port();
        let mut bad = spec("try-me", &format!("127.0.0.1:{free}"), "2s");
        bad.timeout = Some("1s".into());
        let r = client.probe(pb::ProbeRequest { spec: Some(bad) }).await.expect("Probe").into_inner();
        assert!(r.snapshot.is_none());
        let e = r.error.expect("error");
        assert!(matches!(e.kind.as_str(), "connection" | "timeout"), "{e:?}");
        let list = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
        assert!(list.monitors.is_empty(), "a probe stores nothing");
    });
    let m = k.metrics();
    assert_eq!(m.value("kollector_kafka_clients", &[]), Some(0.0), "the probe's client is closed");
    assert_eq!(established_connections_to(k.pid(), broker.port()), 0);
}

#[test]
fn cli_manages_monitors_end_to_end() {
    let broker = TansuBroker::start("cli-cluster");
    create_topic(&broker.bootstrap(), "cli-topic", 1);
    produce_records(&broker.bootstrap(), "cli-topic", 0, 3);
    let k = KollectorProcess::standalone("");
    let server = k.grpc_url();
    let cli = |args: &[&str]| {
        let mut all = vec!["monitor", "--server", server.as_str()];
        all.extend_from_slice(args);
        run_cli(&all)
    };
    let (ok, out, err) = cli(&["add", "--id", "from-cli", "--bootstrap", &broker.bootstrap(), "--interval", "1s"]);
    assert!(ok, "add: {out} {err}");
    let (ok, out, _) = cli(&["list"]);
    assert!(ok && out.contains("from-cli"), "{out}");
    let shown = wait_for("show to print the snapshot", Duration::from_secs(20), || {
        let (ok, out, err) = cli(&["show", "from-cli"]);
        if ok && out.contains("cluster cli-cluster") && out.contains("cli-topic") {
            Ok(out)
        } else {
            Err(format!("{out}{err}"))
        }
    });
    assert!(shown.contains("running"), "{shown}");
    let (ok, out, err) = cli(&["update", "--id", "from-cli", "--bootstrap", &broker.bootstrap(), "--interval", "2s"]);
    assert!(ok && out.contains("from-cli"), "update: {out} {err}");
    let (ok, out, _) = cli(&["get", "from-cli", "--json"]);
    assert!(ok && out.contains("\"generation\": 2") && out.contains("\"interval\": \"2s\""), "{out}");
    let (ok, out, err) = cli(&["add", "--id", "from-cli", "--bootstrap", &broker.bootstrap()]);
    assert!(!ok && err.contains("already exists"), "duplicate add: {out} {err}");
    let (ok, _, err) = cli(&["add", "--id", "x", "--bootstrap", "nohost", "--interval", "1s"]);
    assert!(!ok && err.contains("invalid argument") && err.contains("bootstrap[0]"), "{err}");
    let (ok, _, err) = run_cli(&["monitor", "--server", "http://127.0.0.1:1", "list"]);
    assert!(!ok && err.contains("cannot reach kollector"), "{err}");
}

/// The README's first command runs `kollector demo`: it must start its
/// brokers, show real lag and stop cleanly by itself.
#[test]
fn the_demo_runs_shows_lag_and_stops_cleanly() {
    let (grpc, http) = (kollector_tests::free_port(), kollector_tests::free_port());
    let (ok, _out, err) = run_cli(&[
        "demo",
        "--duration",
        "12s",
        "--interval",
        "2s",
        "--grpc-listen",
        &format!("127.0.0.1:{grpc}"),
        "--http-listen",
        &format!("127.0.0.1:{http}"),
    ]);
    assert!(ok, "demo failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cluster demo-orders") && err.contains("billing lag"), "{err}");
    assert!(err.contains("cluster demo-payments") && err.contains("ledger lag"), "{err}");
    assert!(err.contains("demo: stopping"), "{err}");
}
