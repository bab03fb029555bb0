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
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                    out.push((sub.to_string(), format!("--{name}")));
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
    for p in &paths {
        let Ok(text) = std::fs::read_to_string(p) else { continue };
        for line in logical_lines(&text) {
            for (sub, flag) in uses(&line) {
                if !checked.insert((sub.clone(), flag.clone())) {
                    continue;
                }
                if !help(&sub).contains(&format!("{flag} "))
                    && !help(&sub).contains(&format!("{flag}\n"))
                    && !help(&sub).contains(&format!("{flag}="))
                {
                    missing.push(format!("{}: kollector {sub} {flag}", p.display()));
                }
            }
        }
    }
    assert!(checked.len() > 30, "too few flags found to trust the scan: {checked:?}");
    assert!(missing.is_empty(), "flags that kollector does not have:\n{}", missing.join("\n"));
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
