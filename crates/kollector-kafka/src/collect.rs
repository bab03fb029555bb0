//! One collection cycle: everything a snapshot holds, in a fixed number of
//! batched requests, within the monitor's timeout, and as much of it as
//! could be read when part of the cluster is down.
//!
//! Requests per cycle for a cluster with B brokers, P partitions and G groups,
//! sent over the monitor's own broker connections (`wire/`):
//!   Metadata                       1 (to the broker that answered it last)
//!   ListOffsets                    2 per partition-leader broker (latest, earliest),
//!                                  one pair more per further 10,000 partitions
//!   ListGroups                     1 per broker
//!   DescribeGroups                 1 per broker
//!   ConsumerGroupDescribe          1 per broker with KIP-848 groups
//!   OffsetFetch                    1 per broker per 1,000 groups (v8+)
//!   FindCoordinator + 1 retry      only for groups whose coordinator moved mid-cycle
//! ApiVersions (and SASL) once per connection, not per cycle; racks come
//! with Metadata (v1+), so no DescribeCluster. G groups cost the same few
//! requests as one. Brokers without OffsetFetch v8 get one OffsetFetch per
//! group.
//!
//! **Partial failure.** Each broker's part has its own budget
//! ([`broker_budget`]: a third of the timeout) and brokers are read in
//! parallel, so a refusing or stuck broker costs its budget, and only its
//! part is missing: the partitions it leads have no offsets and the groups
//! it coordinates are not read (never last cycle's values), and the
//! snapshot names it in `broker_errors`. A broker that failed is not asked
//! again in the same cycle. Only a cycle in which no broker answered
//! Metadata fails as a whole.
//!
//! Settings the direct connections cannot serve (an encrypted TLS key) use
//! librdkafka's calls instead: metadata, DescribeCluster every 10th cycle,
//! ListOffsets per leader at once (each with the broker's budget), and one
//! OffsetFetch (usually with a FindCoordinator) per group; the snapshot's
//! notes say so.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kollector_core::{
    compute_lag, unix_ms, Broker, BrokerError, BrokerErrorKind, CollectError, ErrorKind, GroupOffset, GroupSnapshot,
    MonitorSpec, PartitionSnapshot, Snapshot, TopicSnapshot,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::admin::{self, AdminError, OffsetSpec, OffsetsJob};
use crate::wire::group_cycle::GroupConnections;
use crate::wire::group_plan::GroupRead;
use crate::wire::WireError;

/// Partitions per ListOffsets call. librdkafka's ListOffsets costs grow with
/// the square of the partitions in one call (measured against its mock
/// cluster: 1,000 → 7 ms, 10,000 → 0.41 s, 50,000 → 13.5 s), so a 50,000-
/// partition cluster would spend most of a collection's timeout there.
/// Calls of 10,000 bound that at a pair of requests more per 10,000
/// partitions, and keep clusters up to 10,000 partitions at the floor of
/// two ListOffsets requests per leader.
const LIST_OFFSETS_CHUNK: usize = 10_000;

/// DescribeCluster (for racks) every this many cycles, and on the first.
const DESCRIBE_CLUSTER_EVERY: u32 = 10;
use crate::client::KafkaClient;
use crate::deadline::{Deadline, Fence, Stop};

/// The error for a collection that ran out of time (or past its fence) before `step`.
fn stopped(step: &str, why: Stop) -> CollectError {
    match why {
        Stop::TimedOut => CollectError::new(ErrorKind::Timeout, format!("collection timed out before {step}")),
        Stop::Fenced => {
            CollectError::new(ErrorKind::Fenced, format!("collection abandoned at the fence before {step}"))
        }
    }
}

/// The deadline for an admin call at `step`, or the error if none is left.
fn check(deadline: &Deadline, step: &str) -> Result<Deadline, CollectError> {
    deadline.slice().map(|_| deadline.clone()).map_err(|why| stopped(step, why))
}

/// Runs an uninterruptible librdkafka call bounded by the earlier of the
/// timeout and the fence. While only the fence cut a slice short (the lease
/// was renewed meanwhile) and the call merely timed out, it is issued again.
fn sliced<T>(
    deadline: &Deadline,
    step: &str,
    mut call: impl FnMut(Duration) -> Result<T, KafkaError>,
    timed_out: impl Fn(&KafkaError) -> bool,
) -> Result<Result<T, KafkaError>, CollectError> {
    loop {
        let (left, by) = deadline.slice().map_err(|why| stopped(step, why))?;
        match call(left) {
            Err(e) if by == Stop::Fenced && timed_out(&e) => continue,
            other => return Ok(other),
        }
    }
}

fn admin_error(step: &str, e: AdminError) -> CollectError {
    let kind = match &e {
        AdminError::Timeout(_) => ErrorKind::Timeout,
        AdminError::Fenced(_) => ErrorKind::Fenced,
        AdminError::Kafka { code, .. } if is_transport(*code) => ErrorKind::Connection,
        _ => ErrorKind::Kafka,
    };
    CollectError::new(kind, format!("{step}: {e}"))
}

fn is_transport(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
    )
}

