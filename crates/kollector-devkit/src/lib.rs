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

/// A free TCP port on 127.0.0.1 for a server a test starts.
///
/// Picked at random below Linux's ephemeral range (32768-60999) and checked
/// by binding it: a port the OS hands out for `bind(0)` or an outgoing
/// connection, which every concurrently running test makes by the hundred,
/// can then never be the one a test is about to listen on. (Taking a port
/// from `bind(0)` and releasing it lost that race now and then: another
/// test's process got the same port back before the server bound it.) Two
/// tests picking the same port at random remains possible, at about 1 in
/// 12,000 per pair; the server's start-up check fails loudly if it happens.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
