//! Discovery documents: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>` and aggregated
//! discovery (`apidiscovery.k8s.io` v2 / v2beta1), all built from `resources::RESOURCES` so that
//! what clients discover is exactly what the router serves.
//!
//! Shapes follow kube-apiserver 1.33: kubectl builds its REST mapper from these documents, so a
//! missing `kind`, `verbs` or subresource entry shows up as "the server doesn't have a resource
//! type" or as a command that silently refuses to run (e.g. `kubectl scale` needs
//! `deployments/scale`).

use serde_json::{Value, json};

use crate::apiserver::resources::{RESOURCES, REVIEWS, ResourceInfo, ReviewResource, groups};

pub const SERVER_MAJOR: &str = "1";
pub const SERVER_MINOR: &str = "33";

/// `GET /version`. `minor` must be a real Kubernetes minor: the kubectl dispatcher picks the
/// client binary by it.
pub fn version_info() -> Value {
    json!({
        "major": SERVER_MAJOR,
        "minor": SERVER_MINOR,
        "gitVersion": format!("v{SERVER_MAJOR}.{SERVER_MINOR}.0-skiff"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`: the legacy core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

/// The named groups with their versions, in discovery order (first version preferred).
fn named_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (group, version) in groups() {
        if group.is_empty() {
            continue;
        }
        match out.iter_mut().find(|(g, _)| *g == group) {
            Some((_, versions)) => {
                if !versions.contains(&version) {
                    versions.push(version)
                }
            }
            None => out.push((group, vec![version])),
        }
    }
    out
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let list: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = list.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": list, "preferredVersion": preferred})
}

/// `GET /apis`: every named group we serve resources in. `autoscaling` is not listed: it only
/// appears as the `group` of the `*/scale` subresource entries, as in kube-apiserver when the
/// autoscaling API itself is disabled.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = named_groups()
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    let (g, versions) = named_groups().into_iter().find(|(g, _)| *g == group)?;
    let mut entry = group_entry(g, &versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

/// A stable, opaque `storageVersionHash`. kube-apiserver hashes the storage group/version/kind;
/// clients only compare it for equality (the storage version migrator), so any deterministic
/// digest of the same input serves.
fn storage_version_hash(r: &ResourceInfo) -> String {
    use base64::Engine as _;
    let h = fnv1a64(format!("{}/{}", r.api_version(), r.kind).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.to_be_bytes())
}

/// FNV-1a, 64 bit: tiny, dependency-free and stable across builds and platforms.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One subresource as discovery describes it: (subresource, group, version, kind, verbs).
/// Group/version are empty when the subresource returns the parent's kind.
struct Sub {
    name: &'static str,
    group: Option<&'static str>,
    version: Option<&'static str>,
    kind: &'static str,
    verbs: &'static [&'static str],
}

/// The subresources of `r` that we serve, with the kinds and verbs kube-apiserver 1.33 reports.
fn subresources(r: &ResourceInfo) -> Vec<Sub> {
    const GPU: &[&str] = &["get", "patch", "update"];
    r.subresources
        .iter()
        .filter_map(|s| {
            let (group, version, kind, verbs): (_, _, &'static str, &'static [&'static str]) =
                match *s {
                    "status" => (None, None, r.kind, GPU),
                    "scale" => (Some("autoscaling"), Some("v1"), "Scale", GPU),
                    "binding" => (None, None, "Binding", &["create"]),
                    "eviction" => (Some("policy"), Some("v1"), "Eviction", &["create"]),
                    "log" => (None, None, "Pod", &["get"]),
                    "exec" => (None, None, "PodExecOptions", &["create", "get"]),
                    "attach" => (None, None, "PodAttachOptions", &["create", "get"]),
                    "portforward" => (None, None, "PodPortForwardOptions", &["create", "get"]),
                    "finalize" => (None, None, r.kind, &["update"]),
                    "token" => (
                        Some("authentication.k8s.io"),
                        Some("v1"),
                        "TokenRequest",
                        &["create"],
                    ),
                    // An unknown subresource name in the table: skip it rather than invent a
                    // kind, so discovery never advertises something with the wrong shape.
                    _ => return None,
                };
            Some(Sub {
                name: s,
                group,
                version,
                kind,
                verbs,
            })
        })
        .collect()
}

fn resources_in<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

fn reviews_in<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ReviewResource> + 'a {
    REVIEWS
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The `APIResourceDiscovery` of a review resource.
fn aggregated_review(r: &ReviewResource) -> Value {
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": scope(r.namespaced),
        "singularResource": r.singular,
        "verbs": ReviewResource::VERBS,
    })
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`: an `APIResourceList`.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut entries: Vec<Value> = Vec::new();
    for r in resources_in(group, version) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "storageVersionHash": storage_version_hash(r),
        });
        // `omitempty` in kube's APIResource: empty lists are left out, as kube-apiserver does.
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        entries.push(e);
        for s in subresources(r) {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if let (Some(g), Some(v)) = (s.group, s.version) {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            entries.push(e);
        }
    }
    for r in reviews_in(group, version) {
        entries.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ReviewResource::VERBS,
        }));
    }
    if entries.is_empty() {
        return None;
    }
    if group.is_empty() && version == "v1" && resources_in("", "v1").any(|r| r.plural == "pods") {
        // kube-apiserver serves the legacy top-level `bindings` resource (create only) beside
        // `pods/binding`; schedulers written against old clients still post there.
        entries.push(json!({
            "name": "bindings",
            "singularName": "binding",
            "namespaced": true,
            "kind": "Binding",
            "verbs": ["create"],
        }));
    }
    // kube-apiserver lists resources sorted by name; "pods" sorts before "pods/status".
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregatedVersion {
    V2,
    V2Beta1,
}

