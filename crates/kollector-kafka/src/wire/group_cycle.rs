//! One cycle's group reads over every broker of a monitor's cluster, on
//! connections the monitor owns ([`GroupConnections`], one per broker,
//! kept between cycles and closed with the monitor's client).
//!
//! Per broker, in parallel: ListGroups (a broker lists the groups it
//! coordinates), one DescribeGroups for its classic groups, one
//! ConsumerGroupDescribe for its KIP-848 groups, OffsetFetch v8+ for all of
//! them in chunks. Groups whose answer says the coordinator moved (or is
//! loading, or not available) get a FindCoordinator (batched from v4) and
//! a retry at the coordinator named, again with a backoff while the answer
//! stays the same and the broker's budget lasts. So a healthy cycle costs
//! 1 + 3 requests per broker, whatever the number of groups (+ 2 per round
//! while coordinators move); `group_plan.rs` decides, this file only talks.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::ApiKey;
use kollector_core::BrokerErrorKind;

use super::connection::BrokerConnection;
use super::group_plan::{
    coordinator_moved, describe_with, has_committed_offsets, merge, relocation_backoff, to_relocate, BrokerAnswers,
    DescribeWith, GroupRead, MAX_RELOCATION_ROUNDS,
};
use super::groups::{
    consumer_group_describe, describe_groups_into, fetch_offsets_into, find_coordinators, list_groups, AllTopics,
    DescribeSize, ListedGroup,
};
use super::security::WireSecurity;
use super::WireError;
use crate::deadline::{Deadline, Stop};

/// Brokers read at the same time within one cycle.
const PARALLEL_BROKERS: usize = 8;

/// A monitor's direct connections, by broker id (bootstrap addresses
/// before the first Metadata answer get ids -1, -2, …). They serve the
/// cycle's cluster reads (`cluster_cycle.rs`) and its group reads.
pub struct GroupConnections {
    pub(super) security: WireSecurity,
    pub(super) conns: BTreeMap<i32, BrokerConnection>,
    /// The brokers the last Metadata answer named (id, host:port).
    pub(super) known: Vec<(i32, String)>,
    /// The broker that answered Metadata last: asked first next time.
    pub(super) metadata_from: Option<i32>,
    /// What each broker's answers taught (describe sizes, OffsetFetch
    /// habits), kept for the brokers the cycle reads.
    learnt: BTreeMap<i32, Learnt>,
}

impl std::fmt::Debug for GroupConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConnections").field("open", &self.conns.len()).finish_non_exhaustive()
    }
}

/// What a cycle's group reads gave.
#[derive(Debug, Default)]
pub struct GroupCycle {
    pub groups: Vec<GroupRead>,
    /// Brokers whose groups could not be listed, and why: the listing is partial.
    pub broker_errors: Vec<String>,
    /// No broker offers ListGroups (e.g. librdkafka's mock cluster).
    pub unsupported: bool,
    /// Every broker refused the credentials: the first refusal.
    pub authentication: Option<String>,
    /// The collection's timeout or fence passed meanwhile.
    pub stopped: Option<Stop>,
    /// Brokers that answered (listed their groups).
    pub answered: usize,
    /// Brokers whose part failed (could not connect, ran out of their
    /// budget, refused the credentials, answered an error): the first
    /// failure of each, by kind.
    pub failed: Vec<(i32, BrokerErrorKind, String)>,
}

/// What kind of failure a direct request's error is.
pub fn failure_kind(e: &WireError) -> BrokerErrorKind {
    match e {
        WireError::Stopped(_) | WireError::Throttled(_) => BrokerErrorKind::Timeout,
        WireError::Io(_) => BrokerErrorKind::Connection,
        WireError::Authentication(_) | WireError::Tls(_) => BrokerErrorKind::Authentication,
        WireError::WrongCluster(_) => BrokerErrorKind::WrongCluster,
        WireError::Oversized(_) | WireError::Protocol(_) | WireError::Broker { .. } | WireError::Unsupported(_) => {
            BrokerErrorKind::Kafka
        }
    }
}

