//! The group requests of one cycle on one broker's connection, batched:
//! one ListGroups, one DescribeGroups with every classic group id, one
//! ConsumerGroupDescribe with every KIP-848 group id, and OffsetFetch v8+
//! with many groups per request (in chunks of [`GROUPS_PER_FETCH`]);
//! per-group OffsetFetch only on a broker without v8, chosen from its
//! ApiVersions answer. FindCoordinator for the groups whose coordinator
//! moved: one v4 request for all of them, or one per group before v4.

use std::collections::BTreeMap;

use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::connection::BrokerConnection;
use super::WireError;
use crate::deadline::Deadline;

/// Groups per multi-group OffsetFetch and per DescribeGroups: a thousand groups on a handful of
/// partitions each answer in well under a MiB, groups on hundreds of
/// partitions in tens of MiB (below `MAX_FRAME`), and one slow group does
/// not hold up more than a thousand.
pub const GROUPS_PER_FETCH: usize = 1_000;

/// A group as ListGroups names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    pub id: String,
    /// "consumer", "connect", "" for a group that only commits offsets, …
    pub protocol_type: String,
    /// ListGroups v5+: "classic", "consumer" (KIP-848), "share", "streams";
    /// None from older brokers (every group is classic there).
    pub group_type: Option<String>,
}

/// A group as DescribeGroups describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedGroup {
    pub id: String,
    pub state: String,
    pub protocol_type: String,
    pub members: u32,
    /// The broker's error for this group (e.g. NOT_COORDINATOR), 0 if none.
    pub error_code: i16,
}

/// One group's committed offsets: (topic, partition) → offset, or the
/// broker's error code for the whole group.
pub type Committed = Result<BTreeMap<(String, i32), i64>, i16>;

fn text(s: &StrBytes) -> String {
    s.to_string()
}

/// UNKNOWN_TOPIC_OR_PARTITION: a partition asked for by name that is gone.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// One group's answer from its error code and (topic, partition, offset,
/// error code) entries, whichever OffsetFetch version carried them. A
/// partition that came back with an error (an ACL hiding its topic, an
/// unstable commit) makes the group's offsets unread with that error: a
/// partition left out would read as "nothing committed there", and its
/// lag series and verdict window would vanish as if the consumer had
/// moved on. A partition that no longer exists is simply not there.
fn committed<'a>(group_error: i16, entries: impl Iterator<Item = (&'a StrBytes, i32, i64, i16)>) -> Committed {
    if group_error != 0 {
        return Err(group_error);
    }
    let mut out = BTreeMap::new();
    for (topic, partition, offset, error) in entries {
        match error {
            // -1: no commit on this partition.
            0 if offset >= 0 => {
                out.insert((text(topic), partition), offset);
            }
            0 | UNKNOWN_TOPIC_OR_PARTITION => {}
            code => return Err(code),
        }
    }
    Ok(out)
}

/// The groups this broker coordinates, and the error its answer carried
/// with them: a classic coordinator still loading (after a restart or a
/// move) answers COORDINATOR_LOAD_IN_PROGRESS *together with* the groups it
/// has loaded. Those are kept and read; the error says the listing is
/// partial. An error with no groups fails the listing.
pub fn list_groups(
    conn: &mut BrokerConnection,
    deadline: &Deadline,
) -> Result<(Vec<ListedGroup>, Option<i16>), WireError> {
    let version = conn.versions().pick(ApiKey::ListGroups, (0, 5)).ok_or(WireError::Unsupported("ListGroups"))?;
    let answer: ListGroupsResponse = conn.call(ApiKey::ListGroups, version, &ListGroupsRequest::default(), deadline)?;
    if answer.error_code != 0 && answer.groups.is_empty() {
        return Err(WireError::Broker { api: "ListGroups", code: answer.error_code });
    }
    let groups = answer
        .groups
        .iter()
        .map(|g| ListedGroup {
            id: text(&g.group_id.0),
            protocol_type: text(&g.protocol_type),
            group_type: (version >= 5).then(|| text(&g.group_type)),
        })
        .collect();
    Ok((groups, (answer.error_code != 0).then_some(answer.error_code)))
}

