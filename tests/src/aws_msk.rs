//! AWS MSK IAM for tests, without AWS:
//!
//! - [`ContainerCredentials`]: the endpoint ECS and EKS Pod Identity give a
//!   container (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, with the
//!   authorization token the agent hands out), serving temporary
//!   credentials that expire and that the test can rotate;
//! - [`MskIamVerifier`]: checks each token the way an MSK broker does, with
//!   botocore's SigV4 (`tests/msk_iam_verify.py`, in the test virtualenv
//!   made by `scripts/install-test-deps.sh`), against the credentials the
//!   test knows, so kollector's signer (the aws-sigv4 crate) is checked by
//!   an implementation that shares no code with it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// One set of temporary AWS credentials.
#[derive(Clone, Debug)]
pub struct AwsCredentials {
    pub access_key: String,
    pub secret: String,
    pub session_token: Option<String>,
    /// None for long-term keys.
    pub expires: Option<SystemTime>,
}

impl AwsCredentials {
    /// Random temporary credentials expiring `after` from now
    /// (in the past for a negative `after`… use [`AwsCredentials::expired`]).
    pub fn temporary(after: Duration) -> AwsCredentials {
        let id = rand::random::<u64>();
        AwsCredentials {
            access_key: format!("ASIA{id:016X}"),
            secret: format!("secret/{:032x}+", rand::random::<u128>()),
            session_token: Some(format!("session/{:032x}+token=", rand::random::<u128>())),
            expires: Some(SystemTime::now() + after),
        }
    }

    /// Credentials that expired a minute ago.
    pub fn expired() -> AwsCredentials {
        AwsCredentials { expires: Some(SystemTime::now() - Duration::from_secs(60)), ..Self::temporary(Duration::ZERO) }
    }