impl AggregatedVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            AggregatedVersion::V2 => "apidiscovery.k8s.io/v2",
            AggregatedVersion::V2Beta1 => "apidiscovery.k8s.io/v2beta1",
        }
    }
}

fn scope(namespaced: bool) -> &'static str {
    if namespaced { "Namespaced" } else { "Cluster" }
}

/// One `APIResourceDiscovery`. client-go rejects entries without `responseKind`, so every
/// resource and subresource carries one.
fn aggregated_resource(r: &ResourceInfo) -> Value {
    let subs: Vec<Value> = subresources(r)
        .into_iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {
                    "group": s.group.unwrap_or(r.group),
                    "version": s.version.unwrap_or(r.version),
                    "kind": s.kind,
                },
                "verbs": s.verbs,
            })
        })
        .collect();
    let mut out = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": scope(r.namespaced),
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    // Empty lists are omitted (`omitempty` in the Go types).
    if !r.short_names.is_empty() {
        out["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        out["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        out["subresources"] = json!(subs);
    }
    out
}

fn aggregated_group(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut resources: Vec<Value> = resources_in(group, v)
                .map(aggregated_resource)
                .chain(reviews_in(group, v).map(aggregated_review))
                .collect();
            if group.is_empty() && *v == "v1" {
                resources.push(json!({
                    "resource": "bindings",
                    "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
                    "scope": "Namespaced",
                    "singularResource": "binding",
                    "verbs": ["create"],
                }));
            }
            resources.sort_by(|a, b| a["resource"].as_str().cmp(&b["resource"].as_str()));
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({
        "metadata": {"name": group, "creationTimestamp": null},
        "versions": versions,
    })
}

