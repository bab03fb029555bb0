//! Building, counting and closing a monitor's Kafka client.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kollector_core::{CollectError, ErrorKind, MonitorSpec};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaType;

use crate::oauth::TokenSource;
use crate::wire::group_cycle::GroupConnections;
use crate::wire::security::WireSecurity;

static LIVE_CLIENTS: AtomicI64 = AtomicI64::new(0);
/// End-to-end probes running (their producer and consumer open).
pub(crate) static LIVE_PROBES: AtomicI64 = AtomicI64::new(0);

/// End-to-end probes currently running in this process; exported as
/// `kollector_e2e_probes`, and compared by the tests with the monitors
/// that have one.
pub fn live_probes() -> i64 {
    LIVE_PROBES.load(Ordering::SeqCst)
}

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
    /// Where a spec's TLS files may come from (the node's `--kafka-tls-dir`).
    /// A spec arrives over the network, so the binary always sets this; None
    /// (no restriction) is for tests.
    pub tls_files: Option<kollector_security::FilePolicy>,
    /// Read consumer groups through librdkafka's admin calls (one request
    /// per group) instead of the batched direct requests: for comparison,
    /// and as a way out should a broker misread the direct requests.
    pub librdkafka_groups: bool,
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
    /// OAUTHBEARER: the monitor's token source, asked by librdkafka's
    /// refresh callback ([`oauthbearer_refresh`]) and by the direct path.
    pub(crate) tokens: Option<Arc<TokenSource>>,
    /// How long a token request may take (the monitor's timeout).
    token_timeout: Duration,
    /// librdkafka's last token request failed: it has no valid token, and
    /// asks again only after 10 s.
    token_failed: AtomicBool,
}

/// librdkafka's OAUTHBEARER refresh callback. librdkafka calls it when the
/// client starts and when its token is 80 % through its lifetime, on its
/// background thread (the SASL queue is forwarded there when the client is
/// built), so tokens are renewed between cycles too, while nothing polls
/// the client. It asks the monitor's token source and hands librdkafka the
/// token, or the reason there is none (which librdkafka reports on the
/// broker connections and asks again after 10 s; a collection that gets a
/// token meanwhile hands it over at once, see [`KafkaClient::share_token`]).
unsafe extern "C" fn oauthbearer_refresh(
    rk: *mut rdkafka_sys::rd_kafka_t,
    _config: *const std::ffi::c_char,
    opaque: *mut std::ffi::c_void,
) {
    // Never unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the opaque is the client's context (rdkafka sets it to the
        // context Arc's pointer), alive as long as the librdkafka handle,
        // whose destruction joins the background thread first.
        let context = unsafe { &*(opaque as *const MonitorContext) };
        let outcome = match &context.tokens {
            None => Err("no token source for this monitor".to_string()),
            Some(tokens) => tokens.token(context.token_timeout).map_err(|e| e.to_string()),
        };
        let handed = outcome.and_then(|token| {
            // SAFETY: rk is the live handle librdkafka passed to its callback.
            unsafe { set_token(rk, &token) }
        });
        match handed {
            Ok(()) => context.token_failed.store(false, Ordering::SeqCst),
            Err(why) => {
                tracing::warn!(monitor = %context.monitor, "OAUTHBEARER token: {why}");
                context.token_failed.store(true, Ordering::SeqCst);
                let why = std::ffi::CString::new(why.replace('\0', " ")).unwrap_or_default();
                // SAFETY: rk is live; why outlives the call.
                unsafe { rdkafka_sys::rd_kafka_oauthbearer_set_token_failure(rk, why.as_ptr()) };
            }
        }
    }));
}

