//! The standalone config file (TOML): listen addresses and the initial monitors.
//!
//! Parsing is strict: unknown keys are errors, and every error names the file,
//! the line and the field, so a typo like `intervall` never silently falls
//! back to a default. The whole file is rejected if any monitor is invalid:
//! a half-applied config is worse than none. Environment lookups (for
//! `password_env`) are passed in, keeping this module free of I/O.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::spec::{MonitorInput, MonitorSpec, Secret};

/// Default address of `/metrics` and health endpoints.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";
/// Default address of the gRPC ManagerService.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7070";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListenSection {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    http: ListenSection,
    #[serde(default)]
    grpc: ListenSection,
    #[serde(default)]
    monitors: Vec<Spanned<MonitorInput>>,
}

/// A validated config file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub monitors: Vec<MonitorSpec>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field, e.g. `monitors[1].interval`.
    pub field: Option<String>,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigFileError {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if let Some(field) = &e.field {
                write!(f, ": {field}")?;
            }
            write!(f, ": {}", e.message)?;
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Finds the line where `key = ` is written inside `span`, so a field error
/// points at the offending line rather than at the start of its table.
fn line_of_key(text: &str, span: &Range<usize>, key: &str) -> Option<usize> {
    let start = span.start.min(text.len());
    let end = span.end.min(text.len());
    let region = text.get(start..end)?;
    let mut offset = start;
    for line in region.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return Some(line_of(text, offset));
            }
        }
        // Inline tables: `sasl = { mechanism = "X", ... }`.
        if let Some(pos) = line.find(&format!("{key} =")).or_else(|| line.find(&format!("{key}="))) {
            let before = line[..pos].chars().last();
            if matches!(before, Some(' ') | Some('{') | Some(',')) {
                return Some(line_of(text, offset));
            }
        }
        offset += line.len();
    }
    None
}

/// toml gives an array-of-tables element the span of its `[[monitors]]`
/// header only; the entry's keys run until the next header that is not one
/// of its own sub-tables (`[monitors.sasl]`).
fn monitor_region(text: &str, header: Range<usize>) -> Range<usize> {
    let mut offset = header.end.min(text.len());
    for line in text[offset..].split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[monitors.") {
            return header.start..offset;
        }
        offset += line.len();
    }
    header.start..text.len()
}

impl ConfigFile {
    /// Parses and validates `text` (the contents of `file`). `env` looks up
    /// environment variables for `sasl.password_env`.
    pub fn parse(file: &str, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<ConfigFile, ConfigFileError> {
        let fail = |errors| ConfigFileError { file: file.to_string(), errors };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            fail(vec![ConfigError {
                line: e.span().map(|s| line_of(text, s.start)),
                field: None,
                message: e.message().trim().to_string(),
            }])
        })?;

