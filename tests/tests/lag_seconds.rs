//! Lag in seconds and verdicts from a real broker and real commits, with no
//! extra Kafka request: the monitor's own offset history.

use std::time::{Duration, Instant};

use kollector_devkit::tansu::TansuBroker;
use kollector_tests::kafka_fixtures::{commit_offsets, create_topic, produce_records};
use kollector_tests::kollector::{monitor_toml, KollectorProcess};
use kollector_tests::poll::wait_for;

/// Waits until `monitor` has collected at least `n` times (its history has points).
fn wait_cycles(k: &KollectorProcess, monitor: &str, n: f64) {
    wait_for("a few cycles of history", Duration::from_secs(20), || {
        k.metrics()
            .value("kollector_collections_total", &[("monitor", monitor)])
            .filter(|c| *c >= n)
            .map(|_| ())
            .ok_or(String::new())
    });
}

#[test]
fn lag_seconds_tracks_the_age_of_the_committed_offset_and_verdicts_follow_the_consumer() {
    let broker = TansuBroker::start("lagsec-kafka");
    let bs = broker.bootstrap();
    create_topic(&bs, "events", 1);
    produce_records(&bs, "events", 0, 5);
    commit_offsets(&bs, "billing", &[("events", 0, 5)]);
    let k = KollectorProcess::standalone(&monitor_toml("lagsec", &bs, "1s"));
    let series = |name: &str| -> Option<f64> {
        k.metrics().value(
            name,
            &[("monitor", "lagsec"), ("consumergroup", "billing"), ("topic", "events"), ("partition", "0")],
        )
    };
    // Caught up: 0 seconds, OK.
    wait_for("lag seconds 0 while caught up", Duration::from_secs(30), || {
        (series("kafka_consumergroup_lag_seconds") == Some(0.0)
            && series("kafka_consumergroup_partition_status") == Some(1.0))
        .then_some(())
        .ok_or(format!(
            "{:?} {:?}",
            series("kafka_consumergroup_lag_seconds"),
            series("kafka_consumergroup_partition_status")
        ))
    });
    // New records the group does not consume: lag seconds is their age.
    wait_cycles(&k, "lagsec", 3.0);
    produce_records(&bs, "events", 0, 5);
    let produced = Instant::now();
    let mut checked = 0;
    while checked < 5 {
        std::thread::sleep(Duration::from_millis(700));
        let Some(lag) = series("kafka_consumergroup_lag_seconds") else { continue };
        if lag == 0.0 {
            continue; // the first cycle after the produce has not run yet
        }
        let age = produced.elapsed().as_secs_f64();
        // The history samples once per cycle (1 s): the reach time of the
        // committed offset is known to within one interval.
        assert!(lag <= age + 1.5 && lag >= age - 2.5, "lag {lag} s for records {age:.1} s old");
        assert_eq!(series("kafka_consumergroup_lag_seconds_lower_bound"), Some(0.0));
        checked += 1;
    }
    // Nothing moves for a whole window (10 cycles): the consumer is stopped.
    wait_for("STOP", Duration::from_secs(30), || {
        (series("kafka_consumergroup_partition_status") == Some(4.0))
            .then_some(())
            .ok_or(format!("{:?}", series("kafka_consumergroup_partition_status")))
    });
    assert_eq!(
        k.metrics().value("kafka_consumergroup_status", &[("monitor", "lagsec"), ("consumergroup", "billing")]),
        Some(3.0)
    );
    // It catches up: OK again, 0 seconds.
    commit_offsets(&bs, "billing", &[("events", 0, 10)]);
    wait_for("OK after catching up", Duration::from_secs(30), || {
        (series("kafka_consumergroup_partition_status") == Some(1.0)
            && series("kafka_consumergroup_lag_seconds") == Some(0.0))
        .then_some(())
        .ok_or(String::new())
    });
    assert_eq!(series("kafka_consumergroup_retention_margin"), Some(10.0));
}

