//! A real etcd (Debian's etcd-server, v3.4) as a child process on free
//! loopback ports with a private data directory, for coordination tests:
//! it can be SIGKILLed, paused (SIGSTOP/SIGCONT) and restarted on the same
//! data, and is killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{find_executable, free_port, poll::wait_for};

pub struct EtcdServer {
    child: Option<Child>,
    pub client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
    /// (CA, certificate, key): serve clients over TLS and require a client
    /// certificate signed by the CA (`--client-cert-auth`).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// More client ports, each serving the same etcd: a node given its own
    /// can be cut from etcd by the packet filter alone, the others not.
    pub extra_client_ports: Vec<u16>,
}

impl EtcdServer {
    /// Starts etcd and waits until it accepts client connections.
    pub fn start() -> EtcdServer {
        Self::launch(None, 0)
    }

    /// Starts etcd listening for clients on `extra` more ports as well
    /// ([`EtcdServer::endpoint_at`]).
    pub fn start_with_ports(extra: usize) -> EtcdServer {
        Self::launch(None, extra)
    }

    /// The endpoint of extra client port `i`.
    pub fn endpoint_at(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.extra_client_ports[i])
    }

    /// Starts etcd serving clients over mutual TLS only.
    pub fn start_tls(ca: &Path, cert: &Path, key: &Path) -> EtcdServer {
        Self::launch(Some((ca.to_path_buf(), cert.to_path_buf(), key.to_path_buf())), 0)
    }

    fn launch(tls: Option<(PathBuf, PathBuf, PathBuf)>, extra: usize) -> EtcdServer {
        let data = tempfile::tempdir().expect("etcd data dir");
        let mut server = EtcdServer {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data,
            tls,
            extra_client_ports: (0..extra).map(|_| free_port()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = find_executable("etcd").unwrap_or_else(|| panic!("etcd not found: run scripts/install-test-deps.sh"));
        let client = self.endpoint();
        let listen: Vec<String> = std::iter::once(client.clone())
            .chain(self.extra_client_ports.iter().map(|p| format!("http://127.0.0.1:{p}")))
            .collect();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(bin);
        if let Some((ca, cert, key)) = &self.tls {
            command
                .arg(format!("--trusted-ca-file={}", ca.display()))
                .arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={}", listen.join(",")))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let port = self.client_port;
        wait_for(&format!("etcd on port {port}"), Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited early with {status}");
            }
            TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.to_string())
        });
    }

    /// `http(s)://127.0.0.1:PORT`, as the `--etcd` flag takes it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("etcd running")
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        crate::send_signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        crate::send_signal(self.pid(), libc::SIGCONT);
    }

    /// SIGKILLs etcd and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A cold backup: etcd is stopped, its data directory copied, and it
    /// is started again on the same data.
    pub fn backup(&mut self) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("backup dir");
        self.kill();
        copy_dir(&self.data.path().join("etcd"), &copy.path().join("etcd"));
        self.spawn();
        copy
    }

    /// Restores `backup`: etcd is stopped, its data replaced by the
    /// backup's and started again, its revision back where it was then.
    pub fn restore(&mut self, backup: &tempfile::TempDir) {
        self.kill();
        let data = self.data.path().join("etcd");
        std::fs::remove_dir_all(&data).expect("remove etcd data");
        copy_dir(&backup.path().join("etcd"), &data);
        self.spawn();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {} failed", from.display(), to.display());
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}
