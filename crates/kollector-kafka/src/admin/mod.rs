//! Safe wrappers over librdkafka admin calls that the `rdkafka` crate (0.39)
//! does not wrap: DescribeCluster, ListOffsets, ListConsumerGroups,
//! DescribeConsumerGroups and ListConsumerGroupOffsets.
//!
//! They are what makes a collection cheap: each is one librdkafka call that
//! batches its requests per broker (ListOffsets per partition leader,
//! DescribeGroups per coordinator), instead of the per-partition and
//! per-group-partition requests of rdkafka's higher-level helpers.
//!
//! Every call follows librdkafka's event API: make a private result queue,
//! issue the call with admin options carrying the request timeout, poll the
//! queue until the typed result event arrives or the deadline passes, copy
//! what we need into owned Rust values, and destroy every C object on every
//! path (RAII guards below). Nothing here panics on what the network returns:
//! null pointers and non-UTF-8 strings are handled.

mod cluster;
mod groups;
mod offsets;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka_sys::bindings as ffi;
use rdkafka_sys::types::RDKafkaRespErr;

use crate::deadline::Deadline;

pub use cluster::{describe_cluster, BrokerNode, ClusterDescription};
pub use groups::{
    describe_consumer_groups, list_consumer_group_offsets, list_consumer_group_offsets_within, list_consumer_groups,
    CommittedOffset, GroupDescription, GroupListing, GroupMember, GroupState, ListGroupsResult, PerGroup,
};
pub use offsets::{list_offsets, list_offsets_each, OffsetSpec, OffsetsJob, PartitionOffset};

/// An error Kafka reported for one item (partition or group) of a batched call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionError {
    pub code: RDKafkaErrorCode,
    pub message: String,
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({})", self.message, self.code)
        }
    }
}

