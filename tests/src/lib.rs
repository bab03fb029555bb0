//! Test harness for kollector's end-to-end tests.
//!
//! Everything a test needs runs as a real process on a free 127.0.0.1 port the
//! harness picks, and is killed when the handle drops: tansu brokers
//! ([`tansu`]), kollector itself ([`kollector`]). Helpers put known data into
//! brokers ([`kafka_fixtures`]), read what the OS says about a process's TCP
//! connections ([`net`]), parse `/metrics` ([`metrics`]) and poll for a
//! condition with a deadline instead of sleeping ([`poll`]).

pub mod kafka_fixtures;
pub mod kollector;
pub mod metrics;
pub mod net;
pub mod poll;
pub mod tansu;

/// A free TCP port on 127.0.0.1: bind port 0, read the port the OS chose, release it.
/// The tiny race with another process grabbing it is acceptable in tests; the
/// child's start-up check fails loudly if it happens.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Finds an executable on PATH or in cargo's bin directory (where
/// `scripts/install-test-deps.sh` installs tansu).
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
