//! `kollector`: the one binary. A thin shell over the library crates:
//! argument parsing, wiring, and output formatting live here; behaviour lives
//! in `kollector-collector` (monitors), `kollector-manager` (API) and
//! `kollector-kafka` (collection).

mod demo;
mod http;
mod monitor_cli;
mod standalone;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A collector for Kafka cluster metrics: offsets, lag, partitions, groups.
#[derive(Parser)]
#[command(name = "kollector", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run manager logic and one collector in one process, without etcd.
    /// Monitors come from the config file and the gRPC API; state is in memory.
    Standalone {
        /// TOML config file ([http], [grpc], [[monitors]]); see the README.
        #[arg(long, short = 'c', env = "KOLLECTOR_CONFIG")]
        config: PathBuf,
        /// Override [http].listen (serves /metrics and /healthz).
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// Override [grpc].listen (serves ManagerService).
        #[arg(long)]
        grpc_listen: Option<SocketAddr>,
    },
    /// Create, change, inspect and test monitors on a running node.
    Monitor(Box<monitor_cli::MonitorArgs>),
    /// Start two local tansu Kafka brokers with live traffic and a lagging
    /// consumer group, and run standalone mode against them.
    Demo(demo::DemoArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KOLLECTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Standalone { config, http_listen, grpc_listen } => {
                standalone::run(standalone::Options { config, http_listen, grpc_listen }).await
            }
            Command::Monitor(args) => monitor_cli::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
