//! Where a monitor's OAUTHBEARER tokens come from: an OIDC token endpoint,
//! asked with the client credentials grant (RFC 6749 §4.4), or, for AWS
//! MSK IAM, a SigV4 presigned request signed with the node's AWS
//! credentials (`msk_iam.rs`).
//!
//! One [`TokenSource`] per monitor, built with its client and dropped with
//! it, serves both of the monitor's paths to Kafka: librdkafka asks for a
//! token from its background thread whenever its own token is 80 % through
//! its lifetime (the refresh callback in `client.rs`; background, because
//! rdkafka's `generate_oauth_token` runs only when the main queue is polled,
//! and nothing polls a monitor's main queue between cycles), and the direct
//! group connections ask at each new connection (`wire/connection.rs`),
//! which they open again before the broker's `session_lifetime_ms` ends. A
//! token is reused until 80 % of its lifetime has passed, so both paths
//! share one token and the endpoint sees one request per lifetime.
//!
//! Failures are named: a refused client gives the endpoint's own error
//! (`invalid_client: …`), an endpoint that does not answer gives the
//! transport error, both within the caller's time. The client secret goes
//! only into the Authorization header of the request to the endpoint; the
//! tokens are bearer credentials too and are kept in [`Secret`]s.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kollector_core::{OidcConfig, SaslConfig, Secret};

/// The longest answer read from a token endpoint.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;
/// A token is replaced once this share of its lifetime has passed (as librdkafka does).
const REFRESH_AT: f64 = 0.8;
/// A failure is answered again, without asking, for this long: a monitor's
/// two paths failing at once make one request, not two.
const FAILURE_KEPT: Duration = Duration::from_secs(2);
/// Lifetime assumed for a token whose answer says none (`expires_in`
/// absent and no JWT `exp`): short, so it is asked for again soon.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(60);
/// The longest lifetime believed: an endpoint claiming more (or a huge
/// `exp`) is taken at this, so the refresh still comes and librdkafka is
/// never given a lifetime that overflows its arithmetic.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// With a valid token in hand, a refresh may take at most this long.
const REFRESH_BUDGET: Duration = Duration::from_secs(2);
/// With a valid token in hand, a failed refresh is tried again after this.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// The system's CA certificates, read once per process (reading them
/// costs tens of milliseconds, and monitors are built on the actor thread).
fn system_roots() -> ureq::tls::RootCerts {
    static ROOTS: std::sync::OnceLock<Vec<ureq::tls::Certificate<'static>>> = std::sync::OnceLock::new();
    let certs = ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect()
    });
    ureq::tls::RootCerts::new_with_certs(certs)
}

/// Why no token could be had. Display carries the endpoint and its answer,
/// never the client secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered, and not with a token (e.g. `invalid_client`).
    #[error("token endpoint {endpoint} refused client {client:?}: {why}")]
    Refused { endpoint: String, client: String, why: String },
    /// The endpoint could not be reached or did not answer in time.
    #[error("token endpoint {endpoint} could not be reached: {why}")]
    Unreachable { endpoint: String, why: String },
    /// The settings cannot make a request (a CA file that does not read).
    #[error("token endpoint {endpoint}: {why}")]
    Settings { endpoint: String, why: String },
    /// No MSK IAM token: no usable AWS credentials, or signing failed.
    #[error("AWS MSK IAM ({region}): {error}")]
    MskIam { region: String, error: crate::msk_iam::MskIamError },
}

