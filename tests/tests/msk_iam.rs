//! AWS MSK IAM, for real but without AWS: kollector signs its tokens with
//! credentials from the AWS default chain, served by a local container
//! credentials endpoint (as ECS and EKS Pod Identity serve them) or taken
//! from the environment; a SASL terminator in front of tansu checks every
//! token as an MSK broker does, recomputing the SigV4 signature with
//! botocore (`tests/msk_iam_verify.py`), refusing tokens signed with
//! expired credentials, and ending each session after 3 s (Kafka's
//! `connections.max.reauth.ms`) so that tokens are presented again and
//! again. Credentials are rotated at the endpoint while both paths (direct
//! and librdkafka) collect; no cycle may fail, and the new credentials must
//! sign the next tokens.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::aws_msk::{
    isolated_aws_env, static_env, AwsCredentials, ContainerCredentials, KnownKeys, MskIamVerifier,
};
use kollector_tests::kafka_security::{
    reads_token_cluster as correct, token_cluster, OAuthBearer, TokenCheck, TokenCluster,
};
use kollector_tests::kollector::KollectorProcess;
use kollector_tests::poll::wait_for_async;

const REGION: &str = "us-east-1";

fn msk_monitor(id: &str, cluster: &TokenCluster, region: &str) -> String {
    format!(
        "[[monitors]]\nid = \"{id}\"\nbootstrap = [\"127.0.0.1:{}\"]\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         {}[monitors.sasl]\nmechanism = \"AWS_MSK_IAM\"\naws_region = \"{region}\"\n",
        cluster.port,
        cluster.tls_table()
    )
}

