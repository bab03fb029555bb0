//! API bearer tokens and the two roles that use them.
//!
//! A token is 32 random bytes, shown once when it is made (`kollector token
//! add`) and stored only as its SHA-256 in the manager's tokens file, next to
//! a name, a role and an optional expiry. A plain hash is enough here (no
//! salt, no slow KDF): the tokens are random and 256 bits long, so there is
//! no dictionary to attack; the hash only has to keep a leaked tokens file
//! from being a list of working credentials.
//!
//! Deciding whether a call may go on is [`TokenBook::check`], a pure function
//! of the book, the presented header, the role a method needs and the time,
//! so every refusal path is unit-tested without a server.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::Deserialize;

/// What a caller may do. `Admin` includes everything `Viewer` may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads and status: get, list, show, collectors, assignments.
    Viewer,
    /// Changes monitors, drains collectors, runs probes.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// Prefix of every token, so a leaked one is recognisable in a secret scanner.
pub const TOKEN_PREFIX: &str = "kollector_";

/// A new random token (shown once, never stored).
pub fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| TokenError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `[[token]]` entry of a tokens file, as `kollector token add` writes it.
pub fn entry_toml(name: &str, role: Role, hash: &str, expires: Option<SystemTime>) -> String {
    let mut s = format!("[[token]]\nname = {:?}\nrole = {:?}\nsha256 = {:?}\n", name, role.as_str(), hash);
    if let Some(t) = expires {
        s.push_str(&format!("expires = {:?}\n", humantime::format_rfc3339_seconds(t).to_string()));
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("tokens file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("the system random source failed")]
    Random,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLine {
    name: String,
    role: String,
    sha256: String,
    expires: Option<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    role: Role,
    expires: Option<SystemTime>,
}

/// The tokens a manager accepts, keyed by hash.
#[derive(Clone, Debug, Default)]
pub struct TokenBook {
    by_hash: HashMap<String, Entry>,
}

/// Why a call was refused. Never carries the presented token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `authorization: Bearer …` header.
    Missing,
    /// A header that is not a bearer token of ours, or a token not in the book.
    Unknown,
    Expired {
        name: String,
    },
    Forbidden {
        name: String,
        role: Role,
        needed: Role,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Missing => f.write_str("this call needs a token (authorization: Bearer <token>)"),
            Refusal::Unknown => f.write_str("the token is not valid"),
            Refusal::Expired { name } => write!(f, "token {name:?} has expired"),
            Refusal::Forbidden { name, role, needed } => {
                write!(f, "token {name:?} has role {}; this call needs {}", role.as_str(), needed.as_str())
            }
        }
    }
}

impl Refusal {
    /// `UNAUTHENTICATED` when the caller is not known, `PERMISSION_DENIED`
    /// when it is known but may not do this.
    pub fn status(&self) -> tonic::Status {
        match self {
            Refusal::Forbidden { .. } => tonic::Status::permission_denied(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

impl TokenBook {
    pub fn parse(path: &str, text: &str) -> Result<TokenBook, TokenError> {
        let invalid = |message: String| TokenError::Invalid { path: path.to_string(), message };
        let file: TokensFile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        let mut by_hash = HashMap::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let at = format!("token #{} ({:?})", i + 1, t.name);
            let role = Role::parse(&t.role).ok_or_else(|| invalid(format!("{at}: role must be viewer or admin")))?;
            let hash = t.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!("{at}: sha256 must be 64 hex digits")));
            }
            let expires = match t.expires {
                None => None,
                Some(s) => Some(
                    humantime::parse_rfc3339_weak(&s)
                        .map_err(|e| invalid(format!("{at}: expires {s:?} is not an RFC 3339 time: {e}")))?,
                ),
            };
            if by_hash.insert(hash, Entry { name: t.name, role, expires }).is_some() {
                return Err(invalid(format!("{at}: the same token appears twice")));
            }
        }
        Ok(TokenBook { by_hash })
    }

    pub fn load(path: &Path) -> Result<TokenBook, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: shown.clone(), source })?;
        TokenBook::parse(&shown, &text)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Whether the caller presenting `authorization` (the header's value)
    /// may call a method that needs `needed`, at `now`. Returns the token's name.
    pub fn check(&self, authorization: Option<&str>, needed: Role, now: SystemTime) -> Result<&str, Refusal> {
        let header = authorization.ok_or(Refusal::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(Refusal::Unknown)?;
        // Looking the hash up leaks nothing useful through timing: finding a
        // stored hash by probing would need a SHA-256 preimage.
        let entry = self.by_hash.get(&hash_token(token)).ok_or(Refusal::Unknown)?;
        if entry.expires.is_some_and(|t| now >= t) {
            return Err(Refusal::Expired { name: entry.name.clone() });
        }
        if entry.role < needed {
            return Err(Refusal::Forbidden { name: entry.name.clone(), role: entry.role, needed });
        }
        Ok(&entry.name)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn book(now: SystemTime) -> (TokenBook, String, String, String) {
        let (admin, viewer, old) = (new_token().unwrap(), new_token().unwrap(), new_token().unwrap());
        let text = [
            entry_toml("ops", Role::Admin, &hash_token(&admin), None),
            entry_toml("grafana", Role::Viewer, &hash_token(&viewer), Some(now + Duration::from_secs(3600))),
            entry_toml("old", Role::Admin, &hash_token(&old), Some(now - Duration::from_secs(5))),
        ]
        .join("\n");
        (TokenBook::parse("t", &text).unwrap(), admin, viewer, old)
    }

    #[test]
    fn each_refusal_has_its_reason_and_code() {
        let now = SystemTime::now();
        let (b2, a2, v2, o2) = book(now);
        let foreign = new_token().unwrap();
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(b2.check(Some(&bearer(&a2)), Role::Admin, now), Ok("ops"));
        assert_eq!(b2.check(Some(&bearer(&v2)), Role::Viewer, now), Ok("grafana"));
        assert_eq!(b2.check(Some(&bearer(&a2)), Role::Viewer, now), Ok("ops"));
        let forbidden = b2.check(Some(&bearer(&v2)), Role::Admin, now).unwrap_err();
        assert!(matches!(forbidden, Refusal::Forbidden { .. }));
        assert_eq!(forbidden.status().code(), tonic::Code::PermissionDenied);
        for (header, want) in [
            (None, Refusal::Missing),
            (Some(bearer(&foreign)), Refusal::Unknown),
            (Some(a2.clone()), Refusal::Unknown),
            (Some("Basic dXNlcjpwdw==".to_string()), Refusal::Unknown),
            (Some(bearer(&o2)), Refusal::Expired { name: "old".into() }),
            (Some(bearer(&v2)), Refusal::Expired { name: "grafana".into() }),
        ] {
            let at = if want == (Refusal::Expired { name: "grafana".into() }) {
                now + Duration::from_secs(3600)
            } else {
                now
            };
            let got = b2.check(header.as_deref(), Role::Viewer, at).unwrap_err();
            assert_eq!(got, want);
            assert_eq!(got.status().code(), tonic::Code::Unauthenticated);
            // The message never contains the presented value.
            if let Some(h) = &header {
                assert!(!got.to_string().contains(h.trim_start_matches("Bearer ")));
            }
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_entry_named() {
        for (text, want) in [
            ("[[token]]\nname='a'\nrole='root'\nsha256='00'\n", "role must be viewer or admin"),
            ("[[token]]\nname='a'\nrole='admin'\nsha256='xyz'\n", "64 hex digits"),
            (&*format!("[[token]]\nname='a'\nrole='admin'\nsha256='{}'\nexpires='soon'\n", "a".repeat(64)), "RFC 3339"),
            ("[[token]]\nname='a'\nrole='admin'\nsha256='00'\npassword='x'\n", "unknown field"),
        ] {
            let e = TokenBook::parse("f", text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let dup = entry_toml("a", Role::Admin, &"b".repeat(64), None).repeat(2);
        assert!(TokenBook::parse("f", &dup).unwrap_err().to_string().contains("twice"));
        assert!(TokenBook::parse("f", "").unwrap().is_empty());
    }
}