    /// Long-term keys (no session token, no expiry), as in `AWS_ACCESS_KEY_ID`.
    pub fn long_term() -> AwsCredentials {
        AwsCredentials { session_token: None, expires: None, ..Self::temporary(Duration::ZERO) }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Every credential set the test has handed out, as the verifier reads them.
#[derive(Clone)]
pub struct KnownKeys {
    path: PathBuf,
    keys: Arc<Mutex<serde_json::Map<String, serde_json::Value>>>,
}

impl KnownKeys {
    pub fn new(dir: &Path) -> KnownKeys {
        let k = KnownKeys { path: dir.join("aws-keys.json"), keys: Arc::default() };
        k.write();
        k
    }

    pub fn add(&self, c: &AwsCredentials) {
        let expires = c.expires.map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
        self.keys
            .lock()
            .unwrap()
            .insert(c.access_key.clone(), json!({"secret": c.secret, "token": c.session_token, "expires": expires}));
        self.write();
    }

    fn write(&self) {
        let text = serde_json::Value::Object(self.keys.lock().unwrap().clone()).to_string();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write keys");
        std::fs::rename(&tmp, &self.path).expect("rename keys");
    }
}

struct Served {
    current: Mutex<AwsCredentials>,
    authorization: String,
    asked: AtomicU64,
}

/// The container credentials endpoint.
pub struct ContainerCredentials {
    pub url: String,
    /// The file holding the authorization token (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub token_file: PathBuf,
    served: Arc<Served>,
    keys: KnownKeys,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ContainerCredentials {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn credentials(State(s): State<Arc<Served>>, headers: HeaderMap) -> (StatusCode, Json<serde_json::Value>) {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if given != s.authorization {
        return (StatusCode::FORBIDDEN, Json(json!({"message": "bad authorization token"})));
    }
    s.asked.fetch_add(1, Ordering::SeqCst);
    let c = s.current.lock().unwrap().clone();
    let mut body = json!({"AccessKeyId": c.access_key, "SecretAccessKey": c.secret, "RoleArn": "arn:aws:iam::111122223333:role/kollector"});
    if let Some(t) = &c.session_token {
        body["Token"] = json!(t);
    }
    if let Some(e) = c.expires {
        body["Expiration"] = json!(rfc3339(e));
    }
    (StatusCode::OK, Json(body))
}

impl ContainerCredentials {
    /// Serves `first`; every set served is added to `keys`.
    pub fn start(dir: &Path, first: AwsCredentials, keys: &KnownKeys) -> ContainerCredentials {
        let authorization = format!("agent-token-{:x}", rand::random::<u64>());
        let token_file = dir.join("container-authorization-token");
        std::fs::write(&token_file, &authorization).expect("token file");
        keys.add(&first);
        let served = Arc::new(Served { current: Mutex::new(first), authorization, asked: AtomicU64::new(0) });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/v2/credentials/kollector", listener.local_addr().expect("addr"));
        let app = Router::new().route("/v2/credentials/kollector", get(credentials)).with_state(served.clone());
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ContainerCredentials { url, token_file, served, keys: keys.clone(), task }
    }

    /// Serves `next` from now on (the old set stays valid until it expires).
    pub fn rotate(&self, next: AwsCredentials) {
        self.keys.add(&next);
        *self.served.current.lock().unwrap() = next;
    }

    /// Times the endpoint answered.
    pub fn asked(&self) -> u64 {
        self.served.asked.load(Ordering::SeqCst)
    }

    /// The environment that points the AWS default chain here, and only here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = isolated_aws_env();
        env.push(("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.url.clone()));
        env.push(("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", self.token_file.display().to_string()));
        env
    }
}

/// Every AWS variable the default chain reads, removed (empty values; see
/// `KollectorProcess::standalone_with_env`), profile files pointed at
/// nothing and IMDS off, so nothing of the machine running the test leaks
/// in and the chain never waits on a metadata service that is not there.
pub fn isolated_aws_env() -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ]
    .into_iter()
    .map(|k| (k, String::new()))
    .collect();
    env.push(("AWS_CONFIG_FILE", "/nonexistent/kollector-test/aws-config".into()));
    env.push(("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kollector-test/aws-credentials".into()));
    env.push(("AWS_EC2_METADATA_DISABLED", "true".into()));
    env
}

/// The environment for long-term keys in `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
pub fn static_env(c: &AwsCredentials) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = isolated_aws_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .collect();
    env.push(("AWS_ACCESS_KEY_ID", c.access_key.clone()));
    env.push(("AWS_SECRET_ACCESS_KEY", c.secret.clone()));
    if let Some(t) = &c.session_token {
        env.retain(|(k, _)| *k != "AWS_SESSION_TOKEN");
        env.push(("AWS_SESSION_TOKEN", t.clone()));
    }
    env
}

/// The test virtualenv's Python (`scripts/install-test-deps.sh`).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("KOLLECTOR_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kollector-tests/venv")
    });
    venv.join("bin/python")
}

/// A running `msk_iam_verify.py`: one token per line in, one verdict out.
pub struct MskIamVerifier {
    io: tokio::sync::Mutex<(tokio::process::ChildStdin, BufReader<tokio::process::ChildStdout>)>,
    _child: tokio::process::Child,
}

impl MskIamVerifier {
    /// Checks tokens for a cluster in `region`, against the credentials in `keys`.
    pub fn start(region: &str, keys: &KnownKeys) -> MskIamVerifier {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("msk_iam_verify.py");
        let mut child = tokio::process::Command::new(venv_python())
            .arg(script)
            .arg(region)
            .arg(&keys.path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the MSK IAM verifier (run scripts/install-test-deps.sh for the virtualenv with botocore)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        MskIamVerifier { io: tokio::sync::Mutex::new((stdin, stdout)), _child: child }
    }

    /// The token's expiry (ms) and access key, or why it is refused.
    pub async fn check(&self, token: &str) -> Result<(u64, String), String> {
        if token.contains('\n') {
            return Err("a newline in the token".into());
        }
        let mut io = self.io.lock().await;
        let (stdin, stdout) = &mut *io;
        stdin.write_all(format!("{token}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        stdin.flush().await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .map_err(|_| "the verifier did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("verifier said {line:?}: {e}"))?;
        if v["ok"] == true {
            Ok((v["expires_ms"].as_u64().unwrap_or(0), v["access_key"].as_str().unwrap_or("").to_string()))
        } else {
            Err(v["why"].as_str().unwrap_or("refused").to_string())
        }
    }
}
