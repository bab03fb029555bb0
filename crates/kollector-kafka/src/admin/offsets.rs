//! ListOffsets: earliest or latest offsets of many partitions in one call,
//! which librdkafka splits into one request per partition leader.

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys::bindings as ffi;

use std::time::{Duration, Instant};

use super::{c_array, c_string, next_event, owned, resp_error, AdminError, Options, PartitionError, Queue};
use crate::deadline::Deadline;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
}

impl OffsetSpec {
    /// The step's name in errors: "ListOffsets(earliest)" or "ListOffsets(latest)".
    pub fn step(self) -> &'static str {
        match self {
            OffsetSpec::Earliest => "ListOffsets(earliest)",
            OffsetSpec::Latest => "ListOffsets(latest)",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub result: Result<i64, PartitionError>,
}

/// A topic-partition list owned by the guard.
struct PartitionList(*mut ffi::rd_kafka_topic_partition_list_t);

impl Drop for PartitionList {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_partition_list_new; destroyed once.
        unsafe { ffi::rd_kafka_topic_partition_list_destroy(self.0) }
    }
}

/// Offsets of `partitions` (no duplicates) per `spec`, in one call.
pub fn list_offsets<C: ClientContext>(
    client: &Client<C>,
    partitions: &[(String, i32)],
    spec: OffsetSpec,
    deadline: impl Into<Deadline>,
) -> Result<Vec<PartitionOffset>, AdminError> {
    let deadline: Deadline = deadline.into();
    let budget = deadline.at().saturating_duration_since(Instant::now());
    let job = OffsetsJob { partitions: partitions.to_vec(), spec };
    list_offsets_each(client, std::slice::from_ref(&job), budget, &deadline)?.pop().unwrap_or(Ok(Vec::new()))
}

/// One ListOffsets call among several issued together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetsJob {
    /// No duplicates; usually the partitions one broker leads.
    pub partitions: Vec<(String, i32)>,
    pub spec: OffsetSpec,
}

/// Issues every job at once, each with its own request timeout (`budget`,
/// never past the deadline), on one private queue, and waits for them all.
/// A job that fails or runs out of time fails alone, so one stuck leader
/// costs its own budget, not the others' answers. The outer error is only
/// for a passed fence (and input librdkafka cannot take).
pub fn list_offsets_each<C: ClientContext>(
    client: &Client<C>,
    jobs: &[OffsetsJob],
    budget: Duration,
    deadline: &Deadline,
) -> Result<Vec<Result<Vec<PartitionOffset>, AdminError>>, AdminError> {
    const OP: &str = "ListOffsets";
    let mut results: Vec<Option<Result<Vec<PartitionOffset>, AdminError>>> = vec![None; jobs.len()];
    if deadline.fenced() {
        return Err(AdminError::Fenced(OP));
    }
    let wait = deadline.capped(budget);
    let timeout = wait.at().saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let queue = Queue::new(client);
    let mut pending = 0usize;
    for (i, job) in jobs.iter().enumerate() {
        if job.partitions.is_empty() {
            results[i] = Some(Ok(Vec::new()));
            continue;
        }
        let list = partition_list(&job.partitions, job.spec)?;
        let options = Options::new(client, ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTOFFSETS, timeout);
        options.set_opaque(i);
        // SAFETY: live client, list, options and queue; librdkafka copies the list and options.
        unsafe { ffi::rd_kafka_ListOffsets(client.native_ptr(), list.0, options.ptr(), queue.ptr()) };
        pending += 1;
    }
    while pending > 0 {
        let event = match next_event(&queue, ffi::RD_KAFKA_EVENT_LISTOFFSETS_RESULT, OP, &wait) {
            Ok(event) => event,
            Err(AdminError::Fenced(op)) => return Err(AdminError::Fenced(op)),
            // librdkafka's own timeouts did not come back either: every
            // job still open failed alone, by its budget.
            Err(_) => break,
        };
        let i = event.opaque();
        let Some(slot) = results.get_mut(i).filter(|r| r.is_none()) else { continue };
        pending -= 1;
        *slot = Some(event.check(OP).map(|()| read_offsets(&event)));
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(AdminError::Timeout(OP)))).collect())
}

/// A librdkafka partition list of `partitions`, each asking for `spec`.
fn partition_list(partitions: &[(String, i32)], spec: OffsetSpec) -> Result<PartitionList, AdminError> {
    let names: Vec<std::ffi::CString> =
        partitions.iter().map(|(t, _)| c_string("topic", t)).collect::<Result<_, _>>()?;
    let offset_spec = match spec {
        OffsetSpec::Earliest => ffi::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_EARLIEST as i64,
        OffsetSpec::Latest => ffi::rd_kafka_OffsetSpec_t::RD_KAFKA_OFFSET_SPEC_LATEST as i64,
    };
    let size = i32::try_from(partitions.len()).map_err(|_| AdminError::InvalidInput("too many partitions".into()))?;
    // SAFETY: the list is owned by the guard; each element returned by _add is valid and
    // writable until the list is destroyed; topic names are copied by _add.
    let list = unsafe { PartitionList(ffi::rd_kafka_topic_partition_list_new(size)) };
    for (name, (_, partition)) in names.iter().zip(partitions) {
        // SAFETY: see above.
        unsafe {
            let elem = ffi::rd_kafka_topic_partition_list_add(list.0, name.as_ptr(), *partition);
            if !elem.is_null() {
                (*elem).offset = offset_spec;
            }
        }
    }
    Ok(list)
}

/// The offsets a ListOffsets result event carries, copied out of it.
fn read_offsets(event: &super::Event) -> Vec<PartitionOffset> {
    // SAFETY: the event is a ListOffsets result; every value is copied before it drops.
    unsafe {
        let result = ffi::rd_kafka_event_ListOffsets_result(event.ptr());
        if result.is_null() {
            return Vec::new();
        }
        let mut cnt = 0usize;
        let infos = ffi::rd_kafka_ListOffsets_result_infos(result, &mut cnt);
        let mut out = Vec::with_capacity(cnt);
        for info in c_array(infos, cnt) {
            if info.is_null() {
                continue;
            }
            let tp = ffi::rd_kafka_ListOffsetsResultInfo_topic_partition(*info);
            if tp.is_null() {
                continue;
            }
            let tp = &*tp;
            let result = match resp_error(tp.err) {
                Some(e) => Err(e),
                // librdkafka answers a leader that did not answer in time
                // with no error and offset -1001 (RD_KAFKA_OFFSET_INVALID):
                // no offset is no answer, never a value (as a latest offset
                // it would read as lag 0).
                None if tp.offset < 0 => Err(PartitionError {
                    code: rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    message: format!("no offset from the partition's leader (librdkafka returned {})", tp.offset),
                }),
                None => Ok(tp.offset),
            };
            out.push(PartitionOffset { topic: owned(tp.topic), partition: tp.partition, result });
        }
        out
    }
}