/// Describes KIP-848 `consumer` groups in one ConsumerGroupDescribe;
/// None when the broker does not offer it.
pub fn consumer_group_describe(
    conn: &mut BrokerConnection,
    ids: &[String],
    deadline: &Deadline,
) -> Result<Option<Vec<DescribedGroup>>, WireError> {
    let Some(version) = conn.versions().pick(ApiKey::ConsumerGroupDescribe, (0, 1)) else { return Ok(None) };
    if ids.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let request = ConsumerGroupDescribeRequest::default()
        .with_group_ids(ids.iter().map(|i| GroupId(StrBytes::from_string(i.clone()))).collect());
    let answer: ConsumerGroupDescribeResponse =
        conn.call(ApiKey::ConsumerGroupDescribe, version, &request, deadline)?;
    Ok(Some(
        answer
            .groups
            .iter()
            .map(|g| DescribedGroup {
                id: text(&g.group_id.0),
                state: text(&g.group_state),
                protocol_type: "consumer".into(),
                members: g.members.len() as u32,
                error_code: g.error_code,
            })
            .collect(),
    ))
}

/// A group's coordinator as FindCoordinator names it, or its error code.
pub type Coordinator = Result<(i32, String), i16>;

/// The coordinators of `ids`: one FindCoordinator v4+ for all of them, or
/// one v0..3 request per group from a broker without v4.
pub fn find_coordinators(
    conn: &mut BrokerConnection,
    ids: &[String],
    deadline: &Deadline,
) -> Result<BTreeMap<String, Coordinator>, WireError> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let address = |host: &StrBytes, port: i32| super::broker_address(host.as_str(), port);
    if let Some(version) = conn.versions().pick(ApiKey::FindCoordinator, (4, 6)) {
        let request = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(ids.iter().map(|i| StrBytes::from_string(i.clone())).collect());
        let answer: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, version, &request, deadline)?;
        for c in answer.coordinators {
            let found = if c.error_code == 0 { Ok((c.node_id.0, address(&c.host, c.port))) } else { Err(c.error_code) };
            out.insert(text(&c.key), found);
        }
        return Ok(out);
    }
    let version =
        conn.versions().pick(ApiKey::FindCoordinator, (0, 3)).ok_or(WireError::Unsupported("FindCoordinator"))?;
    for id in ids {
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_string(id.clone()));
        let answer: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, version, &request, deadline)?;
        let found = if answer.error_code == 0 {
            Ok((answer.node_id.0, address(&answer.host, answer.port)))
        } else {
            Err(answer.error_code)
        };
        out.insert(id.clone(), found);
    }
    Ok(out)
}

/// What a DescribeGroups answer is aimed to weigh: a quarter of the frame
/// cap, so groups that gain members (and assignments) until the next cycle
/// still fit in one frame.
pub const DESCRIBE_TARGET_BYTES: usize = super::connection::MAX_FRAME / 4;

/// How many groups go in one DescribeGroups to a broker, learnt from its
/// answers and kept between cycles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescribeSize {
    /// Groups per request, from the last answer's bytes per group.
    pub chunk: usize,
    /// Never more than this: half of the smallest request refused as over
    /// the frame cap (so an estimate from light groups cannot send a
    /// request that size again).
    pub ceiling: usize,
    /// The size of the request refused in the last call, if one was.
    pub refused: Option<usize>,
}

impl Default for DescribeSize {
    fn default() -> Self {
        DescribeSize { chunk: GROUPS_PER_FETCH, ceiling: GROUPS_PER_FETCH, refused: None }
    }
}

