//! One scrape target per monitor, found through `/sd`, and health that
//! means something: standalone and cluster nodes, real brokers, a real
//! failover. What Prometheus would do with `/sd` is done here by hand: read
//! the targets, scrape each at its address and path.

use std::collections::BTreeMap;
use std::time::Duration;

use kollector_devkit::tansu::TansuBroker;
use kollector_tests::cluster::Cluster;
use kollector_tests::kollector::{http_get, monitor_toml, KollectorProcess};
use kollector_tests::metrics::Metrics;
use kollector_tests::poll::{wait_for, wait_for_async};

/// monitor → (address, path, labels), from an `/sd` body.
fn targets(body: &str) -> BTreeMap<String, (String, String, BTreeMap<String, String>)> {
    let v: serde_json::Value = serde_json::from_str(body).expect("/sd is JSON");
    let mut out = BTreeMap::new();
    for t in v.as_array().expect("a list") {
        let labels: BTreeMap<String, String> = serde_json::from_value(t["labels"].clone()).expect("labels");
        let address = t["targets"][0].as_str().expect("one target").to_string();
        out.insert(labels["monitor"].clone(), (address, labels["__metrics_path__"].clone(), labels));
    }
    out
}

#[test]
fn standalone_serves_one_target_per_monitor_with_only_its_series() {
    let a = TansuBroker::start("sd-a");
    let b = TansuBroker::start("sd-b");
    let k = KollectorProcess::standalone(&format!(
        "{}labels = {{ team = \"payments\", part_of = \"shop\" }}\n{}",
        monitor_toml("mon-a", &a.bootstrap(), "1s"),
        monitor_toml("mon-b", &b.bootstrap(), "1s")
    ));
    let http = format!("127.0.0.1:{}", k.http_port);
    assert_eq!(http_get(&http, "/readyz").unwrap().0, 200);
    let found = wait_for("both targets with their cluster ids", Duration::from_secs(30), || {
        let t = targets(&http_get(&http, "/sd")?.1);
        let ready = ["mon-a", "mon-b"].iter().all(|m| t.get(*m).is_some_and(|(_, _, l)| l.contains_key("cluster_id")));
        ready.then_some(t.clone()).ok_or(format!("{t:?}"))
    });
    for (monitor, cluster) in [("mon-a", "sd-a"), ("mon-b", "sd-b")] {
        let (address, path, labels) = &found[monitor];
        assert_eq!(address, &http);
        assert_eq!(labels["instance"], monitor, "one instance per Kafka cluster");
        assert_eq!(labels["cluster_id"], cluster);
        let (code, body) = http_get(address, path).unwrap();
        assert_eq!(code, 200, "{body}");
        let m = Metrics::parse(&body).expect("Prometheus text");
        assert!(!m.find("kafka_brokers", &[("monitor", monitor)]).is_empty(), "{body}");
        let others: Vec<_> =
            m.samples.iter().filter(|s| s.labels.get("monitor").is_some_and(|x| x != monitor)).cloned().collect();
        assert!(others.is_empty(), "{monitor}'s target carries other monitors' series: {others:?}");
    }
    // The monitor's own labels, as Prometheus label names.
    assert_eq!(found["mon-a"].2.get("team").map(String::as_str), Some("payments"));
    assert_eq!(found["mon-a"].2.get("part_of").map(String::as_str), Some("shop"));
    // The node's own series alone, for node scrape jobs.
    let (code, body) = http_get(&http, "/metrics/self").unwrap();
    let own = Metrics::parse(&body).unwrap();
    assert_eq!(code, 200);
    assert!(own.value("kollector_kafka_clients", &[]).is_some(), "{body}");
    assert!(own.samples.iter().all(|s| !s.labels.contains_key("monitor")), "{body}");
    assert_eq!(http_get(&http, "/monitors/nope/metrics").unwrap().0, 404);
    assert_eq!(http_get(&http, "/monitors/..%2Fetc/metrics").unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_managers_discovery_follows_a_monitor_to_its_new_owner() {
    let mut cluster = Cluster::start(2);
    cluster.create_monitors(4).await;
    let owners = cluster.settled(4, 60).await;
    let manager_http = format!("127.0.0.1:{}", cluster.manager.http_port);
    for c in cluster.collectors.values() {
        assert_eq!(http_get(&format!("127.0.0.1:{}", c.http_port), "/readyz").unwrap().0, 200);
    }
    assert_eq!(http_get(&manager_http, "/readyz").unwrap().0, 200);
    let http_of = |id: &str, cluster: &Cluster| format!("127.0.0.1:{}", cluster.collectors[id].http_port);
    let monitor = "m00".to_string();
    let first_owner = owners[&monitor].clone();
    let want = http_of(&first_owner, &cluster);
    wait_for("the manager's /sd to point m0 at its owner", Duration::from_secs(30), || {
        let t = targets(&http_get(&manager_http, "/sd")?.1);
        match t.get(&monitor) {
            Some((address, _, labels)) if *address == want && labels["collector"] == first_owner => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    cluster.collectors.get_mut(&first_owner).unwrap().kill();
    let other = if first_owner == "c1" { "c2" } else { "c1" };
    let new_address = http_of(other, &cluster);
    wait_for_async("m0's target to move to the surviving collector", Duration::from_secs(60), || {
        let (manager_http, monitor, new_address) = (manager_http.clone(), monitor.clone(), new_address.clone());
        async move {
            let t = targets(&http_get(&manager_http, "/sd")?.1);
            let (address, path, _) = t.get(&monitor).ok_or("no target")?.clone();
            if address != new_address {
                return Err(format!("still at {address}"));
            }
            // And its series continue there.
            let (code, body) = http_get(&address, &path)?;
            let m = Metrics::parse(&body).map_err(|e| e.to_string())?;
            (code == 200 && !m.find("kafka_brokers", &[("monitor", &monitor)]).is_empty())
                .then_some(())
                .ok_or(format!("{code}: {body}"))
        }
    })
    .await;
}
