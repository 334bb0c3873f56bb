//! Owner references and adoption, as kube's controller_utils: the controller reference a
//! controller sets on what it creates, which owners an event on a child concerns, and the
//! deletion of an owner's pod; and, since deletions do not reach shared-informer subscribers,
//! counting the children each owner controls to notice those that vanished.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// An owner's `namespace` and `name`.
pub type OwnerKey = (String, String);

/// How many children each owner counted in the cache at its last reconcile (see
/// [`vanished_children`]).
pub type SeenCounts = Arc<Mutex<HashMap<OwnerKey, usize>>>;

/// Children per controlling owner of type `O`, optionally of one namespace.
pub fn count_controlled<O, C>(
    children: &[Arc<C>],
    namespace: Option<&str>,
) -> HashMap<OwnerKey, usize>
where
    O: Resource<DynamicType = ()>,
    C: Resource,
{
    let mut counts: HashMap<OwnerKey, usize> = HashMap::new();
    for child in children {
        if namespace.is_some_and(|ns| child.meta().namespace.as_deref() != Some(ns)) {
            continue;
        }
        if let Some(owner) = controller_of(child.as_ref())
            && owner.kind == O::kind(&())
        {
            let key = (
                child.meta().namespace.clone().unwrap_or_default(),
                owner.name.clone(),
            );
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

/// Remember how many of `children` (a snapshot of its namespace's cache) the owner `key` of
/// type `O` controls now.
pub fn remember_count<O, C>(seen: &SeenCounts, children: &[Arc<C>], key: &OwnerKey)
where
    O: Resource<DynamicType = ()>,
    C: Resource,
{
    let owned = count_controlled::<O, C>(children, Some(&key.0))
        .get(key)
        .copied()
        .unwrap_or(0);
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), owned);
}

/// Deletions are not broadcast to shared-informer subscribers: every `period`, poll the
/// children's cache and yield the owners whose number of children differs from what their
/// last reconcile saw, forgetting owners that are gone.
pub fn vanished_children<O, C>(
    children: Store<C>,
    owners: Store<O>,
    seen: SeenCounts,
    period: Duration,
) -> impl futures::Stream<Item = ObjectRef<O>> + Send + 'static
where
    O: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    C: Resource + Clone + Send + Sync + 'static,
    C::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    use futures::StreamExt;
    futures::stream::unfold((), move |()| {
        let (children, owners, seen) = (children.clone(), owners.clone(), seen.clone());
        async move {
            tokio::time::sleep(period).await;
            let counts = count_controlled::<O, C>(&children.state(), None);
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let mut changed = Vec::new();
            seen.retain(|(ns, name), n| {
                let owner = ObjectRef::new(name).within(ns);
                if owners.get(&owner).is_none() {
                    return false;
                }
                if counts
                    .get(&(ns.clone(), name.clone()))
                    .copied()
                    .unwrap_or(0)
                    != *n
                {
                    changed.push(owner);
                }
                true
            });
            Some((futures::stream::iter(changed), ()))
        }
    })
    .flatten()
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
