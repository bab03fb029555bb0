//! The end-to-end probe of one monitor: produce to a probe topic, consume
//! back, measure (KMinion's end-to-end monitoring, with duplicates and
//! out-of-order arrivals counted as well).
//!
//! A probe belongs to its monitor's [`crate::KafkaClient`]: it is started
//! with it and stopped, with its producer and consumer closed, when the
//! client is dropped (reassigned, reconfigured, deleted, fenced, rebuilt),
//! so it can never outlive its monitor or speak for another cluster. It has
//! its own thread, a librdkafka producer and a librdkafka consumer in its
//! own group, `kollector-e2e-<monitor>`, reading the probe partitions by
//! assignment (no rebalances) from where they ended when it started.
//!
//! Every message carries the monitor and a random id of this probe run;
//! messages of other monitors or of earlier runs (a probe that ran on
//! another collector before a failover) are ignored, never counted, so
//! messages in flight at a failover are neither lost nor received for the
//! new run.
//!
//! It does nothing, not even connect, until a collection whose snapshot
//! came from the monitor's cluster has handed it the fence (cluster mode:
//! the lease's safe end) and that cluster's id; it produces and commits only
//! while the fence holds, drops what it has queued when the fence passes,
//! and checks at each topic check that its own clients reach that cluster.
//! The topic is created when missing with `partitions_per_broker` per
//! broker (Kafka's placement gives every broker a leader), checked every
//! few minutes, and given a partition led by any broker that leads none;
//! a broker the probe cannot cover is reported, never ignored.

mod topic;
pub mod tracker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kollector_core::e2e::{E2eProbeConfig, E2eSnapshot};
use kollector_core::{CollectError, ErrorKind, MonitorSpec};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::oauth::TokenSource;
use tracker::{Commits, Tracker};

/// How often the probe thread wakes (polls, settles, produces when due).
const TICK: Duration = Duration::from_millis(50);
/// How often consumed offsets are committed (and the commit timed).
const COMMIT_EVERY: Duration = Duration::from_secs(5);
/// How often the topic is checked once it is fine, and retried when not.
const TOPIC_CHECK_EVERY: Duration = Duration::from_secs(300);
const TOPIC_RETRY_EVERY: Duration = Duration::from_secs(10);

/// The probe's group id for a monitor.
pub fn group_id(monitor: &str) -> String {
    format!("kollector-e2e-{monitor}")
}

/// One probe message.
#[derive(Serialize, Deserialize)]
struct ProbeMessage {
    monitor: String,
    run: String,
    partition: i32,
    seq: u64,
}

/// The fence as the probe knows it.
enum FenceState {
    /// No collection of the monitor's cluster has run yet: do nothing.
    NotYet,
    /// The fence of the latest collection, and the cluster it read.
    Given { fence: Option<crate::Fence>, cluster_id: String },
}

struct Shared {
    stop: AtomicBool,
    monitor: String,
    run: String,
    config: E2eProbeConfig,
    tracker: Mutex<Tracker>,
    commits: Mutex<Commits>,
    topic: Mutex<topic::TopicState>,
    fence: Mutex<FenceState>,
    tokens: Option<Arc<TokenSource>>,
    token_timeout: Duration,
}

impl Shared {
    /// The cluster the probe may talk to, while the fence holds.
    fn permitted(&self) -> Option<String> {
        match &*self.fence.lock().unwrap_or_else(|e| e.into_inner()) {
            FenceState::NotYet => None,
            FenceState::Given { fence, cluster_id } => fence
                .as_ref()
                .is_none_or(|f| f().is_none_or(|until| Instant::now() < until))
                .then(|| cluster_id.clone()),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// librdkafka callbacks of the probe's producer and consumer.
#[derive(Clone)]
struct ProbeContext(Arc<Shared>);

impl ClientContext for ProbeContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let monitor = &self.0.monitor;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(monitor = %monitor, facility = fac, "e2e probe librdkafka: {message}")
            }
            _ => tracing::debug!(monitor = %monitor, facility = fac, "e2e probe librdkafka: {message}"),
        }
    }

    fn generate_oauth_token(&self, _config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        // Called from the probe thread's polls: the monitor's token source, as for its other clients.
        let tokens = self.0.tokens.as_ref().ok_or("no token source for this monitor")?;
        let t = tokens.token(self.0.token_timeout)?;
        Ok(OAuthToken {
            token: t.value.expose().to_string(),
            principal_name: t.principal.clone(),
            lifetime_ms: t.expires_at_ms.min(i64::MAX as u64) as i64,
        })
    }
}

