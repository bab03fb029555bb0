//! Secrets sealed at rest: SASL passwords and key passphrases are stored in
//! etcd and in the standalone state file only as ChaCha20-Poly1305
//! ciphertexts (ring's AEAD), never in clear.
//!
//! A sealed value reads `kollector-sealed:v1:<key id>:<base64 nonce+ciphertext>`.
//! The associated data is the monitor id, the field and a digest of where
//! the monitor sends the secret (bootstrap servers, SASL mechanism and user,
//! every TLS setting). So a ciphertext copied into another monitor's record
//! or field does not open, and neither does one left in place when someone
//! edits the record in etcd to point the monitor at their own broker: the
//! API's rule against credential redirection (`changes.rs`) holds even
//! against a writer of etcd.
//!
//! The key file holds one key per line, `<key id> <base64 32 bytes>`; the
//! first line seals, every line opens. Rotation: put a new key first on every
//! manager and restart them; the leader re-seals every stored secret with it
//! ([`sealed_with_other_key`] finds them); once none is left (`kollector
//! status` says so), drop the old line. Values written before sealing
//! existed are read as they are and sealed on their next write.

use std::path::Path;

use base64::Engine as _;
use kollector_core::{MonitorSpec, Secret};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};

pub const SEALED_PREFIX: &str = "kollector-sealed:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read secret key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("secret key file {path}: {message}")]
    BadKeyFile { path: String, message: String },
    #[error("a sealed secret names key {0}, which is not in the secret key file")]
    UnknownKey(String),
    #[error("a sealed secret does not open with its key (wrong key, or the value was moved or altered)")]
    DoesNotOpen,
    #[error("a sealed secret is malformed")]
    Malformed,
    #[error("the monitor has a secret, but this node has no secret key to seal it with (--secret-key-file)")]
    NoKey,
    #[error("the system random source failed")]
    Random,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

