//! Garbage collector: ownerReferences-based cascading deletion, as kube's garbagecollector.
//!
//! * Background: an object all of whose owners are gone (no object of the owner's kind and
//!   name with the owner's uid) is deleted; one that lost only some owners loses those
//!   references. Owners are looked up in the informer caches and a miss is confirmed with a
//!   live GET before anything is deleted (caches lag).
//! * Foreground: an owner being deleted with the `foregroundDeletion` finalizer has its
//!   dependents deleted (in the foreground too); once no dependent with
//!   `blockOwnerDeletion` is left (checked against the live API), the finalizer goes and the
//!   API server removes the owner.
//! * Orphan: an owner being deleted with the `orphan` finalizer has its reference removed
//!   from every dependent, then the finalizer goes.
//!
//! The informers' change streams do not report deletions, so instead of reacting to events
//! the collector sweeps the caches every second (cheap: all in memory), which also makes it
//! restart-safe. Kinds without an informer (ConfigMaps, Secrets) are listed every few sweeps.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    Preconditions, PropagationPolicy,
};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use serde_json::json;
use tokio::task::JoinSet;

use crate::api_resources::{RESOURCES, ResourceInfo};
use crate::runtime::{self, Context, Error, Result};

const TICK: Duration = Duration::from_secs(1);
/// Kinds without an informer are listed every this many sweeps.
const UNCACHED_EVERY: u32 = 10;
/// Kinds the controllers keep no cache of that may still own or be owned.
const UNCACHED: &[&str] = &["ConfigMap", "Secret"];
/// An owner confirmed present by a live GET is believed for this long.
const VERIFIED_FOR: Duration = Duration::from_secs(5);

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

pub fn spawn(ctx: Arc<Context>, tasks: &mut JoinSet<()>) {
    tasks.spawn(async move {
        wait_for_caches(&ctx).await;
        tracing::info!("garbage collector caches synced");
        let mut gc = Collector {
            client: ctx.client.clone(),
            ctx,
            verified: HashMap::new(),
            uncached: Vec::new(),
            sweeps: 0,
        };
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            gc.sweep().await;
        }
    });
}

async fn wait_for_caches(ctx: &Context) {
    let i = &ctx.informers;
    // An error means the informer is gone; nothing to wait for then.
    let _ = runtime::cache_ready(&i.pods.store()).await;
    let _ = runtime::cache_ready(&i.nodes.store()).await;
    let _ = runtime::cache_ready(&i.namespaces.store()).await;
    let _ = runtime::cache_ready(&i.services.store()).await;
    let _ = runtime::cache_ready(&i.endpoint_slices.store()).await;
    let _ = runtime::cache_ready(&i.service_accounts.store()).await;
    let _ = runtime::cache_ready(&i.replica_sets.store()).await;
    let _ = runtime::cache_ready(&i.deployments.store()).await;
    let _ = runtime::cache_ready(&i.daemon_sets.store()).await;
    let _ = runtime::cache_ready(&i.jobs.store()).await;
    let _ = runtime::cache_ready(&i.leases.store()).await;
}

