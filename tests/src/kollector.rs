//! kollector itself as a child process, on free ports, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kollector_proto::v1 as pb;
use kollector_proto::v1::manager_service_client::ManagerServiceClient;
use tonic::transport::Channel;

use crate::free_port;
use crate::metrics::Metrics;
use crate::poll::wait_for;

/// The `kollector` binary of this workspace: `$KOLLECTOR_BIN`, or the one
/// cargo built next to the test executable (`target/<profile>/kollector`).
pub fn kollector_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KOLLECTOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/kollector
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = profile_dir.join("kollector");
    assert!(bin.is_file(), "{} not found: run `cargo build -p kollector` first", bin.display());
    bin
}

/// Runs `kollector` with `args` to completion and returns (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    run_cli_with_env(args, &[])
}

/// Like [`run_cli`], with environment variables set (and no
/// `KOLLECTOR_TOKEN` inherited from the caller's environment).
pub fn run_cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(kollector_bin())
        .args(args)
        .env("KOLLECTOR_LOG", "warn")
        .env_remove("KOLLECTOR_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run kollector");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A plain HTTP/1.0 GET of `path` on `address` (host:port): the status code
/// and the body. Enough for `/metrics`, `/sd` and Prometheus' API.
pub fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(address).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no HTTP status")?;
    Ok((code, body.to_string()))
}

pub struct KollectorProcess {
    child: Option<Child>,
    args: Vec<String>,
    /// Environment variables set for the process (besides the test's own).
    env: Vec<(String, String)>,
    pub grpc_port: u16,
    pub http_port: u16,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

/// The extra flags, plus `--insecure` unless they set up TLS (`--tls-ca…`):
/// most tests exercise coordination, not transport security.
fn insecure_unless_tls(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if !extra.iter().any(|a| a.starts_with("--tls-ca")) {
        v.push("--insecure".into());
    }
    v
}

impl KollectorProcess {
    /// Starts `kollector standalone` with a config file holding `monitors_toml`
    /// (zero or more `[[monitors]]` tables) and waits until `/healthz` answers.
    pub fn standalone(monitors_toml: &str) -> KollectorProcess {
        Self::standalone_with(monitors_toml, &[])
    }

    /// Like [`KollectorProcess::standalone`], with extra flags.
    pub fn standalone_with(monitors_toml: &str, extra: &[&str]) -> KollectorProcess {
        Self::standalone_with_env(monitors_toml, extra, &[])
    }