/// A cycle's limits besides its deadline.
struct Within<'a> {
    /// Each broker's part at most this long; None: the whole deadline.
    budget: Option<std::time::Duration>,
    /// Brokers not asked (failed earlier this cycle).
    skip: &'a BTreeSet<i32>,
}

/// One broker's part of the cycle.
struct BrokerWork {
    id: i32,
    address: String,
    conn: Option<BrokerConnection>,
    outcome: Result<BrokerAnswers, WireError>,
    /// What this broker's answers taught earlier (kept between cycles).
    learnt: Learnt,
}

/// What a broker's answers taught, kept between cycles and connections.
#[derive(Clone, Copy, Debug, Default)]
struct Learnt {
    /// Groups per DescribeGroups.
    describe: DescribeSize,
    /// What it does with OffsetFetch `topics = null` before v8.
    all_topics: AllTopics,
}

impl GroupConnections {
    pub fn new(security: WireSecurity) -> GroupConnections {
        GroupConnections {
            security,
            conns: BTreeMap::new(),
            known: Vec::new(),
            metadata_from: None,
            learnt: BTreeMap::new(),
        }
    }

    /// Broker `id`'s part of the cycle: its kept connection and what it taught.
    fn work_for(&mut self, id: i32, address: &str) -> BrokerWork {
        BrokerWork {
            id,
            address: address.to_string(),
            conn: self.conns.remove(&id),
            outcome: Err(WireError::Io("not asked".into())),
            learnt: self.learnt.get(&id).copied().unwrap_or_default(),
        }
    }

    /// Keeps what `w` left (its connection, what it learnt); its outcome.
    fn settle(&mut self, w: BrokerWork) -> (i32, Result<BrokerAnswers, WireError>) {
        self.learnt.insert(w.id, w.learnt);
        self.keep(w.id, w.conn);
        (w.id, w.outcome)
    }

    /// Pins the cluster every connection must reach (the monitor's pinned
    /// id). A different pin than before drops every connection and the
    /// brokers known: they were reached as another cluster's.
    pub fn pin_cluster(&mut self, cluster_id: &str) {
        if self.security.expected_cluster() == Some(cluster_id) {
            return;
        }
        if self.security.expected_cluster().is_some() {
            self.conns.clear();
            self.known.clear();
            self.metadata_from = None;
        }
        self.security = self.security.clone().expecting_cluster(cluster_id);
    }

    /// The longest throttle each broker asked since the last call, in ms
    /// (brokers that asked none are left out).
    /// Recorded by address (connections closed meanwhile included), named
    /// by the broker the last Metadata answer put at that address.
    pub fn take_throttles(&mut self) -> BTreeMap<i32, u32> {
        let by_address = self.security.throttle_log().take();
        let mut out = BTreeMap::new();
        for (address, throttle) in by_address {
            let ms = u32::try_from(throttle.as_millis()).unwrap_or(u32::MAX);
            for (id, _) in self.known.iter().filter(|(_, a)| *a == address) {
                let longest: &mut u32 = out.entry(*id).or_default();
                *longest = (*longest).max(ms);
            }
        }
        out.retain(|_, ms| *ms > 0);
        out
    }

