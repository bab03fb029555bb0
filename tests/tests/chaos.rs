//! Seeded chaos: 3 collectors, 2 managers, 200 monitors, and a random
//! sequence of faults (SIGKILL and SIGSTOP past the TTL of collectors and of
//! the leading manager, etcd restarts, CRUD bursts, delete and immediate
//! re-create against another Kafka cluster, and network cuts made by the
//! kernel's packet filter: a collector cut off from etcd but not from
//! Kafka, a collector cut off from the managers while it keeps its lease, a
//! manager cut off from etcd; each node reaches etcd on a client port of
//! its own, so a cut of that port cuts that node alone), while an invariant
//! checker samples the real system every 200 ms:
//!
//! - never two collectors with open TCP connections (read from /proc) to
//!   the same monitor's broker; every monitor has a broker of its own (a
//!   librdkafka mock cluster in this process), so a socket names its
//!   monitor. A SIGSTOPped process cannot close anything, so it is left out
//!   while stopped and for one second after it wakes (it must fence then);
//! - no result served by a manager comes from anyone but the owner the
//!   manager's own records name, under the record's epoch;
//! - no result is served as current (with a snapshot) when it is older
//!   than the stale bound (`STALE_BOUND`);
//! - no monitor is stranded: each has a collector with its Kafka
//!   connection open (a live, running one) at least every `STRAND_BOUND`;
//! - after the last fault, every monitor runs on exactly one collector with
//!   a fresh result within `CONVERGE` .
//!
//! The seed is printed; `KOLLECTOR_CHAOS_SEED=N` replays the same fault
//! sequence (timing still varies). `KOLLECTOR_CHAOS_FAULTS` sets how many.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_proto::v1::manager_service_client::ManagerServiceClient;
use kollector_tests::cluster::{owners_among, unix_ms};
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::net::{is_stopped, remote_ports_by_pid};
use kollector_tests::packet_filter::PortCut;
use kollector_tests::poll::wait_for_async;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

const MONITORS: usize = 200;
const TTL: Duration = Duration::from_secs(3);
const WAKE_GRACE: Duration = Duration::from_millis(1500);
const CONVERGE: Duration = Duration::from_secs(40);
const DEFAULT_SEED: u64 = 20_261_125;
const DEFAULT_FAULTS: usize = 32;
/// Interval 5 s, timeout 2 s, 3 intervals (the default rule): a result is
/// stale 17 s after its collection; 2 s more for the checker's own reads.
const STALE_BOUND_MS: u64 = 19_000;
/// Longest a monitor may go without a running owner (a live collector with
/// its current incarnation's Kafka connection open; a collector cut from
/// the managers still runs its monitors, and whether their results are
/// served is the stale checker's part): the slowest fault's
/// own recovery (a collector cut from the managers: unreachable after 2 s
/// over two passes, its lease revoked, the mark's TTL + 3 s, a pass; about
/// 12 s) with a second fault landing on top (a leader cut from etcd or
/// paused: an election TTL more). Measured at seed 20261125: 9.8 s to
/// 17.6 s over runs.
const STRAND_BOUND: Duration = Duration::from_secs(30);

/// What the checker needs to know, kept current by the fault loop.
#[derive(Default)]
struct Shared {
    /// Collector id → pid of its live process.
    pids: BTreeMap<String, u32>,
    /// When a collector was last woken (SIGCONT).
    woken: BTreeMap<String, Instant>,
    /// Broker port → the monitor it belongs to.
    ports: HashMap<u16, String>,
    /// gRPC URLs of managers that are up and not stopped.
    managers: Vec<String>,
    violations: Vec<String>,
    samples: u64,
    /// The most monitors seen with a Kafka connection in one sample: proof
    /// that the socket check sees sockets at all.
    most_connected: usize,
    /// Monitors that should run (their creation was confirmed), since when,
    /// and the broker port of their current incarnation (a re-created id
    /// watches another cluster; the old one's sockets do not count).
    expected: BTreeMap<String, (Instant, u16)>,
    /// When each monitor was last seen with a running owner.
    last_held: HashMap<String, Instant>,
    /// Monitors already reported stranded (once per stretch).
    stranded: std::collections::BTreeSet<String>,
    /// The longest stretch any monitor went without a running owner, which
    /// monitor, and when the stretch was last seen.
    longest_unheld: Duration,
    longest_at: Option<(String, Instant)>,
}