impl ProducerContext for ProbeContext {
    type DeliveryOpaque = Box<(i32, u64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        let (partition, seq) = *sent;
        let now = Instant::now();
        let mut t = self.0.tracker.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => t.acked(partition, seq, now),
            // Purged by the probe itself (the fence passed, or it stops):
            // cancelled, not a failure of the cluster.
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::PurgeQueue | rdkafka::types::RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => t.cancel(partition, seq),
            Err(_) => t.failed(partition, seq, now),
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// A running probe. Dropping it stops its thread and closes its producer
/// and consumer (this waits for them: call it off async threads).
pub struct E2eProbe {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for E2eProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eProbe")
            .field("monitor", &self.shared.monitor)
            .field("topic", &self.shared.config.topic)
            .finish()
    }
}

impl E2eProbe {
    /// Starts the probe of `spec` (which must have `e2e_probe`), with the
    /// settings of the monitor's client (`base`) and its token source.
    pub fn start(
        spec: &MonitorSpec,
        config: &E2eProbeConfig,
        base: &ClientConfig,
        tokens: Option<Arc<TokenSource>>,
    ) -> Result<E2eProbe, CollectError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            monitor: spec.id.to_string(),
            run: format!("{:016x}", rand_u64()),
            config: config.clone(),
            tracker: Mutex::new(Tracker::new(config.ack_sla, config.roundtrip_sla)),
            commits: Mutex::new(Commits::default()),
            topic: Mutex::new(topic::TopicState::default()),
            fence: Mutex::new(FenceState::NotYet),
            tokens,
            token_timeout: spec.timeout.max(Duration::from_secs(1)),
        });
        let build = |what: &str, e: rdkafka::error::KafkaError| {
            CollectError::new(
                ErrorKind::Client,
                format!("cannot build the e2e probe's {what}: {}", crate::client::config_error(&e)),
            )
        };
        let mut base = base.clone();
        base.set("client.id", format!("{}-e2e", spec.client_id()))
            // A metadata request must never create the probe topic with the
            // broker's defaults: the probe creates it, with its own settings.
            .set("allow.auto.create.topics", "false")
            // Leaders move: the probe's clients follow them (the monitor's own does not need to).
            .set("topic.metadata.refresh.interval.ms", "60000")
            // The monitor's socket timeout is its collection timeout; a
            // consumer long-polls, and a produce waits for acks=all.
            .set("socket.timeout.ms", "10000");
        let mut producer_config = base.clone();
        producer_config
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", config.ack_sla.as_millis().clamp(1, i32::MAX as u128).to_string());
        let mut consumer_config = base.clone();
        consumer_config
            .set("group.id", group_id(spec.id.as_str()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "500")
            // Bounds how long closing the consumer may wait on a commit a
            // coordinator never answers.
            .set("session.timeout.ms", "6000");
        // Settings are checked now (a bad one is the spec's fault); the
        // clients are built by the thread once the probe may talk to Kafka.
        producer_config.create_native_config().map_err(|e| build("producer", e))?;
        consumer_config.create_native_config().map_err(|e| build("consumer", e))?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kollector-e2e".into())
            .spawn(move || ProbeLoop::start(s, producer_config, consumer_config, base))
            .map_err(|e| CollectError::new(ErrorKind::Client, format!("cannot start the e2e probe thread: {e}")))?;
        crate::client::LIVE_PROBES.fetch_add(1, Ordering::SeqCst);
        Ok(E2eProbe { shared, thread: Some(thread) })
    }

    /// Lets the probe talk to `cluster_id` while `fence` holds: called
    /// after a collection whose snapshot came from the monitor's cluster.
    pub fn permit(&self, fence: Option<crate::Fence>, cluster_id: &str) {
        *self.shared.fence.lock().unwrap_or_else(|e| e.into_inner()) =
            FenceState::Given { fence, cluster_id: cluster_id.to_string() };
    }

    /// Takes the permission back (a collection reached another cluster).
    pub fn revoke(&self) {
        *self.shared.fence.lock().unwrap_or_else(|e| e.into_inner()) = FenceState::NotYet;
    }

    /// The probe's numbers so far.
    pub fn snapshot(&self) -> E2eSnapshot {
        let s = &self.shared;
        let (partitions, in_flight) = {
            let t = s.tracker.lock().unwrap_or_else(|e| e.into_inner());
            (t.partitions(), t.in_flight())
        };
        let c = s.commits.lock().unwrap_or_else(|e| e.into_inner());
        let topic = s.topic.lock().unwrap_or_else(|e| e.into_inner());
        E2eSnapshot {
            topic: s.config.topic.clone(),
            partitions,
            in_flight,
            commits: c.ok,
            commits_failed: c.failed,
            commit_latency: c.latency.clone(),
            brokers_without_partition: topic.brokers_without_partition.clone(),
            problems: topic.problems.clone(),
            ack_sla_ms: s.config.ack_sla.as_millis() as u64,
            roundtrip_sla_ms: s.config.roundtrip_sla.as_millis() as u64,
            commit_sla_ms: s.config.commit_sla.as_millis() as u64,
        }
    }
}