/// Describes `ids` in requests of `size` groups, into `out` (what was
/// answered before a failure is kept). A DescribeGroups answer carries
/// every member's metadata and assignment, so its size is set by the
/// groups, not by their number: the chunk follows what the answers weigh
/// ([`next_describe_chunk`]), and an answer over the frame cap (refused,
/// and the connection with it) halves the ceiling and divides the chunk by
/// 8 for the retry ([`DescribeSize::refused`] says it happened).
pub fn describe_groups_into(
    conn: &mut BrokerConnection,
    ids: &[String],
    size: &mut DescribeSize,
    deadline: &Deadline,
    out: &mut BTreeMap<String, DescribedGroup>,
) -> Result<(), WireError> {
    size.refused = None;
    if ids.is_empty() {
        return Ok(());
    }
    let version =
        conn.versions().pick(ApiKey::DescribeGroups, (0, 5)).ok_or(WireError::Unsupported("DescribeGroups"))?;
    let mut next = 0;
    while next < ids.len() {
        let n = size.chunk.min(size.ceiling).max(1);
        let asked = &ids[next..ids.len().min(next + n)];
        let request = DescribeGroupsRequest::default()
            .with_groups(asked.iter().map(|i| GroupId(StrBytes::from_string(i.clone()))).collect());
        let answer: DescribeGroupsResponse = match conn.call(ApiKey::DescribeGroups, version, &request, deadline) {
            Ok(a) => a,
            Err(e @ WireError::Oversized(_)) => {
                size.refused = Some(asked.len());
                size.ceiling = (asked.len() / 2).max(1);
                size.chunk = (asked.len() / 8).max(1);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        size.chunk = next_describe_chunk(asked.len(), conn.last_answer_bytes()).min(size.ceiling);
        next += asked.len();
        for g in &answer.groups {
            let d = DescribedGroup {
                id: text(&g.group_id.0),
                state: text(&g.group_state),
                protocol_type: text(&g.protocol_type),
                members: g.members.len() as u32,
                error_code: g.error_code,
            };
            out.insert(d.id.clone(), d);
        }
    }
    Ok(())
}

/// Groups per DescribeGroups after an answer of `bytes` for `asked` groups:
/// as many as should weigh [`DESCRIBE_TARGET_BYTES`], 1 to
/// [`GROUPS_PER_FETCH`]. Pure.
pub fn next_describe_chunk(asked: usize, bytes: usize) -> usize {
    let per_group = (bytes / asked.max(1)).max(1);
    (DESCRIBE_TARGET_BYTES / per_group).clamp(1, GROUPS_PER_FETCH)
}

/// Every committed offset of each of `ids`: many groups per request where
/// the broker speaks OffsetFetch v8, one request per group otherwise, every
/// request asking for every topic. `topics` (name, partitions) is what to
/// name instead for a broker that ignores "every topic" before v8
/// (librdkafka's mock does); None: never name them. `all_topics` is what
/// this broker's answers taught so far, updated from these.
pub fn fetch_offsets(
    conn: &mut BrokerConnection,
    ids: &[String],
    topics: Option<&[(String, Vec<i32>)]>,
    all_topics: &mut AllTopics,
    deadline: &Deadline,
) -> Result<BTreeMap<String, Committed>, WireError> {
    let mut out = BTreeMap::new();
    fetch_offsets_into(conn, ids, topics, all_topics, deadline, &mut out).map(|()| out)
}

/// What a broker's OffsetFetch (before v8) does with `topics = null`,
/// learnt from its answers and kept by the caller for that broker (across
/// cycles and connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AllTopics {
    /// Not known yet: an empty answer may be "nothing committed" or a
    /// broker that ignores a null list.
    #[default]
    Unknown,
    /// It answered with commits: it lists every topic.
    Answered,
    /// It answered nothing where asking by name found commits (librdkafka's
    /// mock cluster): topics are named for it.
    Ignored,
}

/// Like [`fetch_offsets`], keeping what the requests before a failure
/// answered in `out` (the caller reports the rest as failed).
pub fn fetch_offsets_into(
    conn: &mut BrokerConnection,
    ids: &[String],
    topics: Option<&[(String, Vec<i32>)]>,
    all_topics: &mut AllTopics,
    deadline: &Deadline,
    out: &mut BTreeMap<String, Committed>,
) -> Result<(), WireError> {
    if ids.is_empty() {
        return Ok(());
    }
    if let Some(version) = conn.versions().pick(ApiKey::OffsetFetch, (8, 9)) {
        for chunk in ids.chunks(GROUPS_PER_FETCH) {
            let groups = chunk
                .iter()
                .map(|id| {
                    OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(id.clone())))
                        .with_member_epoch(-1)
                        .with_topics(None)
                })
                .collect();
            let request = OffsetFetchRequest::default().with_groups(groups);
            let answer: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, version, &request, deadline)?;
            for g in answer.groups {
                let entries = g.topics.iter().flat_map(|t| {
                    t.partitions.iter().map(move |p| (&t.name.0, p.partition_index, p.committed_offset, p.error_code))
                });
                out.insert(text(&g.group_id.0), committed(g.error_code, entries));
            }
        }
        return Ok(());
    }
    // v2 is the first that answers "every topic" (topics = null).
    let version = conn.versions().pick(ApiKey::OffsetFetch, (2, 7)).ok_or(WireError::Unsupported("OffsetFetch"))?;
    let asked = topics.map(|ts| {
        ts.iter()
            .map(|(name, partitions)| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.clone())))
                    .with_partition_indexes(partitions.clone())
            })
            .collect::<Vec<_>>()
    });
    // One request per group (the protocol has no more before v8), each
    // asking for every topic (`topics = null`): G requests of a few bytes
    // instead of G × P named partitions. Only a broker seen to ignore the
    // null list gets the names.
    // While unknown, at most two groups that came back empty are asked
    // again by name per call (a broker whose groups have no commits must
    // not cost two requests per group every cycle).
    let mut probes = 2;
    for id in ids {
        let group = GroupId(StrBytes::from_string(id.clone()));
        let ask = |topics: Option<Vec<OffsetFetchRequestTopic>>| {
            OffsetFetchRequest::default().with_group_id(group.clone()).with_topics(topics)
        };
        let all = *all_topics;
        let by_name = all == AllTopics::Ignored && asked.is_some();
        let request = ask(if by_name { asked.clone() } else { None });
        let mut answer: OffsetFetchResponse = match conn.call(ApiKey::OffsetFetch, version, &request, deadline) {
            Ok(a) => a,
            // A broker that answers "every topic" with an answer that does
            // not decode (librdkafka's mock echoes the null list back) was
            // read to the end of its frame: the connection is still in step,
            // and the topics are named from now on.
            Err(WireError::Protocol(m))
                if m.starts_with("decoding a OffsetFetch")
                    && all == AllTopics::Unknown
                    && !by_name
                    && asked.is_some() =>
            {
                *all_topics = AllTopics::Ignored;
                conn.call(ApiKey::OffsetFetch, version, &ask(asked.clone()), deadline)?
            }
            Err(e) => return Err(e),
        };
        // (Still unknown: the answer above was to "every topic".)
        if *all_topics == AllTopics::Unknown {
            if has_commits(&answer) {
                *all_topics = AllTopics::Answered;
            } else if answer.error_code == 0 && asked.is_some() && probes > 0 {
                probes -= 1;
                // Nothing for "every topic": nothing committed, or a broker
                // that ignores the null list. Asking by name tells them apart.
                let named: OffsetFetchResponse =
                    conn.call(ApiKey::OffsetFetch, version, &ask(asked.clone()), deadline)?;
                if has_commits(&named) {
                    *all_topics = AllTopics::Ignored;
                }
                answer = named;
            }
        }
        let entries = answer.topics.iter().flat_map(|t| {
            t.partitions.iter().map(move |p| (&t.name.0, p.partition_index, p.committed_offset, p.error_code))
        });
        out.insert(id.clone(), committed(answer.error_code, entries));
    }
    Ok(())
}