/// Hands `token` to librdkafka (any thread may).
///
/// # Safety
/// `rk` must be a live librdkafka handle.
unsafe fn set_token(rk: *mut rdkafka_sys::rd_kafka_t, token: &crate::oauth::Token) -> Result<(), String> {
    use std::ffi::CString;
    let nul = |_| "the token, principal or an extension holds a NUL character".to_string();
    let value = CString::new(token.value.expose()).map_err(nul)?;
    let principal = CString::new(token.principal.as_str()).map_err(nul)?;
    let mut ext = Vec::new();
    for (k, v) in &token.extensions {
        ext.push(CString::new(k.as_str()).map_err(nul)?);
        ext.push(CString::new(v.as_str()).map_err(nul)?);
    }
    let ext_ptrs: Vec<*const std::ffi::c_char> = ext.iter().map(|c| c.as_ptr()).collect();
    let mut err = [0 as std::ffi::c_char; 512];
    // SAFETY: every pointer is valid for the call; librdkafka copies what it keeps.
    let code = unsafe {
        rdkafka_sys::rd_kafka_oauthbearer_set_token(
            rk,
            value.as_ptr(),
            token.expires_at_ms.min(i64::MAX as u64) as i64,
            principal.as_ptr(),
            if ext_ptrs.is_empty() { std::ptr::null_mut() } else { ext_ptrs.as_ptr() as *mut *const std::ffi::c_char },
            ext_ptrs.len(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if code == rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        // SAFETY: librdkafka wrote a NUL-terminated message into err.
        let why = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        Err(format!("librdkafka refused the token: {why}"))
    }
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
    /// The monitor's end-to-end probe, when its spec asks for one: first,
    /// so it stops (and closes its producer and consumer) before the rest.
    pub(crate) e2e: Option<crate::e2e::E2eProbe>,
    /// The librdkafka handle (Metadata, ListOffsets, DescribeCluster).
    /// rdkafka's `Client`, not its `AdminClient`: every admin call here
    /// waits on a private result queue (`admin/`), so the AdminClient's own
    /// polling thread, which wakes every 100 ms for the life of the client,
    /// would be a thread and ten wake-ups a second per monitor for nothing
    /// (measured in BENCHMARKS.md, "Cost per monitor").
    pub(crate) native: Client<MonitorContext>,
    context: Arc<MonitorContext>,
    /// DescribeCluster is optional (racks); a cluster that lacks it is not asked again.
    pub(crate) describe_cluster_unsupported: AtomicBool,
    /// Racks from the last DescribeCluster and the cycles since it: racks
    /// change only when brokers restart, so it is asked every
    /// `DESCRIBE_CLUSTER_EVERY` cycles, not every cycle (it costs a request).
    pub(crate) racks: Mutex<(std::collections::HashMap<i32, String>, u32)>,
    /// Consumer-group APIs likewise (e.g. librdkafka's mock cluster lacks ListGroups).
    pub(crate) groups_unsupported: AtomicBool,
    /// The monitor's own direct connections for the group requests (see
    /// `wire/`), or why its settings need librdkafka's per-group calls.
    /// Dropped, and so closed, with the client.
    pub(crate) direct: Result<Box<Mutex<GroupConnections>>, String>,
    /// The cluster id the monitor pinned ([`KafkaClient::pin_cluster`]).
    pinned: Mutex<Option<String>>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("monitor", &self.context.monitor).finish_non_exhaustive()
    }
}

/// A client-building error without the value librdkafka refused: its
/// Display quotes the value, which may be a password.
pub(crate) fn config_error(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, _value) => {
            format!("{description} (setting {key})")
        }
        other => other.to_string(),
    }
}

