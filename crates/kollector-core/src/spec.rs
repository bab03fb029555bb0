//! Monitor specs: the untrusted input form and the validated form.
//!
//! [`MonitorInput`] is what a user writes (TOML `[[monitors]]` entry or a gRPC
//! request): strings for durations and regexes, optional everything.
//! [`MonitorInput::validate`] checks every field and returns either a
//! [`MonitorSpec`], which is valid by construction, or *all* field errors at
//! once so a user can fix a file in one pass. Nothing downstream re-validates.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::ids::{CollectorId, Generation, MonitorId};

/// Shortest allowed collection interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest allowed collection interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest allowed collection timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// Interval used when a monitor does not set one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Upper bound on the default timeout (the default is 80% of the interval, capped here).
pub const DEFAULT_TIMEOUT_CAP: Duration = Duration::from_secs(20);
/// Shortest and longest offset history a monitor may keep (lag in seconds).
pub const MIN_LAG_HISTORY: Duration = Duration::from_secs(600);
pub const MAX_LAG_HISTORY: Duration = Duration::from_secs(24 * 3600);
/// Most cycles a history may span: it costs up to one point per cycle and
/// partition (16 bytes each), so this bounds its memory.
pub const MAX_LAG_HISTORY_CYCLES: u32 = 3600;

/// Size limits on untrusted input: a spec is a few KiB; these bound the
/// work validation does (the duplicate check is quadratic in the bootstrap
/// list) and the size of what is stored and echoed in errors.
pub const MAX_BOOTSTRAP: usize = 64;
/// Longest free-text field (host:port, username, cluster id, label value, path).
pub const MAX_TEXT: usize = 1024;
/// Longest regular expression, and the compiled size the regex engine may use.
pub const MAX_PATTERN: usize = 1024;
const MAX_REGEX_BYTES: usize = 1 << 20;
/// Most labels (and most collector labels) on one monitor.
pub const MAX_LABELS: usize = 32;

/// A secret string (SASL password, key passphrase). Its `Debug` and `Display`
/// never show the value, so it cannot leak through logs or error messages.
/// It serializes in clear because specs are persisted (etcd, cluster mode);
/// the gRPC read APIs never return it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value, for handing to the Kafka client. Call sites are few and greppable.
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// SASL mechanisms kollector supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAUTHBEARER (RFC 7628) with tokens from an OIDC token endpoint
    /// (client credentials grant): `username` is the client id, `password`
    /// the client secret, [`SaslConfig::oidc`] where to ask.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
    /// AWS MSK IAM over OAUTHBEARER: each token is a SigV4-presigned
    /// `kafka-cluster:Connect` request, signed with credentials from the
    /// AWS default chain; no user name or password. [`SaslConfig::aws`]
    /// holds the region.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl SaslMechanism {
    pub const ALL: [SaslMechanism; 5] = [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
        SaslMechanism::OAuthBearer,
        SaslMechanism::AwsMskIam,
    ];

    /// The name users write (and the API shows).
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
            SaslMechanism::AwsMskIam => "AWS_MSK_IAM",
        }
    }

    /// The name librdkafka and the brokers use: MSK IAM is OAUTHBEARER on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            SaslMechanism::AwsMskIam => "OAUTHBEARER",
            other => other.as_str(),
        }
    }

    /// Whether tokens, not a password, authenticate (OAUTHBEARER and MSK IAM).
    pub fn uses_tokens(self) -> bool {
        matches!(self, SaslMechanism::OAuthBearer | SaslMechanism::AwsMskIam)
    }

    /// Parses a mechanism name, case-insensitively.
    pub fn parse(s: &str) -> Option<SaslMechanism> {
        SaslMechanism::ALL.into_iter().find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Validated SASL settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    /// The user name; for OAUTHBEARER the OIDC client id.
    pub username: String,
    /// The password; for OAUTHBEARER the OIDC client secret. Kept in this
    /// one field so every secret of a spec is sealed, carried over on
    /// update and redacted by the same code.
    pub password: Secret,
    /// OAUTHBEARER only: where tokens come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    /// AWS_MSK_IAM only: the region tokens are signed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsMskIamConfig>,
}

/// AWS MSK IAM settings. Credentials are not part of a spec: they come from
/// the AWS default chain of the node running the monitor (environment,
/// shared profile, web identity, container credentials, IMDSv2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsMskIamConfig {
    /// e.g. `us-east-1`: given, or read from the bootstrap host names.
    pub region: String,
}

/// The AWS region an MSK bootstrap host names (`b-1.c.x.c2.kafka.us-east-1.amazonaws.com`,
/// `boot-x.c1.kafka-serverless.eu-west-1.amazonaws.com`), if it names one.
pub fn msk_region_of(host_port: &str) -> Option<String> {
    let host = host_port.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_port).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels.iter().position(|l| *l == "kafka" || *l == "kafka-serverless")?;
    let region = labels.get(at + 1)?;
    let rest = &labels[at + 2..];
    (matches!(rest, ["amazonaws", "com"] | ["amazonaws", "com", "cn"]) && is_aws_region(region))
        .then(|| region.to_string())
}

/// `us-east-1`, `ap-southeast-2`, `us-gov-west-1`, `cn-north-1`…
pub fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && s.len() <= 32
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// An OIDC token endpoint to ask for OAUTHBEARER tokens with the client
/// credentials grant (RFC 6749 §4.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcConfig {
    /// `https://…` (or `http://` to a loopback address, for a local
    /// identity provider or a test).
    pub token_endpoint: String,
    /// The `scope` asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// SASL extensions sent with every token (RFC 7628 §3.1), e.g.
    /// Confluent Cloud's `logicalCluster` and `identityPoolId`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, String>,
    /// CA bundle (PEM) to verify the token endpoint with; the system store when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// Most SASL extensions on one monitor.
pub const MAX_SASL_EXTENSIONS: usize = 16;

/// Why `url` cannot be a token endpoint, if it cannot: HTTPS, or plain
/// HTTP only to a loopback address (a client secret is never sent in clear
/// over a network).
pub fn token_endpoint_problem(url: &str) -> Option<String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(p) => p,
        None => return Some(format!("{url:?} is not a URL (https://host/path)")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Some(format!("{url:?} has no host (or carries credentials, which belong in client_id/client_secret)"));
    }
    let host = host_of(authority);
    match scheme.to_ascii_lowercase().as_str() {
        "https" => None,
        "http" => {
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            (!loopback).then(|| {
                format!("{url:?} is plain HTTP to a non-loopback host; the client secret would cross the network in clear: use https://")
            })
        }
        other => Some(format!("{url:?}: scheme {other:?} is neither https nor http")),
    }
}

/// The host of `host:port` (`[v6]:port` too).
fn host_of(host_port: &str) -> &str {
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map(|(h, _)| h).unwrap_or(host_port),
    }
}

/// Whether `host:port` names this host (localhost, 127.0.0.0/8, ::1).
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = host_of(host_port);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Why `value` cannot be a SASL extension's value: printable ASCII, space
/// and tab (RFC 7628's VCHAR/SP/HTAB; librdkafka refuses the rest, and
/// 0x01 would end the extension), at least one character.
fn extension_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("must not be empty")
    } else if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        Some("must be printable ASCII (RFC 7628)")
    } else {
        None
    }
}

