//! Prometheus HTTP service discovery: one scrape target per monitor.
//!
//! kollector serves many Kafka clusters from one process, but the dashboards
//! and alert rules people already use (kafka_exporter's) pick a cluster by
//! the `instance` label, because kafka_exporter runs one process per
//! cluster. So every node serves each monitor's series alone at
//! [`monitor_path`], and `/sd` lists one target per monitor (Prometheus'
//! `http_sd_configs` format) with `instance` set to the monitor id: with it,
//! those dashboards work unchanged, one `instance` per Kafka cluster. A
//! manager's `/sd` points each target at the collector that owns the monitor
//! now, so a failover moves the target with the monitor.

use std::collections::BTreeMap;

use kollector_core::{MonitorId, MonitorResult};
use serde::Serialize;

/// One `http_sd_configs` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdTarget {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Where a node serves one monitor's series.
pub fn monitor_path(id: &MonitorId) -> String {
    format!("/monitors/{id}/metrics")
}

/// A monitor label as a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`):
/// '.', '-' and '/' become '_'. None for names kollector sets itself.
fn label_name(key: &str) -> Option<String> {
    let mut name: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with("__") {
        return None;
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    (!matches!(name.as_str(), "instance" | "monitor" | "cluster_id" | "collector" | "job")).then_some(name)
}

/// The target for `result`'s monitor, scraped at `address` (host:port of a
/// node's HTTP listener that runs it, or a manager's), with the monitor's
/// own labels.
pub fn target(address: &str, result: &MonitorResult, labels: &BTreeMap<String, String>) -> SdTarget {
    let own = labels;
    let mut labels: BTreeMap<String, String> =
        own.iter().filter_map(|(k, v)| Some((label_name(k)?, v.clone()))).collect();
    labels.extend([
        ("__metrics_path__".to_string(), monitor_path(&result.monitor)),
        ("instance".to_string(), result.monitor.to_string()),
        ("monitor".to_string(), result.monitor.to_string()),
    ]);
    // The pinned id when no snapshot is served (stale, failing), so a
    // target keeps its labels, and its series their identity, through an outage.
    if let Some(id) = result.snapshot.as_ref().map(|s| &s.cluster_id).or(result.status.pinned_cluster_id.as_ref()) {
        labels.insert("cluster_id".into(), id.clone());
    }
    if let Some(c) = &result.collector {
        labels.insert("collector".into(), c.to_string());
    }
    SdTarget { targets: vec![address.to_string()], labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_names_its_monitor_as_instance_and_its_own_path() {
        let id = MonitorId::new("orders-prod").unwrap();
        let r = MonitorResult::starting(id.clone(), 1, None);
        let own = BTreeMap::from([
            ("team".to_string(), "payments".to_string()),
            ("app.kubernetes.io/part-of".to_string(), "shop".to_string()),
            ("instance".to_string(), "spoof".to_string()),
            ("__address__".to_string(), "evil:1".to_string()),
        ]);
        let t = target("10.0.0.7:9465", &r, &own);
        assert_eq!(t.labels["team"], "payments");
        assert_eq!(t.labels["app_kubernetes_io_part_of"], "shop");
        assert!(!t.labels.contains_key("__address__"));
        assert_eq!(t.targets, vec!["10.0.0.7:9465"]);
        assert_eq!(t.labels["instance"], "orders-prod");
        assert_eq!(t.labels["__metrics_path__"], "/monitors/orders-prod/metrics");
        let json = serde_json::to_string(&[t]).unwrap();
        assert!(json.starts_with("[{\"targets\":[\"10.0.0.7:9465\"],\"labels\":{"), "{json}");
    }
}
