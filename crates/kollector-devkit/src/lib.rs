//! Local Kafka-protocol brokers for `kollector demo` and the tests.
//!
//! [`tansu::TansuBroker`] runs a tansu 0.6.0 broker (real Kafka protocol,
//! memory storage; installed by `scripts/install-test-deps.sh`) as a child
//! process on a free loopback port and kills it on drop. [`fixtures`] puts
//! known data into a broker: topics, an exact number of records, committed
//! group offsets. Each operation has a `try_` form returning an error (the
//! demo) and a panicking form (tests, where a failed set-up is a failed test).

pub mod fixtures;
pub mod tansu;

/// Why a local broker or fixture could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("tansu not found on PATH or in ~/.cargo/bin: run scripts/install-test-deps.sh")]
    TansuNotInstalled,
    #[error("starting {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{0}")]
    NotReady(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

/// A free TCP port on 127.0.0.1: bind port 0, read the port the OS chose,
/// release it. The small race with another process taking it is acceptable
/// here; the broker's start-up check fails loudly if it happens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Finds an executable on PATH or in cargo's bin directory.
pub fn find_executable(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    if let Some(home) = cargo_home {
        dirs.push(home.join("bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}