/// Why `key` cannot name a SASL extension (RFC 7628 §3.1: ALPHA only, and
/// `auth` is reserved).
fn extension_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphabetic()) {
        Some("extension names use letters only (RFC 7628)")
    } else if key == "auth" {
        Some("\"auth\" is reserved for the token itself")
    } else {
        None
    }
}

/// Validated TLS settings. TLS is on when this is present.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// CA bundle (PEM) to verify brokers with; the system store when absent.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for mutual TLS; requires `key_file`.
    pub cert_file: Option<String>,
    /// Client private key (PEM) for mutual TLS; requires `cert_file`.
    pub key_file: Option<String>,
    pub key_password: Option<Secret>,
    /// Skip broker certificate verification. For test clusters only.
    pub insecure_skip_verify: bool,
}

/// How to reach and authenticate to one Kafka cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaConnection {
    /// `host:port` pairs, at least one.
    pub bootstrap: Vec<String>,
    pub sasl: Option<SaslConfig>,
    pub tls: Option<TlsConfig>,
}

impl KafkaConnection {
    /// The `security.protocol` librdkafka needs for these settings.
    pub fn security_protocol(&self) -> &'static str {
        match (self.sasl.is_some(), self.tls.is_some()) {
            (false, false) => "plaintext",
            (false, true) => "ssl",
            (true, false) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }
}

/// Topic and group allow/deny filters. A name is collected when it matches
/// the include pattern (or there is none) and does not match the exclude
/// pattern: exclude wins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Filters {
    #[serde(with = "opt_regex")]
    pub topic_include: Option<Regex>,
    #[serde(with = "opt_regex")]
    pub topic_exclude: Option<Regex>,
    #[serde(with = "opt_regex")]
    pub group_include: Option<Regex>,
    #[serde(with = "opt_regex")]
    pub group_exclude: Option<Regex>,
}

impl PartialEq for Filters {
    fn eq(&self, other: &Self) -> bool {
        fn s(r: &Option<Regex>) -> Option<&str> {
            r.as_ref().map(|r| r.as_str())
        }
        s(&self.topic_include) == s(&other.topic_include)
            && s(&self.topic_exclude) == s(&other.topic_exclude)
            && s(&self.group_include) == s(&other.group_include)
            && s(&self.group_exclude) == s(&other.group_exclude)
    }
}
impl Eq for Filters {}

impl Filters {
    pub fn topic_allowed(&self, topic: &str) -> bool {
        allowed(&self.topic_include, &self.topic_exclude, topic)
    }
    pub fn group_allowed(&self, group: &str) -> bool {
        allowed(&self.group_include, &self.group_exclude, group)
    }
}

fn allowed(include: &Option<Regex>, exclude: &Option<Regex>, name: &str) -> bool {
    include.as_ref().is_none_or(|r| r.is_match(name)) && !exclude.as_ref().is_some_and(|r| r.is_match(name))
}

/// Anchors a user pattern so `orders` means the whole name `orders`, as in
/// kafka_exporter's filters; users write `orders.*` for a prefix.
fn compile_anchored(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(MAX_REGEX_BYTES).build()
}

/// Validates a `[sasl]` table; None (with the reasons in `errors`) when it cannot be used.
fn validate_sasl(s: &SaslInput, bootstrap: &[String], errors: &mut Errors) -> Option<SaslConfig> {
    let mechanism = SaslMechanism::parse(&s.mechanism);
    if mechanism.is_none() {
        let known: Vec<&str> = SaslMechanism::ALL.iter().map(|m| m.as_str()).collect();
        errors.push(
            "sasl.mechanism",
            format!("unknown SASL mechanism {:?}; expected one of {}", s.mechanism, known.join(", ")),
        );
    }
    let oidc_fields =
        s.token_endpoint.is_some() || s.scope.is_some() || s.ca_file.is_some() || !s.extensions.is_empty();
    if mechanism.is_some() && mechanism != Some(SaslMechanism::OAuthBearer) && oidc_fields {
        errors.push("sasl.mechanism", "token_endpoint, scope, extensions and ca_file are for OAUTHBEARER only");
    }
    if mechanism.is_some() && mechanism != Some(SaslMechanism::AwsMskIam) && s.aws_region.is_some() {
        errors.push("sasl.mechanism", "aws_region is for AWS_MSK_IAM only");
    }
    if mechanism == Some(SaslMechanism::AwsMskIam) {
        // Credentials come from the node's AWS default chain, never from a spec.
        if !s.username.is_empty() || s.password.is_some() || s.password_env.is_some() {
            errors.push(
                "sasl.username",
                "AWS_MSK_IAM takes no user name or password: credentials come from the AWS default chain of the node",
            );
        }
        let region = match &s.aws_region {
            Some(r) if is_aws_region(r) => Some(r.clone()),
            Some(r) => {
                errors.push("sasl.aws_region", format!("{r:?} is not an AWS region (e.g. us-east-1)"));
                None
            }
            None => {
                let found: std::collections::BTreeSet<String> =
                    bootstrap.iter().filter_map(|b| msk_region_of(b)).collect();
                match found.len() {
                    1 => found.into_iter().next(),
                    0 => {
                        errors.push("sasl.aws_region", "must be set: the bootstrap hosts do not name an AWS region");
                        None
                    }
                    _ => {
                        errors.push(
                            "sasl.aws_region",
                            format!("must be set: the bootstrap hosts name several regions {found:?}"),
                        );
                        None
                    }
                }
            }
        };
        return Some(SaslConfig {
            mechanism: SaslMechanism::AwsMskIam,
            username: String::new(),
            password: Secret::new(""),
            oidc: None,
            aws: Some(AwsMskIamConfig { region: region? }),
        });
    }
    let oauth = mechanism == Some(SaslMechanism::OAuthBearer);
    if s.username.trim().is_empty() {
        errors.push(
            "sasl.username",
            if oauth { "must be set: the OIDC client id (client_id)" } else { "must not be empty" },
        );
    }
    let password = match &s.password {
        Some(p) if !p.expose().is_empty() => Some(p.clone()),
        _ => {
            match &s.password_env {
                Some(var) => errors.push("sasl.password_env", format!("environment variable {var:?} is not set or empty")),
                None if oauth => errors.push(
                    "sasl.password",
                    "must be set: the OIDC client secret (client_secret, or client_secret_env naming an environment variable)",
                ),
                None => errors.push("sasl.password", "must be set (or name an environment variable in password_env)"),
            }
            None
        }
    };
    let oidc = oauth.then(|| {
        let token_endpoint = s.token_endpoint.clone().unwrap_or_default();
        if token_endpoint.trim().is_empty() {
            errors.push("sasl.token_endpoint", "must be set for OAUTHBEARER (the OIDC token endpoint URL)");
        } else if let Some(problem) = token_endpoint_problem(&token_endpoint) {
            errors.push("sasl.token_endpoint", problem);
        }
        if s.ca_file.as_ref().is_some_and(|p| p.trim().is_empty()) {
            errors.push("sasl.ca_file", "must not be empty when set");
        }
        for (k, v) in &s.extensions {
            if let Some(problem) = extension_key_problem(k).or_else(|| extension_value_problem(v)) {
                errors.push(format!("sasl.extensions.{}", k.chars().take(63).collect::<String>()), problem);
            }
        }
        OidcConfig {
            token_endpoint,
            scope: s.scope.clone().filter(|v| !v.is_empty()),
            extensions: s.extensions.clone(),
            ca_file: s.ca_file.clone(),
        }
    });
    Some(SaslConfig { mechanism: mechanism?, username: s.username.clone(), password: password?, oidc, aws: None })
}