    /// The TLS and SASL settings connections are opened with.
    pub fn security(&self) -> &WireSecurity {
        &self.security
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Closes the connection to broker `id` (dropping it closes the socket).
    fn close(&mut self, id: i32) {
        self.conns.remove(&id);
    }

    fn keep(&mut self, id: i32, conn: Option<BrokerConnection>) {
        if let Some(c) = conn {
            self.conns.insert(id, c);
        }
    }

    /// Reads every group of `brokers` (id, host:port) that `allowed`
    /// admits. `topics` names the partitions to ask for on brokers that
    /// need one request per group (they cannot all answer "every topic").
    pub fn read(
        &mut self,
        brokers: &[(i32, String)],
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
    ) -> GroupCycle {
        let within = Within { budget: None, skip: &BTreeSet::new() };
        self.run(brokers, None, allowed, topics, deadline, within)
    }

    /// Like [`GroupConnections::read`], with each broker's part bounded by
    /// `budget` (so a stuck broker costs that, not the whole deadline) and
    /// the brokers in `skip` (failed earlier this cycle) not asked.
    pub fn read_within(
        &mut self,
        brokers: &[(i32, String)],
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
        budget: std::time::Duration,
        skip: &BTreeSet<i32>,
    ) -> GroupCycle {
        self.run(brokers, None, allowed, topics, deadline, Within { budget: Some(budget), skip })
    }

    /// Like [`GroupConnections::read`] for groups already known, by the
    /// broker believed to coordinate them, without ListGroups (for a
    /// cluster that lacks it, like librdkafka's mock).
    pub fn read_listed(
        &mut self,
        brokers: &[(i32, String)],
        listed: &BTreeMap<i32, Vec<ListedGroup>>,
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
    ) -> GroupCycle {
        let within = Within { budget: None, skip: &BTreeSet::new() };
        self.run(brokers, Some(listed), allowed, topics, deadline, within)
    }

    fn run(
        &mut self,
        brokers: &[(i32, String)],
        listed: Option<&BTreeMap<i32, Vec<ListedGroup>>>,
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
        within: Within<'_>,
    ) -> GroupCycle {
        // Connections to brokers that left, or moved, are closed first.
        let wanted: BTreeMap<i32, &String> = brokers.iter().map(|(id, a)| (*id, a)).collect();
        let gone: Vec<i32> = self
            .conns
            .iter()
            .filter(|(id, c)| wanted.get(id).is_none_or(|a| *a != c.address()))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.close(id);
        }
        self.learnt.retain(|id, _| wanted.contains_key(id));
        let mut work: Vec<BrokerWork> = wanted
            .iter()
            .filter(|(id, _)| !within.skip.contains(id))
            .map(|(id, address)| self.work_for(*id, address))
            .collect();
        let security = &self.security;
        let given = |id: i32| listed.map(|l| l.get(&id).cloned().unwrap_or_default());
        // One deadline for the phase (relocations included): the group
        // reads cost at most one budget, however many brokers wait behind
        // the workers.
        let phase = within.budget.map_or_else(|| deadline.clone(), |b| deadline.capped(b));
        in_parallel(&mut work, |w| read_at(w, security, given(w.id), allowed, topics, &phase));

        let mut cycle = GroupCycle::default();
        let mut answers = Vec::new();
        let (mut unsupported, mut auth_failures) = (0, 0);
        let mut avoid: BTreeSet<i32> = within.skip.clone();
        for w in work {
            let address = w.address.clone();
            let (id, outcome) = self.settle(w);
            // A broker that failed this cycle is not asked to relocate groups.
            let failed = match &outcome {
                Ok(a) => a.failure.is_some(),
                Err(e) => !matches!(e, WireError::Unsupported(_)),
            };
            if failed {
                avoid.insert(id);
            }
            match outcome {
                Ok(a) => {
                    cycle.answered += 1;
                    // Out of the cycle's own time is not the broker's fault.
                    if let Some((kind, why)) = a.failure.as_ref().filter(|_| !deadline.passed()) {
                        cycle.failed.push((id, *kind, why.clone()));
                    }
                    answers.push(a);
                }
                Err(e) => {
                    match &e {
                        WireError::Unsupported("ListGroups") => unsupported += 1,
                        WireError::Authentication(why) => {
                            auth_failures += 1;
                            cycle.authentication.get_or_insert_with(|| why.clone());
                        }
                        // Only the fence stops the cycle; a broker out of
                        // its budget (or of the cycle's time) failed alone.
                        WireError::Stopped(Stop::Fenced) => {
                            cycle.stopped.get_or_insert(Stop::Fenced);
                        }
                        _ => {}
                    }
                    let cycle_out_of_time = matches!(e, WireError::Stopped(_)) && deadline.passed();
                    if !cycle_out_of_time
                        && !matches!(e, WireError::Unsupported("ListGroups") | WireError::Stopped(Stop::Fenced))
                    {
                        let why = match &e {
                            WireError::Stopped(Stop::TimedOut) => {
                                "groups: no answer within the broker's budget".to_string()
                            }
                            e => format!("groups: {e}"),
                        };
                        cycle.failed.push((id, failure_kind(&e), why));
                    }
                    cycle.broker_errors.push(format!("broker {} ({}): {e}", id, address));
                }
            }
        }
        cycle.unsupported = !brokers.is_empty() && unsupported == brokers.len();
        if auth_failures == 0 || auth_failures < brokers.len() - within.skip.len().min(brokers.len()) {
            cycle.authentication = None;
        }
        for a in &answers {
            if let Some(why) = &a.list_error {
                let address = brokers.iter().find(|(id, _)| *id == a.broker).map_or("", |(_, address)| address);
                cycle.broker_errors.push(format!("broker {} ({address}): {why}", a.broker));
            }
        }
        if cycle.stopped.is_none() {
            // Relocations have a budget of their own (from now, within the
            // cycle's deadline): waiting for a stuck broker's part must not
            // leave the groups that moved elsewhere no time to be read.
            let relocating = within.budget.map_or_else(|| deadline.clone(), |b| deadline.capped(b));
            if let Err(Stop::Fenced) = self.relocate(&mut answers, &avoid, allowed, topics, &relocating) {
                cycle.stopped = Some(Stop::Fenced);
            }
        }
        cycle.groups = merge(&answers);
        cycle
    }

