//! A virtual multi-broker Kafka cluster in front of ONE tansu broker, with
//! faults a test sets per broker.
//!
//! tansu 0.6.0 is a single node (id 111) and librdkafka's mock cluster, which
//! has many brokers, answers no group listing (see
//! `shared/reference/kafka-test-brokers.md`). kollector's partial-failure rule
//! ("what was read is published, what was not is named", DESIGN.md) is about
//! one broker or one coordinator failing while the others answer, with the
//! group APIs in play, so neither broker alone can test it. This harness
//! makes tansu look like N brokers:
//!
//! - N listeners on 127.0.0.1 are virtual brokers 1..=N; every connection to
//!   one gets its own upstream connection to tansu, so a fault on one virtual
//!   broker touches only the connections made to it.
//! - Answers that describe the cluster are rewritten: Metadata and
//!   DescribeTopicPartitions (brokers = the N listeners, partition p of a
//!   topic led by [`VirtualCluster::leader_of`]), FindCoordinator (every
//!   version, batched v4+ too: [`VirtualCluster::coordinator_of`], which a
//!   test may pin with [`VirtualCluster::pin_group`]), DescribeCluster (the N
//!   listeners, tansu's cluster id) and ListGroups (a virtual broker lists only
//!   the groups it coordinates). Everything else passes through byte for byte.
//! - Each virtual broker can be given a [`Fault`] at any time and have it
//!   cleared again: refused connections, a broker that accepts but never
//!   answers, delayed answers, an answer cut off mid-way, coordinator error
//!   codes, throttling.
//! - Requests are counted per virtual broker and API key, and so are requests
//!   a client sent while a throttle it was told about still ran.
//!
//! What it is not: tansu still leads every partition and coordinates every
//! group, so a request sent to the "wrong" virtual broker is answered as if
//! it were the right one (no NOT_LEADER_OR_FOLLOWER, no NOT_COORDINATOR
//! unless a test sets that fault). Tests that care about routing read the
//! per-broker request counts.
//!
//! Std threads and blocking sockets, like the other proxies here
//! ([`crate::request_counter`]): per virtual broker one thread blocked in
//! `accept`, per connection one thread reading requests and one reading
//! answers. Nothing spins: waits for a fault to change are on a condition
//! variable, and dropping the cluster wakes and joins every thread before
//! tansu is killed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    RequestHeader, ResponseHeader, ResponseKind, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::tansu::TansuBroker;

/// tansu's node id (fixed in tansu 0.6.0); the virtual brokers are 1..=N.
pub const TANSU_NODE_ID: i32 = 111;

/// Error codes a coordinator answers with (Kafka's numbering).
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;

/// Kafka's `socket.request.max.bytes` default: a client frame claiming more
/// is malformed and closes the connection.
const MAX_REQUEST: usize = 100 << 20;
/// tansu's answers (Fetch can be large); a bigger claimed length is treated
/// as a broken upstream and closes the connection.
const MAX_ANSWER: usize = 512 << 20;
/// Backlog when a refused listener listens again.
const BACKLOG: i32 = 128;
/// The client id of the substitute requests (see [`Pending::synthesized`]).
const SUBSTITUTE_CLIENT: &str = "virtual-cluster";

/// Group APIs a coordinator serves (not FindCoordinator, which any broker
/// answers): the set [`ErrorApis::Coordinator`] stands for.
const COORDINATOR_APIS: [ApiKey; 9] = [
    ApiKey::ListGroups,
    ApiKey::DescribeGroups,
    ApiKey::OffsetFetch,
    ApiKey::OffsetCommit,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::DeleteGroups,
];

/// What one virtual broker does wrong until the fault is cleared.
///
/// Refuse and Stuck act on the connections at once. The error codes and
/// Stuck's silence apply to requests read after [`VirtualCluster::set_fault`]
/// returned; Delay, CloseMidAnswer and Throttle to answers sent after it (an
/// answer already on its way when a fault is set gets the fault; a request
/// already forwarded is answered by tansu).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// New connections are refused (ECONNREFUSED) and existing ones closed.
    Refuse,
    /// Connections are accepted (existing ones kept) but nothing is ever
    /// answered: requests are read and dropped, answers already on their way
    /// are held. When cleared, the connections that lived through it are
    /// closed (their requests were dropped, so their answers could never
    /// match up again); new connections work.
    Stuck,
    /// Every answer leaves this long after tansu gave it.
    Delay(Duration),
    /// The next answer on each connection is cut off half-way (length prefix
    /// and part of the body sent), then the connection is closed.
    CloseMidAnswer,
    /// Group requests in `apis` are answered with `code` (14, 15, 16...), as
    /// a coordinator that is loading or gone would, in the shape Kafka gives
    /// them: per group for batched DescribeGroups, OffsetFetch v8+ and
    /// FindCoordinator v4+, top-level otherwise, per partition for
    /// OffsetCommit and OffsetFetch v1. The answer is built here from the
    /// request, which never reaches tansu (a "loading" coordinator that
    /// applied a commit while answering 14 would be a lie). With
    /// `keep_listed_groups`, ListGroups does go to tansu and keeps the groups
    /// this broker lists next to the error code (Kafka's classic coordinator
    /// answers 14 together with the groups already loaded); without, the
    /// list is empty. A group request whose version the kafka-protocol
    /// crate cannot decode (below its minimum, e.g. OffsetCommit v0-1) closes
    /// the connection instead.
    ErrorCode { apis: ErrorApis, code: i16, keep_listed_groups: bool },
    /// Answers pass through with `throttle_time_ms` set to this in every
    /// answer whose version has the field, ApiVersions' aside (kollector
    /// does not honour a throttle there: librdkafka's mock cluster fills
    /// that field with garbage, and it comes before any other request);
    /// requests a client sends on that connection before the throttle ran
    /// out are counted ([`VirtualCluster::sent_while_throttled`]).
    Throttle(Duration),
    /// A DescribeGroups asking for more than this many groups is answered
    /// with a frame longer than a client takes (64 MiB and a byte, as
    /// groups with thousands of members and their assignments would give);
    /// only the length is sent, then the connection is closed. Smaller
    /// requests are answered as usual.
    OversizedDescribe { above_groups: usize },
}

