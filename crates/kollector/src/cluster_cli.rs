//! `kollector collectors …` and `kollector status`: the cluster at a glance.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use kollector_proto::v1::{self as pb};

use crate::monitor_cli::{ago, connect, state_name, status_error, ClientArgs};

#[derive(Args)]
pub struct CollectorsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: CollectorsCommand,
}

#[derive(Subcommand)]
enum CollectorsCommand {
    /// Live collectors with their load.
    List,
    /// Move every monitor off a collector (before maintenance); --undo lets it take monitors again.
    Drain {
        id: String,
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn collectors(args: CollectorsArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    match args.command {
        CollectorsCommand::List => {
            let r = client.list_collectors(pb::ListCollectorsRequest {}).await.map_err(status_error)?.into_inner();
            print_collectors(&r);
        }
        CollectorsCommand::Drain { id, undo } => {
            client.drain(pb::DrainRequest { collector_id: id.clone(), undo }).await.map_err(status_error)?;
            if undo {
                out!("{id} takes monitors again");
            } else {
                out!("{id} is draining: its monitors move to other collectors within a reconcile period");
            }
        }
    }
    Ok(())
}

fn print_collectors(r: &pb::ListCollectorsResponse) {
    if r.leader_address.is_empty() {
        out!("leader: none");
    } else {
        out!("leader: {} (term {})", r.leader_address, r.leader_term);
    }
    if r.collectors.is_empty() {
        out!("no live collectors");
        return;
    }
    out!("{:<20} {:>8} {:>6} {:<9} {:<12} {:<22} HTTP", "COLLECTOR", "MONITORS", "WEIGHT", "STATE", "HEALTH", "GRPC");
    for c in &r.collectors {
        out!(
            "{:<20} {:>8} {:>6} {:<9} {:<12} {:<22} {}",
            c.id,
            c.monitors,
            c.weight,
            if c.draining { "draining" } else { "active" },
            if c.health.is_empty() { "-" } else { c.health.as_str() },
            c.grpc_address,
            c.http_address
        );
    }
}

/// Every assignment, page by page (the first page carries `invalid` and
/// `secrets_on_old_keys`; `unplaced` accumulates).
async fn assignments_all(client: &mut crate::monitor_cli::Client) -> anyhow::Result<pb::GetAssignmentsResponse> {
    let mut all = pb::GetAssignmentsResponse::default();
    for r in kollector_proto::all_assignment_pages(client).await.map_err(status_error)? {
        all.assignments.extend(r.assignments);
        all.unplaced.extend(r.unplaced);
        all.invalid.extend(r.invalid);
        all.secrets_on_old_keys = all.secrets_on_old_keys.max(r.secrets_on_old_keys);
    }
    Ok(all)
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let collectors = client.list_collectors(pb::ListCollectorsRequest {}).await.map_err(status_error)?.into_inner();
    print_collectors(&collectors);
    let assignments = assignments_all(&mut client).await?;
    let latest = crate::monitor_cli::latest_all(&mut client, true).await?;
    let results: BTreeMap<&str, &pb::MonitorResult> = latest.iter().map(|r| (r.monitor_id.as_str(), r)).collect();
    out!();
    out!("{:<24} {:<20} {:>8} {:<10} {:<14} CLUSTER", "MONITOR", "COLLECTOR", "EPOCH", "STATE", "LAST RESULT");
    let mut rows: Vec<(&str, &str, u64)> = assignments
        .assignments
        .iter()
        .filter(|a| !a.collector_id.is_empty())
        .map(|a| (a.monitor_id.as_str(), a.collector_id.as_str(), a.epoch))
        .collect();
    rows.sort();
    for (m, c, epoch) in rows {
        let r = results.get(m);
        out!(
            "{:<24} {:<20} {:>8} {:<10} {:<14} {}",
            m,
            c,
            epoch,
            state_name(r.and_then(|r| r.status.as_ref())),
            r.map(|r| ago(r.attempted_at_ms)).unwrap_or_else(|| "none yet".into()),
            r.and_then(|r| r.status.as_ref()?.pinned_cluster_id.as_deref()).unwrap_or("-")
        );
    }
    for (m, why) in &assignments.unplaced {
        out!("{m:<24} {:<20} {:>8} {:<10} {why}", "-", "-", "waiting");
    }
    let moving: Vec<&pb::Assignment> = assignments.assignments.iter().filter(|a| !a.releasing.is_empty()).collect();
    if !moving.is_empty() {
        out!();
        out!("moves waiting for an earlier owner to confirm it stopped ({}):", moving.len());
        for a in moving {
            let to = if a.collector_id.is_empty() { "(deleted)" } else { a.collector_id.as_str() };
            out!("  {:<24} → {:<20} waiting for {}", a.monitor_id, to, a.releasing.join(", "));
        }
    }
    if assignments.secrets_on_old_keys > 0 {
        out!();
        out!(
            "{} monitor(s) still have secrets sealed with an older key: the leader is re-sealing them; keep the old key line until this reaches 0",
            assignments.secrets_on_old_keys
        );
    }
    if !assignments.invalid.is_empty() {
        out!();
        out!("monitors whose stored spec cannot be read (skipped until fixed or deleted):");
        for (m, why) in &assignments.invalid {
            out!("  {m:<24} {why}");
        }
    }
    Ok(())
}
