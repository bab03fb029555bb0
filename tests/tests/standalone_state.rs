//! Standalone mode keeps its monitors across restarts: what the API created,
//! changed or deleted is there after a clean restart and after a crash, and
//! a crash in the middle of writes leaves the previous or the new state,
//! never a broken file (the node starts again, with every acknowledged
//! change and nothing that was never asked for).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::kollector::{monitor_toml, KollectorProcess};

fn spec(id: &str, interval: &str) -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: id.into(),
        // Nothing listens there: these tests are about desired state, not Kafka.
        bootstrap: vec!["127.0.0.1:9".into()],
        interval: Some(interval.into()),
        timeout: Some("1s".into()),
        ..Default::default()
    }
}

async fn ids(k: &KollectorProcess) -> BTreeSet<String> {
    let mut c = k.client().await;
    let list = c.list_monitors(pb::ListMonitorsRequest::default()).await.expect("list").into_inner().monitors;
    list.into_iter().filter_map(|m| m.spec.map(|s| s.id)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn monitors_changed_through_the_api_survive_restarts_and_crashes() {
    let file_monitor = format!("{}timeout = \"1s\"\n", monitor_toml("from-file", "127.0.0.1:9", "1h"));
    let mut k = KollectorProcess::standalone(&file_monitor);
    let mut c = k.client().await;
    c.create_monitor(pb::CreateMonitorRequest { spec: Some(spec("from-api", "1h")) }).await.expect("create");
    c.create_monitor(pb::CreateMonitorRequest { spec: Some(spec("short-lived", "1h")) }).await.expect("create");
    c.update_monitor(pb::UpdateMonitorRequest { spec: Some(spec("from-api", "30m")) }).await.expect("update");
    c.delete_monitor(pb::DeleteMonitorRequest { id: "short-lived".into() }).await.expect("delete");

    // A clean restart (SIGTERM) and a crash (SIGKILL) keep the same state.
    let mut generations = Vec::new();
    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGTERM" {
            assert!(k.terminate(), "clean stop");
        } else {
            k.kill();
        }
        k.respawn();
        assert_eq!(
            ids(&k).await,
            BTreeSet::from(["from-api".to_string(), "from-file".to_string()]),
            "after a {how} restart"
        );
        let mut c = k.client().await;
        let got = c.get_monitor(pb::GetMonitorRequest { id: "from-api".into() }).await.expect("get").into_inner();
        let view = got.spec.expect("spec");
        assert_eq!(view.interval, "30m", "the update is kept");
        generations.push(view.generation);
    }
    let state =
        std::fs::read_to_string(k.config_path.with_extension("state.json")).expect("state file next to the config");
    assert!(state.contains("from-api"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_writes_leaves_the_old_or_the_new_state_never_a_broken_file() {
    let mut k = KollectorProcess::standalone("");
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for round in 0..6u32 {
        // A burst of creates from several clients, killed part-way through.
        let client = k.client().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let id = format!("r{round}-m{i:02}");
            attempted.insert(id.clone());
            let (mut client, tx) = (client.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                if client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec(&id, "1h")) }).await.is_ok() {
                    let _ = tx.send(id);
                }
            }));
        }
        drop(tx);
        // Kill after a round-dependent number of acknowledged writes.
        let kill_after = 3 + 5 * round as usize;
        let started = Instant::now();
        let mut acked_now = 0;
        while acked_now < kill_after && started.elapsed() < Duration::from_secs(20) {
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(id)) => {
                    acknowledged.insert(id);
                    acked_now += 1;
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        k.kill();
        while let Ok(Some(id)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            acknowledged.insert(id);
        }
        for t in tasks {
            let _ = t.await;
        }
        // It must start again from an intact file (respawn panics if it exits).
        k.respawn();
        let now = ids(&k).await;
        let lost: Vec<&String> = acknowledged.difference(&now).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged creates lost: {lost:?}");
        let invented: Vec<&String> = now.difference(&attempted).collect();
        assert!(invented.is_empty(), "round {round}: monitors nobody created: {invented:?}");
        // Monitors whose create was cut off may or may not be there; keep what is.
        acknowledged = now;
    }
    assert!(acknowledged.len() >= 3 * 6, "{} monitors survived the rounds", acknowledged.len());
}
