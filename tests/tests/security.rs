//! A secure cluster, attacked. Real etcd with mutual TLS, a manager and two
//! collectors with certificates from `kollector certs`, tokens from
//! `kollector token add`, a secret key from `kollector secret-key new`, and
//! a tansu broker to watch. Then:
//! - a random SASL password is given to a monitor (through the CLI, over
//!   TLS) and every output of the run is searched for it: etcd's contents,
//!   every API and CLI answer, every log, every `/metrics`;
//! - every ManagerService method is called without a token, with a forged
//!   and an expired token, and admin methods with a viewer token: each is
//!   refused with its code and etcd's monitors and assignments are unchanged;
//! - collectors are called without a certificate, with one from another CA
//!   and with another collector's, and a collector with another CA's
//!   certificate tries to join;
//! - a cluster node sends a forged-term Assign; an admin tries to redirect
//!   the stored password to another broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kollector_devkit::tansu::TansuBroker;
use kollector_proto::v1::collector_service_client::CollectorServiceClient;
use kollector_proto::v1::manager_service_client::ManagerServiceClient;
use kollector_proto::v1::{self as pb};
use kollector_security::tokens::{entry_toml, hash_token, new_token};
use kollector_security::Role;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::{run_cli_with_env as cli, KollectorProcess};
use kollector_tests::poll::wait_for_async;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
    fn read(&self, f: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(f)).unwrap()
    }
    /// Every TLS flag a node takes, with `node`'s certificate.
    fn node_flags(&self, node: &str) -> Vec<String> {
        vec![
            format!("--tls-ca={}", self.path("ca.pem")),
            format!("--tls-cert={}", self.path(&format!("{node}.pem"))),
            format!("--tls-key={}", self.path(&format!("{node}.key"))),
            format!("--etcd-ca={}", self.path("ca.pem")),
            format!("--etcd-cert={}", self.path(&format!("{node}.pem"))),
            format!("--etcd-key={}", self.path(&format!("{node}.key"))),
        ]
    }
}

fn make_pki(dir: &Path, managers: &[&str], nodes: &[&str]) -> Pki {
    let mut args = vec!["certs", "--dir", dir.to_str().unwrap()];
    for m in managers {
        args.extend(["--manager", m]);
    }
    for n in nodes {
        args.extend(["--node", n]);
    }
    let (ok, out, err) = cli(&args, &[]);
    assert!(ok, "kollector certs: {out}{err}");
    Pki { dir: dir.to_path_buf() }
}

/// etcd's monitors and assignments: key → (value, mod revision).
async fn etcd_state(client: &mut etcd_client::Client) -> BTreeMap<String, (Vec<u8>, i64)> {
    let mut out = BTreeMap::new();
    for prefix in ["/kollector/monitors/", "/kollector/assignments/"] {
        let resp = client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.expect("etcd get");
        for kv in resp.kvs() {
            out.insert(String::from_utf8_lossy(kv.key()).into_owned(), (kv.value().to_vec(), kv.mod_revision()));
        }
    }
    out
}

/// Every key and value in etcd, as text.
async fn etcd_dump(client: &mut etcd_client::Client) -> String {
    let resp = client.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await.expect("etcd get all");
    resp.kvs()
        .iter()
        .map(|kv| format!("{} = {}\n", String::from_utf8_lossy(kv.key()), String::from_utf8_lossy(kv.value())))
        .collect()
}