struct Collector {
    process: Option<KollectorProcess>,
    /// Its own client port of etcd (cut to cut it from etcd).
    etcd_port: u16,
}

struct Chaos {
    etcd: EtcdServer,
    managers: Vec<Option<KollectorProcess>>,
    collectors: BTreeMap<String, Collector>,
    mocks: Vec<Mock>,
    /// Monitor id → index of its mock.
    monitors: BTreeMap<String, usize>,
    shared: Arc<Mutex<Shared>>,
    next_id: usize,
}

fn manager_args() -> Vec<String> {
    vec!["--apply-timeout=5s".into(), "--unreachable-after=2s".into(), "--rejoin-after=2s".into()]
}

fn new_mock() -> Mock {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("events", 2, 1).expect("topic");
    mock
}

/// The spec of monitor `id` watching `mock`.
fn spec_for(id: &str, mock: &Mock) -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: id.into(),
        bootstrap: vec![mock.bootstrap_servers()],
        interval: Some("5s".into()),
        timeout: Some("2s".into()),
        ..Default::default()
    }
}

fn port_of(mock: &Mock) -> u16 {
    mock.bootstrap_servers().rsplit(':').next().and_then(|p| p.parse().ok()).expect("mock port")
}

impl Chaos {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap()
    }

    fn start_collector(&mut self, id: &str) {
        let c = self.collectors.get_mut(id).expect("collector");
        let etcd = format!("http://127.0.0.1:{}", c.etcd_port);
        let p = KollectorProcess::collector_ttl(&etcd, id, TTL, &[]);
        let pid = p.pid();
        c.process = Some(p);
        self.shared.lock().unwrap().pids.insert(id.to_string(), pid);
    }

    fn refresh_managers(&self) {
        let urls = self.managers.iter().flatten().filter(|m| !is_stopped(m.pid())).map(|m| m.grpc_url()).collect();
        self.shared().managers = urls;
    }

    async fn client(&self) -> ManagerServiceClient<tonic::transport::Channel> {
        for m in self.managers.iter().flatten() {
            if is_stopped(m.pid()) {
                continue;
            }
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_secs(1), ManagerServiceClient::connect(m.grpc_url())).await
            {
                return c.max_decoding_message_size(64 * 1024 * 1024);
            }
        }
        panic!("no manager answers");
    }

    /// The manager that leads now, if one answers.
    async fn leader(&self) -> Option<usize> {
        let mut c = self.client().await;
        let r = tokio::time::timeout(Duration::from_secs(2), c.list_collectors(pb::ListCollectorsRequest {})).await;
        let addr = r.ok()?.ok()?.into_inner().leader_address;
        self.managers.iter().position(|m| m.as_ref().is_some_and(|m| m.grpc_url().ends_with(&addr)))
    }

    async fn create(&mut self) -> String {
        let id = format!("m{:04}", self.next_id);
        self.next_id += 1;
        let mock = new_mock();
        let spec = spec_for(&id, &mock);
        let port = port_of(&mock);
        self.shared().ports.insert(port, id.clone());
        self.mocks.push(mock);
        self.monitors.insert(id.clone(), self.mocks.len() - 1);
        let mut c = self.client().await;
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }),
        )
        .await;
        match r {
            Ok(Ok(_)) => {
                self.shared().expected.insert(id.clone(), (Instant::now(), port));
            }
            // Not watched for stranding: it may or may not exist.
            other => eprintln!("chaos: create {id} did not answer OK ({other:?}); it may still exist"),
        }
        id
    }

    /// Deletes through the API (DEADLINE_EXCEEDED is fine: the change is
    /// stored) or, as a racing manager would, straight in etcd.
    async fn delete(&mut self, id: &str, in_etcd: bool) {
        if in_etcd {
            if let Ok(mut c) = etcd_client::Client::connect([self.etcd.endpoint()], None).await {
                let _ = c.delete(format!("/kollector/monitors/{id}"), None).await;
            }
        } else {
            let mut c = self.client().await;
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                c.delete_monitor(pb::DeleteMonitorRequest { id: id.into() }),
            )
            .await;
        }
        self.monitors.remove(id);
        self.shared().expected.remove(id);
    }

    /// Manager `i` on its own etcd client port.
    fn start_manager(&mut self, i: usize) {
        let args = manager_args();
        let etcd = self.etcd.endpoint_at(MANAGER_ETCD_PORTS + i);
        self.managers[i] =
            Some(KollectorProcess::manager_with(&etcd, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    }
}

/// Extra etcd client ports: one per collector (c1, c2, c3), then one per manager.
const MANAGER_ETCD_PORTS: usize = 3;

/// One sample of the invariants; violations are recorded, not panicked on,
/// so the run reports all of them with the seed.
async fn sample(shared: &Arc<Mutex<Shared>>) {
    let (pids, woken, ports, managers) = {
        let s = shared.lock().unwrap();
        (s.pids.clone(), s.woken.clone(), s.ports.clone(), s.managers.clone())
    };
    let now = Instant::now();
    let watched: Vec<(String, u32)> = pids
        .into_iter()
        .filter(|(id, pid)| !is_stopped(*pid) && woken.get(id).is_none_or(|t| now.duration_since(*t) > WAKE_GRACE))
        .collect();
    let by_pid = remote_ports_by_pid(&watched.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    let mut holders: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (id, pid) in &watched {
        for port in by_pid.get(pid).into_iter().flatten() {
            if let Some(m) = ports.get(port) {
                holders.entry(m).or_default().push(id);
            }
        }
    }
    let connected = holders.len();
    let held_ports: std::collections::HashSet<u16> = by_pid.values().flatten().copied().collect();
    let mut found = Vec::new();
    for (m, on) in holders {
        let mut on = on.clone();
        on.sort();
        on.dedup();
        if on.len() > 1 {
            found.push(format!("monitor {m}: Kafka connections from {on:?} at once"));
        }
    }
    // Results served by a manager: only the owner in its records, under the record's epoch.
    if let Some(url) = managers.first() {
        let check = async {
            let mut c =
                ManagerServiceClient::connect(url.clone()).await.ok()?.max_decoding_message_size(64 * 1024 * 1024);
            let before = c.get_assignments(pb::GetAssignmentsRequest::default()).await.ok()?.into_inner().assignments;
            let latest = c
                .get_latest(pb::GetLatestRequest { monitor_id: String::new(), ..Default::default() })
                .await
                .ok()?
                .into_inner()
                .results;
            let after = c.get_assignments(pb::GetAssignmentsRequest::default()).await.ok()?.into_inner().assignments;
            let owned = |list: &[pb::Assignment], r: &pb::MonitorResult| {
                list.iter()
                    .any(|a| a.monitor_id == r.monitor_id && a.collector_id == r.collector_id && a.epoch == r.epoch)
            };
            let now_ms = unix_ms();
            let mut v: Vec<String> = latest
                .iter()
                .filter(|r| !owned(&before, r) && !owned(&after, r))
                .map(|r| {
                    format!(
                        "monitor {}: a result from {} under epoch {} was served, not the owner's",
                        r.monitor_id, r.collector_id, r.epoch
                    )
                })
                .collect();
            // Served as current (a snapshot) but older than the stale bound.
            let current = |r: &&pb::MonitorResult| {
                r.snapshot.is_some()
                    && r.error.is_none()
                    && r.status
                        .as_ref()
                        .is_some_and(|s| matches!(s.state(), pb::MonitorState::Running | pb::MonitorState::Degraded))
            };
            v.extend(latest.iter().filter(current).filter_map(|r| {
                let age = now_ms.saturating_sub(r.attempted_at_ms);
                (age > STALE_BOUND_MS).then(|| {
                    format!(
                        "monitor {}: a {age} ms old result was served as current (bound {STALE_BOUND_MS} ms)",
                        r.monitor_id
                    )
                })
            }));
            Some(v)
        };
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(2), check).await {
            found.extend(v);
        }
    }
    let mut s = shared.lock().unwrap();
    let now = Instant::now();
    let expected: Vec<(String, Instant, u16)> = s.expected.iter().map(|(m, (t, p))| (m.clone(), *t, *p)).collect();
    for (m, since, port) in expected {
        if held_ports.contains(&port) {
            s.last_held.insert(m.clone(), now);
            s.stranded.remove(&m);
            continue;
        }
        let from = s.last_held.get(&m).copied().map_or(since, |t| t.max(since));
        let unheld = now.duration_since(from);
        if unheld > s.longest_unheld {
            s.longest_unheld = unheld;
            s.longest_at = Some((m.clone(), now));
        }
        if unheld > STRAND_BOUND && s.stranded.insert(m.clone()) {
            found.push(format!("monitor {m}: no running owner for {unheld:?} (bound {STRAND_BOUND:?})"));
        }
    }
    s.samples += 1;
    s.most_connected = s.most_connected.max(connected);
    s.violations.extend(found);
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillCollector,
    PauseCollector,
    CutCollector,
    CutCollectorFromManagers,
    CutManagerFromEtcd,
    KillLeader,
    PauseLeader,
    RestartEtcd,
    CrudBurst,
    Recreate,
}

const FAULT_KINDS: [Fault; 10] = [
    Fault::KillCollector,
    Fault::PauseCollector,
    Fault::CutCollector,
    Fault::CutCollectorFromManagers,
    Fault::CutManagerFromEtcd,
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::RestartEtcd,
    Fault::CrudBurst,
    Fault::Recreate,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_chaos_keeps_one_owner_per_monitor_and_converges() {
    let seed = std::env::var("KOLLECTOR_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let faults = std::env::var("KOLLECTOR_CHAOS_FAULTS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_FAULTS);
    eprintln!("chaos seed: {seed} (replay with KOLLECTOR_CHAOS_SEED={seed}), {faults} faults");
    let mut rng = StdRng::seed_from_u64(seed);

    let etcd = EtcdServer::start_with_ports(MANAGER_ETCD_PORTS + 2);
    let collectors = ["c1", "c2", "c3"]
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), Collector { process: None, etcd_port: etcd.extra_client_ports[i] }))
        .collect();
    let mut chaos = Chaos {
        etcd,
        managers: vec![None, None],
        collectors,
        mocks: Vec::new(),
        monitors: BTreeMap::new(),
        shared: Arc::default(),
        next_id: 0,
    };
    chaos.start_manager(0);
    chaos.start_manager(1);
    for id in ["c1", "c2", "c3"] {
        chaos.start_collector(id);
    }
    chaos.refresh_managers();
    for _ in 0..MONITORS {
        chaos.create().await;
    }
    let ids: Vec<String> = chaos.collectors.keys().cloned().collect();
    wait_for_async("200 monitors placed", Duration::from_secs(120), || async {
        let on = owners_among(chaos.collectors.iter().filter_map(|(id, c)| c.process.as_ref().map(|p| (id, p)))).await;
        if on.len() == MONITORS && on.values().all(|c| c.len() == 1) {
            Ok(())
        } else {
            Err(format!("{} placed", on.len()))
        }
    })
    .await;

    // The checker.
    let shared = chaos.shared.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let checker = tokio::spawn(async move {
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            sample(&shared).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let mut log = Vec::new();
    let chaos_started = Instant::now();
    for n in 1..=faults {
        let fault = FAULT_KINDS[rng.gen_range(0..FAULT_KINDS.len())];
        let started = Instant::now();
        let what = match fault {
            Fault::KillCollector => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                if let Some(p) = chaos.collectors.get_mut(&id).and_then(|c| c.process.as_mut()) {
                    p.kill();
                }
                chaos.shared().pids.remove(&id);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..4000))).await;
                chaos.start_collector(&id);
                format!("SIGKILL {id}, restarted")
            }
            Fault::PauseCollector => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                let pause = TTL + Duration::from_millis(rng.gen_range(500..2000));
                if let Some(p) = chaos.collectors[&id].process.as_ref() {
                    p.pause();
                    tokio::time::sleep(pause).await;
                    chaos.shared().woken.insert(id.clone(), Instant::now());
                    p.resume();
                }
                format!("SIGSTOP {id} for {pause:?}")
            }
            Fault::CutCollector => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                let cut = TTL + Duration::from_millis(rng.gen_range(500..2000));
                let filter = PortCut::start(chaos.collectors[&id].etcd_port);
                tokio::time::sleep(cut).await;
                filter.heal();
                format!("cut {id} from etcd with the packet filter (not from Kafka) for {cut:?}")
            }
            Fault::CutManagerFromEtcd => {
                let i = chaos.leader().await.unwrap_or_else(|| rng.gen_range(0..2));
                let cut = TTL + Duration::from_millis(rng.gen_range(500..3000));
                let filter = PortCut::start(chaos.etcd.extra_client_ports[MANAGER_ETCD_PORTS + i]);
                tokio::time::sleep(cut).await;
                filter.heal();
                format!("cut manager {i} from etcd with the packet filter for {cut:?}")
            }
            Fault::CutCollectorFromManagers => {
                let id = ids[rng.gen_range(0..ids.len())].clone();
                let cut = Duration::from_millis(rng.gen_range(3000..9000));
                match chaos.collectors[&id].process.as_ref().map(|p| p.grpc_port) {
                    Some(port) => {
                        let filter = PortCut::start(port);
                        tokio::time::sleep(cut).await;
                        filter.heal();
                        format!("cut {id}'s gRPC port with the packet filter (lease kept) for {cut:?}")
                    }
                    None => format!("{id} not running; nothing to cut"),
                }
            }
            Fault::KillLeader => match chaos.leader().await {
                Some(i) => {
                    if let Some(m) = chaos.managers[i].as_mut() {
                        m.kill();
                    }
                    chaos.managers[i] = None;
                    chaos.refresh_managers();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
                    chaos.start_manager(i);
                    chaos.refresh_managers();
                    format!("SIGKILL leader manager {i}, restarted")
                }
                None => "no leader to kill".into(),
            },
            Fault::PauseLeader => match chaos.leader().await {
                Some(i) => {
                    let pause = TTL + Duration::from_millis(rng.gen_range(500..2000));
                    if let Some(m) = chaos.managers[i].as_ref() {
                        m.pause();
                        chaos.refresh_managers();
                        tokio::time::sleep(pause).await;
                        m.resume();
                    }
                    chaos.refresh_managers();
                    format!("SIGSTOP leader manager {i} for {pause:?}")
                }
                None => "no leader to pause".into(),
            },
            Fault::RestartEtcd => {
                chaos.etcd.restart();
                "etcd restart".into()
            }
            Fault::CrudBurst => {
                let k = rng.gen_range(2..6);
                let mut created = Vec::new();
                for _ in 0..k {
                    created.push(chaos.create().await);
                }
                let existing: Vec<String> = chaos.monitors.keys().cloned().collect();
                let mut deleted = Vec::new();
                for _ in 0..k {
                    let id = existing[rng.gen_range(0..existing.len())].clone();
                    if chaos.monitors.contains_key(&id) && !created.contains(&id) {
                        chaos.delete(&id, false).await;
                        deleted.push(id);
                    }
                }
                format!("CRUD burst: created {created:?}, deleted {deleted:?}")
            }
            Fault::Recreate => {
                let existing: Vec<String> = chaos.monitors.keys().cloned().collect();
                let id = existing[rng.gen_range(0..existing.len())].clone();
                let in_etcd = rng.gen_bool(0.5);
                chaos.delete(&id, in_etcd).await;
                // Re-create the same id against a new cluster, at once.
                let mock = new_mock();
                let port = port_of(&mock);
                chaos.shared().ports.insert(port, id.clone());
                let spec = spec_for(&id, &mock);
                chaos.mocks.push(mock);
                chaos.monitors.insert(id.clone(), chaos.mocks.len() - 1);
                let mut c = chaos.client().await;
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    c.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }),
                )
                .await;
                if matches!(r, Ok(Ok(_))) {
                    chaos.shared().expected.insert(id.clone(), (Instant::now(), port));
                }
                format!(
                    "delete {id} ({}) and re-create against another cluster: {}",
                    if in_etcd { "in etcd" } else { "API" },
                    if matches!(r, Ok(Ok(_))) { "ok" } else { "not confirmed" }
                )
            }
        };
        eprintln!(
            "chaos fault {n:2}/{faults} at {:.1}s ({:?}, {:.1}s): {what}",
            started.duration_since(chaos_started).as_secs_f64(),
            fault,
            started.elapsed().as_secs_f64()
        );
        log.push(what);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
    }

    // Convergence after the last fault.
    let last_fault = Instant::now();
    let since = unix_ms();
    let expected: Vec<String> = chaos.monitors.keys().cloned().collect();
    let converged = wait_for_async("every monitor on one collector with a fresh result", CONVERGE, || async {
        let on = owners_among(chaos.collectors.iter().filter_map(|(id, c)| c.process.as_ref().map(|p| (id, p)))).await;
        let mut c = chaos.client().await;
        let results = c
            .get_latest(pb::GetLatestRequest { monitor_id: String::new(), ..Default::default() })
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .results;
        let fresh: std::collections::BTreeSet<&str> = results
            .iter()
            .filter(|r| r.attempted_at_ms > since && r.snapshot.is_some())
            .map(|r| r.monitor_id.as_str())
            .collect();
        let waiting: Vec<&String> = expected
            .iter()
            .filter(|m| on.get(*m).is_none_or(|c| c.len() != 1) || !fresh.contains(m.as_str()))
            .collect();
        let extra: Vec<&String> = on.keys().filter(|m| !chaos.monitors.contains_key(*m)).collect();
        if waiting.is_empty() && extra.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} not converged (e.g. {:?}), {} deleted still running",
                waiting.len(),
                &waiting[..waiting.len().min(5)],
                extra.len()
            ))
        }
    });
    converged.await;
    let took = last_fault.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = checker.await;
    let s = chaos.shared();
    eprintln!(
        "chaos: {} samples (up to {} monitors seen connected), converged {took:?} after the last fault; \
         longest a monitor went without a running owner: {:?} (bound {STRAND_BOUND:?})",
        s.samples, s.most_connected, s.longest_unheld
    );
    if let Some((m, at)) = &s.longest_at {
        eprintln!("chaos: the longest was {m}'s, seen at {:.1}s", at.duration_since(chaos_started).as_secs_f64());
    }
    assert!(s.samples > 100, "the checker barely ran ({} samples)", s.samples);
    assert!(s.most_connected >= MONITORS * 3 / 4, "the checker saw at most {} monitors connected", s.most_connected);
    let sockets: Vec<&String> = s.violations.iter().filter(|v| v.contains("Kafka connections")).collect();
    let results: Vec<&String> = s.violations.iter().filter(|v| !v.contains("Kafka connections")).collect();
    assert!(
        s.violations.is_empty(),
        "seed {seed}: {} socket violations, first: {:#?}\n{} result violations, first: {:#?}\nfaults: {log:#?}",
        sockets.len(),
        &sockets[..sockets.len().min(10)],
        results.len(),
        &results[..results.len().min(10)]
    );
}
