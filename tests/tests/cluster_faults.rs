//! Cluster-mode faults that used to break the guarantees, each against real
//! processes: a black-holed broker must not slow its collector's control
//! plane; a second process with a live collector id must be refused; a
//! 50,000-partition snapshot must travel the results stream, and one too
//! large for the transport must be reported without blocking the rest; a
//! delete followed at once by a re-create against another Kafka cluster
//! must never show the old cluster's data under the new monitor.

use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;
use kollector_tests::cluster::{latest, list_running, Cluster, TTL};
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::metrics::Metrics;
use kollector_tests::net::{established_connections_to, BlackHole, TcpProxy};
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;
use rdkafka::mocking::MockCluster;

fn spec(id: &str, bootstrap: &str, interval: &str) -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: id.into(),
        bootstrap: vec![bootstrap.into()],
        interval: Some(interval.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_black_holed_monitor_never_slows_list_running_or_other_results() {
    let hole = BlackHole::start();
    let cluster = Cluster::start(1);
    cluster.create_monitors(4).await;
    let mut client = cluster.manager.client().await;
    let mut stuck = spec("stuck", &hole.address(), "30s");
    stuck.timeout = Some("20s".into());
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(stuck.clone()) }).await.expect("create stuck");
    cluster.settled(5, 30).await;
    let collector = &cluster.collectors["c1"];
    let mut direct = CollectorServiceClient::connect(collector.grpc_url()).await.expect("connect collector");

    // Reconfigure the stuck monitor in the background: its restart has to
    // abandon the hanging collection while everything else goes on.
    let mut changer = client.clone();
    stuck.interval = Some("25s".into());
    let update = tokio::spawn(async move {
        changer.update_monitor(pb::UpdateMonitorRequest { spec: Some(stuck) }).await.map(|r| r.into_inner())
    });

    let window = Instant::now();
    let mut worst = Duration::ZERO;
    while window.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        direct
            .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
            .await
            .expect("ListRunning");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(worst < Duration::from_millis(100), "ListRunning took up to {worst:?} next to a black-holed monitor");
    let updated = update.await.expect("update task").expect("update of the stuck monitor answers");
    assert_eq!(updated.spec.unwrap().interval, "25s");

    // The other monitors (1 s interval) kept reporting on time.
    let results = latest(&cluster.manager).await;
    let now = kollector_tests::cluster::unix_ms();
    for m in ["m00", "m01", "m02", "m03"] {
        let r = results.iter().find(|r| r.monitor_id == m).unwrap_or_else(|| panic!("no result for {m}"));
        let age = now.saturating_sub(r.attempted_at_ms);
        assert!(r.snapshot.is_some() && age < 3000, "{m}: latest result {age} ms old");
    }
    eprintln!("worst ListRunning next to a black-holed monitor: {worst:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_with_a_live_collector_id_is_refused_and_a_crash_restart_is_not() {
    let etcd = EtcdServer::start();
    let mut first = KollectorProcess::collector(&etcd.endpoint(), "twin");
    wait_for_async("the first twin to register", Duration::from_secs(10), || async {
        list_running(&first).await.filter(|r| r.lease != 0).map(|_| ()).ok_or_else(|| "not registered".to_string())
    })
    .await;
    let lease = list_running(&first).await.expect("first answers").lease;

    let mut second = KollectorProcess::collector(&etcd.endpoint(), "twin");
    let status = second.wait_exit(TTL * 2 + Duration::from_secs(5)).expect("the duplicate must exit by itself");
    assert!(!status.success(), "the duplicate exited with {status}");
    assert!(second.log().contains("held by another live process"), "no clear error:\n{}", second.log());
    // The first keeps its registration and its lease.
    assert_eq!(list_running(&first).await.expect("first still answers").lease, lease);
    assert!(first.is_running());

    // A restart after a crash under the same id waits out the dead lease and runs.
    first.kill();
    let third = KollectorProcess::collector(&etcd.endpoint(), "twin");
    wait_for_async("the restarted twin to register", TTL * 2 + Duration::from_secs(5), || async {
        list_running(&third)
            .await
            .filter(|r| r.lease != 0 && r.lease != lease)
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
}

/// One broker of librdkafka's mock cluster with `partitions` partitions,
/// spread over topics of 1,000 (the mock looks partitions up slowly within
/// one huge topic; the snapshot's size is the same).
fn big_mock(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in 0..partitions / 1000 {
        mock.create_topic(&format!("wide-{t:02}"), 1000, 1).expect("create a wide topic");
    }
    mock
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifty_thousand_partition_snapshot_goes_through_the_results_stream() {
    let mock = big_mock(50_000);
    let cluster = Cluster::start(1);
    let mut client = cluster.manager.client().await;
    let mut wide = spec("wide", &mock.bootstrap_servers(), "30s");
    wide.timeout = Some("20s".into());
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(wide) }).await.expect("create wide");
    let partitions = wait_for_async("the 50,000-partition result at the manager", Duration::from_secs(90), || async {
        let r = latest(&cluster.manager).await;
        match r.iter().find(|r| r.monitor_id == "wide") {
            Some(r) if r.snapshot.is_some() => {
                Ok(r.snapshot.as_ref().map(|s| s.topics.iter().map(|t| t.partitions.len()).sum::<usize>()).unwrap_or(0))
            }
            Some(r) => Err(format!("result without snapshot: {:?}", r.error)),
            None => Err("no result yet".into()),
        }
    })
    .await;
    assert_eq!(partitions, 50_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_too_large_for_the_transport_is_reported_and_the_rest_still_flow() {
    // About 1.7 MB on the wire: over the smallest limit allowed, 1 MiB.
    let mock = big_mock(100_000);
    let limit = ["--grpc-max-message-size=1048576"];
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("small-kafka");
    let manager = KollectorProcess::manager_with(&etcd.endpoint(), &limit);
    let collector = KollectorProcess::collector_with(&etcd.endpoint(), "c1", &limit);
    let mut client = manager.client().await;
    let mut wide = spec("wide", &mock.bootstrap_servers(), "30s");
    wide.timeout = Some("20s".into());
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(wide) }).await.expect("create wide");
    client
        .create_monitor(pb::CreateMonitorRequest { spec: Some(spec("small", &broker.bootstrap(), "1s")) })
        .await
        .expect("create small");
    let since = kollector_tests::cluster::unix_ms();
    wait_for_async("a too-large report for wide and fresh results for small", Duration::from_secs(90), || async {
        let r = latest(&manager).await;
        let wide = r.iter().find(|r| r.monitor_id == "wide");
        let small = r.iter().find(|r| r.monitor_id == "small");
        let too_large = wide.and_then(|w| w.error.as_ref()).is_some_and(|e| e.kind == "result_too_large");
        let fresh = small.is_some_and(|s| s.snapshot.is_some() && s.attempted_at_ms > since);
        if too_large && fresh {
            Ok(())
        } else {
            Err(format!(
                "wide: error {:?}, snapshot of {:?} partitions; small fresh: {fresh}",
                wide.map(|w| &w.error),
                wide.and_then(|w| w.snapshot.as_ref()).map(|s| s
                    .topics
                    .iter()
                    .map(|t| t.partitions.len())
                    .sum::<usize>())
            ))
        }
    })
    .await;
    // Results keep flowing after it: the stream was not broken.
    let t = kollector_tests::cluster::unix_ms();
    wait_for_async("another fresh result for small", Duration::from_secs(10), || async {
        let r = latest(&manager).await;
        r.iter()
            .find(|r| r.monitor_id == "small" && r.attempted_at_ms > t)
            .map(|_| ())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let metrics = Metrics::parse(&collector.http_get("/metrics").unwrap()).unwrap();
    assert_eq!(
        metrics.value("kollector_collection_errors_total", &[("monitor", "wide"), ("kind", "result_too_large")]),
        Some(0.0),
        "too large for the transport is not a collection error on the collector"
    );
    assert!(
        collector.log().contains("exceeds the gRPC message limit"),
        "the collector says which result it could not send"
    );
}

/// Deletes `id` straight in etcd, as a racing manager would, so the
/// re-create that follows finds the old assignment still in place.
async fn delete_in_etcd(etcd: &EtcdServer, id: &str) {
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("etcd");
    c.delete(format!("/kollector/monitors/{id}"), None).await.expect("delete in etcd");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_and_immediate_recreate_against_another_cluster_never_shows_the_old_cluster() {
    let a = TansuBroker::start("recreate-a");
    let b = TansuBroker::start("recreate-b");
    let cluster = Cluster::start(2);
    let mut client = cluster.manager.client().await;
    let brokers = [(&a, "recreate-a"), (&b, "recreate-b")];
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec("flip", &a.bootstrap(), "1s")) }).await.unwrap();
    let mut current = 0usize;
    for round in 0..8 {
        // Wait for the current cluster's data, checking every sample on the way.
        let expected = brokers[current].1;
        wait_for_async(&format!("round {round}: data from {expected}"), Duration::from_secs(20), || async {
            let results = latest(&cluster.manager).await;
            let metrics = Metrics::parse(&cluster.manager.http_get("/metrics").unwrap()).unwrap();
            for sample in metrics.find("kafka_brokers", &[("monitor", "flip")]) {
                let seen = sample.labels.get("cluster_id").cloned().unwrap_or_default();
                assert_eq!(seen, expected, "round {round}: the manager's /metrics shows {seen} under the new monitor");
            }
            match results.iter().find(|r| r.monitor_id == "flip").and_then(|r| r.snapshot.as_ref()) {
                Some(s) => {
                    assert_eq!(
                        s.cluster_id, expected,
                        "round {round}: GetLatest shows {} under the new monitor",
                        s.cluster_id
                    );
                    Ok(())
                }
                None => Err("no data yet".to_string()),
            }
        })
        .await;
        // Flip: delete (through the API on odd rounds, straight in etcd on
        // even ones) and re-create at once against the other cluster.
        current = 1 - current;
        if round % 2 == 1 {
            client.delete_monitor(pb::DeleteMonitorRequest { id: "flip".into() }).await.expect("delete");
        } else {
            delete_in_etcd(&cluster.etcd, "flip").await;
        }
        client
            .create_monitor(pb::CreateMonitorRequest {
                spec: Some(spec("flip", &brokers[current].0.bootstrap(), "1s")),
            })
            .await
            .expect("re-create");
    }
}

/// Whether etcd still has `id`'s membership key.
async fn registered(etcd: &EtcdServer, id: &str) -> bool {
    let Ok(mut c) = etcd_client::Client::connect([etcd.endpoint()], None).await else { return true };
    c.get(format!("/kollector/collectors/{id}"), None).await.map(|r| !r.kvs().is_empty()).unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_cut_from_etcd_closes_its_kafka_connections_before_its_lease_expires() {
    let hole = BlackHole::start();
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", etcd.client_port));
    let manager = KollectorProcess::manager(&etcd.endpoint());
    // c1 reaches etcd only through the proxy; Kafka (the black hole) directly.
    let c1 = KollectorProcess::collector(&format!("http://{}", proxy.address()), "c1");
    let mut client = manager.client().await;
    let mut stuck = spec("stuck", &hole.address(), "30s");
    stuck.timeout = Some("20s".into());
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(stuck) }).await.expect("create");
    // Its collection hangs on the silent broker, connected.
    wait_for_async("c1 connected to the silent broker", Duration::from_secs(20), || async {
        let n = established_connections_to(c1.pid(), hole.port);
        if n > 0 {
            Ok(())
        } else {
            Err("no connection yet".to_string())
        }
    })
    .await;
    let c2 = KollectorProcess::collector(&etcd.endpoint(), "c2");

    proxy.cut();
    let cut = Instant::now();
    let mut closed_at = None;
    let mut expired_at = None;
    while cut.elapsed() < TTL * 3 && (closed_at.is_none() || expired_at.is_none()) {
        let on_c1 = established_connections_to(c1.pid(), hole.port);
        let on_c2 = established_connections_to(c2.pid(), hole.port);
        assert!(on_c1 == 0 || on_c2 == 0, "c1 and c2 both connected to the monitor's broker");
        if on_c1 == 0 && closed_at.is_none() {
            closed_at = Some(cut.elapsed());
        }
        if expired_at.is_none() && !registered(&etcd, "c1").await {
            expired_at = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_at = closed_at.expect("c1 never closed its Kafka connection");
    let expired_at = expired_at.expect("c1's lease never expired");
    assert!(closed_at < expired_at, "c1 still talked to Kafka at {closed_at:?}; its lease expired at {expired_at:?}");
    // The monitor then runs on c2, and c1 (still cut off) never reconnects.
    wait_for_async("the monitor on c2", Duration::from_secs(10), || async {
        let on_c1 = established_connections_to(c1.pid(), hole.port);
        assert_eq!(on_c1, 0, "the cut-off collector reconnected to Kafka");
        let running = list_running(&c2).await.map(|r| r.monitors.len()).unwrap_or(0);
        if running == 1 && established_connections_to(c2.pid(), hole.port) > 0 {
            Ok(())
        } else {
            Err(format!("c2 runs {running}"))
        }
    })
    .await;
    eprintln!("cut off from etcd: Kafka connections closed after {closed_at:?}, lease expired after {expired_at:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_that_does_not_decode_is_reported_and_the_rest_reconcile() {
    let cluster = Cluster::start(1);
    let mut etcd = etcd_client::Client::connect([cluster.etcd.endpoint()], None).await.expect("etcd");
    etcd.put("/kollector/monitors/broken", "{not json", None).await.expect("write junk");
    cluster.create_monitors(3).await;
    cluster.settled(3, 30).await;
    let mut client = cluster.manager.client().await;
    let a = client.get_assignments(pb::GetAssignmentsRequest::default()).await.expect("assignments").into_inner();
    assert!(a.invalid.contains_key("broken"), "the broken spec is reported: {:?}", a.invalid);
    wait_for_async("the invalid-spec metric", Duration::from_secs(10), || async {
        let m = Metrics::parse(&cluster.manager.http_get("/metrics").unwrap()).unwrap();
        match m.value("kollector_invalid_specs", &[]) {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (ok, out, err) = kollector_tests::kollector::run_cli(&["status", "--server", &cluster.manager.grpc_url()]);
    assert!(ok, "{err}");
    assert!(out.contains("broken") && out.contains("cannot be read"), "status shows the broken spec:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_and_delete_that_cannot_be_applied_say_so_instead_of_ok() {
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("apply-kafka");
    let manager = KollectorProcess::manager_with(&etcd.endpoint(), &["--apply-timeout=2s"]);
    // A lease far longer than the 2 s pauses below: the collector must be
    // frozen but alive (with 3 s it self-fences on waking, or its lease runs
    // out, and a delete with no live owner rightly answers OK).
    let collector = KollectorProcess::collector_ttl(&etcd.endpoint(), "c1", Duration::from_secs(15), &[]);
    let mut client = manager.client().await;
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m", &broker.bootstrap(), "1s")) }).await.unwrap();
    wait_for_async("m running", Duration::from_secs(20), || async {
        let n = list_running(&collector).await.map(|r| r.monitors.len()).unwrap_or(0);
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} running"))
        }
    })
    .await;
    // A frozen collector (its lease still alive) cannot apply anything.
    collector.pause();
    let err = client
        .update_monitor(pb::UpdateMonitorRequest { spec: Some(spec("m", &broker.bootstrap(), "2s")) })
        .await
        .expect_err("an update nobody applied must not answer OK");
    collector.resume();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("stored but not applied") && err.message().contains("c1"), "{}", err.message());
    // The change is stored, and applied once the collector is back.
    let got = client.get_monitor(pb::GetMonitorRequest { id: "m".into() }).await.unwrap().into_inner();
    assert_eq!(got.spec.unwrap().interval, "2s");

    collector.pause();
    let err = client
        .delete_monitor(pb::DeleteMonitorRequest { id: "m".into() })
        .await
        .expect_err("a delete nobody applied must not answer OK");
    collector.resume();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    wait_for_async("m stopped after the collector woke", Duration::from_secs(20), || async {
        let n = list_running(&collector).await.map(|r| r.monitors.len());
        if n == Some(0) {
            Ok(())
        } else {
            Err(format!("{n:?} running"))
        }
    })
    .await;
}

/// etcd restored from an older backup (its revision goes back): the
/// collectors' fencing state, built from revisions of a history that no
/// longer exists, would refuse every command until they were restarted.
/// They notice (etcd's revision below one a command carried), start over
/// from what etcd says, and monitors run again without any restart.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_restored_from_an_older_backup_runs_monitors_again_without_restarting_collectors() {
    let broker = TansuBroker::start("restore");
    let mut etcd = EtcdServer::start();
    let c1 = KollectorProcess::collector(&etcd.endpoint(), "c1");
    let c1_pid = c1.pid();
    let mut a = KollectorProcess::manager(&etcd.endpoint());
    let mut client = a.client().await;
    client
        .create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m0", &broker.bootstrap(), "1s")) })
        .await
        .unwrap();
    let runs = |want: &'static [&'static str]| {
        let c1 = &c1;
        move || async move {
            let running: Vec<String> = list_running(c1)
                .await
                .map(|r| r.monitors.into_iter().map(|m| m.monitor_id).collect())
                .unwrap_or_default();
            if running == want {
                Ok(())
            } else {
                Err(format!("c1 runs {running:?}"))
            }
        }
    };
    wait_for_async("m0 on c1", Duration::from_secs(30), runs(&["m0"])).await;
    let backup = etcd.backup();
    wait_for_async("m0 on c1 after the backup", Duration::from_secs(30), runs(&["m0"])).await;

    // History moves on well past the backup: many revisions, then a new
    // leader (term above them) that assigns m1.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("etcd");
    for i in 0..60 {
        raw.put(format!("/elsewhere/k{i}"), "v", None).await.expect("put");
    }
    a.kill();
    let b = KollectorProcess::manager(&etcd.endpoint());
    let mut client = b.client().await;
    client
        .create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m1", &broker.bootstrap(), "1s")) })
        .await
        .unwrap();
    wait_for_async("m0 and m1 on c1", Duration::from_secs(30), runs(&["m0", "m1"])).await;

    // Restored: m1 never existed, the leader's term and every epoch c1
    // has seen are above etcd's revision.
    etcd.restore(&backup);
    wait_for_async("only m0 on c1 after the restore", Duration::from_secs(40), runs(&["m0"])).await;
    let client = b.client().await;
    let bootstrap = broker.bootstrap();
    wait_for_async("m2 created after the restore", Duration::from_secs(20), || {
        let (mut client, bootstrap) = (client.clone(), bootstrap.clone());
        async move {
            client
                .create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m2", &bootstrap, "1s")) })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    wait_for_async("m0 and m2 on c1", Duration::from_secs(30), runs(&["m0", "m2"])).await;
    assert_eq!(c1.pid(), c1_pid, "c1 was restarted");
    assert!(c1.log().contains("revision went back"), "c1 did not say why it started its fencing book over");
}
