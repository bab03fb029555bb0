//! A local OIDC identity provider for tests: a token endpoint that issues
//! short-lived JWTs for the client credentials grant, signed with an ES256
//! key made at start, and publishes that key as a JWK set. The OAUTHBEARER
//! side of [`crate::kafka_security::SaslProxy`] checks every token against
//! that key set (with `jsonwebtoken`, a library kollector itself does not
//! use: the product only fetches tokens, it never reads their signatures).
//!
//! The endpoint counts what it issued and refused, can be told to refuse
//! every client, and knows one client (id and secret) given at start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;

/// The audience every token names and the broker side expects.
pub const AUDIENCE: &str = "kafka";
const KEY_ID: &str = "kollector-test-key";

pub struct TokenEndpoint {
    pub addr: SocketAddr,
    pub issued: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    /// Refuse every request (as an identity provider whose client was disabled).
    pub refuse_all: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Issuer {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    key: jsonwebtoken::EncodingKey,
    issuer: String,
    issued: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    refuse_all: Arc<AtomicBool>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<serde_json::Value>) {
    let refuse = |why: &str| {
        issuer.refused.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client", "error_description": why})))
    };
    let form: Vec<(String, String)> =
        body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        issuer.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type"})));
    }
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return refuse("no client credentials in the Authorization header");
    };
    if issuer.refuse_all.load(Ordering::SeqCst) {
        return refuse("client disabled");
    }
    if decode(id) != issuer.client_id || decode(secret) != issuer.client_secret {
        return refuse("Invalid client or client credentials");
    }
    let n = issuer.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let iat = now_secs();
    let claims = json!({
        "iss": issuer.issuer,
        "sub": issuer.client_id,
        "aud": AUDIENCE,
        "iat": iat,
        "exp": iat + issuer.lifetime.as_secs(),
        "jti": format!("token-{n}"),
        "scope": field("scope").unwrap_or_default(),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    match jsonwebtoken::encode(&header, &claims, &issuer.key) {
        Ok(jwt) => (
            StatusCode::OK,
            Json(json!({"access_token": jwt, "token_type": "Bearer", "expires_in": issuer.lifetime.as_secs()})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "server_error", "error_description": e.to_string()})),
        ),
    }
}

impl TokenEndpoint {
    /// Serves `POST /token` for one client, issuing tokens that live `lifetime`
    /// (whole seconds), and `GET /jwks`.
    pub fn start(client_id: &str, client_secret: &str, lifetime: Duration) -> TokenEndpoint {
        let key = rcgen::KeyPair::generate().expect("ES256 key");
        let raw = key.public_key_raw();
        // An uncompressed P-256 point: 0x04, X (32 bytes), Y (32 bytes).
        assert_eq!(raw.len(), 65, "P-256 public key");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KEY_ID,
            "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
        }]});
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token endpoint");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let issued = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let refuse_all = Arc::new(AtomicBool::new(false));
        let issuer = Arc::new(Issuer {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime,
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("encoding key"),
            issuer: format!("http://{addr}"),
            issued: issued.clone(),
            refused: refused.clone(),
            refuse_all: refuse_all.clone(),
        });
        let served = jwks;
        let app = Router::new()
            .route("/token", post(token))
            .route("/jwks", get(move || async move { Json(served.clone()) }))
            .with_state(issuer);
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenEndpoint { addr, issued, refused, refuse_all, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }
}

/// Checks OAUTHBEARER tokens as a Kafka broker's
/// `OAuthBearerValidatorCallbackHandler` does: the signature against the
/// identity provider's key set (fetched from its JWKS URL), expiry (no
/// clock skew allowed: the tests make tokens live seconds) and audience.
/// Returns the token's expiry in ms since the epoch, and its `jti`.
#[derive(Clone)]
pub struct JwtValidator {
    keys: Arc<jsonwebtoken::jwk::JwkSet>,
    audience: String,
}

impl JwtValidator {
    /// Fetches the key set from `jwks_url` over HTTP.
    pub async fn fetch(jwks_url: &str, audience: &str) -> JwtValidator {
        let url = jwks_url.to_string();
        let body = tokio::task::spawn_blocking(move || {
            ureq::get(&url).call().expect("JWKS answer").body_mut().read_to_string().expect("JWKS body")
        })
        .await
        .expect("JWKS fetch");
        let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&body).expect("a JWK set");
        JwtValidator { keys: Arc::new(keys), audience: audience.into() }
    }

    pub fn check(&self, token: &str) -> Result<(u64, String), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        let kid = header.kid.ok_or("no kid")?;
        let jwk = self.keys.find(&kid).ok_or_else(|| format!("unknown key {kid}"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[&self.audience]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation).map_err(|e| e.to_string())?;
        let exp = data.claims.get("exp").and_then(|v| v.as_u64()).ok_or("no exp")?;
        let jti = data.claims.get("jti").and_then(|v| v.as_str()).unwrap_or("").to_string();
        Ok((exp * 1000, jti))
    }
}
