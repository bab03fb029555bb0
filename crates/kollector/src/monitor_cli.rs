//! `kollector monitor …`: the CLI over ManagerService.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use kollector_core::{MonitorInput, SaslInput, Secret, TlsInput};
use kollector_proto::input_to_proto;
use kollector_proto::v1::manager_service_client::ManagerServiceClient;
use kollector_proto::v1::{self as pb};
use tonic::transport::Channel;

/// Default ManagerService address when neither --server nor KOLLECTOR_SERVER is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// How the CLI reaches a node: address, TLS and token.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// ManagerService address of the node to talk to (https://… for TLS).
    #[arg(long, global = true, env = "KOLLECTOR_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// CA certificate (PEM) to verify the node's TLS certificate with; turns TLS on.
    #[arg(long, global = true, env = "KOLLECTOR_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// File holding the API token (`kollector token add`). The token may also
    /// come from KOLLECTOR_TOKEN; it is never taken as an argument.
    #[arg(long, global = true, env = "KOLLECTOR_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: MonitorCommand,
}

#[derive(Subcommand)]
enum MonitorCommand {
    /// Create a monitor.
    Add {
        /// Monitor id: letters, digits, '.', '_' and '-' (required).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Replace a monitor's spec (omitted secrets keep their stored values).
    /// Returns after the old Kafka client is closed.
    Update {
        /// Id of the monitor to replace (required).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Delete a monitor. Returns after its Kafka client is closed.
    Rm {
        #[command(flatten)]
        id: IdArg,
    },
    /// Show a monitor's spec and status (secrets are never shown).
    Get {
        #[command(flatten)]
        id: IdArg,
        #[arg(long)]
        json: bool,
    },
    /// List monitors with their status.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run one collection with these settings and print it; stores nothing.
    Probe {
        /// Id to label the probe's output with.
        #[arg(long, default_value = "probe")]
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Show the latest collected data (all monitors, or one).
    Show {
        /// Only this monitor (also accepted without --id).
        #[arg(long = "id", value_name = "ID", conflicts_with = "id_pos")]
        id: Option<String>,
        #[arg(value_name = "ID")]
        id_pos: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A monitor id, as `--id ID` (like add and update) or just `ID`.
#[derive(Args)]
struct IdArg {
    /// Monitor id.
    #[arg(long = "id", value_name = "ID", conflicts_with = "id_pos", required_unless_present = "id_pos")]
    id: Option<String>,
    /// Monitor id (the same as --id).
    #[arg(value_name = "ID")]
    id_pos: Option<String>,
}

impl IdArg {
    fn get(self) -> String {
        self.id.or(self.id_pos).unwrap_or_default()
    }
}

#[derive(Args)]
struct SpecArgs {
    /// Bootstrap brokers, host:port, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    bootstrap: Vec<String>,
    /// Collection interval (1s..1h), e.g. 15s. Default 30s.
    #[arg(long)]
    interval: Option<String>,
    /// Collection timeout, below the interval. Default 80% of the interval, at most 20s.
    #[arg(long)]
    timeout: Option<String>,
    /// How far back the offset history behind lag in seconds reaches (10m..24h, at
    /// most 3,600 intervals; never less than 10 intervals). Default 1h.
    #[arg(long)]
    lag_history: Option<String>,
    /// Only topics matching this regex (whole name).
    #[arg(long)]
    topic_include: Option<String>,
    /// Skip topics matching this regex (wins over include).
    #[arg(long)]
    topic_exclude: Option<String>,
    /// Only consumer groups matching this regex (whole name).
    #[arg(long)]
    group_include: Option<String>,
    /// Skip consumer groups matching this regex (wins over include).
    #[arg(long)]
    group_exclude: Option<String>,
    /// Refuse data from any other cluster id.
    #[arg(long)]
    expected_cluster_id: Option<String>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER
    /// (OIDC client credentials: --sasl-username is the client id,
    /// --sasl-password-env names the client secret's variable) or
    /// AWS_MSK_IAM (no user or password: the collector's AWS credentials).
    #[arg(long)]
    sasl_mechanism: Option<String>,
    /// SASL user name; for OAUTHBEARER the OIDC client id.
    #[arg(long)]
    sasl_username: Option<String>,
    /// Name of an environment variable holding the SASL password or the
    /// OIDC client secret (never pass it as an argument).
    #[arg(long)]
    sasl_password_env: Option<String>,
    /// OAUTHBEARER: the OIDC token endpoint (https://, or http:// to loopback).
    #[arg(long, requires = "sasl_mechanism")]
    sasl_token_endpoint: Option<String>,
    /// OAUTHBEARER: the scope to ask the token endpoint for.
    #[arg(long, requires = "sasl_token_endpoint")]
    sasl_scope: Option<String>,
    /// OAUTHBEARER: a SASL extension sent with each token, key=value; repeatable.
    #[arg(long = "sasl-extension", value_parser = parse_label, requires = "sasl_token_endpoint")]
    sasl_extensions: Vec<(String, String)>,
    /// OAUTHBEARER: CA bundle (PEM) for the token endpoint's certificate.
    #[arg(long, requires = "sasl_token_endpoint")]
    sasl_token_endpoint_ca_file: Option<String>,
    /// AWS_MSK_IAM: the AWS region to sign tokens for (default: read from
    /// the bootstrap host names).
    #[arg(long, requires = "sasl_mechanism")]
    sasl_aws_region: Option<String>,
    /// Use TLS.
    #[arg(long)]
    tls: bool,
    /// CA bundle (PEM) for TLS; implies --tls.
    #[arg(long)]
    tls_ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS; implies --tls.
    #[arg(long)]
    tls_cert_file: Option<String>,
    /// Client key (PEM) for mutual TLS; implies --tls.
    #[arg(long)]
    tls_key_file: Option<String>,
    /// Do not verify broker certificates (test clusters only); implies --tls.
    #[arg(long)]
    tls_insecure_skip_verify: bool,
    /// Free-form label, key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Cluster mode: run only on this collector.
    #[arg(long)]
    pin_collector: Option<String>,
    /// Cluster mode: run only on collectors with this label, key=value; repeatable.
    #[arg(long = "collector-label", value_parser = parse_label)]
    collector_labels: Vec<(String, String)>,
    /// Client id in every request to the cluster (broker quotas and logs).
    /// Default kollector-<id>.
    #[arg(long)]
    client_id: Option<String>,
    /// Consumer-group metrics per "partition" (default: every series) or per
    /// "topic" only (sums, max lag seconds, status; far fewer series).
    #[arg(long, value_parser = ["partition", "topic"])]
    group_metrics: Option<String>,
    /// Run the end-to-end probe (produce to a probe topic, consume back,
    /// measure); implied by any other --e2e-* flag.
    #[arg(long)]
    e2e_probe: bool,
    /// The probe topic (default kollector-e2e; created when missing).
    #[arg(long)]
    e2e_topic: Option<String>,
    /// One probe message per partition this often (default 1s).
    #[arg(long)]
    e2e_interval: Option<String>,
    /// A probe produce not acknowledged within this fails (default 5s).
    #[arg(long)]
    e2e_ack_sla: Option<String>,
    /// An acknowledged probe message not consumed back within this is lost (default 20s).
    #[arg(long)]
    e2e_roundtrip_sla: Option<String>,
    /// Probe offset commits slower than this are above their SLA (default 10s).
    #[arg(long)]
    e2e_commit_sla: Option<String>,
    /// Probe partitions per broker when the topic is created (default 1).
    #[arg(long)]
    e2e_partitions_per_broker: Option<u32>,
    /// Replicas per probe partition when the topic is created (default 1).
    #[arg(long)]
    e2e_replication_factor: Option<u16>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not key=value"))
}

impl SpecArgs {
    fn into_input(self, id: String) -> anyhow::Result<MonitorInput> {
        let msk = self.sasl_mechanism.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("AWS_MSK_IAM"));
        let sasl = match (self.sasl_mechanism, self.sasl_username) {
            (Some(mechanism), None) if msk => Some(SaslInput {
                mechanism,
                aws_region: self.sasl_aws_region,
                password_env: None,
                ..Default::default()
            }),
            (Some(mechanism), Some(username)) => {
                let password = match &self.sasl_password_env {
                    Some(var) => Some(Secret::new(
                        std::env::var(var)
                            .with_context(|| format!("environment variable {var} (--sasl-password-env)"))?,
                    )),
                    None => None,
                };
                Some(SaslInput {
                    mechanism,
                    username,
                    password,
                    password_env: None,
                    token_endpoint: self.sasl_token_endpoint,
                    scope: self.sasl_scope,
                    extensions: self.sasl_extensions.into_iter().collect(),
                    ca_file: self.sasl_token_endpoint_ca_file,
                    aws_region: self.sasl_aws_region,
                })
            }
            (None, None) => None,
            _ => bail!("--sasl-mechanism and --sasl-username go together"),
        };
        let tls_on = self.tls
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.tls_insecure_skip_verify;
        let tls = tls_on.then_some(TlsInput {
            enabled: Some(true),
            ca_file: self.tls_ca_file,
            cert_file: self.tls_cert_file,
            key_file: self.tls_key_file,
            key_password: None,
            insecure_skip_verify: Some(self.tls_insecure_skip_verify),
        });
        let e2e_probe_on = self.e2e_probe
            || self.e2e_topic.is_some()
            || self.e2e_interval.is_some()
            || self.e2e_ack_sla.is_some()
            || self.e2e_roundtrip_sla.is_some()
            || self.e2e_commit_sla.is_some()
            || self.e2e_partitions_per_broker.is_some()
            || self.e2e_replication_factor.is_some();
        Ok(MonitorInput {
            id,
            bootstrap: self.bootstrap,
            interval: self.interval,
            timeout: self.timeout,
            lag_history: self.lag_history,
            topic_include: self.topic_include,
            topic_exclude: self.topic_exclude,
            group_include: self.group_include,
            group_exclude: self.group_exclude,
            expected_cluster_id: self.expected_cluster_id,
            sasl,
            tls,
            labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
            pinned_collector: self.pin_collector,
            collector_labels: self.collector_labels.into_iter().collect::<BTreeMap<_, _>>(),
            client_id: self.client_id,
            group_metrics: self.group_metrics,
            e2e_probe: e2e_probe_on.then_some(kollector_core::e2e::E2eProbeInput {
                topic: self.e2e_topic,
                interval: self.e2e_interval,
                ack_sla: self.e2e_ack_sla,
                roundtrip_sla: self.e2e_roundtrip_sla,
                commit_sla: self.e2e_commit_sla,
                partitions_per_broker: self.e2e_partitions_per_broker,
                replication_factor: self.e2e_replication_factor,
            }),
        })
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = ManagerServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>;

fn read_token(args: &ClientArgs) -> anyhow::Result<Option<String>> {
    let token = match &args.token_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading --token-file {}", p.display()))?),
        None => std::env::var("KOLLECTOR_TOKEN").ok(),
    };
    Ok(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Whether `host:port` (or `[v6]:port`, or `localhost:port`) is on this machine.
fn is_loopback(host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every monitor, read page by page (each page within gRPC's message limit).
pub(crate) async fn list_all(client: &mut Client) -> anyhow::Result<Vec<pb::MonitorInfo>> {
    kollector_proto::all_monitors(client).await.map_err(status_error)
}

/// Every monitor's latest result (snapshots left out if `summary`), page by page.
pub(crate) async fn latest_all(client: &mut Client, summary: bool) -> anyhow::Result<Vec<pb::MonitorResult>> {
    kollector_proto::all_latest(client, summary).await.map_err(status_error)
}

pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let server = &args.server;
    let tls = match &args.ca_file {
        Some(ca) => Some(kollector_security::tls::client_with_ca(ca)?),
        None if server.starts_with("https://") => bail!("an https:// --server needs --ca-file (the cluster CA)"),
        None => None,
    };
    let bare = server.trim_start_matches("http://").trim_start_matches("https://");
    let url = if tls.is_some() { format!("https://{bare}") } else { format!("http://{bare}") };
    let mut endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| anyhow!("--server {server:?} is not a valid URL: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    let tls_on = tls.is_some();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| anyhow!("TLS settings: {e}"))?;
    }
    let token = read_token(args)?;
    if token.is_some() && !tls_on && !is_loopback(bare) {
        bail!("refusing to send the token to {server} without TLS: give --ca-file (https) or use a loopback address");
    }
    let channel = endpoint.connect().await.map_err(|e| anyhow!("cannot reach kollector at {server}: {e}"))?;
    let header = match token {
        Some(t) => Some(
            format!("Bearer {t}").parse().map_err(|_| anyhow!("the token holds characters a header cannot carry"))?,
        ),
        None => None,
    };
    // Answers as large as the servers may send (a GetLatest of a large
    // cluster), not tonic's 4 MiB default.
    let limit = kollector_proto::GrpcLimits::default().max_message_bytes;
    Ok(ManagerServiceClient::with_interceptor(channel, BearerToken(header))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
}

pub(crate) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", code_name(s.code()), s.message())
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::ResourceExhausted => "resource exhausted",
        _ => "error",
    }
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    match args.command {
        MonitorCommand::Add { id, spec } => {
            let spec = input_to_proto(&spec.into_input(id)?);
            let info =
                client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.map_err(status_error)?;
            print_info_line(&info.into_inner());
        }
        MonitorCommand::Update { id, spec } => {
            let spec = input_to_proto(&spec.into_input(id)?);
            let info =
                client.update_monitor(pb::UpdateMonitorRequest { spec: Some(spec) }).await.map_err(status_error)?;
            print_info_line(&info.into_inner());
        }
        MonitorCommand::Rm { id } => {
            let id = id.get();
            client.delete_monitor(pb::DeleteMonitorRequest { id: id.clone() }).await.map_err(status_error)?;
            out!("deleted {id} (Kafka client closed)");
        }
        MonitorCommand::Get { id, json } => {
            let info =
                client.get_monitor(pb::GetMonitorRequest { id: id.get() }).await.map_err(status_error)?.into_inner();
            if json {
                out!("{}", serde_json::to_string_pretty(&info_json(&info))?);
            } else {
                print_info_detail(&info);
            }
        }
        MonitorCommand::List { json } => {
            let monitors = list_all(&mut client).await?;
            if json {
                let v: Vec<_> = monitors.iter().map(info_json).collect();
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else if monitors.is_empty() {
                out!("no monitors");
            } else {
                out!("{:<24} {:>4} {:<10} {:<8} {:<10} BOOTSTRAP", "ID", "GEN", "STATE", "INTERVAL", "CLUSTER");
                for m in &monitors {
                    print_info_line(m);
                }
            }
        }
        MonitorCommand::Probe { id, spec } => {
            let spec = input_to_proto(&spec.into_input(id)?);
            let r = client.probe(pb::ProbeRequest { spec: Some(spec) }).await.map_err(status_error)?.into_inner();
            match (r.snapshot, r.error) {
                (Some(s), _) => print_snapshot(&s),
                (None, Some(e)) => bail!("probe failed ({}): {}", e.kind, e.message),
                (None, None) => bail!("probe returned nothing"),
            }
        }
        MonitorCommand::Show { id, id_pos, json } => {
            let results = match id.or(id_pos) {
                None => latest_all(&mut client, false).await?,
                Some(monitor_id) => {
                    client
                        .get_latest(pb::GetLatestRequest { monitor_id, ..Default::default() })
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .results
                }
            };
            let r = pb::GetLatestResponse { results, next_page_token: String::new() };
            if json {
                let v: Vec<_> = r.results.iter().map(result_json).collect();
                out!("{}", serde_json::to_string_pretty(&v)?);
            } else if r.results.is_empty() {
                out!("no monitors");
            }
            if !json {
                for res in &r.results {
                    print_result(res);
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn state_name(s: Option<&pb::MonitorStatus>) -> &'static str {
    let state = s.map(|s| s.state()).unwrap_or(pb::MonitorState::Unspecified);
    match state {
        pb::MonitorState::Unspecified => "unknown",
        pb::MonitorState::Starting => "starting",
        pb::MonitorState::Running => "running",
        pb::MonitorState::Degraded => "degraded",
        pb::MonitorState::Failing => "failing",
        pb::MonitorState::Failed => "failed",
        pb::MonitorState::Stopped => "stopped",
        pb::MonitorState::Stale => "stale",
    }
}

fn print_info_line(m: &pb::MonitorInfo) {
    let Some(spec) = &m.spec else { return };
    let cluster = m.status.as_ref().and_then(|s| s.pinned_cluster_id.clone()).unwrap_or_else(|| "-".into());
    out!(
        "{:<24} {:>4} {:<10} {:<8} {:<10} {}",
        spec.id,
        spec.generation,
        state_name(m.status.as_ref()),
        spec.interval,
        cluster,
        spec.bootstrap.join(",")
    );
}

fn print_info_detail(m: &pb::MonitorInfo) {
    let Some(s) = &m.spec else { return };
    out!("id:          {}", s.id);
    out!("generation:  {}", s.generation);
    out!("bootstrap:   {}", s.bootstrap.join(", "));
    out!("interval:    {}   timeout: {}   lag history: {}", s.interval, s.timeout, s.lag_history);
    out!("client id:   {}   group metrics: per {}", s.client_id, s.group_metrics);
    for (name, v) in [
        ("topics in", &s.topic_include),
        ("topics out", &s.topic_exclude),
        ("groups in", &s.group_include),
        ("groups out", &s.group_exclude),
        ("expect id", &s.expected_cluster_id),
    ] {
        if let Some(v) = v {
            out!("{name:<12} {v}");
        }
    }
    if let Some(sasl) = &s.sasl {
        out!(
            "sasl:        {} user={} password={}",
            sasl.mechanism,
            sasl.username,
            if sasl.password_set { "(set)" } else { "(not set)" }
        );
        if !sasl.token_endpoint.is_empty() {
            out!("token from:  {} scope={:?}", sasl.token_endpoint, sasl.scope);
        }
        if !sasl.aws_region.is_empty() {
            out!("aws region:  {}", sasl.aws_region);
        }
    }
    if let Some(tls) = &s.tls {
        out!("tls:         on ca={:?} insecure_skip_verify={}", tls.ca_file, tls.insecure_skip_verify);
    }
    if let Some(st) = &m.status {
        out!("state:       {}", state_name(Some(st)));
        if let Some(r) = &st.reason {
            out!("reason:      {r}");
        }
        if let Some(c) = &st.pinned_cluster_id {
            out!("cluster id:  {c}");
        }
        out!("restarts:    {}   consecutive failures: {}", st.restarts, st.consecutive_failures);
    }
}

fn info_json(m: &pb::MonitorInfo) -> serde_json::Value {
    let s = m.spec.clone().unwrap_or_default();
    serde_json::json!({
        "id": s.id, "generation": s.generation, "bootstrap": s.bootstrap, "interval": s.interval, "timeout": s.timeout,
        "lag_history": s.lag_history,
        "topic_include": s.topic_include, "topic_exclude": s.topic_exclude,
        "group_include": s.group_include, "group_exclude": s.group_exclude,
        "expected_cluster_id": s.expected_cluster_id,
        "sasl": s.sasl.map(|x| serde_json::json!({"mechanism": x.mechanism, "username": x.username, "password_set": x.password_set,
            "token_endpoint": x.token_endpoint, "scope": x.scope, "extensions": x.extensions, "ca_file": x.ca_file,
            "aws_region": x.aws_region})),
        "tls": s.tls.map(|t| serde_json::json!({"ca_file": t.ca_file, "cert_file": t.cert_file, "key_file": t.key_file, "insecure_skip_verify": t.insecure_skip_verify})),
        "labels": s.labels,
        "state": state_name(m.status.as_ref()),
        "reason": m.status.as_ref().and_then(|x| x.reason.clone()),
        "cluster_id": m.status.as_ref().and_then(|x| x.pinned_cluster_id.clone()),
    })
}

fn result_json(r: &pb::MonitorResult) -> serde_json::Value {
    serde_json::json!({
        "monitor": r.monitor_id,
        "generation": r.generation,
        "state": state_name(r.status.as_ref()),
        "error": r.error.as_ref().map(|e| serde_json::json!({"kind": e.kind, "message": e.message})),
        "snapshot": r.snapshot.as_ref().map(snapshot_json),
    })
}

fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    serde_json::json!({
        "cluster_id": s.cluster_id,
        "controller_id": s.controller_id,
        "collected_at_ms": s.collected_at_ms,
        "duration_ms": s.duration_ms,
        "warnings": s.warnings,
        "notes": s.notes,
        "broker_errors": s.broker_errors.iter().map(|e| serde_json::json!({"broker": e.broker, "kind": e.kind, "message": e.message})).collect::<Vec<_>>(),
        "brokers": s.brokers.iter().map(|b| serde_json::json!({"id": b.id, "host": b.host, "port": b.port, "rack": b.rack})).collect::<Vec<_>>(),
        "topics": s.topics.iter().map(|t| serde_json::json!({
            "name": t.name,
            "partitions": t.partitions.iter().map(|p| serde_json::json!({
                "partition": p.partition, "leader": p.leader, "replicas": p.replicas, "isr": p.isr,
                "earliest": p.earliest, "latest": p.latest, "error": p.error})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(|g| serde_json::json!({
            "group_id": g.group_id, "state": g.state, "members": g.members, "coordinator": g.coordinator, "error": g.error,
            "description_unread": g.description_unread, "offsets_unread": g.offsets_unread,
            "protocol_type": g.protocol_type, "group_type": g.group_type,
            "offsets": g.offsets.iter().map(|o| serde_json::json!({
                "topic": o.topic, "partition": o.partition, "committed": o.committed, "lag": o.lag, "data_loss": o.data_loss,
                "ahead_of_log": o.ahead_of_log})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
    })
}

pub(crate) fn ago(ms: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    if ms == 0 {
        return "never".into();
    }
    format!("{:.1}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

fn print_result(r: &pb::MonitorResult) {
    out!("== {} (generation {}): {}", r.monitor_id, r.generation, state_name(r.status.as_ref()));
    if let Some(e) = &r.error {
        out!("   latest attempt {} failed ({}): {}", ago(r.attempted_at_ms), e.kind, e.message);
    }
    match &r.snapshot {
        Some(s) if r.error.is_none() => print_snapshot(s),
        Some(s) => out!("   last good snapshot from {} (cluster {})", ago(s.collected_at_ms), s.cluster_id),
        None => out!("   no snapshot yet"),
    }
}

fn print_snapshot(s: &pb::Snapshot) {
    let partitions: usize = s.topics.iter().map(|t| t.partitions.len()).sum();
    out!(
        "   cluster {}  controller {}  brokers {}  topics {}  partitions {}  groups {}  (collected {} in {} ms)",
        s.cluster_id,
        s.controller_id.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        s.brokers.len(),
        s.topics.len(),
        partitions,
        s.groups.len(),
        ago(s.collected_at_ms),
        s.duration_ms
    );
    // A partial collection says what is missing, and from which broker.
    let missing_partitions =
        s.topics.iter().flat_map(|t| &t.partitions).filter(|p| p.leader.is_some() && p.latest.is_none()).count();
    let missing_groups = s.groups.iter().filter(|g| g.description_unread || g.offsets_unread).count();
    if !s.broker_errors.is_empty() || missing_partitions > 0 || missing_groups > 0 {
        out!(
            "   PARTIAL: {missing_partitions} partition(s) and {missing_groups} group(s) not read this cycle (no series for them)"
        );
    }
    for e in &s.broker_errors {
        out!("   broker {} unreachable ({}): {}", e.broker, e.kind, e.message);
    }
    for w in &s.warnings {
        out!("   warning: {w}");
    }
    for n in &s.notes {
        out!("   note: {n}");
    }
    if !s.topics.is_empty() {
        out!(
            "   {:<32} {:>9} {:>12} {:>12} {:>6} {:>7}",
            "TOPIC",
            "PARTITION",
            "OLDEST",
            "LATEST",
            "LEADER",
            "ISR/REP"
        );
        for t in &s.topics {
            for p in &t.partitions {
                let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
                out!(
                    "   {:<32} {:>9} {:>12} {:>12} {:>6} {:>7}",
                    t.name,
                    p.partition,
                    opt(p.earliest),
                    opt(p.latest),
                    p.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
                    format!("{}/{}", p.isr.len(), p.replicas.len())
                );
            }
        }
    }
    if !s.groups.is_empty() {
        out!(
            "   {:<32} {:<20} {:>7} {:<32} {:>10} {:>12} {:<7}",
            "GROUP",
            "STATE",
            "MEMBERS",
            "TOPIC",
            "LAG",
            "LAG TIME",
            "VERDICT"
        );
        for g in &s.groups {
            // Per topic: summed lag, the largest lag in seconds (">=" when it
            // is only a lower bound), and the worst partition verdict.
            let mut by_topic: BTreeMap<&str, TopicRow> = BTreeMap::new();
            for o in &g.offsets {
                let e = by_topic.entry(&o.topic).or_insert((Some(0), None, ""));
                // Unknown lag (its leader unread) makes the sum unknown, not smaller.
                e.0 = match (e.0, o.lag) {
                    (Some(sum), Some(lag)) => Some(sum.saturating_add(lag)),
                    _ => None,
                };
                if let Some(ms) = o.lag_ms {
                    if e.1.is_none_or(|(m, _)| ms > m) {
                        e.1 = Some((ms, o.lag_ms_is_lower_bound));
                    }
                }
                if verdict_rank(&o.verdict) > verdict_rank(e.2) {
                    e.2 = &o.verdict;
                }
            }
            let group_verdict = if g.verdict.is_empty() { "-" } else { g.verdict.as_str() };
            // What could not be read is said, never shown as a value.
            let (state, members) = if g.description_unread {
                ("unread".to_string(), "?".to_string())
            } else {
                (g.state.clone(), g.members.to_string())
            };
            if by_topic.is_empty() {
                let topic = if g.offsets_unread { "(offsets unread)" } else { "-" };
                out!(
                    "   {:<32} {:<20} {:>7} {:<32} {:>10} {:>12} {:<7}",
                    g.group_id,
                    state,
                    members,
                    topic,
                    "-",
                    "-",
                    group_verdict
                );
            }
            for (topic, (lag, time, verdict)) in by_topic {
                let time = match time {
                    None => "-".to_string(),
                    Some((ms, bound)) => format!(
                        "{}{}",
                        if bound { ">=" } else { "" },
                        humantime::format_duration(std::time::Duration::from_secs(ms.div_ceil(1000)))
                    ),
                };
                let verdict = if verdict.is_empty() { "-" } else { verdict };
                let lag = lag.map_or_else(|| "?".to_string(), |l| l.to_string());
                out!(
                    "   {:<32} {:<20} {:>7} {:<32} {:>10} {:>12} {:<7}",
                    g.group_id,
                    state,
                    members,
                    topic,
                    lag,
                    time,
                    verdict
                );
            }
            if let Some(e) = g.error.as_deref().filter(|_| g.description_unread || g.offsets_unread) {
                out!("     {}: {e}", g.group_id);
            }
        }
    }
}

/// A group's row per topic: summed lag, largest lag time in ms (and whether
/// it is a lower bound), worst verdict.
type TopicRow<'a> = (Option<i64>, Option<(u64, bool)>, &'a str);

/// Order of Burrow's partition verdicts, worst last.
fn verdict_rank(v: &str) -> u8 {
    match v {
        "OK" => 1,
        "WARN" => 2,
        "STALL" => 3,
        "STOP" => 4,
        "REWIND" => 5,
        _ => 0,
    }
}