async fn tls_channel(url: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())?.tls_config(tls)?.connect_timeout(Duration::from_secs(5)).connect().await
}

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Calls every ManagerService method once with `token`; method → code.
async fn call_every_method(
    client: &mut ManagerServiceClient<Channel>,
    token: Option<&str>,
) -> BTreeMap<&'static str, Code> {
    let spec =
        pb::MonitorSpecInput { id: "intruder".into(), bootstrap: vec!["127.0.0.1:1".into()], ..Default::default() };
    let code = |r: Result<(), tonic::Status>| r.map(|_| Code::Ok).unwrap_or_else(|s| s.code());
    let mut out = BTreeMap::new();
    out.insert(
        "create_monitor",
        code(
            client
                .create_monitor(with_token(pb::CreateMonitorRequest { spec: Some(spec.clone()) }, token))
                .await
                .map(|_| ()),
        ),
    );
    out.insert(
        "update_monitor",
        code(
            client
                .update_monitor(with_token(
                    pb::UpdateMonitorRequest {
                        spec: Some(pb::MonitorSpecInput { id: "plain".into(), ..spec.clone() }),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
        ),
    );
    out.insert(
        "delete_monitor",
        code(
            client.delete_monitor(with_token(pb::DeleteMonitorRequest { id: "plain".into() }, token)).await.map(|_| ()),
        ),
    );
    out.insert(
        "probe",
        code(client.probe(with_token(pb::ProbeRequest { spec: Some(spec.clone()) }, token)).await.map(|_| ())),
    );
    out.insert(
        "drain",
        code(
            client
                .drain(with_token(pb::DrainRequest { collector_id: "c1".into(), undo: false }, token))
                .await
                .map(|_| ()),
        ),
    );
    out.insert(
        "get_monitor",
        code(client.get_monitor(with_token(pb::GetMonitorRequest { id: "plain".into() }, token)).await.map(|_| ())),
    );
    out.insert(
        "list_monitors",
        code(client.list_monitors(with_token(pb::ListMonitorsRequest::default(), token)).await.map(|_| ())),
    );
    out.insert(
        "get_latest",
        code(client.get_latest(with_token(pb::GetLatestRequest::default(), token)).await.map(|_| ())),
    );
    out.insert(
        "list_collectors",
        code(client.list_collectors(with_token(pb::ListCollectorsRequest {}, token)).await.map(|_| ())),
    );
    out.insert(
        "get_assignments",
        code(client.get_assignments(with_token(pb::GetAssignmentsRequest::default(), token)).await.map(|_| ())),
    );
    out
}

const ADMIN_METHODS: [&str; 5] = ["create_monitor", "update_monitor", "delete_monitor", "probe", "drain"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secure_cluster_keeps_secrets_and_refuses_intruders() {
    let work = tempfile::tempdir().unwrap();
    let pki = make_pki(&work.path().join("pki"), &["manager"], &["etcd", "c1", "c2"]);
    let rogue = make_pki(&work.path().join("rogue"), &["manager"], &["c3"]);
    let (ok, _, err) = cli(&["secret-key", "new", "--file", &pki.path("secret.key")], &[]);
    assert!(ok, "{err}");
    let tokens = pki.path("tokens.toml");
    for (name, role) in [("ops", "admin"), ("grafana", "viewer")] {
        let out = pki.path(&format!("{name}.token"));
        let (ok, _, err) =
            cli(&["token", "add", "--tokens-file", &tokens, "--name", name, "--role", role, "--out", &out], &[]);
        assert!(ok, "{err}");
    }
    // An expired admin token, and a well-formed token that was never issued.
    let expired = new_token().unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    let mut t = std::fs::read_to_string(&tokens).unwrap();
    t.push_str(&format!("\n{}", entry_toml("old", Role::Admin, &hash_token(&expired), Some(past))));
    std::fs::write(&tokens, t).unwrap();
    let forged = new_token().unwrap();
    let admin = std::fs::read_to_string(pki.path("ops.token")).unwrap().trim().to_string();
    let viewer = std::fs::read_to_string(pki.path("grafana.token")).unwrap().trim().to_string();

    let etcd = EtcdServer::start_tls(&pki.dir.join("ca.pem"), &pki.dir.join("etcd.pem"), &pki.dir.join("etcd.key"));
    let mut manager_flags = pki.node_flags("manager");
    manager_flags.push(format!("--tokens-file={tokens}"));
    manager_flags.push(format!("--secret-key-file={}", pki.path("secret.key")));
    let manager =
        KollectorProcess::manager_with(&etcd.endpoint(), &manager_flags.iter().map(String::as_str).collect::<Vec<_>>());
    let mut collectors = BTreeMap::new();
    for id in ["c1", "c2"] {
        let cf = pki.node_flags(id);
        collectors.insert(
            id.to_string(),
            KollectorProcess::collector_with(&etcd.endpoint(), id, &cf.iter().map(String::as_str).collect::<Vec<_>>()),
        );
    }
    let broker = TansuBroker::start("secure-kafka");

    // The CLI over TLS with a token file: the same path a user takes.
    let server = format!("https://127.0.0.1:{}", manager.grpc_port);
    let ca = pki.path("ca.pem");
    let admin_file = pki.path("ops.token");
    let viewer_file = pki.path("grafana.token");
    let secret = format!("pw-{}", &hash_token(&new_token().unwrap())[..24]);
    let as_admin = |args: &[&str], env: &[(&str, &str)]| {
        let mut full = vec![args[0], "--server", &server, "--ca-file", &ca, "--token-file", &admin_file];
        full.extend(&args[1..]);
        cli(&full, env)
    };
    let (ok, out, err) =
        as_admin(&["monitor", "add", "--id", "plain", "--bootstrap", &broker.bootstrap(), "--interval", "1s"], &[]);
    assert!(ok, "add plain: {out}{err}");
    let (ok, out, err) = as_admin(
        &[
            "monitor",
            "add",
            "--id",
            "secret",
            "--bootstrap",
            &broker.bootstrap(),
            "--interval",
            "1s",
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-username",
            "svc",
            "--sasl-password-env",
            "SVC_PASSWORD",
        ],
        &[("SVC_PASSWORD", &secret)],
    );
    assert!(ok, "add secret: {out}{err}");
    let mut outputs = vec![out, err];
    // An OAUTHBEARER monitor whose client secret is random too: a local
    // identity provider knows it, so the secret really reaches the
    // collector's token source (the endpoint issues it tokens), and the
    // search below covers it.
    let client_secret = format!("cs-{}", &hash_token(&new_token().unwrap())[..24]);
    let idp = kollector_tests::oidc::TokenEndpoint::start("svc-oidc", &client_secret, Duration::from_secs(30));
    let (ok, out, err) = as_admin(
        &[
            "monitor",
            "add",
            "--id",
            "oidc",
            "--bootstrap",
            &broker.bootstrap(),
            "--interval",
            "1s",
            "--sasl-mechanism",
            "OAUTHBEARER",
            "--sasl-username",
            "svc-oidc",
            "--sasl-password-env",
            "SVC_CLIENT_SECRET",
            "--sasl-token-endpoint",
            &idp.url(),
            // Tokens go only over verified TLS (the system store here; the
            // token is asked for before any broker is reached).
            "--tls",
        ],
        &[("SVC_CLIENT_SECRET", &client_secret)],
    );
    assert!(ok, "add oidc: {out}{err}");
    outputs.extend([out, err]);

    // Results reach the manager over mutual TLS: the plain monitor collects.
    let channel =
        tls_channel(&server, ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read("ca.pem"))))
            .await
            .expect("TLS to the manager");
    let mut api = ManagerServiceClient::new(channel.clone());
    wait_for_async("the plain monitor collected through the secure cluster", Duration::from_secs(60), || {
        let mut api = api.clone();
        let admin = admin.clone();
        async move {
            let r = api
                .get_latest(with_token(
                    pb::GetLatestRequest { monitor_id: "plain".into(), ..Default::default() },
                    Some(&admin),
                ))
                .await;
            let r = r.map_err(|e| e.to_string())?.into_inner();
            r.results.iter().any(|r| r.snapshot.is_some()).then_some(()).ok_or_else(|| format!("{:?}", r.results))
        }
    })
    .await;
    // The secret monitor runs too (its collection fails: tansu has no SASL).
    wait_for_async("the secret monitor has a result", Duration::from_secs(60), || {
        let mut api = api.clone();
        let admin = admin.clone();
        async move {
            let r = api
                .get_latest(with_token(
                    pb::GetLatestRequest { monitor_id: "secret".into(), ..Default::default() },
                    Some(&admin),
                ))
                .await;
            let r = r.map_err(|e| e.to_string())?.into_inner();
            (!r.results.is_empty()).then_some(()).ok_or("none yet".to_string())
        }
    })
    .await;

    let etcd_tls = etcd_client::TlsOptions::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .identity(Identity::from_pem(pki.read("manager.pem"), pki.read("manager.key")));
    let mut etcd_client =
        etcd_client::Client::connect([etcd.endpoint()], Some(etcd_client::ConnectOptions::new().with_tls(etcd_tls)))
            .await
            .expect("etcd over TLS");

    // --- Refusals: nothing changes. ---
    let before = etcd_state(&mut etcd_client).await;
    let mut plain_api = api.clone();
    for (who, token) in
        [("no token", None), ("a forged token", Some(forged.as_str())), ("an expired token", Some(expired.as_str()))]
    {
        let codes = call_every_method(&mut plain_api, token).await;
        assert!(codes.values().all(|c| *c == Code::Unauthenticated), "{who}: {codes:?}");
    }
    let codes = call_every_method(&mut plain_api, Some(&viewer)).await;
    for (method, code) in &codes {
        if ADMIN_METHODS.contains(method) {
            assert_eq!(*code, Code::PermissionDenied, "viewer calling {method}");
        } else {
            assert_eq!(*code, Code::Ok, "viewer calling {method}");
        }
    }
    // The CLI will not send a token in clear to another machine.
    let (ok, _, err) = cli(&["status", "--server", "http://192.0.2.1:7070", "--token-file", &admin_file], &[]);
    assert!(!ok && err.contains("refusing to send the token"), "{err}");
    // A plaintext client cannot even reach the API.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", manager.grpc_port)).unwrap().connect().await;
    if let Ok(ch) = plain {
        let r = ManagerServiceClient::new(ch)
            .list_monitors(with_token(pb::ListMonitorsRequest::default(), Some(&admin)))
            .await;
        assert!(r.is_err(), "a plaintext call was answered");
    }

    // Collectors: no certificate, or another CA's, gets past no handshake.
    let collector_url = |id: &str| format!("https://127.0.0.1:{}", collectors[id].grpc_port);
    let trust_ca = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read("ca.pem")));
    let attempts = [
        ("no client certificate", trust_ca.clone()),
        (
            "another CA's certificate",
            trust_ca.clone().identity(Identity::from_pem(rogue.read("manager.pem"), rogue.read("manager.key"))),
        ),
    ];
    for (what, tls) in attempts {
        let refused = match tls_channel(&collector_url("c1"), tls).await {
            Err(_) => true,
            Ok(ch) => CollectorServiceClient::new(ch)
                .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
                .await
                .is_err(),
        };
        assert!(refused, "a collector answered a caller with {what}");
    }
    // A collector's own certificate (cluster CA, but not a manager's) may
    // not command another collector or read its results.
    let c2_tls = trust_ca.clone().identity(Identity::from_pem(pki.read("c2.pem"), pki.read("c2.key")));
    let mut as_c2 = CollectorServiceClient::new(tls_channel(&collector_url("c1"), c2_tls).await.expect("TLS as c2"));
    let e = as_c2
        .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
        .await
        .expect_err("c2 read c1");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = as_c2
        .unassign(pb::UnassignRequest {
            monitor_id: "plain".into(),
            fencing: Some(pb::Fencing { generation: 1, epoch: 1, leader_term: 1, collector_lease: 0 }),
        })
        .await
        .expect_err("c2 commanded c1");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A collector whose certificate comes from another CA cannot join.
    let rogue_flags: Vec<String> = rogue
        .node_flags("c3")
        .into_iter()
        .map(|f| {
            if f.starts_with("--tls-ca=") || f.starts_with("--etcd-ca=") {
                f.replace(&rogue.path("ca.pem"), &pki.path("ca.pem"))
            } else {
                f
            }
        })
        .collect();
    let mut rogue_collector = KollectorProcess::collector_with(
        &etcd.endpoint(),
        "c3",
        &rogue_flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    kollector_tests::poll::wait_for(
        "the rogue collector's etcd connection to be refused",
        Duration::from_secs(30),
        || {
            let log = rogue_collector.log();
            (log.contains("etcd") && (log.contains("WARN") || log.contains("ERROR"))).then_some(()).ok_or(log)
        },
    );
    let listed =
        api.list_collectors(with_token(pb::ListCollectorsRequest {}, Some(&viewer))).await.unwrap().into_inner();
    assert!(listed.collectors.iter().all(|c| c.id != "c3"), "the rogue collector registered: {listed:?}");
    rogue_collector.kill();
    assert_eq!(etcd_state(&mut etcd_client).await, before, "a refused call changed etcd");

    // --- A forged leader term from a cluster node is not believed. ---
    let node_tls = trust_ca.clone().identity(Identity::from_pem(pki.read("manager.pem"), pki.read("manager.key")));
    let mut c1 = CollectorServiceClient::new(tls_channel(&collector_url("c1"), node_tls).await.expect("mTLS to c1"));
    let running = c1
        .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
        .await
        .expect("list running")
        .into_inner();
    let forged_assign = pb::AssignRequest {
        spec: Some(pb::MonitorSpecInput {
            id: "forged".into(),
            bootstrap: vec!["127.0.0.1:1".into()],
            ..Default::default()
        }),
        fencing: Some(pb::Fencing { generation: 1, epoch: 1, leader_term: i64::MAX, collector_lease: running.lease }),
        history: None,
    };
    let e = c1.assign(forged_assign).await.expect_err("a forged term was accepted");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not the current leader"), "{e:?}");
    let e = c1
        .list_running(pb::ListRunningRequest { leader_term: i64::MAX, ..Default::default() })
        .await
        .expect_err("forged term on a read");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c1
        .unassign(pb::UnassignRequest {
            monitor_id: "plain".into(),
            fencing: Some(pb::Fencing {
                generation: u64::MAX,
                epoch: u64::MAX,
                leader_term: i64::MAX,
                collector_lease: running.lease,
            }),
        })
        .await
        .expect_err("forged unassign");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The real manager still commands c1 and c2: a new monitor gets placed and runs.
    let (ok, out, err) = as_admin(
        &["monitor", "add", "--id", "after-forgery", "--bootstrap", &broker.bootstrap(), "--pin-collector", "c1"],
        &[],
    );
    assert!(ok, "{out}{err}");
    wait_for_async("the real manager's Assign reaches c1 after the forgery", Duration::from_secs(30), || {
        let mut c1 = c1.clone();
        async move {
            let r = c1
                .list_running(pb::ListRunningRequest { leader_term: 0, ..Default::default() })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            r.monitors.iter().any(|m| m.monitor_id == "after-forgery").then_some(()).ok_or(format!("{r:?}"))
        }
    })
    .await;

    // --- The stored password cannot be redirected. ---
    let before = etcd_state(&mut etcd_client).await;
    let (ok, out, err) = as_admin(
        &[
            "monitor",
            "update",
            "--id",
            "secret",
            "--bootstrap",
            "127.0.0.1:9",
            "--sasl-mechanism",
            "PLAIN",
            "--sasl-username",
            "svc",
        ],
        &[],
    );
    assert!(!ok, "the redirect was accepted: {out}");
    assert!(err.contains("invalid argument") && err.contains("send it again"), "{err}");
    // The stored specs are what a refused update could have changed (the
    // assignments move on their own meanwhile: monitors that fail here are
    // restarted and may be reassigned).
    let specs = |s: BTreeMap<String, (Vec<u8>, i64)>| -> BTreeMap<String, (Vec<u8>, i64)> {
        s.into_iter().filter(|(k, _)| k.starts_with("/kollector/monitors/")).collect()
    };
    assert_eq!(specs(etcd_state(&mut etcd_client).await), specs(before), "a refused update changed a stored spec");
    outputs.extend([out, err]);

    // The OIDC client secret was in use (the collector's token source got
    // tokens with it) before the outputs are searched for it.
    wait_for_async("the OIDC monitor's token source to get a token", Duration::from_secs(30), || async {
        let issued = idp.issued.load(std::sync::atomic::Ordering::SeqCst);
        let refused = idp.refused.load(std::sync::atomic::Ordering::SeqCst);
        (issued > 0).then_some(()).ok_or(format!("{issued} issued, {refused} refused"))
    })
    .await;

    // --- The secret appears nowhere. ---
    let dump = etcd_dump(&mut etcd_client).await;
    assert!(dump.contains("kollector-sealed:v1:"), "the password is not sealed in etcd:\n{dump}");
    assert!(dump.contains("svc-oidc") && !dump.contains(&client_secret), "the client secret is not sealed in etcd");
    outputs.push(dump);
    for args in [
        vec!["monitor", "get", "secret", "--json"],
        vec!["monitor", "list", "--json"],
        vec!["monitor", "show", "--json"],
        vec!["monitor", "get", "secret"],
        vec!["monitor", "list"],
        vec!["status"],
        vec!["collectors", "list"],
    ] {
        let mut full = vec![args[0]];
        full.extend(["--server", &server, "--ca-file", &ca, "--token-file", &viewer_file]);
        full.extend(&args[1..]);
        let (ok, out, err) = cli(&full, &[]);
        assert!(ok, "{full:?}: {err}");
        outputs.extend([out, err]);
    }
    let a = Some(admin.as_str());
    outputs.push(format!(
        "{:?}",
        api.get_monitor(with_token(pb::GetMonitorRequest { id: "secret".into() }, a)).await.unwrap()
    ));
    outputs.push(format!("{:?}", api.list_monitors(with_token(pb::ListMonitorsRequest::default(), a)).await.unwrap()));
    outputs.push(format!("{:?}", api.get_latest(with_token(pb::GetLatestRequest::default(), a)).await.unwrap()));
    outputs
        .push(format!("{:?}", api.get_assignments(with_token(pb::GetAssignmentsRequest::default(), a)).await.unwrap()));
    outputs.push(format!("{:?}", api.list_collectors(with_token(pb::ListCollectorsRequest {}, a)).await.unwrap()));
    outputs.push(manager.http_get("/metrics").unwrap());
    outputs.push(manager.log());
    for c in collectors.values() {
        outputs.push(c.http_get("/metrics").unwrap());
        outputs.push(c.log());
    }
    outputs.push(rogue_collector.log());
    let hits: Vec<usize> = outputs.iter().enumerate().filter(|(_, o)| o.contains(&secret)).map(|(i, _)| i).collect();
    assert!(hits.is_empty(), "the secret appeared in outputs {hits:?}");
    let hits: Vec<usize> =
        outputs.iter().enumerate().filter(|(_, o)| o.contains(&client_secret)).map(|(i, _)| i).collect();
    assert!(hits.is_empty(), "the OIDC client secret appeared in outputs {hits:?}");
    // The search would have found it: the secret did reach the collector's
    // Kafka client (its SASL attempt against a broker without SASL failed).
    let latest = format!(
        "{:?}",
        api.get_latest(with_token(pb::GetLatestRequest { monitor_id: "secret".into(), ..Default::default() }, a))
            .await
            .unwrap()
    );
    assert!(latest.contains("error"), "{latest}");
    drop(channel);
}

