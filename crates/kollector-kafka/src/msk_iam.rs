//! AWS MSK IAM tokens: what an MSK cluster with IAM access control takes
//! over SASL/OAUTHBEARER.
//!
//! A token is a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/
//! ?Action=kafka-cluster:Connect` (service `kafka-cluster`, valid 900 s,
//! empty payload), with a `User-Agent` query parameter added after signing
//! (unsigned, as AWS's own signers do), the whole URL base64url-encoded
//! without padding. The broker recomputes the signature; that is the whole
//! authentication. Signing is `aws-sigv4`'s; nothing of SigV4 is written here.
//!
//! Credentials come from the AWS default chain of the node (`aws-config`):
//! environment, shared profile, web identity (EKS IRSA), container
//! credentials (ECS, EKS Pod Identity), IMDSv2. One provider per monitor,
//! built on its first token (off the actor thread) and asked again at each
//! token. The chain itself keeps no cache (the SDK caches in its clients,
//! which are not used here): each token costs one answer from the source
//! (the container endpoint, IMDS, STS), which is what makes a rotation
//! visible to the next token. Tokens are made at most every 12 minutes
//! (80 % of 15) per monitor, or sooner when the credentials expire sooner:
//! a token never outlives the credentials that signed it.
//!
//! aws-config is asynchronous and tokens are asked for from threads that
//! are not (librdkafka's background thread, a collection's blocking
//! thread): the provider runs on one small runtime shared by the process,
//! and callers wait for its answer with their own deadline.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use base64::Engine as _;

/// How long a presigned token is valid (what MSK accepts, and AWS's signers use).
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(900);
/// The SigV4 service name of MSK's data plane.
const SERVICE: &str = "kafka-cluster";
const ACTION: &str = "kafka-cluster:Connect";

/// Why no MSK IAM token could be made. Never carries a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MskIamError {
    /// The default chain found no credentials, or its source failed.
    #[error("AWS credentials: {0}")]
    Credentials(String),
    /// The credentials found have already expired.
    #[error("AWS credentials (access key {access_key}) expired at {expired_at_unix}s (now {now_unix}s): refresh the node's AWS credentials")]
    Expired { access_key: String, expired_at_unix: u64, now_unix: u64 },
    /// The chain did not answer within the time given.
    #[error("AWS credentials: no answer from the default chain within {0:?}")]
    Timeout(Duration),
    /// Signing failed (a region or credentials the signer refuses).
    #[error("signing the MSK IAM token: {0}")]
    Signing(String),
}

/// The runtime that runs every monitor's AWS credential providers: one
/// worker, made on first use.
fn aws_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("kollector-aws")
                .enable_all()
                .build()
                .map_err(|e| tracing::error!("cannot start the AWS credentials runtime: {e}"))
                .ok()
        })
        .as_ref()
}

/// Runs `future` on the AWS runtime and waits at most `within` for it.
fn run_within<T: Send + 'static>(
    within: Duration,
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, MskIamError> {
    let runtime = aws_runtime().ok_or_else(|| MskIamError::Credentials("no runtime to run the AWS chain on".into()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv_timeout(within).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => MskIamError::Timeout(within),
        std::sync::mpsc::RecvTimeoutError::Disconnected => {
            MskIamError::Credentials("the AWS credentials chain failed without an answer (it panicked)".into())
        }
    })
}

/// One monitor's MSK IAM signer: its region and its credentials provider.
pub struct MskIamSigner {
    region: String,
    provider: OnceLock<SharedCredentialsProvider>,
}

impl std::fmt::Debug for MskIamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIamSigner").field("region", &self.region).finish_non_exhaustive()
    }
}

/// A token and the instants that bound it.
pub struct SignedToken {
    pub token: String,
    /// ms since the Unix epoch: the earlier of the signature's and the credentials' expiry.
    pub expires_at_ms: u64,
    /// The access key id that signed it (not a secret; shown as the principal).
    pub access_key: String,
}

