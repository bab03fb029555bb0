//! The decisions of a cycle's group reads, apart from the I/O that
//! executes them (`group_cycle.rs`): which describe call a group needs,
//! which answers mean "ask again at its coordinator", and how one broker's
//! listing, descriptions and commits combine into one read per group. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::error_name;
use super::groups::{Committed, DescribedGroup, ListedGroup};

/// Kafka error codes that send a group to FindCoordinator and a retry at
/// the coordinator named, again and again within the broker's budget.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;

/// Whether `code` says the group must be asked at its (new) coordinator.
pub fn coordinator_moved(code: i16) -> bool {
    matches!(code, COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR)
}

/// How long to wait before relocation round `round` (0 is the first, at
/// once): a coordinator still loading its groups (after a restart or a
/// move) needs a moment, and asking it again at once would only get the
/// same answer. Doubling from 50 ms, at most 1 s, so a budget of a few
/// seconds holds several tries.
pub fn relocation_backoff(round: u32) -> std::time::Duration {
    match round {
        0 => std::time::Duration::ZERO,
        n => std::time::Duration::from_millis((50u64 << (n - 1).min(5)).min(1_000)),
    }
}

/// Relocation rounds at most in one cycle, whatever the budget (a broker
/// answering NOT_COORDINATOR forever must not be asked forever).
pub const MAX_RELOCATION_ROUNDS: u32 = 8;

/// How a listed group is described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescribeWith {
    /// DescribeGroups: classic groups (and every group of a broker before ListGroups v5).
    DescribeGroups,
    /// ConsumerGroupDescribe: KIP-848 `consumer` groups, where the broker offers it.
    ConsumerGroupDescribe,
    /// Neither (share and streams groups, or a KIP-848 group on a broker
    /// without ConsumerGroupDescribe): the listing's facts only.
    Listing,
}

pub fn describe_with(group: &ListedGroup, consumer_describe_offered: bool) -> DescribeWith {
    match group.group_type.as_deref() {
        None | Some("classic") | Some("") => DescribeWith::DescribeGroups,
        Some("consumer") if consumer_describe_offered => DescribeWith::ConsumerGroupDescribe,
        Some(_) => DescribeWith::Listing,
    }
}

/// Whether a group's offsets are read with OffsetFetch: not share groups
/// (KIP-932), whose progress is not a committed offset.
pub fn has_committed_offsets(group: &ListedGroup) -> bool {
    group.group_type.as_deref() != Some("share")
}

/// The groups among `described` and `committed` whose answer said their
/// coordinator is elsewhere (or not ready), sorted.
pub fn to_relocate(
    described: &BTreeMap<String, DescribedGroup>,
    committed: &BTreeMap<String, Committed>,
) -> Vec<String> {
    // Not those whose offsets came back anyway: they are kept, not risked on a retry.
    let mut out: BTreeSet<String> = described
        .values()
        .filter(|d| coordinator_moved(d.error_code) && !matches!(committed.get(&d.id), Some(Ok(_))))
        .map(|d| d.id.clone())
        .collect();
    out.extend(
        committed.iter().filter(|(_, c)| matches!(c, Err(code) if coordinator_moved(*code))).map(|(id, _)| id.clone()),
    );
    out.into_iter().collect()
}

/// One group as the cycle read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRead {
    pub id: String,
    /// The broker that answered for it (listed it, or FindCoordinator named).
    pub coordinator: Option<i32>,
    pub protocol_type: String,
    pub group_type: Option<String>,
    pub state: String,
    pub members: u32,
    /// Why the description is missing, if it is.
    pub describe_error: Option<String>,
    /// (topic, partition) → committed offset, or why they are missing.
    pub committed: Result<BTreeMap<(String, i32), i64>, String>,
}