/// What the collector needs to know of any object.
#[derive(Clone, Debug)]
struct Item {
    res: &'static ResourceInfo,
    ns: Option<String>,
    name: String,
    uid: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Item {
    fn from_meta(res: &'static ResourceInfo, meta: &ObjectMeta) -> Option<Item> {
        Some(Item {
            res,
            ns: meta.namespace.clone().filter(|n| !n.is_empty()),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
            resource_version: meta.resource_version.clone(),
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        })
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    fn owned_by(&self, uid: &str) -> Option<&OwnerReference> {
        self.owners.iter().find(|r| r.uid == uid)
    }

    fn describe(&self) -> String {
        format!(
            "{}/{}/{}",
            self.res.plural,
            self.ns.as_deref().unwrap_or(""),
            self.name
        )
    }
}

/// The served resource of an `apiVersion` and `kind` (the version is not compared).
fn resource_of(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

fn api_for(client: &Client, res: &ResourceInfo, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: res.group.to_string(),
        version: res.version.to_string(),
        api_version: res.api_version(),
        kind: res.kind.to_string(),
        plural: res.plural.to_string(),
    };
    match ns {
        Some(ns) if res.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

fn collect<K>(store: &Store<K>, out: &mut Vec<Item>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let Some(res) = resource_of(&K::api_version(&()), &K::kind(&())) else {
        return;
    };
    out.extend(
        store
            .state()
            .iter()
            .filter_map(|o| Item::from_meta(res, o.meta())),
    );
}

fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// 404 (already gone) and 409 (changed under us; the next sweep sees the new state) are fine.
fn tolerated(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

struct Collector {
    ctx: Arc<Context>,
    client: Client,
    /// Owners a live GET found, by uid, and when.
    verified: HashMap<String, Instant>,
    /// The last listing of the kinds without a cache.
    uncached: Vec<Item>,
    sweeps: u32,
}

impl Collector {
    fn cached(&self) -> Vec<Item> {
        let i = &self.ctx.informers;
        let mut out = Vec::new();
        collect(&i.pods.store(), &mut out);
        collect(&i.nodes.store(), &mut out);
        collect(&i.namespaces.store(), &mut out);
        collect(&i.services.store(), &mut out);
        collect(&i.endpoint_slices.store(), &mut out);
        collect(&i.service_accounts.store(), &mut out);
        collect(&i.replica_sets.store(), &mut out);
        collect(&i.deployments.store(), &mut out);
        collect(&i.daemon_sets.store(), &mut out);
        collect(&i.jobs.store(), &mut out);
        collect(&i.leases.store(), &mut out);
        out
    }

    async fn list(&self, res: &'static ResourceInfo, ns: Option<&str>) -> Result<Vec<Item>> {
        let list = api_for(&self.client, res, ns)
            .list(&ListParams::default())
            .await?;
        Ok(list
            .items
            .iter()
            .filter_map(|o| Item::from_meta(res, &o.metadata))
            .collect())
    }

    async fn list_uncached(&self) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for res in RESOURCES.iter().filter(|r| UNCACHED.contains(&r.kind)) {
            out.extend(self.list(res, None).await?);
        }
        Ok(out)
    }

    async fn sweep(&mut self) {
        let mut items = self.cached();
        if self.sweeps.is_multiple_of(UNCACHED_EVERY) {
            match self.list_uncached().await {
                Ok(l) => self.uncached = l,
                Err(e) => tracing::debug!(error = %e, "garbage collector could not list"),
            }
        }
        self.sweeps = self.sweeps.wrapping_add(1);
        items.extend(self.uncached.iter().cloned());
        self.verified.retain(|_, t| t.elapsed() < VERIFIED_FOR);

        for owner in items.iter().filter(|i| i.deleting) {
            let result = if owner.has_finalizer(ORPHAN) {
                self.orphan_dependents(owner).await
            } else if owner.has_finalizer(FOREGROUND) {
                self.delete_dependents_first(owner, &items).await
            } else {
                continue;
            };
            if let Err(e) = result {
                tracing::debug!(owner = %owner.describe(), error = %e, "garbage collector: owner not done yet");
            }
        }

        let present: HashSet<&str> = items.iter().map(|i| i.uid.as_str()).collect();
        let mut absent_owners: Vec<(&Item, Vec<String>)> = Vec::new();
        for dep in items.iter().filter(|i| !i.owners.is_empty()) {
            match self.absent_owners(dep, &present).await {
                Ok(absent) if !absent.is_empty() => absent_owners.push((dep, absent)),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(object = %dep.describe(), error = %e, "garbage collector: cannot check owners")
                }
            }
        }
        for (dep, absent) in absent_owners {
            if let Err(e) = self.collect_dependent(dep, &absent).await {
                tracing::warn!(object = %dep.describe(), error = %e, "garbage collector failed");
            }
        }
    }

    /// The uids of `dep`'s owners that do not exist. Unknown kinds count as present.
    async fn absent_owners(&mut self, dep: &Item, present: &HashSet<&str>) -> Result<Vec<String>> {
        let mut absent = Vec::new();
        for r in &dep.owners {
            if r.uid.is_empty()
                || present.contains(r.uid.as_str())
                || self.verified.contains_key(&r.uid)
            {
                continue;
            }
            let Some(res) = resource_of(&r.api_version, &r.kind) else {
                continue;
            };
            let ns = if res.namespaced {
                // A namespaced owner of a cluster-scoped object cannot be looked up.
                let Some(ns) = dep.ns.as_deref() else {
                    continue;
                };
                Some(ns)
            } else {
                None
            };
            match api_for(&self.client, res, ns).get_opt(&r.name).await? {
                Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                    self.verified.insert(r.uid.clone(), Instant::now());
                }
                _ => absent.push(r.uid.clone()),
            }
        }
        Ok(absent)
    }

    /// `dep` lost the owners `absent`: delete it if it has no owner left, else drop the
    /// dangling references.
    async fn collect_dependent(&self, dep: &Item, absent: &[String]) -> Result<()> {
        let api = api_for(&self.client, dep.res, dep.ns.as_deref());
        // Act on the object as it is now, not as the cache remembers it.
        let Some(live) = api.get_opt(&dep.name).await? else {
            return Ok(());
        };
        let Some(live) = Item::from_meta(dep.res, &live.metadata) else {
            return Ok(());
        };
        let uids =
            |i: &Item| -> HashSet<String> { i.owners.iter().map(|r| r.uid.clone()).collect() };
        if live.uid != dep.uid || uids(&live) != uids(dep) {
            return Ok(());
        }
        let left: Vec<&OwnerReference> = live
            .owners
            .iter()
            .filter(|r| !absent.contains(&r.uid))
            .collect();
        if left.is_empty() {
            if live.deleting {
                return Ok(());
            }
            tracing::info!(object = %live.describe(), "garbage collector: deleting an object whose owners are gone");
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: Some(Preconditions {
                    uid: Some(live.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&live.name, &dp).await {
                Ok(_) => Ok(()),
                Err(e) if tolerated(&e) => Ok(()),
                Err(e) => Err(e.into()),
            }
        } else {
            tracing::info!(object = %live.describe(), "garbage collector: removing references to owners that are gone");
            self.set_owners(&live, left.into_iter().cloned().collect())
                .await
        }
    }

    /// Rewrite the ownerReferences of `obj` (compare-and-swap on its resourceVersion).
    async fn set_owners(&self, obj: &Item, owners: Vec<OwnerReference>) -> Result<()> {
        let api = api_for(&self.client, obj.res, obj.ns.as_deref());
        let owners = if owners.is_empty() {
            serde_json::Value::Null
        } else {
            json!(owners)
        };
        let patch = json!({"metadata": {
            "resourceVersion": obj.resource_version,
            "ownerReferences": owners,
        }});
        match api
            .patch(&obj.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Everything in the API that `owner` owns (every kind but Events, in its namespace).
    async fn live_dependents(&self, owner: &Item) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        for res in RESOURCES.iter().filter(|r| r.kind != "Event") {
            if owner.res.namespaced && !res.namespaced {
                continue;
            }
            let ns = if owner.res.namespaced {
                owner.ns.as_deref()
            } else {
                None
            };
            out.extend(
                self.list(res, ns)
                    .await?
                    .into_iter()
                    .filter(|i| i.owned_by(&owner.uid).is_some()),
            );
        }
        Ok(out)
    }

    /// Remove `finalizer` from `owner` (as it is now in the API).
    async fn remove_finalizer(&self, owner: &Item, finalizer: &str) -> Result<()> {
        let api = api_for(&self.client, owner.res, owner.ns.as_deref());
        let Some(live) = api.get_opt(&owner.name).await? else {
            return Ok(());
        };
        if live.metadata.uid.as_deref() != Some(owner.uid.as_str()) {
            return Ok(());
        }
        let finalizers: Vec<String> = live
            .metadata
            .finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        let patch = json!({"metadata": {
            "resourceVersion": live.metadata.resource_version,
            "finalizers": finalizers,
        }});
        match api
            .patch(&owner.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn orphan_dependents(&self, owner: &Item) -> Result<()> {
        for dep in self.live_dependents(owner).await? {
            let owners: Vec<OwnerReference> = dep
                .owners
                .iter()
                .filter(|r| r.uid != owner.uid)
                .cloned()
                .collect();
            self.set_owners(&dep, owners).await?;
        }
        // Every reference is gone (a conflict above returned early and is retried).
        tracing::info!(owner = %owner.describe(), "garbage collector: dependents orphaned");
        self.remove_finalizer(owner, ORPHAN).await
    }

    async fn delete_dependents_first(&self, owner: &Item, items: &[Item]) -> Result<()> {
        let blocks = |d: &Item| {
            d.owned_by(&owner.uid)
                .is_some_and(|r| r.block_owner_deletion == Some(true))
        };
        let cached: Vec<&Item> = items
            .iter()
            .filter(|i| i.owned_by(&owner.uid).is_some())
            .collect();
        for dep in cached.iter().filter(|d| !d.deleting) {
            self.delete_foreground(dep).await?;
        }
        if cached.iter().any(|d| blocks(d)) {
            return Ok(());
        }
        // The cache says nothing blocks any more; make sure the API agrees.
        let live = self.live_dependents(owner).await?;
        for dep in live.iter().filter(|d| !d.deleting) {
            self.delete_foreground(dep).await?;
        }
        if live.iter().any(blocks) {
            return Ok(());
        }
        tracing::info!(owner = %owner.describe(), "garbage collector: dependents deleted; releasing owner");
        self.remove_finalizer(owner, FOREGROUND).await
    }

    async fn delete_foreground(&self, dep: &Item) -> Result<()> {
        let api = api_for(&self.client, dep.res, dep.ns.as_deref());
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: Some(dep.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&dep.name, &dp).await {
            Ok(_) => Ok(()),
            Err(e) if tolerated(&e) => Ok(()),
            Err(e) => Err(Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_kinds_resolve_to_served_resources() {
        assert_eq!(
            resource_of("apps/v1", "ReplicaSet").unwrap().plural,
            "replicasets"
        );
        assert_eq!(resource_of("v1", "Pod").unwrap().plural, "pods");
        assert!(!resource_of("v1", "Node").unwrap().namespaced);
        assert!(resource_of("apps/v1", "StatefulSet").is_none());
        assert!(resource_of("v1", "ReplicaSet").is_none());
    }
}