    /// Groups whose answer said their coordinator moved, is loading or is
    /// not available: round after round (backing off, within the phase's
    /// deadline, at most [`MAX_RELOCATION_ROUNDS`]), one FindCoordinator for
    /// all of them and a read each at the coordinator named. Each group is
    /// retried alone: the others' reads stand. What is still moving when
    /// the time is up keeps its error (unread, never a guess).
    fn relocate(
        &mut self,
        answers: &mut Vec<BrokerAnswers>,
        avoid: &BTreeSet<i32>,
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
    ) -> Result<(), Stop> {
        for round in 0..MAX_RELOCATION_ROUNDS {
            // A group another broker already read (listed by two during a
            // move) keeps that read: it is not risked on a retry.
            let read: BTreeSet<&String> =
                answers.iter().flat_map(|a| a.committed.iter().filter(|(_, c)| c.is_ok()).map(|(id, _)| id)).collect();
            let moved: BTreeSet<String> = answers
                .iter()
                .flat_map(|a| to_relocate(&a.described, &a.committed))
                .filter(|id| !read.contains(id))
                .collect();
            if moved.is_empty() {
                return Ok(());
            }
            match deadline.pause(relocation_backoff(round)) {
                Ok(()) => {}
                Err(Stop::Fenced) => return Err(Stop::Fenced),
                Err(Stop::TimedOut) => return Ok(()),
            }
            self.relocate_once(answers, &moved, avoid, allowed, topics, deadline)?;
        }
        Ok(())
    }