impl Drop for E2eProbe {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // The thread drops the producer and consumer (closing their
            // sockets) before it ends.
            let _ = t.join();
        }
        crate::client::LIVE_PROBES.fetch_sub(1, Ordering::SeqCst);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS: enough to tell probe runs apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}

/// An offset commit waiting for its answer on its own queue (rdkafka's
/// consumer does not hand an asynchronous commit's result to a
/// `BaseConsumer` poll reliably, and a synchronous commit would block the
/// probe thread for as long as a coordinator takes).
struct PendingCommit {
    queue: crate::admin::Queue,
    started: Instant,
    /// Already counted failed (no answer within [`COMMIT_GIVE_UP`]); its
    /// late answer is then only waited for, so that commits never overlap.
    given_up: bool,
}

/// A commit with no answer after this long is counted failed.
const COMMIT_GIVE_UP: Duration = Duration::from_secs(30);
/// The most a whole topic check may take (its calls share it), so a probe
/// stops within about this long and its measurements pause no longer.
const CHECK_BUDGET: Duration = Duration::from_secs(5);

/// The probe's producer and consumer, built once the probe may talk to Kafka.
struct Clients {
    /// Declared (and so dropped) before the consumer it belongs to.
    pending_commit: Option<PendingCommit>,
    producer: BaseProducer<ProbeContext>,
    consumer: BaseConsumer<ProbeContext>,
}

/// The probe thread's state.
struct ProbeLoop {
    clients: Option<Clients>,
    shared: Arc<Shared>,
    producer_config: ClientConfig,
    consumer_config: ClientConfig,
    admin_config: ClientConfig,
    /// Partition → leader, as last read; empty until the topic is ready.
    leaders: BTreeMap<i32, Option<i32>>,
    next_topic_check: Instant,
    next_produce: Instant,
    next_commit: Instant,
    consumed_since_commit: bool,
    /// The fence passed since the last produce: queued messages were dropped.
    purged: bool,
}

