//! Keeps `deploy/` honest without running what it deploys: every flag a
//! unit, script or manifest passes to kollector exists in that command's
//! `--help`, and the container image is multi-stage, runs unprivileged and
//! starts the binary directly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use kollector_tests::kollector::kollector_bin;

const SUBCOMMANDS: [&str; 9] =
    ["standalone", "manager", "collector", "monitor", "collectors", "status", "certs", "token", "secret-key"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Logical lines (shell and systemd `\` continuations joined).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim_end();
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// (subcommand, flag) for every `kollector <sub> … --flag` in a line.
fn uses(line: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',' || c == '[' || c == ']')
        .filter(|w| !w.is_empty())
        .collect();
    let is_bin = |w: &str| w == "kollector" || w.ends_with("/kollector") || w.ends_with("$KOLLECTOR");
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let Some(sub) = words.get(i + 1) else { continue };
        if !is_bin(w) || !SUBCOMMANDS.contains(sub) {
            continue;
        }
        let end = |w: &&&str| is_bin(w) || matches!(**w, "&" | "&&" | "|" | ";" | "#");
        for flag in words[i + 2..].iter().take_while(|w| !end(w)) {
            if let Some(f) = flag.strip_prefix("--") {
                let name = f.split('=').next().unwrap_or_default();
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                    out.push((sub.to_string(), format!("--{name}")));
                }
            }
        }
    }
    out
}

/// (subcommand, flag) from YAML where the entrypoint is kollector: a
/// Kubernetes `args:` list whose first item is a subcommand, or a Compose
/// `command:` (inline or a folded block) that starts with one.
fn yaml_uses(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim_start();
        let words: Vec<String> = if t == "args:" {
            let base = indent(line);
            let mut items = Vec::new();
            i += 1;
            while i < lines.len() && indent(lines[i]) >= base && lines[i].trim_start().starts_with("- ") {
                items.push(lines[i].trim_start()[2..].trim().to_string());
                i += 1;
            }
            items
        } else if let Some(rest) = t.strip_prefix("command:") {
            let base = indent(line);
            let mut text = String::new();
            if !matches!(rest.trim(), ">-" | ">" | "|" | "|-") {
                text.push_str(rest);
            }
            i += 1;
            while matches!(rest.trim(), ">-" | ">" | "|" | "|-") && i < lines.len() && indent(lines[i]) > base {
                text.push(' ');
                text.push_str(lines[i].trim());
                i += 1;
            }
            text.split_whitespace().map(str::to_string).collect()
        } else {
            i += 1;
            continue;
        };
        if let Some(sub) = words.first().filter(|w| SUBCOMMANDS.contains(&w.as_str())) {
            for w in &words[1..] {
                if let Some(f) = w.strip_prefix("--") {
                    let name = f.split('=').next().unwrap_or_default();
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    {
                        out.push((sub.clone(), format!("--{name}")));
                    }
                }
            }
        }
    }
    out
}

fn help(sub: &str) -> String {
    let mut text = String::new();
    let out = Command::new(kollector_bin()).args([sub, "--help"]).output().expect("kollector --help");
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    // Subcommands with their own subcommands (monitor add, token add, …).
    for nested in ["add", "update", "list", "drain", "new", "rotate", "probe", "get", "show", "rm"] {
        let out = Command::new(kollector_bin()).args([sub, nested, "--help"]).output().expect("help");
        if out.status.success() {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    text
}

#[test]
fn every_flag_in_deploy_files_exists() {
    let mut paths = Vec::new();
    files(&repo().join("deploy"), &mut paths);
    paths.push(repo().join("README.md"));
    paths.push(repo().join("SECURITY.md"));
    let mut checked = BTreeSet::new();
    let mut missing = Vec::new();
    // Each command's help, run once (a dozen processes per command).
    let mut helps: std::collections::BTreeMap<String, String> = Default::default();
    for p in &paths {
        let Ok(text) = std::fs::read_to_string(p) else { continue };
        let is_yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let mut found: Vec<(String, String)> = logical_lines(&text).iter().flat_map(|l| uses(l)).collect();
        if is_yaml {
            found.extend(yaml_uses(&text));
        }
        for (sub, flag) in found {
            if !checked.insert((sub.clone(), flag.clone())) {
                continue;
            }
            let text = helps.entry(sub.clone()).or_insert_with(|| help(&sub));
            if ![" ", "\n", "="].iter().any(|end| text.contains(&format!("{flag}{end}"))) {
                missing.push(format!("{}: kollector {sub} {flag}", p.display()));
            }
        }
    }
    assert!(checked.len() > 30, "too few flags found to trust the scan: {checked:?}");
    assert!(missing.is_empty(), "flags that kollector does not have:\n{}", missing.join("\n"));
}

#[test]
fn the_kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let venv = std::env::var("KOLLECTOR_TEST_VENV").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kollector-tests/venv")
    });
    let mut manifests = Vec::new();
    files(&repo().join("deploy/kubernetes"), &mut manifests);
    manifests.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    assert!(manifests.len() >= 8, "{manifests:?}");
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate (scripts/install-test-deps.sh installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "{text}");
    // Every Kubernetes object was checked; only kustomize's own files and
    // the Prometheus Operator's CRD have no schema.
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(["Kustomization", "ServiceMonitor", "ScrapeConfig"].iter().any(|k| line.contains(k)), "{line}");
    }
    for kind in [
        "deployment/manager",
        "statefulset/collector",
        "service/kollector-collector",
        "poddisruptionbudget/collector",
        "statefulset/etcd",
    ] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{text}");
    }
    // The probes use the endpoints kollector serves.
    for m in ["base/manager.yaml", "base/collector.yaml"] {
        let t = std::fs::read_to_string(repo().join("deploy/kubernetes").join(m)).unwrap();
        assert!(t.contains("path: /healthz") && t.contains("path: /readyz"), "{m}");
    }
}

#[test]
fn the_compose_file_runs_the_whole_stack_and_its_prometheus_config_checks() {
    let dir = repo().join("deploy/compose");
    let compose = std::fs::read_to_string(dir.join("compose.yaml")).unwrap();
    for service in [
        "pki",
        "etcd",
        "manager-1",
        "manager-2",
        "collector-1",
        "collector-2",
        "collector-3",
        "kafka",
        "traffic",
        "setup",
        "prometheus",
        "grafana",
    ] {
        assert!(compose.contains(&format!("\n  {service}:")), "service {service} missing");
    }
    assert!(compose.contains("../grafana:/var/lib/grafana/dashboards/kollector"), "dashboards provisioned");
    // promtool checks the Compose Prometheus config with the shipped rules beside it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("prometheus.yml"), tmp.path().join("prometheus.yml")).unwrap();
    std::fs::copy(repo().join("deploy/prometheus/kollector-rules.yml"), tmp.path().join("kollector-rules.yml"))
        .unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(tmp.path())
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    files(&repo().join("deploy/systemd"), &mut units);
    assert_eq!(units.len(), 3, "{units:?}");
    for unit in units {
        // Point ExecStart at the built binary: verify checks it is executable.
        let text = std::fs::read_to_string(&unit)
            .unwrap()
            .replace("/usr/local/bin/kollector", kollector_bin().to_str().unwrap());
        let name = unit.file_name().unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(name)
            .current_dir(dir.path())
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .expect("systemd-analyze (scripts/install-test-deps.sh installs systemd)");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "{}: {said}", unit.display());
    }
}

#[test]
fn the_container_image_is_multi_stage_unprivileged_and_shell_free_at_run_time() {
    let text = std::fs::read_to_string(repo().join("deploy/container/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let last = text.rsplit_once("\nFROM ").map(|(_, l)| l).unwrap();
    let user = last.lines().find_map(|l| l.trim().strip_prefix("USER ")).expect("a USER in the runtime stage");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "runs as {user}");
    let entry = last.lines().find_map(|l| l.trim().strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    assert!(entry.starts_with('['), "exec form (no shell at run time): {entry}");
    assert!(last.contains("COPY --from="), "the runtime copies the built binary");
    assert!(!last.contains("cargo"), "no toolchain in the runtime stage");
}