    /// One relocation round for `moved`: their earlier answers give way to
    /// what their coordinators say now.
    fn relocate_once(
        &mut self,
        answers: &mut Vec<BrokerAnswers>,
        moved: &BTreeSet<String>,
        avoid: &BTreeSet<i32>,
        allowed: &(dyn Fn(&str) -> bool + Sync),
        topics: &[(String, Vec<i32>)],
        deadline: &Deadline,
    ) -> Result<(), Stop> {
        let mut listed = BTreeMap::new();
        for a in answers.iter_mut() {
            for g in a.listed.iter().filter(|g| moved.contains(&g.id)) {
                listed.entry(g.id.clone()).or_insert_with(|| (a.broker, g.clone()));
            }
            a.listed.retain(|g| !moved.contains(&g.id));
            a.described.retain(|id, _| !moved.contains(id));
            a.committed.retain(|id, _| !moved.contains(id));
        }
        let ids: Vec<String> = listed.keys().cloned().collect();
        let failed = |why: String, groups: Vec<(i32, ListedGroup)>| -> Vec<BrokerAnswers> {
            groups
                .into_iter()
                .map(|(broker, g)| BrokerAnswers {
                    broker,
                    listed: vec![g],
                    describe_failed: Some(why.clone()),
                    fetch_failed: Some(why.clone()),
                    ..Default::default()
                })
                .collect()
        };
        // Any open connection to a broker that has not failed this cycle
        // can answer FindCoordinator.
        let Some(via) = self.conns.keys().find(|id| !avoid.contains(*id)).copied() else {
            answers.extend(failed("coordinator moved; no broker left to ask".into(), listed.into_values().collect()));
            return Ok(());
        };
        let found = match self.conns.get_mut(&via).map(|c| find_coordinators(c, &ids, deadline)) {
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                if e.breaks_connection() {
                    self.close(via);
                }
                if let WireError::Stopped(Stop::Fenced) = e {
                    return Err(Stop::Fenced);
                }
                answers.extend(failed(format!("FindCoordinator: {e}"), listed.into_values().collect()));
                return Ok(());
            }
            None => {
                answers
                    .extend(failed("coordinator moved; no broker left to ask".into(), listed.into_values().collect()));
                return Ok(());
            }
        };
        let mut at: BTreeMap<(i32, String), Vec<ListedGroup>> = BTreeMap::new();
        for (id, (broker, g)) in listed {
            match found.get(&id) {
                Some(Ok((node, address))) => at.entry((*node, address.clone())).or_default().push(g),
                // Not available yet (a coordinator being elected): asked
                // again next round, like a group answering the same.
                Some(Err(code)) if coordinator_moved(*code) => answers.push(BrokerAnswers {
                    broker,
                    committed: BTreeMap::from([(g.id.clone(), Err(*code))]),
                    describe_failed: Some(format!("FindCoordinator: {}", super::error_name(*code))),
                    listed: vec![g],
                    ..Default::default()
                }),
                Some(Err(code)) => {
                    answers.extend(failed(format!("FindCoordinator: {}", super::error_name(*code)), vec![(broker, g)]))
                }
                None => answers.extend(failed("FindCoordinator: no answer".into(), vec![(broker, g)])),
            }
        }
        // Every coordinator named is read at once (one stuck coordinator
        // holds only its groups), except one that failed this cycle.
        let mut work: Vec<(BrokerWork, Vec<ListedGroup>)> = Vec::new();
        for ((node, address), groups) in at {
            if avoid.contains(&node) {
                let why = format!("at coordinator {node}: it failed earlier this cycle");
                answers.extend(failed(why, groups.into_iter().map(|g| (node, g)).collect()));
                continue;
            }
            if self.conns.get(&node).is_some_and(|c| c.address() != address) {
                self.close(node);
            }
            work.push((self.work_for(node, &address), groups));
        }
        let security = &self.security;
        in_parallel(&mut work, |(w, groups)| read_at(w, security, Some(groups.clone()), allowed, topics, deadline));
        let mut fenced = false;
        for (w, groups) in work {
            let (node, outcome) = self.settle(w);
            match outcome {
                Ok(a) => answers.push(a),
                Err(WireError::Stopped(Stop::Fenced)) => fenced = true,
                Err(e) => answers.extend(failed(
                    format!("at coordinator {node}: {e}"),
                    groups.into_iter().map(|g| (node, g)).collect(),
                )),
            }
        }
        if fenced {
            return Err(Stop::Fenced);
        }
        Ok(())
    }
}

/// Runs `f` on every item, `PARALLEL_BROKERS` workers taking the next item
/// as each finishes: the whole takes about the slowest item's time, one
/// stuck broker holds up one worker (not a batch), and a large cluster does
/// not cost a thread per broker.
pub(super) fn in_parallel<T: Send>(items: &mut [T], f: impl Fn(&mut T) + Sync) {
    if items.len() <= 1 {
        items.iter_mut().for_each(f);
        return;
    }
    let workers = PARALLEL_BROKERS.min(items.len());
    let next = std::sync::Mutex::new(items.iter_mut());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(item) = next.lock().ok().and_then(|mut it| it.next()) else { return };
                f(item);
            });
        }
    });
}

