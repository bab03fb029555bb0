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
//! It produces only once a collection has handed it the monitor's fence
//! (cluster mode: the lease's safe end), and only while the fence holds.
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
/// The longest a blocking call of the probe thread may take (metadata,
/// watermarks, topic creation): bounds how long closing a probe can wait.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// No collection has run yet: do not produce.
    NotYet,
    Given(Option<crate::Fence>),
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
    fn may_produce(&self) -> bool {
        match &*self.fence.lock().unwrap_or_else(|e| e.into_inner()) {
            FenceState::NotYet => false,
            FenceState::Given(None) => true,
            FenceState::Given(Some(fence)) => fence().is_none_or(|until| Instant::now() < until),
        }
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
        let mut producer_config = base.clone();
        producer_config
            .set("client.id", format!("{}-e2e", spec.client_id()))
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", config.ack_sla.as_millis().clamp(1, i32::MAX as u128).to_string())
            // Leaders move: the producer follows them (the monitor's own client does not need to).
            .set("topic.metadata.refresh.interval.ms", "60000")
            .set("socket.timeout.ms", "10000");
        let producer: BaseProducer<ProbeContext> =
            producer_config.create_with_context(ProbeContext(shared.clone())).map_err(|e| build("producer", e))?;
        let mut consumer_config = base.clone();
        consumer_config
            .set("client.id", format!("{}-e2e", spec.client_id()))
            .set("group.id", group_id(spec.id.as_str()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "60000")
            // The monitor's socket timeout is its collection timeout; a
            // consumer long-polls, so it needs more.
            .set("socket.timeout.ms", "10000")
            .set("fetch.wait.max.ms", "500");
        let consumer: BaseConsumer<ProbeContext> =
            consumer_config.create_with_context(ProbeContext(shared.clone())).map_err(|e| build("consumer", e))?;
        let admin_config = base.clone();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kollector-e2e".into())
            .spawn(move || ProbeLoop::new(s, producer, consumer, admin_config).run())
            .map_err(|e| CollectError::new(ErrorKind::Client, format!("cannot start the e2e probe thread: {e}")))?;
        crate::client::LIVE_PROBES.fetch_add(1, Ordering::SeqCst);
        Ok(E2eProbe { shared, thread: Some(thread) })
    }

    /// Hands the probe the fence of the collection that just started: it
    /// produces only while the fence holds (and not before the first).
    pub fn set_fence(&self, fence: Option<crate::Fence>) {
        *self.shared.fence.lock().unwrap_or_else(|e| e.into_inner()) = FenceState::Given(fence);
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
}

/// A commit with no answer after this long is counted failed and forgotten.
const COMMIT_GIVE_UP: Duration = Duration::from_secs(30);

/// The probe thread's state. The pending commit's queue is declared (and
/// so dropped) before the consumer it belongs to.
struct ProbeLoop {
    pending_commit: Option<PendingCommit>,
    shared: Arc<Shared>,
    producer: BaseProducer<ProbeContext>,
    consumer: BaseConsumer<ProbeContext>,
    admin_config: ClientConfig,
    /// Partition → leader, as last read; empty until the topic is ready.
    leaders: BTreeMap<i32, Option<i32>>,
    next_topic_check: Instant,
    next_produce: Instant,
    next_commit: Instant,
    consumed_since_commit: bool,
}

impl ProbeLoop {
    fn new(
        shared: Arc<Shared>,
        producer: BaseProducer<ProbeContext>,
        consumer: BaseConsumer<ProbeContext>,
        admin_config: ClientConfig,
    ) -> ProbeLoop {
        let now = Instant::now();
        ProbeLoop {
            pending_commit: None,
            shared,
            producer,
            consumer,
            admin_config,
            leaders: BTreeMap::new(),
            next_topic_check: now,
            next_produce: now,
            next_commit: now + COMMIT_EVERY,
            consumed_since_commit: false,
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn run(mut self) {
        while !self.stopping() {
            let now = Instant::now();
            if now >= self.next_topic_check && self.shared.may_produce() {
                let ok = self.check_topic();
                self.next_topic_check = Instant::now() + if ok { TOPIC_CHECK_EVERY } else { TOPIC_RETRY_EVERY };
            }
            self.consume();
            self.producer.poll(Duration::ZERO);
            let now = Instant::now();
            if now >= self.next_produce {
                if !self.leaders.is_empty() && self.shared.may_produce() {
                    self.produce_round(now);
                }
                self.next_produce = now + self.shared.config.interval;
            }
            self.check_commit();
            if now >= self.next_commit {
                self.commit();
                self.next_commit = now + COMMIT_EVERY;
            }
            self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).expire(Instant::now());
        }
        // Purge what is queued so closing does not wait on it.
        self.producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer.poll(Duration::ZERO);
    }

    /// Reads what arrived, for at most one tick.
    fn consume(&mut self) {
        let until = Instant::now() + TICK;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Some(next) = self.consumer.poll(left) else { break };
            let now = Instant::now();
            let m = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(monitor = %self.shared.monitor, "e2e probe consume error: {e}");
                    continue;
                }
            };
            let Some(Ok(msg)) = m.payload().map(serde_json::from_slice::<ProbeMessage>) else { continue };
            if msg.monitor != self.shared.monitor || msg.run != self.shared.run {
                continue;
            }
            self.consumed_since_commit = true;
            self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).received(msg.partition, msg.seq, now);
            if left.is_zero() {
                break;
            }
        }
    }

    fn produce_round(&mut self, now: Instant) {
        let topic = self.shared.config.topic.clone();
        let partitions: Vec<i32> = self.leaders.keys().copied().collect();
        for partition in partitions {
            let seq = self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).produce(partition, now);
            let body =
                ProbeMessage { monitor: self.shared.monitor.clone(), run: self.shared.run.clone(), partition, seq };
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            let record = BaseRecord::with_opaque_to(&topic, Box::new((partition, seq)))
                .partition(partition)
                .key(self.shared.monitor.as_bytes())
                .payload(&payload);
            if let Err((e, _)) = self.producer.send(record) {
                tracing::debug!(monitor = %self.shared.monitor, partition, "e2e probe produce refused: {e}");
                self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner()).failed(partition, seq, Instant::now());
            }
        }
    }

    /// Commits what was consumed since the last commit, unless a commit
    /// is still out (one at a time, so latencies stay honest).
    fn commit(&mut self) {
        if !self.consumed_since_commit || self.pending_commit.is_some() {
            return;
        }
        self.consumed_since_commit = false;
        let queue = crate::admin::Queue::new(self.consumer.client());
        // SAFETY: both handles are live; NULL offsets commit the stored
        // offsets of the current assignment; the result goes to `queue`.
        let err = unsafe {
            rdkafka_sys::rd_kafka_commit_queue(
                self.consumer.client().native_ptr(),
                std::ptr::null(),
                queue.ptr(),
                None,
                std::ptr::null_mut(),
            )
        };
        if err == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            self.pending_commit = Some(PendingCommit { queue, started: Instant::now() });
        } else {
            self.shared.commits.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
            tracing::debug!(monitor = %self.shared.monitor, "e2e probe offset commit refused: {}", rdkafka::types::RDKafkaErrorCode::from(err));
        }
    }

    /// Reads the pending commit's answer, if it came.
    fn check_commit(&mut self) {
        let Some(p) = &self.pending_commit else { return };
        let outcome = match p.queue.try_next() {
            // SAFETY: a live event owned by the guard.
            Some(ev) => Some(unsafe { rdkafka_sys::rd_kafka_event_error(ev.ptr()) }),
            None if p.started.elapsed() > COMMIT_GIVE_UP => {
                Some(rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__TIMED_OUT)
            }
            None => None,
        };
        let Some(err) = outcome else { return };
        let took = p.started.elapsed();
        self.pending_commit = None;
        let mut c = self.shared.commits.lock().unwrap_or_else(|e| e.into_inner());
        match err {
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {
                c.ok += 1;
                c.latency.observe(took);
            }
            // Nothing new was stored to commit: neither a success nor a failure.
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__NO_OFFSET => {}
            other => {
                c.failed += 1;
                tracing::debug!(monitor = %self.shared.monitor, "e2e probe offset commit failed: {}", rdkafka::types::RDKafkaErrorCode::from(other));
            }
        }
    }

    /// Makes sure the topic exists and covers every broker, and that the
    /// consumer reads every partition. True when all is well.
    fn check_topic(&mut self) -> bool {
        let config = &self.shared.config;
        let read = topic::read(self.producer.client(), &config.topic, CALL_TIMEOUT);
        let outcome = match read {
            Err(e) => Err(e),
            Ok(view) => {
                let plan = topic::plan(&view, config.partitions_per_broker, config.replication_factor);
                let applied = topic::apply(&self.admin_config, &self.shared, &config.topic, &plan, CALL_TIMEOUT);
                match applied {
                    Err(e) => Err(e),
                    Ok(false) => Ok((view, plan)),
                    // Created or grown: read again for the leaders.
                    Ok(true) => topic::read(self.producer.client(), &config.topic, CALL_TIMEOUT)
                        .map(|v| (v.clone(), topic::plan(&v, config.partitions_per_broker, config.replication_factor))),
                }
            }
        };
        let mut state = self.shared.topic.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Err(why) => {
                tracing::warn!(monitor = %self.shared.monitor, topic = %config.topic, "e2e probe topic: {why}");
                state.problems = vec![why];
                false
            }
            Ok((view, plan)) => {
                state.brokers_without_partition = plan.uncovered.clone();
                state.problems = plan.problems(&config.topic);
                drop(state);
                let fine = plan.uncovered.is_empty();
                let leaders: BTreeMap<i32, Option<i32>> = view.partitions.iter().map(|p| (p.id, p.leader)).collect();
                {
                    let mut t = self.shared.tracker.lock().unwrap_or_else(|e| e.into_inner());
                    for (p, l) in &leaders {
                        t.set_leader(*p, *l);
                    }
                }
                if leaders.keys().ne(self.leaders.keys()) {
                    if let Err(why) = self.assign(&leaders) {
                        self.shared.topic.lock().unwrap_or_else(|e| e.into_inner()).problems.push(why);
                        return false;
                    }
                }
                self.leaders = leaders;
                fine
            }
        }
    }

    /// Reads every probe partition from its end as of now (so nothing
    /// produced from now on is missed, and nothing older is read).
    fn assign(&mut self, leaders: &BTreeMap<i32, Option<i32>>) -> Result<(), String> {
        let topic = &self.shared.config.topic;
        let mut list = TopicPartitionList::new();
        for p in leaders.keys() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(topic, *p, CALL_TIMEOUT)
                .map_err(|e| format!("reading the end of {topic}/{p}: {e}"))?;
            list.add_partition_offset(topic, *p, Offset::Offset(high)).map_err(|e| e.to_string())?;
        }
        self.consumer.assign(&list).map_err(|e| format!("assigning {topic}: {e}"))
    }
}
