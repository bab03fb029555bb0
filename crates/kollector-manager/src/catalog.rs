//! The monitor catalog: desired state, with a generation per monitor.
//!
//! Every change is computed in full (validated, generation bumped) before
//! anything is stored, so a rejected request leaves the catalog as it was.

use std::collections::BTreeMap;

use kollector_core::{MonitorId, MonitorInput, MonitorSpec, ValidationErrors};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid monitor spec: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error("monitor {0:?} already exists")]
    AlreadyExists(String),
    #[error("monitor {0:?} does not exist")]
    NotFound(String),
}

/// Desired monitors by id.
#[derive(Debug, Default)]
pub struct MonitorCatalog {
    monitors: BTreeMap<MonitorId, MonitorSpec>,
}

impl MonitorCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates a new monitor (generation 1) without storing it.
    pub fn prepare_create(&self, input: &MonitorInput) -> Result<MonitorSpec, CatalogError> {
        let spec = input.validate(1)?;
        if self.monitors.contains_key(&spec.id) {
            return Err(CatalogError::AlreadyExists(spec.id.to_string()));
        }
        Ok(spec)
    }

    /// Validates a replacement spec without storing it. Secrets left empty
    /// in the input keep their stored values (read APIs never return them, so
    /// a client cannot send them back). Returns `None` when nothing changed.
    pub fn prepare_update(&self, input: &MonitorInput) -> Result<Option<MonitorSpec>, CatalogError> {
        let id = MonitorId::new(input.id.clone())
            .map_err(|e| ValidationErrors::single("id", format!("{:?} {e}", input.id)))?;
        let current = self.monitors.get(&id).ok_or_else(|| CatalogError::NotFound(input.id.clone()))?;
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

    /// Stores a prepared spec.
    pub fn commit(&mut self, spec: MonitorSpec) {
        self.monitors.insert(spec.id.clone(), spec);
    }

    pub fn remove(&mut self, id: &MonitorId) -> Option<MonitorSpec> {
        self.monitors.remove(id)
    }

    pub fn get(&self, id: &MonitorId) -> Option<&MonitorSpec> {
        self.monitors.get(id)
    }

    pub fn list(&self) -> impl Iterator<Item = &MonitorSpec> {
        self.monitors.values()
    }

    pub fn len(&self) -> usize {
        self.monitors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.monitors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use kollector_core::{SaslInput, Secret};

    use super::*;

    fn input(id: &str) -> MonitorInput {
        MonitorInput { id: id.into(), bootstrap: vec!["h:1".into()], ..Default::default() }
    }

    #[test]
    fn create_update_delete() {
        let mut c = MonitorCatalog::new();
        let spec = c.prepare_create(&input("a")).unwrap();
        assert_eq!(spec.generation, 1);
        c.commit(spec);
        assert_eq!(c.prepare_create(&input("a")), Err(CatalogError::AlreadyExists("a".into())));
        assert_eq!(c.prepare_update(&input("a")).unwrap(), None, "identical spec is not a change");
        let mut changed = input("a");
        changed.interval = Some("10s".into());
        let v2 = c.prepare_update(&changed).unwrap().unwrap();
        assert_eq!(v2.generation, 2);
        assert_eq!(c.get(&v2.id).unwrap().generation, 1, "prepare stores nothing");
        assert_eq!(c.prepare_update(&input("zz")), Err(CatalogError::NotFound("zz".into())));
    }

    #[test]
    fn invalid_update_changes_nothing() {
        let mut c = MonitorCatalog::new();
        c.commit(c.prepare_create(&input("a")).unwrap());
        let mut bad = input("a");
        bad.interval = Some("0s".into());
        assert!(matches!(c.prepare_update(&bad), Err(CatalogError::Invalid(_))));
        assert_eq!(c.get(&MonitorId::new("a").unwrap()).unwrap().generation, 1);
    }

    #[test]
    fn update_without_password_keeps_the_stored_one() {
        let mut c = MonitorCatalog::new();
        let mut i = input("a");
        i.sasl = Some(SaslInput {
            mechanism: "PLAIN".into(),
            username: "u".into(),
            password: Some(Secret::new("pw")),
            password_env: None,
        });
        c.commit(c.prepare_create(&i).unwrap());
        i.sasl.as_mut().unwrap().password = None;
        i.interval = Some("5s".into());
        let v2 = c.prepare_update(&i).unwrap().unwrap();
        assert_eq!(v2.connection.sasl.unwrap().password.expose(), "pw");
    }
}
