//! Bad input never panics and never half-applies: every validation rule,
//! through gRPC (INVALID_ARGUMENT naming the field, nothing stored) and
//! through the config file (an error naming file, line and field, and the
//! process refuses to start).

use kollector_proto::v1 as pb;
use kollector_tests::kollector::{run_cli, KollectorProcess};
use tonic::Code;

fn base() -> pb::MonitorSpecInput {
    pb::MonitorSpecInput {
        id: "ok-monitor".into(),
        bootstrap: vec!["127.0.0.1:1".into()],
        interval: Some("10s".into()),
        ..Default::default()
    }
}

/// (what is wrong, how to break a valid spec, the field the error must name)
fn bad_specs() -> Vec<(&'static str, pb::MonitorSpecInput, &'static str)> {
    let mut cases = Vec::new();
    let mut with = |what, f: &dyn Fn(&mut pb::MonitorSpecInput), field| {
        let mut s = base();
        f(&mut s);
        cases.push((what, s, field));
    };
    with("empty bootstrap", &|s| s.bootstrap.clear(), "bootstrap");
    with("bootstrap without port", &|s| s.bootstrap = vec!["kafka-1".into()], "bootstrap[0]");
    with("bootstrap with scheme", &|s| s.bootstrap = vec!["tcp://h:9092".into()], "bootstrap[0]");
    with("bootstrap bad port", &|s| s.bootstrap = vec!["h:99999".into()], "bootstrap[0]");
    with("interval too short", &|s| s.interval = Some("500ms".into()), "interval");
    with("interval too long", &|s| s.interval = Some("2h".into()), "interval");
    with("interval not a duration", &|s| s.interval = Some("often".into()), "interval");
    with("timeout equal to interval", &|s| s.timeout = Some("10s".into()), "timeout");
    with("timeout above interval", &|s| s.timeout = Some("1m".into()), "timeout");
    with("invalid topic regex", &|s| s.topic_include = Some("orders(".into()), "topic_include");
    with("invalid group regex", &|s| s.group_exclude = Some("[a-".into()), "group_exclude");
    with(
        "unknown SASL mechanism",
        &|s| {
            s.sasl = Some(pb::SaslInput {
                mechanism: "GSSAPI".into(),
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            })
        },
        "sasl.mechanism",
    );
    with("bad id", &|s| s.id = "has space".into(), "id");
    // Hostile sizes, ranges and characters.
    with("1 MB id", &|s| s.id = "a".repeat(1 << 20), "id");
    with(
        "10,000 bootstrap entries",
        &|s| s.bootstrap = (0..10_000).map(|i| format!("h{i}:9092")).collect(),
        "bootstrap",
    );
    with("a 100 KB bootstrap entry", &|s| s.bootstrap = vec![format!("{}:9092", "h".repeat(100_000))], "bootstrap");
    with("negative interval", &|s| s.interval = Some("-5s".into()), "interval");
    with("enormous interval", &|s| s.interval = Some("99999999999999999999h".into()), "interval");
    with("negative timeout", &|s| s.timeout = Some("-1ms".into()), "timeout");
    with("look-alike host (Cyrillic a)", &|s| s.bootstrap = vec!["k\u{0430}fka:9092".into()], "bootstrap[0]");
    with("zero-width space in host", &|s| s.bootstrap = vec!["kafka\u{200b}:9092".into()], "bootstrap[0]");
    with("look-alike id", &|s| s.id = "orders\u{2010}prod".into(), "id");
    with("path in id", &|s| s.id = "../../etc/passwd".into(), "id");
    with("NUL in id", &|s| s.id = "a\u{0}b".into(), "id");
    with("a 1 MB regex", &|s| s.topic_include = Some("a".repeat(1 << 20)), "topic_include");
    with("a regex that compiles too large", &|s| s.topic_include = Some("(\\w{100}){100}".into()), "topic_include");
    with(
        "NUL in a TLS path",
        &|s| s.tls = Some(pb::TlsInput { ca_file: Some("/etc/ca\u{0}.pem".into()), ..Default::default() }),
        "tls.ca_file",
    );
    with("1,000 labels", &|s| s.labels = (0..1000).map(|i| (format!("k{i}"), "v".into())).collect(), "labels");
    with(
        "a control character in a label",
        &|s| s.labels = [("team".to_string(), "a\u{1b}[31m".to_string())].into(),
        "labels.team",
    );
    with("a bad pinned collector", &|s| s.pinned_collector = Some("c1/../c2".into()), "pinned_collector");
    cases
}

