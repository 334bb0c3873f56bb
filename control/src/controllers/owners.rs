//! Owner references and adoption, as kube's controller_utils: the controller reference a
//! controller sets on what it creates, which owners an event on a child concerns, and the
//! deletion of an owner's pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Resource;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{ObjectRef, Store};
use skiff_common::labels::LabelSelector as ParsedSelector;

use crate::runtime::{Context, Result};

/// An owner reference to `owner` marking it as the controller, as controllers set on what
/// they create (so the garbage collector and adoption logic recognise it).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of<K: Resource>(obj: &K) -> Option<&OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// The owners of type `O` an event on `child` concerns: its controller if that is an `O`, or,
/// for an orphan, every `O` of its namespace whose selector selects it (adoption candidates).
pub fn owners_to_notify<O, C>(
    child: &C,
    owners: &Store<O>,
    selector: impl Fn(&O) -> Option<&LabelSelector>,
) -> Vec<ObjectRef<O>>
where
    O: Resource<DynamicType = ()> + Clone + 'static,
    C: Resource,
{
    let ns = child.meta().namespace.clone().unwrap_or_default();
    if let Some(owner) = controller_of(child) {
        if owner.kind == O::kind(&()) {
            return vec![ObjectRef::new(&owner.name).within(&ns)];
        }
        return Vec::new();
    }
    owners
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(ns.as_str()))
        .filter(|o| selects(selector(o), child.meta().labels.as_ref()))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Whether a typed label selector selects these labels (an empty selector selects all, a
/// missing one nothing, as for workload controllers).
pub fn selects(
    selector: Option<&LabelSelector>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    match ParsedSelector::from_label_selector(selector) {
        Ok(s) => s.matches(labels.unwrap_or(&Default::default())),
        Err(_) => false,
    }
}

/// Delete one of `owner`'s pods and record `SuccessfulDelete` on the owner, as the workload
/// controllers do; a pod already gone is fine.
pub async fn delete_pod<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    api: &Api<Pod>,
    pod: &Pod,
    params: &DeleteParams,
) -> Result<()> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    match api.delete(&pod_name, params).await {
        Ok(_) => {
            ctx.recorder
                .normal(
                    owner,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod_name}"),
                )
                .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_on_typed_objects() {
        let sel: LabelSelector =
            serde_json::from_value(serde_json::json!({"matchLabels": {"app": "a"}})).unwrap();
        let labels: BTreeMap<String, String> = [("app".to_string(), "a".to_string())].into();
        assert!(selects(Some(&sel), Some(&labels)));
        assert!(!selects(Some(&sel), None));
        assert!(!selects(None, Some(&labels)));
        assert!(selects(Some(&LabelSelector::default()), None));
    }
}
