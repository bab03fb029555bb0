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

/// A TCP proxy the test controls, to cut a process off from one peer (etcd,
/// a broker) while everything else keeps working. `cut` makes it a network
/// partition: connections stay open but nothing crosses any more, in either
/// direction, and new connections are accepted and left silent. `restore`
/// lets traffic through again (on new connections).
pub struct TcpProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start(target: &str) -> TcpProxy {
        use std::sync::atomic::Ordering::SeqCst;
        let target: std::net::SocketAddr = target.parse().expect("proxy target host:port");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut2, stop2) = (cut.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut silent = Vec::new();
            while !stop2.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                if cut2.load(SeqCst) {
                    silent.push(client);
                    continue;
                }
                let Ok(upstream) = std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))
                else {
                    continue;
                };
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { continue };
                    let (cut, stop) = (cut2.clone(), stop2.clone());
                    std::thread::spawn(move || pump(&mut from, &mut to, &cut, &stop));
                }
            }
        });
        TcpProxy { port, cut, stop, thread: Some(thread) }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies bytes until either side closes or the proxy stops; drops them while cut.
fn pump(
    from: &mut std::net::TcpStream,
    to: &mut std::net::TcpStream,
    cut: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    read_chunks(from, stop, |bytes| cut.load(std::sync::atomic::Ordering::SeqCst) || to.write_all(bytes).is_ok());
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Reads `from` until it closes, the proxy stops or `chunk` returns false,
/// handing each chunk read to `chunk` (reads wake every 100 ms to see a stop).
fn read_chunks(
    from: &mut std::net::TcpStream,
    stop: &std::sync::atomic::AtomicBool,
    mut chunk: impl FnMut(&[u8]) -> bool,
) {
    use std::io::Read;
    let _ = from.set_read_timeout(Some(std::time::Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !chunk(&buf[..n]) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The remote ports of every ESTABLISHED TCP connection of each of `pids`,
/// from one read of `/proc/net/tcp{,6}` (cheap enough to sample often).
pub fn remote_ports_by_pid(pids: &[u32]) -> std::collections::HashMap<u32, HashSet<u16>> {
    let inodes: Vec<(u32, HashSet<u64>)> = pids.iter().map(|p| (*p, socket_inodes(*p))).collect();
    let mut by_inode: std::collections::HashMap<u64, u16> = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != TCP_ESTABLISHED {
                continue;
            }
            let port = cols[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, cols[9].parse::<u64>()) {
                by_inode.insert(inode, port);
            }
        }
    }
    inodes.into_iter().map(|(pid, set)| (pid, set.iter().filter_map(|i| by_inode.get(i).copied()).collect())).collect()
}

/// Whether `pid` is stopped (SIGSTOP), from `/proc/<pid>/stat`.
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// A TCP proxy that holds every answer (bytes from the target back to the
/// client) for `delay` before passing it on, in order, while requests go
/// through at once: a peer that answers every call, slowly (an overloaded
/// collector). It listens before it knows its target, so a process can be
/// told to advertise the proxy's address and the target set once the
/// process has its port (connections made meanwhile wait for it).
pub struct DelayProxy {
    pub port: u16,
    target: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DelayProxy {
    pub fn bind(delay: std::time::Duration) -> DelayProxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let target: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>> = Default::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (target2, stop2) = (target.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                // A connection made before the target is known waits for it.
                let to = loop {
                    if let Some(to) = *target2.lock().unwrap_or_else(|p| p.into_inner()) {
                        break Some(to);
                    }
                    if stop2.load(SeqCst) {
                        break None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                };
                let Some(to) = to else { continue };
                let Ok(upstream) = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2)) else {
                    continue;
                };
                let never_cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                if let (Ok(mut from), Ok(mut to)) = (client.try_clone(), upstream.try_clone()) {
                    let (cut, stop) = (never_cut.clone(), stop2.clone());
                    std::thread::spawn(move || pump(&mut from, &mut to, &cut, &stop));
                }
                let stop = stop2.clone();
                std::thread::spawn(move || delay_line(upstream, client, delay, &stop));
            }
        });
        DelayProxy { port, target, stop, thread: Some(thread) }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where new connections go.
    pub fn set_target(&self, target: &str) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.parse().expect("host:port"));
    }
}

/// Reads `from` and writes each chunk to `to` once it is `delay` old: one
/// thread reads (so reading never waits on the delay), one writes in order.
fn delay_line(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    delay: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        while let Ok((read_at, bytes)) = rx.recv() {
            let due = read_at + delay;
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
    read_chunks(&mut from, stop, |bytes| tx.send((std::time::Instant::now(), bytes.to_vec())).is_ok());
    drop(tx);
    let _ = writer.join();
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
