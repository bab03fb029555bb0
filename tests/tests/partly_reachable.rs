//! The control plane when nodes are partly reachable, with real cuts made
//! by the kernel's packet filter (`kollector_tests::packet_filter`): a node
//! stays up, keeps its etcd lease and its Kafka connections, and only the
//! cut peer loses it.
//!
//! - No stale view: with the only collector cut off from the manager, the
//!   manager stops presenting the monitor's last result as current within
//!   the stale bound (GetLatest, `kollector status`, `/metrics`), and serves
//!   it as current again once the cut heals; the collector's own
//!   `/metrics`, still fed, stays current. (The same rule on a collector's
//!   own store is tested in `kollector-collector`'s `store.rs`.)
//! - Liveness beyond the lease: a collector the manager cannot reach (its
//!   gRPC port cut, its lease alive) has its lease revoked; its monitors,
//!   and one created during the cut, run on the other collector within a
//!   bound, never two owners at any sample (sockets from /proc, one broker
//!   per monitor); it gets nothing back while cut, and after the cut heals
//!   it takes work again only after its probation, without being revoked
//!   again.

use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::cluster::Cluster;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::{run_cli, KollectorProcess};
use kollector_tests::metrics::Metrics;
use kollector_tests::packet_filter::PortCut;
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;

/// Interval 1 s, timeout 500 ms: the next result is due 1.5 s after the
/// last one, and with the default rule (3 intervals) stale 2 s after that.
const STALE_BOUND: Duration = Duration::from_millis(3500);

fn spec(id: &str, bootstrap: &str) -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: id.into(),
        bootstrap: vec![bootstrap.into()],
        interval: Some("1s".into()),
        timeout: Some("500ms".into()),
        ..Default::default()
    }
}

async fn latest_of(manager: &KollectorProcess, id: &str) -> Result<pb::MonitorResult, String> {
    let mut client = manager.client().await;
    let r = client
        .get_latest(pb::GetLatestRequest { monitor_id: id.into(), ..Default::default() })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    r.results.into_iter().next().ok_or_else(|| "no result".to_string())
}

/// The monitor's series on a node's `/metrics`: `up`, whether the `stale`
/// state is set, and how many Kafka series it has.
fn seen_in_metrics(node: &KollectorProcess, id: &str) -> (Option<f64>, Option<f64>, usize) {
    let m = Metrics::parse(&node.http_get("/metrics").unwrap_or_default()).unwrap_or_default();
    let up = m.value("kollector_monitor_up", &[("monitor", id)]);
    let stale = m.value("kollector_monitor_status", &[("monitor", id), ("state", "stale")]);
    let kafka = m.with_label("monitor", id).into_iter().filter(|s| s.name.starts_with("kafka_")).count();
    (up, stale, kafka)
}

