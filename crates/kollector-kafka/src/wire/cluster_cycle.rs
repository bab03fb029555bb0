//! One cycle's cluster reads over the monitor's own connections: Metadata
//! from one broker, and ListOffsets from every partition leader in
//! parallel, each broker within its budget. A broker that refuses or does
//! not answer costs its budget and its own part; everyone else's answers are
//! kept, and the failure is returned by broker, with its kind.
//!
//! Whom to ask for Metadata: the broker that answered last time (a working
//! connection, no new socket), within its budget; if it fails, every other
//! known broker at once, the first answer taken and the rest not asked.
//! Before the first answer the bootstrap addresses are the brokers.

use std::time::Duration;

use kollector_core::BrokerErrorKind;

use super::cluster::{check_cluster_id, list_offsets, metadata, ClusterMetadata, PartitionAnswer, EARLIEST, LATEST};
use super::connection::BrokerConnection;
use super::group_cycle::{failure_kind, in_parallel, GroupConnections};
use super::security::WireSecurity;
use super::WireError;
use crate::deadline::{Deadline, Stop};

/// Partitions per ListOffsets request: answers stay well below the frame
/// limit (about 30 bytes a partition).
const PARTITIONS_PER_REQUEST: usize = 10_000;

/// A leader's partitions to read: (broker id, host:port, partitions).
pub type LeaderPartitions = (i32, String, Vec<(String, i32)>);

/// A broker's failure in a cycle: (broker id, kind, why).
pub type Failure = (i32, BrokerErrorKind, String);

/// What asking for Metadata gave.
#[derive(Debug)]
pub struct MetadataRead {
    /// The answer and the broker that gave it, or why no broker did.
    pub answer: Result<(ClusterMetadata, i32), String>,
    /// Known brokers that failed meanwhile (bootstrap addresses are not named).
    pub failed: Vec<Failure>,
    /// The fence passed: stop talking to Kafka.
    pub fenced: bool,
    /// Some broker asked belongs to another cluster than the one pinned.
    pub wrong_cluster: bool,
    /// Every broker asked (bootstrap addresses included) refused the
    /// monitor's credentials or TLS: the reason no answer came.
    pub refused: bool,
}

/// One leader's offsets.
#[derive(Debug)]
pub struct LeaderOffsets {
    pub leader: i32,
    pub earliest: Result<Vec<PartitionAnswer>, WireError>,
    pub latest: Result<Vec<PartitionAnswer>, WireError>,
}

/// One broker's part, run on a worker.
struct Work<T> {
    id: i32,
    address: String,
    conn: Option<BrokerConnection>,
    out: Option<Result<T, WireError>>,
}

/// Runs `op` on `conn` (opened within the deadline if there is none): a
/// kept connection that died while idle gets one fresh retry; a connection
/// an error left unusable is dropped.
fn on_broker<T>(
    conn: &mut Option<BrokerConnection>,
    address: &str,
    security: &WireSecurity,
    deadline: &Deadline,
    op: &dyn Fn(&mut BrokerConnection) -> Result<T, WireError>,
) -> Result<T, WireError> {
    let kept = conn.take().filter(|c| !c.expired() && c.address() == address);
    let reused = kept.is_some();
    let mut c = match kept {
        Some(c) => c,
        None => BrokerConnection::connect(address, security, deadline)?,
    };
    let mut result = op(&mut c);
    if matches!(&result, Err(e) if reused && e.worth_a_fresh_connection()) {
        c = BrokerConnection::connect(address, security, deadline)?;
        result = op(&mut c);
    }
    match &result {
        Err(e) if e.breaks_connection() => {}
        _ => *conn = Some(c),
    }
    result
}

fn why(e: &WireError, what: &str, budget: Duration) -> String {
    match e {
        WireError::Stopped(Stop::TimedOut) => format!("{what}: no answer within the broker's budget of {budget:?}"),
        e => format!("{what}: {e}"),
    }
}

impl GroupConnections {
    fn work<T>(&mut self, id: i32, address: &str) -> Work<T> {
        Work { id, address: address.to_string(), conn: self.conns.remove(&id), out: None }
    }

