//! Kollector against Kafka-side security, for real: TLS with a CA, mutual
//! TLS with a client certificate, SASL PLAIN, SCRAM-SHA-256 and
//! SCRAM-SHA-512, each with the right and a wrong credential, against tansu
//! brokers behind the TLS and SASL terminators of `kafka_security.rs` (tansu
//! 0.6.0 cannot serve either itself). A monitor whose TLS file lies outside
//! `--kafka-tls-dir` is refused without connecting.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kollector_devkit::tansu::TansuBroker;
use kollector_proto::v1 as pb;
use kollector_tests::kafka_security::{bind, SaslProxy, TlsTerminator};
use kollector_tests::kollector::{run_cli, KollectorProcess};
use kollector_tests::poll::wait_for_async;

fn monitor(id: &str, port: u16, extra: &str) -> String {
    format!("[[monitors]]\nid = \"{id}\"\nbootstrap = [\"127.0.0.1:{port}\"]\ninterval = \"1s\"\ntimeout = \"800ms\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_mutual_tls_plain_and_scram_authenticate_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("kafka-tls");
    let (ok, out, err) = run_cli(&["certs", "--dir", pki.to_str().unwrap(), "--node", "kafka", "--node", "client"]);
    assert!(ok, "{out}{err}");
    let p = |f: &str| pki.join(f).display().to_string();
    // Another CA, inside the allowed directory: its broker check must fail.
    let (ok, out, err) = run_cli(&["certs", "--dir", &p("other"), "--node", "x"]);
    assert!(ok, "{out}{err}");

    let (tls_listener, tls_port) = bind();
    let (mtls_listener, mtls_port) = bind();
    let (sasl_listener, sasl_port) = bind();
    let tls_broker = TansuBroker::start_advertising("tls-kafka", kollector_devkit::free_port(), tls_port);
    let mtls_broker = TansuBroker::start_advertising("mtls-kafka", kollector_devkit::free_port(), mtls_port);
    let sasl_broker = TansuBroker::start_advertising("sasl-kafka", kollector_devkit::free_port(), sasl_port);
    let tls =
        TlsTerminator::serve(tls_listener, tls_broker.port(), &pki.join("kafka.pem"), &pki.join("kafka.key"), None);
    let mtls = TlsTerminator::serve(
        mtls_listener,
        mtls_broker.port(),
        &pki.join("kafka.pem"),
        &pki.join("kafka.key"),
        Some(&pki.join("ca.pem")),
    );
    let users = BTreeMap::from([("alice".to_string(), "wonder-land".to_string())]);
    let sasl = SaslProxy::serve(sasl_listener, sasl_broker.port(), users);

    // A topic with 5 records and a group committed at 3 on the TLS and the
    // SASL broker, written through the same TLS and SASL: the monitors must
    // read them over the direct group connections.
    let tls_client = || {
        let mut c = kollector_tests::kafka_fixtures::client_config(&format!("127.0.0.1:{tls_port}"));
        c.set("security.protocol", "ssl").set("ssl.ca.location", p("ca.pem"));
        c
    };
    let sasl_client = || {
        let mut c = kollector_tests::kafka_fixtures::client_config(&format!("127.0.0.1:{sasl_port}"));
        c.set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", "alice")
            .set("sasl.password", "wonder-land");
        c
    };
    for config in [tls_client(), sasl_client()] {
        kollector_tests::kafka_fixtures::create_topic_with(config.clone(), "secure", 1).await.expect("topic");
        tokio::task::spawn_blocking(move || {
            kollector_tests::kafka_fixtures::produce_records_with(config.clone(), "secure", 0, 5).expect("produce");
            kollector_tests::kafka_fixtures::commit_offsets_with(config, "secure-readers", &[("secure", 0, 3)])
                .expect("commit");
        })
        .await
        .unwrap();
    }

    let sasl_monitor = |id: &str, mechanism: &str, password: &str| {
        monitor(
            id,
            sasl_port,
            &format!("[monitors.sasl]\nmechanism = \"{mechanism}\"\nusername = \"alice\"\npassword = \"{password}\""),
        )
    };
    let config = [
        monitor("tls", tls_port, &format!("[monitors.tls]\nca_file = \"{}\"", p("ca.pem"))),
        monitor(
            "mtls",
            mtls_port,
            &format!(
                "[monitors.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
                p("ca.pem"),
                p("client.pem"),
                p("client.key")
            ),
        ),
        monitor("mtls-no-cert", mtls_port, &format!("[monitors.tls]\nca_file = \"{}\"", p("ca.pem"))),
        monitor("tls-wrong-ca", tls_port, &format!("[monitors.tls]\nca_file = \"{}\"", p("other/ca.pem"))),
        sasl_monitor("plain", "PLAIN", "wonder-land"),
        sasl_monitor("scram-256", "SCRAM-SHA-256", "wonder-land"),
        sasl_monitor("scram-512", "SCRAM-SHA-512", "wonder-land"),
        sasl_monitor("plain-wrong", "PLAIN", "guess"),
        sasl_monitor("scram-512-wrong", "SCRAM-SHA-512", "guess"),
    ]
    .concat();
    let tls_dir = format!("--kafka-tls-dir={}", pki.display());
    let k = KollectorProcess::standalone_with(&config, &[&tls_dir]);
    let mut client = k.client().await;

    let want_ok = ["tls", "mtls", "plain", "scram-256", "scram-512"];
    let with_group = ["tls", "plain", "scram-256", "scram-512"];
    let want_err = ["mtls-no-cert", "tls-wrong-ca", "plain-wrong", "scram-512-wrong"];
    let clusters = BTreeMap::from([
        ("tls", "tls-kafka"),
        ("mtls", "mtls-kafka"),
        ("plain", "sasl-kafka"),
        ("scram-256", "sasl-kafka"),
        ("scram-512", "sasl-kafka"),
    ]);
    let results = wait_for_async("every monitor to succeed or fail as it should", Duration::from_secs(60), || {
        let mut client = client.clone();
        async move {
            let latest =
                client.get_latest(pb::GetLatestRequest::default()).await.map_err(|e| e.to_string())?.into_inner();
            let by_id: BTreeMap<String, pb::MonitorResult> =
                latest.results.into_iter().map(|r| (r.monitor_id.clone(), r)).collect();
            let ok = want_ok.iter().all(|id| by_id.get(*id).is_some_and(|r| r.snapshot.is_some()))
                && with_group
                    .iter()
                    .all(|id| by_id.get(*id).and_then(|r| r.snapshot.as_ref()).is_some_and(|s| !s.groups.is_empty()));
            let err = want_err.iter().all(|id| by_id.get(*id).is_some_and(|r| r.error.is_some()));
            (ok && err).then_some(by_id.clone()).ok_or_else(|| {
                format!(
                    "{:#?}",
                    by_id.values().map(|r| (&r.monitor_id, r.snapshot.is_some(), &r.error)).collect::<Vec<_>>()
                )
            })
        }
    })
    .await;
    for (id, cluster) in clusters {
        let s = results[id].snapshot.as_ref().unwrap();
        assert_eq!(s.cluster_id, cluster, "{id} reached the wrong cluster");
        // Groups went over the direct path, through the same TLS or SASL: no
        // fallback note, no broker the group requests could not reach.
        assert!(s.notes.is_empty() && s.warnings.is_empty(), "{id}: {:?} {:?}", s.notes, s.warnings);
        if id != "mtls" {
            let g = s.groups.iter().find(|g| g.group_id == "secure-readers").expect("the group");
            let o: Vec<(&str, i32, i64, Option<i64>)> =
                g.offsets.iter().map(|o| (o.topic.as_str(), o.partition, o.committed, o.lag)).collect();
            assert_eq!(o, vec![("secure", 0, 3, Some(2))], "{id}: the committed offset and lag");
        }
    }
    for id in want_err {
        let e = results[id].error.as_ref().unwrap();
        eprintln!("{id}: {e:?}");
        assert!(!e.message.contains("--kafka-tls-dir"), "{id} failed for the wrong reason: {e:?}");
    }
    for id in ["plain-wrong", "scram-512-wrong"] {
        let e = results[id].error.as_ref().unwrap();
        assert!(e.message.to_lowercase().contains("authentication"), "{id}: not a clear authentication error: {e:?}");
    }
    // The handshakes really happened.
    assert!(tls.passed.load(Ordering::SeqCst) > 0);
    assert!(mtls.passed.load(Ordering::SeqCst) > 0);
    let passed = sasl.passed.lock().unwrap().clone();
    for m in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert!(passed.get(m).copied().unwrap_or(0) > 0, "no {m} authentication: {passed:?}");
    }
    assert!(sasl.failed.load(Ordering::SeqCst) > 0, "the wrong passwords were not tried");

    // A TLS file outside --kafka-tls-dir: refused before any connection.
    let outside = pb::MonitorSpecInput {
        id: "outside".into(),
        bootstrap: vec![format!("127.0.0.1:{tls_port}")],
        tls: Some(pb::TlsInput { ca_file: Some("/etc/passwd".into()), ..Default::default() }),
        ..Default::default()
    };
    let probe = client.probe(pb::ProbeRequest { spec: Some(outside) }).await.expect("probe answers").into_inner();
    let e = probe.error.expect("refused");
    assert!(e.message.contains("--kafka-tls-dir"), "{e:?}");
    // No password appears in the log, right or wrong.
    let log = k.log();
    assert!(!log.contains("wonder-land") && !log.contains("guess"), "a password was logged");
    drop((tls_broker, mtls_broker, sasl_broker));
}
