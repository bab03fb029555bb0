//! Collector membership against a real etcd: the lease-bound key, a clean
//! leave, self-fencing while etcd is frozen (closing the monitors' Kafka
//! clients before the lease can expire), re-registration, and etcd restarts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kollector_collector::CollectorNode;
use kollector_coordination::membership::{CollectorRecord, Membership, MembershipConfig, MembershipState};
use kollector_core::{CollectorId, MonitorId, MonitorInput};
use kollector_kafka::ClientOptions;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;

const TTL: Duration = Duration::from_secs(3);

fn config(etcd: &EtcdServer, id: &str) -> MembershipConfig {
    MembershipConfig {
        etcd: kollector_coordination::lease::EtcdAccess::plain(vec![etcd.endpoint()]),
        prefix: "/kollector".into(),
        id: CollectorId::new(id).unwrap(),
        record: CollectorRecord {
            grpc_address: "127.0.0.1:7171".into(),
            http_address: "127.0.0.1:9191".into(),
            labels: Default::default(),
            weight: 1.0,
            version: "test".into(),
        },
        ttl: TTL,
    }
}

async fn wait_state(
    rx: &tokio::sync::watch::Receiver<MembershipState>,
    what: &str,
    secs: u64,
    ok: impl Fn(&MembershipState) -> bool,
) -> MembershipState {
    wait_for_async(what, Duration::from_secs(secs), || {
        let s = rx.borrow().clone();
        let verdict = if ok(&s) { Ok(s) } else { Err(format!("{s:?}")) };
        async move { verdict }
    })
    .await
}

async fn key_value(etcd: &EtcdServer, key: &str) -> Option<(String, i64)> {
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.ok()?;
    let r = c.get(key, None).await.ok()?;
    r.kvs().first().map(|kv| (kv.value_str().unwrap_or_default().to_string(), kv.lease()))
}

#[tokio::test(flavor = "multi_thread")]
async fn registers_under_a_lease_and_leaving_removes_the_key() {
    let etcd = EtcdServer::start();
    let cfg = config(&etcd, "c1");
    let key = cfg.key();
    let m = Membership::start(cfg, Box::new(|| Box::pin(async {})), Box::new(|_, _| {}));
    let state = m.state();
    let s = wait_state(&state, "registered", 10, |s| matches!(s, MembershipState::Registered { .. })).await;
    let MembershipState::Registered { lease } = s else { unreachable!() };
    let (value, key_lease) = key_value(&etcd, &key).await.expect("key present");
    assert_eq!(key_lease, lease, "the key is attached to the lease");
    let record: CollectorRecord = serde_json::from_str(&value).expect("JSON record");
    assert_eq!(record.grpc_address, "127.0.0.1:7171");
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 3);
    // Keepalive holds the key well past one TTL.
    tokio::time::sleep(TTL * 2).await;
    assert!(key_value(&etcd, &key).await.is_some(), "key kept alive");
    m.leave().await;
    assert!(key_value(&etcd, &key).await.is_none(), "leaving revokes the lease at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_etcd_fences_before_the_lease_can_expire_then_registers_again() {
    let etcd = EtcdServer::start();
    let broker = TansuBroker::start("fence-cluster");
    let node = CollectorNode::start(ClientOptions::default()).unwrap();
    let spec = MonitorInput {
        id: "fenced-monitor".into(),
        bootstrap: vec![broker.bootstrap()],
        interval: Some("1s".into()),
        ..Default::default()
    }
    .validate(1)
    .unwrap();
    node.assign(spec).await.unwrap();
    let fence_node = node.clone();
    let cfg = config(&etcd, "c2");
    let margin = cfg.margin();
    let key = cfg.key();
    // When the fence started and when every client was closed.
    let fence_times: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::default();
    let times = fence_times.clone();
    let m = Membership::start(
        cfg,
        Box::new(move || {
            let (n, times) = (fence_node.clone(), times.clone());
            Box::pin(async move {
                times.lock().unwrap().0 = Some(Instant::now());
                n.fence().await;
                times.lock().unwrap().1 = Some(Instant::now());
            })
        }),
        Box::new(|_, _| {}),
    );
    let state = m.state();
    let first = wait_state(&state, "registered", 10, |s| matches!(s, MembershipState::Registered { .. })).await;
    wait_for_async("the monitor to collect", Duration::from_secs(20), || {
        let e = node.store().get(&MonitorId::new("fenced-monitor").unwrap());
        async move {
            if e.is_some_and(|e| e.current_snapshot().is_some()) {
                Ok(())
            } else {
                Err("no snapshot".into())
            }
        }
    })
    .await;
    assert_eq!(kollector_kafka::live_clients(), 1);

    // Freeze etcd (a long GC pause on its side, or a partition).
    etcd.pause();
    let paused = Instant::now();
    let (started, done) = wait_for_async("the fence to complete", Duration::from_secs(10), || {
        let t = *fence_times.lock().unwrap();
        async move {
            match t {
                (Some(a), Some(b)) => Ok((a, b)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    // Fencing fires at (last successful keepalive send) + TTL − margin, and
    // that send happened before the pause.
    let fenced_after = started - paused;
    assert!(fenced_after <= TTL - margin + Duration::from_millis(300), "fenced {fenced_after:?} after the pause");
    let stopped_after = done - paused;
    assert!(stopped_after < TTL, "monitors must be stopped before the lease can expire: {stopped_after:?}");
    assert_eq!(kollector_kafka::live_clients(), 0, "every Kafka client closed by the fence");
    assert!(node.list_running().await.is_empty());

    etcd.resume();
    let again = wait_state(&state, "registered again", 20, |s| matches!(s, MembershipState::Registered { .. })).await;
    assert_ne!(again, first, "a fresh lease after fencing");
    let MembershipState::Registered { lease } = again else { unreachable!() };
    let (_, key_lease) = key_value(&etcd, &key).await.expect("key back");
    assert_eq!(key_lease, lease);
    // It starts empty and accepts work again.
    assert!(node.list_running().await.is_empty());
    let spec = MonitorInput { id: "after-fence".into(), bootstrap: vec![broker.bootstrap()], ..Default::default() }
        .validate(1)
        .unwrap();
    node.assign(spec).await.expect("assign after fence");
    m.leave().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restart_is_survived() {
    let mut etcd = EtcdServer::start();
    let cfg = config(&etcd, "c3");
    let key = cfg.key();
    let m = Membership::start(cfg, Box::new(|| Box::pin(async {})), Box::new(|_, _| {}));
    let state = m.state();
    wait_state(&state, "registered", 10, |s| matches!(s, MembershipState::Registered { .. })).await;
    etcd.kill();
    wait_state(&state, "fenced while etcd is down", 10, |s| !matches!(s, MembershipState::Registered { .. })).await;
    etcd.restart();
    wait_state(&state, "registered after the restart", 30, |s| matches!(s, MembershipState::Registered { .. })).await;
    wait_for_async("key present after restart", Duration::from_secs(10), || {
        let etcd = &etcd;
        let key = key.clone();
        async move { key_value(etcd, &key).await.map(|_| ()).ok_or_else(|| "no key".to_string()) }
    })
    .await;
    m.leave().await;
}