/// Checks sizes and characters of every free-text field before anything
/// else looks at them; true when the input is small enough to validate.
fn check_limits(i: &MonitorInput, errors: &mut Errors) -> bool {
    fn text(errors: &mut Errors, field: String, v: &str) {
        if v.len() > MAX_TEXT {
            errors.push(field, format!("is {} bytes long; at most {MAX_TEXT} are allowed", v.len()));
        } else if v.chars().any(char::is_control) {
            errors.push(field, "contains control characters");
        }
    }
    for (name, v) in [
        ("expected_cluster_id", &i.expected_cluster_id),
        ("client_id", &i.client_id),
        ("group_metrics", &i.group_metrics),
        ("pinned_collector", &i.pinned_collector),
        ("interval", &i.interval),
        ("timeout", &i.timeout),
        ("lag_history", &i.lag_history),
    ] {
        if let Some(v) = v {
            text(errors, name.to_string(), v);
        }
    }
    if let Some(p) = &i.e2e_probe {
        for (name, v) in [
            ("e2e_probe.topic", &p.topic),
            ("e2e_probe.interval", &p.interval),
            ("e2e_probe.ack_sla", &p.ack_sla),
            ("e2e_probe.roundtrip_sla", &p.roundtrip_sla),
            ("e2e_probe.commit_sla", &p.commit_sla),
        ] {
            if let Some(v) = v {
                text(errors, name.to_string(), v);
            }
        }
    }
    if let Some(s) = &i.sasl {
        text(errors, "sasl.username".into(), &s.username);
        text(errors, "sasl.mechanism".into(), &s.mechanism);
        if let Some(p) = &s.password {
            text(errors, "sasl.password".into(), p.expose());
        }
        for (name, v) in [
            ("sasl.token_endpoint", &s.token_endpoint),
            ("sasl.scope", &s.scope),
            ("sasl.ca_file", &s.ca_file),
            ("sasl.aws_region", &s.aws_region),
        ] {
            if let Some(v) = v {
                text(errors, name.to_string(), v);
            }
        }
        if s.extensions.len() > MAX_SASL_EXTENSIONS {
            errors.push(
                "sasl.extensions",
                format!("has {} entries; at most {MAX_SASL_EXTENSIONS} are allowed", s.extensions.len()),
            );
        } else {
            for (k, v) in &s.extensions {
                text(errors, format!("sasl.extensions.{}", k.chars().take(63).collect::<String>()), v);
            }
        }
    }
    if let Some(t) = &i.tls {
        for (name, v) in [("tls.ca_file", &t.ca_file), ("tls.cert_file", &t.cert_file), ("tls.key_file", &t.key_file)] {
            if let Some(v) = v {
                text(errors, name.to_string(), v);
            }
        }
        if let Some(p) = &t.key_password {
            text(errors, "tls.key_password".into(), p.expose());
        }
    }
    for (name, labels) in [("labels", &i.labels), ("collector_labels", &i.collector_labels)] {
        if labels.len() > MAX_LABELS {
            errors.push(name, format!("has {} entries; at most {MAX_LABELS} are allowed", labels.len()));
            continue;
        }
        for (k, v) in labels {
            text(errors, format!("{name}.{}", k.chars().take(63).collect::<String>()), v);
        }
    }
    for (name, p) in [
        ("topic_include", &i.topic_include),
        ("topic_exclude", &i.topic_exclude),
        ("group_include", &i.group_include),
        ("group_exclude", &i.group_exclude),
    ] {
        if let Some(p) = p {
            if p.len() > MAX_PATTERN {
                errors.push(name, format!("is {} bytes long; at most {MAX_PATTERN} are allowed", p.len()));
            }
        }
    }
    let mut small = true;
    if i.bootstrap.len() > MAX_BOOTSTRAP {
        errors.push("bootstrap", format!("lists {} entries; at most {MAX_BOOTSTRAP} are allowed", i.bootstrap.len()));
        small = false;
    }
    if i.bootstrap.iter().any(|b| b.len() > 261) {
        errors.push("bootstrap", "an entry is longer than a host name and port can be (261 bytes)");
        small = false;
    }
    // A huge pattern is not compiled at all.
    small
        && [&i.topic_include, &i.topic_exclude, &i.group_include, &i.group_exclude]
            .iter()
            .all(|p| p.as_ref().is_none_or(|p| p.len() <= MAX_PATTERN))
}

mod opt_regex {
    use regex::Regex;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Option<Regex>, s: S) -> Result<S::Ok, S::Error> {
        // Stored without the anchoring wrapper so it round-trips to what the user wrote.
        match r {
            Some(r) => s.serialize_some(super::unanchor(r.as_str())),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|p| super::compile_anchored(&p).map_err(serde::de::Error::custom)).transpose()
    }
}

fn unanchor(s: &str) -> &str {
    s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s)
}

/// A validated monitor: everything a collector needs to watch one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorSpec {
    pub id: MonitorId,
    /// Bumped on every change; a running monitor with an older generation is restarted.
    pub generation: Generation,
    pub connection: KafkaConnection,
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// How far back the offset history for lag in seconds reaches.
    #[serde(with = "humantime_serde_compat", default = "default_lag_history")]
    pub lag_history: Duration,
    pub filters: Filters,
    /// When set, the monitor refuses data from any other cluster from the first cycle on.
    pub expected_cluster_id: Option<String>,
    /// Free-form labels (owner, environment); shown in listings.
    pub labels: BTreeMap<String, String>,
    /// Cluster mode: run only on this collector.
    #[serde(default)]
    pub pinned_collector: Option<CollectorId>,
    /// Cluster mode: run only on collectors carrying all of these labels.
    #[serde(default)]
    pub collector_labels: BTreeMap<String, String>,
    /// The client id in every request to the cluster (both the librdkafka
    /// client and the direct connections); None: `kollector-<monitor>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// How finely consumer-group metrics are exported.
    #[serde(default)]
    pub group_metrics: GroupMetrics,
    /// The end-to-end probe, when the monitor runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_probe: Option<crate::e2e::E2eProbeConfig>,
}

/// How finely a monitor's consumer-group metrics are exported: per
/// partition (every series, today's default) or per topic only (the sums,
/// max lag seconds and status kafka_exporter users know; one series per
/// group and topic instead of one per group and partition), for fleets with
/// tens of thousands of groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMetrics {
    #[default]
    Partition,
    Topic,
}

