//! `kollector`: the one binary. A thin shell over the library crates:
//! argument parsing, wiring, and output formatting live here; behaviour lives
//! in `kollector-collector` (monitors), `kollector-manager` (API) and
//! `kollector-kafka` (collection).

/// `println!` for the CLI's output: a reader that went away (`kollector
/// status | head`) ends the process quietly with success, as other Unix
/// tools do, instead of a panic; any other write error ends it with 1.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        crate::cli_output::done(writeln!(std::io::stdout().lock(), $($t)*))
    }};
}

mod cli_output {
    /// Ends the process if writing to stdout failed.
    pub fn done(r: std::io::Result<()>) {
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => {
                eprintln!("error: writing the output: {e}");
                std::process::exit(1);
            }
        }
    }
}

mod cluster_cli;
mod collector_node;
mod demo;
mod etcd_args;
mod http;
mod manager_node;
mod monitor_cli;
mod security_args;
mod security_cli;
mod stale_args;
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
    /// Monitors come from the config file and the gRPC API; API changes are
    /// kept in a state file and survive restarts.
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
        /// Where monitors created, changed or deleted through the API are kept
        /// (written atomically; readable by the owner only). Default: next to
        /// the config, e.g. kollector.toml -> kollector.state.json.
        #[arg(long, env = "KOLLECTOR_STATE")]
        state: Option<PathBuf>,
        #[command(flatten)]
        security: standalone::StandaloneSecurityArgs,
        #[command(flatten)]
        stale: stale_args::StaleArgs,
    },
    /// Cluster mode: run a manager (any number; one leads through etcd).
    Manager(Box<manager_node::ManagerArgs>),
    /// Cluster mode: run a collector node (registers in etcd under a lease).
    Collector(Box<collector_node::CollectorArgs>),
    /// Create, change, inspect and test monitors on a running node.
    Monitor(Box<monitor_cli::MonitorArgs>),
    /// Cluster mode: list collectors, or drain one before maintenance.
    Collectors(cluster_cli::CollectorsArgs),
    /// Cluster mode: leader, collectors with their load, monitors with owner, epoch and health.
    Status(cluster_cli::StatusArgs),
    /// Make a cluster CA and node certificates for a test or small cluster.
    Certs(security_cli::CertsArgs),
    /// Make API tokens (stored hashed in a tokens file).
    Token(security_cli::TokenArgs),
    /// Make or rotate the key that seals secrets at rest.
    SecretKey(security_cli::SecretKeyArgs),
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
            Command::Standalone { config, http_listen, grpc_listen, state, security, stale } => {
                let stale = stale.stale_after_intervals;
                standalone::run(standalone::Options { config, http_listen, grpc_listen, state, security, stale }).await
            }
            Command::Certs(args) => security_cli::certs(args),
            Command::Token(args) => security_cli::token(args),
            Command::SecretKey(args) => security_cli::secret_key(args),
            Command::Monitor(args) => monitor_cli::run(*args).await,
            Command::Manager(args) => manager_node::run(*args).await,
            Command::Collector(args) => collector_node::run(*args).await,
            Command::Collectors(args) => cluster_cli::collectors(args).await,
            Command::Status(args) => cluster_cli::status(args).await,
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