#[test]
fn lag_history_survives_a_standalone_restart() {
    let broker = TansuBroker::start("lagsec-restart");
    let bs = broker.bootstrap();
    create_topic(&bs, "events", 1);
    produce_records(&bs, "events", 0, 5);
    commit_offsets(&bs, "billing", &[("events", 0, 5)]);
    let mut k = KollectorProcess::standalone(&monitor_toml("lagsec", &bs, "1s"));
    let labels = [("monitor", "lagsec"), ("consumergroup", "billing"), ("topic", "events"), ("partition", "0")];
    wait_cycles(&k, "lagsec", 3.0);
    produce_records(&bs, "events", 0, 5);
    let produced = Instant::now();
    wait_for("lag seconds before the restart", Duration::from_secs(20), || {
        k.metrics()
            .value("kafka_consumergroup_lag_seconds", &labels)
            .filter(|l| *l > 0.0)
            .map(|_| ())
            .ok_or(String::new())
    });
    assert!(k.terminate(), "clean stop");
    k.respawn();
    // Without the saved history the first cycles would have one or two points
    // above the committed offset: only a lower bound. With it: the exact age.
    let (lag, bound) = wait_for("lag seconds after the restart", Duration::from_secs(20), || {
        let m = k.metrics();
        match (
            m.value("kafka_consumergroup_lag_seconds", &labels),
            m.value("kafka_consumergroup_lag_seconds_lower_bound", &labels),
        ) {
            (Some(l), Some(b)) => Ok((l, b)),
            other => Err(format!("{other:?}")),
        }
    });
    let age = produced.elapsed().as_secs_f64();
    assert_eq!(bound, 0.0, "the history was lost: lag {lag} is only a lower bound");
    assert!(lag <= age + 1.5 && lag >= age - 2.5, "lag {lag} s for records {age:.1} s old");
}

/// Scripted consumers for the verdicts that need a moving log, side by side
/// on one broker while records keep arriving: one commits the same offset
/// (STALL), one keeps committing but falls further behind (WARN), one jumps
/// back and stays there (REWIND), one keeps up (OK).
#[test]
fn scripted_consumers_reach_stall_warn_rewind_and_ok() {
    let broker = TansuBroker::start("verdict-kafka");
    let bs = broker.bootstrap();
    create_topic(&bs, "events", 1);
    produce_records(&bs, "events", 0, 40);
    commit_offsets(&bs, "stalled", &[("events", 0, 10)]);
    commit_offsets(&bs, "rewound", &[("events", 0, 30)]);
    let k = KollectorProcess::standalone(&monitor_toml("verdicts", &bs, "1s"));
    let status = |group: &str| {
        k.metrics().value(
            "kafka_consumergroup_partition_status",
            &[("monitor", "verdicts"), ("consumergroup", group), ("topic", "events"), ("partition", "0")],
        )
    };
    wait_cycles(&k, "verdicts", 2.0);
    commit_offsets(&bs, "rewound", &[("events", 0, 5)]);
    // Records keep arriving, 3 per cycle; "behind" commits 1 per cycle, "keeping-up" commits all.
    let mut produced = 40i64;
    let mut behind = 20i64;
    // Each group must show its verdict at some point (REWIND lasts only while
    // the drop is in the window; STALL and WARN need a full window first).
    let want = [("stalled", 5.0), ("behind", 2.0), ("rewound", 6.0), ("keeping-up", 1.0)];
    let mut reached = std::collections::BTreeSet::new();
    let mut seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut caught_up = false;
    while Instant::now() < deadline {
        produce_records(&bs, "events", 0, 3);
        produced += 3;
        behind += 1;
        commit_offsets(&bs, "behind", &[("events", 0, behind)]);
        commit_offsets(&bs, "keeping-up", &[("events", 0, produced)]);
        // Once stalled has shown STALL it catches up: the verdict must leave STALL for OK.
        let stalled_at = if caught_up { produced } else { 10 };
        commit_offsets(&bs, "stalled", &[("events", 0, stalled_at)]);
        for (group, code) in want {
            let now = status(group);
            if now == Some(code) {
                reached.insert(group);
            }
            seen.insert(group, now);
        }
        if reached.contains("stalled") {
            caught_up = true;
        }
        if reached.len() == want.len() && caught_up && seen["stalled"] == Some(1.0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    panic!("verdicts not reached within 60 s: reached {reached:?}, now {seen:?} (want stalled 5 STALL then 1 OK, behind 2 WARN, rewound 6 REWIND, keeping-up 1 OK)");
}