    /// Like [`KollectorProcess::standalone_with`], with `env` set for the
    /// process; a variable given an empty value is removed instead (so a
    /// test can keep the machine's own, e.g. `AWS_*`, out).
    pub fn standalone_with_env(monitors_toml: &str, extra: &[&str], env: &[(&str, &str)]) -> KollectorProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let (grpc_port, http_port) = (free_port(), free_port());
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc_port}\"\n\n{monitors_toml}\n"
        );
        let config_path = dir.path().join("kollector.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut args = vec!["standalone".to_string(), "--config".into(), config_path.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = KollectorProcess {
            child: None,
            grpc_port,
            http_port,
            _dir: dir,
            config_path,
            args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        p.launch();
        p
    }

    /// Starts `kollector manager` against `etcd` with a 3 s election TTL.
    pub fn manager(etcd: &str) -> KollectorProcess {
        Self::manager_with(etcd, &[])
    }

    /// Like [`KollectorProcess::manager`], with extra flags.
    pub fn manager_with(etcd: &str, extra: &[&str]) -> KollectorProcess {
        let mut p = Self::unlaunched(Self::manager_args(etcd, extra));
        p.launch();
        p
    }

    fn manager_args(etcd: &str, extra: &[&str]) -> (tempfile::TempDir, Vec<String>, u16, u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (grpc_port, http_port) = (free_port(), free_port());
        let args = vec![
            "manager".to_string(),
            format!("--etcd={etcd}"),
            format!("--grpc-listen=127.0.0.1:{grpc_port}"),
            format!("--http-listen=127.0.0.1:{http_port}"),
            "--election-ttl=3s".into(),
            "--reconcile-period=500ms".into(),
        ];
        let args: Vec<String> = args.into_iter().chain(insecure_unless_tls(extra)).collect();
        (dir, args, grpc_port, http_port)
    }

    /// Starts `kollector collector --id id` against `etcd` with a 3 s lease.
    pub fn collector(etcd: &str, id: &str) -> KollectorProcess {
        Self::collector_with(etcd, id, &[])
    }

    /// Like [`KollectorProcess::collector`], with extra flags (e.g. `--label`).
    pub fn collector_with(etcd: &str, id: &str, extra: &[&str]) -> KollectorProcess {
        Self::collector_ttl(etcd, id, Duration::from_secs(3), extra)
    }

    /// A collector with lease TTL `ttl` and extra flags.
    pub fn collector_ttl(etcd: &str, id: &str, ttl: Duration, extra: &[&str]) -> KollectorProcess {
        let mut p = Self::unlaunched(Self::collector_args(etcd, id, ttl, extra));
        p.launch();
        p
    }

    fn collector_args(
        etcd: &str,
        id: &str,
        ttl: Duration,
        extra: &[&str],
    ) -> (tempfile::TempDir, Vec<String>, u16, u16) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (grpc_port, http_port) = (free_port(), free_port());
        let args = vec![
            "collector".to_string(),
            format!("--etcd={etcd}"),
            format!("--id={id}"),
            format!("--grpc-listen=127.0.0.1:{grpc_port}"),
            format!("--http-listen=127.0.0.1:{http_port}"),
            format!("--lease-ttl={}s", ttl.as_secs().max(2)),
        ];
        let args: Vec<String> = args.into_iter().chain(insecure_unless_tls(extra)).collect();
        (dir, args, grpc_port, http_port)
    }

    /// Like [`KollectorProcess::manager_with`], with `env` set for the process.
    pub fn manager_with_env(etcd: &str, extra: &[&str], env: &[(&str, &str)]) -> KollectorProcess {
        let mut p = Self::unlaunched(Self::manager_args(etcd, extra));
        p.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.launch();
        p
    }

    /// Like [`KollectorProcess::collector_ttl`], with `env` set for the process.
    pub fn collector_with_env(
        etcd: &str,
        id: &str,
        ttl: Duration,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> KollectorProcess {
        let mut p = Self::unlaunched(Self::collector_args(etcd, id, ttl, extra));
        p.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        p.launch();
        p
    }

    fn unlaunched((dir, args, grpc_port, http_port): (tempfile::TempDir, Vec<String>, u16, u16)) -> KollectorProcess {
        let config_path = dir.path().to_path_buf();
        KollectorProcess { child: None, grpc_port, http_port, _dir: dir, config_path, args, env: Vec::new() }
    }

    /// Starts the process (with this handle's arguments, ports and files)
    /// and waits until `/healthz` answers.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("kollector.log"))
            .expect("log file");
        let mut command = Command::new(kollector_bin());
        // info unless the test's environment says otherwise.
        command.env("KOLLECTOR_LOG", "info");
        for (k, _) in self.env.iter().filter(|(_, v)| v.is_empty()) {
            command.env_remove(k);
        }
        let child = command
            .args(&self.args)
            .envs(self.env.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kollector");
        self.child = Some(child);
        let args = self.args.clone();
        wait_for("kollector /healthz", Duration::from_secs(30), || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("kollector {args:?} exited early with {status}; log:\n{}", self.log());
            }
            self.http_get("/healthz").map(|_| ())
        });
    }

    /// The latest result of each of this node's monitors, by id.
    pub async fn latest_by_id(&self) -> Result<std::collections::BTreeMap<String, pb::MonitorResult>, String> {
        let mut client = self.client().await;
        let latest = client.get_latest(pb::GetLatestRequest::default()).await.map_err(|e| e.to_string())?.into_inner();
        Ok(latest.results.into_iter().map(|r| (r.monitor_id.clone(), r)).collect())
    }

    /// Starts the same node again (same config, state file and ports), after
    /// it stopped or was killed.
    pub fn respawn(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGKILLs the process (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP), like a long GC pause.
    pub fn pause(&self) {
        crate::send_signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        crate::send_signal(self.pid(), libc::SIGCONT);
    }

    fn pid_or_zero(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("kollector.log")).unwrap_or_default()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A plain HTTP/1.0 GET, enough for `/metrics` and `/healthz`.
    pub fn http_get(&self, path: &str) -> Result<String, String> {
        match http_get(&format!("127.0.0.1:{}", self.http_port), path)? {
            (200, body) => Ok(body),
            (code, body) => Err(format!("unexpected response {code}: {body}")),
        }
    }

    pub fn metrics(&self) -> Metrics {
        let text = self.http_get("/metrics").expect("GET /metrics");
        Metrics::parse(&text).expect("parse /metrics")
    }

    /// A ManagerService client that accepts large answers (GetLatest of
    /// many monitors, or of one very large cluster).
    pub async fn client(&self) -> ManagerServiceClient<Channel> {
        ManagerServiceClient::connect(self.grpc_url())
            .await
            .expect("connect gRPC")
            .max_decoding_message_size(256 * 1024 * 1024)
    }

    /// Waits up to `timeout` for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        crate::send_signal(child.id(), libc::SIGTERM);
        child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for KollectorProcess {
    fn drop(&mut self) {
        // KOLLECTOR_TEST_LOGS=DIR keeps every process's log for a post-mortem.
        if let Some(dir) = std::env::var_os("KOLLECTOR_TEST_LOGS") {
            let name = format!("{}-{}.log", self.pid_or_zero(), std::process::id());
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(self._dir.path().join("kollector.log"), std::path::Path::new(&dir).join(name));
        }
        if self.child.is_some() {
            self.resume();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `[[monitors]]` table for a config file.
pub fn monitor_toml(id: &str, bootstrap: &str, interval: &str) -> String {
    format!("[[monitors]]\nid = \"{id}\"\nbootstrap = [\"{bootstrap}\"]\ninterval = \"{interval}\"\n")
}
