//! Consumer groups: list them, describe them (state, members, coordinator)
//! and read their committed offsets, without joining any group.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, CString};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys::bindings as ffi;

use super::cluster::{node, BrokerNode};
use super::{
    c_array, c_string, call, error_object, next_event, owned, resp_error, AdminError, Options, PartitionError, Queue,
};
use crate::deadline::Deadline;

/// One result per requested group, in request order: (group id, outcome).
pub type PerGroup<T> = Vec<(String, Result<T, PartitionError>)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    Unknown,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
    Empty,
}

impl GroupState {
    fn from_ffi(s: ffi::rd_kafka_consumer_group_state_t) -> GroupState {
        use ffi::rd_kafka_consumer_group_state_t as S;
        match s {
            S::RD_KAFKA_CONSUMER_GROUP_STATE_PREPARING_REBALANCE => GroupState::PreparingRebalance,
            S::RD_KAFKA_CONSUMER_GROUP_STATE_COMPLETING_REBALANCE => GroupState::CompletingRebalance,
            S::RD_KAFKA_CONSUMER_GROUP_STATE_STABLE => GroupState::Stable,
            S::RD_KAFKA_CONSUMER_GROUP_STATE_DEAD => GroupState::Dead,
            S::RD_KAFKA_CONSUMER_GROUP_STATE_EMPTY => GroupState::Empty,
            _ => GroupState::Unknown,
        }
    }