impl Fault {
    /// `code` on every API a coordinator serves, ListGroups answering with
    /// an empty list.
    pub fn coordinator_error(code: i16) -> Fault {
        Fault::ErrorCode { apis: ErrorApis::Coordinator, code, keep_listed_groups: false }
    }
}

/// Which requests an [`Fault::ErrorCode`] applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum ErrorApis {
    /// What a coordinator serves: ListGroups, DescribeGroups, OffsetFetch,
    /// OffsetCommit, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DeleteGroups.
    /// FindCoordinator still answers (any broker answers it).
    Coordinator,
    /// [`ErrorApis::Coordinator`] and FindCoordinator.
    AllGroup,
    /// Just these (of the APIs above; others are not affected).
    Only(Vec<ApiKey>),
}

impl ErrorApis {
    fn contains(&self, api: ApiKey) -> bool {
        match self {
            ErrorApis::Coordinator => COORDINATOR_APIS.contains(&api),
            ErrorApis::AllGroup => COORDINATOR_APIS.contains(&api) || api == ApiKey::FindCoordinator,
            ErrorApis::Only(apis) => {
                apis.contains(&api) && (COORDINATOR_APIS.contains(&api) || api == ApiKey::FindCoordinator)
            }
        }
    }
}

/// N virtual brokers in front of one tansu broker; everything stops and
/// tansu is killed on drop.
pub struct VirtualCluster {
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
    // Dropped (killed) after `Drop::drop` below has stopped every thread.
    tansu: TansuBroker,
}

struct Shared {
    upstream: String,
    /// Virtual broker `id` is `brokers[id - 1]`.
    brokers: Vec<Broker>,
    pins: Mutex<BTreeMap<String, i32>>,
    /// API key → the highest version every virtual broker offers in its
    /// ApiVersions answers (an older broker), whatever tansu offers.
    caps: Mutex<BTreeMap<i16, i16>>,
    stop: AtomicBool,
    /// Connection threads, joined on drop.
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_connection: AtomicU64,
    /// Starts the name of each of this cluster's threads ("vc" and the first
    /// virtual broker's port: unique among live clusters, and short, as
    /// Linux keeps 15 bytes of a thread's name).
    thread_prefix: String,
}

struct Broker {
    id: i32,
    port: u16,
    listener: TcpListener,
    /// The fault and the open connections, under one lock so a connection
    /// accepted while a fault is being set is either closed by `set_fault`
    /// or sees the fault when it registers.
    state: Mutex<BrokerState>,
    /// Signalled when the fault changes, a connection closes or the cluster
    /// stops: what held answers and delays wait on.
    changed: Condvar,
    counts: Mutex<BTreeMap<i16, u64>>,
    sent_while_throttled: AtomicU64,
    accepted: AtomicU64,
    /// Bytes of request frames received and of answer frames sent (length
    /// prefixes included): what crossed the wire.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Where this broker's new connections go instead of the cluster's
    /// tansu (a test's "DNS change": the same address now reaches another
    /// cluster); None: the cluster's tansu.
    route: Mutex<Option<String>>,
}

#[derive(Default)]
struct BrokerState {
    fault: Option<Fault>,
    connections: BTreeMap<u64, Arc<Connection>>,
}

/// One client connection and its upstream connection to tansu.
struct Connection {
    client: TcpStream,
    upstream: Mutex<Option<TcpStream>>,
    closed: AtomicBool,
    /// Requests forwarded and not answered yet, by correlation id. Kafka
    /// answers in order on a connection, but keying by correlation id also
    /// copes with requests that get no answer (Produce with acks=0).
    pending: Mutex<HashMap<i32, Pending>>,
    /// Until when the client was told to hold back (last throttled answer).
    throttled_until: Mutex<Option<Instant>>,
}