/// Why a whole admin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{op}: {message} ({code})")]
    Kafka { op: &'static str, code: RDKafkaErrorCode, message: String },
    #[error("{0}: no result before the deadline")]
    Timeout(&'static str),
    #[error("{0}: abandoned at the collector's fence (its lease may be lost)")]
    Fenced(&'static str),
    #[error("{op} is not supported by the cluster: {message}")]
    Unsupported { op: &'static str, message: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl AdminError {
    /// The cluster lacks this API (e.g. librdkafka's mock cluster has no ListGroups).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, AdminError::Unsupported { .. })
    }
}

/// Copies a C string into an owned String; null becomes empty.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string valid for the call.
pub(crate) unsafe fn owned(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Like [`owned`], but null (and empty) become None.
///
/// # Safety
/// As for [`owned`].
pub(crate) unsafe fn owned_opt(p: *const c_char) -> Option<String> {
    let s = owned(p);
    (!s.is_empty()).then_some(s)
}

pub(crate) fn c_string(what: &str, s: &str) -> Result<CString, AdminError> {
    CString::new(s).map_err(|_| AdminError::InvalidInput(format!("{what} {s:?} contains a NUL byte")))
}

/// Builds a `PartitionError` from an `rd_kafka_error_t`, if there is one.
///
/// # Safety
/// `err` must be null or a valid error object for the duration of the call.
pub(crate) unsafe fn error_object(err: *const ffi::rd_kafka_error_t) -> Option<PartitionError> {
    if err.is_null() {
        return None;
    }
    let code = ffi::rd_kafka_error_code(err);
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    Some(PartitionError { code: code.into(), message: owned(ffi::rd_kafka_error_string(err)) })
}

pub(crate) fn resp_error(code: RDKafkaRespErr) -> Option<PartitionError> {
    (code != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .then(|| PartitionError { code: code.into(), message: String::new() })
}

/// A private result queue; destroyed on drop.
pub(crate) struct Queue(*mut ffi::rd_kafka_queue_t);

impl Queue {
    pub(crate) fn new<C: ClientContext>(client: &Client<C>) -> Queue {
        // SAFETY: native_ptr is the live handle owned by `client`, which outlives the queue.
        Queue(unsafe { ffi::rd_kafka_queue_new(client.native_ptr()) })
    }
    /// A handle to the client's main queue (logs, statistics, errors).
    pub(crate) fn main<C: ClientContext>(client: &Client<C>) -> Option<Queue> {
        // SAFETY: live client handle; the returned reference is released by Drop.
        let q = unsafe { ffi::rd_kafka_queue_get_main(client.native_ptr()) };
        (!q.is_null()).then_some(Queue(q))
    }
    /// The next event, without waiting.
    pub(crate) fn try_next(&self) -> Option<Event> {
        // SAFETY: the queue is live; a non-null event is owned by the guard.
        let ev = unsafe { ffi::rd_kafka_queue_poll(self.0, 0) };
        (!ev.is_null()).then_some(Event(ev))
    }
    pub(crate) fn ptr(&self) -> *mut ffi::rd_kafka_queue_t {
        self.0
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new and destroyed exactly once.
        unsafe { ffi::rd_kafka_queue_destroy(self.0) }
    }
}

/// Admin options for one call, carrying the request timeout; destroyed on drop.
/// librdkafka copies options when a call is issued, so they can go right after.
pub(crate) struct Options(*mut ffi::rd_kafka_AdminOptions_t);

impl Options {
    pub(crate) fn new<C: ClientContext>(
        client: &Client<C>,
        op: ffi::rd_kafka_admin_op_t,
        timeout: Duration,
    ) -> Options {
        // SAFETY: live client handle; the options object is owned by the guard.
        let ptr = unsafe { ffi::rd_kafka_AdminOptions_new(client.native_ptr(), op) };
        let ms = timeout.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        let mut errstr = [0 as c_char; 256];
        // SAFETY: ptr is valid; errstr is a writable buffer of the given size.
        // Setting a positive request timeout cannot fail for these ops.
        unsafe {
            ffi::rd_kafka_AdminOptions_set_request_timeout(ptr, ms, errstr.as_mut_ptr(), errstr.len());
        }
        Options(ptr)
    }
    pub(crate) fn set_opaque(&self, value: usize) {
        // SAFETY: the opaque is an integer tag, never dereferenced.
        unsafe { ffi::rd_kafka_AdminOptions_set_opaque(self.0, value as *mut c_void) }
    }
    pub(crate) fn ptr(&self) -> *const ffi::rd_kafka_AdminOptions_t {
        self.0
    }
}

impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AdminOptions_new and destroyed exactly once.
        unsafe { ffi::rd_kafka_AdminOptions_destroy(self.0) }
    }
}

/// A result event; destroyed on drop (which frees everything read from it).
pub(crate) struct Event(*mut ffi::rd_kafka_event_t);

impl Event {
    pub(crate) fn ptr(&self) -> *mut ffi::rd_kafka_event_t {
        self.0
    }
    pub(crate) fn opaque(&self) -> usize {
        // SAFETY: valid event; the opaque is the integer tag we set.
        unsafe { ffi::rd_kafka_event_opaque(self.0) as usize }
    }
    /// The event's top-level error, mapped for `op`.
    pub(crate) fn check(&self, op: &'static str) -> Result<(), AdminError> {
        // SAFETY: valid event; the error string lives as long as the event and is copied.
        let (code, message) =
            unsafe { (ffi::rd_kafka_event_error(self.0), owned(ffi::rd_kafka_event_error_string(self.0))) };
        match code {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE
            | RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION => Err(AdminError::Unsupported { op, message }),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TIMED_OUT => Err(AdminError::Timeout(op)),
            other => Err(AdminError::Kafka { op, code: other.into(), message }),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned by rd_kafka_queue_poll and destroyed exactly once.
        unsafe { ffi::rd_kafka_event_destroy(self.0) }
    }
}

/// Extra time past the request timeout to wait for librdkafka's own
/// timed-out result event, so a timeout is reported by Kafka's client rather
/// than by our polling loop.
const RESULT_GRACE: Duration = Duration::from_millis(500);

/// Polls `queue` for the next event of type `expected` until the deadline
/// (+ grace), in slices of at most 100 ms so that a passed fence ends the
/// wait promptly (the caller then closes the client, abandoning the request).
pub(crate) fn next_event(
    queue: &Queue,
    expected: ffi::rd_kafka_event_type_t,
    op: &'static str,
    deadline: &Deadline,
) -> Result<Event, AdminError> {
    let hard_deadline = deadline.at() + RESULT_GRACE;
    loop {
        let now = Instant::now();
        if deadline.fenced() {
            return Err(AdminError::Fenced(op));
        }
        if now >= hard_deadline {
            return Err(AdminError::Timeout(op));
        }
        let wait_ms = (hard_deadline - now).as_millis().clamp(1, 100) as c_int;
        // SAFETY: the queue is live; a non-null event is owned by the guard.
        let ev = unsafe { ffi::rd_kafka_queue_poll(queue.ptr(), wait_ms) };
        if ev.is_null() {
            continue;
        }
        let event = Event(ev);
        // SAFETY: valid event.
        if unsafe { ffi::rd_kafka_event_type(event.ptr()) } == expected {
            return Ok(event);
        }
        // Anything else (there should be nothing else on a private queue) is dropped.
    }
}

/// Issues one admin call and waits for its result: a private queue, options
/// with the request timeout, `issue(rk, options, queue)`, then the result
/// event of type `expected` with its top-level error checked.
pub(crate) fn call<C: ClientContext>(
    client: &Client<C>,
    op: &'static str,
    admin_op: ffi::rd_kafka_admin_op_t,
    expected: ffi::rd_kafka_event_type_t,
    deadline: Deadline,
    issue: impl FnOnce(*mut ffi::rd_kafka_t, *const ffi::rd_kafka_AdminOptions_t, *mut ffi::rd_kafka_queue_t),
) -> Result<Event, AdminError> {
    if deadline.fenced() {
        return Err(AdminError::Fenced(op));
    }
    let timeout = deadline.at().saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let queue = Queue::new(client);
    let options = Options::new(client, admin_op, timeout);
    issue(client.native_ptr(), options.ptr(), queue.ptr());
    let event = next_event(&queue, expected, op, &deadline)?;
    event.check(op)?;
    Ok(event)
}

/// Reads `cnt` pointers from a C array returned by librdkafka.
///
/// # Safety
/// `array` must be null (then `cnt` is ignored) or point to `cnt` valid pointers.
pub(crate) unsafe fn c_array<'a, T>(array: *mut *const T, cnt: usize) -> &'a [*const T] {
    if array.is_null() || cnt == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(array, cnt)
    }
}

#[cfg(test)]
mod hostile {
    use std::ffi::CString;

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(kollector_core::testing::proptest_config())]
        /// What librdkafka hands back (names, messages: any bytes, not
        /// necessarily UTF-8) becomes a String without a panic; strings we
        /// hand to it with a NUL are refused, not truncated.
        #[test]
        fn c_strings_from_and_to_librdkafka_never_panic(bytes in vec(1u8..=255, 0..300)) {
            let c = CString::new(bytes.clone()).unwrap();
            // SAFETY: a valid NUL-terminated string for the call.
            let s = unsafe { owned(c.as_ptr()) };
            prop_assert_eq!(s, String::from_utf8_lossy(&bytes).into_owned());
            // SAFETY: null is allowed.
            prop_assert_eq!(unsafe { owned_opt(std::ptr::null()) }, None);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let with_nul = format!("{text}\0x");
            prop_assert!(c_string("group", &with_nul).is_err());
            prop_assert!(c_string("group", &text).is_ok());
        }
    }
}
