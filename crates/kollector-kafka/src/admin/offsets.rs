//! ListOffsets: earliest or latest offsets of many partitions in one call,
//! which librdkafka splits into one request per partition leader.

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys::bindings as ffi;

use super::{c_array, c_string, call, owned, resp_error, AdminError, PartitionError};
use crate::deadline::Deadline;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
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
    const OP: &str = "ListOffsets";
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
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
    let event = call(
        client,
        OP,
        ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTOFFSETS,
        ffi::RD_KAFKA_EVENT_LISTOFFSETS_RESULT,
        deadline.into(),
        // SAFETY: live client, list, options and queue; librdkafka copies the list and options.
        |rk, options, queue| unsafe { ffi::rd_kafka_ListOffsets(rk, list.0, options, queue) },
    )?;
    // SAFETY: the event is a ListOffsets result; every value is copied before it drops.
    unsafe {
        let result = ffi::rd_kafka_event_ListOffsets_result(event.ptr());
        if result.is_null() {
            return Err(AdminError::Timeout(OP));
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
                None => Ok(tp.offset),
            };
            out.push(PartitionOffset { topic: owned(tp.topic), partition: tp.partition, result });
        }
        Ok(out)
    }
}