/// What the answer to a forwarded request needs to be understood.
struct Pending {
    api: ApiKey,
    version: i16,
    /// FindCoordinator v0-3: the key asked for (the answer does not repeat it).
    coordinator_key: Option<String>,
    /// A group request under an error fault is answered here: tansu got an
    /// ApiVersions v0 request with the same correlation id instead, so the
    /// answers stay in order, and its answer is replaced by this body.
    synthesized: Option<Bytes>,
    /// Answered with an oversized frame's length, then the connection closes.
    oversized: bool,
    /// An OffsetFetch the client sent at this version (before v8), passed
    /// to tansu as v8 (tansu's own answers before v8 do not decode): its
    /// answer is turned back into this version's shape.
    older: Option<i16>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take the harness down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// FNV-1a, 32 bits: a hash that is the same in every build and Rust
/// version (std's hasher is not promised to be), so a test can know where
/// a partition's leader or a group's coordinator is.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

impl VirtualCluster {
    /// Starts tansu (cluster id `cluster_id`) and `brokers` virtual brokers,
    /// ids 1..=`brokers`, on free 127.0.0.1 ports.
    pub fn start(cluster_id: &str, brokers: usize) -> VirtualCluster {
        assert!(brokers >= 1, "a cluster needs a broker");
        let listeners: Vec<(TcpListener, u16)> = (0..brokers).map(|_| bind_listener()).collect();
        // tansu advertises the first virtual broker: anything it says about
        // its own address that is not rewritten still leads back here.
        let tansu = TansuBroker::start_advertising(cluster_id, crate::free_port(), listeners[0].1);
        let thread_prefix = format!("vc{}", listeners[0].1);
        let shared = Arc::new(Shared {
            upstream: tansu.bootstrap(),
            brokers: listeners
                .into_iter()
                .enumerate()
                .map(|(i, (listener, port))| Broker {
                    id: i as i32 + 1,
                    port,
                    listener,
                    state: Mutex::default(),
                    changed: Condvar::new(),
                    counts: Mutex::default(),
                    sent_while_throttled: AtomicU64::new(0),
                    accepted: AtomicU64::new(0),
                    bytes_in: AtomicU64::new(0),
                    bytes_out: AtomicU64::new(0),
                    route: Mutex::new(None),
                })
                .collect(),
            pins: Mutex::default(),
            caps: Mutex::default(),
            stop: AtomicBool::new(false),
            threads: Mutex::default(),
            next_connection: AtomicU64::new(0),
            thread_prefix: thread_prefix.clone(),
        });
        let accept_threads = (0..brokers)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{thread_prefix}-acc{}", i + 1))
                    .spawn(move || accept_loop(s, i))
                    .expect("spawn an accept thread")
            })
            .collect();
        VirtualCluster { shared, accept_threads, tansu }
    }

    /// The N virtual brokers' addresses, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        (1..=self.brokers() as i32).map(|id| self.address(id)).collect::<Vec<_>>().join(",")
    }

    /// How many virtual brokers there are.
    pub fn brokers(&self) -> usize {
        self.shared.brokers.len()
    }

    /// `127.0.0.1:PORT` of virtual broker `broker`.
    pub fn address(&self, broker: i32) -> String {
        format!("127.0.0.1:{}", self.port(broker))
    }

    pub fn port(&self, broker: i32) -> u16 {
        self.broker(broker).port
    }

    /// The tansu broker behind the cluster (its pid, to freeze it; its own
    /// address, to bypass the virtual brokers).
    pub fn tansu(&self) -> &TansuBroker {
        &self.tansu
    }

    pub fn cluster_id(&self) -> &str {
        self.tansu.cluster_id()
    }

    /// The virtual broker shown as leader of `topic`/`partition` (and as its
    /// only replica and ISR): `((partition + fnv1a(topic)) % N) + 1`, so
    /// consecutive partitions of a topic go round the brokers.
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        leader_of(self.brokers(), topic, partition)
    }

    /// The virtual broker FindCoordinator names for `group` (and whose
    /// ListGroups lists it): the pinned broker if [`VirtualCluster::pin_group`]
    /// was called, else `(fnv1a(group) % N) + 1`. Transactional ids are
    /// placed the same way.
    pub fn coordinator_of(&self, group: &str) -> i32 {
        self.shared.coordinator_of(group)
    }

    /// Makes `broker` the coordinator of `group` from now on.
    pub fn pin_group(&self, group: &str, broker: i32) {
        self.broker(broker);
        lock(&self.shared.pins).insert(group.to_string(), broker);
    }

    /// Undoes [`VirtualCluster::pin_group`].
    pub fn unpin_group(&self, group: &str) {
        lock(&self.shared.pins).remove(group);
    }

    /// Gives `broker` a fault (replacing any it had); in force when this
    /// returns: a refused broker refuses the next connect.
    pub fn set_fault(&self, broker: i32, fault: Fault) {
        let b = self.broker(broker);
        let mut state = lock(&b.state);
        let old = state.fault.take();
        leave_fault(b, &mut state, old.as_ref(), Some(&fault));
        if fault == Fault::Refuse && old != Some(Fault::Refuse) {
            stop_listening(&b.listener).expect("stop listening");
            for c in state.connections.values() {
                c.close();
            }
        }
        state.fault = Some(fault);
        b.changed.notify_all();
    }

    /// Sends `broker`'s new connections to `upstream` (another broker,
    /// e.g. another cluster's tansu) instead of this cluster's tansu, and
    /// closes its open connections, as a DNS change followed by a reconnect
    /// would: the same address now reaches someone else. Answers are still
    /// rewritten as this cluster's topology, the cluster id aside.
    pub fn route_to(&self, broker: i32, upstream: &str) {
        let b = self.broker(broker);
        *lock(&b.route) = Some(upstream.to_string());
        for c in lock(&b.state).connections.values() {
            c.close();
        }
    }

    /// Clears `broker`'s fault; a refused broker accepts again, the
    /// connections of a stuck one are closed.
    pub fn clear_fault(&self, broker: i32) {
        let b = self.broker(broker);
        let mut state = lock(&b.state);
        let old = state.fault.take();
        leave_fault(b, &mut state, old.as_ref(), None);
        b.changed.notify_all();
    }

    /// `broker`'s current fault.
    pub fn fault(&self, broker: i32) -> Option<Fault> {
        lock(&self.broker(broker).state).fault.clone()
    }

    /// Requests `broker` received so far, by API key (requests a fault
    /// swallowed included).
    pub fn requests(&self, broker: i32) -> BTreeMap<i16, u64> {
        lock(&self.broker(broker).counts).clone()
    }

    /// Requests of one API `broker` received so far.
    pub fn request_count(&self, broker: i32, api: ApiKey) -> u64 {
        lock(&self.broker(broker).counts).get(&(api as i16)).copied().unwrap_or(0)
    }

    /// Requests `broker` received on a connection whose last answer carried
    /// a throttle that had not run out yet: a client honouring KIP-219 sends
    /// none. (A request the client had sent before it read the throttled
    /// answer would count too; a client that waits for each answer never
    /// does that.)
    pub fn sent_while_throttled(&self, broker: i32) -> u64 {
        self.broker(broker).sent_while_throttled.load(Ordering::SeqCst)
    }

    /// Bytes `broker` received (requests) and sent (answers) so far.
    pub fn bytes(&self, broker: i32) -> (u64, u64) {
        let b = self.broker(broker);
        (b.bytes_in.load(Ordering::SeqCst), b.bytes_out.load(Ordering::SeqCst))
    }

    /// Makes every virtual broker offer `api` up to version `max` at most
    /// (an older Kafka), in ApiVersions answers given from now on: a client
    /// that believes them never sends a newer version. (OffsetFetch below
    /// v8 is passed to tansu as v8 and its answer turned back; faults other
    /// than Refuse, Stuck and Delay do not apply to those answers.)
    pub fn cap_version(&self, api: ApiKey, max: i16) {
        lock(&self.shared.caps).insert(api as i16, max);
    }

    /// Connections `broker` accepted so far.
    pub fn connections_accepted(&self, broker: i32) -> u64 {
        self.broker(broker).accepted.load(Ordering::SeqCst)
    }

    /// What the names of this cluster's threads start with (as
    /// `/proc/self/task/*/comm` shows them), to check none is left.
    pub fn thread_name_prefix(&self) -> String {
        format!("{}-", self.shared.thread_prefix)
    }

    /// Connections to `broker` open now.
    pub fn open_connections(&self, broker: i32) -> usize {
        lock(&self.broker(broker).state).connections.len()
    }

    /// Forgets every broker's counts.
    pub fn reset_counts(&self) {
        for b in &self.shared.brokers {
            lock(&b.counts).clear();
            b.sent_while_throttled.store(0, Ordering::SeqCst);
            b.accepted.store(0, Ordering::SeqCst);
            b.bytes_in.store(0, Ordering::SeqCst);
            b.bytes_out.store(0, Ordering::SeqCst);
        }
    }

    fn broker(&self, id: i32) -> &Broker {
        self.shared.broker(id).unwrap_or_else(|| panic!("no virtual broker {id} (1..={})", self.brokers()))
    }
}