fn node(cluster: &TokenCluster, config: &str, extra: &[&str], env: &[(&'static str, String)]) -> KollectorProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tls_dir = cluster.tls_dir_flag();
    let mut flags = vec![tls_dir.as_str()];
    flags.extend_from_slice(extra);
    KollectorProcess::standalone_with_env(config, &flags, &env)
}

/// tansu behind an MSK IAM terminator for `REGION`, every token checked
/// with botocore against the credentials in `keys` (seeded as
/// [`kollector_tests::kafka_security::token_cluster`] says).
async fn msk_cluster(name: &str, keys: &KnownKeys) -> TokenCluster {
    let verifier = MskIamVerifier::start(REGION, keys);
    let oauth =
        OAuthBearer { check: TokenCheck::MskIam(Arc::new(verifier)), max_session: Some(Duration::from_secs(3)) };
    token_cluster(name, oauth).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_credentials_rotate_under_both_paths_and_environment_keys_sign_too() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KnownKeys::new(dir.path());
    // Temporary credentials that expire 25 s from now; the test rotates
    // them well before, as the ECS agent does.
    let first = AwsCredentials::temporary(Duration::from_secs(25));
    let container = ContainerCredentials::start(dir.path(), first.clone(), &keys);
    let long_term = AwsCredentials::long_term();
    keys.add(&long_term);
    let cluster = msk_cluster("msk-kafka", &keys).await;

    let direct = node(&cluster, &msk_monitor("direct", &cluster, REGION), &[], &container.env());
    let librdkafka =
        node(&cluster, &msk_monitor("librdkafka", &cluster, REGION), &["--librdkafka-groups"], &container.env());
    let from_env = node(&cluster, &msk_monitor("from-env", &cluster, REGION), &[], &static_env(&long_term));
    let nodes = [("direct", &direct), ("librdkafka", &librdkafka), ("from-env", &from_env)];
    for (id, k) in nodes {
        let proxy = &cluster.proxy;
        wait_for_async(&format!("{id} to collect over MSK IAM"), Duration::from_secs(20), || async move {
            let r = k.latest_by_id().await?;
            correct(r.get(id).ok_or("no result yet")?, "msk-kafka")
                .map_err(|e| format!("{e}; the broker's last refusal: {}", proxy.oauth.last_refusal()))
        })
        .await;
    }
    let o = &cluster.proxy.oauth;
    assert!(o.tokens_of(&first.access_key) > 0, "no token signed with the container credentials");
    assert!(o.tokens_of(&long_term.access_key) > 0, "no token signed with the environment's keys");
    assert!(container.asked() > 0);

    // Rotate, then watch every cycle of every node until the new
    // credentials have signed tokens and the old ones have expired.
    let second = AwsCredentials::temporary(Duration::from_secs(120));
    container.rotate(second.clone());
    let rotated = Instant::now();
    let old_expiry = first.expires.unwrap();
    let mut seen: BTreeMap<&str, std::collections::BTreeSet<u64>> = BTreeMap::new();
    loop {
        for (id, k) in nodes {
            let r = k.latest_by_id().await.expect("latest");
            let r = r.get(id).expect("a result");
            if let Err(why) = correct(r, "msk-kafka") {
                panic!("{id} failed a cycle {:?} after the rotation: {why}", rotated.elapsed());
            }
            seen.entry(id).or_default().insert(r.attempted_at_ms);
        }
        let new_tokens = o.tokens_of(&second.access_key);
        let old_gone = std::time::SystemTime::now() > old_expiry + Duration::from_secs(4);
        if new_tokens >= 4 && old_gone {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(45),
            "after {:?}: {new_tokens} tokens signed with the new credentials; tokens by key: {:?}; last refusal: {}",
            rotated.elapsed(),
            o.principals.lock().unwrap(),
            o.last_refusal()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (id, cycles) in &seen {
        assert!(cycles.len() >= 15, "{id}: only {} cycles seen after the rotation", cycles.len());
    }
    eprintln!(
        "tokens by access key {:?}; connections authenticated {}, re-authenticated {}, refused {}, container endpoint asked {} times",
        o.principals.lock().unwrap(),
        o.authenticated.load(Ordering::SeqCst),
        o.reauthenticated.load(Ordering::SeqCst),
        o.refused.load(Ordering::SeqCst),
        container.asked()
    );
    assert_eq!(o.refused.load(Ordering::SeqCst), 0, "a token was refused: {}", o.last_refusal());
    assert_eq!(o.expired_requests.load(Ordering::SeqCst), 0, "a request went out on an expired session");
    assert!(o.reauthenticated.load(Ordering::SeqCst) > 0, "no session was re-authenticated in place");
    // No secret key or session token in any log or metric.
    for (id, k) in nodes {
        let out = format!("{}{}", k.log(), k.http_get("/metrics").unwrap());
        for c in [&first, &second, &long_term] {
            assert!(!out.contains(&c.secret), "{id}: a secret access key is in the output");
            if let Some(t) = &c.session_token {
                assert!(!out.contains(t.as_str()), "{id}: a session token is in the output");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_region_expired_credentials_and_no_credentials_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KnownKeys::new(dir.path());
    let expired = ContainerCredentials::start(dir.path(), AwsCredentials::expired(), &keys);
    let long_term = AwsCredentials::long_term();
    keys.add(&long_term);
    let cluster = msk_cluster("msk-refusing-kafka", &keys).await;
    let started = Instant::now();
    let with_expired = node(&cluster, &msk_monitor("expired", &cluster, REGION), &[], &expired.env());
    let with_keys = node(&cluster, &msk_monitor("wrong-region", &cluster, "eu-west-1"), &[], &static_env(&long_term));
    let without = node(&cluster, &msk_monitor("no-credentials", &cluster, REGION), &[], &isolated_aws_env());
    let e = failed(&with_expired, "expired").await;
    assert_eq!(e.kind, "authentication", "{e:?}");
    assert!(e.message.contains("expired") && e.message.contains("AWS"), "{e:?}");
    let e = failed(&without, "no-credentials").await;
    assert_eq!(e.kind, "authentication", "{e:?}");
    assert!(e.message.contains("AWS credentials"), "{e:?}");
    let e = failed(&with_keys, "wrong-region").await;
    assert_eq!(e.kind, "authentication", "{e:?}");
    assert!(e.message.contains("eu-west-1") && e.message.contains(REGION), "the broker's reason is not in {e:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    // Only the wrong region reached the broker, and was refused there.
    let o = &cluster.proxy.oauth;
    assert!(o.refused.load(Ordering::SeqCst) > 0 && o.authenticated.load(Ordering::SeqCst) == 0);
    assert!(o.last_refusal().contains("credential scope region eu-west-1"), "{}", o.last_refusal());
}

/// The first error `id` reports on `k`.
async fn failed(k: &KollectorProcess, id: &str) -> pb::CollectError {
    wait_for_async(&format!("{id} to fail with a reason"), Duration::from_secs(20), || async {
        let r = k.latest_by_id().await?;
        r.get(id).and_then(|r| r.error.clone()).ok_or_else(|| format!("{:?}", r.get(id)))
    })
    .await
}
