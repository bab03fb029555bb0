//! What the OS says about a process's TCP connections: the socket inodes in
//! `/proc/<pid>/fd` joined with `/proc/net/tcp{,6}`. This is how tests prove
//! that a stopped monitor's Kafka client really closed its sockets.

use std::collections::HashSet;

const TCP_ESTABLISHED: &str = "01";

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return inodes;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(num) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(inode) = num.parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

/// Number of ESTABLISHED TCP connections owned by `pid` whose remote port is
/// `remote_port`.
pub fn established_connections_to(pid: u32, remote_port: u16) -> usize {
    let inodes = socket_inodes(pid);
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != TCP_ESTABLISHED {
                continue;
            }
            let port = cols[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode: Option<u64> = cols[9].parse().ok();
            if port == Some(remote_port) && inode.is_some_and(|i| inodes.contains(&i)) {
                count += 1;
            }
        }
    }
    count
}

/// Number of threads of `pid`, from `/proc/<pid>/status`.
pub fn thread_count(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// Resident memory of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// A TCP listener that accepts connections and never answers: a broker that
/// is "black-holed" (reachable, silent). Its connections close when it drops.
pub struct BlackHole {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind black hole");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        BlackHole { port, stop, thread: Some(thread) }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
