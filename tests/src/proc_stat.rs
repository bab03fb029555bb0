//! What `/proc` says about a process's CPU time, sockets and threads, for
//! the cost benchmarks: CPU seconds used (all threads, dead ones included),
//! open socket descriptors, and a per-thread-name breakdown of CPU time and
//! wake-ups (context switches), which is how the benches show *where* an
//! idle process spends its CPU (librdkafka's `rdk:main`, `rdk:broker*`, …).

use std::collections::BTreeMap;

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (fields 14 and 15) of a `stat` line, in seconds; the
/// command name (in parentheses, may hold spaces) is skipped by its last ')'.
fn stat_cpu_and_name(text: &str) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state), so field n is rest[n - 3].
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / clock_ticks_per_second()))
}

/// CPU seconds used by `pid` so far, all threads (and exited ones) included.
/// For this process, from `getrusage` (microseconds); for another, from
/// `/proc/<pid>/stat` (clock ticks, 10 ms: fine over a minute's window).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    if pid == std::process::id() {
        // SAFETY: getrusage writes into the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Some(secs(usage.ru_utime) + secs(usage.ru_stime));
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_and_name(&text).map(|(_, s)| s)
}

/// Open socket descriptors of `pid` (TCP, UDP and Unix alike).
pub fn socket_count(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
        .count()
}

/// One thread group's use: threads, CPU seconds and context switches
/// (voluntary + involuntary; each is roughly one wake-up).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThreadUse {
    pub threads: usize,
    pub cpu_seconds: f64,
    pub switches: u64,
}

/// Threads of `pid` grouped by name with trailing digits dropped
/// (`rdk:broker17` and `rdk:broker3` are both `rdk:broker`): per thread id,
/// its group, CPU seconds and context switches.
pub fn threads(pid: u32) -> BTreeMap<u64, (String, f64, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((name, ticks)) = stat_cpu_and_name(&stat) else { continue };
        // schedstat's first field is the thread's time on a CPU in ns,
        // exact; stat's ticks miss threads that run for microseconds at a
        // time, which is how an idle librdkafka thread runs.
        let cpu = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .filter(|ns| *ns > 0) // all zeros where the kernel keeps no sched_info
            .map(|ns| ns as f64 / 1e9)
            .unwrap_or(ticks);
        let switches = std::fs::read_to_string(entry.path().join("status"))
            .map(|s| {
                s.lines()
                    .filter(|l| {
                        l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                    })
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        let group = name.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        out.insert(tid, (group, cpu, switches));
    }
    out
}

/// What each thread group used between two [`threads`] samples (threads
/// born in between count from zero; threads that exited are not seen).
pub fn thread_use_between(
    before: &BTreeMap<u64, (String, f64, u64)>,
    after: &BTreeMap<u64, (String, f64, u64)>,
) -> BTreeMap<String, ThreadUse> {
    let mut out: BTreeMap<String, ThreadUse> = BTreeMap::new();
    for (tid, (group, cpu, switches)) in after {
        let (cpu0, sw0) = before.get(tid).map(|(_, c, s)| (*c, *s)).unwrap_or((0.0, 0));
        let e = out.entry(group.clone()).or_default();
        e.threads += 1;
        e.cpu_seconds += (cpu - cpu0).max(0.0);
        e.switches += switches.saturating_sub(sw0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        let line = "4242 (admin client (x) 1) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 0";
        let (name, cpu) = stat_cpu_and_name(line).unwrap();
        assert_eq!(name, "admin client (x) 1");
        assert!((cpu - 300.0 / clock_ticks_per_second()).abs() < 1e-9);
    }

    #[test]
    fn this_process_uses_cpu_and_has_threads() {
        let pid = std::process::id();
        let t = threads(pid);
        assert!(!t.is_empty());
        assert!(cpu_seconds(pid).is_some());
    }
}