    fn keep_work<T>(&mut self, w: &mut Work<T>) {
        if let Some(c) = w.conn.take() {
            self.conns.insert(w.id, c);
        }
    }

    /// Metadata for every topic: from the broker that answered last, else
    /// from every other known broker at once, else from the bootstrap
    /// addresses; each round within one budget (a whole one: a large
    /// cluster's answer takes a while, and a broker that fails here is not
    /// asked again this cycle).
    pub fn read_metadata(&mut self, bootstrap: &[String], deadline: &Deadline, budget: Duration) -> MetadataRead {
        let mut read = MetadataRead {
            answer: Err("no broker to ask".into()),
            failed: Vec::new(),
            fenced: false,
            wrong_cluster: false,
            refused: false,
        };
        let (mut failures, mut refusals) = (0usize, 0usize);
        let bootstrap: Vec<(i32, String)> =
            bootstrap.iter().enumerate().map(|(i, a)| (-1 - i as i32, a.clone())).collect();
        let mut known = if self.known.is_empty() { bootstrap.clone() } else { self.known.clone() };
        if let Some(pos) = self.metadata_from.and_then(|id| known.iter().position(|(k, _)| *k == id)) {
            known[..=pos].rotate_right(1);
        }
        let mut errors = Vec::new();
        let rounds: [(Vec<(i32, String)>, Duration); 3] = {
            let mut rest = known.clone();
            let first: Vec<(i32, String)> = rest.drain(..1.min(rest.len())).collect();
            let addresses: Vec<&String> = known.iter().map(|(_, a)| a).collect();
            let unknown_bootstrap = bootstrap.iter().filter(|(_, a)| !addresses.contains(&a)).cloned().collect();
            [(first, budget), (rest, budget), (unknown_bootstrap, budget)]
        };
        for (round, round_budget) in rounds {
            if round.is_empty() {
                continue;
            }
            let security = self.security.clone();
            let mut work: Vec<Work<ClusterMetadata>> = round.iter().map(|(id, a)| self.work(*id, a)).collect();
            // One deadline for the round, whatever the queue behind the
            // workers: a round costs at most its budget. Once one broker has
            // answered, brokers not yet asked are not, and further answers
            // are dropped (one answer is kept, not one per broker).
            let d = deadline.capped(round_budget);
            let answered = std::sync::atomic::AtomicBool::new(false);
            in_parallel(&mut work, |w| {
                if answered.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let out = on_broker(&mut w.conn, &w.address, &security, &d, &|c| {
                    metadata(c, &d).and_then(|m| same_cluster(m, security.expected_cluster(), c.address()))
                });
                if out.is_ok() && answered.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                w.out = Some(out);
            });
            for w in &mut work {
                self.keep_work(w);
                match w.out.take() {
                    Some(Ok(m)) if read.answer.is_err() => read.answer = Ok((m, w.id)),
                    Some(Ok(_)) => {}
                    Some(Err(WireError::Stopped(Stop::Fenced))) => read.fenced = true,
                    Some(Err(e)) => {
                        read.wrong_cluster |= matches!(e, WireError::WrongCluster(_));
                        failures += 1;
                        refusals += usize::from(failure_kind(&e) == BrokerErrorKind::Authentication);
                        let why = why(&e, "Metadata", round_budget);
                        errors.push(format!("{} ({}): {why}", w.id, w.address));
                        if w.id >= 0 {
                            read.failed.push((w.id, failure_kind(&e), why));
                        }
                    }
                    None => {}
                }
            }
            if read.fenced || read.answer.is_ok() {
                break;
            }
        }
        read.refused = read.answer.is_err() && failures > 0 && refusals == failures;
        match &read.answer {
            Ok((m, from)) => {
                // The first answer pins the cluster (unless the monitor
                // did already): every later connection must reach it.
                if let (None, Some(id)) = (self.security.expected_cluster(), m.cluster_id.as_deref()) {
                    self.security = self.security.clone().expecting_cluster(id);
                    // Connections opened before the pin were never checked:
                    // only the one whose answer set it is kept.
                    let answered = *from;
                    self.conns.retain(|id, _| *id == answered);
                }
                self.known = m.brokers.iter().map(|b| (b.id, super::broker_address(&b.host, b.port))).collect();
                // A bootstrap connection is a broker's connection from now
                // on (no second socket to the same broker).
                let bootstrap_ids: Vec<i32> = self.conns.keys().copied().filter(|id| *id < 0).collect();
                for id in bootstrap_ids {
                    let Some(conn) = self.conns.remove(&id) else { continue };
                    let named = self.known.iter().find(|(_, a)| a == conn.address()).map(|(b, _)| *b);
                    if let Some(broker) = named.filter(|b| !self.conns.contains_key(b)) {
                        self.conns.insert(broker, conn);
                    }
                }
                self.metadata_from = Some(if *from < 0 {
                    let address = bootstrap.iter().find(|(b, _)| b == from).map(|(_, a)| a.as_str());
                    self.known.iter().find(|(_, a)| Some(a.as_str()) == address).map_or(*from, |(b, _)| *b)
                } else {
                    *from
                });
            }
            Err(_) if !errors.is_empty() => read.answer = Err(errors.join("; ")),
            Err(_) => {}
        }
        read
    }