impl ProbeLoop {
    fn start(
        shared: Arc<Shared>,
        producer_config: ClientConfig,
        consumer_config: ClientConfig,
        admin_config: ClientConfig,
    ) {
        let now = Instant::now();
        ProbeLoop {
            clients: None,
            shared,
            producer_config,
            consumer_config,
            admin_config,
            leaders: BTreeMap::new(),
            next_topic_check: now,
            next_produce: now,
            next_commit: now + COMMIT_EVERY,
            consumed_since_commit: false,
            purged: true,
        }
        .run()
    }

    fn problem(&self, why: String) {
        tracing::warn!(monitor = %self.shared.monitor, topic = %self.shared.config.topic, "e2e probe: {why}");
        self.shared.topic.lock().unwrap_or_else(|e| e.into_inner()).problems = vec![why];
    }

    /// The producer and consumer, built on first use.
    fn clients(&mut self) -> Option<&mut Clients> {
        if self.clients.is_none() {
            let ctx = || ProbeContext(self.shared.clone());
            let built =
                self.producer_config.create_with_context::<_, BaseProducer<ProbeContext>>(ctx()).and_then(|producer| {
                    self.consumer_config
                        .create_with_context::<_, BaseConsumer<ProbeContext>>(ctx())
                        .map(|consumer| Clients { pending_commit: None, producer, consumer })
                });
            match built {
                Ok(c) => self.clients = Some(c),
                Err(e) => {
                    self.problem(format!("cannot build the probe's clients: {}", crate::client::config_error(&e)));
                    return None;
                }
            }
        }
        self.clients.as_mut()
    }

    fn run(mut self) {
        while !self.shared.stopping() {
            let now = Instant::now();
            let permitted = self.shared.permitted();
            let Some(cluster_id) = permitted else {
                // Not yet allowed, or the fence passed: drop what is queued
                // (librdkafka would go on retrying it), send nothing.
                if !self.purged {
                    if let Some(c) = &self.clients {
                        c.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                    }
                    self.purged = true;
                }
                if let Some(c) = &self.clients {
                    c.producer.poll(Duration::ZERO);
                }
                self.consume();
                self.expire();
                if self.clients.is_none() {
                    std::thread::sleep(TICK);
                }
                continue;
            };
            if self.clients().is_none() {
                self.sleep_until(Instant::now() + TOPIC_RETRY_EVERY);
                continue;
            }
            if now >= self.next_topic_check {
                let ok = self.check_topic(&cluster_id);
                self.next_topic_check = Instant::now() + if ok { TOPIC_CHECK_EVERY } else { TOPIC_RETRY_EVERY };
            }
            self.consume();
            if let Some(c) = &self.clients {
                c.producer.poll(Duration::ZERO);
            }
            let now = Instant::now();
            // Asked again before each write: the topic check may have taken
            // seconds, and the fence may have passed meanwhile.
            let still = self.shared.permitted().as_deref() == Some(cluster_id.as_str());
            if now >= self.next_produce && still {
                if !self.leaders.is_empty() {
                    self.produce_round(now);
                    self.purged = false;
                }
                self.next_produce = now + self.shared.config.interval;
            }
            self.check_commit();
            if now >= self.next_commit && still {
                self.commit();
                self.next_commit = now + COMMIT_EVERY;
            }
            self.expire();
        }
        if let Some(c) = &self.clients {
            // Purge what is queued so closing does not wait on it.
            c.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
            c.producer.poll(Duration::ZERO);
        }
    }

    fn sleep_until(&self, until: Instant) {
        while !self.shared.stopping() && Instant::now() < until {
            std::thread::sleep(TICK);
        }
    }