/// A token as presented to Kafka.
#[derive(Clone)]
pub struct Token {
    /// The bearer token.
    pub value: Secret,
    /// When it stops being valid, in ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// The principal librdkafka is told (the JWT's `sub`, else the client id).
    pub principal: String,
    /// SASL extensions to send with it.
    pub extensions: Vec<(String, String)>,
    /// When it was obtained, and when it should be replaced.
    refresh_at: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("principal", &self.principal)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What the source holds between requests.
#[derive(Default)]
struct Cache {
    /// The latest token obtained (possibly past its refresh time).
    token: Option<Token>,
    /// The latest failure and when, answered again for [`FAILURE_KEPT`]
    /// when there is no valid token to fall back on.
    failed: Option<(TokenError, Instant)>,
    /// With a valid token in hand, a failed refresh is not tried again before this.
    retry_after: Option<Instant>,
    /// A request is running (on some thread, without the lock held).
    fetching: bool,
}

impl Cache {
    /// The token, if it is still valid for a moment.
    fn valid(&self) -> Option<&Token> {
        self.token.as_ref().filter(|t| unix_ms() + 1_000 < t.expires_at_ms)
    }
}

/// One monitor's token source.
pub struct TokenSource {
    issuer: Issuer,
    cache: Mutex<Cache>,
    /// Signals the end of a request to callers waiting for it.
    fetched: Condvar,
}

/// Who makes the tokens.
enum Issuer {
    Oidc(OidcClient),
    MskIam(crate::msk_iam::MskIamSigner),
}

/// An OIDC client: the endpoint and the client's credentials.
struct OidcClient {
    oidc: OidcConfig,
    client_id: String,
    client_secret: Secret,
    agent: ureq::Agent,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.issuer {
            Issuer::Oidc(c) => f
                .debug_struct("TokenSource")
                .field("token_endpoint", &c.oidc.token_endpoint)
                .field("client_id", &c.client_id)
                .finish_non_exhaustive(),
            Issuer::MskIam(s) => f.debug_struct("TokenSource").field("msk_iam", s).finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// The source for `sasl`, or None for a mechanism without tokens.
    /// Fails only on settings that cannot work (an unreadable CA file); the
    /// endpoint or the AWS chain is first asked by the first cycle (never
    /// here: this runs where blocking is not allowed).
    pub fn for_sasl(sasl: &SaslConfig) -> Result<Option<TokenSource>, TokenError> {
        if let Some(aws) = &sasl.aws {
            return Ok(Some(TokenSource::new(Issuer::MskIam(crate::msk_iam::MskIamSigner::new(&aws.region)))));
        }
        let Some(oidc) = &sasl.oidc else { return Ok(None) };
        let settings = |why: String| TokenError::Settings { endpoint: oidc.token_endpoint.clone(), why };
        let roots = match &oidc.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| settings(format!("CA file {path}: {e}")))?;
                let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(settings(format!("CA file {path}: no certificate")));
                }
                ureq::tls::RootCerts::new_with_certs(&certs)
            }
            None => system_roots(),
        };
        // Plain HTTP goes only to loopback (validation), and must stay
        // there: no proxy from the environment for it (its Basic header
        // would cross the network in clear). HTTPS may use one (CONNECT).
        let plain_http = oidc.token_endpoint.to_ascii_lowercase().starts_with("http://");
        let builder = ureq::Agent::config_builder();
        let builder = if plain_http { builder.proxy(None) } else { builder };
        let config = builder
            .http_status_as_error(false)
            // A token endpoint that redirects is misconfigured; following it
            // would send the secret where the spec did not say.
            .max_redirects(0)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .user_agent(concat!("kollector/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Some(TokenSource::new(Issuer::Oidc(OidcClient {
            oidc: oidc.clone(),
            client_id: sasl.username.clone(),
            client_secret: sasl.password.clone(),
            agent: config.into(),
        }))))
    }

    fn new(issuer: Issuer) -> TokenSource {
        TokenSource { issuer, cache: Mutex::new(Cache::default()), fetched: Condvar::new() }
    }

    /// A token valid for a while yet: the one in use until 80 % of its
    /// lifetime has passed, else a new one, asked for within `within`.
    ///
    /// One request at a time, made without the lock held: a caller that
    /// finds one running takes the current token if it is still valid, or
    /// waits for the answer no longer than its own `within`. While a valid
    /// token is in hand a refresh gets at most [`REFRESH_BUDGET`], and a
    /// failed one is tried again only after [`RETRY_EVERY`], so an endpoint
    /// that stops answering late in a token's life costs a collection
    /// nothing until the token really expires.
    pub fn token(&self, within: Duration) -> Result<Token, TokenError> {
        let deadline = Instant::now() + within;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            if let Some(t) = cache.valid().filter(|t| now < t.refresh_at) {
                return Ok(t.clone());
            }
            if cache.fetching || cache.retry_after.is_some_and(|at| now < at) {
                if let Some(t) = cache.valid() {
                    return Ok(t.clone());
                }
            }
            if !cache.fetching {
                if let Some((e, at)) = &cache.failed {
                    if at.elapsed() < FAILURE_KEPT && cache.valid().is_none() {
                        return Err(e.clone());
                    }
                }
                break;
            }
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Err(TokenError::Unreachable {
                    endpoint: self.origin(),
                    why: format!("a token request is still running after {within:?}"),
                });
            }
            cache = self.fetched.wait_timeout(cache, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        // With a valid token in hand a refresh gets a short budget (half
        // the time the token has left, at least REFRESH_BUDGET), so a slow
        // endpoint delays nobody long yet still gets its chance.
        let budget = match cache.valid() {
            Some(t) => {
                within.min(REFRESH_BUDGET.max(Duration::from_millis(t.expires_at_ms.saturating_sub(unix_ms()) / 2)))
            }
            None => within,
        };
        cache.fetching = true;
        drop(cache);
        // Clears `fetching` and wakes the waiters however the request ends
        // (a panic in it included: this also runs under catch_unwind).
        struct Fetching<'a>(&'a TokenSource);
        impl Drop for Fetching<'_> {
            fn drop(&mut self) {
                self.0.cache.lock().unwrap_or_else(|e| e.into_inner()).fetching = false;
                self.0.fetched.notify_all();
            }
        }
        let guard = Fetching(self);
        let fetched = match &self.issuer {
            Issuer::Oidc(client) => client.fetch(budget),
            Issuer::MskIam(signer) => Self::sign(signer, budget),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // The normal end: waiters woken now find the answer below in the
        // cache once this lock is released.
        std::mem::forget(guard);
        cache.fetching = false;
        self.fetched.notify_all();
        match fetched {
            Ok(t) => {
                cache.token = Some(t.clone());
                cache.failed = None;
                cache.retry_after = None;
                Ok(t)
            }
            Err(e) => {
                cache.failed = Some((e.clone(), Instant::now()));
                // A token still valid is better than none: kept until it expires.
                if let Some(t) = cache.valid().cloned() {
                    if cache.retry_after.is_none() {
                        tracing::warn!("token refresh failed, the current token stays in use until it expires: {e}");
                    }
                    cache.retry_after = Some(Instant::now() + RETRY_EVERY);
                    return Ok(t);
                }
                Err(e)
            }
        }
    }

    /// Where tokens come from (for messages): the endpoint, or MSK IAM's region.
    pub fn origin(&self) -> String {
        match &self.issuer {
            Issuer::Oidc(c) => c.oidc.token_endpoint.clone(),
            Issuer::MskIam(s) => format!("AWS MSK IAM in {}", s.region()),
        }
    }

    fn sign(signer: &crate::msk_iam::MskIamSigner, within: Duration) -> Result<Token, TokenError> {
        let started = Instant::now();
        let signed =
            signer.token(within).map_err(|error| TokenError::MskIam { region: signer.region().to_string(), error })?;
        let lifetime = Duration::from_millis(signed.expires_at_ms.saturating_sub(unix_ms()));
        tracing::debug!(region = signer.region(), access_key = %signed.access_key, lifetime_ms = lifetime.as_millis() as u64, "new MSK IAM token");
        Ok(Token {
            value: Secret::new(signed.token),
            expires_at_ms: signed.expires_at_ms,
            principal: signed.access_key,
            extensions: Vec::new(),
            refresh_at: started + lifetime.mul_f64(REFRESH_AT),
        })
    }
}