/// Whether a (pre-v8) OffsetFetch answer holds at least one commit.
fn has_commits(answer: &OffsetFetchResponse) -> bool {
    answer.topics.iter().flat_map(|t| &t.partitions).any(|p| p.error_code == 0 && p.committed_offset >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_describe_chunk_follows_what_answers_weigh() {
        // Small groups: as many as a request takes.
        assert_eq!(next_describe_chunk(1_000, 200_000), GROUPS_PER_FETCH);
        // 1 MiB per group (thousands of members): 16 fit in a quarter of 64 MiB.
        assert_eq!(next_describe_chunk(10, 10 << 20), 16);
        // One group alone over the target: one at a time, never zero.
        assert_eq!(next_describe_chunk(1, 40 << 20), 1);
        assert_eq!(next_describe_chunk(0, 0), GROUPS_PER_FETCH);
    }

    #[test]
    fn a_partition_answered_with_an_error_leaves_the_group_unread_not_uncommitted() {
        let (t, u) = (StrBytes::from_static_str("t"), StrBytes::from_static_str("gone"));
        let fine = [(&t, 0, 5, 0), (&t, 1, -1, 0), (&u, 0, -1, UNKNOWN_TOPIC_OR_PARTITION)];
        assert_eq!(committed(0, fine.into_iter()), Ok(BTreeMap::from([(("t".to_string(), 0), 5)])));
        // TOPIC_AUTHORIZATION_FAILED on one partition: the group is unread, with that code.
        let hidden = [(&t, 0, 5, 0), (&t, 1, -1, 29)];
        assert_eq!(committed(0, hidden.into_iter()), Err(29));
        assert_eq!(committed(16, fine.into_iter()), Err(16));
    }
}
