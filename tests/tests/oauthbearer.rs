//! OAUTHBEARER with OIDC client credentials, for real: a local identity
//! provider (`oidc.rs`) issues ES256 JWTs that live 5 s; behind TLS (tokens
//! go only over verified TLS), the SASL terminator in front of tansu checks each one against the provider's key
//! set, expiry and audience, gives every session the token's remaining
//! lifetime as `session_lifetime_ms`, and closes a connection that sends a
//! request after its session ended. Two kollector processes watch the same
//! cluster, one reading everything over its direct connections, one over
//! librdkafka (`--librdkafka-groups`); both must collect without one
//! failed cycle for more than 30 s, across several token lifetimes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kollector_proto::v1 as pb;
use kollector_tests::kafka_security::{reads_token_cluster as correct, token_cluster, OAuthBearer, TokenCluster};
use kollector_tests::kollector::{run_cli, KollectorProcess};
use kollector_tests::oidc::{JwtValidator, TokenEndpoint, AUDIENCE};
use kollector_tests::poll::wait_for_async;

const CLIENT_ID: &str = "kollector-probe";
const SECRET: &str = "oidc-client-secret-5b2e";
const TOKEN_LIFETIME: Duration = Duration::from_secs(5);

fn oauth_monitor(id: &str, cluster: &TokenCluster, endpoint: &str, secret: &str) -> String {
    format!(
        "[[monitors]]\nid = \"{id}\"\nbootstrap = [\"127.0.0.1:{}\"]\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         {}[monitors.sasl]\nmechanism = \"OAUTHBEARER\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\n\
         token_endpoint = \"{endpoint}\"\nscope = \"kafka\"\n",
        cluster.port,
        cluster.tls_table()
    )
}

struct SecureCluster {
    endpoint: TokenEndpoint,
    tokens: TokenCluster,
}