/// The reads at one broker: its own listing (`given` None) or the groups
/// FindCoordinator sent there. A connection an error left unusable is dropped.
fn read_at(
    w: &mut BrokerWork,
    security: &WireSecurity,
    given: Option<Vec<ListedGroup>>,
    allowed: &(dyn Fn(&str) -> bool + Sync),
    topics: &[(String, Vec<i32>)],
    deadline: &Deadline,
) {
    let connect = || BrokerConnection::connect(&w.address, security, deadline);
    // A kept connection whose SASL session is ending is replaced first.
    let kept = w.conn.take().filter(|c| !c.expired());
    let reused = kept.is_some();
    let mut conn = match kept.map_or_else(connect, Ok) {
        Ok(c) => c,
        Err(e) => {
            w.outcome = Err(e);
            return;
        }
    };
    let list = |c: &mut BrokerConnection, given: Option<Vec<ListedGroup>>| match given {
        Some(g) => Ok((g, None)),
        None => list_groups_patiently(c, deadline),
    };
    let (mut listed, list_error) = match list(&mut conn, given.clone()) {
        Ok(l) => l,
        // A kept connection may have died while idle (a broker's idle close,
        // a NAT's): one retry on a fresh one before the broker counts as failed.
        Err(e) if reused && e.worth_a_fresh_connection() => {
            let retried = connect().and_then(|mut c| {
                let l = list(&mut c, given)?;
                Ok((c, l))
            });
            match retried {
                Ok((c, l)) => {
                    conn = c;
                    l
                }
                Err(e) => {
                    w.outcome = Err(e);
                    return;
                }
            }
        }
        Err(e) => {
            if !e.breaks_connection() {
                w.conn = Some(conn);
            }
            w.outcome = Err(e);
            return;
        }
    };
    listed.retain(|g| allowed(&g.id));
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    listed.dedup_by(|a, b| a.id == b.id);
    let mut answers = BrokerAnswers {
        broker: w.id,
        list_error: list_error
            .map(|code| format!("ListGroups: {} (kept the groups it listed)", super::error_name(code))),
        ..Default::default()
    };
    let consumer_describe = conn.versions().pick(ApiKey::ConsumerGroupDescribe, (0, 1)).is_some();
    let ids_by = |how: DescribeWith| -> Vec<String> {
        listed.iter().filter(|g| describe_with(g, consumer_describe) == how).map(|g| g.id.clone()).collect()
    };
    let (classic, kip848) = (ids_by(DescribeWith::DescribeGroups), ids_by(DescribeWith::ConsumerGroupDescribe));
    let with_offsets: Vec<String> = listed.iter().filter(|g| has_committed_offsets(g)).map(|g| g.id.clone()).collect();
    answers.listing_only = ids_by(DescribeWith::Listing).into_iter().collect();
    let mut stopped = None;
    let mut live = Some(conn);
    // (`live.take()` only where there is something to ask: taking it
    // otherwise would drop, and so close, the connection.)
    if let Some(mut c) = live.take_if(|_| !classic.is_empty()) {
        loop {
            let left: Vec<String> = classic.iter().filter(|id| !answers.described.contains_key(*id)).cloned().collect();
            match describe_groups_into(&mut c, &left, &mut w.learnt.describe, deadline, &mut answers.described) {
                Ok(()) => {
                    live = Some(c);
                    break;
                }
                // An answer over the frame cap (its body never read: the
                // connection is out of step and dropped): the rest again in
                // smaller requests on a fresh connection, while a request
                // of more than one group was refused.
                Err(WireError::Oversized(_)) if w.learnt.describe.refused.is_some_and(|n| n > 1) => {
                    drop(c);
                    match connect() {
                        Ok(fresh) => c = fresh,
                        Err(e) => {
                            if let WireError::Stopped(stop) = &e {
                                stopped.get_or_insert(*stop);
                            }
                            answers.describe_failed = Some(format!("DescribeGroups: {e}"));
                            break;
                        }
                    }
                }
                Err(e) => {
                    (answers.describe_failed, live) = map_first(fail(e, "DescribeGroups", c, &mut stopped));
                    break;
                }
            }
        }
    }
    if let Some(mut c) = live.take_if(|_| !kip848.is_empty()) {
        match consumer_group_describe(&mut c, &kip848, deadline) {
            Ok(list) => {
                answers.described.extend(list.unwrap_or_default().into_iter().map(|d| (d.id.clone(), d)));
                live = Some(c);
            }
            Err(e) => {
                let (why, c) = fail(e, "ConsumerGroupDescribe", c, &mut stopped);
                answers.describe_failed.get_or_insert(why);
                live = c;
            }
        }
    }
    // Offsets matter more than descriptions: a description that broke the
    // connection (e.g. an answer over the frame limit) does not cost them.
    let was_stopped = stopped.is_some();
    if live.is_none() && !was_stopped {
        live = connect().ok();
    }
    match live.take() {
        None if was_stopped => answers.fetch_failed = Some("not asked: the broker's time ran out".into()),
        None => answers.fetch_failed = Some("not asked: no usable connection".into()),
        Some(mut c) => {
            let all_topics = &mut w.learnt.all_topics;
            match fetch_offsets_into(&mut c, &with_offsets, Some(topics), all_topics, deadline, &mut answers.committed)
            {
                Ok(()) => live = Some(c),
                Err(e) => (answers.fetch_failed, live) = map_first(fail(e, "OffsetFetch", c, &mut stopped)),
            }
        }
    }
    w.conn = live;
    answers.listed = listed;
    w.outcome = match stopped {
        Some(Stop::Fenced) => Err(WireError::Stopped(Stop::Fenced)),
        // Out of time part-way: what was read is kept, the rest is unread
        // (with the reason), and the broker is named.
        Some(Stop::TimedOut) => {
            answers.failure = Some((BrokerErrorKind::Timeout, "groups: no answer within the broker's budget".into()));
            Ok(answers)
        }
        None => Ok(answers),
    };
}

