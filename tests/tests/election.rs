//! Manager leader election against a real etcd: one leader, terms that only
//! grow, takeover after a resign or a crash, and leader-guarded writes that
//! a deposed leader cannot make.

use std::time::{Duration, Instant};

use etcd_client::TxnOp;
use kollector_coordination::election::{
    current_leader, guarded_txn, Election, ElectionConfig, LeaderToken, Leadership,
};
use kollector_coordination::keys::Keys;
use kollector_coordination::CoordinationError;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::poll::wait_for_async;

const TTL: Duration = Duration::from_secs(3);

fn candidate(etcd: &EtcdServer, address: &str) -> Election {
    Election::start(ElectionConfig {
        etcd: kollector_coordination::lease::EtcdAccess::plain(vec![etcd.endpoint()]),
        prefix: "/kollector".into(),
        address: address.into(),
        ttl: TTL,
        announce: None,
    })
}

fn leading(e: &Election) -> Option<LeaderToken> {
    match &*e.state().borrow() {
        Leadership::Leader(t) => Some(t.clone()),
        _ => None,
    }
}

async fn wait_leader(who: &[&Election], secs: u64) -> (usize, LeaderToken) {
    wait_for_async("a leader", Duration::from_secs(secs), || {
        let found: Vec<(usize, LeaderToken)> =
            who.iter().enumerate().filter_map(|(i, e)| leading(e).map(|t| (i, t))).collect();
        let r = match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("no leader".to_string()),
            many => panic!("two leaders at once: {many:?}"),
        };
        async move { r }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_handover_on_resign_and_takeover_after_a_crash() {
    let etcd = EtcdServer::start();
    let a = candidate(&etcd, "10.0.0.1:7070");
    let b = candidate(&etcd, "10.0.0.2:7070");
    let (first, token1) = wait_leader(&[&a, &b], 10).await;
    assert!(token1.term > 0);
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let keys = Keys::default();
    let (address, term) = current_leader(&mut client, &keys).await.unwrap().expect("leader visible");
    assert_eq!(address, if first == 0 { "10.0.0.1:7070" } else { "10.0.0.2:7070" });
    assert_eq!(term, token1.term);

    // The leader writes under its token.
    guarded_txn(&mut client, &token1, vec![TxnOp::put("/kollector/test", "by-first", None)])
        .await
        .expect("leader write");

    // A crash (no resign): the standby takes over once the lease expires.
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    let crashed = Instant::now();
    leader.abort();
    let (_, token2) = wait_leader(&[&standby], 15).await;
    let took = crashed.elapsed();
    assert!(took <= TTL + Duration::from_secs(5), "takeover took {took:?}");
    assert!(token2.term > token1.term, "terms only grow");

    // The deposed leader's token no longer writes.
    let err = guarded_txn(&mut client, &token1, vec![TxnOp::put("/kollector/test", "stale", None)]).await.unwrap_err();
    assert_eq!(err, CoordinationError::NotLeader);
    guarded_txn(&mut client, &token2, vec![TxnOp::put("/kollector/test", "by-second", None)])
        .await
        .expect("new leader writes");
    let v = client.get("/kollector/test", None).await.unwrap();
    assert_eq!(v.kvs()[0].value_str().unwrap(), "by-second");

    // A resign hands over at once (no TTL wait).
    let c = candidate(&etcd, "10.0.0.3:7070");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(leading(&c).is_none(), "the newcomer waits while a leader holds the seat");
    let resigned = Instant::now();
    standby.leave().await;
    let (_, token3) = wait_leader(&[&c], 10).await;
    assert!(resigned.elapsed() < Duration::from_secs(2), "handover after resign took {:?}", resigned.elapsed());
    assert!(token3.term > token2.term);
    c.leave().await;
    assert!(current_leader(&mut client, &keys).await.unwrap().is_none());
}
