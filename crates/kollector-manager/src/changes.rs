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
}

/// Validates a new monitor (generation 1 until the store gives it one).
pub fn prepare_create(input: &MonitorInput) -> Result<MonitorSpec, CatalogError> {
    Ok(input.validate(1)?)
}

/// Validates a replacement of `current`. Secrets left empty in the input
/// keep their stored values (read APIs never return them, so a client cannot
/// send them back). Returns `None` when nothing changed.
pub fn prepare_update(current: &MonitorSpec, input: &MonitorInput) -> Result<Option<MonitorSpec>, CatalogError> {
    let mut input = input.clone();
    if let (Some(new), Some(old)) = (input.sasl.as_mut(), current.connection.sasl.as_ref()) {
        if new.password.is_none() && new.password_env.is_none() {
            new.password = Some(old.password.clone());
        }
    }
    if let (Some(new), Some(old)) = (input.tls.as_mut(), current.connection.tls.as_ref()) {
        if new.key_password.is_none() {
            new.key_password = old.key_password.clone();
        }
    }
    let spec = input.validate(current.generation + 1)?;
    let unchanged = MonitorSpec { generation: current.generation, ..spec.clone() } == *current;
    Ok((!unchanged).then_some(spec))
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
        });
        let current = prepare_create(&i).unwrap();
        i.sasl.as_mut().unwrap().password = None;
        i.interval = Some("5s".into());
        let v2 = prepare_update(&current, &i).unwrap().unwrap();
        assert_eq!(v2.connection.sasl.unwrap().password.expose(), "pw");
    }
}