impl Drop for VirtualCluster {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for b in &self.shared.brokers {
            let state = lock(&b.state);
            // Wakes the accept thread blocked in accept() (it gets EINVAL).
            let _ = stop_listening(&b.listener);
            for c in state.connections.values() {
                c.close();
            }
            b.changed.notify_all();
        }
        for t in self.accept_threads.drain(..) {
            let _ = t.join();
        }
        // Request threads may start answer threads while we join: take
        // until none are left.
        loop {
            let threads = std::mem::take(&mut *lock(&self.shared.threads));
            if threads.is_empty() {
                break;
            }
            for t in threads {
                let _ = t.join();
            }
        }
        // `tansu` is killed when the fields drop, after this.
    }
}

fn leader_of(brokers: usize, topic: &str, partition: i32) -> i32 {
    let n = brokers as u64;
    ((u64::from(partition.max(0) as u32) + u64::from(fnv1a(topic.as_bytes()))) % n) as i32 + 1
}

/// What leaving `old` for `new` undoes.
fn leave_fault(b: &Broker, state: &mut BrokerState, old: Option<&Fault>, new: Option<&Fault>) {
    if old == Some(&Fault::Refuse) && new != Some(&Fault::Refuse) {
        listen_again(&b.listener).expect("listen again");
    }
    if old == Some(&Fault::Stuck) && new != Some(&Fault::Stuck) {
        for c in state.connections.values() {
            c.close();
        }
    }
}

/// A listener on a free port bound by number: see [`stop_listening`] for why
/// the number matters.
fn bind_listener() -> (TcpListener, u16) {
    for _ in 0..50 {
        let port = crate::free_port();
        // std sets SO_REUSEADDR on listeners, so the TIME_WAIT sockets of
        // closed connections do not stand in the way.
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return (l, port);
        }
    }
    panic!("no free port for a virtual broker");
}

/// Stops `listener` listening while keeping its port: connects get
/// ECONNREFUSED (a RST to the SYN, what a stopped broker gives), and a
/// thread blocked in accept() returns with EINVAL.
///
/// Why this and not the alternatives: closing the listener and binding the
/// port again later leaves a window in which any other process may take the
/// port; accepting and resetting (SO_LINGER 0) lets the TCP handshake
/// succeed, so the client sees a connection that dies rather than a refused
/// one. On Linux, shutdown(SHUT_RD) of a listening socket moves it to
/// CLOSE without unbinding it when it was bound to an explicit port
/// (SOCK_BINDPORT_LOCK), and listen() on it again resumes on the same port:
/// the port is never free for anyone else.
fn stop_listening(listener: &TcpListener) -> std::io::Result<()> {
    // SAFETY: shutdown(2) on the descriptor `listener` owns and keeps open
    // for the duration of the call; no memory is passed.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Already not listening.
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        return Ok(());
    }
    Err(e)
}