/// How long one broker's part of a cycle may take: a third of the
/// monitor's timeout, at least 1 s (never more than the timeout). Brokers
/// are read in parallel, so a stuck broker costs the cycle about this long
/// instead of the whole timeout, and the rest of the cluster is published.
pub fn broker_budget(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_secs(1)).min(timeout)
}

/// The brokers that failed this cycle: the first failure of each, kept.
#[derive(Debug, Default)]
struct FailedBrokers(BTreeMap<i32, BrokerError>);

impl FailedBrokers {
    fn note(&mut self, broker: i32, kind: BrokerErrorKind, message: &str) {
        self.0.entry(broker).or_insert_with(|| BrokerError { broker, kind, message: message.to_string() });
    }
    fn get(&self, broker: i32) -> Option<&BrokerError> {
        self.0.get(&broker)
    }
    fn ids(&self) -> std::collections::BTreeSet<i32> {
        self.0.keys().copied().collect()
    }
    fn into_vec(self) -> Vec<BrokerError> {
        self.0.into_values().collect()
    }
}

fn broker_error_kind(e: &AdminError) -> BrokerErrorKind {
    match e {
        AdminError::Timeout(_) | AdminError::Fenced(_) => BrokerErrorKind::Timeout,
        AdminError::Kafka { code, .. } if is_transport(*code) => match code {
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::SSL => {
                BrokerErrorKind::Authentication
            }
            _ => BrokerErrorKind::Connection,
        },
        _ => BrokerErrorKind::Kafka,
    }
}

/// Steps 1-4 of a cycle: the cluster's shape with every partition's offsets.
struct ClusterRead {
    cluster_id: String,
    controller_id: Option<i32>,
    brokers: Vec<Broker>,
    topics: Vec<TopicSnapshot>,
}

/// One partition's offsets as read this cycle.
#[derive(Default)]
struct LogOffsets {
    earliest: Option<i64>,
    latest: Option<i64>,
    error: Option<String>,
}

impl KafkaClient {
    /// Collects one snapshot of the cluster, within `spec.timeout`. Partial
    /// failures (a broker down, a partition without leader, an API the
    /// cluster lacks) give a snapshot with warnings; failures that leave
    /// nothing trustworthy (no metadata, no cluster id) give an error.
    pub fn collect(&self, spec: &MonitorSpec) -> Result<Snapshot, CollectError> {
        self.collect_fenced(spec, None)
    }

    /// Like [`KafkaClient::collect`], and also abandoned as soon as `fence`
    /// passes (see `deadline.rs`): the call then returns a `Fenced` error
    /// within about 100 ms and the caller must close this client.
    pub fn collect_fenced(&self, spec: &MonitorSpec, fence: Option<Fence>) -> Result<Snapshot, CollectError> {
        let started = Instant::now();
        let probe_fence = fence.clone();
        let deadline = Deadline::after(spec.timeout).with_fence(fence);
        self.serve_main_queue();
        // OAUTHBEARER: without a token nothing below can authenticate, and
        // the brokers would only say "authentication failed"; the token
        // endpoint's own answer is the reason to report.
        if let Some(tokens) = self.oauth_tokens() {
            let (left, _) = deadline.slice().map_err(|why| stopped("token", why))?;
            match tokens.token(left) {
                Ok(token) => self.share_token(&token),
                // The fence passed while waiting: that is the reason, not the endpoint.
                Err(_) if deadline.fenced() => return Err(stopped("token", Stop::Fenced)),
                Err(e) => return Err(CollectError::new(ErrorKind::Authentication, e.to_string())),
            }
        }
        let result = self.collect_within(spec, started, &deadline);
        // The probe may talk to the cluster this collection read, under its
        // fence, when that is the monitor's cluster (the pinned or expected
        // id; the first success pins it): a snapshot the monitor will refuse
        // as another cluster's never lets the probe write there.
        if let Ok(snapshot) = &result {
            let pinned = spec.expected_cluster_id.clone().or_else(|| self.pinned_cluster());
            match pinned {
                // The first success pins the cluster here as the monitor does.
                None => self.pin_cluster(&snapshot.cluster_id),
                Some(id) if id != snapshot.cluster_id => {
                    if let Some(probe) = &self.e2e {
                        probe.revoke();
                    }
                }
                Some(_) => {}
            }
            if let Some(probe) = &self.e2e {
                if self.pinned_cluster().as_deref() == Some(snapshot.cluster_id.as_str())
                    && spec.expected_cluster_id.as_deref().is_none_or(|id| id == snapshot.cluster_id)
                {
                    probe.permit(probe_fence, &snapshot.cluster_id);
                }
            }
        }
        self.serve_main_queue();
        result
    }

