//! tansu 0.6.0 brokers as child processes: a real Kafka-protocol broker with
//! consumer groups and admin APIs, single node (node id 111), memory storage.
//! Installed by `scripts/install-test-deps.sh`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{find_executable, free_port, poll::wait_for};

/// A running tansu broker, killed (SIGKILL) and reaped on drop.
pub struct TansuBroker {
    child: Option<Child>,
    port: u16,
    cluster_id: String,
}

impl TansuBroker {
    /// Starts a broker with `cluster_id` on a free port and waits until it
    /// accepts TCP connections.
    pub fn start(cluster_id: &str) -> TansuBroker {
        Self::start_on_port(cluster_id, free_port())
    }

    /// Starts a broker on a given port: used to replace a killed broker with
    /// another cluster at the same address (the identity-guard test).
    pub fn start_on_port(cluster_id: &str, port: u16) -> TansuBroker {
        let bin = find_executable("tansu")
            .unwrap_or_else(|| panic!("tansu not found on PATH or in ~/.cargo/bin: run scripts/install-test-deps.sh"));
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg("broker")
            .arg(format!("--cluster-id={cluster_id}"))
            .arg(format!("--listener-url={url}"))
            .arg(format!("--advertised-listener-url={url}"))
            .arg("--storage-engine=memory://tansu/")
            // tansu loads any .env it finds; run it where there is none.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let mut broker = TansuBroker { child: Some(child), port, cluster_id: cluster_id.to_string() };
        wait_for(&format!("tansu {cluster_id} to listen on {port}"), Duration::from_secs(20), || {
            if let Some(child) = broker.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("tansu exited early with {status}");
                }
            }
            TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
        });
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// `127.0.0.1:PORT`, for a monitor's bootstrap list or an rdkafka client.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs the broker and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