/// What one broker said about the groups it lists, for [`merge`].
#[derive(Clone, Debug, Default)]
pub struct BrokerAnswers {
    pub broker: i32,
    pub listed: Vec<ListedGroup>,
    pub described: BTreeMap<String, DescribedGroup>,
    /// Why describing failed for all of this broker's groups.
    pub describe_failed: Option<String>,
    pub committed: BTreeMap<String, Committed>,
    /// Why fetching failed for all of this broker's groups.
    pub fetch_failed: Option<String>,
    /// The error a ListGroups answer carried with the groups it did list
    /// (a coordinator still loading): the listing is partial.
    pub list_error: Option<String>,
    /// The broker stopped answering part-way (its budget ran out): what it
    /// answered is kept, and it is named as failed.
    pub failure: Option<(kollector_core::BrokerErrorKind, String)>,
    /// Listed groups that no describe call covers ([`DescribeWith::Listing`]):
    /// their listing is all there is. Any other group missing from
    /// `described` was asked about and left out of the answer: unread.
    pub listing_only: BTreeSet<String>,
}

/// One read per listed group, sorted by id. A group listed by two brokers
/// (a coordinator moving during the cycle) is read once: from the broker
/// that answered for its offsets, else the lower broker id.
pub fn merge(answers: &[BrokerAnswers]) -> Vec<GroupRead> {
    let mut out: BTreeMap<String, GroupRead> = BTreeMap::new();
    for a in answers {
        for g in &a.listed {
            let read = read_one(a, g);
            let keep_old = out.get(&g.id).is_some_and(|old| old.committed.is_ok() || read.committed.is_err());
            if !keep_old {
                out.insert(g.id.clone(), read);
            }
        }
    }
    out.into_values().collect()
}