/// The keys a node seals and opens secrets with. Debug shows key ids only.
pub struct Keyring {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("key_ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>()).finish()
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A new key-file line: `<id> <base64 key>`.
pub fn new_key_line(id: &str) -> Result<String, SealError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(format!("{id} {}", b64().encode(bytes)))
}

/// Whether a stored value is a sealed one.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The id of the key a sealed value names, if it is a sealed value.
pub fn sealed_key_id(value: &str) -> Option<&str> {
    value.strip_prefix(SEALED_PREFIX)?.split_once(':').map(|(id, _)| id)
}

/// Whether a stored spec (secrets as stored, not opened) holds a secret
/// that is not sealed with `keys`' first key: one sealed with an older key
/// or never sealed. The leader re-seals those after a rotation.
pub fn sealed_with_other_key(keys: &Keyring, stored: &MonitorSpec) -> bool {
    let first = keys.first_id();
    let stale = |s: &Secret| sealed_key_id(s.expose()) != Some(first);
    stored.connection.sasl.as_ref().is_some_and(|s| !s.password.expose().is_empty() && stale(&s.password))
        || stored.connection.tls.as_ref().and_then(|t| t.key_password.as_ref()).is_some_and(stale)
}

/// The id for a rotation's new key: `k<n>` past the highest `k<n>` in
/// `text`, so no line has it and, since lines are removed oldest first, no
/// removed line had it either (a value sealed with a removed key must read
/// "unknown key", not fail to open under a new key of the same name).
pub fn next_key_id(text: &str) -> String {
    let highest = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix('k')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("k{}", highest.saturating_add(1))
}

impl Keyring {
    pub fn parse(path: &str, text: &str) -> Result<Keyring, SealError> {
        let bad = |message: String| SealError::BadKeyFile { path: path.to_string(), message };
        let mut keys: Vec<Key> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, material) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("line {}: want \"<id> <key>\"", n + 1)))?;
            if id.is_empty() || id.contains(':') || keys.iter().any(|k| k.id == id) {
                return Err(bad(format!("line {}: key ids must be unique and contain no ':'", n + 1)));
            }
            let raw = b64()
                .decode(material.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| bad(format!("line {}: the key must be 32 bytes of base64", n + 1)))?;
            let key = UnboundKey::new(&CHACHA20_POLY1305, &raw).map_err(|_| bad(format!("line {}: bad key", n + 1)))?;
            keys.push(Key { id: id.to_string(), key: LessSafeKey::new(key) });
        }
        if keys.is_empty() {
            return Err(bad("no key in the file (make one with `kollector secret-key new`)".into()));
        }
        Ok(Keyring { keys, random: SystemRandom::new() })
    }

    /// Reads a key file; refuses one that any user may read (group access is
    /// allowed: Kubernetes hands Secrets to a pod through its fsGroup).
    pub fn load(path: &Path) -> Result<Keyring, SealError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SealError::Read { path: shown.clone(), source })?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o007 != 0 {
                return Err(SealError::BadKeyFile {
                    path: shown,
                    message: "every user may read it; chmod 600 (or 640) it".into(),
                });
            }
        }
        Keyring::parse(&shown, &text)
    }

    /// The id of the key that seals (the file's first line).
    pub fn first_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plain`, bound to `context` (monitor id and field).
    pub fn seal(&self, context: &str, plain: &str) -> Result<String, SealError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{SEALED_PREFIX}{}:{}", key.id, b64().encode(out)))
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SealError> {
        let rest = sealed.strip_prefix(SEALED_PREFIX).ok_or(SealError::Malformed)?;
        let (id, body) = rest.split_once(':').ok_or(SealError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(kollector_core::ids::shown(id)))?;
        let mut data = b64().decode(body).map_err(|_| SealError::Malformed)?;
        if data.len() < NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return Err(SealError::Malformed);
        }
        let mut ciphertext = data.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&data).map_err(|_| SealError::Malformed)?;
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut ciphertext)
            .map_err(|_| SealError::DoesNotOpen)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Malformed)
    }
}

/// What a sealed secret is bound to: the monitor, the field, and where the
/// monitor would send it.
fn context(spec: &MonitorSpec, field: &str) -> String {
    let c = &spec.connection;
    let mut bootstrap: Vec<String> = c.bootstrap.iter().map(|b| b.to_ascii_lowercase()).collect();
    bootstrap.sort();
    let mut destination = format!(
        "{:?}|{:?}|{:?}",
        bootstrap,
        c.sasl.as_ref().map(|s| (s.mechanism.as_str(), &s.username)),
        c.tls.as_ref().map(|t| (&t.ca_file, &t.cert_file, &t.key_file, t.insecure_skip_verify)),
    );
    // An OAUTHBEARER client secret is sent to the token endpoint: it is
    // bound to it too. (Appended only when present, so the contexts of
    // secrets sealed before OAUTHBEARER existed are unchanged.)
    if let Some(o) = c.sasl.as_ref().and_then(|s| s.oidc.as_ref()) {
        destination.push_str(&format!("|{:?}", (&o.token_endpoint, &o.ca_file)));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, destination.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}/{field}/{hex}", spec.id)
}

/// Whether a spec carries any secret that would need sealing.
pub fn has_secrets(spec: &MonitorSpec) -> bool {
    // AWS_MSK_IAM carries no secret (credentials come from the node's AWS chain).
    spec.connection.sasl.as_ref().is_some_and(|s| !s.password.expose().is_empty())
        || spec.connection.tls.as_ref().is_some_and(|t| t.key_password.is_some())
}

/// The spec as it may be stored: every secret sealed. Without a keyring a
/// spec with secrets cannot be stored at all ([`SealError::NoKey`]).
pub fn seal_spec(keys: Option<&Keyring>, spec: &MonitorSpec) -> Result<MonitorSpec, SealError> {
    let mut out = spec.clone();
    if !has_secrets(spec) {
        return Ok(out);
    }
    let keys = keys.ok_or(SealError::NoKey)?;
    if let Some(s) = out.connection.sasl.as_mut().filter(|s| !s.password.expose().is_empty()) {
        s.password = Secret::new(keys.seal(&context(spec, "sasl.password"), s.password.expose())?);
    }
    if let Some(p) = out.connection.tls.as_mut().and_then(|t| t.key_password.as_mut()) {
        *p = Secret::new(keys.seal(&context(spec, "tls.key_password"), p.expose())?);
    }
    Ok(out)
}

/// A stored spec with its secrets opened. Values stored before sealing
/// existed (not sealed) are taken as they are.
pub fn open_spec(keys: Option<&Keyring>, mut spec: MonitorSpec) -> Result<MonitorSpec, SealError> {
    let ctx_sasl = context(&spec, "sasl.password");
    let ctx_tls = context(&spec, "tls.key_password");
    let open = |ctx: &str, s: &mut Secret| -> Result<(), SealError> {
        if is_sealed(s.expose()) {
            *s = Secret::new(keys.ok_or(SealError::NoKey)?.open(ctx, s.expose())?);
        }
        Ok(())
    };
    if let Some(s) = spec.connection.sasl.as_mut() {
        open(&ctx_sasl, &mut s.password)?;
    }
    if let Some(p) = spec.connection.tls.as_mut().and_then(|t| t.key_password.as_mut()) {
        open(&ctx_tls, p)?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use kollector_core::{MonitorInput, SaslInput, TlsInput};
    use proptest::prelude::*;

    use super::*;

    fn ring(ids: &[&str]) -> Keyring {
        let text: Vec<String> = ids.iter().map(|id| new_key_line(id).unwrap()).collect();
        Keyring::parse("k", &text.join("\n")).unwrap()
    }

    fn spec(id: &str, password: &str) -> MonitorSpec {
        MonitorInput {
            id: id.into(),
            bootstrap: vec!["k:9092".into()],
            sasl: Some(SaslInput {
                mechanism: "PLAIN".into(),
                username: "u".into(),
                password: Some(Secret::new(password)),
                password_env: None,
                ..Default::default()
            }),
            tls: Some(TlsInput { key_password: Some(Secret::new("kp")), ..Default::default() }),
            ..Default::default()
        }
        .validate(1)
        .unwrap()
    }

    #[test]
    fn a_sealed_spec_has_no_clear_secret_and_opens_back() {
        let keys = ring(&["k1"]);
        let s = spec("m1", "hunter2-secret");
        let sealed = seal_spec(Some(&keys), &s).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("hunter2-secret") && !json.contains("\"kp\""), "{json}");
        assert_eq!(json.matches(SEALED_PREFIX).count(), 2);
        assert_eq!(open_spec(Some(&keys), sealed.clone()).unwrap(), s);
        // Without the key it neither opens nor stores.
        assert!(matches!(open_spec(None, sealed.clone()), Err(SealError::NoKey)));
        assert!(matches!(seal_spec(None, &s), Err(SealError::NoKey)));
        assert!(matches!(open_spec(Some(&ring(&["k1"])), sealed), Err(SealError::DoesNotOpen)));
    }

    #[test]
    fn a_ciphertext_moved_to_another_monitor_does_not_open() {
        let keys = ring(&["k1"]);
        let a = seal_spec(Some(&keys), &spec("a", "pa")).unwrap();
        let mut b = seal_spec(Some(&keys), &spec("b", "pb")).unwrap();
        b.connection.sasl = a.connection.sasl.clone();
        assert!(matches!(open_spec(Some(&keys), b), Err(SealError::DoesNotOpen)));
    }

    #[test]
    fn a_sealed_secret_does_not_follow_an_edit_of_its_destination_in_etcd() {
        let keys = ring(&["k1"]);
        let sealed = seal_spec(Some(&keys), &spec("m", "pw")).unwrap();
        let edits: [&dyn Fn(&mut MonitorSpec); 4] = [
            &|s| s.connection.bootstrap = vec!["attacker:9092".into()],
            &|s| s.connection.tls = None,
            &|s| s.connection.tls.as_mut().unwrap().insecure_skip_verify = true,
            &|s| s.connection.sasl.as_mut().unwrap().mechanism = kollector_core::spec::SaslMechanism::ScramSha256,
        ];
        for edit in edits {
            let mut tampered = sealed.clone();
            edit(&mut tampered);
            assert!(matches!(open_spec(Some(&keys), tampered), Err(SealError::DoesNotOpen)));
        }
        // Other changes (interval, labels) leave it readable.
        let mut other = sealed.clone();
        other.interval = std::time::Duration::from_secs(5);
        assert!(open_spec(Some(&keys), other).is_ok());
    }

    #[test]
    fn stale_seals_are_found_and_ids_are_never_reused() {
        let (k1, k2) = (new_key_line("k1").unwrap(), new_key_line("k2").unwrap());
        let old = Keyring::parse("f", &k1).unwrap();
        let new = Keyring::parse("f", &format!("{k2}\n{k1}")).unwrap();
        let stored = seal_spec(Some(&old), &spec("m", "hunter2")).unwrap();
        assert!(!sealed_with_other_key(&old, &stored));
        assert!(sealed_with_other_key(&new, &stored), "sealed with k1, k2 seals now");
        let resealed = seal_spec(Some(&new), &open_spec(Some(&new), stored).unwrap()).unwrap();
        assert!(!sealed_with_other_key(&new, &resealed));
        assert!(sealed_with_other_key(&new, &spec("m", "in clear")), "never sealed counts too");
        // After k1's line was removed, rotate must not pick k2 again.
        assert_eq!(next_key_id("k2 AAAA\n"), "k3");
        assert_eq!(next_key_id("k2 AAAA\nk1 BBBB\n"), "k3");
        assert_eq!(next_key_id("# comment\n\nk1 A\nk3 B\nprod B\n"), "k4");
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_first_key() {
        let (line_old, line_new) = (new_key_line("old").unwrap(), new_key_line("new").unwrap());
        let old = Keyring::parse("k", &line_old).unwrap();
        let only_new = Keyring::parse("k", &line_new).unwrap();
        let both = Keyring::parse("k", &format!("{line_new}\n# previous key\n{line_old}\n")).unwrap();
        let sealed = seal_spec(Some(&old), &spec("m", "p")).unwrap();
        assert!(
            matches!(open_spec(Some(&only_new), sealed.clone()), Err(SealError::UnknownKey(id)) if id == "\"old\"")
        );
        assert_eq!(open_spec(Some(&both), sealed).unwrap(), spec("m", "p"));
        let resealed = seal_spec(Some(&both), &spec("m", "p")).unwrap();
        assert!(resealed.connection.sasl.unwrap().password.expose().starts_with("kollector-sealed:v1:new:"));
    }

    #[test]
    fn key_files_are_checked() {
        for (text, want) in [
            ("", "no key"),
            ("k1 notbase64!!", "32 bytes"),
            ("k1 AAAA", "32 bytes"),
            ("onlyid", "want"),
            ("a:b AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "unique"),
        ] {
            let e = Keyring::parse("f", text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let dup = format!("{}\n{}", new_key_line("x").unwrap(), new_key_line("x").unwrap());
        assert!(Keyring::parse("f", &dup).is_err());
        assert!(!format!("{:?}", ring(&["visible-id"])).contains("AAAA"));
    }

    proptest! {
        #![proptest_config(kollector_core::testing::proptest_config())]
        /// Any string seals and opens back; any tampering with a sealed value
        /// is refused, never a panic.
        #[test]
        fn seal_open_round_trips_and_tampering_fails(plain in ".{0,200}", flip in 0usize..400, garbage in ".{0,80}") {
            let keys = ring(&["k"]);
            let sealed = keys.seal("m/f", &plain).unwrap();
            prop_assert_eq!(keys.open("m/f", &sealed).unwrap(), plain.clone());
            prop_assert!(!sealed.contains(&plain) || plain.is_empty() || plain.len() < 4);
            let mut bytes = sealed.clone().into_bytes();
            let i = SEALED_PREFIX.len() + 2 + flip % (bytes.len() - SEALED_PREFIX.len() - 2);
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            if let Ok(t) = String::from_utf8(bytes) {
                prop_assert!(keys.open("m/f", &t).is_err());
            }
            let _ = keys.open("m/f", &format!("{SEALED_PREFIX}k:{garbage}"));
            let _ = keys.open("m/f", &garbage);
        }
    }
}
