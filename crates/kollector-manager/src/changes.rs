//! Monitor changes, computed in full before anything is stored: validation,
//! and the merge of an update with the stored spec (secrets left out keep
//! their stored values). Pure functions; the ManagerService stores the
//! result through its `DesiredState`, so a rejected request changes nothing.

use kollector_core::{MonitorInput, MonitorSpec, ValidationErrors};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid monitor spec: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error("monitor {0:?} already exists")]
    AlreadyExists(String),
    #[error("monitor {0:?} does not exist")]
    NotFound(String),
    /// An update would send a stored secret somewhere new.
    #[error("{field}: this update changes {changed}, so the stored secret is not carried over; send it again with the update")]
    SecretRequired { field: &'static str, changed: String },
}

/// Validates a new monitor (generation 1 until the store gives it one).
pub fn prepare_create(input: &MonitorInput) -> Result<MonitorSpec, CatalogError> {
    Ok(input.validate(1)?)
}

/// Validates a replacement of `current`. Secrets left empty in the input
/// keep their stored values (read APIs never return them, so a client cannot
/// send them back), but only while the monitor still connects to the same
/// place: a stored password kept across a change of bootstrap, TLS settings
/// or SASL mechanism would go to a broker the caller chose, so such an update
/// must carry the secret again. Returns `None` when nothing changed.
pub fn prepare_update(current: &MonitorSpec, input: &MonitorInput) -> Result<Option<MonitorSpec>, CatalogError> {
    let mut input = input.clone();
    let mut kept = Vec::new();
    if let (Some(new), Some(old)) = (input.sasl.as_mut(), current.connection.sasl.as_ref()) {
        let takes_password = kollector_core::SaslMechanism::parse(&new.mechanism)
            .is_some_and(|m| m != kollector_core::SaslMechanism::AwsMskIam);
        if takes_password && new.password.is_none() && new.password_env.is_none() && !old.password.expose().is_empty() {
            new.password = Some(old.password.clone());
            kept.push("sasl.password");
        }
    }
    if let (Some(new), Some(old)) = (input.tls.as_mut(), current.connection.tls.as_ref()) {
        if new.key_password.is_none() && old.key_password.is_some() {
            new.key_password = old.key_password.clone();
            kept.push("tls.key_password");
        }
    }
    let spec = input.validate(current.generation + 1)?;
    if let Some(field) = kept.first() {
        let changed = destination_changes(current, &spec);
        if !changed.is_empty() {
            return Err(CatalogError::SecretRequired { field, changed: changed.join(", ") });
        }
    }
    let unchanged = MonitorSpec { generation: current.generation, ..spec.clone() } == *current;
    Ok((!unchanged).then_some(spec))
}

/// What differs between where two specs send their credentials: the
/// brokers, the SASL mechanism and every TLS setting (turning TLS off, a new
/// CA or skipping verification would let another host pose as the broker).
fn destination_changes(old: &MonitorSpec, new: &MonitorSpec) -> Vec<&'static str> {
    let (a, b) = (&old.connection, &new.connection);
    let sorted = |v: &[String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
        v.sort();
        v
    };
    let mut changed = Vec::new();
    if sorted(&a.bootstrap) != sorted(&b.bootstrap) {
        changed.push("bootstrap");
    }
    if a.sasl.as_ref().map(|s| s.mechanism) != b.sasl.as_ref().map(|s| s.mechanism) {
        changed.push("the SASL mechanism");
    }
    // An OAUTHBEARER client secret goes to the token endpoint, not to the
    // brokers: a new endpoint (or a new CA for it) is a new destination.
    let endpoint = |s: &Option<kollector_core::SaslConfig>| {
        s.as_ref().and_then(|s| s.oidc.as_ref()).map(|o| (o.token_endpoint.clone(), o.ca_file.clone()))
    };
    if endpoint(&a.sasl) != endpoint(&b.sasl) {
        changed.push("the token endpoint");
    }
    let tls = |t: &Option<kollector_core::TlsConfig>| {
        t.as_ref().map(|t| (t.ca_file.clone(), t.cert_file.clone(), t.key_file.clone(), t.insecure_skip_verify))
    };
    if tls(&a.tls) != tls(&b.tls) {
        changed.push("TLS settings");
    }
    changed
}

#[cfg(test)]
mod tests {
    use kollector_core::{SaslInput, Secret};

    use super::*;

    fn input(id: &str) -> MonitorInput {
        MonitorInput { id: id.into(), bootstrap: vec!["h:1".into()], ..Default::default() }
    }

    #[test]
    fn an_identical_update_is_no_change_and_an_invalid_one_is_refused() {
        let current = prepare_create(&input("a")).unwrap();
        assert_eq!(prepare_update(&current, &input("a")).unwrap(), None);
        let mut changed = input("a");
        changed.interval = Some("10s".into());
        assert_eq!(prepare_update(&current, &changed).unwrap().unwrap().interval, std::time::Duration::from_secs(10));
        let mut bad = input("a");
        bad.interval = Some("0s".into());
        assert!(matches!(prepare_update(&current, &bad), Err(CatalogError::Invalid(_))));
    }

