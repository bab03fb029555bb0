//! Network cuts made with the kernel's packet filter (iptables), for faults
//! a proxy cannot fake: a node that stays up and keeps its other
//! connections (its etcd lease, its Kafka brokers) while one peer can no
//! longer reach one of its ports, established connections included.
//!
//! A [`PortCut`] drops every loopback packet to or from one port the test
//! picked itself, both directions, so connections hang as on a real
//! partition instead of being refused. Each rule carries a comment naming
//! this test process; dropping the cut deletes its rules, also when the
//! test panics (unwinding runs `Drop`). Rules of earlier test processes
//! that are gone (killed before they could clean up) are swept at the next
//! cut; rules of live processes and any rule without our comment are never
//! touched.

use std::process::Command;

const TAG: &str = "kollector-test-";

/// Drops every packet to or from 127.0.0.1:`port` until dropped.
pub struct PortCut {
    port: u16,
    rules: Vec<Vec<String>>,
}

/// Debian installs it in /usr/sbin, which a non-login PATH may lack.
fn program() -> &'static str {
    if std::path::Path::new("/usr/sbin/iptables").exists() {
        "/usr/sbin/iptables"
    } else {
        "iptables"
    }
}

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new(program())
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables ({e}); scripts/install-test-deps.sh installs it"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn rule(port: u16, direction: &str) -> Vec<String> {
    let comment = format!("{TAG}{}", std::process::id());
    [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        direction,
        &port.to_string(),
        "-m",
        "comment",
        "--comment",
        &comment,
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Deletes rules left by test processes that no longer exist.
fn sweep_dead() {
    let Ok(out) = Command::new(program()).args(["-w", "-S", "INPUT"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pid) = line.split(TAG).nth(1).and_then(|rest| rest.split_whitespace().next()) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            if let Some(spec) = line.strip_prefix("-A ") {
                let mut args = vec!["-D".to_string()];
                args.extend(spec.split_whitespace().map(|s| s.trim_matches('"').to_string()));
                let _ = iptables(&args);
            }
        }
    }
}

impl PortCut {
    /// Cuts `port` on loopback: packets to it and from it are dropped.
    /// Panics (failing the test) if the packet filter cannot be used: a
    /// network-fault test that silently did not cut proves nothing.
    pub fn start(port: u16) -> PortCut {
        sweep_dead();
        let mut cut = PortCut { port, rules: Vec::new() };
        for direction in ["--dport", "--sport"] {
            let r = rule(port, direction);
            let mut insert = vec!["-I".to_string()];
            insert.extend(r.iter().cloned());
            if let Err(e) = iptables(&insert) {
                panic!("cannot cut port {port} with the packet filter: {e}");
            }
            cut.rules.push(r);
        }
        cut
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Lets packets through again (also done on drop).
    pub fn heal(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        for r in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(r);
            if let Err(e) = iptables(&delete) {
                eprintln!("could not remove a packet-filter rule: {e}");
            }
        }
    }
}

impl Drop for PortCut {
    fn drop(&mut self) {
        self.remove();
    }
}
