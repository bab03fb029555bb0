//! Driving the control plane at scale with simulated collectors
//! ([`crate::sim_collector`]): creating monitors (through the API, or
//! loaded straight into etcd for a bench's bulk), reading who runs what,
//! telling when the cluster has converged, and what etcd sent.
//! Shared by `tests/tests/control_plane_scale.rs` and the
//! `control_plane` bench.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kollector_core::MonitorInput;
use kollector_proto::v1 as pb;
use kollector_proto::v1::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

use crate::etcd::EtcdServer;
use crate::sim_collector::SimCollector;

/// Monitor ids `m000000`, `m000001`, … from `from`, `n` of them.
pub fn ids(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("m{i:06}")).collect()
}

fn input(id: &str) -> pb::MonitorSpecInput {
    // Nothing listens at this address: simulated collectors open no client.
    pb::MonitorSpecInput {
        id: id.to_string(),
        bootstrap: vec!["127.0.0.1:9".into()],
        interval: Some("30s".into()),
        ..Default::default()
    }
}

/// Creates `ids` through the ManagerService, `in_flight` calls at a time,
/// spread over `clients` (several managers); how long it took. Panics on
/// the first refusal.
pub async fn create_through_api(
    clients: &[ManagerServiceClient<Channel>],
    ids: &[String],
    in_flight: usize,
) -> Duration {
    use futures::StreamExt as _;
    let started = Instant::now();
    futures::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                let req = pb::CreateMonitorRequest { spec: Some(input(id)) };
                if let Err(e) = client.create_monitor(req).await {
                    panic!("create {id}: {e}");
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    started.elapsed()
}

/// Writes `ids` as monitor specs straight into etcd under `prefix`, 128 to
/// a transaction (a bench's bulk: the API is measured separately).
pub async fn load_into_etcd(etcd: &str, prefix: &str, ids: &[String]) {
    let mut client = etcd_client::Client::connect([etcd], None).await.expect("connect to etcd");
    let keys = kollector_coordination::keys::Keys::new(prefix);
    for chunk in ids.chunks(128) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|id| {
                let spec = MonitorInput {
                    id: id.clone(),
                    bootstrap: vec!["127.0.0.1:9".into()],
                    interval: Some("30s".into()),
                    ..Default::default()
                }
                .validate(0)
                .expect("a valid spec");
                let value = serde_json::to_vec(&spec).expect("encode a spec");
                etcd_client::TxnOp::put(keys.monitor(id), value, None)
            })
            .collect();
        client.txn(etcd_client::Txn::new().and_then(ops)).await.expect("load monitors into etcd");
    }
}

/// Monitor → the live simulated collector running it; an error naming a
/// monitor that runs on two.
pub fn placement<'a>(sims: impl IntoIterator<Item = &'a SimCollector>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for s in sims.into_iter().filter(|s| !s.is_dead()) {
        for m in s.running().into_keys() {
            if let Some(other) = out.insert(m.clone(), s.id.clone()) {
                return Err(format!("monitor {m} runs on {other} and {}", s.id));
            }
        }
    }
    Ok(out)
}

/// Every assignment record, read page by page.
pub async fn records(client: &mut ManagerServiceClient<Channel>) -> Result<Vec<pb::Assignment>, String> {
    let pages = kollector_proto::all_assignment_pages(client).await.map_err(|e| e.to_string())?;
    Ok(pages.into_iter().flat_map(|p| p.assignments).collect())
}

/// Every current result (summaries), read page by page.
pub async fn latest(client: &mut ManagerServiceClient<Channel>) -> Result<Vec<pb::MonitorResult>, String> {
    kollector_proto::all_latest(client, true).await.map_err(|e| e.to_string())
}

/// Converged: `n` monitors each run on exactly one live simulated
/// collector, exactly where its record says, no move in progress. Returns
/// the placement.
pub async fn converged<'a>(
    sims: impl IntoIterator<Item = &'a SimCollector>,
    client: &mut ManagerServiceClient<Channel>,
    n: usize,
) -> Result<BTreeMap<String, String>, String> {
    let placed = placement(sims)?;
    if placed.len() != n {
        return Err(format!("{} of {n} monitors run", placed.len()));
    }
    let records = records(client).await?;
    let moving = records.iter().filter(|a| !a.releasing.is_empty()).count();
    let differ = records.iter().filter(|a| placed.get(&a.monitor_id) != Some(&a.collector_id)).count();
    if moving > 0 || differ > 0 || records.len() != n {
        return Err(format!("{} records, {moving} moves in progress, {differ} not where recorded", records.len()));
    }
    Ok(placed)
}

/// Bytes etcd has sent to its gRPC clients so far (its own counter).
pub fn etcd_sent_bytes(etcd: &EtcdServer) -> f64 {
    let (_, body) =
        crate::kollector::http_get(&format!("127.0.0.1:{}", etcd.client_port), "/metrics").expect("etcd /metrics");
    let metrics = crate::metrics::Metrics::parse(&body).expect("parse etcd /metrics");
    metrics.find("etcd_network_client_grpc_sent_bytes_total", &[]).iter().map(|s| s.value).sum()
}

/// Messages etcd has sent so far, by gRPC method (its own counters).
pub fn etcd_sent_by_method(etcd: &EtcdServer) -> BTreeMap<String, f64> {
    let (_, body) =
        crate::kollector::http_get(&format!("127.0.0.1:{}", etcd.client_port), "/metrics").expect("etcd /metrics");
    let metrics = crate::metrics::Metrics::parse(&body).expect("parse etcd /metrics");
    let mut out = BTreeMap::new();
    for s in metrics.find("grpc_server_msg_sent_total", &[]) {
        let method = s.labels.get("grpc_method").cloned().unwrap_or_default();
        *out.entry(method).or_default() += s.value;
    }
    out
}