/// A collector is who its certificate says: a process registered as `c2`
/// but presenting `c1`'s certificate is refused by the manager (the TLS
/// name check fails), gets no monitor (and so no secret), and `status`
/// shows it not answering; the genuine collector runs everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_presenting_another_collectors_certificate_gets_nothing() {
    let work = tempfile::tempdir().unwrap();
    let pki = make_pki(&work.path().join("pki"), &["manager"], &["etcd", "c1", "c2"]);
    let tokens = pki.path("tokens.toml");
    let admin_file = pki.path("ops.token");
    let (ok, _, err) =
        cli(&["token", "add", "--tokens-file", &tokens, "--name", "ops", "--role", "admin", "--out", &admin_file], &[]);
    assert!(ok, "{err}");
    let etcd = EtcdServer::start_tls(&pki.dir.join("ca.pem"), &pki.dir.join("etcd.pem"), &pki.dir.join("etcd.key"));
    let mut manager_flags = pki.node_flags("manager");
    manager_flags.push(format!("--tokens-file={tokens}"));
    let manager =
        KollectorProcess::manager_with(&etcd.endpoint(), &manager_flags.iter().map(String::as_str).collect::<Vec<_>>());
    let own = pki.node_flags("c1");
    let c1 =
        KollectorProcess::collector_with(&etcd.endpoint(), "c1", &own.iter().map(String::as_str).collect::<Vec<_>>());
    // Registered as c2, with c1's certificate and key.
    let impostor =
        KollectorProcess::collector_with(&etcd.endpoint(), "c2", &own.iter().map(String::as_str).collect::<Vec<_>>());
    let broker = TansuBroker::start("identity-kafka");
    let server = format!("https://127.0.0.1:{}", manager.grpc_port);
    let ca = pki.path("ca.pem");
    let as_admin = |args: &[&str]| {
        let mut full = vec![args[0], "--server", &server, "--ca-file", &ca, "--token-file", &admin_file];
        full.extend(&args[1..]);
        cli(&full, &[])
    };
    for i in 0..4 {
        let id = format!("m{i}");
        let (ok, out, err) =
            as_admin(&["monitor", "add", "--id", &id, "--bootstrap", &broker.bootstrap(), "--interval", "1s"]);
        assert!(ok, "add {id}: {out}{err}");
    }
    let monitors_on = |p: &KollectorProcess| {
        let m =
            kollector_tests::metrics::Metrics::parse(&p.http_get("/metrics").unwrap_or_default()).unwrap_or_default();
        m.value("kollector_monitors", &[]).unwrap_or(-1.0)
    };
    wait_for_async("every monitor on the genuine c1", Duration::from_secs(40), || async {
        match (monitors_on(&c1), monitors_on(&impostor)) {
            (4.0, 0.0) => Ok(()),
            other => Err(format!("c1, impostor: {other:?}")),
        }
    })
    .await;
    let (ok, out, err) = as_admin(&["status"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("c2 ")).unwrap_or_else(|| panic!("c2 not listed:\n{out}"));
    assert!(!line.contains(" ok "), "the impostor looks healthy: {line}");
    assert_eq!(monitors_on(&impostor), 0.0, "the impostor got a monitor");
    assert!(manager.log().contains("c2"), "the manager's log never names the refused collector");
}
