//! The manager's watched view of etcd against a real etcd: it shows every
//! write in its prefix and waits for one when asked; `sync` carries it past
//! writes outside the prefix (watch progress) without counting them as
//! changes; a view whose watch went silent (etcd frozen) refuses reads
//! instead of serving what may be old, and lists again once etcd is back.

use std::time::{Duration, Instant};

use kollector_coordination::keys::Keys;
use kollector_coordination::lease::{connect, connect_for_blocking_calls, EtcdAccess};
use kollector_manager::cluster_store::ClusterStore;
use kollector_manager::cluster_view::{ClusterView, ViewError};
use kollector_tests::etcd::EtcdServer;
use kollector_tests::poll::wait_for_async;

async fn view_of(etcd: &EtcdServer) -> (ClusterView, etcd_client::Client) {
    let client = connect(&EtcdAccess::plain(vec![etcd.endpoint()]), Duration::from_secs(3)).await.expect("connect");
    let store = ClusterStore::new(client.clone(), Keys::new("/viewtest"));
    let access = EtcdAccess::plain(vec![etcd.endpoint()]);
    let watch_client = connect_for_blocking_calls(&access, Duration::from_secs(3)).await.expect("connect");
    let (view, _task) = ClusterView::start(store, watch_client);
    wait_for_async("the view live", Duration::from_secs(10), || async { view.down().map_or(Ok(()), Err) }).await;
    (view, client)
}

/// A monitor spec as a manager stores it.
fn spec(id: &str) -> String {
    let input =
        kollector_core::MonitorInput { id: id.into(), bootstrap: vec!["127.0.0.1:9".into()], ..Default::default() };
    serde_json::to_string(&input.validate(0).expect("a valid spec")).expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_follows_its_prefix_and_waits_for_writes_and_for_now() {
    let etcd = EtcdServer::start();
    let (view, mut client) = view_of(&etcd).await;
    let changes_before = view.read(|v| v.changes).expect("live");

    // A write in the prefix: shown once the view reaches its revision.
    let put = client.put("/viewtest/monitors/m1", spec("m1"), None).await.expect("put");
    let revision = put.header().expect("header").revision();
    view.wait_for(revision, Duration::from_secs(5)).await.expect("the view reaches the write");
    let m1 = kollector_core::MonitorId::new("m1").expect("id");
    assert_eq!(view.read(|v| v.monitors.get(&m1).map(|m| m.spec.generation)).expect("live"), Some(revision as u64));
    let after_put = view.read(|v| v.changes).expect("live");
    assert!(after_put > changes_before, "a write in the prefix is a change");

    // Writes outside the prefix: `sync` still reaches etcd's revision (a
    // progress answer carries it there), and they are no change.
    let mut last = 0;
    for i in 0..5 {
        last = client.put(format!("/elsewhere/{i}"), "x", None).await.expect("put").header().expect("h").revision();
    }
    let synced = view.sync(Duration::from_secs(5)).await.expect("sync past writes outside the prefix");
    assert!(
        synced >= last && view.revision() >= last,
        "synced {synced}, view at {}, last write {last}",
        view.revision()
    );
    assert_eq!(view.read(|v| v.changes).expect("live"), after_put, "writes outside the prefix are no change");

    // A delete is shown too.
    let del = client.delete("/viewtest/monitors/m1", None).await.expect("delete");
    view.wait_for(del.header().expect("h").revision(), Duration::from_secs(5)).await.expect("reach the delete");
    assert!(view.read(|v| v.monitors.is_empty()).expect("live"));

    // Waiting for a revision etcd has not reached ends with Behind, in time.
    let started = Instant::now();
    let far = view.wait_for(synced + 1_000, Duration::from_millis(500)).await;
    assert!(matches!(far, Err(ViewError::Behind { .. })), "{far:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_watch_goes_silent_refuses_reads_and_lists_again_when_etcd_is_back() {
    let etcd = EtcdServer::start();
    let (view, mut client) = view_of(&etcd).await;
    assert_eq!(view.counts().0, 1, "one listing at start");

    // etcd frozen: nothing answers, not even progress; the view goes down.
    etcd.pause();
    let down = wait_for_async("the view down", Duration::from_secs(20), || async {
        view.down().ok_or_else(|| "still live".to_string())
    })
    .await;
    println!("down: {down}");
    assert!(matches!(view.read(|v| v.changes), Err(ViewError::NotLive(_))), "no read of what may be old");
    etcd.resume();

    // Back: listed again, live, and it shows what was written since.
    wait_for_async("the view live again", Duration::from_secs(30), || async { view.down().map_or(Ok(()), Err) }).await;
    assert!(view.counts().0 >= 2, "listed again");
    let put = client.put("/viewtest/collectors/c1", "not json", None).await.expect("put");
    view.wait_for(put.header().expect("h").revision(), Duration::from_secs(5)).await.expect("reach the write");
    let c1 = kollector_core::CollectorId::new("c1").expect("id");
    assert!(view.read(|v| v.unreadable_collectors.contains_key(&c1)).expect("live"));
}
