//! `kollector demo`: standalone mode against something real, on a fresh machine.
//!
//! Starts two tansu brokers (real Kafka-protocol servers, in memory) on free
//! loopback ports with different cluster ids, creates topics, produces a
//! steady trickle of records, runs a consumer group per cluster that consumes
//! more slowly than the producer (so lag is visible), and runs standalone
//! kollector with one monitor per cluster. Everything stops on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use kollector_core::{MonitorInput, MonitorSpec};
use kollector_devkit::fixtures::{client_config, create_topic_async};
use kollector_devkit::free_port;
use kollector_devkit::tansu::TansuBroker;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::standalone::{shutdown_signal, ApiSecurity, Standalone};

#[derive(Args)]
pub struct DemoArgs {
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    http_listen: SocketAddr,
    /// Where to serve ManagerService (for `kollector monitor …`).
    #[arg(long, default_value = "127.0.0.1:7070")]
    grpc_listen: SocketAddr,
    /// Collection interval of the demo monitors.
    #[arg(long, default_value = "5s")]
    interval: String,
    /// The tansu binary (default: on PATH or in ~/.cargo/bin).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Stop by itself after this long (e.g. "60s"); runs until Ctrl-C when absent.
    #[arg(long)]
    duration: Option<String>,
    /// Only make traffic against this existing broker (topic `orders` with a
    /// producer and a lagging group `billing`): no tansu, no kollector. For
    /// the Compose file and other setups that run kollector elsewhere.
    #[arg(long, value_name = "HOST:PORT")]
    traffic_only: Option<String>,
}

/// Produces one record per request (tansu reports the high watermark per
/// batch) every `every`, round-robin over partitions.
fn traffic(
    bootstrap: String,
    topics: Vec<(&'static str, i32)>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let producer: BaseProducer =
        client_config(&bootstrap).set("linger.ms", "0").set("batch.num.messages", "1").create()?;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for (topic, partitions) in &topics {
            let partition = (n % *partitions as u64) as i32;
            let payload = format!("demo record {n}");
            let _ = producer.send(BaseRecord::<(), _>::to(topic).partition(partition).payload(&payload));
            let _ = producer.flush(Duration::from_secs(5));
        }
        n += 1;
        std::thread::sleep(every);
    }
    Ok(())
}

/// A consumer group member that reads at most one record per `every`, slower
/// than the producer, and commits automatically: its lag grows visibly.
fn slow_consumer(
    bootstrap: String,
    group: &'static str,
    topic: &'static str,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = client_config(&bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    while !stop.load(Ordering::Relaxed) {
        let _ = consumer.poll(Duration::from_millis(200));
        std::thread::sleep(every);
    }
    Ok(())
}

fn monitor(id: &str, bootstrap: &str, interval: &str) -> anyhow::Result<MonitorSpec> {
    MonitorInput {
        id: id.into(),
        bootstrap: vec![bootstrap.into()],
        interval: Some(interval.into()),
        ..Default::default()
    }
    .validate(1)
    .map_err(|e| anyhow!("demo monitor {id}: {e}"))
}