impl KafkaClient {
    /// Builds the client for `spec`. Does not block on the network: brokers
    /// (and a token endpoint or AWS credentials source) are contacted by the
    /// first collection. An end-to-end probe starts its own thread.
    pub fn connect(spec: &MonitorSpec, options: &ClientOptions) -> Result<KafkaClient, CollectError> {
        // librdkafka gets the files' resolved paths, not the names the spec
        // gave: a link swapped in after the check cannot redirect it.
        let resolved;
        let spec = match &options.tls_files {
            Some(policy) => {
                resolved = policy.resolve_spec(spec).map_err(|m| CollectError::new(ErrorKind::Client, m))?;
                &resolved
            }
            None => spec,
        };
        let config = client_config(spec, options);
        let tokens = match &spec.connection.sasl {
            Some(sasl) => TokenSource::for_sasl(sasl)
                .map_err(|e| CollectError::new(ErrorKind::Client, e.to_string()))?
                .map(Arc::new),
            None => None,
        };
        let context = MonitorContext {
            monitor: spec.id.to_string(),
            requests: Mutex::new(RequestCounts::new()),
            stats_seen: AtomicBool::new(false),
            tokens: tokens.clone(),
            token_timeout: spec.timeout,
            token_failed: AtomicBool::new(false),
        };
        let build_error = |e: KafkaError| {
            CollectError::new(ErrorKind::Client, format!("cannot build Kafka client: {}", config_error(&e)))
        };
        let native_config = config.create_native_config().map_err(build_error)?;
        if tokens.is_some() {
            // SAFETY: native_config is a live configuration this function owns until Client::new.
            unsafe {
                rdkafka_sys::rd_kafka_conf_set_oauthbearer_token_refresh_cb(
                    native_config.ptr(),
                    Some(oauthbearer_refresh),
                );
                rdkafka_sys::rd_kafka_conf_enable_sasl_queue(native_config.ptr(), 1);
            }
        }
        // A producer-type handle, as rdkafka's AdminClient makes (the lighter
        // of librdkafka's two kinds); it never produces.
        let native =
            Client::new(&config, native_config, RDKafkaType::RD_KAFKA_PRODUCER, context).map_err(build_error)?;
        if tokens.is_some() {
            // The refresh callback runs on librdkafka's background thread
            // (one more thread for an OAUTHBEARER monitor), not on a queue
            // somebody must poll.
            // SAFETY: the handle is live; a returned error object is ours to destroy.
            let error = unsafe { rdkafka_sys::rd_kafka_sasl_background_callbacks_enable(native.native_ptr()) };
            if !error.is_null() {
                // SAFETY: error is a valid rd_kafka_error_t, destroyed once.
                let why = unsafe { crate::admin::owned(rdkafka_sys::rd_kafka_error_string(error)) };
                unsafe { rdkafka_sys::rd_kafka_error_destroy(error) };
                return Err(CollectError::new(ErrorKind::Client, format!("OAUTHBEARER background refresh: {why}")));
            }
        }
        let context = native.context().clone();
        let direct = if options.librdkafka_groups {
            Err("the node runs with --librdkafka-groups".to_string())
        } else {
            WireSecurity::from_connection(&spec.connection).map(|s| {
                // One client id per monitor on both paths (librdkafka's is set above).
                let s = s.with_client_id(spec.client_id()).with_tokens(tokens.clone());
                let mut conns = GroupConnections::new(s);
                if let Some(id) = &spec.expected_cluster_id {
                    conns.pin_cluster(id);
                }
                Box::new(Mutex::new(conns))
            })
        };
        if let Err(why) = &direct {
            // Once per client: at start and at each reconfiguration, not every cycle.
            tracing::info!(monitor = %spec.id, "consumer groups read through librdkafka, one request per group: {why}");
        }
        let e2e = match &spec.e2e_probe {
            Some(probe) => Some(crate::e2e::E2eProbe::start(spec, probe, &config, tokens.clone())?),
            None => None,
        };
        LIVE_CLIENTS.fetch_add(1, Ordering::SeqCst);
        Ok(KafkaClient {
            e2e,
            native,
            context,
            describe_cluster_unsupported: AtomicBool::new(false),
            racks: Mutex::new((Default::default(), 0)),
            groups_unsupported: AtomicBool::new(false),
            direct,
            pinned: Mutex::new(None),
        })
    }

    /// Pins the cluster this client's direct connections must reach (the
    /// id its monitor pinned): a connection that reaches another cluster is
    /// refused and its broker named (`wrong_cluster`). The client pins the
    /// first id it reads by itself; a monitor that already knows its id
    /// (from a client before this one) pins it from the start. librdkafka's
    /// own connections cannot be checked one by one; the monitor checks
    /// each snapshot's id as a whole.
    pub fn pin_cluster(&self, cluster_id: &str) {
        if let Ok(mut p) = self.pinned.lock() {
            *p = Some(cluster_id.to_string());
        }
        if let Ok(conns) = &self.direct {
            if let Ok(mut c) = conns.lock() {
                c.pin_cluster(cluster_id);
            }
        }
    }

    /// The monitor's OAUTHBEARER token source, if it uses one.
    pub fn oauth_tokens(&self) -> Option<&Arc<TokenSource>> {
        self.context.tokens.as_ref()
    }

    /// Gives librdkafka `token` when its own last request failed, so it
    /// need not wait out its 10 s retry (a collection just got one).
    pub(crate) fn share_token(&self, token: &crate::oauth::Token) {
        if self.context.token_failed.load(Ordering::SeqCst) {
            // SAFETY: the handle is live for as long as self.
            match unsafe { set_token(self.native.native_ptr(), token) } {
                Ok(()) => self.context.token_failed.store(false, Ordering::SeqCst),
                Err(why) => tracing::warn!(monitor = %self.context.monitor, "OAUTHBEARER token: {why}"),
            }
        }
    }

    /// The cluster id pinned by the monitor, if any.
    pub(crate) fn pinned_cluster(&self) -> Option<String> {
        self.pinned.lock().ok().and_then(|p| p.clone())
    }