/// Aggregated discovery (`APIGroupDiscoveryList`) for `/api` (`core = true`: one item, the core
/// group named "") or `/apis` (every named group).
pub fn aggregated(core: bool, version: AggregatedVersion) -> Value {
    let items: Vec<Value> = if core {
        let mut versions: Vec<&str> = Vec::new();
        for (g, v) in groups() {
            if g.is_empty() && !versions.contains(&v) {
                versions.push(v);
            }
        }
        vec![aggregated_group("", &versions)]
    } else {
        named_groups()
            .iter()
            .map(|(g, vs)| aggregated_group(g, vs))
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": version.api_version(),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
        list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn version_reports_a_real_minor() {
        let v = version_info();
        assert_eq!(v["major"], "1");
        assert_eq!(v["minor"], "33");
        assert_eq!(v["gitVersion"], "v1.33.0-skiff");
        assert_eq!(v["platform"], "linux/amd64");
    }

    #[test]
    fn api_versions_carry_the_server_address() {
        let v = api_versions("10.0.0.1:6443");
        assert_eq!(v["kind"], "APIVersions");
        assert_eq!(v["versions"], json!(["v1"]));
        assert_eq!(
            v["serverAddressByClientCIDRs"][0]["serverAddress"],
            "10.0.0.1:6443"
        );
    }

    #[test]
    fn group_list_has_only_served_named_groups() {
        let l = api_group_list();
        let names: Vec<&str> = l["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "apps",
                "batch",
                "policy",
                "coordination.k8s.io",
                "discovery.k8s.io",
                "rbac.authorization.k8s.io",
                "certificates.k8s.io",
                "authentication.k8s.io",
                "authorization.k8s.io"
            ]
        );
        let apps = &l["groups"][0];
        assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
        assert_eq!(apps["versions"][0]["version"], "v1");
    }

    #[test]
    fn api_group_single() {
        let g = api_group("batch").unwrap();
        assert_eq!(g["kind"], "APIGroup");
        assert_eq!(g["name"], "batch");
        assert!(api_group("autoscaling").is_none());
        assert!(api_group("").is_none());
    }

    #[test]
    fn core_resource_list_matches_kube() {
        let l = api_resource_list("", "v1").unwrap();
        assert_eq!(l["groupVersion"], "v1");
        let pods = find(&l, "pods");
        assert_eq!(pods["kind"], "Pod");
        assert_eq!(pods["singularName"], "pod");
        assert_eq!(pods["namespaced"], true);
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert!(pods["storageVersionHash"].as_str().unwrap().len() > 4);
        assert_eq!(
            find(&l, "pods/status")["verbs"],
            json!(["get", "patch", "update"])
        );
        assert_eq!(find(&l, "pods/binding")["kind"], "Binding");
        assert_eq!(find(&l, "pods/binding")["verbs"], json!(["create"]));
        assert_eq!(find(&l, "pods/log")["verbs"], json!(["get"]));
        let token = find(&l, "serviceaccounts/token");
        assert_eq!(token["kind"], "TokenRequest");
        assert_eq!(token["group"], "authentication.k8s.io");
        assert_eq!(token["version"], "v1");
        assert_eq!(token["verbs"], json!(["create"]));
        assert_eq!(find(&l, "namespaces/finalize")["verbs"], json!(["update"]));
        assert_eq!(find(&l, "namespaces")["namespaced"], false);
        assert_eq!(find(&l, "bindings")["verbs"], json!(["create"]));
        assert!(
            find(&l, "namespaces")["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v != "deletecollection")
        );
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn scale_subresource_is_autoscaling_v1() {
        let l = api_resource_list("apps", "v1").unwrap();
        for name in ["deployments/scale", "replicasets/scale"] {
            let s = find(&l, name);
            assert_eq!(s["group"], "autoscaling");
            assert_eq!(s["version"], "v1");
            assert_eq!(s["kind"], "Scale");
            assert_eq!(s["verbs"], json!(["get", "patch", "update"]));
        }
        assert_eq!(find(&l, "daemonsets/status")["kind"], "DaemonSet");
        assert!(find(&l, "deployments/status").get("group").is_none());
        let b = api_resource_list("batch", "v1").unwrap();
        assert_eq!(find(&b, "jobs/status")["kind"], "Job");
    }

    #[test]
    fn unknown_group_versions_are_none() {
        assert!(api_resource_list("apps", "v2").is_none());
        assert!(api_resource_list("autoscaling", "v1").is_none());
        assert!(api_resource_list("", "v2").is_none());
    }

    #[test]
    fn aggregated_core() {
        let d = aggregated(true, AggregatedVersion::V2);
        assert_eq!(d["kind"], "APIGroupDiscoveryList");
        assert_eq!(d["apiVersion"], "apidiscovery.k8s.io/v2");
        let items = d["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"]["name"], "");
        let v1 = &items[0]["versions"][0];
        assert_eq!(v1["version"], "v1");
        assert_eq!(v1["freshness"], "Current");
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(pods["singularResource"], "pod");
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subresource"].as_str().unwrap())
            .collect();
        assert_eq!(
            subs,
            [
                "status",
                "binding",
                "eviction",
                "log",
                "exec",
                "attach",
                "portforward"
            ]
        );
        let binding = &pods["subresources"][1];
        assert_eq!(binding["responseKind"]["kind"], "Binding");
        let ns = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "namespaces")
            .unwrap();
        assert_eq!(ns["scope"], "Cluster");
    }

    #[test]
    fn aggregated_named_groups() {
        let d = aggregated(false, AggregatedVersion::V2Beta1);
        assert_eq!(d["apiVersion"], "apidiscovery.k8s.io/v2beta1");
        let items = d["items"].as_array().unwrap();
        assert_eq!(items[0]["metadata"]["name"], "apps");
        let group = |name: &str| {
            items
                .iter()
                .find(|i| i["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{name} is not listed"))
        };
        group("rbac.authorization.k8s.io");
        let authn = group("authentication.k8s.io");
        group("certificates.k8s.io");
        assert_eq!(
            authn["versions"][0]["resources"][0],
            json!({"resource": "selfsubjectreviews",
                "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "SelfSubjectReview"},
                "scope": "Cluster", "singularResource": "selfsubjectreview", "verbs": ["create"]})
        );
        let authz = &group("authorization.k8s.io")["versions"][0]["resources"];
        let names: Vec<&str> = authz
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["resource"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "localsubjectaccessreviews",
                "selfsubjectaccessreviews",
                "selfsubjectrulesreviews",
                "subjectaccessreviews"
            ]
        );
        assert_eq!(authz[0]["scope"], "Namespaced");
        assert_eq!(authz[3]["verbs"], json!(["create"]));
        let deploy = items[0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        let scale = deploy["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(
            scale["responseKind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        // Every resource and subresource has a responseKind (client-go requires it).
        for item in items {
            for v in item["versions"].as_array().unwrap() {
                for r in v["resources"].as_array().unwrap() {
                    assert!(r["responseKind"]["kind"].is_string());
                    for s in r["subresources"].as_array().into_iter().flatten() {
                        assert!(s["responseKind"]["kind"].is_string());
                    }
                }
            }
        }
    }

    #[test]
    fn every_resource_is_discoverable() {
        for r in RESOURCES {
            let l = api_resource_list(r.group, r.version).unwrap();
            assert_eq!(find(&l, r.plural)["kind"], r.kind);
        }
    }

    #[test]
    fn storage_version_hash_is_stable_and_distinct() {
        let a = storage_version_hash(&RESOURCES[0]);
        assert_eq!(a, storage_version_hash(&RESOURCES[0]));
        assert_ne!(a, storage_version_hash(&RESOURCES[1]));
    }
}