/// `--traffic-only`: the producer and the lagging group against `bootstrap`.
async fn traffic_only(bootstrap: String, duration: Option<String>) -> anyhow::Result<()> {
    create_topic_async(&bootstrap, "orders", 3).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, s2, b2) = (stop.clone(), stop.clone(), bootstrap.clone());
    let producer = std::thread::spawn(move || traffic(bootstrap, vec![("orders", 3)], Duration::from_millis(200), s1));
    let consumer = std::thread::spawn(move || slow_consumer(b2, "billing", "orders", Duration::from_millis(500), s2));
    eprintln!("demo: producing to topic orders; group billing consumes slower and lags. Ctrl-C stops.");
    let limit = duration.map(|d| humantime::parse_duration(&d)).transpose().context("--duration")?;
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = async { match limit { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    stop.store(true, Ordering::Relaxed);
    for w in [producer, consumer] {
        if let Ok(Err(e)) = w.join() {
            eprintln!("demo: worker ended with: {e:#}");
        }
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(bootstrap) = args.traffic_only {
        return traffic_only(bootstrap, args.duration).await;
    }
    let orders = TansuBroker::try_start(args.tansu.clone(), "demo-orders", free_port())?;
    let payments = TansuBroker::try_start(args.tansu, "demo-payments", free_port())?;
    for (broker, topic, partitions) in [(&orders, "orders", 3), (&orders, "orders-dlq", 1), (&payments, "payments", 2)]
    {
        create_topic_async(&broker.bootstrap(), topic, partitions).await?;
    }
    eprintln!(
        "demo: tansu brokers up: demo-orders at {}, demo-payments at {}",
        orders.bootstrap(),
        payments.bootstrap()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (bootstrap, topics, group, topic) in [
        (orders.bootstrap(), vec![("orders", 3), ("orders-dlq", 1)], "billing", "orders"),
        (payments.bootstrap(), vec![("payments", 2)], "ledger", "payments"),
    ] {
        let (s1, s2, b2) = (stop.clone(), stop.clone(), bootstrap.clone());
        workers.push(std::thread::spawn(move || traffic(bootstrap, topics, Duration::from_millis(200), s1)));
        workers.push(std::thread::spawn(move || slow_consumer(b2, group, topic, Duration::from_millis(500), s2)));
    }

    let monitors = vec![
        monitor("orders", &orders.bootstrap(), &args.interval)?,
        monitor("payments", &payments.bootstrap(), &args.interval)?,
    ];
    let desired = kollector_manager::EmbeddedStore::in_memory(monitors);
    if !args.grpc_listen.ip().is_loopback() {
        anyhow::bail!("the demo serves an open API: --grpc-listen must be a loopback address");
    }
    let node = Standalone::start(args.grpc_listen, args.http_listen, desired, ApiSecurity::loopback_demo(), Vec::new())
        .await?;
    let server = format!("http://{}", node.grpc_addr);
    eprintln!("demo: kollector standalone is collecting every {}.", args.interval);
    eprintln!("demo:   metrics:  curl -s http://{}/metrics | grep -E '^kafka_(consumergroup_lag|topic_partition_current_offset)'", node.http_addr);
    eprintln!("demo:   snapshot: cargo run -q -p kollector -- monitor --server {server} show orders");
    eprintln!("demo: press Ctrl-C to stop.");

    let limit = args.duration.map(|d| humantime::parse_duration(&d)).transpose().context("--duration")?;
    let store = node.node.store().clone();
    let report = async {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            for e in store.all() {
                match e.current_snapshot() {
                    Some(s) => {
                        let latest: i64 = s.topics.iter().flat_map(|t| &t.partitions).filter_map(|p| p.latest).sum();
                        let lags: Vec<String> = s
                            .groups
                            .iter()
                            .map(|g| {
                                format!("{} lag {}", g.group_id, g.offsets.iter().filter_map(|o| o.lag).sum::<i64>())
                            })
                            .collect();
                        eprintln!(
                            "demo: {:<9} cluster {:<14} {} partitions, {} records, {}",
                            e.monitor,
                            s.cluster_id,
                            s.partition_count(),
                            latest,
                            if lags.is_empty() { "no groups yet".to_string() } else { lags.join(", ") }
                        );
                    }
                    None => eprintln!(
                        "demo: {:<9} {}",
                        e.monitor,
                        e.status.reason.as_deref().unwrap_or(e.status.state.as_str())
                    ),
                }
            }
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = report => {}
        _ = async { match limit { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {}
    }
    eprintln!("demo: stopping");
    node.stop().await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        if let Ok(Err(e)) = w.join() {
            eprintln!("demo: worker ended with: {e:#}");
        }
    }
    drop((orders, payments));
    Ok(())
}