impl GroupMetrics {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupMetrics::Partition => "partition",
            GroupMetrics::Topic => "topic",
        }
    }

    pub fn parse(s: &str) -> Option<GroupMetrics> {
        [GroupMetrics::Partition, GroupMetrics::Topic].into_iter().find(|g| g.as_str() == s)
    }
}

/// Longest client id accepted (Kafka's quota and log tooling read it).
pub const MAX_CLIENT_ID: usize = 255;

/// Why `id` cannot be a Kafka client id, if it cannot: 1 to 255 of
/// `[A-Za-z0-9._-]`, the characters librdkafka and every quota tool take as
/// they are.
pub fn client_id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        return Some(format!("must be 1 to {MAX_CLIENT_ID} characters long"));
    }
    let bad = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    bad.map(|c| format!("contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"))
}

impl MonitorSpec {
    /// The client id sent to the cluster: the spec's, else `kollector-<monitor>`.
    pub fn client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("kollector-{}", self.id))
    }

    /// The filter patterns as the user wrote them (unanchored), for display and round-trips.
    pub fn filter_patterns(&self) -> [Option<String>; 4] {
        let f = &self.filters;
        [&f.topic_include, &f.topic_exclude, &f.group_include, &f.group_exclude]
            .map(|r| r.as_ref().map(|r| unanchor(r.as_str()).to_string()))
    }

    /// Turns a spec back into input form, e.g. to apply a partial update and
    /// re-validate. The password stays as it was.
    pub fn to_input(&self) -> MonitorInput {
        let [ti, te, gi, ge] = self.filter_patterns();
        MonitorInput {
            id: self.id.to_string(),
            bootstrap: self.connection.bootstrap.clone(),
            interval: Some(humantime::format_duration(self.interval).to_string()),
            timeout: Some(humantime::format_duration(self.timeout).to_string()),
            lag_history: Some(humantime::format_duration(self.lag_history).to_string()),
            topic_include: ti,
            topic_exclude: te,
            group_include: gi,
            group_exclude: ge,
            expected_cluster_id: self.expected_cluster_id.clone(),
            sasl: self.connection.sasl.as_ref().map(|s| SaslInput {
                mechanism: s.mechanism.as_str().to_string(),
                username: s.username.clone(),
                // AWS_MSK_IAM has none.
                password: (!s.password.expose().is_empty()).then(|| s.password.clone()),
                password_env: None,
                token_endpoint: s.oidc.as_ref().map(|o| o.token_endpoint.clone()),
                scope: s.oidc.as_ref().and_then(|o| o.scope.clone()),
                extensions: s.oidc.as_ref().map(|o| o.extensions.clone()).unwrap_or_default(),
                ca_file: s.oidc.as_ref().and_then(|o| o.ca_file.clone()),
                aws_region: s.aws.as_ref().map(|a| a.region.clone()),
            }),
            tls: self.connection.tls.as_ref().map(|t| TlsInput {
                enabled: Some(true),
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
                key_password: t.key_password.clone(),
                insecure_skip_verify: Some(t.insecure_skip_verify),
            }),
            labels: self.labels.clone(),
            pinned_collector: self.pinned_collector.as_ref().map(|c| c.to_string()),
            collector_labels: self.collector_labels.clone(),
            client_id: self.client_id.clone(),
            group_metrics: Some(self.group_metrics.as_str().to_string()),
            e2e_probe: self.e2e_probe.as_ref().map(|p| p.to_input()),
        }
    }
}

fn default_lag_history() -> Duration {
    crate::history::DEFAULT_HISTORY
}

pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// SASL settings as a user writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslInput {
    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.
    pub mechanism: String,
    /// The user name; for OAUTHBEARER the OIDC client id (`client_id` in files).
    #[serde(default, alias = "client_id")]
    pub username: String,
    /// The password itself; for OAUTHBEARER the client secret
    /// (`client_secret` in files). Prefer `password_env` in files.
    #[serde(alias = "client_secret")]
    pub password: Option<Secret>,
    /// Name of an environment variable holding the password (or client
    /// secret, `client_secret_env`); the binary resolves it into
    /// `password` before validation.
    #[serde(alias = "client_secret_env")]
    pub password_env: Option<String>,
    /// OAUTHBEARER: the OIDC token endpoint (client credentials grant).
    pub token_endpoint: Option<String>,
    /// OAUTHBEARER: the scope to ask for.
    pub scope: Option<String>,
    /// OAUTHBEARER: SASL extensions sent with each token.
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
    /// OAUTHBEARER: CA bundle (PEM) for the token endpoint's certificate.
    pub ca_file: Option<String>,
    /// AWS_MSK_IAM: the region to sign for; read from the bootstrap host
    /// names when absent.
    pub aws_region: Option<String>,
}

/// TLS settings as a user writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInput {
    /// Defaults to true when a `[tls]` table is present.
    pub enabled: Option<bool>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub key_password: Option<Secret>,
    pub insecure_skip_verify: Option<bool>,
}

/// A monitor as a user writes it: a `[[monitors]]` table or a gRPC request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorInput {
    pub id: String,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// e.g. "15s", "1m"; default 30s; 1s..=1h.
    pub interval: Option<String>,
    /// e.g. "10s"; default 80% of the interval, at most 20s; must be below the interval.
    pub timeout: Option<String>,
    /// e.g. "2h"; default 1h; 10m..=24h and at most 3,600 intervals.
    pub lag_history: Option<String>,
    pub topic_include: Option<String>,
    pub topic_exclude: Option<String>,
    pub group_include: Option<String>,
    pub group_exclude: Option<String>,
    pub expected_cluster_id: Option<String>,
    pub sasl: Option<SaslInput>,
    pub tls: Option<TlsInput>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Cluster mode: run only on this collector (ignored in standalone mode).
    pub pinned_collector: Option<String>,
    /// Cluster mode: run only on collectors with all these labels (ignored in standalone mode).
    #[serde(default)]
    pub collector_labels: BTreeMap<String, String>,
    /// The client id sent to the cluster; default `kollector-<id>`.
    pub client_id: Option<String>,
    /// "partition" (default) or "topic": how finely group metrics are exported.
    pub group_metrics: Option<String>,
    /// The end-to-end probe (produce → consume); off when absent.
    pub e2e_probe: Option<crate::e2e::E2eProbeInput>,
}

/// One bad field: which one and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `bootstrap[1]`, `sasl.mechanism`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one input, in field order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationErrors(vec![FieldError { field: field.into(), message: message.into() }])
    }
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.field.as_str())
    }
}

struct Errors(Vec<FieldError>);
impl Errors {
    /// Messages echo user input: each is cut to a bounded length.
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let (mut field, mut message) = (field.into(), message.into());
        for (s, max) in [(&mut field, 100), (&mut message, 400)] {
            if let Some((cut, _)) = s.char_indices().nth(max) {
                s.truncate(cut);
                s.push('…');
            }
        }
        self.0.push(FieldError { field, message });
    }
}