impl MskIamSigner {
    /// The signer for `region`; its credentials chain is built by the first token.
    pub fn new(region: &str) -> MskIamSigner {
        MskIamSigner { region: region.to_string(), provider: OnceLock::new() }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The default chain for this region, built once (reads the
    /// environment and profile files; no network).
    fn provider(&self, within: Duration) -> Result<SharedCredentialsProvider, MskIamError> {
        if let Some(p) = self.provider.get() {
            return Ok(p.clone());
        }
        let region = self.region.clone();
        let built = run_within(within, async move {
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https();
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .http_client(http)
                .load()
                .await;
            config.credentials_provider()
        })?
        .ok_or_else(|| MskIamError::Credentials("the default chain has no provider".into()))?;
        Ok(self.provider.get_or_init(|| built).clone())
    }

    /// A new token, signed now with the chain's current credentials.
    pub fn token(&self, within: Duration) -> Result<SignedToken, MskIamError> {
        let started = std::time::Instant::now();
        let provider = self.provider(within)?;
        let left = within.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
        let creds = run_within(left, async move { provider.provide_credentials().await })?.map_err(|e| {
            MskIamError::Credentials(aws_smithy_types::error::display::DisplayErrorContext(&e).to_string())
        })?;
        presign(&creds, &self.region, SystemTime::now())
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The token for `creds` in `region`, signed at `now`. Pure: the tests
/// check it against an independent SigV4 implementation.
pub fn presign(
    creds: &aws_credential_types::Credentials,
    region: &str,
    now: SystemTime,
) -> Result<SignedToken, MskIamError> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
    let signing = |e: &dyn std::fmt::Display| MskIamError::Signing(e.to_string());
    if let Some(expiry) = creds.expiry() {
        if expiry <= now {
            return Err(MskIamError::Expired {
                access_key: creds.access_key_id().to_string(),
                expired_at_unix: unix_secs(expiry),
                now_unix: unix_secs(now),
            });
        }
    }
    let host = format!("kafka.{region}.amazonaws.com");
    let url = format!("https://{host}/?Action={}", percent_encoding::utf8_percent_encode(ACTION, QUERY));
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_VALIDITY);
    let identity: aws_smithy_runtime_api::client::identity::Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| signing(&e))?
        .into();
    let signable = SignableRequest::new("GET", &url, [("host", host.as_str())].into_iter(), SignableBody::Bytes(&[]))
        .map_err(|e| signing(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| signing(&e))?.into_parts();
    let mut request = http::Request::builder().method("GET").uri(&url).body(()).map_err(|e| signing(&e))?;
    instructions.apply_to_request_http1x(&mut request);
    // Added after signing, so not part of what the broker checks (AWS's
    // signers do the same, for their own version strings).
    let user_agent = percent_encoding::utf8_percent_encode(concat!("kollector/", env!("CARGO_PKG_VERSION")), QUERY);
    let signed_url = format!("{}&User-Agent={user_agent}", request.uri());
    let signature_expiry = unix_secs(now).saturating_add(TOKEN_VALIDITY.as_secs()).saturating_mul(1000);
    let expires_at_ms = match creds.expiry() {
        Some(e) => signature_expiry.min(e.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)),
        None => signature_expiry,
    };
    Ok(SignedToken {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed_url),
        expires_at_ms,
        access_key: creds.access_key_id().to_string(),
    })
}

/// What a query value keeps as it is: SigV4's unreserved set.
const QUERY: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(expiry: Option<SystemTime>) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("tok/en+=".into()),
            expiry,
            "test",
        )
    }

    fn decoded(token: &str) -> String {
        String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap()).unwrap()
    }

    #[test]
    fn a_token_is_a_presigned_connect_url_with_an_unsigned_user_agent() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = presign(&creds(None), "eu-west-1", now).unwrap();
        assert!(
            !t.token.contains('=') && !t.token.contains('+') && !t.token.contains('/'),
            "base64url without padding"
        );
        let url = decoded(&t.token);
        assert!(url.starts_with("https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect&"), "{url}");
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Security-Token=tok%2Fen%2B%3D",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        assert!(url.ends_with(&format!("&User-Agent=kollector%2F{}", env!("CARGO_PKG_VERSION"))), "{url}");
        assert_eq!(t.expires_at_ms, (1_700_000_000 + 900) * 1000);
        assert_eq!(t.access_key, "AKIDEXAMPLE");
        // The secret key is not in the token (only its signature is).
        assert!(!url.contains("wJalrXUtnFEMI"));
    }

    #[test]
    fn a_token_never_outlives_its_credentials_and_expired_ones_are_refused() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let soon = now + Duration::from_secs(60);
        assert_eq!(presign(&creds(Some(soon)), "us-east-1", now).unwrap().expires_at_ms, 1_700_000_060_000);
        let e = presign(&creds(Some(now - Duration::from_secs(1))), "us-east-1", now).err().unwrap();
        assert!(matches!(e, MskIamError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("AKIDEXAMPLE") && !e.to_string().contains("wJalr"), "{e}");
    }
}