fn read_one(a: &BrokerAnswers, g: &ListedGroup) -> GroupRead {
    let mut read = GroupRead {
        id: g.id.clone(),
        coordinator: Some(a.broker),
        protocol_type: g.protocol_type.clone(),
        group_type: g.group_type.clone(),
        state: "Unknown".into(),
        members: 0,
        describe_error: None,
        committed: Err("no answer".into()),
    };
    match (a.described.get(&g.id), &a.describe_failed) {
        // Not asked about: a failed describe call is not its failure.
        (None, _) if a.listing_only.contains(&g.id) => {}
        (Some(d), _) if d.error_code == 0 => {
            read.state = d.state.clone();
            read.members = d.members;
            if !d.protocol_type.is_empty() {
                read.protocol_type = d.protocol_type.clone();
            }
        }
        (Some(d), _) => read.describe_error = Some(error_name(d.error_code)),
        (None, Some(why)) => read.describe_error = Some(why.clone()),
        // Asked, and the answer did not mention it: as unread as a failure.
        (None, None) => read.describe_error = Some("left out of the broker's answer".into()),
    }
    read.committed = match (a.committed.get(&g.id), &a.fetch_failed) {
        _ if !has_committed_offsets(g) => Ok(BTreeMap::new()),
        (Some(Ok(offsets)), _) => Ok(offsets.clone()),
        (Some(Err(code)), _) => Err(error_name(*code)),
        (None, Some(why)) => Err(why.clone()),
        (None, None) => Err("no answer".into()),
    };
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, group_type: Option<&str>) -> ListedGroup {
        ListedGroup { id: id.into(), protocol_type: "consumer".into(), group_type: group_type.map(String::from) }
    }

    fn described(id: &str, state: &str, members: u32, error_code: i16) -> DescribedGroup {
        DescribedGroup { id: id.into(), state: state.into(), protocol_type: "consumer".into(), members, error_code }
    }

    #[test]
    fn kip_848_groups_are_described_with_consumer_group_describe_where_offered() {
        assert_eq!(describe_with(&listed("a", None), true), DescribeWith::DescribeGroups);
        assert_eq!(describe_with(&listed("a", Some("classic")), true), DescribeWith::DescribeGroups);
        assert_eq!(describe_with(&listed("a", Some("consumer")), true), DescribeWith::ConsumerGroupDescribe);
        assert_eq!(describe_with(&listed("a", Some("consumer")), false), DescribeWith::Listing);
        assert_eq!(describe_with(&listed("a", Some("share")), true), DescribeWith::Listing);
    }

    #[test]
    fn relocation_backs_off_from_nothing_to_at_most_a_second() {
        let waits: Vec<u64> = (0..MAX_RELOCATION_ROUNDS).map(|r| relocation_backoff(r).as_millis() as u64).collect();
        assert_eq!(waits, vec![0, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(relocation_backoff(u32::MAX), std::time::Duration::from_secs(1));
    }

    #[test]
    fn only_coordinator_errors_are_relocated_once_each() {
        let d = BTreeMap::from([
            ("a".to_string(), described("a", "", 0, NOT_COORDINATOR)),
            ("b".to_string(), described("b", "Stable", 2, 0)),
            ("c".to_string(), described("c", "", 0, 30)),
        ]);
        let c = BTreeMap::from([
            ("a".to_string(), Err(NOT_COORDINATOR)),
            ("b".to_string(), Err(COORDINATOR_LOAD_IN_PROGRESS)),
            ("d".to_string(), Ok(BTreeMap::new())),
            ("e".to_string(), Err(COORDINATOR_NOT_AVAILABLE)),
        ]);
        assert_eq!(to_relocate(&d, &c), vec!["a", "b", "e"]);
        // A group whose description moved but whose offsets came back is kept.
        let c = BTreeMap::from([("a".to_string(), Ok(BTreeMap::new()))]);
        assert_eq!(to_relocate(&d, &c), Vec::<String>::new());
        assert!(!has_committed_offsets(&listed("s", Some("share"))));
        assert!(has_committed_offsets(&listed("s", Some("streams"))));
        assert!(error_name(NOT_COORDINATOR).contains("NotCoordinator"));
    }

    #[test]
    fn merge_keeps_what_each_broker_said_and_reads_a_doubly_listed_group_once() {
        let offsets = BTreeMap::from([(("t".to_string(), 0), 5)]);
        let one = BrokerAnswers {
            broker: 1,
            listed: vec![listed("a", None), listed("moving", None)],
            described: BTreeMap::from([("a".to_string(), described("a", "Stable", 3, 0))]),
            describe_failed: None,
            committed: BTreeMap::from([("a".to_string(), Ok(offsets.clone())), ("moving".to_string(), Err(16))]),
            fetch_failed: None,
            list_error: None,
            failure: None,
            listing_only: BTreeSet::new(),
        };
        let two = BrokerAnswers {
            broker: 2,
            listed: vec![listed("moving", None), listed("k", Some("consumer")), listed("s", Some("share"))],
            described: BTreeMap::new(),
            describe_failed: Some("DescribeGroups: timed out".into()),
            committed: BTreeMap::from([("moving".to_string(), Ok(offsets.clone()))]),
            fetch_failed: None,
            list_error: None,
            failure: None,
            listing_only: BTreeSet::from(["s".to_string()]),
        };
        let reads = merge(&[one, two]);
        let by: BTreeMap<&str, &GroupRead> = reads.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(reads.len(), 4);
        assert_eq!(by["s"].describe_error, None, "a share group has only its listing");
        // A classic group the DescribeGroups answer left out is unread, not "Unknown with 0 members".
        let left_out = BrokerAnswers { broker: 1, listed: vec![listed("x", None)], ..Default::default() };
        let read = &merge(&[left_out])[0];
        assert_eq!(read.describe_error.as_deref(), Some("left out of the broker's answer"));
        assert_eq!((by["a"].state.as_str(), by["a"].members, by["a"].coordinator), ("Stable", 3, Some(1)));
        assert_eq!(by["a"].committed, Ok(offsets.clone()));
        assert_eq!(by["moving"].coordinator, Some(2), "the broker that answered for the offsets");
        assert_eq!(by["moving"].committed, Ok(offsets));
        assert_eq!(by["k"].describe_error.as_deref(), Some("DescribeGroups: timed out"));
        assert_eq!(by["k"].group_type.as_deref(), Some("consumer"));
        assert!(by["k"].committed.is_err());
    }
}