    fn collect_within(
        &self,
        spec: &MonitorSpec,
        started: Instant,
        deadline: &Deadline,
    ) -> Result<Snapshot, CollectError> {
        let mut warnings = Vec::new();
        let mut failed_brokers = FailedBrokers::default();
        // Throttles are reported per cycle: one an abandoned cycle saw is not this one's.
        if let Ok(conns) = &self.direct {
            let _ = conns.lock().map(|mut c| c.take_throttles());
        }
        // 1-4. The cluster's shape and every partition's offsets.
        let ClusterRead { cluster_id, controller_id, brokers, topics } = match &self.direct {
            Ok(conns) => self.read_cluster_direct(conns, spec, deadline, &mut failed_brokers, &mut warnings)?,
            Err(_) => self.read_cluster_librdkafka(spec, deadline, &mut failed_brokers, &mut warnings)?,
        };

        // 5. Consumer groups: list, describe, committed offsets; lag from the offsets above.
        let mut notes = Vec::new();
        let groups = if self.groups_unsupported.load(Ordering::Relaxed) {
            warnings.push("consumer groups not collected: the cluster does not support ListGroups".into());
            Vec::new()
        } else {
            self.collect_groups(spec, &topics, &brokers, deadline, &mut failed_brokers, &mut warnings, &mut notes)?
        };

        let broker_throttle_ms = match &self.direct {
            Ok(conns) => conns.lock().map(|mut c| c.take_throttles()).unwrap_or_default(),
            Err(_) => Default::default(),
        };
        let duration = started.elapsed();
        Ok(Snapshot {
            monitor: spec.id.clone(),
            generation: spec.generation,
            cluster_id,
            controller_id,
            brokers,
            topics,
            groups,
            collected_at_ms: unix_ms(),
            duration_ms: duration.as_millis() as u64,
            warnings,
            notes,
            broker_errors: failed_brokers.into_vec(),
            broker_throttle_ms,
            throttles_unread: self.direct.is_err(),
            group_metrics: spec.group_metrics,
            e2e: self.e2e.as_ref().map(|p| p.snapshot()),
        })
    }

    /// Steps 1-4 over the monitor's own connections (`wire/cluster_cycle.rs`):
    /// Metadata from one broker, then every leader's offsets in parallel,
    /// each broker within its budget; a broker that failed is not asked
    /// again this cycle, and the partitions it leads have no offsets.
    fn read_cluster_direct(
        &self,
        conns: &Mutex<GroupConnections>,
        spec: &MonitorSpec,
        deadline: &Deadline,
        failed_brokers: &mut FailedBrokers,
        warnings: &mut Vec<String>,
    ) -> Result<ClusterRead, CollectError> {
        let mut conns =
            conns.lock().map_err(|_| CollectError::new(ErrorKind::Client, "broker connections poisoned"))?;
        let budget = broker_budget(spec.timeout);
        let md = conns.read_metadata(&spec.connection.bootstrap, &check(deadline, "metadata")?, budget);
        if md.fenced {
            return Err(stopped("metadata", Stop::Fenced));
        }
        for (broker, kind, why) in &md.failed {
            failed_brokers.note(*broker, *kind, why);
        }
        let wrong_cluster = md.wrong_cluster;
        // Every broker tried refused the credentials (a password, a token,
        // a certificate): that, not the network, is the reason.
        let refused = md.refused;
        let (md, _) = md.answer.map_err(|why| {
            let kind = match (deadline.fenced(), wrong_cluster, refused) {
                (true, _, _) => ErrorKind::Fenced,
                // No broker of the pinned cluster answered, and one of
                // another cluster did: the monitor's identity check.
                (false, true, _) => ErrorKind::IdentityMismatch,
                (false, false, true) => ErrorKind::Authentication,
                (false, false, false) => ErrorKind::Connection,
            };
            CollectError::new(kind, format!("metadata from {}: {why}", spec.connection.bootstrap.join(",")))
        })?;
        let cluster_id = md.cluster_id.clone().ok_or_else(|| {
            CollectError::new(
                ErrorKind::Kafka,
                "the cluster did not report a cluster id (Kafka < 0.10.1 is not supported)",
            )
        })?;
        let brokers: Vec<Broker> = md
            .brokers
            .iter()
            .map(|b| Broker {
                id: b.id,
                host: b.host.clone(),
                port: u16::try_from(b.port).unwrap_or(0),
                rack: b.rack.clone(),
            })
            .collect();
        let mut topics = topics_from_metadata(spec, &md, warnings);

        // Every leader's offsets, leaders in parallel, each within its budget.
        let addresses: HashMap<i32, String> =
            brokers.iter().map(|b| (b.id, crate::wire::broker_address(&b.host, b.port))).collect();
        let by_leader = partitions_by_leader(&topics);
        let mut offsets: HashMap<(String, i32), LogOffsets> = HashMap::new();
        let mut ask = Vec::new();
        for (leader, partitions) in by_leader {
            let why = match (failed_brokers.get(leader), addresses.get(&leader)) {
                (Some(f), _) => format!("broker {leader}: not asked, it failed earlier this cycle ({})", f.message),
                (None, None) => {
                    // A leader the cluster no longer lists is down to it.
                    let why = "leads partitions but is not among the brokers metadata named (down)";
                    failed_brokers.note(leader, BrokerErrorKind::Connection, why);
                    format!("broker {leader}: {why}")
                }
                (None, Some(address)) => {
                    ask.push((leader, address.clone(), partitions));
                    continue;
                }
            };
            for tp in partitions {
                offsets.entry(tp).or_default().error = Some(why.clone());
            }
        }
        // One answer per leader asked, in the order asked.
        let answers = conns.read_offsets(&ask, &check(deadline, "ListOffsets")?, budget);
        for ((leader, _, partitions), answer) in ask.iter().zip(&answers) {
            for (side, result) in [(OffsetSpec::Latest, &answer.latest), (OffsetSpec::Earliest, &answer.earliest)] {
                let step = side.step();
                match result {
                    Err(WireError::Stopped(Stop::Fenced)) => return Err(stopped(step, Stop::Fenced)),
                    Err(e) => {
                        let (_, kind, why) = crate::wire::cluster_cycle::leader_failure(*leader, e, budget);
                        // Out of the cycle's own time (earlier phases used
                        // it), not the broker's fault: not named.
                        let out_of_time = matches!(e, WireError::Stopped(_)) && Instant::now() >= deadline.at();
                        if !out_of_time {
                            failed_brokers.note(*leader, kind, &why);
                        }
                        for tp in partitions {
                            offsets
                                .entry(tp.clone())
                                .or_default()
                                .error
                                .get_or_insert_with(|| format!("broker {leader}: {why}"));
                        }
                    }
                    Ok(list) => {
                        let mut answered = std::collections::HashSet::new();
                        let asked: std::collections::HashSet<&(String, i32)> = partitions.iter().collect();
                        for (topic, partition, r) in list {
                            // Only what this leader was asked about: an answer
                            // for another leader's partition is not taken.
                            if !asked.contains(&(topic.clone(), *partition)) {
                                continue;
                            }
                            answered.insert((topic.clone(), *partition));
                            let entry = offsets.entry((topic.clone(), *partition)).or_default();
                            match (r, side) {
                                (Ok(o), OffsetSpec::Latest) => entry.latest = Some(*o),
                                (Ok(o), OffsetSpec::Earliest) => entry.earliest = Some(*o),
                                (Err(code), _) => {
                                    entry.error =
                                        Some(format!("broker {leader}: {step}: {}", crate::wire::error_name(*code)))
                                }
                            }
                        }
                        for tp in partitions.iter().filter(|tp| !answered.contains(*tp)) {
                            offsets
                                .entry(tp.clone())
                                .or_default()
                                .error
                                .get_or_insert_with(|| format!("broker {leader}: {step}: not in the answer"));
                        }
                    }
                }
            }
        }
        fill_offsets(&mut topics, offsets, warnings);
        Ok(ClusterRead { cluster_id, controller_id: md.controller_id, brokers, topics })
    }

