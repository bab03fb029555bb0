//! Test harness for kollector's end-to-end tests.
//!
//! Everything a test needs runs as a real process on a free 127.0.0.1 port the
//! harness picks, and is killed when the handle drops: tansu brokers
//! ([`tansu`], from `kollector-devkit`, shared with `kollector demo`),
//! kollector itself ([`kollector`]). Helpers put known data into
//! brokers ([`kafka_fixtures`]), read what the OS says about a process's TCP
//! connections ([`net`]) and its CPU time, sockets and threads
//! ([`proc_stat`], for the cost benches; [`counting_alloc`] counts Rust's
//! heap), count Kafka requests on the broker
//! side ([`request_counter`]), parse `/metrics` ([`metrics`]) and poll for a
//! condition with a deadline instead of sleeping ([`poll`]). Multi-broker
//! faults with group APIs (one broker refusing, stuck or throttled, one
//! coordinator loading) come from a virtual cluster of N brokers in front of
//! one tansu ([`virtual_cluster`]). The control plane alone is driven at
//! scale by simulated collectors ([`sim_collector`]) that speak the real
//! collector protocol without Kafka.

pub mod aws_msk;
pub mod cluster;
pub mod counting_alloc;
pub mod etcd;
pub mod kafka_security;
pub mod kollector;
pub mod metrics;
pub mod net;
pub mod oidc;
pub mod packet_filter;
pub mod poll;
pub mod proc_stat;
pub mod request_counter;
pub mod scale;
pub mod sim_collector;
pub mod virtual_cluster;

pub use kollector_devkit::fixtures as kafka_fixtures;
pub use kollector_devkit::{find_executable, free_port, tansu};

/// Sends `sig` to process `pid` (SIGSTOP/SIGCONT to freeze and thaw, SIGTERM
/// for a clean stop).
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; callers pass their own children's pids.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