/// Undoes [`stop_listening`].
fn listen_again(listener: &TcpListener) -> std::io::Result<()> {
    // SAFETY: listen(2) on the descriptor `listener` owns; no memory is passed.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Shared {
    fn broker(&self, id: i32) -> Option<&Broker> {
        usize::try_from(id).ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.brokers.get(i))
    }

    fn coordinator_of(&self, group: &str) -> i32 {
        if let Some(b) = lock(&self.pins).get(group) {
            return *b;
        }
        (fnv1a(group.as_bytes()) % self.brokers.len() as u32) as i32 + 1
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Starts a connection thread, to be joined on drop; false if none
    /// could be started.
    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> bool {
        let mut threads = lock(&self.threads);
        // Forget the finished ones so a long test does not collect handles.
        threads.retain(|t| !t.is_finished());
        match std::thread::Builder::new().name(name).spawn(f) {
            Ok(t) => {
                threads.push(t);
                true
            }
            Err(e) => {
                eprintln!("virtual cluster: spawning a connection thread failed: {e}");
                false
            }
        }
    }

    /// Closes `conn` and wakes whatever waits on its broker.
    fn close(&self, b: &Broker, conn: &Connection) {
        conn.close();
        let _state = lock(&b.state);
        b.changed.notify_all();
    }

    /// Waits while `b` is stuck (the connection then ends: clearing Stuck
    /// closes it).
    fn hold_while_stuck(&self, b: &Broker, conn: &Connection) {
        let mut state = lock(&b.state);
        while state.fault == Some(Fault::Stuck) && !conn.is_closed() && !self.stopping() {
            state = b.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until `deadline`; false if the connection closed or the
    /// cluster stopped first.
    fn wait_until(&self, b: &Broker, conn: &Connection, deadline: Instant) -> bool {
        let mut state = lock(&b.state);
        loop {
            if conn.is_closed() || self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = b.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        if let Some(up) = lock(&self.upstream).as_ref() {
            let _ = up.shutdown(Shutdown::Both);
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

fn accept_loop(shared: Arc<Shared>, index: usize) {
    let b = &shared.brokers[index];
    loop {
        if shared.stopping() {
            return;
        }
        match b.listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                let Ok(handle) = client.try_clone() else { continue };
                let conn = Arc::new(Connection {
                    client: handle,
                    upstream: Mutex::new(None),
                    closed: AtomicBool::new(false),
                    pending: Mutex::default(),
                    throttled_until: Mutex::new(None),
                });
                let id = shared.next_connection.fetch_add(1, Ordering::SeqCst);
                {
                    let mut state = lock(&b.state);
                    // Accepted just before the listener was shut: refused
                    // after all (and never if the cluster is stopping).
                    if shared.stopping() || state.fault == Some(Fault::Refuse) {
                        conn.close();
                        continue;
                    }
                    state.connections.insert(id, conn.clone());
                }
                b.accepted.fetch_add(1, Ordering::SeqCst);
                let (s, c) = (shared.clone(), conn.clone());
                let spawned = shared.spawn(format!("{}-b{}r{id}", shared.thread_prefix, b.id), move || {
                    serve_requests(&s, index, id, &c, client)
                });
                if !spawned {
                    conn.close();
                    lock(&b.state).connections.remove(&id);
                }
            }
            Err(_) => {
                // The listener was shut (Refuse, or the cluster stopping):
                // wait for the fault to change rather than spin. Or accept
                // failed for a passing reason (ECONNABORTED, EMFILE): try
                // again a little later.
                let mut state = lock(&b.state);
                let refused = state.fault == Some(Fault::Refuse);
                while state.fault == Some(Fault::Refuse) && !shared.stopping() {
                    state = b.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                if !refused && !shared.stopping() {
                    let _ = b.changed.wait_timeout(state, Duration::from_millis(20));
                }
            }
        }
    }
}

/// One connection's requests: connect upstream, start the answer thread,
/// then read, count and forward each request until either side closes.
fn serve_requests(shared: &Arc<Shared>, index: usize, id: u64, conn: &Arc<Connection>, mut client: TcpStream) {
    let b = &shared.brokers[index];
    let route = lock(&b.route).clone().unwrap_or_else(|| shared.upstream.clone());
    if let Ok(upstream) = TcpStream::connect(&route) {
        let _ = upstream.set_nodelay(true);
        if let (Ok(mut to_tansu), Ok(from_tansu), Ok(to_client)) =
            (upstream.try_clone(), upstream.try_clone(), client.try_clone())
        {
            *lock(&conn.upstream) = Some(upstream);
            // Closed while we connected: close() did not see the upstream.
            if conn.is_closed() {
                conn.close();
            }
            let (s, c) = (shared.clone(), conn.clone());
            if shared.spawn(format!("{}-b{}a{id}", shared.thread_prefix, b.id), move || {
                serve_answers(&s, index, &c, from_tansu, to_client)
            }) {
                forward_requests(shared, b, conn, &mut client, &mut to_tansu);
            }
        }
    }
    shared.close(b, conn);
    lock(&b.state).connections.remove(&id);
}

fn forward_requests(shared: &Shared, b: &Broker, conn: &Connection, client: &mut TcpStream, to_tansu: &mut TcpStream) {
    while let Some(frame) = read_frame(client, MAX_REQUEST) {
        if shared.stopping() {
            return;
        }
        // api key, api version, correlation id: a frame without them is malformed.
        let Some(head) = frame.get(..8) else { return };
        let key = i16::from_be_bytes([head[0], head[1]]);
        let version = i16::from_be_bytes([head[2], head[3]]);
        let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        *lock(&b.counts).entry(key).or_default() += 1;
        b.bytes_in.fetch_add(frame.len() as u64 + 4, Ordering::SeqCst);
        if lock(&conn.throttled_until).is_some_and(|until| Instant::now() < until) {
            b.sent_while_throttled.fetch_add(1, Ordering::SeqCst);
        }
        let fault = lock(&b.state).fault.clone();
        if fault == Some(Fault::Stuck) {
            // Swallowed: a stuck broker never answers.
            continue;
        }
        let Ok(api) = ApiKey::try_from(key) else {
            // An API kafka-protocol does not know: passed through; its
            // answer passes through too (no pending entry).
            if write_frame(to_tansu, &frame).is_err() {
                return;
            }
            continue;
        };
        let mut pending =
            Pending { api, version, coordinator_key: None, synthesized: None, older: None, oversized: false };
        if let (Some(Fault::OversizedDescribe { above_groups }), ApiKey::DescribeGroups) = (&fault, api) {
            let Some(req) = request_body(&frame, api, version)
                .and_then(|mut body| DescribeGroupsRequest::decode(&mut body, version).ok())
            else {
                return;
            };
            pending.oversized = req.groups.len() > *above_groups;
        }
        if api == ApiKey::FindCoordinator && version <= 3 {
            let Some(req) = request_body(&frame, api, version)
                .and_then(|mut body| FindCoordinatorRequest::decode(&mut body, version).ok())
            else {
                return;
            };
            pending.coordinator_key = Some(req.key.as_str().to_string());
        }
        let mut out = frame;
        if let Some(Fault::ErrorCode { apis, code, keep_listed_groups }) = &fault {
            let from_tansu = api == ApiKey::ListGroups && *keep_listed_groups;
            if apis.contains(api) && !from_tansu {
                // Answered here; tansu never sees it.
                let Some(body) = synthesize_error(&out, api, version, *code) else { return };
                pending.synthesized = Some(body);
                out = substitute_request(correlation);
            }
        }
        if api == ApiKey::OffsetFetch && (2..8).contains(&version) && pending.synthesized.is_none() {
            let Some(as_v8) = offset_fetch_as_v8(&out, version) else { return };
            out = as_v8;
            (pending.version, pending.older) = (8, Some(version));
        }
        lock(&conn.pending).insert(correlation, pending);
        if write_frame(to_tansu, &out).is_err() {
            return;
        }
    }
}

/// One connection's answers: read each of tansu's, apply the broker's fault
/// and the rewrites, send it to the client.
fn serve_answers(shared: &Shared, index: usize, conn: &Connection, mut from_tansu: TcpStream, mut client: TcpStream) {
    let b = &shared.brokers[index];
    'answers: while let Some(frame) = read_frame(&mut from_tansu, MAX_ANSWER) {
        let arrived = Instant::now();
        let Some(correlation) = frame.get(..4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])) else { break };
        let pending = lock(&conn.pending).remove(&correlation);
        let mut delayed = false;
        let fault = loop {
            let fault = lock(&b.state).fault.clone();
            match &fault {
                Some(Fault::Stuck) => {
                    shared.hold_while_stuck(b, conn);
                    break 'answers;
                }
                Some(Fault::Refuse) => break 'answers,
                Some(Fault::Delay(d)) if !delayed => {
                    if !shared.wait_until(b, conn, arrived + *d) {
                        break 'answers;
                    }
                    delayed = true;
                }
                _ => break fault,
            }
        };
        if pending.as_ref().is_some_and(|p| p.oversized) {
            let _ = client.write_all(&(64u32 * 1024 * 1024 + 1).to_be_bytes());
            break;
        }
        let (answer, throttle) = match &pending {
            None => (Bytes::from(frame), None),
            Some(p) => match answer_for(shared, b, p, fault.as_ref(), Bytes::from(frame)) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("virtual broker {}: {e}; closing the connection", b.id);
                    break;
                }
            },
        };
        if fault == Some(Fault::CloseMidAnswer) {
            let cut = &answer[..answer.len() / 2];
            let _ = client.write_all(&(answer.len() as u32).to_be_bytes()).and_then(|_| client.write_all(cut));
            break;
        }
        // The throttle runs from when the answer leaves, so it is set
        // before the write: set after, a client that read the answer and
        // waited out exactly its throttle could be counted as early by the
        // microseconds this thread took to get back from the write.
        if let Some(t) = throttle {
            *lock(&conn.throttled_until) = Some(Instant::now() + t);
        }
        if write_frame(&mut client, &answer).is_err() {
            break;
        }
        b.bytes_out.fetch_add(answer.len() as u64 + 4, Ordering::SeqCst);
    }
    shared.close(b, conn);
}