    #[test]
    fn update_without_password_keeps_the_stored_one() {
        let mut i = input("a");
        i.sasl = Some(SaslInput {
            mechanism: "PLAIN".into(),
            username: "u".into(),
            password: Some(Secret::new("pw")),
            password_env: None,
            ..Default::default()
        });
        let current = prepare_create(&i).unwrap();
        i.sasl.as_mut().unwrap().password = None;
        i.interval = Some("5s".into());
        let v2 = prepare_update(&current, &i).unwrap().unwrap();
        assert_eq!(v2.connection.sasl.unwrap().password.expose(), "pw");
    }

    #[test]
    fn a_kept_secret_never_follows_a_change_of_destination() {
        let mut i = input("a");
        i.sasl = Some(SaslInput {
            mechanism: "SCRAM-SHA-512".into(),
            username: "u".into(),
            password: Some(Secret::new("pw")),
            password_env: None,
            ..Default::default()
        });
        i.tls = Some(kollector_core::TlsInput { key_password: Some(Secret::new("kp")), ..Default::default() });
        let current = prepare_create(&i).unwrap();
        let without_secrets = |f: &dyn Fn(&mut MonitorInput)| {
            let mut u = i.clone();
            u.sasl.as_mut().unwrap().password = None;
            u.tls.as_mut().unwrap().key_password = None;
            f(&mut u);
            u
        };
        type Change<'a> = &'a dyn Fn(&mut MonitorInput);
        let cases: Vec<(Change, &str)> = vec![
            (&|u| u.bootstrap = vec!["attacker:9092".into()], "bootstrap"),
            (&|u| u.bootstrap.push("attacker:9092".into()), "bootstrap"),
            (&|u| u.sasl.as_mut().unwrap().mechanism = "PLAIN".into(), "SASL mechanism"),
            (&|u| u.tls = None, "TLS settings"),
            (&|u| u.tls.as_mut().unwrap().insecure_skip_verify = Some(true), "TLS settings"),
            (&|u| u.tls.as_mut().unwrap().ca_file = Some("/tmp/ca.pem".into()), "TLS settings"),
        ];
        for (change, want) in cases {
            let e = prepare_update(&current, &without_secrets(change)).unwrap_err();
            assert!(matches!(e, CatalogError::SecretRequired { .. }), "{e}");
            assert!(e.to_string().contains(want), "{e}");
            assert!(!e.to_string().contains("pw"));
        }
        // The same destination (bootstrap in another order or case) keeps the secrets.
        let reordered = without_secrets(&|u| u.interval = Some("5s".into()));
        assert!(prepare_update(&current, &reordered).unwrap().is_some());
        // Sending the secret again allows the move.
        let mut moved = without_secrets(&|u| u.bootstrap = vec!["new:9092".into()]);
        moved.sasl.as_mut().unwrap().password = Some(Secret::new("pw2"));
        moved.tls.as_mut().unwrap().key_password = Some(Secret::new("kp2"));
        let v2 = prepare_update(&current, &moved).unwrap().unwrap();
        assert_eq!(v2.connection.sasl.unwrap().password.expose(), "pw2");
    }

    #[test]
    fn a_kept_client_secret_never_follows_a_new_token_endpoint() {
        let mut i = input("a");
        i.sasl = Some(SaslInput {
            mechanism: "OAUTHBEARER".into(),
            username: "kollector".into(),
            password: Some(Secret::new("client-secret")),
            token_endpoint: Some("https://idp.example/token".into()),
            ..Default::default()
        });
        i.tls = Some(kollector_core::TlsInput::default());
        let current = prepare_create(&i).unwrap();
        let mut u = i.clone();
        u.sasl.as_mut().unwrap().password = None;
        u.sasl.as_mut().unwrap().scope = Some("kafka".into());
        let kept = prepare_update(&current, &u).unwrap().unwrap();
        assert_eq!(kept.connection.sasl.unwrap().password.expose(), "client-secret");
        type Change<'a> = &'a dyn Fn(&mut MonitorInput);
        let changes: [Change; 2] =
            [&|u| u.sasl.as_mut().unwrap().token_endpoint = Some("https://attacker.example/token".into()), &|u| {
                u.sasl.as_mut().unwrap().ca_file = Some("/tmp/ca.pem".into())
            }];
        for change in changes {
            let mut moved = u.clone();
            change(&mut moved);
            let e = prepare_update(&current, &moved).unwrap_err();
            assert!(e.to_string().contains("token endpoint") && !e.to_string().contains("client-secret"), "{e}");
        }
    }
}