        let mut errors = Vec::new();
        let mut listen = |section: &str, value: &Option<Spanned<String>>, default: &str| -> Option<SocketAddr> {
            let (s, line) = match value {
                Some(v) => (v.get_ref().as_str(), Some(line_of(text, v.span().start))),
                None => (default, None),
            };
            match s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(ConfigError {
                        line,
                        field: Some(format!("{section}.listen")),
                        message: format!("{s:?} is not an IP:port address"),
                    });
                    None
                }
            }
        };
        let http_listen = listen("http", &raw.http.listen, DEFAULT_HTTP_LISTEN);
        let grpc_listen = listen("grpc", &raw.grpc.listen, DEFAULT_GRPC_LISTEN);

        let mut monitors = Vec::new();
        let mut seen = HashSet::new();
        for (i, entry) in raw.monitors.iter().enumerate() {
            let span = monitor_region(text, entry.span());
            let table_line = line_of(text, span.start);
            let mut input = entry.get_ref().clone();
            if let Some(sasl) = input.sasl.as_mut() {
                if sasl.password.is_none() {
                    if let Some(var) = &sasl.password_env {
                        sasl.password = env(var).filter(|v| !v.is_empty()).map(Secret::new);
                    }
                }
            }
            if !seen.insert(input.id.clone()) {
                errors.push(ConfigError {
                    line: line_of_key(text, &span, "id").or(Some(table_line)),
                    field: Some(format!("monitors[{i}].id")),
                    message: format!("duplicate monitor id {:?}", input.id),
                });
            }
            match input.validate(1) {
                Ok(spec) => monitors.push(spec),
                Err(e) => {
                    for fe in e.0 {
                        let leaf = fe.field.rsplit('.').next().unwrap_or(&fe.field);
                        let leaf = leaf.split('[').next().unwrap_or(leaf);
                        errors.push(ConfigError {
                            line: line_of_key(text, &span, leaf).or(Some(table_line)),
                            field: Some(format!("monitors[{i}].{}", fe.field)),
                            message: fe.message,
                        });
                    }
                }
            }
        }
        match (http_listen, grpc_listen) {
            (Some(http_listen), Some(grpc_listen)) if errors.is_empty() => {
                Ok(ConfigFile { http_listen, grpc_listen, monitors })
            }
            _ => Err(fail(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const GOOD: &str = r#"
[http]
listen = "127.0.0.1:9464"
[grpc]
listen = "127.0.0.1:7070"

[[monitors]]
id = "orders-prod"
bootstrap = ["10.0.0.5:9092", "10.0.0.6:9092"]
interval = "15s"

[[monitors]]
id = "payments"
bootstrap = ["10.0.1.5:9092"]
sasl = { mechanism = "SCRAM-SHA-512", username = "svc", password_env = "PAY_PW" }
"#;

    #[test]
    fn parses_the_documented_example() {
        let cfg = ConfigFile::parse("k.toml", GOOD, |v| (v == "PAY_PW").then(|| "s3cret".into())).unwrap();
        assert_eq!(cfg.monitors.len(), 2);
        assert_eq!(cfg.monitors[0].id.as_str(), "orders-prod");
        assert_eq!(cfg.http_listen.port(), 9464);
        assert_eq!(cfg.monitors[1].connection.sasl.as_ref().unwrap().password.expose(), "s3cret");
    }

    #[test]
    fn the_readmes_example_parses_as_written() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n[http]").expect("the README's config example") + "```toml\n".len();
        let text = &readme[start..start + readme[start..].find("```").unwrap()];
        let cfg = ConfigFile::parse("README.md", text, |_| Some("s3cret".into())).unwrap();
        assert_eq!(cfg.monitors.len(), 4);
        let msk = &cfg.monitors[3];
        assert_eq!(msk.connection.sasl.as_ref().unwrap().aws.as_ref().unwrap().region, "eu-west-1");
        assert_eq!(msk.e2e_probe.as_ref().unwrap().roundtrip_sla, std::time::Duration::from_secs(5));
        assert_eq!(cfg.monitors[1].lag_history, std::time::Duration::from_secs(6 * 3600));
        let oauth = cfg.monitors[2].connection.sasl.as_ref().unwrap();
        assert_eq!((oauth.username.as_str(), oauth.password.expose()), ("kollector", "s3cret"));
        assert_eq!(oauth.oidc.as_ref().unwrap().scope.as_deref(), Some("kafka"));
        assert_eq!(cfg.monitors[0].lag_history, crate::history::DEFAULT_HISTORY);
    }

    #[test]
    fn empty_file_uses_defaults() {
        let cfg = ConfigFile::parse("k.toml", "", no_env).unwrap();
        assert_eq!(cfg.grpc_listen.to_string(), DEFAULT_GRPC_LISTEN);
        assert!(cfg.monitors.is_empty());
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "[[monitors]]\nid = \"a\"\nbootstrap = [\"h:1\"]\nintervall = \"5s\"\n";
        let err = ConfigFile::parse("k.toml", text, no_env).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("k.toml:4"), "{msg}");
        assert!(msg.contains("intervall"), "{msg}");
    }

    #[test]
    fn invalid_fields_name_line_and_field_and_nothing_is_returned() {
        let text = "[[monitors]]\nid = \"a\"\nbootstrap = [\"h:1\"]\n\n[[monitors]]\nid = \"b\"\nbootstrap = [\"h:1\"]\ninterval = \"2h\"\n";
        let err = ConfigFile::parse("k.toml", text, no_env).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!(err.errors[0].line, Some(8));
        assert_eq!(err.errors[0].field.as_deref(), Some("monitors[1].interval"));
        assert!(err.to_string().starts_with("k.toml:8: monitors[1].interval: "), "{err}");
    }

    #[test]
    fn duplicate_ids_and_missing_env_are_reported() {
        let text = "[[monitors]]\nid = \"a\"\nbootstrap = [\"h:1\"]\n[[monitors]]\nid = \"a\"\nbootstrap = [\"h:2\"]\nsasl = { mechanism = \"PLAIN\", username = \"u\", password_env = \"NOPE\" }\n";
        let err = ConfigFile::parse("k.toml", text, no_env).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.clone().unwrap()).collect();
        assert_eq!(fields, ["monitors[1].id", "monitors[1].sasl.password_env"]);
        assert_eq!(err.errors[0].line, Some(5));
        assert_eq!(err.errors[1].line, Some(7));
    }

    #[test]
    fn bad_listen_address() {
        let err = ConfigFile::parse("k.toml", "[grpc]\nlisten = \"nowhere\"\n", no_env).unwrap_err();
        assert_eq!(err.errors[0].field.as_deref(), Some("grpc.listen"));
        assert_eq!(err.errors[0].line, Some(2));
    }
}

#[cfg(test)]
mod deploy_example {
    /// The example shipped in deploy/ must parse (with its password variable set).
    #[test]
    fn deploy_example_config_is_valid() {
        let text = include_str!("../../../deploy/standalone/kollector.toml");
        let cfg = super::ConfigFile::parse("deploy/standalone/kollector.toml", text, |v| {
            (v == "PAYMENTS_KAFKA_PASSWORD").then(|| "x".to_string())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.monitors.len(), 2);
    }

    mod hostile {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::testing::proptest_config())]
            /// Any text, TOML-like or not, parses or is refused with an
            /// error naming the file. Never a panic.
            #[test]
            fn any_config_text_parses_or_is_refused(
                text in prop_oneof![
                    ".{0,200}",
                    "(\\[\\[monitors\\]\\]\n|\\[http\\]\n|\\[grpc\\]\n|id = \"[a-z]{0,5}\"\n|bootstrap = \\[\"[a-z:0-9]{0,8}\"\\]\n|interval = \"[0-9a-z]{0,4}\"\n|listen = \"[0-9.:]{0,12}\"\n|sasl = \\{ mechanism = \"PLAIN\", username = \"u\", password_env = \"[A-Z]{0,3}\" \\}\n){0,12}",
                ],
            ) {
                if let Err(e) = ConfigFile::parse("k.toml", &text, |_| None) {
                    prop_assert!(e.to_string().contains("k.toml"));
                }
            }
        }
    }
}