/// The answer to send for tansu's `frame` (header and body, no length), and
/// the throttle it carries.
fn answer_for(
    shared: &Shared,
    b: &Broker,
    p: &Pending,
    fault: Option<&Fault>,
    frame: Bytes,
) -> Result<(Bytes, Option<Duration>), String> {
    let header_version = p.api.response_header_version(p.version);
    if let Some(body) = &p.synthesized {
        // tansu answered the substitute ApiVersions v0 (header v0: just the
        // correlation id); the client gets the error answer, in the header
        // version its own request calls for.
        let mut out = BytesMut::new();
        out.extend_from_slice(frame.get(..4).ok_or("an answer without a correlation id")?);
        if header_version >= 1 {
            out.extend_from_slice(&[0]); // no tagged fields
        }
        out.extend_from_slice(body);
        return Ok((out.freeze(), None));
    }
    let mut rest = frame.clone();
    ResponseHeader::decode(&mut rest, header_version).map_err(|e| format!("{:?} v{} header: {e}", p.api, p.version))?;
    let header = frame.slice(..frame.len() - rest.len());
    if let Some(older) = p.older {
        return offset_fetch_answer_from_v8(&header, rest, older).map(|a| (a, None));
    }
    // The one error answer built on tansu's: ListGroups keeping its groups
    // (the others were answered in place of the request).
    let error = match fault {
        Some(Fault::ErrorCode { apis, code, keep_listed_groups: true })
            if p.api == ApiKey::ListGroups && apis.contains(p.api) =>
        {
            Some(*code)
        }
        _ => None,
    };
    let throttle = match fault {
        Some(Fault::Throttle(t)) if p.api != ApiKey::ApiVersions => Some(*t),
        _ => None,
    };
    let topology = matches!(
        p.api,
        ApiKey::Metadata
            | ApiKey::FindCoordinator
            | ApiKey::DescribeCluster
            | ApiKey::ListGroups
            | ApiKey::DescribeTopicPartitions
    );
    let caps = lock(&shared.caps).clone();
    let capped = p.api == ApiKey::ApiVersions && !caps.is_empty();
    if !topology && error.is_none() && throttle.is_none() && !capped {
        return Ok((frame, None));
    }
    let mut kind = match ResponseKind::decode(p.api, &mut rest.clone(), p.version) {
        Ok(kind) => kind,
        // An answer only to be throttled that does not decode (ApiVersions
        // answers v0 to a version it does not support) goes out as it is.
        Err(_) if !topology && error.is_none() => return Ok((frame, None)),
        Err(e) => return Err(format!("{:?} v{} answer: {e:#}", p.api, p.version)),
    };
    rewrite_topology(shared, b, p, &mut kind);
    if let ResponseKind::ApiVersions(v) = &mut kind {
        for api in &mut v.api_keys {
            if let Some(max) = caps.get(&api.api_key) {
                api.max_version = api.max_version.min(*max);
            }
        }
        // A range capped below its minimum is not offered at all.
        v.api_keys.retain(|api| api.min_version <= api.max_version);
    }
    if let (Some(code), ResponseKind::ListGroups(l)) = (error, &mut kind) {
        l.error_code = code;
    }
    let mut throttled = None;
    if let Some(t) = throttle {
        let ms = i32::try_from(t.as_millis()).unwrap_or(i32::MAX);
        if let Some(field) = throttle_field(&mut kind) {
            // Whether this version carries the field: encoded with and
            // without it, the bytes differ only if it does.
            let before = *field;
            *field = 0;
            let without = encode(&kind, p.version)?;
            if let Some(field) = throttle_field(&mut kind) {
                *field = ms.max(before);
            }
            if encode(&kind, p.version)? != without && ms > 0 {
                throttled = Some(Duration::from_millis(ms.max(before) as u64));
            }
        }
    }
    let body = encode(&kind, p.version)?;
    let mut out = BytesMut::with_capacity(header.len() + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    Ok((out.freeze(), throttled))
}

fn encode(kind: &ResponseKind, version: i16) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    kind.encode(&mut buf, version).map_err(|e| format!("re-encoding: {e:#}"))?;
    Ok(buf.freeze())
}