    /// Kafka's name for the state.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Unknown => "Unknown",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Empty => "Empty",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    pub is_simple: bool,
    pub state: GroupState,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ListGroupsResult {
    pub groups: Vec<GroupListing>,
    /// Brokers that failed to answer; the listing is partial when non-empty.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    pub host: String,
    pub assignment: Vec<(String, i32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub partition_assignor: String,
    pub is_simple: bool,
    pub coordinator: Option<BrokerNode>,
    pub members: Vec<GroupMember>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    /// None when the group has no commit for the partition.
    pub offset: Option<i64>,
    pub error: Option<PartitionError>,
}

/// Copies a topic-partition list's (topic, partition, offset, error) entries.
///
/// # Safety
/// `list` must be null or a valid list for the duration of the call.
unsafe fn read_partitions(
    list: *const ffi::rd_kafka_topic_partition_list_t,
) -> Vec<(String, i32, i64, Option<PartitionError>)> {
    if list.is_null() {
        return Vec::new();
    }
    let list = &*list;
    if list.elems.is_null() || list.cnt <= 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(list.elems, list.cnt as usize)
        .iter()
        .map(|tp| (owned(tp.topic), tp.partition, tp.offset, resp_error(tp.err)))
        .collect()
}

/// Lists every consumer group (one ListGroups request per broker).
pub fn list_consumer_groups<C: ClientContext>(
    client: &Client<C>,
    deadline: impl Into<Deadline>,
) -> Result<ListGroupsResult, AdminError> {
    const OP: &str = "ListGroups";
    let event = call(
        client,
        OP,
        ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS,
        ffi::RD_KAFKA_EVENT_LISTCONSUMERGROUPS_RESULT,
        deadline.into(),
        // SAFETY: live client, options and queue.
        |rk, options, queue| unsafe { ffi::rd_kafka_ListConsumerGroups(rk, options, queue) },
    )?;
    // SAFETY: a ListConsumerGroups result; all values are copied before the event drops.
    unsafe {
        let result = ffi::rd_kafka_event_ListConsumerGroups_result(event.ptr());
        if result.is_null() {
            return Err(AdminError::Timeout(OP));
        }
        let mut cnt = 0usize;
        let valid = ffi::rd_kafka_ListConsumerGroups_result_valid(result, &mut cnt);
        let groups = c_array(valid, cnt)
            .iter()
            .filter(|g| !g.is_null())
            .map(|g| GroupListing {
                group_id: owned(ffi::rd_kafka_ConsumerGroupListing_group_id(*g)),
                is_simple: ffi::rd_kafka_ConsumerGroupListing_is_simple_consumer_group(*g) != 0,
                state: GroupState::from_ffi(ffi::rd_kafka_ConsumerGroupListing_state(*g)),
            })
            .collect();
        let mut ecnt = 0usize;
        let errs = ffi::rd_kafka_ListConsumerGroups_result_errors(result, &mut ecnt);
        let errors: Vec<String> =
            c_array(errs, ecnt).iter().filter_map(|e| error_object(*e)).map(|e| e.to_string()).collect();
        // Every broker failing with "unsupported" means the cluster lacks the API.
        if !errors.is_empty()
            && cnt == 0
            && errors.iter().all(|e| e.contains("Unsupported") || e.contains("not supported"))
        {
            return Err(AdminError::Unsupported { op: OP, message: errors.join("; ") });
        }
        Ok(ListGroupsResult { groups, errors })
    }
}

/// Describes `group_ids` in one call (librdkafka batches per coordinator).
pub fn describe_consumer_groups<C: ClientContext>(
    client: &Client<C>,
    group_ids: &[String],
    deadline: impl Into<Deadline>,
) -> Result<PerGroup<GroupDescription>, AdminError> {
    const OP: &str = "DescribeGroups";
    if group_ids.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<CString> = group_ids.iter().map(|g| c_string("group id", g)).collect::<Result<_, _>>()?;
    let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let event = call(
        client,
        OP,
        ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
        ffi::RD_KAFKA_EVENT_DESCRIBECONSUMERGROUPS_RESULT,
        deadline.into(),
        // SAFETY: live client, options and queue; the name array outlives the call and is copied.
        |rk, options, queue| unsafe {
            ffi::rd_kafka_DescribeConsumerGroups(rk, ptrs.as_mut_ptr(), ptrs.len(), options, queue)
        },
    )?;
    // SAFETY: a DescribeConsumerGroups result; all values are copied before the event drops.
    unsafe {
        let result = ffi::rd_kafka_event_DescribeConsumerGroups_result(event.ptr());
        if result.is_null() {
            return Err(AdminError::Timeout(OP));
        }
        let mut cnt = 0usize;
        let descs = ffi::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut cnt);
        let mut out = Vec::with_capacity(cnt);
        for d in c_array(descs, cnt) {
            let d = *d;
            if d.is_null() {
                continue;
            }
            let group_id = owned(ffi::rd_kafka_ConsumerGroupDescription_group_id(d));
            if let Some(err) = error_object(ffi::rd_kafka_ConsumerGroupDescription_error(d)) {
                out.push((group_id, Err(err)));
                continue;
            }
            let members = (0..ffi::rd_kafka_ConsumerGroupDescription_member_count(d))
                .map(|i| ffi::rd_kafka_ConsumerGroupDescription_member(d, i))
                .filter(|m| !m.is_null())
                .map(|m| {
                    let assignment = ffi::rd_kafka_MemberDescription_assignment(m);
                    let partitions = if assignment.is_null() {
                        Vec::new()
                    } else {
                        read_partitions(ffi::rd_kafka_MemberAssignment_partitions(assignment))
                            .into_iter()
                            .map(|(t, p, _, _)| (t, p))
                            .collect()
                    };
                    GroupMember {
                        member_id: owned(ffi::rd_kafka_MemberDescription_consumer_id(m)),
                        client_id: owned(ffi::rd_kafka_MemberDescription_client_id(m)),
                        host: owned(ffi::rd_kafka_MemberDescription_host(m)),
                        assignment: partitions,
                    }
                })
                .collect();
            out.push((
                group_id.clone(),
                Ok(GroupDescription {
                    group_id,
                    state: GroupState::from_ffi(ffi::rd_kafka_ConsumerGroupDescription_state(d)),
                    partition_assignor: owned(ffi::rd_kafka_ConsumerGroupDescription_partition_assignor(d)),
                    is_simple: ffi::rd_kafka_ConsumerGroupDescription_is_simple_consumer_group(d) != 0,
                    coordinator: node(ffi::rd_kafka_ConsumerGroupDescription_coordinator(d)),
                    members,
                }),
            ));
        }
        Ok(out)
    }
}

/// How many OffsetFetch calls may be in flight at once.
const MAX_IN_FLIGHT: usize = 32;

/// A ListConsumerGroupOffsets request object owned by the guard.
struct GroupOffsetsRequest(*mut ffi::rd_kafka_ListConsumerGroupOffsets_t);

impl Drop for GroupOffsetsRequest {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_ListConsumerGroupOffsets_new; destroyed once.
        unsafe { ffi::rd_kafka_ListConsumerGroupOffsets_destroy(self.0) }
    }
}

/// Committed offsets of every partition of each group.
///
/// librdkafka's ListConsumerGroupOffsets accepts exactly one group per call,
/// so this issues one call per group, up to `MAX_IN_FLIGHT` at a time on one
/// result queue (matched back by the options' opaque tag). A cycle therefore
/// costs one OffsetFetch request per group but about one round trip overall.
pub fn list_consumer_group_offsets<C: ClientContext>(
    client: &Client<C>,
    group_ids: &[String],
    deadline: impl Into<Deadline>,
) -> Result<PerGroup<Vec<CommittedOffset>>, AdminError> {
    list_consumer_group_offsets_within(client, group_ids, deadline, Duration::MAX)
}