/// Checks one `host:port` bootstrap entry.
fn check_bootstrap_entry(entry: &str) -> Result<(), String> {
    if entry.trim() != entry || entry.is_empty() {
        return Err(format!("{entry:?} must be host:port without spaces"));
    }
    if entry.contains(',') {
        return Err(format!("{entry:?} contains ','; list each host:port as its own entry"));
    }
    if entry.contains("://") {
        return Err(format!("{entry:?} must be host:port, without a scheme"));
    }
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        // [ipv6]:port
        let (h, p) = rest.split_once("]:").ok_or_else(|| format!("{entry:?} must be [ipv6]:port"))?;
        (h, p)
    } else {
        entry.rsplit_once(':').ok_or_else(|| format!("{entry:?} has no port; expected host:port"))?
    };
    if host.is_empty() {
        return Err(format!("{entry:?} has an empty host"));
    }
    if host.contains(':') && !entry.starts_with('[') {
        return Err(format!("{entry:?}: write IPv6 addresses as [addr]:port"));
    }
    // ASCII only: a look-alike (Cyrillic 'а' for 'a') would name another host
    // than the one a reader sees. Internationalised names go in punycode.
    if host.chars().any(|c| !c.is_ascii() || c.is_ascii_whitespace() || c.is_ascii_control() || c == '/' || c == '\\') {
        return Err(format!("{entry:?} has an invalid host (ASCII letters, digits, '.', '-' or an IP address; punycode for other names)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{entry:?} has an invalid port {port:?}; expected 1-65535")),
    }
}

fn parse_duration(field: &str, value: &str, errors: &mut Errors) -> Option<Duration> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                field,
                format!("{} is not a duration ({e}); write e.g. \"15s\" or \"1m\"", crate::ids::shown(value)),
            );
            None
        }
    }
}

fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl MonitorInput {
    /// Validates every field and builds a spec with the given generation, or
    /// returns all field errors.
    pub fn validate(&self, generation: Generation) -> Result<MonitorSpec, ValidationErrors> {
        let mut errors = Errors(Vec::new());

        let id = match MonitorId::new(self.id.clone()) {
            Ok(id) => Some(id),
            Err(e) => {
                errors.push("id", format!("{} {e}", crate::ids::shown(&self.id)));
                None
            }
        };

        if !check_limits(self, &mut errors) {
            return Err(ValidationErrors(errors.0));
        }
        if self.bootstrap.is_empty() {
            errors.push("bootstrap", "must list at least one host:port");
        }
        for (i, entry) in self.bootstrap.iter().enumerate() {
            if let Err(msg) = check_bootstrap_entry(entry) {
                errors.push(format!("bootstrap[{i}]"), msg);
            } else if self.bootstrap[..i].contains(entry) {
                errors.push(format!("bootstrap[{i}]"), format!("{entry:?} is listed twice"));
            }
        }

        let interval = match &self.interval {
            None => Some(DEFAULT_INTERVAL),
            Some(v) => parse_duration("interval", v, &mut errors),
        };
        let interval = interval.and_then(|d| {
            if d < MIN_INTERVAL || d > MAX_INTERVAL {
                errors.push(
                    "interval",
                    format!(
                        "{} is outside the allowed range {}..={}",
                        fmt_d(d),
                        fmt_d(MIN_INTERVAL),
                        fmt_d(MAX_INTERVAL)
                    ),
                );
                None
            } else {
                Some(d)
            }
        });

        let timeout = match &self.timeout {
            None => interval.map(|i| (i * 4 / 5).min(DEFAULT_TIMEOUT_CAP)),
            Some(v) => parse_duration("timeout", v, &mut errors),
        };
        if let (Some(t), Some(i)) = (timeout, interval) {
            if t >= i {
                errors.push(
                    "timeout",
                    format!(
                        "{} must be shorter than the interval ({}) so collections never overlap",
                        fmt_d(t),
                        fmt_d(i)
                    ),
                );
            }
        }
        if let Some(t) = timeout {
            if t < MIN_TIMEOUT {
                errors.push("timeout", format!("{} is below the minimum {}", fmt_d(t), fmt_d(MIN_TIMEOUT)));
            }
        }

        let lag_history = match &self.lag_history {
            None => Some(crate::history::DEFAULT_HISTORY),
            Some(v) => parse_duration("lag_history", v, &mut errors),
        };
        let lag_history = lag_history.and_then(|h| {
            if h < MIN_LAG_HISTORY || h > MAX_LAG_HISTORY {
                let range = format!("{}..={}", fmt_d(MIN_LAG_HISTORY), fmt_d(MAX_LAG_HISTORY));
                errors.push("lag_history", format!("{} is outside the allowed range {range}", fmt_d(h)));
                return None;
            }
            if let Some(i) = interval {
                if h > i * MAX_LAG_HISTORY_CYCLES {
                    errors.push(
                        "lag_history",
                        format!(
                            "{} at an interval of {} spans more than {MAX_LAG_HISTORY_CYCLES} cycles; \
                             shorten it or raise the interval",
                            fmt_d(h),
                            fmt_d(i)
                        ),
                    );
                    return None;
                }
            }
            Some(h)
        });

        let mut regex = |field: &str, pattern: &Option<String>| -> Option<Regex> {
            let p = pattern.as_ref()?;
            match compile_anchored(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    let detail = e.to_string().lines().last().unwrap_or_default().trim().to_string();
                    errors.push(field, format!("{p:?} is not a valid regular expression: {detail}"));
                    None
                }
            }
        };
        let filters = Filters {
            topic_include: regex("topic_include", &self.topic_include),
            topic_exclude: regex("topic_exclude", &self.topic_exclude),
            group_include: regex("group_include", &self.group_include),
            group_exclude: regex("group_exclude", &self.group_exclude),
        };

        if let Some(problem) = self.client_id.as_deref().and_then(client_id_problem) {
            errors.push("client_id", problem);
        }
        let group_metrics = match self.group_metrics.as_deref() {
            None => GroupMetrics::default(),
            Some(g) => GroupMetrics::parse(g).unwrap_or_else(|| {
                errors.push("group_metrics", format!("{g:?} is neither \"partition\" nor \"topic\""));
                GroupMetrics::default()
            }),
        };

        if let Some(cid) = &self.expected_cluster_id {
            if cid.trim().is_empty() {
                errors.push("expected_cluster_id", "must not be empty when set");
            }
        }

        let sasl = self.sasl.as_ref().and_then(|s| validate_sasl(s, &self.bootstrap, &mut errors));
        // The probe's clients get their tokens through rdkafka's callback,
        // whose token carries no SASL extensions.
        if self.e2e_probe.is_some() && self.sasl.as_ref().is_some_and(|s| !s.extensions.is_empty()) {
            errors.push(
                "e2e_probe",
                "is not available with SASL extensions (the probe's clients cannot send them); run the probe from a monitor without them",
            );
        }
        let e2e_probe = self.e2e_probe.as_ref().and_then(|p| match p.validate() {
            Ok(c) => Some(c),
            Err(bad) => {
                for (field, message) in bad {
                    errors.push(field, message);
                }
                None
            }
        });

        let tls = self.tls.as_ref().and_then(|t| {
            if t.enabled == Some(false) {
                return None;
            }
            if t.cert_file.is_some() != t.key_file.is_some() {
                errors.push("tls.key_file", "cert_file and key_file must be given together");
            }
            for (field, v) in
                [("tls.ca_file", &t.ca_file), ("tls.cert_file", &t.cert_file), ("tls.key_file", &t.key_file)]
            {
                if v.as_ref().is_some_and(|p| p.trim().is_empty()) {
                    errors.push(field, "must not be empty when set");
                }
            }
            Some(TlsConfig {
                ca_file: t.ca_file.clone(),
                cert_file: t.cert_file.clone(),
                key_file: t.key_file.clone(),
                key_password: t.key_password.clone(),
                insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
            })
        });

        // Bearer tokens (OAUTHBEARER, and MSK IAM's, which carry this
        // node's AWS identity) are credentials in themselves: they go only
        // over TLS with certificate verification. Always: brokers are
        // reached at the addresses their metadata advertises, so a loopback
        // bootstrap says nothing about where the token would go.
        if let Some(s) = &sasl {
            if s.mechanism.uses_tokens() && tls.as_ref().is_none_or(|t| t.insecure_skip_verify) {
                errors.push(
                    "tls",
                    format!(
                        "{} sends bearer tokens: TLS with certificate verification is required (a [tls] table without insecure_skip_verify)",
                        s.mechanism.as_str()
                    ),
                );
            }
            if s.mechanism == SaslMechanism::AwsMskIam {
                for (i, b) in self.bootstrap.iter().enumerate() {
                    if msk_region_of(b).is_none() && !is_loopback_host(b) {
                        errors.push(
                            format!("bootstrap[{i}]"),
                            format!("{b:?}: AWS_MSK_IAM tokens carry this node's AWS identity, so they go only to MSK brokers (b-1.<cluster>.kafka.<region>.amazonaws.com) or to a loopback address"),
                        );
                    }
                }
            }
        }

        for (field, map) in [("labels", &self.labels), ("collector_labels", &self.collector_labels)] {
            for k in map.keys() {
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    errors.push(format!("{field}.{k}"), "label names use letters, digits and '_' only");
                }
            }
        }
        let pinned_collector = self.pinned_collector.as_ref().and_then(|c| match CollectorId::new(c.clone()) {
            Ok(id) => Some(id),
            Err(e) => {
                errors.push("pinned_collector", format!("{c:?} {e}"));
                None
            }
        });

        if !errors.0.is_empty() {
            return Err(ValidationErrors(errors.0));
        }
        match (id, interval, timeout, lag_history) {
            (Some(id), Some(interval), Some(timeout), Some(lag_history)) => Ok(MonitorSpec {
                id,
                generation,
                connection: KafkaConnection { bootstrap: self.bootstrap.clone(), sasl, tls },
                interval,
                timeout,
                lag_history,
                filters,
                expected_cluster_id: self.expected_cluster_id.clone(),
                labels: self.labels.clone(),
                pinned_collector,
                collector_labels: self.collector_labels.clone(),
                client_id: self.client_id.clone(),
                group_metrics,
                e2e_probe,
            }),
            // Unreachable in practice: a missing piece always pushed an error above.
            _ => Err(ValidationErrors::single("monitor", "incomplete")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MonitorInput {
        MonitorInput {
            id: "orders-prod".into(),
            bootstrap: vec!["10.0.0.5:9092".into(), "kafka-2.internal:9093".into()],
            interval: Some("15s".into()),
            ..Default::default()
        }
    }

    fn fields(r: Result<MonitorSpec, ValidationErrors>) -> Vec<String> {
        r.expect_err("should be invalid").0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn client_id_and_group_metrics_have_defaults_and_are_checked() {
        let spec = input().validate(1).expect("valid");
        assert_eq!(spec.client_id(), "kollector-orders-prod");
        assert_eq!(spec.group_metrics, GroupMetrics::Partition);
        let mut i = input();
        i.client_id = Some("orders.team-a_1".into());
        i.group_metrics = Some("topic".into());
        let spec = i.validate(1).expect("valid");
        assert_eq!(spec.client_id(), "orders.team-a_1");
        assert_eq!(spec.group_metrics, GroupMetrics::Topic);
        assert_eq!(spec.to_input().validate(1).expect("round trip"), spec);
        for bad in ["", "has space", "slash/", "ü", &"x".repeat(256)] {
            let mut i = input();
            i.client_id = Some(bad.to_string());
            assert_eq!(fields(i.validate(1)), vec!["client_id"], "{bad:?}");
        }
        let mut i = input();
        i.group_metrics = Some("group".into());
        assert_eq!(fields(i.validate(1)), vec!["group_metrics"]);
    }

    #[test]
    fn valid_input_gets_defaults() {
        let spec = input().validate(1).unwrap();
        assert_eq!(spec.interval, Duration::from_secs(15));
        assert_eq!(spec.timeout, Duration::from_secs(12));
        assert_eq!(spec.connection.security_protocol(), "plaintext");
        let mut i = input();
        i.interval = None;
        let spec = i.validate(1).unwrap();
        assert_eq!(spec.interval, DEFAULT_INTERVAL);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT_CAP);
    }

    #[test]
    fn bootstrap_rules() {
        let mut i = input();
        i.bootstrap = vec![];
        assert_eq!(fields(i.validate(1)), ["bootstrap"]);
        for bad in ["host", "host:", "host:0", "host:70000", ":9092", "tcp://h:1", " h:1", "::1:9092", "a,b:1"] {
            let mut i = input();
            i.bootstrap = vec![bad.into()];
            assert_eq!(fields(i.validate(1)), ["bootstrap[0]"], "{bad}");
        }
        let mut i = input();
        i.bootstrap = vec!["[::1]:9092".into(), "h:1".into(), "h:1".into()];
        assert_eq!(fields(i.validate(1)), ["bootstrap[2]"]);
    }

    #[test]
    fn lag_history_rules() {
        assert_eq!(input().validate(1).unwrap().lag_history, crate::history::DEFAULT_HISTORY);
        for (interval, history, bad) in [
            ("30s", "2h", vec![]),
            ("1s", "1h", vec![]),
            ("1s", "2h", vec!["lag_history"]),
            ("30s", "5m", vec!["lag_history"]),
            ("30s", "25h", vec!["lag_history"]),
            ("30s", "soon", vec!["lag_history"]),
        ] {
            let mut i = input();
            i.interval = Some(interval.into());
            i.lag_history = Some(history.into());
            if bad.is_empty() {
                assert!(i.validate(1).is_ok(), "{interval} {history}");
            } else {
                assert_eq!(fields(i.validate(1)), bad, "{interval} {history}");
            }
        }
        // Stored specs from before the field read with the default.
        let spec = input().validate(1).unwrap();
        let mut stored = serde_json::to_value(&spec).unwrap();
        stored.as_object_mut().unwrap().remove("lag_history");
        let old: MonitorSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(old.lag_history, crate::history::DEFAULT_HISTORY);
        // A long value is refused without being echoed whole.
        let mut i = input();
        i.lag_history = Some("x".repeat(5000));
        let e = i.validate(1).unwrap_err().to_string();
        assert!(e.len() < 600, "{e}");
    }

    #[test]
    fn interval_and_timeout_rules() {
        for (interval, timeout, bad) in [
            ("500ms", None, vec!["interval"]),
            ("2h", None, vec!["interval"]),
            ("soon", None, vec!["interval"]),
            ("10s", Some("10s"), vec!["timeout"]),
            ("10s", Some("20s"), vec!["timeout"]),
            ("10s", Some("10ms"), vec!["timeout"]),
            ("10s", Some("x"), vec!["timeout"]),
        ] {
            let mut i = input();
            i.interval = Some(interval.into());
            i.timeout = timeout.map(String::from);
            assert_eq!(fields(i.validate(1)), bad, "{interval} {timeout:?}");
        }
    }

    #[test]
    fn regex_sasl_tls_rules_and_all_errors_at_once() {
        let mut i = input();
        i.id = "bad id".into();
        i.topic_include = Some("orders(".into());
        i.group_exclude = Some("[".into());
        i.sasl = Some(SaslInput { mechanism: "GSSAPI".into(), username: "".into(), ..Default::default() });
        i.tls = Some(TlsInput { cert_file: Some("c.pem".into()), ..Default::default() });
        assert_eq!(
            fields(i.validate(1)),
            [
                "id",
                "topic_include",
                "group_exclude",
                "sasl.mechanism",
                "sasl.username",
                "sasl.password",
                "tls.key_file"
            ]
        );
    }

    #[test]
    fn placement_fields_are_validated() {
        let mut i = input();
        i.pinned_collector = Some("bad id".into());
        i.collector_labels.insert("zone-x".into(), "dmz".into());
        assert_eq!(fields(i.validate(1)), ["collector_labels.zone-x", "pinned_collector"]);
        let mut i = input();
        i.pinned_collector = Some("c2".into());
        i.collector_labels.insert("zone".into(), "dmz".into());
        let spec = i.validate(1).unwrap();
        assert_eq!(spec.pinned_collector.as_ref().map(|c| c.as_str()), Some("c2"));
        assert_eq!(spec.to_input().validate(1).unwrap(), spec);
    }

    #[test]
    fn filters_are_anchored_and_exclude_wins() {
        let mut i = input();
        i.topic_include = Some("orders.*".into());
        i.topic_exclude = Some("orders-tmp".into());
        let spec = i.validate(1).unwrap();
        assert!(spec.filters.topic_allowed("orders-eu"));
        assert!(!spec.filters.topic_allowed("orders-tmp"));
        assert!(!spec.filters.topic_allowed("my-orders"));
        assert!(spec.filters.group_allowed("anything"));
        assert_eq!(spec.filter_patterns()[0].as_deref(), Some("orders.*"));
    }

    #[test]
    fn secrets_never_print() {
        let mut i = input();
        i.sasl = Some(SaslInput {
            mechanism: "scram-sha-512".into(),
            username: "svc".into(),
            password: Some(Secret::new("hunter2")),
            password_env: None,
            ..Default::default()
        });
        i.tls = Some(TlsInput { key_password: Some(Secret::new("keypass")), ..Default::default() });
        let spec = i.validate(1).unwrap();
        assert_eq!(spec.connection.sasl.as_ref().unwrap().mechanism, SaslMechanism::ScramSha512);
        assert_eq!(spec.connection.security_protocol(), "sasl_ssl");
        for text in [format!("{spec:?}"), format!("{i:?}")] {
            assert!(!text.contains("hunter2") && !text.contains("keypass"), "{text}");
        }
    }

    #[test]
    fn spec_round_trips_through_input_and_json() {
        let mut i = input();
        i.topic_exclude = Some("__.*".into());
        let spec = i.validate(3).unwrap();
        assert_eq!(spec.to_input().validate(3).unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        let back: MonitorSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    mod hostile {
        use proptest::collection::{btree_map, vec};
        use proptest::option;
        use proptest::prelude::*;

        use super::super::*;

        fn any_text() -> impl Strategy<Value = String> {
            prop_oneof![".{0,40}", "[a-z0-9.:\\[\\]-]{0,30}", "[0-9]{1,6}(ms|s|m|h|d)?", "\\PC{0,8}"]
        }

        proptest! {
            #![proptest_config(crate::testing::proptest_config())]
            /// Any input either validates into a spec that round-trips
            /// (through its input form and through JSON), or is refused
            /// with named fields. Never a panic.
            #[test]
            fn validation_never_panics_and_accepted_specs_round_trip(
                id in any_text(),
                bootstrap in vec(any_text(), 0..4),
                interval in option::of(any_text()),
                timeout in option::of(any_text()),
                pattern in option::of(any_text()),
                labels in btree_map(any_text(), any_text(), 0..3),
                mechanism in option::of(any_text()),
                path in option::of(any_text()),
            ) {
                let input = MonitorInput {
                    id,
                    bootstrap,
                    interval,
                    timeout,
                    topic_include: pattern.clone(),
                    group_exclude: pattern,
                    labels,
                    sasl: mechanism.map(|m| SaslInput { mechanism: m, username: "u".into(), password: Some(Secret::new("p")), ..Default::default() }),
                    tls: path.map(|p| TlsInput { ca_file: Some(p), ..Default::default() }),
                    ..Default::default()
                };
                match input.validate(3) {
                    Ok(spec) => {
                        prop_assert_eq!(spec.to_input().validate(3).unwrap(), spec.clone());
                        let json = serde_json::to_string(&spec).unwrap();
                        prop_assert_eq!(serde_json::from_str::<MonitorSpec>(&json).unwrap(), spec);
                    }
                    Err(e) => prop_assert!(!e.0.is_empty() && e.0.iter().all(|f| !f.field.is_empty())),
                }
            }

            /// Oversized input is refused by size, cheaply: huge bootstrap
            /// lists, huge patterns, huge ids, many labels.
            #[test]
            fn oversized_input_is_refused(n in 65usize..5000, len in 1025usize..100_000) {
                let big = "a".repeat(len);
                let cases = [
                    MonitorInput { id: "m".into(), bootstrap: (0..n).map(|i| format!("h{i}:9092")).collect(), ..Default::default() },
                    MonitorInput { id: "m".into(), bootstrap: vec!["h:1".into()], topic_include: Some(big.clone()), ..Default::default() },
                    MonitorInput { id: big.clone(), bootstrap: vec!["h:1".into()], ..Default::default() },
                    MonitorInput { id: "m".into(), bootstrap: vec![format!("{big}:1")], ..Default::default() },
                    MonitorInput { id: "m".into(), bootstrap: vec!["h:1".into()], labels: (0..n).map(|i| (format!("k{i}"), "v".into())).collect(), ..Default::default() },
                ];
                for c in cases {
                    prop_assert!(c.validate(1).is_err());
                }
            }
        }

        #[test]
        fn look_alike_hosts_and_control_characters_are_refused() {
            for entry in ["k\u{0430}fka:9092", "kafka\u{200b}:9092", "kafka\n:9092", "ka\\fka:9092"] {
                let i = MonitorInput { id: "m".into(), bootstrap: vec![entry.into()], ..Default::default() };
                assert!(i.validate(1).is_err(), "{entry:?}");
            }
            let mut i = MonitorInput { id: "m".into(), bootstrap: vec!["h:1".into()], ..Default::default() };
            i.labels.insert("team".into(), "a\u{0}b".into());
            assert!(i.validate(1).is_err());
        }
    }

    fn oauth(endpoint: &str) -> SaslInput {
        SaslInput {
            mechanism: "OAUTHBEARER".into(),
            username: "kollector".into(),
            password: Some(Secret::new("s3cret")),
            token_endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    #[test]
    fn oauthbearer_needs_a_client_and_a_token_endpoint_that_keeps_the_secret_off_the_network() {
        let mut i = input();
        i.tls = Some(TlsInput::default());
        i.sasl = Some(SaslInput {
            extensions: BTreeMap::from([("logicalCluster".into(), "lkc-1".into())]),
            scope: Some("kafka".into()),
            ..oauth("https://idp.example/token")
        });
        let spec = i.validate(1).expect("valid");
        let sasl = spec.connection.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism.wire_name(), "OAUTHBEARER");
        assert_eq!(sasl.oidc.as_ref().unwrap().extensions["logicalCluster"], "lkc-1");
        // It survives the round trip through the input form (update, state file).
        assert_eq!(spec.to_input().validate(1).unwrap(), spec);
        for ok in ["http://127.0.0.1:8080/token", "http://localhost/t", "http://[::1]:9/t", "HTTPS://idp/t"] {
            let mut i = input();
            i.tls = Some(TlsInput::default());
            i.sasl = Some(oauth(ok));
            assert!(i.validate(1).is_ok(), "{ok}");
        }
        for bad in
            ["http://idp.example/token", "ftp://idp/t", "idp.example/token", "https://user:pw@idp/t", "https:///t"]
        {
            let mut i = input();
            i.tls = Some(TlsInput::default());
            i.sasl = Some(oauth(bad));
            assert_eq!(fields(i.validate(1)), ["sasl.token_endpoint"], "{bad}");
        }
        let mut i = input();
        i.tls = Some(TlsInput::default());
        i.sasl = Some(SaslInput { token_endpoint: None, username: String::new(), password: None, ..oauth("") });
        assert_eq!(fields(i.validate(1)), ["sasl.username", "sasl.password", "sasl.token_endpoint"]);
        let mut i = input();
        i.tls = Some(TlsInput::default());
        i.sasl = Some(SaslInput {
            extensions: BTreeMap::from([("auth".into(), "x".into()), ("bad-key".into(), "x".into())]),
            ..oauth("https://idp/t")
        });
        assert_eq!(fields(i.validate(1)), ["sasl.extensions.auth", "sasl.extensions.bad-key"]);
        let mut i = input();
        i.tls = Some(TlsInput::default());
        i.sasl = Some(SaslInput {
            extensions: BTreeMap::from([("pool".into(), "é".into()), ("empty".into(), String::new())]),
            ..oauth("https://idp/t")
        });
        assert_eq!(fields(i.validate(1)), ["sasl.extensions.empty", "sasl.extensions.pool"]);
        // Tokens to a broker elsewhere need verified TLS.
        let mut i = input();
        i.bootstrap = vec!["kafka.example:9093".into()];
        i.sasl = Some(oauth("https://idp/t"));
        assert_eq!(fields(i.validate(1)), ["tls"]);
        i.tls = Some(TlsInput { insecure_skip_verify: Some(true), ..Default::default() });
        assert_eq!(fields(i.validate(1)), ["tls"]);
        i.tls = Some(TlsInput::default());
        assert!(i.validate(1).is_ok());
        // OIDC settings on another mechanism are a mistake, said so.
        let mut i = input();
        i.tls = Some(TlsInput::default());
        i.sasl = Some(SaslInput { mechanism: "PLAIN".into(), ..oauth("https://idp/t") });
        assert_eq!(fields(i.validate(1)), ["sasl.mechanism"]);
    }

    #[test]
    fn msk_iam_takes_no_password_and_finds_its_region_in_the_bootstrap_hosts() {
        let msk = |bootstrap: &[&str], region: Option<&str>| {
            let mut i = input();
            i.bootstrap = bootstrap.iter().map(|b| b.to_string()).collect();
            i.tls = Some(TlsInput::default());
            i.sasl = Some(SaslInput {
                mechanism: "aws_msk_iam".into(),
                aws_region: region.map(str::to_string),
                ..Default::default()
            });
            i.validate(1)
        };
        let spec = msk(&["b-1.orders.abc123.c2.kafka.eu-west-1.amazonaws.com:9098"], None).unwrap();
        let sasl = spec.connection.sasl.as_ref().unwrap();
        assert_eq!((sasl.mechanism.as_str(), sasl.mechanism.wire_name()), ("AWS_MSK_IAM", "OAUTHBEARER"));
        assert_eq!(sasl.aws.as_ref().unwrap().region, "eu-west-1");
        assert_eq!(spec.to_input().validate(1).unwrap(), spec);
        let serverless = msk(&["boot-abcd.c1.kafka-serverless.us-east-2.amazonaws.com:9098"], None).unwrap();
        assert_eq!(serverless.connection.sasl.unwrap().aws.unwrap().region, "us-east-2");
        assert_eq!(
            msk(&["127.0.0.1:9098"], Some("ap-southeast-2")).unwrap().connection.sasl.unwrap().aws.unwrap().region,
            "ap-southeast-2"
        );
        assert_eq!(fields(msk(&["127.0.0.1:9098"], None)), ["sasl.aws_region"]);
        assert_eq!(fields(msk(&["127.0.0.1:9098"], Some("Europe"))), ["sasl.aws_region"]);
        assert_eq!(
            fields(msk(
                &["b-1.x.kafka.eu-west-1.amazonaws.com:9098", "b-2.x.kafka.us-east-1.amazonaws.com:9098"],
                None
            )),
            ["sasl.aws_region"]
        );
        assert!(msk_region_of("kafka.eu-west-1.amazonaws.com.evil.example:9098").is_none());
        // MSK IAM tokens go to MSK brokers (or this host) only.
        assert_eq!(fields(msk(&["kafka.example:9098"], Some("eu-west-1"))), ["bootstrap[0]"]);
        let mut i = input();
        i.bootstrap = vec!["127.0.0.1:9098".into()];
        i.sasl = Some(SaslInput {
            mechanism: "AWS_MSK_IAM".into(),
            username: "u".into(),
            password: Some(Secret::new("p")),
            aws_region: Some("us-east-1".into()),
            ..Default::default()
        });
        i.tls = Some(TlsInput::default());
        assert_eq!(fields(i.validate(1)), ["sasl.username"]);
        // Tokens never go in clear, whatever the bootstrap.
        i.sasl.as_mut().unwrap().username = String::new();
        i.sasl.as_mut().unwrap().password = None;
        i.tls = None;
        assert_eq!(fields(i.validate(1)), ["tls"]);
    }
}