    /// Earliest and latest offsets of each leader's partitions (`leaders`:
    /// id, host:port, partitions), leaders in parallel, each within
    /// `budget`: the latest offsets first (lag needs them), then the
    /// earliest on the same connection.
    pub fn read_offsets(
        &mut self,
        leaders: &[LeaderPartitions],
        deadline: &Deadline,
        budget: Duration,
    ) -> Vec<LeaderOffsets> {
        type Both = (Vec<PartitionAnswer>, Result<Vec<PartitionAnswer>, WireError>);
        let security = self.security.clone();
        type Job<'a> = (Work<Both>, &'a [(String, i32)]);
        let mut work: Vec<Job> = leaders.iter().map(|(id, a, parts)| (self.work(*id, a), parts.as_slice())).collect();
        // One deadline for the phase: at most one budget, however many
        // leaders wait behind the workers.
        let d = deadline.capped(budget);
        in_parallel(&mut work, |(w, parts)| {
            let all = |c: &mut BrokerConnection, at: i64| -> Result<Vec<PartitionAnswer>, WireError> {
                let mut out = Vec::with_capacity(parts.len());
                for chunk in parts.chunks(PARTITIONS_PER_REQUEST) {
                    out.extend(list_offsets(c, chunk, at, &d)?);
                }
                Ok(out)
            };
            let latest = on_broker(&mut w.conn, &w.address, &security, &d, &|c| all(c, LATEST));
            w.out = Some(latest.map(|latest| {
                let earliest = match w.conn.as_mut() {
                    Some(c) => all(c, EARLIEST),
                    None => Err(WireError::Io("the connection was lost".into())),
                };
                if matches!(&earliest, Err(e) if e.breaks_connection()) {
                    w.conn = None;
                }
                (latest, earliest)
            }));
        });
        let mut out = Vec::with_capacity(work.len());
        for (w, _) in &mut work {
            self.keep_work(w);
            let (earliest, latest) = match w.out.take() {
                Some(Ok((latest, earliest))) => (earliest, Ok(latest)),
                Some(Err(e)) => (Err(e.clone()), Err(e)),
                None => (Err(WireError::Io("not asked".into())), Err(WireError::Io("not asked".into()))),
            };
            out.push(LeaderOffsets { leader: w.id, earliest, latest });
        }
        out
    }
}

/// A Metadata answer from a connection opened before the cluster was
/// pinned is checked too: its brokers are never taken from another cluster.
fn same_cluster(m: ClusterMetadata, expected: Option<&str>, address: &str) -> Result<ClusterMetadata, WireError> {
    match expected {
        Some(e) => check_cluster_id(m.cluster_id.as_deref(), e, address).map(|()| m),
        None => Ok(m),
    }
}

/// Why a leader's offsets failed, for its broker entry.
pub fn leader_failure(leader: i32, e: &WireError, budget: Duration) -> Failure {
    (leader, failure_kind(e), why(e, "ListOffsets", budget))
}