/// Like [`list_consumer_group_offsets`], each group's call bounded by
/// `per_call` as well as by the deadline: a group whose coordinator is
/// stuck fails after `per_call`, not at the end of the cycle, and the
/// groups queued behind it still get their turn.
pub fn list_consumer_group_offsets_within<C: ClientContext>(
    client: &Client<C>,
    group_ids: &[String],
    deadline: impl Into<Deadline>,
    per_call: Duration,
) -> Result<PerGroup<Vec<CommittedOffset>>, AdminError> {
    const OP: &str = "OffsetFetch";
    if group_ids.is_empty() {
        return Ok(Vec::new());
    }
    let deadline: Deadline = deadline.into();
    if deadline.fenced() {
        return Err(AdminError::Fenced(OP));
    }
    let names: Vec<CString> = group_ids.iter().map(|g| c_string("group id", g)).collect::<Result<_, _>>()?;
    let queue = Queue::new(client);
    let mut pending: VecDeque<usize> = (0..group_ids.len()).collect();
    let mut in_flight = 0usize;
    let mut results: HashMap<usize, Result<Vec<CommittedOffset>, PartitionError>> = HashMap::new();

    while results.len() < group_ids.len() {
        while in_flight < MAX_IN_FLIGHT {
            let Some(i) = pending.pop_front() else { break };
            let remaining =
                deadline.at().saturating_duration_since(Instant::now()).min(per_call).max(Duration::from_millis(1));
            let options =
                Options::new(client, ffi::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS, remaining);
            options.set_opaque(i);
            // SAFETY: the request object is owned by the guard and copied by the call;
            // client, options and queue are live.
            unsafe {
                let request = GroupOffsetsRequest(ffi::rd_kafka_ListConsumerGroupOffsets_new(
                    names[i].as_ptr(),
                    std::ptr::null(),
                ));
                let mut one = [request.0];
                ffi::rd_kafka_ListConsumerGroupOffsets(
                    client.native_ptr(),
                    one.as_mut_ptr(),
                    1,
                    options.ptr(),
                    queue.ptr(),
                );
            }
            in_flight += 1;
        }
        let event = match next_event(&queue, ffi::RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT, OP, &deadline) {
            Ok(event) => event,
            Err(e @ AdminError::Fenced(_)) => return Err(e),
            // Out of time: what came back is kept; each group still
            // pending or in flight fails alone, by name.
            Err(e) => {
                let why = PartitionError {
                    code: rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                    message: e.to_string(),
                };
                for i in 0..group_ids.len() {
                    results.entry(i).or_insert_with(|| Err(why.clone()));
                }
                break;
            }
        };
        in_flight -= 1;
        let index = event.opaque();
        if index >= group_ids.len() {
            continue;
        }
        // One group's failure (its coordinator not found, not loaded) is
        // that group's alone: the call carried only it.
        if let Err(e) = event.check(OP) {
            let code = match &e {
                AdminError::Kafka { code, .. } => *code,
                AdminError::Timeout(_) => rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                _ => rdkafka::types::RDKafkaErrorCode::Fail,
            };
            results.insert(index, Err(PartitionError { code, message: e.to_string() }));
            continue;
        }
        // SAFETY: a ListConsumerGroupOffsets result; values are copied before the event drops.
        let outcome = unsafe {
            let result = ffi::rd_kafka_event_ListConsumerGroupOffsets_result(event.ptr());
            let mut cnt = 0usize;
            let groups = if result.is_null() {
                std::ptr::null_mut()
            } else {
                ffi::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut cnt)
            };
            match c_array(groups, cnt).first().copied().filter(|g| !g.is_null()) {
                None => {
                    Err(PartitionError { code: rdkafka::types::RDKafkaErrorCode::Fail, message: "empty result".into() })
                }
                Some(g) => match error_object(ffi::rd_kafka_group_result_error(g)) {
                    Some(e) => Err(e),
                    None => Ok(read_partitions(ffi::rd_kafka_group_result_partitions(g))
                        .into_iter()
                        .map(|(topic, partition, offset, error)| CommittedOffset {
                            topic,
                            partition,
                            offset: (offset >= 0).then_some(offset),
                            error,
                        })
                        .collect()),
                },
            }
        };
        results.insert(index, outcome);
    }
    Ok(group_ids
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                g.clone(),
                results.remove(&i).unwrap_or_else(|| {
                    Err(PartitionError { code: rdkafka::types::RDKafkaErrorCode::Fail, message: "no result".into() })
                }),
            )
        })
        .collect())
}