    fn expire(&self) {
        self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).expire(Instant::now());
    }

    /// Reads what arrived, for at most one tick.
    fn consume(&mut self) {
        let Some(c) = &self.clients else { return };
        let until = Instant::now() + TICK;
        let mut mine = false;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Some(next) = c.consumer.poll(left) else { break };
            let now = Instant::now();
            match next {
                Err(e) => tracing::debug!(monitor = %self.shared.monitor, "e2e probe consume error: {e}"),
                Ok(m) => {
                    let parsed = m.payload().map(serde_json::from_slice::<ProbeMessage>);
                    if let Some(Ok(msg)) = parsed {
                        if msg.monitor == self.shared.monitor && msg.run == self.shared.run {
                            mine = true;
                            // The partition it was read from, not the one it claims.
                            let mut t = self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner());
                            t.received(m.partition(), msg.seq, now);
                        }
                    }
                }
            }
            if left.is_zero() {
                break;
            }
        }
        self.consumed_since_commit |= mine;
    }

    fn produce_round(&mut self, now: Instant) {
        let topic = self.shared.config.topic.clone();
        let partitions: Vec<i32> = self.leaders.keys().copied().collect();
        let (monitor, run) = (self.shared.monitor.clone(), self.shared.run.clone());
        let shared = self.shared.clone();
        let Some(c) = &self.clients else { return };
        for partition in partitions {
            let seq = shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).produce(partition, now);
            let body = ProbeMessage { monitor: monitor.clone(), run: run.clone(), partition, seq };
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            let record = BaseRecord::with_opaque_to(&topic, Box::new((partition, seq)))
                .partition(partition)
                .key(monitor.as_bytes())
                .payload(&payload);
            if let Err((e, _)) = c.producer.send(record) {
                tracing::debug!(monitor = %monitor, partition, "e2e probe produce refused: {e}");
                shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).failed(partition, seq, Instant::now());
            }
        }
    }

    /// Commits what was consumed since the last commit, unless a commit
    /// is still out (one at a time, so latencies stay honest).
    fn commit(&mut self) {
        if !self.consumed_since_commit {
            return;
        }
        let Some(c) = &mut self.clients else { return };
        if let Some(p) = &c.pending_commit {
            // One commit at a time; one that was given up on and is still
            // out is a failure for every slot it keeps the next one from.
            if p.given_up {
                self.shared.commits.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
            }
            return;
        }
        self.consumed_since_commit = false;
        let queue = crate::admin::Queue::new(c.consumer.client());
        // SAFETY: both handles are live; NULL offsets commit the stored
        // offsets of the current assignment; the result goes to `queue`.
        let err = unsafe {
            rdkafka_sys::rd_kafka_commit_queue(
                c.consumer.client().native_ptr(),
                std::ptr::null(),
                queue.ptr(),
                None,
                std::ptr::null_mut(),
            )
        };
        if err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            c.pending_commit = Some(PendingCommit { queue, started: Instant::now(), given_up: false });
        } else {
            self.shared.commits.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
            tracing::debug!(monitor = %self.shared.monitor, "e2e probe offset commit refused: {}", rdkafka::types::RDKafkaErrorCode::from(err));
        }
    }

    /// Reads the pending commit's answer, if it came.
    fn check_commit(&mut self) {
        let Some(c) = &mut self.clients else { return };
        let Some(p) = &mut c.pending_commit else { return };
        let answer = p.queue.try_next().map(|ev| {
            // SAFETY: a live event owned by the guard.
            unsafe { rdkafka_sys::rd_kafka_event_error(ev.ptr()) }
        });
        let mut counts = self.shared.commits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(err) = answer else {
            if !p.given_up && p.started.elapsed() > COMMIT_GIVE_UP {
                p.given_up = true;
                counts.failed += 1;
            }
            return;
        };
        let (took, given_up) = (p.started.elapsed(), p.given_up);
        c.pending_commit = None;
        if given_up {
            return;
        }
        match err {
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
                counts.ok += 1;
                counts.latency.observe(took);
            }
            // Nothing new was stored to commit: neither a success nor a failure.
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__NO_OFFSET => {}
            other => {
                counts.failed += 1;
                tracing::debug!(monitor = %self.shared.monitor, "e2e probe offset commit failed: {}", rdkafka::types::RDKafkaErrorCode::from(other));
            }
        }
    }

    /// Makes sure the probe's clients reach `cluster_id`, that the topic
    /// exists and covers every broker, and that the consumer reads every
    /// partition; within [`CHECK_BUDGET`], stopping early when asked to.
    /// True when all is well.
    fn check_topic(&mut self, cluster_id: &str) -> bool {
        let deadline = Instant::now() + CHECK_BUDGET;
        let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let config = self.shared.config.clone();
        let Some(c) = &self.clients else { return false };
        // A DNS change (or a broker replaced at the same address) must not
        // make the probe count another cluster's messages under this one.
        match c.producer.client().fetch_cluster_id(left()) {
            Some(id) if id == cluster_id => {}
            // No answer in time: checked again at the next try, nothing
            // changed meanwhile.
            None => {
                self.problem(format!("could not read the cluster id of {} through the probe's clients", config.topic));
                return false;
            }
            Some(other) => {
                self.problem(format!(
                    "the probe's clients reach cluster {other}, not the monitor's {cluster_id}: not probing"
                ));
                *self.shared.fence.lock().unwrap_or_else(|e| e.into_inner()) = FenceState::NotYet;
                self.leaders.clear();
                if let Some(c) = &self.clients {
                    let _ = c.consumer.unassign();
                }
                return false;
            }
        }
        if self.shared.stopping() {
            return false;
        }
        let read = topic::read(c.producer.client(), &config.topic, left());
        let outcome = read.and_then(|view| {
            let plan = topic::plan(&view, config.partitions_per_broker, config.replication_factor);
            if self.shared.stopping() || self.shared.permitted().as_deref() != Some(cluster_id) {
                return Err("the fence passed or the probe stops: the topic is left as it is".to_string());
            }
            if !topic::apply(&self.admin_config, &self.shared, &config.topic, &plan, left())? {
                return Ok((view, plan));
            }
            // Created or grown: read again for the leaders.
            let view = topic::read(c.producer.client(), &config.topic, left())?;
            if !view.exists {
                return Err(format!("{} was created and is not visible yet", config.topic));
            }
            let plan = topic::plan(&view, config.partitions_per_broker, config.replication_factor);
            Ok((view, plan))
        });
        let (view, plan) = match outcome {
            Ok(x) => x,
            Err(why) => {
                self.problem(why);
                return false;
            }
        };
        {
            let mut state = self.shared.topic.lock().unwrap_or_else(|e| e.into_inner());
            state.brokers_without_partition = plan.uncovered.clone();
            state.problems = plan.problems(&config.topic);
        }
        let leaders: BTreeMap<i32, Option<i32>> = view.partitions.iter().map(|p| (p.id, p.leader)).collect();
        {
            let mut t = self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner());
            for (p, l) in &leaders {
                t.set_leader(*p, *l);
            }
        }
        if leaders.keys().ne(self.leaders.keys()) {
            if let Err(why) = self.assign(&leaders, deadline) {
                self.problem(why);
                return false;
            }
        }
        self.leaders = leaders;
        plan.uncovered.is_empty()
    }

    /// Adds the partitions the consumer does not read yet, each from its
    /// end as of now (so nothing produced from now on is missed and
    /// nothing older is read); the ones it reads already go on from where
    /// they are (nothing in flight there is skipped).
    fn assign(&mut self, leaders: &BTreeMap<i32, Option<i32>>, deadline: Instant) -> Result<(), String> {
        let topic = self.shared.config.topic.clone();
        let Some(c) = &self.clients else { return Err("no consumer".into()) };
        let mut list = TopicPartitionList::new();
        for p in leaders.keys().filter(|p| !self.leaders.contains_key(p)) {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
            let (_, high) = c
                .consumer
                .fetch_watermarks(&topic, *p, left)
                .map_err(|e| format!("reading the end of {topic}/{p}: {e}"))?;
            list.add_partition_offset(&topic, *p, Offset::Offset(high)).map_err(|e| e.to_string())?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        c.consumer.incremental_assign(&list).map_err(|e| format!("assigning {topic}: {e}"))
    }
}
