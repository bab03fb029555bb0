//! The Prometheus files in `deploy/prometheus/` and the dashboards in
//! `deploy/grafana/`, against a real Prometheus (Debian's package):
//! `promtool` checks the config and the rules and runs the rules' unit
//! tests; then Prometheus discovers a running kollector cluster's monitors
//! through a manager's `/sd`, scrapes each as its own `instance` (and the
//! nodes for their own metrics), evaluates every rule expression and every
//! dashboard query, which all return data, and the lag and monitor-down
//! alerts fire for real when a consumer group lags and the broker stops.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kollector_proto::v1 as pb;
use kollector_tests::cluster::Cluster;
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::kollector::http_get;
use kollector_tests::poll::wait_for;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out =
        Command::new("promtool").args(args).current_dir(deploy()).output().expect("promtool (install-test-deps.sh)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn promtool_accepts_the_config_and_rules_and_their_unit_tests_pass() {
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "kollector-rules.yml"],
        vec!["test", "rules", "kollector-rules.test.yml"],
    ] {
        let (ok, out) = promtool(&args);
        assert!(ok, "promtool {args:?}:\n{out}");
    }
}

/// The `expr:` of every rule in a rules file.
fn rule_exprs(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(|e| e.trim().to_string()).collect()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus API answer, as JSON.
fn get(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let (_, body) = http_get(&format!("127.0.0.1:{port}"), path)?;
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

fn query(port: u16, q: &str) -> Result<serde_json::Value, String> {
    get(port, &format!("/api/v1/query?query={}", encode(q)))
}

fn firing(port: u16, alert: &str) -> Result<(), String> {
    let v = get(port, "/api/v1/alerts")?;
    let alerts = v["data"]["alerts"].as_array().cloned().unwrap_or_default();
    alerts
        .iter()
        .any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing")
        .then_some(())
        .ok_or(format!("{alert} not firing: {alerts:?}"))
}

struct Prometheus(Child);
impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_discovers_scrapes_and_alerts() {
    let mut cluster = Cluster::start(2);
    let bs = cluster.broker.bootstrap();
    let fixture = bs.clone();
    tokio::task::spawn_blocking(move || {
        create_topic(&fixture, "events", 1);
        produce_records(&fixture, "events", 0, 30);
        commit_offsets(&fixture, "billing", &[("events", 0, 0)]);
    })
    .await
    .unwrap();
    // With the end-to-end probe, so its dashboard panels and rules have
    // data too (it runs on a collector and its numbers reach Prometheus
    // through the manager, like every series).
    let spec = pb::MonitorSpecInput {
        id: "orders".into(),
        bootstrap: vec![bs.clone()],
        interval: Some("1s".into()),
        e2e_probe: Some(pb::E2eProbeInput { interval: Some("200ms".into()), ..Default::default() }),
        ..Default::default()
    };
    cluster.manager.client().await.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.unwrap();
    cluster.settled(1, 60).await;
    let nodes = |ports: Vec<u16>| ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect::<Vec<_>>().join(", ");
    let collectors = nodes(cluster.collectors.values().map(|c| c.http_port).collect());

    // The shipped rules, with every `for:` cut so alerts fire within the
    // test, and the lag threshold (1000) lowered to 20: the test broker takes
    // one produce request per record, about 0.1 s each.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(deploy().join("kollector-rules.yml")).unwrap();
    assert!(
        rules.contains(
            "(max by (monitor, consumergroup, topic, partition) (last_over_time(kafka_consumergroup_lag[5m]))) > 1000"
        ),
        "the lag rule changed; update this test"
    );
    let fast: String = rules
        .lines()
        .map(|l| if l.trim_start().starts_with("for:") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "(max by (monitor, consumergroup, topic, partition) (last_over_time(kafka_consumergroup_lag[5m]))) > 1000",
            "(max by (monitor, consumergroup, topic, partition) (last_over_time(kafka_consumergroup_lag[5m]))) > 20",
        );
    std::fs::write(dir.path().join("rules.yml"), &fast).unwrap();
    let port = kollector_devkit::free_port();
    let node_path = "    metrics_path: /metrics/self\n";
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: kafka\n    http_sd_configs:\n      - url: http://127.0.0.1:{}/sd\n        refresh_interval: 1s\n  - job_name: kollector-managers\n    static_configs: [{{targets: [{}]}}]\n{node_path}  - job_name: kollector-collectors\n    static_configs: [{{targets: [{collectors}]}}]\n{node_path}",
        cluster.manager.http_port,
        nodes(vec![cluster.manager.http_port]),
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (install-test-deps.sh)");
    let _prometheus = Prometheus(child);

    // Discovered through /sd, scraped as its own instance.
    wait_for("Prometheus to scrape the orders target", Duration::from_secs(60), || {
        let v = get(port, "/api/v1/targets")?;
        let active = v["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        active
            .iter()
            .any(|t| t["labels"]["instance"] == "orders" && t["health"] == "up")
            .then_some(())
            .ok_or(format!("{active:?}"))
    });
    // A kafka_exporter-style query, per instance.
    wait_for("lag of billing on instance orders", Duration::from_secs(30), || {
        let v = query(
            port,
            r#"sum by (consumergroup) (kafka_consumergroup_lag{instance="orders",consumergroup="billing"})"#,
        )?;
        let r = v["data"]["result"].as_array().cloned().unwrap_or_default();
        (r.len() == 1 && r[0]["value"][1] == "30").then_some(()).ok_or(format!("{v}"))
    });
    // Every rule expression parses and evaluates.
    for expr in rule_exprs(&rules) {
        let v = query(port, &expr).unwrap();
        assert_eq!(v["status"], "success", "{expr}: {v}");
    }
    // Every dashboard query parses and has data.
    for (file, need_data) in [("kafka.json", true), ("kollector-cluster.json", true)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana").join(file);
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}");
        for p in panels {
            // A row holds no query.
            if p["type"] == "row" {
                continue;
            }
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap().replace("$monitor", ".*").replace("$__rate_interval", "1m");
                let title = p["title"].as_str().unwrap_or_default().to_string();
                let v = wait_for(&format!("{file} panel {title:?}"), Duration::from_secs(20), || {
                    let v = query(port, &expr)?;
                    let empty = v["data"]["result"].as_array().is_none_or(|r| r.is_empty());
                    if v["status"] != "success" || (need_data && empty) {
                        return Err(format!("{expr}: {v}"));
                    }
                    Ok(v)
                });
                assert_eq!(v["status"], "success");
            }
        }
    }
    wait_for("KafkaConsumerGroupLagHigh to fire", Duration::from_secs(30), || {
        firing(port, "KafkaConsumerGroupLagHigh")
    });
    cluster.broker.kill();
    wait_for("KafkaMonitorDown to fire", Duration::from_secs(60), || firing(port, "KafkaMonitorDown"));
}