/// How long ListGroups is asked again while the broker says its
/// coordinator is loading: the rest of the broker's budget is for what it
/// did list (descriptions, offsets, relocations).
const LIST_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// ListGroups, asked again (backing off, for at most [`LIST_PATIENCE`])
/// while the broker answers that its coordinator is loading or not
/// available, with no groups or with part of them: a broker just restarted
/// lists its groups a moment later. The groups of every answer are kept
/// (their union); the error stays only if the last answer still had one.
fn list_groups_patiently(
    conn: &mut BrokerConnection,
    deadline: &Deadline,
) -> Result<(Vec<ListedGroup>, Option<i16>), WireError> {
    let patience = deadline.capped(LIST_PATIENCE);
    let mut seen: Vec<ListedGroup> = Vec::new();
    let mut round = 0;
    loop {
        let (code, api) = match list_groups(conn, deadline) {
            Ok((groups, error)) => {
                seen.extend(groups);
                match error {
                    Some(code) if coordinator_moved(code) => (code, "ListGroups"),
                    error => return Ok((seen, error)),
                }
            }
            Err(WireError::Broker { code, api }) if coordinator_moved(code) => (code, api),
            Err(e) => return Err(e),
        };
        round += 1;
        let gave_up = match (round < MAX_RELOCATION_ROUNDS).then(|| patience.pause(relocation_backoff(round))) {
            Some(Ok(())) => false,
            Some(Err(Stop::Fenced)) => return Err(WireError::Stopped(Stop::Fenced)),
            Some(Err(Stop::TimedOut)) | None => true,
        };
        if gave_up {
            return if seen.is_empty() { Err(WireError::Broker { code, api }) } else { Ok((seen, Some(code))) };
        }
    }
}

/// Records a failure: why, and the connection back only while it is still usable.
fn fail(
    e: WireError,
    what: &str,
    conn: BrokerConnection,
    stopped: &mut Option<Stop>,
) -> (String, Option<BrokerConnection>) {
    if let WireError::Stopped(s) = e {
        stopped.get_or_insert(s);
    }
    let usable = (!e.breaks_connection()).then_some(conn);
    (format!("{what}: {e}"), usable)
}

fn map_first<C>((why, conn): (String, Option<C>)) -> (Option<String>, Option<C>) {
    (Some(why), conn)
}