impl OidcClient {
    fn fetch(&self, within: Duration) -> Result<Token, TokenError> {
        let endpoint = self.oidc.token_endpoint.clone();
        let unreachable = |why: String| TokenError::Unreachable { endpoint: endpoint.clone(), why };
        let refused =
            |why: String| TokenError::Refused { endpoint: endpoint.clone(), client: self.client_id.clone(), why };
        // client_secret_basic (RFC 6749 §2.3.1): id and secret form-encoded, then Basic.
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, FORM).to_string();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&self.client_id),
            enc(self.client_secret.expose())
        ));
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.oidc.scope {
            form.push(("scope", scope.as_str()));
        }
        let asked = SystemTime::now();
        let started = Instant::now();
        let mut answer = self
            .agent
            .post(&endpoint)
            .config()
            .timeout_global(Some(within.max(Duration::from_millis(100))))
            .build()
            .header("Authorization", &format!("Basic {basic}"))
            .header("Accept", "application/json")
            .send_form(form)
            .map_err(|e| unreachable(e.to_string()))?;
        let status = answer.status();
        let body = answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            // RFC 6749 §5.2: {"error": "...", "error_description": "..."}.
            let code = json.get("error").and_then(|v| v.as_str()).unwrap_or("");
            let said = json.get("error_description").and_then(|v| v.as_str()).unwrap_or("");
            let why = match (code, said) {
                ("", "") => format!("HTTP {status}: {}", printable(&body, 200)),
                (c, "") => format!("HTTP {status} {}", printable(c, 100)),
                (c, d) => format!("HTTP {status} {}: {}", printable(c, 100), printable(d, 300)),
            };
            return Err(refused(why));
        }
        let Some(access) = json.get("access_token").and_then(|v| v.as_str()).filter(|t| !t.is_empty()) else {
            return Err(refused("the answer has no access_token".into()));
        };
        if !access.bytes().all(|b| b.is_ascii_graphic()) || access.len() > 16 * 1024 {
            return Err(refused("the access_token is not a bearer token (RFC 6750 characters, at most 16 KiB)".into()));
        }
        let claims = jwt_claims(access);
        let asked_ms = asked.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        // The earlier of the two the endpoint states: `expires_in` counts
        // from an instant this side can only guess (it is measured from
        // the question), the JWT's `exp` is whole seconds the broker will
        // hold it to.
        let by_answer = json
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map(|secs| asked_ms.saturating_add(secs.saturating_mul(1000)));
        let by_claim = claims.as_ref().and_then(|c| c.get("exp")?.as_u64()).map(|exp| exp.saturating_mul(1000));
        let expires_at_ms = match (by_answer, by_claim) {
            (Some(a), Some(c)) => a.min(c),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => asked_ms + UNKNOWN_LIFETIME.as_millis() as u64,
        };
        if expires_at_ms <= unix_ms() {
            return Err(refused("the token it gave has already expired".into()));
        }
        let expires_at_ms = expires_at_ms.min(unix_ms() + MAX_LIFETIME.as_millis() as u64);
        let lifetime = Duration::from_millis(expires_at_ms.saturating_sub(asked_ms));
        let principal = claims
            .as_ref()
            .and_then(|c| c.get("sub")?.as_str().map(str::to_string))
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
            .unwrap_or_else(|| self.client_id.clone());
        tracing::debug!(endpoint = %endpoint, principal = %principal, lifetime_ms = lifetime.as_millis() as u64, "new OAUTHBEARER token");
        Ok(Token {
            value: Secret::new(access),
            expires_at_ms,
            principal,
            extensions: self.oidc.extensions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            refresh_at: started + lifetime.mul_f64(REFRESH_AT),
        })
    }
}