#[test]
fn grpc_rejects_each_rule_with_invalid_argument_and_stores_nothing() {
    let k = KollectorProcess::standalone("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        for (what, spec, field) in bad_specs() {
            let err =
                client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec.clone()) }).await.expect_err(what);
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert!(err.message().contains(field), "{what}: message {:?} should name {field}", err.message());
            let err = client.probe(pb::ProbeRequest { spec: Some(spec) }).await.expect_err(what);
            assert_eq!(err.code(), Code::InvalidArgument, "probe {what}");
        }
        let list = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
        assert!(list.monitors.is_empty(), "nothing may be stored: {:?}", list.monitors);

        // Duplicate id, update of an unknown id, invalid update of a real one.
        client.create_monitor(pb::CreateMonitorRequest { spec: Some(base()) }).await.expect("valid create");
        let dup = client.create_monitor(pb::CreateMonitorRequest { spec: Some(base()) }).await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
        let mut unknown = base();
        unknown.id = "nope".into();
        let nf = client.update_monitor(pb::UpdateMonitorRequest { spec: Some(unknown) }).await.unwrap_err();
        assert_eq!(nf.code(), Code::NotFound);
        let mut bad_update = base();
        bad_update.interval = Some("0s".into());
        let e = client.update_monitor(pb::UpdateMonitorRequest { spec: Some(bad_update) }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let got = client.get_monitor(pb::GetMonitorRequest { id: "ok-monitor".into() }).await.unwrap().into_inner();
        let spec = got.spec.unwrap();
        assert_eq!((spec.generation, spec.interval.as_str()), (1, "10s"), "a rejected update changes nothing");
        let e = client.delete_monitor(pb::DeleteMonitorRequest { id: "../etc".into() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = client.create_monitor(pb::CreateMonitorRequest { spec: None }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let m = k.metrics();
        assert_eq!(m.value("kollector_kafka_clients", &[]), Some(1.0), "only the valid monitor has a client");

        // A request over the API's 4 MiB cap is refused before it is decoded.
        let mut huge = base();
        huge.id = "huge".into();
        huge.labels = [("blob".to_string(), "x".repeat(5 << 20))].into();
        let e = client.create_monitor(pb::CreateMonitorRequest { spec: Some(huge) }).await.unwrap_err();
        assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{e:?}");
        let list = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
        assert_eq!(list.monitors.len(), 1, "nothing more is stored");
        // Probes are rate-limited: a burst is served, then RESOURCE_EXHAUSTED.
        let codes: Vec<Code> = futures::future::join_all((0..40).map(|_| {
            let mut c = client.clone();
            async move {
                let mut s = base();
                s.id = "p".into();
                s.timeout = Some("200ms".into());
                c.probe(pb::ProbeRequest { spec: Some(s) }).await.map(|_| Code::Ok).unwrap_or_else(|e| e.code())
            }
        }))
        .await;
        assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
        // A probe may not hold a client (and a thread) for long.
        let mut long = base();
        long.interval = Some("10m".into());
        long.timeout = Some("5m".into());
        let e = client.probe(pb::ProbeRequest { spec: Some(long) }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(codes.iter().filter(|c| **c == Code::Ok).count() >= 1, "{codes:?}");
    });
}

#[test]
fn sasl_password_is_never_returned_or_logged() {
    let k = KollectorProcess::standalone("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = k.client().await;
        let mut spec = base();
        spec.sasl = Some(pb::SaslInput {
            mechanism: "SCRAM-SHA-512".into(),
            username: "svc".into(),
            password: "hunter2-secret".into(),
            ..Default::default()
        });
        let created = client.create_monitor(pb::CreateMonitorRequest { spec: Some(spec) }).await.unwrap().into_inner();
        assert!(created.spec.as_ref().unwrap().sasl.as_ref().unwrap().password_set);
        let listed = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
        let got = client.get_monitor(pb::GetMonitorRequest { id: "ok-monitor".into() }).await.unwrap().into_inner();
        for text in [format!("{created:?}"), format!("{listed:?}"), format!("{got:?}")] {
            assert!(!text.contains("hunter2-secret"));
        }
    });
    let (ok, out, err) = run_cli(&["monitor", "--server", &k.grpc_url(), "get", "ok-monitor", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"password_set\": true") && !out.contains("hunter2"), "{out}");
    assert!(!k.log().contains("hunter2-secret"), "secret in the log");
    assert!(!k.http_get("/metrics").unwrap().contains("hunter2"));
}

#[test]
fn the_cli_requires_an_id_for_every_change_and_takes_it_the_same_way_everywhere() {
    let k = KollectorProcess::standalone("");
    let server = k.grpc_url();
    for args in [
        vec!["add", "--bootstrap", "127.0.0.1:9"],
        vec!["update", "--bootstrap", "127.0.0.1:9"],
        vec!["rm"],
        vec!["get"],
    ] {
        let full: Vec<&str> = ["monitor", "--server", &server].into_iter().chain(args.iter().copied()).collect();
        let (ok, _, err) = run_cli(&full);
        assert!(!ok && err.contains("--id"), "{args:?} without an id: {err}");
    }
    // Nothing was created: in particular no monitor named "probe".
    let (ok, out, err) = run_cli(&["monitor", "--server", &server, "list", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]", "a failed add created something: {out}");
    // --id works for every verb that names a monitor.
    let (ok, _, err) = run_cli(&[
        "monitor",
        "--server",
        &server,
        "add",
        "--id",
        "x1",
        "--bootstrap",
        "127.0.0.1:9",
        "--interval",
        "1h",
        "--timeout",
        "1s",
    ]);
    assert!(ok, "{err}");
    for verb in ["get", "show", "rm"] {
        let (ok, _, err) = run_cli(&["monitor", "--server", &server, verb, "--id", "x1"]);
        assert!(ok, "{verb} --id x1: {err}");
    }
}

fn write_config(dir: &tempfile::TempDir, body: &str) -> String {
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn config_file_errors_name_file_line_and_field_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let header = "[http]\nlisten = \"127.0.0.1:0\"\n[grpc]\nlisten = \"127.0.0.1:0\"\n\n[[monitors]]\nid = \"m1\"\n";
    // Line 8 onwards is the monitor body; each case puts the bad line at line 8 or 9.
    let cases: &[(&str, &str, &str)] = &[
        ("bootstrap = []\n", ":8: monitors[0].bootstrap:", "at least one"),
        ("bootstrap = [\"nohost\"]\n", ":8: monitors[0].bootstrap[0]:", "no port"),
        ("bootstrap = [\"h:1\"]\ninterval = \"100ms\"\n", ":9: monitors[0].interval:", "outside the allowed range"),
        (
            "bootstrap = [\"h:1\"]\ninterval = \"5s\"\ntimeout = \"5s\"\n",
            ":10: monitors[0].timeout:",
            "shorter than the interval",
        ),
        (
            "bootstrap = [\"h:1\"]\ntopic_exclude = \"(\"\n",
            ":9: monitors[0].topic_exclude:",
            "not a valid regular expression",
        ),
        (
            "bootstrap = [\"h:1\"]\nsasl = { mechanism = \"KERBEROS\", username = \"u\", password = \"p\" }\n",
            ":9: monitors[0].sasl.mechanism:",
            "unknown SASL mechanism",
        ),
        ("bootstrap = [\"h:1\"]\nintervall = \"5s\"\n", ":9", "unknown field `intervall`"),
        (
            "bootstrap = [\"h:1\"]\n[[monitors]]\nid = \"m1\"\nbootstrap = [\"h:2\"]\n",
            ":10: monitors[1].id:",
            "duplicate monitor id",
        ),
    ];
    for (body, location, message) in cases {
        let path = write_config(&dir, &format!("{header}{body}"));
        let started = std::time::Instant::now();
        let (ok, _out, err) = run_cli(&["standalone", "--config", &path]);
        assert!(!ok, "{body:?} should be rejected");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "rejection must be immediate");
        assert!(err.contains(&format!("{path}{location}")), "{body:?}: expected {path}{location} in {err}");
        assert!(err.contains(message), "{body:?}: expected {message:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, _, err) = run_cli(&["standalone", "--config", "/nonexistent/kollector.toml"]);
    assert!(!ok && err.contains("reading config file /nonexistent/kollector.toml"), "{err}");
}

/// `kollector monitor list | head`: a reader that went away ends the CLI
/// quietly with success (it used to panic on the broken pipe).
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let monitors: String =
        (0..3).map(|i| kollector_tests::kollector::monitor_toml(&format!("m{i}"), "127.0.0.1:9", "1h")).collect();
    let k = KollectorProcess::standalone(&monitors);
    let mut child = std::process::Command::new(kollector_tests::kollector::kollector_bin())
        .args(["monitor", "--server", &k.grpc_url(), "list"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    // Close the read end before the CLI writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for the CLI");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}, stderr: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// A collector's declared capacity and labels are bounded, and lease TTLs
/// are whole seconds (etcd's unit): refused at start, with the reason.
#[test]
fn absurd_weights_labels_and_fractional_ttls_are_refused_at_start() {
    let long_value = format!("team={}", "x".repeat(300));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--weight", "1e300"], "weight"),
        (vec!["--weight", "0"], "weight"),
        (vec!["--weight", "NaN"], "weight"),
        (vec!["--label", &long_value], "label"),
        (vec!["--lease-ttl", "2500ms"], "whole seconds"),
    ];
    for (extra, says) in cases {
        let mut args = vec![
            "collector",
            "--etcd",
            "http://127.0.0.1:9",
            "--id",
            "c1",
            "--insecure",
            "--grpc-listen",
            "127.0.0.1:0",
        ];
        args.extend(["--http-listen", "127.0.0.1:0"]);
        args.extend(extra.iter().copied());
        let (ok, _, err) = run_cli(&args);
        assert!(!ok && err.contains(says), "{extra:?}: {err}");
    }
    let (ok, _, err) = run_cli(&[
        "manager",
        "--etcd",
        "http://127.0.0.1:9",
        "--insecure",
        "--election-ttl",
        "2.5s",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok && err.contains("whole seconds"), "{err}");
    let (ok, _, err) = run_cli(&[
        "manager",
        "--etcd",
        "http://127.0.0.1:9",
        "--insecure",
        "--unreachable-after",
        "500ms",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok && err.contains("--unreachable-after"), "{err}");
}