/// A local identity provider, and tansu behind a terminator checking its
/// tokens (seeded as [`kollector_tests::kafka_security::token_cluster`] says).
async fn secure_cluster(name: &str) -> SecureCluster {
    let endpoint = TokenEndpoint::start(CLIENT_ID, SECRET, TOKEN_LIFETIME);
    let validator = JwtValidator::fetch(&endpoint.jwks_url(), AUDIENCE).await;
    SecureCluster { endpoint, tokens: token_cluster(name, OAuthBearer::jwt(validator)).await }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_refreshed_for_thirty_seconds_on_the_direct_and_the_librdkafka_paths() {
    let cluster = secure_cluster("oauth-kafka").await;
    let url = cluster.endpoint.url();
    let tls_dir = cluster.tokens.tls_dir_flag();
    let direct =
        KollectorProcess::standalone_with(&oauth_monitor("direct", &cluster.tokens, &url, SECRET), &[&tls_dir]);
    let librdkafka = KollectorProcess::standalone_with(
        &oauth_monitor("librdkafka", &cluster.tokens, &url, SECRET),
        &["--librdkafka-groups", &tls_dir],
    );
    let nodes = [("direct", &direct), ("librdkafka", &librdkafka)];

    // Both collect correctly once.
    for (id, k) in nodes {
        wait_for_async(&format!("{id} to collect over OAUTHBEARER"), Duration::from_secs(30), || async move {
            let r = k.latest_by_id().await?;
            correct(r.get(id).ok_or("no result yet")?, "oauth-kafka")
        })
        .await;
    }

    // Then every cycle for 32 s (six token lifetimes) is correct: every
    // result seen is a success, and new ones keep coming.
    let window = Duration::from_secs(32);
    let started = Instant::now();
    let mut seen: BTreeMap<&str, std::collections::BTreeSet<u64>> = BTreeMap::new();
    while started.elapsed() < window {
        for (id, k) in nodes {
            let r = k.latest_by_id().await.expect("latest");
            let r = r.get(id).expect("a result");
            if let Err(why) = correct(r, "oauth-kafka") {
                panic!("{id} failed a cycle after {:?}: {why}", started.elapsed());
            }
            seen.entry(id).or_default().insert(r.attempted_at_ms);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (id, cycles) in &seen {
        assert!(cycles.len() >= 20, "{id}: only {} distinct cycles seen in {window:?}", cycles.len());
    }

    // The tokens were really refreshed and really checked.
    let o = &cluster.tokens.proxy.oauth;
    let issued = cluster.endpoint.issued.load(Ordering::SeqCst);
    let distinct = o.distinct_tokens();
    let (authenticated, reauthenticated) =
        (o.authenticated.load(Ordering::SeqCst), o.reauthenticated.load(Ordering::SeqCst));
    eprintln!(
        "tokens issued {issued}, distinct accepted {distinct}, connections authenticated {authenticated}, \
         sessions re-authenticated {reauthenticated}, refused {}, expired-session requests {}",
        o.refused.load(Ordering::SeqCst),
        o.expired_requests.load(Ordering::SeqCst)
    );
    // Two processes, each a token per ~4 s (80 % of 5 s) over 30+ s.
    assert!(issued >= 12 && distinct >= 12, "tokens were not refreshed: issued {issued}, accepted {distinct}");
    assert_eq!(o.refused.load(Ordering::SeqCst), 0, "a token was refused: {}", o.last_refusal());
    // The librdkafka path re-authenticates its sessions in place (KIP-368);
    // the direct path opens new ones before the old ones end.
    assert!(reauthenticated >= 3, "sessions were not re-authenticated: {reauthenticated}");
    assert!(authenticated >= 6, "the direct path did not open new sessions: {authenticated}");
    assert_eq!(o.expired_requests.load(Ordering::SeqCst), 0, "a request went out on an expired session");
    assert_eq!(cluster.endpoint.refused.load(Ordering::SeqCst), 0);

    // The client secret appears nowhere a user or an attacker could read it.
    for (id, k) in nodes {
        assert!(!k.log().contains(SECRET), "{id}: the client secret is in the log");
        assert!(!k.http_get("/metrics").unwrap().contains(SECRET));
        let (ok, out, err) = run_cli(&["monitor", "--server", &k.grpc_url(), "get", id, "--json"]);
        assert!(ok, "{err}");
        assert!(out.contains("\"password_set\": true") && out.contains(&url) && !out.contains(SECRET), "{out}");
        let mut client = k.client().await;
        let listed = client.list_monitors(pb::ListMonitorsRequest::default()).await.unwrap().into_inner();
        assert!(!format!("{listed:?}").contains(SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_client_secret_and_an_unreachable_endpoint_are_named_within_the_timeout() {
    let cluster = secure_cluster("oauth-refusing-kafka").await;
    // An endpoint that accepts and never answers: the request must give
    // up within the cycle's time, not hang.
    let silent = kollector_tests::net::BlackHole::start();
    let nowhere = format!("http://{}/token", silent.address());
    let config = [
        oauth_monitor("wrong-secret", &cluster.tokens, &cluster.endpoint.url(), "not-the-secret"),
        oauth_monitor("no-endpoint", &cluster.tokens, &nowhere, SECRET),
    ]
    .concat();
    let started = Instant::now();
    let k = KollectorProcess::standalone_with(&config, &[&cluster.tokens.tls_dir_flag()]);
    let results = wait_for_async("both monitors to fail with a reason", Duration::from_secs(15), || async {
        let r = k.latest_by_id().await?;
        let both = ["wrong-secret", "no-endpoint"].iter().all(|id| r.get(*id).is_some_and(|r| r.error.is_some()));
        both.then_some(r).ok_or_else(|| "not yet".to_string())
    })
    .await;
    // A cycle's timeout is 900 ms; the first failures come within a few cycles of start.
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let wrong = results["wrong-secret"].error.as_ref().unwrap();
    assert_eq!(wrong.kind, "authentication", "{wrong:?}");
    assert!(
        wrong.message.contains("invalid_client") && wrong.message.contains(CLIENT_ID),
        "the endpoint's own answer is not in {wrong:?}"
    );
    let nowhere_error = results["no-endpoint"].error.as_ref().unwrap();
    assert_eq!(nowhere_error.kind, "authentication", "{nowhere_error:?}");
    assert!(
        nowhere_error.message.contains("could not be reached") && nowhere_error.message.contains(&nowhere),
        "{nowhere_error:?}"
    );
    // The wrong secret was really sent to the endpoint and refused; no
    // token reached the broker.
    assert!(cluster.endpoint.refused.load(Ordering::SeqCst) > 0);
    assert_eq!(cluster.tokens.proxy.oauth.authenticated.load(Ordering::SeqCst), 0);
    let log = k.log();
    assert!(!log.contains(SECRET) && !log.contains("not-the-secret"), "a client secret is in the log");
    let metrics = k.http_get("/metrics").unwrap();
    assert!(metrics.contains("kind=\"authentication\""), "failures are counted by kind");
}

/// The identity provider refuses every request for a while: collection
/// goes on with the token in hand until it expires (an outage late in a
/// token's life costs nothing), then fails naming the provider's answer,
/// and comes back by itself once the provider does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identity_provider_outage_is_survived_while_the_token_lasts_and_named_after() {
    let cluster = secure_cluster("oauth-outage-kafka").await;
    let k = KollectorProcess::standalone_with(
        &oauth_monitor("outage", &cluster.tokens, &cluster.endpoint.url(), SECRET),
        &[&cluster.tokens.tls_dir_flag()],
    );
    wait_for_async("a first collection", Duration::from_secs(30), || async {
        let r = k.latest_by_id().await?;
        correct(r.get("outage").ok_or("no result yet")?, "oauth-outage-kafka")
    })
    .await;
    cluster.endpoint.refuse_all.store(true, Ordering::SeqCst);
    let outage = Instant::now();
    // Every cycle until the token in hand has expired either succeeds or
    // (once it has) names the provider's refusal; one of them must fail.
    let failed = wait_for_async("the outage to show once the token expired", Duration::from_secs(20), || async {
        let r = k.latest_by_id().await?;
        let r = r.get("outage").ok_or("no result")?;
        match &r.error {
            None => Err(format!("still collecting after {:?}", outage.elapsed())),
            Some(e) => Ok(e.clone()),
        }
    })
    .await;
    // The token lived 5 s (refreshed at 4 s): failing sooner than ~1 s into
    // the outage would mean the valid token was dropped at the first refusal.
    assert!(outage.elapsed() >= Duration::from_secs(1), "failed {:?} into the outage", outage.elapsed());
    assert_eq!(failed.kind, "authentication", "{failed:?}");
    assert!(failed.message.contains("client disabled"), "the provider's answer is not in {failed:?}");
    cluster.endpoint.refuse_all.store(false, Ordering::SeqCst);
    wait_for_async("collection to come back with the provider", Duration::from_secs(30), || async {
        let r = k.latest_by_id().await?;
        correct(r.get("outage").ok_or("no result")?, "oauth-outage-kafka")
    })
    .await;
}