/// Shows the N virtual brokers where tansu shows itself.
fn rewrite_topology(shared: &Shared, b: &Broker, p: &Pending, kind: &mut ResponseKind) {
    let n = shared.brokers.len();
    let host = StrBytes::from_static_str("127.0.0.1");
    match kind {
        ResponseKind::Metadata(m) => {
            m.brokers = shared
                .brokers
                .iter()
                .map(|v| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(v.id))
                        .with_host(host.clone())
                        .with_port(i32::from(v.port))
                })
                .collect();
            if m.controller_id.0 >= 0 {
                m.controller_id = BrokerId(1);
            }
            for t in &mut m.topics {
                let name = t.name.as_ref().map(|n| n.0.as_str().to_string()).unwrap_or_default();
                for part in &mut t.partitions {
                    if part.leader_id.0 < 0 {
                        continue; // leaderless stays leaderless
                    }
                    let leader = BrokerId(leader_of(n, &name, part.partition_index));
                    part.leader_id = leader;
                    part.replica_nodes = vec![leader];
                    part.isr_nodes = vec![leader];
                    part.offline_replicas.clear();
                }
            }
        }
        ResponseKind::DescribeTopicPartitions(d) => {
            for t in &mut d.topics {
                let name = t.name.as_ref().map(|n| n.0.as_str().to_string()).unwrap_or_default();
                for part in &mut t.partitions {
                    if part.leader_id.0 < 0 {
                        continue;
                    }
                    let leader = BrokerId(leader_of(n, &name, part.partition_index));
                    part.leader_id = leader;
                    part.replica_nodes = vec![leader];
                    part.isr_nodes = vec![leader];
                    part.offline_replicas.clear();
                }
            }
        }
        ResponseKind::DescribeCluster(d) => {
            d.brokers = shared
                .brokers
                .iter()
                .map(|v| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(v.id))
                        .with_host(host.clone())
                        .with_port(i32::from(v.port))
                })
                .collect();
            if d.controller_id.0 >= 0 {
                d.controller_id = BrokerId(1);
            }
        }
        ResponseKind::FindCoordinator(f) => {
            let place = |key: &str| {
                let id = shared.coordinator_of(key);
                let port = shared.broker(id).map(|v| i32::from(v.port)).unwrap_or(-1);
                (BrokerId(id), port)
            };
            if p.version <= 3 {
                if f.error_code == 0 {
                    let (id, port) = place(p.coordinator_key.as_deref().unwrap_or(""));
                    (f.node_id, f.host, f.port) = (id, host.clone(), port);
                }
            } else {
                for c in &mut f.coordinators {
                    if c.error_code == 0 {
                        let (id, port) = place(c.key.as_str());
                        (c.node_id, c.host, c.port) = (id, host.clone(), port);
                    }
                }
            }
        }
        ResponseKind::ListGroups(l) => {
            l.groups.retain(|g| shared.coordinator_of(g.group_id.0.as_str()) == b.id);
        }
        _ => {}
    }
}

/// The error answer body to a group request, built from the request (for the
/// groups, keys or partitions it names) the way Kafka's coordinator answers
/// when it cannot serve a group; None if the request does not decode.
fn synthesize_error(frame: &[u8], api: ApiKey, version: i16, code: i16) -> Option<Bytes> {
    let mut body = request_body(frame, api, version)?;
    let kind = match api {
        ApiKey::ListGroups => ResponseKind::ListGroups(ListGroupsResponse::default().with_error_code(code)),
        ApiKey::DescribeGroups => {
            let req = DescribeGroupsRequest::decode(&mut body, version).ok()?;
            let groups = req
                .groups
                .into_iter()
                .map(|g| DescribedGroup::default().with_group_id(g).with_error_code(code))
                .collect();
            ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(groups))
        }
        ApiKey::OffsetFetch => {
            let req = OffsetFetchRequest::decode(&mut body, version).ok()?;
            let mut resp = OffsetFetchResponse::default();
            if version >= 8 {
                // Per group (the multi-group form): its error code, no topics.
                resp.groups = req
                    .groups
                    .into_iter()
                    .map(|g| OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_error_code(code))
                    .collect();
            } else if version >= 2 {
                resp.error_code = code;
            } else {
                // v0-1 have no top-level error: every partition asked for carries it.
                resp.topics = req
                    .topics
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        OffsetFetchResponseTopic::default().with_name(t.name).with_partitions(
                            t.partition_indexes
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                    })
                    .collect();
            }
            ResponseKind::OffsetFetch(resp)
        }
        ApiKey::FindCoordinator => {
            let req = FindCoordinatorRequest::decode(&mut body, version).ok()?;
            let none = (BrokerId(-1), StrBytes::new(), -1);
            let mut resp = FindCoordinatorResponse::default();
            if version <= 3 {
                (resp.error_code, (resp.node_id, resp.host, resp.port)) = (code, none);
            } else {
                resp.coordinators = req
                    .coordinator_keys
                    .into_iter()
                    .map(|key| {
                        let (node, host, port) = none.clone();
                        Coordinator::default()
                            .with_key(key)
                            .with_node_id(node)
                            .with_host(host)
                            .with_port(port)
                            .with_error_code(code)
                    })
                    .collect();
            }
            ResponseKind::FindCoordinator(resp)
        }
        ApiKey::OffsetCommit => {
            let req = OffsetCommitRequest::decode(&mut body, version).ok()?;
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
        }
        ApiKey::DeleteGroups => {
            let req = DeleteGroupsRequest::decode(&mut body, version).ok()?;
            let results = req
                .groups_names
                .into_iter()
                .map(|g| DeletableGroupResult::default().with_group_id(g).with_error_code(code))
                .collect();
            ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
        }
        ApiKey::JoinGroup => ResponseKind::JoinGroup(JoinGroupResponse::default().with_error_code(code)),
        ApiKey::SyncGroup => ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code)),
        ApiKey::Heartbeat => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code)),
        ApiKey::LeaveGroup => ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code)),
        _ => return None,
    };
    encode(&kind, version).ok()
}

/// The body of a request frame (after its header), if the header decodes.
fn request_body(frame: &[u8], api: ApiKey, version: i16) -> Option<Bytes> {
    let mut buf = Bytes::copy_from_slice(frame);
    RequestHeader::decode(&mut buf, api.request_header_version(version)).ok()?;
    Some(buf)
}

