//! A cluster with etcd authentication on and SECURITY.md's per-role
//! permissions: the manager's user may read and write everything under the
//! prefix; each collector's user may read only the election (the current
//! leader's term) and read and write only its own record
//! (`/kollector/collectors/<id>`) and its own drain mark
//! (`/kollector/draining/<id>`, written when it leaves). Monitors run; a
//! collector's credentials can neither read the monitors nor write, delete
//! or revoke anything of another collector's, a monitor or an assignment;
//! a collector that leaves still drains (its mark is written, its monitors
//! move) and revokes its own lease (its keys go at once, long before the
//! 30 s TTL).

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Permission};
use kollector_tests::cluster::Cluster;
use kollector_tests::etcd::EtcdServer;
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;
use kollector_tests::tansu::TansuBroker;

const PASSWORD: &str = "etcd-auth-test-password";
const PREFIX: &str = "/kollector/";
/// Long, so keys gone soon after a collector leaves prove it revoked its lease.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Users and roles as SECURITY.md gives them, then auth on.
async fn set_up_auth(endpoint: &str, collectors: &[&str]) {
    let mut root = Client::connect([endpoint], None).await.expect("etcd");
    root.user_add("root", PASSWORD, None).await.expect("root user");
    root.user_grant_role("root", "root").await.expect("root role");
    root.role_add("kollector-manager").await.expect("manager role");
    root.role_grant_permission("kollector-manager", Permission::read_write(PREFIX).with_prefix())
        .await
        .expect("manager permission");
    root.user_add("manager", PASSWORD, None).await.expect("manager user");
    root.user_grant_role("manager", "kollector-manager").await.expect("grant");
    for id in collectors {
        let role = format!("kollector-collector-{id}");
        root.role_add(role.as_str()).await.expect("collector role");
        for permission in [
            Permission::read(format!("{PREFIX}manager/election")).with_prefix(),
            Permission::read_write(format!("{PREFIX}collectors/{id}")),
            Permission::read_write(format!("{PREFIX}draining/{id}")),
        ] {
            root.role_grant_permission(role.as_str(), permission).await.expect("collector permission");
        }
        root.user_add(*id, PASSWORD, None).await.expect("collector user");
        root.user_grant_role(*id, role.as_str()).await.expect("grant");
    }
    root.auth_enable().await.expect("auth on");
}

async fn as_user(endpoint: &str, user: &str) -> Client {
    Client::connect([endpoint], Some(ConnectOptions::new().with_user(user, PASSWORD))).await.expect("etcd as user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_auth_a_collector_writes_only_its_own_keys_and_still_drains() {
    let etcd = EtcdServer::start();
    set_up_auth(&etcd.endpoint(), &["c1", "c2"]).await;
    // Without credentials nothing is readable any more.
    let mut anonymous = Client::connect([etcd.endpoint()], None).await.expect("etcd");
    assert!(anonymous.get(PREFIX, None).await.is_err(), "auth is on");

    let env = [("KOLLECTOR_ETCD_PASSWORD", PASSWORD)];
    let manager = KollectorProcess::manager_with_env(&etcd.endpoint(), &["--etcd-user=manager"], &env);
    let collector = |id: &str| {
        let user = format!("--etcd-user={id}");
        KollectorProcess::collector_with_env(&etcd.endpoint(), id, LEASE_TTL, &[user.as_str()], &env)
    };
    let collectors = [("c1".to_string(), collector("c1")), ("c2".to_string(), collector("c2"))].into_iter().collect();
    let cluster = Cluster { etcd, broker: TansuBroker::start("etcd-auth-kafka"), manager, collectors, ttl: LEASE_TTL };
    cluster.registered(30).await;
    cluster.create_monitors(6).await;
    let owners = cluster.stable(6, 60).await;
    assert!(owners.values().any(|c| c == "c1") && owners.values().any(|c| c == "c2"), "{owners:?}");

    // c1's credentials: its own record yes (read), anyone else's keys no.
    let endpoint = cluster.etcd.endpoint();
    let mut c1 = as_user(&endpoint, "c1").await;
    assert!(c1.get(format!("{PREFIX}collectors/c1"), None).await.is_ok());
    let denied = |what: &str, r: Result<(), etcd_client::Error>| {
        let e = r.expect_err(what);
        assert!(e.to_string().contains("permission denied"), "{what}: {e}");
    };
    denied("read the monitors", c1.get(format!("{PREFIX}monitors/"), None).await.map(|_| ()));
    denied("delete c2's record", c1.delete(format!("{PREFIX}collectors/c2"), None).await.map(|_| ()));
    let mut manager_user = as_user(&endpoint, "manager").await;
    let c2_lease = manager_user.get(format!("{PREFIX}collectors/c2"), None).await.expect("read").kvs()[0].lease();
    denied("revoke c2's lease", c1.lease_revoke(c2_lease).await.map(|_| ()));
    for key in [
        format!("{PREFIX}collectors/c2"),
        format!("{PREFIX}monitors/m0"),
        format!("{PREFIX}assignments/m0"),
        format!("{PREFIX}draining/c2"),
        format!("{PREFIX}revoked/c2"),
    ] {
        let e = c1.put(key.as_str(), "forged", None).await.expect_err("refused");
        assert!(e.to_string().contains("permission denied"), "{key}: {e}");
    }

    // c1 leaves: its drain mark is written under its own user, its monitors
    // move to c2, and it exits cleanly.
    let mut cluster = cluster;
    let mut leaving = cluster.collectors.remove("c1").expect("c1");
    assert!(leaving.terminate(), "c1 exits cleanly after draining; log:\n{}", leaving.log());
    let log = leaving.log();
    assert!(!log.contains("permission denied") && !log.contains("cannot mark"), "{log}");
    assert!(log.contains("drained: every monitor runs elsewhere"), "{log}");
    let owners = cluster.stable(6, 60).await;
    assert!(owners.values().all(|c| c == "c2"), "{owners:?}");
    // Its lease revoked on leaving: its record and drain mark are gone now,
    // not when the 30 s TTL runs out.
    wait_for_async("c1's record and lease-bound drain mark gone", Duration::from_secs(3), || {
        let mut m = manager_user.clone();
        async move {
            let mut left = 0;
            for key in [format!("{PREFIX}collectors/c1"), format!("{PREFIX}draining/c1")] {
                left += m.get(key, None).await.map_err(|e| e.to_string())?.kvs().len();
            }
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} keys left"))
            }
        }
    })
    .await;
    let _ = manager_user.get(PREFIX, None).await.expect("the manager reads");
}
