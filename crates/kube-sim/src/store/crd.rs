//! CustomResourceDefinitions: a CRD's write validates its schema and serves (or stops serving)
//! the resources it defines; its status is the one the real server sets once names are accepted.

use super::crud::now_rfc3339;
use super::{Inner, Obj};
use crate::error::ApiError;
use crate::resources::{defs_from_crd, ResourceDef};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Whether `def` is the CustomResourceDefinition resource itself.
pub(super) fn is_crd(def: &ResourceDef) -> bool {
    def.kind == "CustomResourceDefinition" && def.group == "apiextensions.k8s.io"
}

/// The resources a CRD (`m`, with metadata) defines, after checking its schema; sets the status
/// a newly established CRD has.
pub(super) fn established(
    def: &ResourceDef,
    m: &mut Map<String, Value>,
) -> Result<Vec<Arc<ResourceDef>>, ApiError> {
    let full = Value::Object(m.clone());
    let name = full["metadata"]["name"].as_str().unwrap_or_default();
    let defs = defs_from_crd(&full)
        .map_err(|(field, why)| ApiError::invalid(&def.group, &def.kind, name, &field, &why))?;
    // The conditions were set when the CRD was created: taking that time (rather than
    // the clock) keeps a preloaded world with fixed timestamps equal from run to run.
    let now = full["metadata"]["creationTimestamp"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(now_rfc3339);
    let storage: Vec<Value> = full["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    m.insert(
        "status".into(),
        json!({
            "acceptedNames": full["spec"]["names"].clone(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": storage,
        }),
    );
    Ok(defs)
}

impl Inner {
    /// The defaults of a replaced CRD (`new_m`): its resources, and the status it gets, keeping
    /// the conditions of the one it had.
    pub(super) fn crd_defaults_keeping_conditions(
        &self,
        def: &ResourceDef,
        new_m: &mut Map<String, Value>,
    ) -> Result<Option<Vec<Arc<ResourceDef>>>, ApiError> {
        let st = new_m.remove("status");
        let r = self.kind_defaults(def, new_m)?;
        if let (Some(Value::Object(old_st)), Some(Value::Object(new_st))) =
            (st, new_m.get_mut("status"))
        {
            // keep conditions' timestamps stable so re-applies are no-ops
            if let Some(c) = old_st.get("conditions") {
                new_st.insert("conditions".into(), c.clone());
            }
        }
        Ok(r)
    }

    /// Removes every custom resource of the deleted CRD (`m`), each with its DELETED event.
    pub(super) fn remove_custom_resources(
        &mut self,
        m: &Map<String, Value>,
    ) -> Result<(), ApiError> {
        let spec = &m["spec"];
        let key = crate::resources::storage_key(
            spec["group"].as_str().unwrap_or_default(),
            spec["names"]["plural"].as_str().unwrap_or_default(),
        );
        let victims: Vec<Arc<Obj>> = self
            .objects
            .get(&key)
            .map(|mm| mm.values().cloned().collect())
            .unwrap_or_default();
        for o in victims {
            self.remove(&key, &o)?;
        }
        self.objects.remove(&key);
        Ok(())
    }

    /// After an object is gone: a removed CRD's resources are no longer served.
    pub(super) fn after_removal(&mut self, def: &ResourceDef, obj: &Obj) {
        if is_crd(def) {
            self.registry.remove_crd(&obj.name);
        }
    }
}