/// An OffsetFetch request frame of `version` (2..=7: one group, a topic
/// list or null for every topic) as the v8 request for that one group.
fn offset_fetch_as_v8(frame: &[u8], version: i16) -> Option<Vec<u8>> {
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    use kafka_protocol::protocol::Encodable;
    let mut buf = Bytes::copy_from_slice(frame);
    let header = RequestHeader::decode(&mut buf, ApiKey::OffsetFetch.request_header_version(version)).ok()?;
    let old = OffsetFetchRequest::decode(&mut buf, version).ok()?;
    let topics = old.topics.map(|ts| {
        ts.into_iter()
            .map(|t| OffsetFetchRequestTopics::default().with_name(t.name).with_partition_indexes(t.partition_indexes))
            .collect()
    });
    let group =
        OffsetFetchRequestGroup::default().with_group_id(old.group_id).with_member_epoch(-1).with_topics(topics);
    let new = OffsetFetchRequest::default().with_groups(vec![group]).with_require_stable(old.require_stable);
    let mut out = BytesMut::new();
    header.with_request_api_version(8).encode(&mut out, ApiKey::OffsetFetch.request_header_version(8)).ok()?;
    new.encode(&mut out, 8).ok()?;
    Some(out.to_vec())
}

/// tansu's v8 OffsetFetch answer (`header` as it came, then `body`) in the
/// shape of `version` (2..=7): the one group's topics and error at the top.
fn offset_fetch_answer_from_v8(header: &[u8], mut body: Bytes, version: i16) -> Result<Bytes, String> {
    use kafka_protocol::protocol::Encodable;
    let v8 = OffsetFetchResponse::decode(&mut body, 8).map_err(|e| format!("OffsetFetch v8 answer: {e:#}"))?;
    let group = v8.groups.into_iter().next().unwrap_or_default();
    let topics = group
        .topics
        .into_iter()
        .map(|t| {
            OffsetFetchResponseTopic::default().with_name(t.name).with_partitions(
                t.partitions
                    .into_iter()
                    .map(|p| {
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_committed_offset(p.committed_offset)
                            .with_committed_leader_epoch(p.committed_leader_epoch)
                            .with_metadata(p.metadata)
                            .with_error_code(p.error_code)
                    })
                    .collect(),
            )
        })
        .collect();
    let old = OffsetFetchResponse::default()
        .with_throttle_time_ms(v8.throttle_time_ms)
        .with_topics(topics)
        .with_error_code(group.error_code);
    let mut out = BytesMut::new();
    // The correlation id, then (flexible versions) no tagged fields.
    out.extend_from_slice(header.get(..4).ok_or("an answer without a correlation id")?);
    if ApiKey::OffsetFetch.response_header_version(version) >= 1 {
        out.extend_from_slice(&[0]);
    }
    old.encode(&mut out, version).map_err(|e| format!("OffsetFetch v{version} answer: {e:#}"))?;
    Ok(out.freeze())
}

/// ApiVersions v0 (header v1, empty body) with `correlation`: sent to tansu
/// in place of a group request the harness answers itself.
fn substitute_request(correlation: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + SUBSTITUTE_CLIENT.len());
    out.extend((ApiKey::ApiVersions as i16).to_be_bytes());
    out.extend(0i16.to_be_bytes());
    out.extend(correlation.to_be_bytes());
    out.extend((SUBSTITUTE_CLIENT.len() as i16).to_be_bytes());
    out.extend(SUBSTITUTE_CLIENT.as_bytes());
    out
}

/// The `throttle_time_ms` field of an answer that has one.
fn throttle_field(kind: &mut ResponseKind) -> Option<&mut i32> {
    macro_rules! field {
        ($($v:ident),* $(,)?) => {
            match kind {
                $(ResponseKind::$v(r) => Some(&mut r.throttle_time_ms),)*
                _ => None,
            }
        };
    }
    field!(
        Produce,
        Fetch,
        ListOffsets,
        Metadata,
        OffsetCommit,
        OffsetFetch,
        FindCoordinator,
        JoinGroup,
        Heartbeat,
        LeaveGroup,
        SyncGroup,
        DescribeGroups,
        ListGroups,
        ApiVersions,
        CreateTopics,
        DeleteTopics,
        DeleteRecords,
        InitProducerId,
        OffsetForLeaderEpoch,
        AddPartitionsToTxn,
        AddOffsetsToTxn,
        EndTxn,
        TxnOffsetCommit,
        DescribeAcls,
        CreateAcls,
        DeleteAcls,
        DescribeConfigs,
        AlterConfigs,
        DescribeLogDirs,
        CreatePartitions,
        DeleteGroups,
        ElectLeaders,
        IncrementalAlterConfigs,
        ListPartitionReassignments,
        OffsetDelete,
        DescribeUserScramCredentials,
        AlterUserScramCredentials,
        DescribeCluster,
        DescribeProducers,
        DescribeTransactions,
        ListTransactions,
        ConsumerGroupHeartbeat,
        ConsumerGroupDescribe,
        GetTelemetrySubscriptions,
        PushTelemetry,
        DescribeTopicPartitions,
    )
}

/// One length-prefixed frame, or None at end of stream, on an error, or if
/// the length is negative or above `max` (a malformed frame ends the
/// connection). The body is read as it arrives, never allocated from the
/// claimed length up front.
fn read_frame(r: &mut impl Read, max: usize) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let n = usize::try_from(i32::from_be_bytes(len)).ok().filter(|n| *n <= max)?;
    let mut frame = Vec::new();
    r.take(n as u64).read_to_end(&mut frame).ok()?;
    (frame.len() == n).then_some(frame)
}

fn write_frame(w: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend((frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
    w.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaders_go_round_the_brokers() {
        let h = fnv1a(b"t") as u64;
        for p in 0..6 {
            assert_eq!(leader_of(3, "t", p), ((p as u64 + h) % 3) as i32 + 1);
        }
        let all: std::collections::BTreeSet<i32> = (0..3).map(|p| leader_of(3, "t", p)).collect();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // Test vectors of FNV-1a 32 bit.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn malformed_frames_end_the_connection() {
        assert_eq!(read_frame(&mut &[0xff, 0xff, 0xff, 0xfb][..], 100), None);
        assert_eq!(read_frame(&mut &[0, 0, 0, 200, 1, 2][..], 100), None);
        assert_eq!(read_frame(&mut &[0, 0, 0, 5, 1, 2][..], 100), None);
        assert_eq!(read_frame(&mut &[0, 0, 0, 2, 1, 2][..], 100), Some(vec![1, 2]));
    }
}