fn is_current(r: &pb::MonitorResult) -> bool {
    r.status.as_ref().is_some_and(|s| s.state() == pb::MonitorState::Running) && r.snapshot.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manager_stops_serving_a_cut_off_collectors_result_as_current_within_the_stale_bound() {
    let cluster = Cluster::start(1);
    let mut client = cluster.manager.client().await;
    client
        .create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m0", &cluster.broker.bootstrap())) })
        .await
        .unwrap();
    wait_for_async("m0 current on the manager", Duration::from_secs(30), || async {
        let r = latest_of(&cluster.manager, "m0").await?;
        if is_current(&r) {
            Ok(())
        } else {
            Err(format!("{:?}", r.status))
        }
    })
    .await;
    // Steady state: never judged stale while results flow (no false alarm).
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(4) {
        let r = latest_of(&cluster.manager, "m0").await.expect("latest");
        assert!(is_current(&r), "judged not current while results flow: {:?}", r.status);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (up, stale, kafka) = seen_in_metrics(&cluster.manager, "m0");
    assert_eq!((up, stale), (Some(1.0), Some(0.0)));
    assert!(kafka > 0, "no Kafka series for m0 before the cut");
    // `status` reads a summary: states without snapshots, the cluster id
    // from the pinned one.
    let summary = client
        .get_latest(pb::GetLatestRequest { summary: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(summary.len() == 1 && summary[0].snapshot.is_none(), "a summary carries no snapshot");
    let (ok, out, err) = run_cli(&["status", "--server", &cluster.manager.grpc_url()]);
    assert!(ok, "status failed: {err}");
    let line = out.lines().find(|l| l.starts_with("m0 ")).unwrap_or_else(|| panic!("no m0 in status:\n{out}"));
    assert!(line.contains("running") && line.contains("cluster-kafka"), "status line: {line}");

    // Cut the manager off from c1's gRPC port: c1 keeps its lease (etcd)
    // and its broker, so nothing else notices.
    let c1 = &cluster.collectors["c1"];
    let cut = PortCut::start(c1.grpc_port);
    let cut_at = Instant::now();
    let stale_after = wait_for_async("m0 stale on the manager", STALE_BOUND * 3, || async {
        let r = latest_of(&cluster.manager, "m0").await?;
        match r.status.as_ref().map(|s| s.state()) {
            Some(pb::MonitorState::Stale) => Ok((cut_at.elapsed(), r)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (took, r) = stale_after;
    // The last result may have arrived just before the cut: the bound runs
    // from it, plus one poll and the stream's own latency.
    assert!(took <= STALE_BOUND + Duration::from_millis(1500), "stale only {took:?} after the cut");
    assert!(r.snapshot.is_none(), "a stale result still carries its snapshot");
    let reason = r.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_default();
    assert!(reason.contains("not served"), "reason: {reason}");
    // /metrics: up 0, state stale, no Kafka series for it.
    let (up, stale, kafka) = seen_in_metrics(&cluster.manager, "m0");
    assert_eq!((up, stale, kafka), (Some(0.0), Some(1.0), 0), "manager /metrics while m0 is stale");
    // `kollector status` says so.
    let (ok, out, err) = run_cli(&["status", "--server", &cluster.manager.grpc_url()]);
    assert!(ok, "status failed: {err}");
    let line = out.lines().find(|l| l.starts_with("m0 ")).unwrap_or_else(|| panic!("no m0 in status:\n{out}"));
    assert!(line.contains("stale"), "status line: {line}");
    // c1 itself still collects: its own /metrics is current.
    let (up, stale, kafka) = seen_in_metrics(c1, "m0");
    assert_eq!((up, stale), (Some(1.0), Some(0.0)), "c1's own view");
    assert!(kafka > 0);
    eprintln!("stale on the manager {took:?} after the cut (bound {STALE_BOUND:?} from the last result)");

    // Healed: current again, with data.
    cut.heal();
    wait_for_async("m0 current again after the cut healed", Duration::from_secs(30), || async {
        let r = latest_of(&cluster.manager, "m0").await?;
        if is_current(&r) && seen_in_metrics(&cluster.manager, "m0").2 > 0 {
            Ok(())
        } else {
            Err(format!("{:?}", r.status))
        }
    })
    .await;
}

/// Collectors (by name) with an established connection to `port`.
fn connected(collectors: &[(&str, u32)], port: u16) -> Vec<String> {
    collectors
        .iter()
        .filter(|(_, pid)| kollector_tests::net::established_connections_to(*pid, port) > 0)
        .map(|(c, _)| c.to_string())
        .collect()
}

/// Who runs each monitor now (the collectors connected to its broker),
/// failing the test if any has two owners.
fn owners_now(pids: &[(&str, u32)], ports: &[u16], phase: &str, since: Instant) -> Vec<Vec<String>> {
    let on: Vec<Vec<String>> = ports.iter().map(|p| connected(pids, *p)).collect();
    for (i, c) in on.iter().enumerate() {
        assert!(c.len() <= 1, "m{i} has two owners {:?} {phase}: {c:?}", since.elapsed());
    }
    on
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_the_manager_cannot_reach_loses_its_monitors_safely_and_rejoins_without_flapping() {
    let etcd = EtcdServer::start();
    // One broker per monitor: who talks to a broker is who runs its monitor.
    let brokers: Vec<TansuBroker> = (0..4).map(|i| TansuBroker::start(&format!("reach-{i}"))).collect();
    let manager = KollectorProcess::manager_with(&etcd.endpoint(), &["--unreachable-after=2s", "--rejoin-after=3s"]);
    let c1 = KollectorProcess::collector(&etcd.endpoint(), "c1");
    let c2 = KollectorProcess::collector(&etcd.endpoint(), "c2");
    let pids = [("c1", c1.pid()), ("c2", c2.pid())];
    let mut client = manager.client().await;
    for (i, b) in brokers.iter().take(3).enumerate() {
        let s = spec(&format!("m{i}"), &b.bootstrap());
        client.create_monitor(pb::CreateMonitorRequest { spec: Some(s) }).await.expect("create");
    }
    let ports: Vec<u16> = brokers.iter().map(|b| b.port()).collect();
    // Settled with c1 running at least one of them.
    wait_for_async("m0..m2 running, some on c1", Duration::from_secs(30), || async {
        let on: Vec<Vec<String>> = ports[..3].iter().map(|p| connected(&pids, *p)).collect();
        let one_each = on.iter().all(|c| c.len() == 1);
        if one_each && on.iter().any(|c| c[0] == "c1") {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    })
    .await;

    let cut = PortCut::start(c1.grpc_port);
    let cut_at = Instant::now();
    // Created during the cut: must never be stranded on c1.
    client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec("m3", &brokers[3].bootstrap())) }).await.unwrap();
    let mut samples = 0;
    let moved_after = loop {
        let on = owners_now(&pids, &ports, "after the cut", cut_at);
        samples += 1;
        if on.iter().all(|c| c == &["c2".to_string()]) {
            break cut_at.elapsed();
        }
        assert!(cut_at.elapsed() < Duration::from_secs(30), "not all on c2 30s after the cut: {on:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Silence counts from the first unanswered ListRunning and is acted on
    // after --unreachable-after (2 s) and two missed passes (~4.5 s); the
    // mark outlives the revoked lease's TTL (3 s) by the revocation's
    // budget (2 s, rounded up) and a spare second: 7 s; then a pass, an
    // Assign and a first connection: about 13 s. 3 s more for a slow machine.
    assert!(moved_after <= Duration::from_secs(16), "moved only {moved_after:?} after the cut");
    let revocations = Metrics::parse(&manager.http_get("/metrics").unwrap())
        .unwrap()
        .value("kollector_collector_revocations_total", &[]);
    assert_eq!(revocations, Some(1.0), "one revocation of c1");
    // While cut, c1 gets nothing back (it registered again, silent: probation).
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(3) {
        for (i, p) in ports.iter().enumerate() {
            assert_eq!(connected(&pids, *p), vec!["c2".to_string()], "m{i} while c1 is still cut");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out, err) = run_cli(&["status", "--server", &manager.grpc_url()]);
    assert!(ok, "{err}");
    let c1_line = out.lines().find(|l| l.starts_with("c1 ")).unwrap_or_else(|| panic!("c1 not listed:\n{out}"));
    assert!(c1_line.contains("probation") || c1_line.contains("revoked"), "c1 while cut: {c1_line}");
    eprintln!(
        "all monitors on c2 {moved_after:?} after the cut ({samples} samples, never two owners); status: {c1_line}"
    );

    // Healed: c1 answers again, waits out its probation, then takes work
    // back by ordinary moves, never two owners, never revoked again.
    cut.heal();
    let healed = Instant::now();
    let rejoined = loop {
        let on = owners_now(&pids, &ports, "after the heal", healed);
        if on.iter().any(|c| c == &["c1".to_string()]) {
            break healed.elapsed();
        }
        assert!(healed.elapsed() < Duration::from_secs(30), "c1 got no work back: {on:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rejoined >= Duration::from_secs(3), "c1 got work {rejoined:?} after the heal, within its probation");
    let revocations = Metrics::parse(&manager.http_get("/metrics").unwrap())
        .unwrap()
        .value("kollector_collector_revocations_total", &[]);
    assert_eq!(revocations, Some(1.0), "c1 was revoked again after it came back");
    eprintln!("c1 took work back {rejoined:?} after the heal");
}

/// Creates `ids` (interval 30 s) that only collectors labelled `label` may run.
async fn create_on(manager: &KollectorProcess, bootstrap: &str, ids: &[String], label: &str) {
    let client = manager.client().await;
    for batch in ids.chunks(16) {
        let calls = batch.iter().map(|id| {
            let mut client = client.clone();
            let spec = pb::MonitorSpecInput {
                id: id.clone(),
                bootstrap: vec![bootstrap.into()],
                interval: Some("30s".into()),
                collector_labels: [(label.to_string(), "yes".to_string())].into(),
                ..Default::default()
            };
            async move { client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.expect("create") }
        });
        futures::future::join_all(calls).await;
    }
}

/// A slow collector (every answer of its gRPC held 1.2 s by a proxy, its
/// lease alive, ListRunning answered within its bound) that just joined
/// and is given 160 monitors at once, in the same passes as the failover of
/// a dead collector's monitors onto a third one: each pass starts commands
/// to the slow one for at most a second (the rest next pass), so the
/// failover does not wait for its whole batch (5 rounds of 32 × 1.2 s, per
/// step). The dead collector's monitors run on the third within TTL + 4 s;
/// the slow one's all run in the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_collector_does_not_hold_a_failover_onto_another() {
    const TTL: Duration = Duration::from_secs(3);
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("slow-collector-kafka");
    let manager = KollectorProcess::manager(&etcd.endpoint());
    let fast = |id: &str| KollectorProcess::collector_ttl(&etcd.endpoint(), id, TTL, &["--label=fast=yes"]);
    let collectors = [("c2".to_string(), fast("c2")), ("c3".to_string(), fast("c3"))].into_iter().collect();
    let mut cluster = Cluster { etcd, broker, manager, collectors, ttl: TTL };
    let bs = cluster.broker.bootstrap();
    let quick: Vec<String> = (0..12).map(|i| format!("q{i:02}")).collect();
    create_on(&cluster.manager, &bs, &quick, "fast").await;
    let owners = cluster.stable(12, 60).await;
    let on_c2: Vec<String> = owners.iter().filter(|(_, c)| *c == "c2").map(|(m, _)| m.clone()).collect();
    assert!(!on_c2.is_empty(), "{owners:?}");

    // 160 monitors only a "slow" collector may run: none yet.
    let heavy: Vec<String> = (0..160).map(|i| format!("s{i:03}")).collect();
    create_on(&cluster.manager, &bs, &heavy, "slow").await;
    let proxy = kollector_tests::net::DelayProxy::bind(Duration::from_millis(1200));
    let advertise = format!("--advertise-grpc={}", proxy.address());
    let slow = KollectorProcess::collector_ttl(&cluster.etcd.endpoint(), "c1", TTL, &["--label=slow=yes", &advertise]);
    proxy.set_target(&format!("127.0.0.1:{}", slow.grpc_port));
    // c1 registered (healthz answered): the leader's next passes give it 160
    // Assigns. c2 dies now; its monitors can go only to c3.
    let killed_at = Instant::now();
    cluster.collectors.get_mut("c2").expect("c2").kill();
    cluster.collectors.remove("c2");
    cluster.collectors.insert("c1".into(), slow);
    let moved_in = wait_for_async("c2's monitors running on c3", TTL + Duration::from_secs(30), || async {
        let owners = cluster.owners().await;
        let left = on_c2.iter().filter(|m| owners.get(*m).is_none_or(|c| c != &vec!["c3".to_string()])).count();
        if left == 0 {
            Ok(killed_at.elapsed())
        } else {
            Err(format!("{left} of {} not on c3 yet", on_c2.len()))
        }
    })
    .await;
    let busy = cluster.owners().await.keys().filter(|m| m.starts_with('s')).count();
    let deferred = cluster.manager.metrics().value("kollector_deferred_commands_total", &[]).unwrap_or(0.0);
    eprintln!(
        "slow collector: c2's {} monitors on c3 {moved_in:?} after the kill (TTL {TTL:?}); the slow one ran {busy} of 160 by then, \
         {deferred} commands deferred to later passes",
        on_c2.len()
    );
    // The failover happened while the slow one was taking its batch, and
    // the step budget did cut it (else this proves nothing).
    assert!(busy > 0, "the slow collector had started on its batch");
    assert!(deferred > 0.0, "commands to the slow collector were deferred: {deferred}");
    // Unbounded (every command of the batch started in the same step) it
    // took 9.6 s, after the whole batch; bounded, 4.7-4.8 s.
    assert!(
        moved_in < TTL + Duration::from_secs(4),
        "failover onto c3 took {moved_in:?} with a slow collector beside it"
    );
    assert!(busy < 160, "the slow collector was still taking its batch during the failover ({busy} of 160)");
    cluster.settled(172, 120).await;
}