/// What `application/x-www-form-urlencoded` leaves as it is (the unreserved set).
const FORM: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A JWT's claims, read without checking its signature: only for the
/// expiry and subject the endpoint meant (the broker checks the token).
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

/// At most `max` characters of `s`, control characters replaced: an
/// endpoint's text goes into statuses and logs.
fn printable(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The OAUTHBEARER initial client response (RFC 7628 §3.1): a GS2 header
/// without authorization identity, the extensions, then the token. Written
/// here, not with rsasl's mechanism, which wants a callback provider for a
/// message that is one line of framing.
pub fn client_first_message(token: &Token) -> Vec<u8> {
    let mut m = b"n,,\x01".to_vec();
    for (k, v) in &token.extensions {
        m.extend_from_slice(format!("{k}={v}\x01").as_bytes());
    }
    m.extend_from_slice(b"auth=Bearer ");
    m.extend_from_slice(token.value.expose().as_bytes());
    m.extend_from_slice(b"\x01\x01");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str, extensions: &[(&str, &str)]) -> Token {
        Token {
            value: Secret::new(value),
            expires_at_ms: 0,
            principal: "p".into(),
            extensions: extensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            refresh_at: Instant::now(),
        }
    }

    #[test]
    fn the_client_first_message_is_rfc_7628_framing() {
        assert_eq!(
            client_first_message(&token("abc.def.ghi", &[])),
            b"n,,\x01auth=Bearer abc.def.ghi\x01\x01".to_vec()
        );
        assert_eq!(
            client_first_message(&token("t", &[("logicalCluster", "lkc-1"), ("identityPoolId", "pool")])),
            b"n,,\x01logicalCluster=lkc-1\x01identityPoolId=pool\x01auth=Bearer t\x01\x01".to_vec()
        );
    }

    #[test]
    fn claims_are_read_from_the_payload_and_junk_is_none() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"svc","exp":1700000000}"#);
        let claims = jwt_claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(claims["sub"], "svc");
        assert_eq!(claims["exp"], 1_700_000_000u64);
        assert!(jwt_claims("opaque-token").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
        assert!(
            jwt_claims(&format!("a.{}.c", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"[1]"))).is_none()
        );
    }

    #[test]
    fn debug_shows_neither_token_nor_secret() {
        let sasl = SaslConfig {
            mechanism: kollector_core::SaslMechanism::OAuthBearer,
            username: "client".into(),
            password: Secret::new("very-secret"),
            oidc: Some(OidcConfig {
                token_endpoint: "http://127.0.0.1:1/token".into(),
                scope: None,
                extensions: Default::default(),
                ca_file: None,
            }),
            aws: None,
        };
        let source = TokenSource::for_sasl(&sasl).unwrap().unwrap();
        let shown = format!("{source:?} {:?}", token("the-token", &[]));
        assert!(!shown.contains("very-secret") && !shown.contains("the-token"), "{shown}");
    }

    #[test]
    fn an_endpoint_that_never_answers_is_named_within_the_time_given() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sasl = SaslConfig {
            mechanism: kollector_core::SaslMechanism::OAuthBearer,
            username: "client".into(),
            password: Secret::new("very-secret"),
            oidc: Some(OidcConfig {
                // A listener that never accepts: the connection completes
                // in the kernel's backlog and the request is never answered.
                token_endpoint: format!("http://127.0.0.1:{}/token", silent.local_addr().unwrap().port()),
                scope: None,
                extensions: Default::default(),
                ca_file: None,
            }),
            aws: None,
        };
        let source = TokenSource::for_sasl(&sasl).unwrap().unwrap();
        let started = Instant::now();
        let e = source.token(Duration::from_secs(2)).unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(3), "{took:?}: not the 2 s given");
        assert!(matches!(e, TokenError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1") && !e.to_string().contains("very-secret"), "{e}");
    }
}
