//! Building, counting and closing a monitor's Kafka client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kollector_core::{CollectError, ErrorKind, MonitorSpec};
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

static LIVE_CLIENTS: AtomicI64 = AtomicI64::new(0);

/// Kafka clients currently open in this process (built and not yet dropped).
/// Exported as `kollector_kafka_clients`; the tests compare it with the number
/// of monitors to prove that no client outlives its owner.
pub fn live_clients() -> i64 {
    LIVE_CLIENTS.load(Ordering::SeqCst)
}

/// Knobs that are not part of a monitor's spec.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Emit librdkafka statistics at this interval, so [`KafkaClient::request_counts`]
    /// reports requests sent per API. Off by default (it costs a JSON parse per interval).
    pub statistics_interval: Option<Duration>,
}

/// Requests sent by one client, per Kafka API, summed over brokers
/// (from librdkafka statistics).
pub type RequestCounts = BTreeMap<String, i64>;

/// The client context: routes librdkafka's logs to `tracing` under the
/// monitor's id, and keeps the latest request counts from statistics.
pub(crate) struct MonitorContext {
    monitor: String,
    requests: Mutex<RequestCounts>,
    stats_seen: AtomicBool,
}

impl ClientContext for MonitorContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // librdkafka logs every failed connect at error level; the monitor's
        // status already reports failures, so these stay at warn and below.
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!(monitor = %self.monitor, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(monitor = %self.monitor, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(monitor = %self.monitor, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(monitor = %self.monitor, "librdkafka error {error}: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let mut totals = RequestCounts::new();
        for broker in statistics.brokers.values() {
            for (api, n) in &broker.req {
                if *n > 0 {
                    *totals.entry(api.clone()).or_default() += n;
                }
            }
        }
        if let Ok(mut r) = self.requests.lock() {
            *r = totals;
        }
        self.stats_seen.store(true, Ordering::SeqCst);
    }
}

/// One monitor's connection to one Kafka cluster. Not `Clone`: a monitor owns
/// its client, lends it to one collection at a time, and drops it to close it.
pub struct KafkaClient {
    pub(crate) admin: AdminClient<MonitorContext>,
    context: Arc<MonitorContext>,
    /// DescribeCluster is optional (racks); a cluster that lacks it is not asked again.
    pub(crate) describe_cluster_unsupported: AtomicBool,
    /// Consumer-group APIs likewise (e.g. librdkafka's mock cluster lacks ListGroups).
    pub(crate) groups_unsupported: AtomicBool,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("monitor", &self.context.monitor).finish_non_exhaustive()
    }
}

impl KafkaClient {
    /// Builds the client for `spec`. Does not block on the network: brokers
    /// are contacted by the first collection.
    pub fn connect(spec: &MonitorSpec, options: &ClientOptions) -> Result<KafkaClient, CollectError> {
        let config = client_config(spec, options);
        let context = MonitorContext {
            monitor: spec.id.to_string(),
            requests: Mutex::new(RequestCounts::new()),
            stats_seen: AtomicBool::new(false),
        };
        let admin: AdminClient<MonitorContext> = config
            .create_with_context(context)
            .map_err(|e| CollectError::new(ErrorKind::Client, format!("cannot build Kafka client: {e}")))?;
        let context = admin.inner().context().clone();
        LIVE_CLIENTS.fetch_add(1, Ordering::SeqCst);
        Ok(KafkaClient {
            admin,
            context,
            describe_cluster_unsupported: AtomicBool::new(false),
            groups_unsupported: AtomicBool::new(false),
        })
    }

    /// Requests sent so far per API, as of the latest statistics emission;
    /// None until statistics have been emitted once (see [`ClientOptions`]).
    pub fn request_counts(&self) -> Option<RequestCounts> {
        if !self.context.stats_seen.load(Ordering::SeqCst) {
            return None;
        }
        self.context.requests.lock().ok().map(|r| r.clone())
    }

    /// Polls the client so pending statistics callbacks run (the admin client
    /// serves its main queue from a background thread already; this only waits).
    pub fn wait_for_statistics(&self, timeout: Duration) -> bool {
        self.context.stats_seen.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.context.stats_seen.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for KafkaClient {
    fn drop(&mut self) {
        // The AdminClient field drops after this, joining librdkafka's
        // threads and closing its sockets; this call blocks for that long, so
        // owners drop clients off their async threads.
        LIVE_CLIENTS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn client_config(spec: &MonitorSpec, options: &ClientOptions) -> ClientConfig {
    let conn = &spec.connection;
    // librdkafka's minimum for the connect timeout is 1 s; shorter collection
    // timeouts are still enforced by the collection's own deadline.
    let timeout_ms = spec.timeout.as_millis().clamp(1000, i32::MAX as u128).to_string();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", conn.bootstrap.join(","))
        .set("client.id", format!("kollector-{}", spec.id))
        .set("security.protocol", conn.security_protocol())
        // Fail a connect attempt within one collection rather than librdkafka's 30 s default.
        .set("socket.connection.setup.timeout.ms", &timeout_ms)
        .set("socket.timeout.ms", spec.timeout.as_millis().clamp(1000, i32::MAX as u128).to_string())
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .set("log_level", "6");
    if let Some(every) = options.statistics_interval {
        c.set("statistics.interval.ms", every.as_millis().max(10).to_string());
    }
    if let Some(sasl) = &conn.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    if let Some(tls) = &conn.tls {
        if let Some(ca) = &tls.ca_file {
            c.set("ssl.ca.location", ca);
        }
        if let Some(cert) = &tls.cert_file {
            c.set("ssl.certificate.location", cert);
        }
        if let Some(key) = &tls.key_file {
            c.set("ssl.key.location", key);
        }
        if let Some(pw) = &tls.key_password {
            c.set("ssl.key.password", pw.expose());
        }
        if tls.insecure_skip_verify {
            c.set("enable.ssl.certificate.verification", "false");
        }
    }
    c
}