    /// Direct group connections open now (0 on the librdkafka path).
    pub fn direct_connections(&self) -> usize {
        match &self.direct {
            Ok(c) => c.lock().map(|c| c.open()).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Requests sent so far per API, as of the latest statistics emission;
    /// None until statistics have been emitted once (see [`ClientOptions`]).
    pub fn request_counts(&self) -> Option<RequestCounts> {
        if !self.context.stats_seen.load(Ordering::SeqCst) {
            return None;
        }
        self.context.requests.lock().ok().map(|r| r.clone())
    }

    /// Waits until a fresh statistics emission has been handled (benchmarks).
    pub fn wait_for_statistics(&self, timeout: Duration) -> bool {
        self.context.stats_seen.store(false, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            self.serve_main_queue();
            if self.context.stats_seen.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Handles what librdkafka put on the client's main queue: log lines,
    /// statistics and error events. Nothing else polls that queue (rdkafka's
    /// handlers for it are crate-private), so without this the
    /// events would pile up in memory for the life of the monitor. Called on
    /// every collection, from the blocking thread; bounded per call.
    pub(crate) fn serve_main_queue(&self) {
        const MAX_EVENTS_PER_CALL: usize = 10_000;
        let Some(queue) = crate::admin::Queue::main(&self.native) else { return };
        for _ in 0..MAX_EVENTS_PER_CALL {
            let Some(event) = queue.try_next() else { break };
            let ev = event.ptr();
            // SAFETY: `ev` is a live event owned by `event`; strings are copied before it drops.
            unsafe {
                match rdkafka_sys::rd_kafka_event_type(ev) {
                    rdkafka_sys::RD_KAFKA_EVENT_LOG => {
                        let (mut fac, mut text, mut level) = (std::ptr::null(), std::ptr::null(), 0);
                        if rdkafka_sys::rd_kafka_event_log(ev, &mut fac, &mut text, &mut level) == 0 {
                            let fac = crate::admin::owned(fac);
                            let text = crate::admin::owned(text);
                            self.context.log(log_level(level), &fac, &text);
                        }
                    }
                    rdkafka_sys::RD_KAFKA_EVENT_STATS => {
                        let json = crate::admin::owned(rdkafka_sys::rd_kafka_event_stats(ev));
                        match serde_json::from_str::<Statistics>(&json) {
                            Ok(stats) => self.context.stats(stats),
                            Err(e) => tracing::debug!(monitor = %self.context.monitor, "unparsable statistics: {e}"),
                        }
                    }
                    rdkafka_sys::RD_KAFKA_EVENT_ERROR => {
                        let text = crate::admin::owned(rdkafka_sys::rd_kafka_event_error_string(ev));
                        tracing::debug!(monitor = %self.context.monitor, "librdkafka error event: {text}");
                    }
                    _ => {}
                }
            }
        }
    }
}

impl Drop for KafkaClient {
    fn drop(&mut self) {
        // The librdkafka handle drops after this (rd_kafka_destroy), joining its
        // threads and closing its sockets; this call blocks for that long, so
        // owners drop clients off their async threads.
        LIVE_CLIENTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// librdkafka's syslog-style level as rdkafka's enum.
fn log_level(level: i32) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

fn client_config(spec: &MonitorSpec, options: &ClientOptions) -> ClientConfig {
    let conn = &spec.connection;
    // librdkafka's minimum for the connect timeout is 1 s; shorter collection
    // timeouts are still enforced by the collection's own deadline.
    let timeout_ms = spec.timeout.as_millis().clamp(1000, i32::MAX as u128).to_string();
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", conn.bootstrap.join(","))
        .set("client.id", spec.client_id())
        .set("security.protocol", conn.security_protocol())
        // Fail a connect attempt within one collection rather than librdkafka's 30 s default.
        .set("socket.connection.setup.timeout.ms", &timeout_ms)
        .set("socket.timeout.ms", spec.timeout.as_millis().clamp(1000, i32::MAX as u128).to_string())
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        // Every cycle asks for the whole cluster's metadata itself, so
        // librdkafka's own refresh (a Metadata request every 5 minutes per
        // client) would only duplicate it.
        .set("topic.metadata.refresh.interval.ms", "-1")
        // KIP-714 client telemetry: a client asks brokers for a metrics
        // subscription and pushes its own metrics to them. Requests that are
        // no part of a collection, and a timer per client; a monitor has no
        // use for them.
        .set("enable.metrics.push", "false")
        .set("log_level", "6");
    if let Some(every) = options.statistics_interval {
        c.set("statistics.interval.ms", every.as_millis().max(10).to_string());
    }
    if let Some(sasl) = &conn.sasl {
        c.set("sasl.mechanism", sasl.mechanism.wire_name());
        // OAUTHBEARER's (and MSK IAM's) tokens come from the refresh
        // callback; a client secret never reaches librdkafka.
        if !sasl.mechanism.uses_tokens() {
            c.set("sasl.username", &sasl.username).set("sasl.password", sasl.password.expose());
        }
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
