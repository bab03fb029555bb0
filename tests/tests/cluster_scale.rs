//! Cluster mode at 1,000 monitors: a fifth collector joining, a drain and a
//! SIGKILL of the busiest collector, each proven against the real processes:
//! every affected monitor ends up on exactly one live collector, with a
//! fresh result accepted by the manager, within TTL + 5 s; and at no sample
//! along the way does any monitor appear on two live collectors.
//!
//! (Before the reconciler chunked its writes, etcd refused every pass past
//! 128 changed assignments and not one monitor moved.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::cluster::{latest, loads, owners_among, unix_ms, Cluster, TTL};
use kollector_tests::poll::wait_for_async;

const MONITORS: usize = 1000;

/// Waits until every monitor in `moving` runs on exactly one live collector
/// other than `away_from` (if given) with a result the manager accepted
/// after `since_ms`; panics at once if any monitor is ever seen on two live
/// collectors. Returns the time it took and the new owners.
/// Which monitors must move: a known set, or (a join) at least `min` of
/// those that end up on `to`.
enum Moving<'a> {
    These(&'a [String]),
    OntoAtLeast { to: &'a str, min: usize },
}

async fn converge(
    cluster: &Cluster,
    live: &BTreeSet<String>,
    moving: Moving<'_>,
    away_from: Option<&str>,
    since_ms: u64,
    started: Instant,
    what: &str,
) -> (Duration, BTreeMap<String, String>) {
    let limit = (TTL + Duration::from_secs(5)).saturating_sub(started.elapsed());
    let owners = wait_for_async(what, limit, || async {
        let owners = owners_among(cluster.collectors.iter().filter(|(id, _)| live.contains(*id))).await;
        if let Some((m, on)) = owners.iter().find(|(_, on)| on.len() > 1) {
            panic!("{what}: monitor {m} runs on {on:?} at once");
        }
        let results = latest(&cluster.manager).await;
        let by_monitor: BTreeMap<&str, &pb::MonitorResult> =
            results.iter().map(|r| (r.monitor_id.as_str(), r)).collect();
        let mut waiting = Vec::new();
        let moving: Vec<String> = match &moving {
            Moving::These(list) => list.to_vec(),
            Moving::OntoAtLeast { to, min } => {
                let on: Vec<String> =
                    owners.iter().filter(|(_, c)| c.iter().any(|c| c == to)).map(|(m, _)| m.clone()).collect();
                if on.len() < *min {
                    return Err(format!("{to} runs {} of at least {min}", on.len()));
                }
                on
            }
        };
        for m in &moving {
            let owner = owners.get(m).and_then(|on| on.first());
            let fresh = by_monitor.get(m.as_str()).is_some_and(|r| {
                r.snapshot.is_some()
                    && r.attempted_at_ms > since_ms
                    && Some(&r.collector_id) == owner
                    && Some(r.collector_id.as_str()) != away_from
            });
            if owner.is_none() || !fresh || owner.map(String::as_str) == away_from {
                waiting.push(m.clone());
            }
        }
        if waiting.is_empty() {
            Ok(owners.into_iter().map(|(m, on)| (m, on[0].clone())).collect::<BTreeMap<_, _>>())
        } else {
            Err(format!(
                "{} of {} not yet moved with a fresh result, e.g. {:?}",
                waiting.len(),
                moving.len(),
                &waiting[..waiting.len().min(5)]
            ))
        }
    })
    .await;
    (started.elapsed(), owners)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_monitors_join_drain_and_sigkill_each_converge_within_ttl_plus_five_seconds() {
    let mut cluster = Cluster::start(4);
    // Long intervals: the load is in the moves, not in steady collection.
    cluster.create_monitors_with(MONITORS, "60s").await;
    let before = cluster.stable(MONITORS, 240).await;
    let l = loads(&before);
    assert_eq!(l.len(), 4, "every collector has work: {l:?}");
    let mut live: BTreeSet<String> = cluster.collectors.keys().cloned().collect();

    // 1. A fifth collector joins: it takes about a fifth, and only moves to it happen.
    let since = unix_ms();
    cluster.add_collector("c5");
    // Counted from when c5 is up (the harness waits for its /healthz).
    let started = Instant::now();
    live.insert("c5".into());
    let onto = Moving::OntoAtLeast { to: "c5", min: MONITORS / 5 - 10 };
    let (took, _) = converge(&cluster, &live, onto, None, since, started, "join: c5's share").await;
    // Converged means c5 holds about its share; the last few moves may still
    // be under way. Take the settled placement as the base for what follows.
    let after_join = cluster.stable(MONITORS, 60).await;
    let moved: Vec<&String> = after_join.keys().filter(|m| before.get(*m) != after_join.get(*m)).collect();
    assert!(moved.len() as f64 <= 1.1 * MONITORS as f64 / 5.0, "{} moved on join", moved.len());
    assert!(moved.iter().all(|m| after_join[*m] == "c5"), "a join moves monitors only to the newcomer");
    eprintln!("join: {} monitors to c5 with fresh results in {took:?}", moved.len());

    // 2. Drain c1: its monitors move elsewhere, one owner each, fresh results.
    let on_c1: Vec<String> = after_join.iter().filter(|(_, c)| *c == "c1").map(|(m, _)| m.clone()).collect();
    let since = unix_ms();
    let mut client = cluster.manager.client().await;
    client.drain(pb::DrainRequest { collector_id: "c1".into(), undo: false }).await.expect("drain c1");
    let started = Instant::now();
    let (took, after_drain) =
        converge(&cluster, &live, Moving::These(&on_c1), Some("c1"), since, started, "drain of c1").await;
    let moved: Vec<&String> = after_drain.keys().filter(|m| after_join.get(*m) != after_drain.get(*m)).collect();
    assert!(moved.iter().all(|m| on_c1.contains(m)), "a drain moves only the drained collector's monitors");
    eprintln!("drain: {} monitors off c1 with fresh results in {took:?}", on_c1.len());
    client.drain(pb::DrainRequest { collector_id: "c1".into(), undo: true }).await.expect("undo drain");

    // 3. SIGKILL the busiest collector.
    let after_undo = wait_for_async("c1 to take its share again", Duration::from_secs(30), || async {
        let owners = cluster.stable(MONITORS, 30).await;
        let on_c1 = owners.values().filter(|c| *c == "c1").count();
        if on_c1 >= MONITORS / 5 - 10 {
            Ok(owners)
        } else {
            Err(format!("c1 runs {on_c1}"))
        }
    })
    .await;
    let (busiest, count) = loads(&after_undo).into_iter().max_by_key(|(_, n)| *n).expect("loads");
    let victims: Vec<String> = after_undo.iter().filter(|(_, c)| **c == busiest).map(|(m, _)| m.clone()).collect();
    assert_eq!(victims.len(), count);
    let since = unix_ms();
    let started = Instant::now();
    cluster.collectors.get_mut(&busiest).expect("busiest").kill();
    live.remove(&busiest);
    let (took, after_kill) =
        converge(&cluster, &live, Moving::These(&victims), Some(&busiest), since, started, "SIGKILL failover").await;
    let moved: Vec<&String> = after_kill.keys().filter(|m| after_undo.get(*m) != after_kill.get(*m)).collect();
    assert!(moved.iter().all(|m| victims.contains(m)), "only the dead collector's monitors move");
    assert_eq!(after_kill.len(), MONITORS, "no monitor lost");
    eprintln!("SIGKILL of {busiest}: {} monitors failed over with fresh results in {took:?}", victims.len());
}