    /// Steps 1-4 through librdkafka's calls, for settings the direct path
    /// cannot serve: metadata, cluster id and racks, then every leader's
    /// offsets at once, each leader within its budget.
    fn read_cluster_librdkafka(
        &self,
        spec: &MonitorSpec,
        deadline: &Deadline,
        failed_brokers: &mut FailedBrokers,
        warnings: &mut Vec<String>,
    ) -> Result<ClusterRead, CollectError> {
        let client = &self.native;

        // 1. Metadata: brokers, topics, partitions, leaders, replicas, ISR.
        let metadata = sliced(
            deadline,
            "metadata",
            |t| client.fetch_metadata(None, t),
            |e| matches!(e, KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)),
        )?
        .map_err(|e| {
            let kind = match &e {
                KafkaError::MetadataFetch(code) if is_transport(*code) => ErrorKind::Connection,
                KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut) => ErrorKind::Connection,
                _ => ErrorKind::Kafka,
            };
            let mut message = format!("metadata from {}: {e}", spec.connection.bootstrap.join(","));
            let mut kind = kind;
            if kind == ErrorKind::Connection {
                if let Some(why) = self.diagnose(spec, deadline) {
                    message = format!("{why} ({message})");
                    kind = ErrorKind::Authentication;
                }
            }
            CollectError::new(kind, message)
        })?;

        // 2. Cluster identity. DescribeCluster is authoritative and adds racks;
        // the metadata response carries the id and controller too.
        let mut cluster_id = None;
        let mut controller_id = None;
        let mut racks: HashMap<i32, String> = HashMap::new();
        let due = {
            let mut cached = self.racks.lock().map_err(|_| CollectError::new(ErrorKind::Client, "racks poisoned"))?;
            racks.clone_from(&cached.0);
            cached.1 = cached.1.saturating_add(1);
            cached.1 == 1 || cached.1 > DESCRIBE_CLUSTER_EVERY
        };
        if due && !self.describe_cluster_unsupported.load(Ordering::Relaxed) {
            // DescribeCluster only adds racks to what metadata gave us, so it
            // gets a fifth of the budget: some clusters (librdkafka's mock)
            // never answer it rather than refusing it.
            let budget = check(deadline, "DescribeCluster")?.capped((spec.timeout / 5).max(Duration::from_millis(200)));
            match admin::describe_cluster(client, budget) {
                Ok(desc) => {
                    cluster_id = desc.cluster_id;
                    controller_id = desc.controller_id;
                    racks = desc.brokers.into_iter().filter_map(|b| b.rack.map(|r| (b.id, r))).collect();
                    if let Ok(mut cached) = self.racks.lock() {
                        *cached = (racks.clone(), 1);
                    }
                }
                Err(AdminError::Fenced(_)) => return Err(stopped("DescribeCluster", Stop::Fenced)),
                Err(e @ AdminError::Unsupported { .. }) => {
                    // Not asked again by this client (a rebuilt client probes again).
                    tracing::debug!(monitor = %spec.id, "DescribeCluster unsupported, using metadata only: {e}");
                    self.describe_cluster_unsupported.store(true, Ordering::Relaxed);
                }
                Err(e @ AdminError::Timeout(_)) => {
                    // Some clusters (librdkafka's mock) never answer it, and a
                    // stuck broker may have been asked: metadata serves this
                    // cycle (racks as last known), and it is asked again in
                    // 10 cycles. A transient error never switches a feature
                    // off for the client's life.
                    tracing::debug!(monitor = %spec.id, "DescribeCluster unanswered, using metadata: {e}");
                    if let Ok(mut cached) = self.racks.lock() {
                        cached.1 = 1;
                    }
                }
                Err(e) => warnings.push(format!("DescribeCluster failed, using metadata: {e}")),
            }
        }
        // Between DescribeClusters the cluster id comes from this cycle's
        // metadata answer (librdkafka caches it; no request), so the
        // identity check still sees every cycle's cluster.
        if cluster_id.is_none() {
            let (left, _) = deadline.slice().map_err(|why| stopped("cluster id", why))?;
            cluster_id = client.fetch_cluster_id(left);
        }
        if controller_id.is_none() {
            // SAFETY: native_ptr is the live handle owned by `client`; the call only reads cached metadata.
            let id = unsafe { rdkafka_sys::rd_kafka_controllerid(client.native_ptr(), 0) };
            controller_id = (id >= 0).then_some(id);
        }
        let cluster_id = cluster_id.filter(|c| !c.is_empty()).ok_or_else(|| {
            CollectError::new(
                ErrorKind::Kafka,
                "the cluster did not report a cluster id (Kafka < 0.10.1 is not supported)",
            )
        })?;

        let brokers: Vec<Broker> = metadata
            .brokers()
            .iter()
            .map(|b| Broker {
                id: b.id(),
                host: b.host().to_string(),
                port: u16::try_from(b.port()).unwrap_or(0),
                rack: racks.get(&b.id()).cloned(),
            })
            .collect();

        // 3. Topics that pass the filter, and their partitions.
        let mut topics: Vec<TopicSnapshot> = Vec::new();
        for t in metadata.topics() {
            if !spec.filters.topic_allowed(t.name()) {
                continue;
            }
            if let Some(err) = t.error() {
                warnings.push(format!("topic {}: {}", t.name(), RDKafkaErrorCode::from(err)));
                continue;
            }
            let mut partitions: Vec<PartitionSnapshot> = t
                .partitions()
                .iter()
                .map(|p| PartitionSnapshot {
                    partition: p.id(),
                    leader: (p.leader() >= 0).then_some(p.leader()),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                    earliest: None,
                    latest: None,
                    error: p.error().map(|e| RDKafkaErrorCode::from(e).to_string()),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            topics.push(TopicSnapshot { name: t.name().to_string(), partitions });
        }
        topics.sort_by(|a, b| a.name.cmp(&b.name));

        // 4. Earliest and latest offsets: per leader broker, every call at
        // once, each with the broker's budget. A leader that refuses or is
        // stuck costs its own budget; its partitions have no offsets this
        // cycle (never last cycle's) and it is named in `broker_errors`.
        let by_leader = partitions_by_leader(&topics);
        let mut jobs: Vec<(i32, OffsetsJob)> = Vec::new();
        for (leader, partitions) in &by_leader {
            for chunk in partitions.chunks(LIST_OFFSETS_CHUNK) {
                for spec_kind in [OffsetSpec::Earliest, OffsetSpec::Latest] {
                    jobs.push((*leader, OffsetsJob { partitions: chunk.to_vec(), spec: spec_kind }));
                }
            }
        }
        let mut offsets: HashMap<(String, i32), LogOffsets> = HashMap::new();
        if !jobs.is_empty() {
            let calls: Vec<OffsetsJob> = jobs.iter().map(|(_, j)| j.clone()).collect();
            let answers =
                admin::list_offsets_each(client, &calls, broker_budget(spec.timeout), &check(deadline, "ListOffsets")?)
                    .map_err(|e| admin_error("ListOffsets", e))?;
            for ((leader, job), answer) in jobs.into_iter().zip(answers) {
                let step = job.spec.step();
                let mut answered = std::collections::HashSet::new();
                match answer {
                    Ok(results) => {
                        // Every partition failing alike is the leader failing
                        // (librdkafka reports a leader that never answered as
                        // per-partition results without an offset).
                        if let Some(Err(first)) = results.first().map(|r| &r.result) {
                            if results.iter().all(|r| r.result.is_err()) {
                                let kind = match first.code {
                                    RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut => {
                                        BrokerErrorKind::Timeout
                                    }
                                    code if is_transport(code) => BrokerErrorKind::Connection,
                                    _ => BrokerErrorKind::Kafka,
                                };
                                failed_brokers.note(leader, kind, &format!("{step}: {first}"));
                            }
                        }
                        for r in results {
                            answered.insert((r.topic.clone(), r.partition));
                            let entry = offsets.entry((r.topic, r.partition)).or_default();
                            match (r.result, job.spec) {
                                (Ok(o), OffsetSpec::Earliest) => entry.earliest = Some(o),
                                (Ok(o), OffsetSpec::Latest) => entry.latest = Some(o),
                                (Err(e), _) => entry.error = Some(format!("broker {leader}: {step}: {e}")),
                            }
                        }
                    }
                    Err(e) => {
                        let why = match &e {
                            AdminError::Timeout(_) => {
                                format!(
                                    "{step}: no answer within the broker's budget of {:?}",
                                    broker_budget(spec.timeout)
                                )
                            }
                            e => format!("{step}: {e}"),
                        };
                        failed_brokers.note(leader, broker_error_kind(&e), &why);
                    }
                }
                // Asked and not answered (a failed call, or a result that
                // left them out): missing this cycle, with the reason.
                for (topic, partition) in job.partitions {
                    if !answered.contains(&(topic.clone(), partition)) {
                        let entry = offsets.entry((topic, partition)).or_default();
                        entry.error.get_or_insert_with(|| format!("{step}: no answer from leader {leader}"));
                        if let Some(b) = failed_brokers.get(leader) {
                            entry.error = Some(format!("broker {leader}: {}", b.message));
                        }
                    }
                }
            }
        }
        fill_offsets(&mut topics, offsets, warnings);
        Ok(ClusterRead { cluster_id, controller_id, brokers, topics })
    }

    #[allow(clippy::too_many_arguments)]
    fn collect_groups(
        &self,
        spec: &MonitorSpec,
        topics: &[TopicSnapshot],
        brokers: &[Broker],
        deadline: &Deadline,
        failed_brokers: &mut FailedBrokers,
        warnings: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<GroupSnapshot>, CollectError> {
        let reads = match &self.direct {
            Ok(_) => self.read_groups_direct(spec, topics, brokers, deadline, failed_brokers, warnings, notes)?,
            Err(why) => {
                notes.push(format!("consumer groups read through librdkafka, one request per group: {why}"));
                self.read_groups_librdkafka(spec, deadline, warnings)?
            }
        };

        // Offsets of the partitions we saw, to compute lag without asking again.
        let mut log_offsets: HashMap<(&str, i32), &PartitionSnapshot> = HashMap::new();
        for t in topics {
            for p in &t.partitions {
                log_offsets.insert((t.name.as_str(), p.partition), p);
            }
        }
        let groups: Vec<GroupSnapshot> = reads.into_iter().map(|r| group_snapshot(spec, r, &log_offsets)).collect();
        let group_errors = groups.iter().filter(|g| g.error.is_some()).count();
        if group_errors > 0 {
            warnings.push(format!("{group_errors} group(s) could not be read fully"));
        }
        Ok(groups)
    }

    /// Why the bootstrap brokers cannot be reached, when librdkafka only
    /// says "transport failure": one direct connection attempt, with the
    /// monitor's TLS and SASL, names a refused password or certificate.
    /// Only after a failure (librdkafka's retries have usually used the
    /// timeout up, so it gets its own second at most, still bounded by the
    /// fence), and closed at once.
    fn diagnose(&self, spec: &MonitorSpec, deadline: &Deadline) -> Option<String> {
        if spec.connection.sasl.is_none() && spec.connection.tls.is_none() {
            return None;
        }
        let security = self.direct.as_ref().ok()?.lock().ok()?.security().clone();
        let deadline = deadline.renewed(spec.timeout.min(Duration::from_secs(1)));
        for address in &spec.connection.bootstrap {
            match crate::wire::connection::BrokerConnection::connect(address, &security, &deadline) {
                Err(e @ (WireError::Authentication(_) | WireError::Tls(_))) => return Some(e.to_string()),
                Err(WireError::Stopped(_)) => return None,
                _ => {}
            }
        }
        None
    }

    /// The batched direct requests over the monitor's own connections
    /// (`wire/`): each broker within its budget, brokers that failed
    /// earlier in the cycle not asked again.
    #[allow(clippy::too_many_arguments)]
    fn read_groups_direct(
        &self,
        spec: &MonitorSpec,
        topics: &[TopicSnapshot],
        brokers: &[Broker],
        deadline: &Deadline,
        failed_brokers: &mut FailedBrokers,
        warnings: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<GroupRead>, CollectError> {
        let Ok(conns) = &self.direct else { return self.read_groups_librdkafka(spec, deadline, warnings) };
        let mut conns = conns.lock().map_err(|_| CollectError::new(ErrorKind::Client, "group connections poisoned"))?;
        let addresses: Vec<(i32, String)> =
            brokers.iter().map(|b| (b.id, crate::wire::broker_address(&b.host, b.port))).collect();
        let asked: Vec<(String, Vec<i32>)> =
            topics.iter().map(|t| (t.name.clone(), t.partitions.iter().map(|p| p.partition).collect())).collect();
        let allowed = |g: &str| spec.filters.group_allowed(g);
        let skip = failed_brokers.ids();
        let cycle = conns.read_within(&addresses, &allowed, &asked, deadline, broker_budget(spec.timeout), &skip);
        if let Some(why) = cycle.stopped {
            return Err(stopped("consumer groups", why));
        }
        for (broker, kind, why) in &cycle.failed {
            failed_brokers.note(*broker, *kind, why);
        }
        let asked_brokers = addresses.iter().filter(|(id, _)| !skip.contains(id)).count();
        if let Some(why) = cycle.authentication {
            return Err(CollectError::new(
                ErrorKind::Connection,
                format!("consumer groups: authentication failed: {why}"),
            ));
        }
        if cycle.unsupported {
            self.groups_unsupported.store(true, Ordering::Relaxed);
            warnings.push("consumer groups not collected: the cluster does not support ListGroups".into());
            return Ok(Vec::new());
        }
        // Only when every broker asked refused the direct path itself (not
        // when they were stuck: librdkafka would wait on them too).
        let refused_everywhere =
            asked_brokers > 0 && cycle.failed.iter().all(|(_, kind, _)| *kind != BrokerErrorKind::Timeout);
        if cycle.answered == 0 && refused_everywhere {
            // No broker answered the direct requests while librdkafka's
            // connections work (metadata came back): e.g. a certificate
            // rustls refuses and OpenSSL accepts, or a port only
            // librdkafka's connections may reach. Rather than report no
            // groups, this cycle reads them through librdkafka, and says so.
            let first = cycle.broker_errors.first().cloned().unwrap_or_default();
            tracing::debug!(monitor = %spec.id, "direct group requests failed on every broker: {first}");
            notes.push(format!(
                "consumer groups read through librdkafka this cycle: the direct requests failed on every broker ({first})"
            ));
            return self.read_groups_librdkafka(spec, deadline, warnings);
        }
        for err in &cycle.broker_errors {
            warnings.push(format!("ListGroups partial failure: {err}"));
        }
        Ok(cycle.groups)
    }

    /// librdkafka's admin calls: one OffsetFetch (and usually one
    /// FindCoordinator) per group; for settings the direct path cannot serve.
    fn read_groups_librdkafka(
        &self,
        spec: &MonitorSpec,
        deadline: &Deadline,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<GroupRead>, CollectError> {
        let client = &self.native;
        // Each call within a broker's budget (not the whole deadline): a
        // stuck broker or coordinator costs that, and the calls after it
        // still run. librdkafka answers a call whose brokers partly timed
        // out with what the others said.
        let budget = broker_budget(spec.timeout);
        let listing = match admin::list_consumer_groups(client, check(deadline, "ListGroups")?.capped(budget)) {
            Ok(l) => l,
            Err(e) if e.is_unsupported() => {
                self.groups_unsupported.store(true, Ordering::Relaxed);
                warnings.push("consumer groups not collected: the cluster does not support ListGroups".into());
                return Ok(Vec::new());
            }
            Err(e) => return Err(admin_error("ListGroups", e)),
        };
        for err in &listing.errors {
            warnings.push(format!("ListGroups partial failure: {err}"));
        }
        let mut ids: Vec<String> =
            listing.groups.iter().map(|g| g.group_id.clone()).filter(|g| spec.filters.group_allowed(g)).collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A call that fails as a whole (out of time) fails its groups, by
        // name, and not the collection: what else was read is published.
        let whole = |e: AdminError| -> Result<String, CollectError> {
            match e {
                AdminError::Fenced(op) => Err(stopped(op, Stop::Fenced)),
                e => Ok(e.to_string()),
            }
        };
        let (mut described, describe_failed): (HashMap<_, _>, Option<String>) =
            match admin::describe_consumer_groups(client, &ids, check(deadline, "DescribeGroups")?.capped(budget)) {
                Ok(per_group) => (per_group.into_iter().collect(), None),
                Err(e) => (HashMap::new(), Some(whole(e)?)),
            };
        let (mut committed, fetch_failed): (HashMap<_, _>, Option<String>) =
            match admin::list_consumer_group_offsets_within(client, &ids, check(deadline, "OffsetFetch")?, budget) {
                Ok(per_group) => (per_group.into_iter().collect(), None),
                Err(e) => (HashMap::new(), Some(whole(e)?)),
            };
        Ok(ids
            .into_iter()
            .map(|id| {
                let mut read = GroupRead {
                    id: id.clone(),
                    coordinator: None,
                    protocol_type: String::new(),
                    group_type: None,
                    state: "Unknown".into(),
                    members: 0,
                    describe_error: None,
                    committed: Err("no result".into()),
                };
                match described.remove(&id) {
                    Some(Ok(d)) => {
                        read.state = d.state.as_str().to_string();
                        read.members = d.members.len() as u32;
                        read.coordinator = d.coordinator.map(|c| c.id);
                        read.protocol_type = if d.is_simple { String::new() } else { "consumer".into() };
                    }
                    Some(Err(e)) => read.describe_error = Some(e.to_string()),
                    None => read.describe_error = Some(describe_failed.clone().unwrap_or_else(|| "no result".into())),
                }
                read.committed = match committed.remove(&id) {
                    // A partition answered with an error leaves the group's
                    // offsets unread (as on the direct path): left out, it
                    // would read as "nothing committed there".
                    Some(Ok(list)) => match list
                        .iter()
                        .find(|c| c.error.as_ref().is_some_and(|e| e.code != RDKafkaErrorCode::UnknownTopicOrPartition))
                    {
                        Some(c) => Err(format!(
                            "{}/{}: {}",
                            c.topic,
                            c.partition,
                            c.error.as_ref().map(ToString::to_string).unwrap_or_default()
                        )),
                        None => Ok(list
                            .into_iter()
                            .filter(|c| c.error.is_none())
                            // A partition without a commit gets no entry, so no lag series.
                            .filter_map(|c| c.offset.filter(|o| *o >= 0).map(|o| ((c.topic, c.partition), o)))
                            .collect()),
                    },
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err(fetch_failed.clone().unwrap_or_else(|| "no result".into())),
                };
                read
            })
            .collect())
    }
}

/// The partitions with a leader, by leader.
fn partitions_by_leader(topics: &[TopicSnapshot]) -> BTreeMap<i32, Vec<(String, i32)>> {
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for t in topics {
        for p in &t.partitions {
            if let Some(leader) = p.leader {
                by_leader.entry(leader).or_default().push((t.name.clone(), p.partition));
            }
        }
    }
    by_leader
}

/// Puts this cycle's offsets into the partitions (a partition nobody
/// answered for keeps none: never last cycle's) and says in the warnings
/// what is offline and what could not be read.
fn fill_offsets(
    topics: &mut [TopicSnapshot],
    mut offsets: HashMap<(String, i32), LogOffsets>,
    warnings: &mut Vec<String>,
) {
    let offline = topics.iter().flat_map(|t| &t.partitions).filter(|p| p.offline()).count();
    if offline > 0 {
        warnings.push(format!("{offline} partition(s) have no leader (offline)"));
    }
    let mut failed_offsets = Vec::new();
    for t in topics.iter_mut() {
        for p in &mut t.partitions {
            if let Some(o) = offsets.remove(&(t.name.clone(), p.partition)) {
                p.earliest = o.earliest;
                p.latest = o.latest;
                if o.error.is_some() {
                    failed_offsets.push(format!("{}/{}", t.name, p.partition));
                    p.error = o.error;
                }
            }
        }
    }
    if !failed_offsets.is_empty() {
        let first = topics.iter().flat_map(|t| t.partitions.iter()).find_map(|p| p.error.clone()).unwrap_or_default();
        warnings.push(format!(
            "offsets unavailable for {} partition(s) ({}): {first}",
            failed_offsets.len(),
            failed_offsets.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// The topics of a metadata answer that the filters admit, partitions in
/// order, without offsets yet; topics the answer has an error for are left
/// out and named in the warnings.
fn topics_from_metadata(
    spec: &MonitorSpec,
    md: &crate::wire::cluster::ClusterMetadata,
    warnings: &mut Vec<String>,
) -> Vec<TopicSnapshot> {
    let mut topics: Vec<TopicSnapshot> = Vec::new();
    for t in &md.topics {
        if !spec.filters.topic_allowed(&t.name) {
            continue;
        }
        if t.error_code != 0 {
            warnings.push(format!("topic {}: {}", t.name, crate::wire::error_name(t.error_code)));
            continue;
        }
        let mut partitions: Vec<PartitionSnapshot> = t
            .partitions
            .iter()
            .map(|p| PartitionSnapshot {
                partition: p.partition,
                leader: (p.leader >= 0).then_some(p.leader),
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                earliest: None,
                latest: None,
                // LEADER_NOT_AVAILABLE and the like; REPLICA_NOT_AVAILABLE
                // (9) only says a replica is down, which ISR shows.
                error: (p.error_code != 0 && p.error_code != 9).then(|| crate::wire::error_name(p.error_code)),
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        topics.push(TopicSnapshot { name: t.name.clone(), partitions });
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    topics
}

/// One group's snapshot from how it was read, whichever path read it: its
/// commits on partitions the filters admit and the metadata still has, each
/// with its lag from this cycle's log offsets.
fn group_snapshot(
    spec: &MonitorSpec,
    read: GroupRead,
    log_offsets: &HashMap<(&str, i32), &PartitionSnapshot>,
) -> GroupSnapshot {
    let mut errors = Vec::new();
    let description_unread = read.describe_error.is_some();
    let offsets_unread = read.committed.is_err();
    if let Some(e) = read.describe_error {
        errors.push(format!("DescribeGroups: {e}"));
    }
    let mut offsets = Vec::new();
    match read.committed {
        Ok(by_tp) => {
            for ((topic, partition), committed) in by_tp {
                if !spec.filters.topic_allowed(&topic) {
                    continue;
                }
                // Commits on topics the metadata no longer has (deleted) are skipped.
                let Some(p) = log_offsets.get(&(topic.as_str(), partition)) else {
                    continue;
                };
                let position = compute_lag(committed, p.earliest, p.latest);
                offsets.push(GroupOffset {
                    topic,
                    partition,
                    committed,
                    lag: position.lag,
                    data_loss: position.data_loss,
                    ahead_of_log: position.ahead_of_log,
                    // Filled by the monitor's history (kollector_core::history).
                    lag_ms: None,
                    lag_ms_is_lower_bound: false,
                    retention_margin_ms: None,
                    verdict: None,
                });
            }
        }
        Err(e) => errors.push(format!("OffsetFetch: {e}")),
    }
    GroupSnapshot {
        group_id: read.id,
        state: read.state,
        members: read.members,
        coordinator: read.coordinator,
        offsets,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        description_unread,
        offsets_unread,
        verdict: None,
        protocol_type: Some(read.protocol_type),
        group_type: read.group_type,
    }
}
