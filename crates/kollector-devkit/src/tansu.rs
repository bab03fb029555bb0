//! tansu 0.6.0 brokers as child processes: a real Kafka-protocol broker with
//! consumer groups and admin APIs, single node (node id 111), memory storage.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{find_executable, free_port, DevError};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running tansu broker, killed (SIGKILL) and reaped on drop.
pub struct TansuBroker {
    child: Option<Child>,
    port: u16,
    cluster_id: String,
}

impl TansuBroker {
    /// Starts a broker with `cluster_id` on a free port; panics on failure (tests).
    pub fn start(cluster_id: &str) -> TansuBroker {
        Self::start_on_port(cluster_id, free_port())
    }

    /// Starts a broker on a given port, e.g. to replace a killed broker with
    /// another cluster at the same address; panics on failure (tests).
    pub fn start_on_port(cluster_id: &str, port: u16) -> TansuBroker {
        match Self::try_start(None, cluster_id, port) {
            Ok(b) => b,
            Err(e) => panic!("tansu {cluster_id} on port {port}: {e}"),
        }
    }

    /// Starts `tansu` (found on PATH or in ~/.cargo/bin unless given) and
    /// waits until it accepts TCP connections.
    pub fn try_start(tansu: Option<PathBuf>, cluster_id: &str, port: u16) -> Result<TansuBroker, DevError> {
        Self::try_start_advertising(tansu, cluster_id, port, port)
    }

    /// A broker listening on `port` that tells clients to connect to
    /// `advertised` instead: for a TLS or SASL proxy in front of it, so every
    /// connection a client makes after bootstrap goes through the proxy too.
    pub fn start_advertising(cluster_id: &str, port: u16, advertised: u16) -> TansuBroker {
        match Self::try_start_advertising(None, cluster_id, port, advertised) {
            Ok(b) => b,
            Err(e) => panic!("tansu {cluster_id} on port {port}: {e}"),
        }
    }

    fn try_start_advertising(
        tansu: Option<PathBuf>,
        cluster_id: &str,
        port: u16,
        advertised: u16,
    ) -> Result<TansuBroker, DevError> {
        let bin = tansu.or_else(|| find_executable("tansu")).ok_or(DevError::TansuNotInstalled)?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .arg("broker")
            .arg(format!("--cluster-id={cluster_id}"))
            .arg(format!("--listener-url={url}"))
            .arg(format!("--advertised-listener-url=tcp://127.0.0.1:{advertised}"))
            .arg("--storage-engine=memory://tansu/")
            // tansu loads any .env it finds; run it where there is none.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| DevError::Spawn { what: bin.display().to_string(), source })?;
        let mut broker = TansuBroker { child: Some(child), port, cluster_id: cluster_id.to_string() };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = broker.child.as_mut().map(|c| c.try_wait()) {
                return Err(DevError::NotReady(format!("tansu exited early with {status}")));
            }
            if Instant::now() > deadline {
                return Err(DevError::NotReady(format!("not listening on port {port} after {START_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
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
