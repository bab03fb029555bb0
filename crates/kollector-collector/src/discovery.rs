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

/// The target for `result`'s monitor, scraped at `address` (host:port of a
/// node's HTTP listener that runs it, or a manager's).
pub fn target(address: &str, result: &MonitorResult) -> SdTarget {
    let mut labels = BTreeMap::from([
        ("__metrics_path__".to_string(), monitor_path(&result.monitor)),
        ("instance".to_string(), result.monitor.to_string()),
        ("monitor".to_string(), result.monitor.to_string()),
    ]);
    if let Some(s) = &result.snapshot {
        labels.insert("cluster_id".into(), s.cluster_id.clone());
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
        let t = target("10.0.0.7:9465", &r);
        assert_eq!(t.targets, vec!["10.0.0.7:9465"]);
        assert_eq!(t.labels["instance"], "orders-prod");
        assert_eq!(t.labels["__metrics_path__"], "/monitors/orders-prod/metrics");
        let json = serde_json::to_string(&[t]).unwrap();
        assert!(json.starts_with("[{\"targets\":[\"10.0.0.7:9465\"],\"labels\":{"), "{json}");
    }
}
