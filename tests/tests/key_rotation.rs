//! Key rotation exactly as SECURITY.md describes it: `kollector secret-key
//! rotate`, copy the file and restart the managers; the leader re-seals
//! every stored secret with the new first key by itself (`kollector status`
//! and `kollector_secrets_on_old_keys` count those left); then the old
//! line is removed, the managers restarted, and every monitor still reads.
//! A second rotation after the removal picks a fresh key id. With two
//! managers restarted one at a time, nothing is re-sealed until both seal
//! with the new key (the one not yet restarted must still open everything).

use std::time::Duration;

use kollector_proto::v1 as pb;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::{run_cli, KollectorProcess};
use kollector_tests::metrics::Metrics;
use kollector_tests::poll::wait_for_async;

const MONITORS: usize = 5;

/// How many stored monitors have a secret sealed with `key_id`, and how
/// many stored values hold a sealed secret at all.
async fn sealed_with(etcd: &EtcdServer, key_id: &str) -> (usize, usize) {
    let mut c = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("etcd");
    let r = c.get("/kollector/monitors/", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("get");
    let values: Vec<String> = r.kvs().iter().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()).collect();
    let with = values.iter().filter(|v| v.contains(&format!("kollector-sealed:v1:{key_id}:"))).count();
    let sealed = values.iter().filter(|v| v.contains("kollector-sealed:v1:")).count();
    (with, sealed)
}

fn key_ids(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("key file")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

async fn all_on(etcd: &EtcdServer, manager: &KollectorProcess, key_id: &str) {
    wait_for_async(&format!("every secret re-sealed with {key_id}"), Duration::from_secs(30), || async {
        let (with, sealed) = sealed_with(etcd, key_id).await;
        let left = Metrics::parse(&manager.http_get("/metrics").unwrap_or_default())
            .unwrap_or_default()
            .value("kollector_secrets_on_old_keys", &[]);
        if with == MONITORS && sealed == MONITORS && left == Some(0.0) {
            Ok(())
        } else {
            Err(format!("{with} of {sealed} sealed with {key_id}; metric says {left:?} left"))
        }
    })
    .await;
}

/// Every monitor reads back (its secret opens) and none is invalid.
async fn all_readable(manager: &KollectorProcess) {
    let mut client = manager.client().await;
    for i in 0..MONITORS {
        let m = client.get_monitor(pb::GetMonitorRequest { id: format!("m{i}") }).await.expect("get monitor");
        let spec = m.into_inner().spec.expect("spec");
        assert!(spec.sasl.is_some_and(|s| s.password_set), "m{i} lost its password");
    }
    let a = client.get_assignments(pb::GetAssignmentsRequest::default()).await.expect("assignments").into_inner();
    assert!(a.invalid.is_empty(), "unreadable monitors: {:?}", a.invalid);
    assert_eq!(a.secrets_on_old_keys, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_restart_reseal_remove_the_old_line_restart_and_rotate_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("secret.key").display().to_string();
    let (ok, _, err) = run_cli(&["secret-key", "new", "--file", &key_file]);
    assert!(ok, "{err}");
    let etcd = EtcdServer::start();
    let flag = format!("--secret-key-file={key_file}");
    let mut manager = KollectorProcess::manager_with(&etcd.endpoint(), &[&flag]);
    let mut standby = KollectorProcess::manager_with(&etcd.endpoint(), &[&flag]);
    let mut client = manager.client().await;
    for i in 0..MONITORS {
        let spec = pb::MonitorSpecInput {
            id: format!("m{i}"),
            bootstrap: vec!["127.0.0.1:9".into()],
            interval: Some("1h".into()),
            sasl: Some(pb::SaslInput {
                mechanism: "PLAIN".into(),
                username: "u".into(),
                password: format!("pw-{i}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.expect("create");
    }
    assert_eq!(key_ids(&key_file), vec!["k1"]);
    assert_eq!(sealed_with(&etcd, "k1").await, (MONITORS, MONITORS));

    // Rotate, restart: re-sealed with k2, no operator step.
    let (ok, out, err) = run_cli(&["secret-key", "rotate", "--file", &key_file]);
    assert!(ok, "{err}");
    assert!(out.contains("re-seals"), "rotate says what happens next: {out}");
    assert_eq!(key_ids(&key_file), vec!["k2", "k1"]);
    // A rolling restart: one manager has the new key file, the other not
    // yet. Past the killed process's lease (3 s), still nothing re-sealed,
    // and the one not restarted reads every monitor.
    manager.respawn();
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(6) {
        assert_eq!(sealed_with(&etcd, "k1").await, (MONITORS, MONITORS), "re-sealed before every manager had the key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all_readable(&standby).await;
    standby.respawn();
    all_on(&etcd, &manager, "k2").await;
    let (ok, out, err) = run_cli(&["status", "--server", &manager.grpc_url()]);
    assert!(ok && !out.contains("older key"), "status after the re-seal: {out}{err}");

    // Remove the old line, restart: every monitor reads.
    let text = std::fs::read_to_string(&key_file).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("k1 ")).collect();
    std::fs::write(&key_file, kept.join("\n") + "\n").unwrap();
    manager.respawn();
    standby.respawn();
    all_readable(&manager).await;
    all_readable(&standby).await;

    // Rotate again: a fresh id (not k2 again, not the removed k1), re-sealed.
    let (ok, _, err) = run_cli(&["secret-key", "rotate", "--file", &key_file]);
    assert!(ok, "{err}");
    assert_eq!(key_ids(&key_file), vec!["k3", "k2"]);
    manager.respawn();
    standby.respawn();
    all_on(&etcd, &manager, "k3").await;
    all_readable(&manager).await;
}
